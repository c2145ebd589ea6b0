//! Approximate search for large catalogs: an HNSW graph (`usearch`) proposes candidates, which
//! are then re-ranked with exact scores.
//!
//! Why this shape:
//! - The graph holds int8 copies of the vectors projected onto their top principal directions
//!   (256 of 1280, [`super::basis`]), a twentieth of the f32 bytes, so walking it touches little
//!   memory; the exact f32 rows kept beside it turn its approximate order into the exact one for
//!   the candidates it returns, so recall is limited only by what the walk finds.
//! - usearch's own int8 conversion scales each vector by its length, which leaves the components
//!   of a 1280-d unit vector (about ±0.03) only a handful of levels. lookalike quantises itself
//!   with one scale for the whole index (from a high percentile of |component|), which keeps
//!   dot products comparable between vectors and uses the full int8 range.
//! - Filters: a selective filter is answered exactly over the matching products (cheaper than
//!   walking a graph where most nodes are rejected); a broad one runs inside the graph walk; and
//!   if the walk finds fewer than k matching products while at least k match, the exact scan
//!   answers instead, so a filter never loses hits.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{anyhow, bail, ensure, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::basis::{PrincipalBasis, FIT_SAMPLE};
use super::{Allowed, ExactIndex, Hit, TopK, VectorIndex};
use crate::types::Key;

/// Tuning of the graph. The defaults (32 links, a 256-d subspace, 64 candidates) reach
/// recall@10 0.996 on the 60,000 Fashion-MNIST vectors; `lookalike bench search` sweeps the
/// candidates and compares other degrees and subspaces (docs/bench/search-60000.md).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AnnOptions {
    /// Graph degree (HNSW M). 32 rather than the usual 16: in the small subspace a link costs
    /// little to follow, and more links raise the recall each candidate buys (measured with
    /// `bench search --connectivity 16|24|32`: 0.99 at 32 to 40 candidates with 32 links, 48 with 16).
    pub connectivity: usize,
    /// Candidate list size while inserting (efConstruction).
    pub expansion_add: usize,
    /// Candidates fetched from the graph per query and re-ranked exactly (at least k).
    pub candidates: usize,
    /// Filters matching at most this many products are answered by an exact scan over them.
    pub exact_filter_below: usize,
    /// Dimensions of the vectors the graph walks: vectors with more are projected onto their
    /// top principal directions first (see [`super::basis`]); 0 keeps the vectors' own (graphs
    /// saved before this option existed).
    #[serde(default)]
    pub graph_dim: usize,
}

impl Default for AnnOptions {
    fn default() -> Self {
        AnnOptions { connectivity: 32, expansion_add: 128, candidates: 64, exact_filter_below: 20_000, graph_dim: DEFAULT_GRAPH_DIM }
    }
}

/// See [`AnnOptions::graph_dim`]: at a fifth of the cost per visited node, a 256-d graph
/// reaches recall@10 0.99 in less time than the full 1280-d one (`bench search --graph-dims
/// 256,192,384,0`, docs/bench/search-60000.md); 128 needs too many candidates.
pub const DEFAULT_GRAPH_DIM: usize = 256;

/// How many graph operations may run at once, and how many per-thread contexts the graph
/// reserves for them. usearch gives each search or insertion one of its reserved contexts and
/// fails the call when none is free, so a server answering more searches at once than there
/// are contexts (16 clients against the 2 a graph reserved by default on 2 cores) answered 500
/// to one request in nine. [`Permits`] makes the surplus wait instead.
fn graph_contexts() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).max(2) * 4
}

/// A counting semaphore: at most `n` holders at once; the others wait their turn.
struct Permits {
    free: std::sync::Mutex<usize>,
    returned: std::sync::Condvar,
}

struct Permit<'a>(&'a Permits);

impl Permits {
    fn new(n: usize) -> Permits {
        Permits { free: std::sync::Mutex::new(n), returned: std::sync::Condvar::new() }
    }

    fn acquire(&self) -> Permit<'_> {
        // A poisoned lock only means another holder panicked; the count is still right.
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.returned.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.returned.notify_one();
    }
}

/// HNSW candidates + exact re-ranking.
pub struct AnnIndex {
    graph: usearch::Index,
    /// One per reserved graph context (see [`graph_contexts`]).
    permits: Permits,
    exact: ExactIndex,
    /// Where the graph walks fewer dimensions than the rows have: the subspace it walks in.
    basis: Option<PrincipalBasis>,
    /// Multiplier taking a component (of the graph's vectors) to the int8 range.
    scale: f32,
    options: AnnOptions,
    /// Entries removed from the graph since it was built. usearch only marks a removed entry
    /// (it stays in memory and in the links walked by every search), so a catalog that keeps
    /// replacing products grows a graph of dead nodes; [`AnnIndex::needs_compaction`] says when
    /// rebuilding pays.
    tombstones: AtomicUsize,
    /// Recall@10 against the exact scan, measured on [`RECALL_SAMPLE`] of its own products when
    /// built (see [`AnnIndex::recall_at_10`]).
    recall_at_10: f32,
}

/// The rows and options of a graph that is due for compaction, copied out of it (see
/// [`AnnIndex::compaction`]): building from them takes no lock on the live index.
pub struct Compaction {
    exact: ExactIndex,
    options: AnnOptions,
    /// Dead entries in the graph it was copied from.
    pub tombstones: usize,
}

impl Compaction {
    /// Builds the fresh graph (in parallel, like [`AnnIndex::build`]).
    pub fn build(self) -> Result<AnnIndex> {
        AnnIndex::build(self.exact, self.options)
    }
}

/// What is written next to the graph file, to check it still belongs to the vectors.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct AnnStamp {
    pub dim: usize,
    pub scale: f32,
    pub options: AnnOptions,
    /// Caller's fingerprint of the vectors' space (changes when the mapping changes).
    pub space: String,
    /// Caller's position in its change log when the graph was saved.
    pub generation: i64,
    pub len: usize,
    /// [`AnnIndex`]'s count of removed entries still in the graph (absent in older stamps).
    #[serde(default)]
    pub tombstones: usize,
    /// Recall@10 measured when the graph was built (absent in older stamps: measured on load).
    #[serde(default)]
    pub recall_at_10: Option<f32>,
    /// CRC-32 of the basis file saved beside the graph, when the graph walks a principal
    /// subspace (see [`AnnOptions::graph_dim`]).
    #[serde(default)]
    pub basis_crc32: Option<u32>,
}

/// Products of the graph searched for themselves to measure its recall@10: 100 queries give
/// the figure to 0.001 (1,000 neighbours) and cost 100 exact scans (about 1 s at 60,000 x
/// 1280-d on 2 cores; 15 s at a million, against minutes to build that graph).
pub const RECALL_SAMPLE: usize = 100;

/// Graphs of fewer vectors are built on one thread ([`AnnIndex::build`]).
pub const SERIAL_BUILD_BELOW: usize = 10_000;

fn ffi_err<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow!("{what}: {e}")
}

impl AnnIndex {
    /// Builds the graph over every vector of `exact` (which must hold f32 rows), in parallel.
    pub fn build(exact: ExactIndex, options: AnnOptions) -> Result<AnnIndex> {
        ensure!(exact.precision() == super::Precision::F32, "the approximate index re-ranks with f32 rows");
        let basis = fit_basis(&exact, options.graph_dim);
        let scale = int8_scale(&exact, basis.as_ref());
        let index = AnnIndex::empty(exact, basis, scale, options)?;
        index.graph.reserve_capacity_and_threads(index.exact.len().max(16), graph_contexts()).map_err(ffi_err("reserving the graph"))?;
        let add = |&key: &Key| -> Result<()> {
            let v = index.exact.vector(key).context("vector vanished during build")?;
            let _permit = index.permits.acquire();
            index.graph.add(key as u64, &index.quantise(&v)).map_err(ffi_err("adding to the graph"))
        };
        // Threads inserting at once reach a different graph each run, and on a small graph the
        // difference shows in the recall it measures (a 300-product graph measured 1.000 on a
        // quiet machine and 0.974 on a loaded one), which decides whether the graph is used. A
        // small graph is built on one thread, in key order: the same graph, recall and index
        // choice every run, for a build of a second or two.
        if index.exact.len() < SERIAL_BUILD_BELOW {
            index.exact.keys().iter().try_for_each(add)?;
        } else {
            index.exact.keys().par_iter().try_for_each(add)?;
        }
        let mut index = index;
        index.recall_at_10 = index.measure_recall(RECALL_SAMPLE)?;
        Ok(index)
    }

    /// Recall@10 against the exact scan of the same rows: every product of an evenly spaced
    /// sample of `sample` searched for itself, the share of the exact top 10 the graph returns.
    pub fn measure_recall(&self, sample: usize) -> Result<f32> {
        let keys = self.exact.keys();
        let step = keys.len().div_ceil(sample.max(1)).max(1);
        let (mut found, mut total) = (0usize, 0usize);
        for &key in keys.iter().step_by(step) {
            let Some(query) = self.exact.vector(key) else { continue };
            let exact: std::collections::HashSet<Key> = self.exact.search(&query, 10, None)?.into_iter().map(|h| h.key).collect();
            found += self.search(&query, 10, None)?.iter().filter(|h| exact.contains(&h.key)).count();
            total += exact.len();
        }
        Ok(if total == 0 { 1.0 } else { found as f32 / total as f32 })
    }

    /// Recall@10 of the graph against the exact scan, measured on its own products when it was
    /// built (or loaded from a stamp that had none).
    pub fn recall_at_10(&self) -> f32 {
        self.recall_at_10
    }

    /// The exact rows alone, the graph dropped: what a catalog whose graph misses its recall
    /// target is searched with.
    pub fn into_exact(self) -> ExactIndex {
        self.exact
    }

    fn empty(exact: ExactIndex, basis: Option<PrincipalBasis>, scale: f32, options: AnnOptions) -> Result<AnnIndex> {
        let graph = usearch::Index::new(&usearch::IndexOptions {
            dimensions: basis.as_ref().map_or(exact.dim(), PrincipalBasis::dim_out),
            metric: usearch::MetricKind::IP,
            quantization: usearch::ScalarKind::I8,
            connectivity: options.connectivity,
            expansion_add: options.expansion_add,
            expansion_search: options.candidates,
            multi: false,
        })
        .map_err(ffi_err("creating the graph"))?;
        Ok(AnnIndex { graph, permits: Permits::new(graph_contexts()), exact, basis, scale, options, tombstones: AtomicUsize::new(0), recall_at_10: f32::NAN })
    }

    /// Loads a graph saved by [`AnnIndex::save`] and pairs it with the vectors in `exact`, then
    /// replays `changed` keys (written or removed since the save) from `exact` into the graph.
    /// On error `exact` comes back, so the caller can build a new graph without reloading it.
    #[allow(clippy::result_large_err)] // the rows come back only on the (rare) error path
    pub fn load(path: &Path, stamp: &AnnStamp, exact: ExactIndex, changed: &[Key]) -> Result<AnnIndex, (ExactIndex, anyhow::Error)> {
        let (graph, basis) = match load_graph(path, stamp, exact.dim()) {
            Ok(loaded) => loaded,
            Err(e) => return Err((exact, e)),
        };
        let mut index = AnnIndex {
            graph,
            permits: Permits::new(graph_contexts()),
            exact,
            basis,
            scale: stamp.scale,
            options: stamp.options,
            tombstones: AtomicUsize::new(stamp.tombstones),
            recall_at_10: stamp.recall_at_10.unwrap_or(f32::NAN),
        };
        if let Err(e) = index.replay(changed) {
            return Err((index.exact, e));
        }
        if index.graph.size() != index.exact.len() {
            let e = anyhow!("{} holds {} vectors, the catalog {}", path.display(), index.graph.size(), index.exact.len());
            return Err((index.exact, e));
        }
        if stamp.recall_at_10.is_none() {
            match index.measure_recall(RECALL_SAMPLE) {
                Ok(recall) => index.recall_at_10 = recall,
                Err(e) => return Err((index.exact, e)),
            }
        }
        Ok(index)
    }

    /// Brings the graph in line with the exact rows for `keys`.
    fn replay(&self, keys: &[Key]) -> Result<()> {
        let wanted = self.graph.size() + keys.len();
        if wanted >= self.graph.capacity() {
            self.graph.reserve_capacity_and_threads(wanted + 1024, graph_contexts()).map_err(ffi_err("growing the graph"))?;
        }
        for &key in keys {
            self.remove_from_graph(key)?;
            if let Some(v) = self.exact.vector(key) {
                let _permit = self.permits.acquire();
                self.graph.add(key as u64, &self.quantise(&v)).map_err(ffi_err("adding to the graph"))?;
            }
        }
        Ok(())
    }

    /// Writes the graph to `path` (via a temporary file, so a crash never leaves half a graph).
    pub fn save(&self, path: &Path, space: &str, generation: i64) -> Result<AnnStamp> {
        let tmp = path.with_extension("tmp");
        let tmp_str = tmp.to_str().with_context(|| format!("{} is not UTF-8", tmp.display()))?;
        self.graph.save(tmp_str).map_err(|e| anyhow!("writing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        let basis_crc32 = match &self.basis {
            Some(basis) => {
                let bytes = basis.to_bytes();
                let basis_path = basis_path(path);
                let tmp = basis_path.with_extension("basis.tmp");
                std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
                std::fs::rename(&tmp, &basis_path).with_context(|| format!("renaming {} to {}", tmp.display(), basis_path.display()))?;
                Some(crc32fast::hash(&bytes))
            }
            None => None,
        };
        Ok(AnnStamp {
            dim: self.exact.dim(),
            scale: self.scale,
            options: self.options,
            space: space.to_string(),
            generation,
            len: self.len(),
            tombstones: self.tombstones(),
            recall_at_10: Some(self.recall_at_10),
            basis_crc32,
        })
    }

    fn remove_from_graph(&self, key: Key) -> Result<()> {
        if self.graph.contains(key as u64) {
            self.graph.remove(key as u64).map_err(ffi_err("removing from the graph"))?;
            self.tombstones.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Removed entries the graph still carries.
    pub fn tombstones(&self) -> usize {
        self.tombstones.load(Ordering::Relaxed)
    }

    /// Whether dead entries have reached a quarter of the live ones: past that, a rebuild
    /// (seconds per 100,000 products) is cheaper than walking and storing them on every query.
    pub fn needs_compaction(&self) -> bool {
        self.tombstones() * 4 > self.len().max(16)
    }

    /// A fresh graph over the live vectors, without tombstones. The old graph is freed first,
    /// so this needs no more memory than the index already holds.
    pub fn compacted(self) -> Result<AnnIndex> {
        let AnnIndex { graph, exact, options, .. } = self;
        // The basis is fitted again: the products may have changed since.
        drop(graph);
        AnnIndex::build(exact, options)
    }

    /// When [`AnnIndex::needs_compaction`], a copy of what a fresh graph is built from, so the
    /// build can run while this index goes on answering searches.
    pub fn compaction(&self) -> Option<Compaction> {
        self.needs_compaction().then(|| Compaction { exact: self.exact.clone(), options: self.options, tombstones: self.tombstones() })
    }

    /// The exact rows, for callers that want to check or reuse them.
    pub fn exact(&self) -> &ExactIndex {
        &self.exact
    }

    /// Changes how many candidates each query fetches (recall/speed trade-off).
    pub fn set_candidates(&mut self, candidates: usize) {
        self.options.candidates = candidates.max(1);
        self.graph.change_expansion_search(self.options.candidates);
    }

    /// Keys in the graph (for reconciling a saved graph with the catalog).
    pub fn graph_contains(&self, key: Key) -> bool {
        self.graph.contains(key as u64)
    }

    /// Bytes of memory held by the graph (int8 vectors + links).
    /// Bytes the rows and the graph take in memory.
    pub fn memory_bytes(&self) -> usize {
        self.exact.memory_bytes() + self.graph.memory_usage()
    }

    pub fn graph_bytes(&self) -> usize {
        self.graph.memory_usage()
    }

    /// Dimensions of the vectors the graph walks.
    pub fn graph_dim(&self) -> usize {
        self.basis.as_ref().map_or(self.exact.dim(), PrincipalBasis::dim_out)
    }

    /// `v` as the graph holds it: projected onto the basis, if any, then int8.
    fn quantise(&self, v: &[f32]) -> Vec<i8> {
        let quantise = |x: f32| (x * self.scale).round().clamp(-127.0, 127.0) as i8;
        match &self.basis {
            Some(basis) => basis.project(v).into_iter().map(quantise).collect(),
            None => v.iter().copied().map(quantise).collect(),
        }
    }

    fn rerank(&self, query: &[f32], candidates: &[u64], k: usize) -> Vec<Hit> {
        let mut top = TopK::new(k);
        for (key, score) in self.exact.scores(query, candidates.iter().map(|&c| c as Key)) {
            top.push(key, score);
        }
        top.into_sorted()
    }
}

/// Where the basis of the graph saved at `graph` is kept: beside it (`shop.db.graph.basis`).
pub fn basis_path(graph: &Path) -> std::path::PathBuf {
    let mut name = graph.as_os_str().to_owned();
    name.push(".basis");
    name.into()
}

fn load_graph(path: &Path, stamp: &AnnStamp, dim: usize) -> Result<(usearch::Index, Option<PrincipalBasis>)> {
    ensure!(stamp.dim == dim, "saved graph is {}-d, the vectors are {}-d", stamp.dim, dim);
    let path_str = path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))?;
    let basis = match stamp.basis_crc32 {
        Some(crc) => {
            let basis_path = basis_path(path);
            let bytes = std::fs::read(&basis_path).with_context(|| format!("reading {}", basis_path.display()))?;
            ensure!(crc32fast::hash(&bytes) == crc, "{} is damaged (checksum mismatch)", basis_path.display());
            let dim_out = bytes.len() / 4 / dim.max(1);
            Some(PrincipalBasis::from_bytes(&bytes, dim_out, dim).with_context(|| format!("reading {}", basis_path.display()))?)
        }
        None => None,
    };
    let graph_dim = basis.as_ref().map_or(dim, PrincipalBasis::dim_out);
    let graph = usearch::Index::new(&usearch::IndexOptions {
        dimensions: graph_dim,
        metric: usearch::MetricKind::IP,
        quantization: usearch::ScalarKind::I8,
        connectivity: stamp.options.connectivity,
        expansion_add: stamp.options.expansion_add,
        expansion_search: stamp.options.candidates,
        multi: false,
    })
    .map_err(ffi_err("creating the graph"))?;
    graph.load(path_str).map_err(|e| anyhow!("loading {}: {e}", path.display()))?;
    // A loaded graph reserves contexts for the machine's cores only.
    graph.reserve_capacity_and_threads(graph.capacity().max(graph.size()).max(16), graph_contexts()).map_err(ffi_err("reserving the graph"))?;
    graph.change_expansion_search(stamp.options.candidates);
    ensure!(graph.dimensions() == graph_dim, "{} holds {}-d vectors, expected {graph_dim}", path.display(), graph.dimensions());
    Ok((graph, basis))
}

/// The principal subspace the graph over `exact` walks, when `graph_dim` asks for fewer
/// dimensions than the rows have and there are enough rows to tell the directions apart (at
/// least four per direction); else `None`, and the graph walks the rows themselves.
fn fit_basis(exact: &ExactIndex, graph_dim: usize) -> Option<PrincipalBasis> {
    let dim = exact.dim();
    if graph_dim == 0 || graph_dim >= dim || exact.len() < super::basis::MIN_ROWS_PER_DIRECTION * graph_dim {
        return None;
    }
    let keys = exact.keys();
    let step = keys.len().div_ceil(FIT_SAMPLE).max(1);
    let rows: Vec<f32> = keys.iter().step_by(step).filter_map(|&k| exact.vector(k)).flatten().collect();
    let sample = ndarray::ArrayView2::from_shape((rows.len() / dim, dim), &rows).ok()?;
    match PrincipalBasis::fit(sample, graph_dim, 42) {
        Ok(basis) => Some(basis),
        Err(e) => {
            // Degenerate rows (e.g. many identical products): the full vectors still work.
            tracing::warn!("the search graph walks all {dim} dimensions: {e:#}");
            None
        }
    }
}

/// 127 over the 99.99th percentile of |component| in a sample of the graph's vectors.
fn int8_scale(exact: &ExactIndex, basis: Option<&PrincipalBasis>) -> f32 {
    let keys = exact.keys();
    let step = (keys.len() / 2000).max(1);
    let mut magnitudes: Vec<f32> = keys.iter().step_by(step).filter_map(|&k| exact.vector(k)).flat_map(|v| basis.map_or(v.clone(), |b| b.project(&v))).map(f32::abs).collect();
    if magnitudes.is_empty() {
        return 127.0;
    }
    let at = ((magnitudes.len() as f64) * 0.9999) as usize;
    let at = at.min(magnitudes.len() - 1);
    let (_, top, _) = magnitudes.select_nth_unstable_by(at, f32::total_cmp);
    if *top > 0.0 {
        127.0 / *top
    } else {
        127.0
    }
}

impl VectorIndex for AnnIndex {
    fn dim(&self) -> usize {
        self.exact.dim()
    }

    fn len(&self) -> usize {
        self.exact.len()
    }

    fn upsert(&mut self, key: Key, vector: &[f32]) -> Result<()> {
        self.exact.upsert(key, vector)?;
        self.remove_from_graph(key)?;
        if self.graph.size() + 1 >= self.graph.capacity() {
            let grown = (self.graph.capacity() * 2).max(1024);
            self.graph.reserve_capacity_and_threads(grown, graph_contexts()).map_err(ffi_err("growing the graph"))?;
        }
        let _permit = self.permits.acquire();
        self.graph.add(key as u64, &self.quantise(vector)).map_err(ffi_err("adding to the graph"))
    }

    fn remove(&mut self, key: Key) -> Result<()> {
        self.exact.remove(key)?;
        self.remove_from_graph(key)
    }

    fn search(&self, query: &[f32], k: usize, allowed: Option<&Allowed>) -> Result<Vec<Hit>> {
        if query.len() != self.dim() {
            bail!("vector has {} dimensions, the index holds {}-d vectors", query.len(), self.dim());
        }
        if k == 0 {
            return Ok(Vec::new());
        }
        let fetch = self.options.candidates.max(k);
        let q = self.quantise(query);
        let Some(allowed) = allowed else {
            let found = {
                let _permit = self.permits.acquire();
                self.graph.search(&q, fetch).map_err(ffi_err("searching the graph"))?
            };
            return Ok(self.rerank(query, &found.keys, k));
        };
        if allowed.len() <= self.options.exact_filter_below {
            return self.exact.search(query, k, Some(allowed));
        }
        let found = {
            let _permit = self.permits.acquire();
            self.graph.filtered_search(&q, fetch, |key| allowed.contains(&(key as Key))).map_err(ffi_err("searching the graph"))?
        };
        let hits = self.rerank(query, &found.keys, k);
        if hits.len() < k.min(allowed.len()) {
            // The walk ran out of matching neighbours; never return fewer hits than match.
            return self.exact.search(query, k, Some(allowed));
        }
        Ok(hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::l2_normalize;
    use rand::{Rng, SeedableRng};

    /// Clustered unit vectors, like embeddings of a catalog with a few product types.
    fn clustered(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let centres: Vec<Vec<f32>> = (0..20).map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
        (0..n)
            .map(|i| {
                let mut v: Vec<f32> = centres[i % 20].iter().map(|c| c + rng.random_range(-0.3..0.3)).collect();
                l2_normalize(&mut v);
                v
            })
            .collect()
    }

    /// Exact rows holding `vectors` under keys 0, 1, 2...
    fn rows(vectors: &[Vec<f32>]) -> Result<ExactIndex> {
        let mut exact = ExactIndex::new(vectors.first().map_or(1, Vec::len));
        for (i, v) in vectors.iter().enumerate() {
            exact.upsert(i as Key, v)?;
        }
        Ok(exact)
    }

    #[test]
    fn graph_search_finds_the_exact_neighbours_and_honours_filters() -> Result<()> {
        let (n, dim) = (3000, 48);
        let vectors = clustered(n, dim, 1);
        let exact = rows(&vectors)?;
        let mut ann = AnnIndex::build(exact.clone(), AnnOptions::default())?;
        // Send the 3-product filter below through the graph walk and its exact fallback too.
        ann.options.exact_filter_below = 10;
        ann.set_candidates(128);
        let (mut found, mut total) = (0, 0);
        for q in clustered(50, dim, 2) {
            let truth: Vec<Key> = exact.search(&q, 10, None)?.iter().map(|h| h.key).collect();
            let got = ann.search(&q, 10, None)?;
            assert!(got.windows(2).all(|w| w[0].score >= w[1].score));
            found += got.iter().filter(|h| truth.contains(&h.key)).count();
            total += truth.len();
            // A broad filter (inside the walk) and a selective one (exact) both return only
            // allowed products, and k of them.
            let broad: Allowed = (0..n as Key).filter(|k| k % 3 != 0).collect();
            let hits = ann.search(&q, 10, Some(&broad))?;
            assert_eq!(hits.len(), 10);
            assert!(hits.iter().all(|h| broad.contains(&h.key)));
            let few: Allowed = [5, 17, 2999].into_iter().collect();
            let hits = ann.search(&q, 10, Some(&few))?;
            assert_eq!(hits.iter().map(|h| h.key).collect::<Allowed>(), few);
        }
        let recall = found as f64 / total as f64;
        // Random noise around 20 centres is harder than real embeddings (recall on those is
        // measured by `lookalike bench search`); this guards against a broken walk or re-rank.
        assert!(recall >= 0.9, "recall@10 {recall}");
        Ok(())
    }

    #[test]
    fn incremental_changes_and_a_saved_graph_survive() -> Result<()> {
        let dim = 32;
        let vectors = clustered(500, dim, 3);
        let exact = rows(&vectors)?;
        let mut ann = AnnIndex::build(exact, AnnOptions::default())?;
        ann.remove(7)?;
        ann.upsert(1000, &vectors[7])?;
        ann.upsert(3, &vectors[8])?; // replace in place
        let hits = ann.search(&vectors[7], 1, None)?;
        assert_eq!(hits[0].key, 1000);
        assert!(ann.search(&vectors[7], 500, None)?.iter().all(|h| h.key != 7));
        assert_eq!(ann.len(), 500);

        let dir = tempfile::tempdir()?;
        let path = dir.path().join("graph.usearch");
        let stamp = ann.save(&path, "space", 42)?;
        let loaded = AnnIndex::load(&path, &stamp, ann.exact().clone(), &[]).map_err(|(_, e)| e)?;
        assert!(loaded.graph_contains(1000) && !loaded.graph_contains(7));
        assert_eq!(loaded.search(&vectors[7], 5, None)?, ann.search(&vectors[7], 5, None)?);

        // Changes made after the save are replayed from the exact rows.
        let mut later = ann.exact().clone();
        later.remove(1000)?;
        later.upsert(2000, &vectors[9])?;
        later.upsert(2001, &vectors[10])?;
        let caught_up = AnnIndex::load(&path, &stamp, later.clone(), &[1000, 2000, 2001]).map_err(|(_, e)| e)?;
        assert!(!caught_up.graph_contains(1000) && caught_up.graph_contains(2000) && caught_up.graph_contains(2001));
        // A save that misses changes is refused (and the rows come back for a rebuild).
        let (rows, err) = AnnIndex::load(&path, &stamp, later, &[]).err().expect("size mismatch detected");
        assert_eq!(rows.len(), 501);
        assert!(err.to_string().contains("holds"), "{err}");
        std::fs::write(&path, b"torn")?;
        assert!(AnnIndex::load(&path, &stamp, rows, &[]).is_err(), "a damaged graph file is refused");
        Ok(())
    }

    /// Unit vectors whose variance falls off along the axes (component j spread exp(-j/24)), as
    /// an embedding's does along its principal directions: the top 32 of 256 carry most of it.
    fn decaying(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let mut v: Vec<f32> = (0..dim).map(|j| (-(j as f32) / 24.0).exp() * rng.random_range(-1.0..1.0)).collect();
                l2_normalize(&mut v);
                v
            })
            .collect()
    }

    #[test]
    fn a_graph_over_a_principal_subspace_finds_the_neighbours_and_keeps_its_basis() -> Result<()> {
        // One build thread, so the graph (and its recall) is the same every run.
        rayon::ThreadPoolBuilder::new().num_threads(1).build()?.install(principal_subspace_scenario)
    }

    fn principal_subspace_scenario() -> Result<()> {
        let (n, dim) = (2000, 256);
        let vectors = decaying(n, dim, 11);
        let options = AnnOptions { graph_dim: 32, ..AnnOptions::default() };
        let mut ann = AnnIndex::build(rows(&vectors)?, options)?;
        assert_eq!(ann.graph_dim(), 32);
        ann.set_candidates(64);
        let (mut found, mut total) = (0, 0);
        for q in decaying(50, dim, 12) {
            let truth: Vec<Key> = ann.exact().search(&q, 10, None)?.iter().map(|h| h.key).collect();
            let got = ann.search(&q, 10, None)?;
            // Scores are the exact ones, whatever space the walk used.
            for hit in &got {
                assert_eq!(Some(hit.score), ann.exact().score(&q, hit.key));
            }
            found += got.iter().filter(|h| truth.contains(&h.key)).count();
            total += truth.len();
        }
        let recall = found as f64 / total as f64;
        assert!(recall >= 0.95, "recall@10 {recall}");

        // The basis is saved beside the graph and read back: the loaded graph answers alike.
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("shop.db.graph");
        let stamp = ann.save(&path, "space", 3)?;
        assert!(stamp.basis_crc32.is_some() && basis_path(&path).exists());
        let loaded = AnnIndex::load(&path, &stamp, ann.exact().clone(), &[]).map_err(|(_, e)| e)?;
        assert_eq!(loaded.graph_dim(), 32);
        let mut loaded = loaded;
        loaded.set_candidates(64);
        assert_eq!(loaded.search(&vectors[5], 10, None)?, ann.search(&vectors[5], 10, None)?);
        // A damaged basis is refused, and the rows come back for a rebuild.
        let mut bytes = std::fs::read(basis_path(&path))?;
        bytes[100] ^= 0x40;
        std::fs::write(basis_path(&path), &bytes)?;
        let (back, err) = AnnIndex::load(&path, &stamp, ann.exact().clone(), &[]).err().expect("damaged basis detected");
        assert_eq!(back.len(), n);
        assert!(format!("{err:#}").contains("damaged"), "{err:#}");

        // Too few products to tell 32 directions apart (fewer than four per direction), or no
        // fewer dimensions asked for: the graph walks the vectors themselves.
        assert_eq!(AnnIndex::build(rows(&vectors[..100])?, options)?.graph_dim(), dim);
        assert_eq!(AnnIndex::build(rows(&vectors[..200])?, AnnOptions { graph_dim: 0, ..options })?.graph_dim(), dim);
        Ok(())
    }

    #[test]
    fn more_searches_at_once_than_graph_contexts_all_succeed() -> Result<()> {
        let vectors = clustered(500, 32, 7);
        let ann = AnnIndex::build(rows(&vectors)?, AnnOptions::default())?;
        // Four times the reserved contexts, released together by a barrier: without the permits
        // usearch fails the searches that find no free context.
        let threads = graph_contexts() * 4;
        let start = std::sync::Barrier::new(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (ann, start, vectors) = (&ann, &start, &vectors);
                    scope.spawn(move || -> Result<()> {
                        start.wait();
                        for i in 0..20 {
                            let hits = ann.search(&vectors[(t * 20 + i) % vectors.len()], 10, None)?;
                            ensure!(hits.len() == 10, "a search returned {} hits", hits.len());
                        }
                        Ok(())
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| h.join().map_err(|_| anyhow!("a search thread panicked"))?)
        })
    }

    #[test]
    fn tombstones_are_counted_saved_and_compacted_away() -> Result<()> {
        // One build thread: a parallel build links the graph differently each run, and an HNSW
        // graph can leave an entry unreachable (here, in about one build in thirty); the same
        // single-threaded build gives the same graph every time.
        rayon::ThreadPoolBuilder::new().num_threads(1).build()?.install(tombstones_scenario)
    }

    fn tombstones_scenario() -> Result<()> {
        let vectors = clustered(400, 32, 5);
        let mut ann = AnnIndex::build(rows(&vectors)?, AnnOptions::default())?;
        // Replacing a product's vector and removing a product both leave a dead entry.
        for key in 0..60 {
            ann.upsert(key, &vectors[(key + 1) as usize])?;
        }
        for key in 60..100 {
            ann.remove(key)?;
        }
        ann.remove(9999)?; // not there: nothing to count
        assert_eq!(ann.tombstones(), 100);
        assert!(ann.needs_compaction(), "100 dead entries for 360 live ones");

        let dir = tempfile::tempdir()?;
        let path = dir.path().join("graph.usearch");
        let stamp = ann.save(&path, "space", 1)?;
        assert_eq!(stamp.tombstones, 100);
        let loaded = AnnIndex::load(&path, &stamp, ann.exact().clone(), &[5]).map_err(|(_, e)| e)?;
        assert_eq!(loaded.tombstones(), 101, "the replayed change adds one");

        // After the rebuild, with every entry a candidate, the graph answers exactly.
        let truth = loaded.exact().search(&vectors[200], 10, None)?;
        let mut compacted = loaded.compacted()?;
        assert_eq!(compacted.tombstones(), 0);
        assert!(!compacted.needs_compaction());
        assert_eq!(compacted.len(), 360);
        compacted.set_candidates(1000);
        assert_eq!(compacted.search(&vectors[200], 10, None)?, truth);
        Ok(())
    }
}
