//! Nearest-neighbour search over product vectors.
//!
//! Everything that answers "which stored vectors are closest to this one" goes through
//! [`VectorIndex`], so an approximate index or a remote vector store can replace the embedded
//! exact scan without the search path changing. Vectors are L2-normalised, so the score is the
//! cosine similarity (a dot product).

pub mod ann;
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    pub vectors: usize,
    pub memory_bytes: usize,
    pub dead_entries: usize,
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
    /// Above [`IndexConfig::ann_above`] products.
    #[default]
    Auto,
    Always,
    Never,
}

/// How a catalog's vectors are indexed for search.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// Row storage of the exact index (the approximate index always re-ranks with f32).
    pub precision: Precision,
    pub ann: AnnMode,
    /// With [`AnnMode::Auto`], catalogs with more products than this get the graph: below it an
    /// exact scan is fast enough (about 10 ms for 100,000 x 1280-d on two cores) and exact.
    pub ann_above: usize,
    pub ann_options: AnnOptions,
    /// A Qdrant collection instead of the embedded indexes.
    pub store: Option<qdrant::QdrantConfig>,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig { precision: Precision::F32, ann: AnnMode::Auto, ann_above: 100_000, ann_options: AnnOptions::default(), store: None }
    }
}

impl IndexConfig {
    /// Whether a catalog of `len` products gets the approximate index.
    pub fn uses_ann(&self, len: usize) -> bool {
        match self.ann {
            AnnMode::Auto => len > self.ann_above,
            AnnMode::Always => true,
            AnnMode::Never => false,
        }
    }
}
