//! Nearest-neighbour search over product vectors.
//!
//! Everything that answers "which stored vectors are closest to this one" goes through
//! [`VectorIndex`], so an approximate index or a remote vector store can replace the embedded
//! exact scan without the search path changing. Vectors are L2-normalised, so the score is the
//! cosine similarity (a dot product).

pub mod ann;
pub mod basis;
pub mod exact;
pub mod kernels;
pub mod qdrant;

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};

use anyhow::Result;

use crate::types::Key;
pub use ann::{AnnIndex, AnnOptions, AnnStamp, Compaction};
pub use exact::ExactIndex;
pub use kernels::{dot, Precision};

/// One search result: a product key and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub key: Key,
    pub score: f32,
}

/// A store that could not be reached (a Qdrant cluster down or partitioned, after retries):
/// what it would have answered is unknown, so a caller must say so (the API answers 503 with
/// Retry-After) rather than return a wrong or partial result.
#[derive(Debug, thiserror::Error)]
#[error("the vector store is unreachable: {0}")]
pub struct StoreUnavailable(pub String);

/// The products a filtered search may return. Built from the catalog's metadata before the
/// search, so that top-k is taken among matching products only: a filter never makes a search
/// return fewer than k hits while k products match.
pub type Allowed = HashSet<Key>;

/// A searchable set of vectors: what the search path needs of any store. What only one kind of
/// store does (a graph's compaction, a remote store's payloads and filters) is on that store's
/// own type, reached through [`crate::store::Store`].
pub trait VectorIndex: Send + Sync {
    /// Vector dimension.
    fn dim(&self) -> usize;
    /// Number of vectors.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Adds `vector` under `key`, replacing any vector already there.
    fn upsert(&mut self, key: Key, vector: &[f32]) -> Result<()>;
    /// Removes `key`; removing an absent key is not an error.
    fn remove(&mut self, key: Key) -> Result<()>;
    /// The `k` vectors most similar to `query` (best first), restricted to `allowed` if given.
    fn search(&self, query: &[f32], k: usize, allowed: Option<&Allowed>) -> Result<Vec<Hit>>;
}

/// What an index holds, for monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IndexStats {
    pub vectors: usize,
    pub memory_bytes: usize,
    pub dead_entries: usize,
    /// `Some` when the search graph answers: its recall@10 measured on its own products.
    pub graph_recall_at_10: Option<f32>,
}

/// Scales `v` to unit length, in place: the one normaliser of lookalike's vectors (model
/// outputs, projections, queries). An all-zero or non-finite vector is left as is rather than
/// turned into NaNs.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Keeps the `k` best-scoring keys seen so far (a min-heap on score).
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Entry>,
}

#[derive(PartialEq)]
struct Entry(f32, Key);
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    // Reversed so the heap's top is the worst hit; ties broken by key for stable results.
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.total_cmp(&self.0).then_with(|| self.1.cmp(&other.1))
    }
}

impl TopK {
    pub fn new(k: usize) -> TopK {
        TopK { k, heap: BinaryHeap::with_capacity(k + 1) }
    }

    pub fn push(&mut self, key: Key, score: f32) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Entry(score, key));
        } else if let Some(worst) = self.heap.peek() {
            if Entry(score, key) < *worst {
                self.heap.pop();
                self.heap.push(Entry(score, key));
            }
        }
    }

    /// Both sets of candidates, keeping the best `k` (for merging per-thread results).
    pub fn merge(mut self, other: TopK) -> TopK {
        for Entry(score, key) in other.heap {
            self.push(key, score);
        }
        self
    }

    /// The hits, best first.
    pub fn into_sorted(self) -> Vec<Hit> {
        self.heap.into_sorted_vec().into_iter().map(|Entry(score, key)| Hit { key, score }).collect()
    }
}

/// When the engine uses the approximate index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AnnMode {
    /// Where a scan would be slower than the graph ([`IndexConfig::ann_above`]) and the graph
    /// meets [`IndexConfig::ann_recall`] on the catalog's own products.
    #[default]
    Auto,
    Always,
    Never,
}

/// Components (products x dimensions) an exact scan reads in the time one graph search takes:
/// measured with `lookalike bench e2e` on 60,000 x 1280-d (2-core AMD EPYC), the scan took 8.9
/// ms and the graph search with its exact re-rank 0.56 ms, so they break even near 4.8 million
/// components: about 3,900 products at 1280-d, 19,500 in a tuned 256-d space. Below that the
/// scan is as fast, and exact.
pub const SCAN_BREAK_EVEN_COMPONENTS: usize = 5_000_000;

/// Recall@10 the graph must reach on the catalog's own products to be used by default.
pub const DEFAULT_ANN_RECALL: f32 = 0.99;

/// How a catalog's vectors are indexed for search.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// Row storage of the exact index (the approximate index always re-ranks with f32).
    pub precision: Precision,
    pub ann: AnnMode,
    /// With [`AnnMode::Auto`], catalogs with more products than this may get the graph; `None`:
    /// where an exact scan would read more than [`SCAN_BREAK_EVEN_COMPONENTS`].
    pub ann_above: Option<usize>,
    /// With [`AnnMode::Auto`], the recall@10 the graph must measure (see
    /// [`ann::AnnIndex::recall_at_10`]); below it the exact scan answers.
    pub ann_recall: f32,
    pub ann_options: AnnOptions,
    /// A Qdrant collection instead of the embedded indexes.
    pub store: Option<qdrant::QdrantConfig>,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig { precision: Precision::F32, ann: AnnMode::Auto, ann_above: None, ann_recall: DEFAULT_ANN_RECALL, ann_options: AnnOptions::default(), store: None }
    }
}

impl IndexConfig {
    /// The size above which [`AnnMode::Auto`] tries the graph, for `dim`-d vectors.
    pub fn graph_above(&self, dim: usize) -> usize {
        self.ann_above.unwrap_or(SCAN_BREAK_EVEN_COMPONENTS / dim.max(1))
    }

    /// Whether a catalog of `len` `dim`-d vectors gets a graph built (or loaded) at all; with
    /// [`AnnMode::Auto`] it is then used only if it meets [`IndexConfig::ann_recall`].
    pub fn tries_ann(&self, len: usize, dim: usize) -> bool {
        match self.ann {
            AnnMode::Auto => len > self.graph_above(dim),
            AnnMode::Always => true,
            AnnMode::Never => false,
        }
    }

    /// Whether a graph that measured `recall` is used.
    pub fn accepts_recall(&self, recall: f32) -> bool {
        self.ann != AnnMode::Auto || recall >= self.ann_recall
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_graph_is_tried_where_a_scan_is_slower_and_used_where_it_meets_its_recall() {
        let auto = IndexConfig::default();
        // 1280-d: a scan of 3,906 products reads as much as one graph search costs.
        assert_eq!(auto.graph_above(1280), 3906);
        assert!(!auto.tries_ann(3906, 1280) && auto.tries_ann(3907, 1280));
        // A tuned 256-d space scans five times faster per product.
        assert!(!auto.tries_ann(19_000, 256) && auto.tries_ann(20_000, 256));
        assert!(auto.accepts_recall(0.99) && !auto.accepts_recall(0.989) && !auto.accepts_recall(f32::NAN));
        // A size given by the operator wins; `always` and `never` do not look at recall.
        let fixed = IndexConfig { ann_above: Some(100), ..IndexConfig::default() };
        assert!(fixed.tries_ann(101, 1280) && !fixed.tries_ann(100, 1280));
        let always = IndexConfig { ann: AnnMode::Always, ..IndexConfig::default() };
        assert!(always.tries_ann(1, 1280) && always.accepts_recall(0.5));
        assert!(!IndexConfig { ann: AnnMode::Never, ..IndexConfig::default() }.tries_ann(usize::MAX, 1));
    }
}
