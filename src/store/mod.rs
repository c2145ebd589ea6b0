//! Opening a catalog's vector store, in one place for search, eval, serve and repair: the
//! exact scan, the HNSW graph (saved beside the catalog, caught up from its change log, rebuilt
//! when it does not fit), or a Qdrant collection ([`collection`]: opening it for a catalog,
//! keeping it in sync, and the description servers without the catalog search it by).

pub mod collection;

pub use collection::{
    apply_recorded_removals, carries_photo, collection_points, collection_sent_through, collection_space, collection_status, collection_synced_space, open_collection, open_qdrant,
    payload_images, payload_photo, read_collection_description, remove_from_collection, replaced_without_catalog, send_changes_since, sync_qdrant, sync_qdrant_observed,
    CollectionDescription, CollectionStatus, KeepReplaced, ReplacedCollection, StoredSpace, SyncMode, SyncStep,
};

use anyhow::{Context, Result};

use crate::catalog::{graph_paths, SqliteCatalog, VectorKind};
use crate::index::qdrant::{QdrantIndex, StoredProduct};
use crate::index::{Allowed, AnnIndex, AnnStamp, Compaction, ExactIndex, Hit, IndexConfig, IndexStats, StoreUnavailable, VectorIndex};
use crate::space::SearchSpace;
use crate::types::{Filter, Key};

/// The vector store a search engine holds: one of the concrete indexes. What every store does
/// goes through [`VectorIndex`] ([`Store::index`]); what only one does (a graph's compaction, a
/// remote store's payloads and its own filtering) is here, by kind.
#[allow(clippy::large_enum_variant)] // one per engine, made once: its size costs nothing
pub enum Store {
    /// Every vector scored per query (the default up to 100,000 products).
    Exact(ExactIndex),
    /// An HNSW graph proposing candidates, re-ranked exactly.
    Graph(AnnIndex),
    /// A Qdrant collection.
    Qdrant(QdrantIndex),
}

impl Store {
    pub fn index(&self) -> &dyn VectorIndex {
        match self {
            Store::Exact(index) => index,
            Store::Graph(index) => index,
            Store::Qdrant(index) => index,
        }
    }

    pub fn index_mut(&mut self) -> &mut dyn VectorIndex {
        match self {
            Store::Exact(index) => index,
            Store::Graph(index) => index,
            Store::Qdrant(index) => index,
        }
    }

    /// The `k` best hits for `query` among the products `filter` admits. An embedded store
    /// takes the admitted keys (`allowed`, computed from the catalog when there is a filter);
    /// Qdrant evaluates the filter on the payloads it holds.
    pub fn search(&self, query: &[f32], k: usize, filter: &Filter, allowed: Option<&Allowed>) -> Result<Vec<Hit>> {
        match self {
            Store::Qdrant(index) if !filter.is_empty() => index.search_filter(query, k, filter),
            _ => self.index().search(query, k, allowed),
        }
    }

    /// Adds or replaces `key`'s vector, telling a store that keeps products beside their
    /// vectors who it is (and its photo, if small). An embedded store opened over an empty
    /// catalog has no dimension yet: the first vector gives it one.
    pub fn put(&mut self, key: Key, vector: &[f32], product: StoredProduct, image: Option<&[u8]>) -> Result<()> {
        if let Store::Qdrant(index) = self {
            return index.put_product(key, product, vector, image);
        }
        let index = self.index();
        if index.is_empty() && index.dim() != vector.len() {
            *self = Store::Exact(ExactIndex::new(vector.len()));
        }
        self.index_mut().upsert(key, vector)
    }

    /// The Qdrant collection, when that is the store: it keeps each product's payload, which
    /// searches then show instead of the catalog's rows.
    pub fn collection(&self) -> Option<&QdrantIndex> {
        match self {
            Store::Qdrant(index) => Some(index),
            _ => None,
        }
    }

    pub fn collection_mut(&mut self) -> Option<&mut QdrantIndex> {
        match self {
            Store::Qdrant(index) => Some(index),
            _ => None,
        }
    }

    /// Whether the store can answer now: an embedded one always can; a remote one is asked.
    pub fn health(&self) -> Result<(), StoreUnavailable> {
        match self {
            Store::Qdrant(index) => index.health(),
            _ => Ok(()),
        }
    }

    /// Vectors, bytes in this process, and dead graph entries, for monitoring.
    pub fn stats(&self) -> IndexStats {
        let (memory_bytes, dead_entries) = match self {
            Store::Exact(index) => (index.memory_bytes(), 0),
            Store::Graph(index) => (index.memory_bytes(), index.tombstones()),
            Store::Qdrant(_) => (0, 0),
        };
        let graph_recall_at_10 = match self {
            Store::Graph(index) => Some(index.recall_at_10()),
            _ => None,
        };
        IndexStats { vectors: self.index().len(), memory_bytes, dead_entries, graph_recall_at_10 }
    }

    /// A graph with enough dead entries to be worth rebuilding: what the rebuild needs.
    pub fn compaction(&self) -> Option<Compaction> {
        match self {
            Store::Graph(index) => index.compaction(),
            _ => None,
        }
    }

    /// Whether [`Store::compaction`] has work, and how many bytes the store holds now (the
    /// rebuild needs about as many again).
    pub fn compaction_due(&self) -> Option<usize> {
        match self {
            Store::Graph(index) if index.needs_compaction() => Some(index.memory_bytes()),
            _ => None,
        }
    }
}

/// The index `config` asks for over the catalog's vectors: a Qdrant collection, the exact scan,
/// or the search graph (loaded from its file and caught up, or built).
pub fn open_index(catalog: &SqliteCatalog, space: &SearchSpace, config: &IndexConfig) -> Result<Store> {
    if let Some(store) = &config.store {
        return Ok(Store::Qdrant(open_qdrant(catalog, space, store)?));
    }
    let len = catalog.vector_count()?;
    let dim = space.output_dim(catalog.vector_space()?.map_or(0, |s| s.dim));
    let try_ann = config.tries_ann(len, dim);
    let precision = if try_ann { crate::index::Precision::F32 } else { config.precision };
    // Read before the rows: a graph is saved as holding every change up to here, and the
    // change log is trimmed to it, so a change another process commits while the rows are read
    // must come after it (and stay in the log, for whoever follows it), not be trimmed unread.
    let generation = catalog.generation()?;
    let exact = space.build_index(catalog, VectorKind::Primary, precision)?;
    if !try_ann || exact.is_empty() {
        return Ok(Store::Exact(exact));
    }
    // The graph is used where it is measured to find what the scan finds: its recall@10 on the
    // catalog's own products (measured when it is built, kept in its stamp).
    let graph = open_graph(catalog, space, exact, generation, config)?;
    let recall = graph.recall_at_10();
    if config.accepts_recall(recall) {
        tracing::info!("search index: graph, recall@10 {recall:.3} on its own products ({len} products of {dim}-d; a scan is as fast below {})", config.graph_above(dim));
        return Ok(Store::Graph(graph));
    }
    tracing::warn!(
        "search index: exact scan, because the graph measured recall@10 {recall:.3}, below the {:.3} asked for (--ann-recall); more --ann-candidates raise it",
        config.ann_recall
    );
    let exact = graph.into_exact();
    Ok(Store::Exact(if precision == config.precision { exact } else { space.build_index(catalog, VectorKind::Primary, config.precision)? }))
}

/// What [`open_index`] chooses for this catalog under `config`, in words, read from the
/// catalog and its saved graph's stamp without building anything (`lookalike info`).
pub fn describe_index(catalog: &SqliteCatalog, config: &IndexConfig) -> Result<String> {
    if config.store.is_some() {
        return Ok("a Qdrant collection".into());
    }
    let space = SearchSpace::for_catalog(catalog)?;
    let len = catalog.vector_count()?;
    let dim = space.output_dim(catalog.vector_space()?.map_or(0, |s| s.dim));
    let above = config.graph_above(dim);
    if !config.tries_ann(len, dim) {
        return Ok(format!("exact scan ({len} products of {dim}-d; a scan is as fast as the graph up to {above})"));
    }
    let (_, stamp_path) = graph_paths(catalog.path());
    let stamp: Option<AnnStamp> = std::fs::read(&stamp_path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
    Ok(match stamp.filter(|s| s.space == space.fingerprint() && s.options == config.ann_options).and_then(|s| s.recall_at_10) {
        Some(recall) if config.accepts_recall(recall) => format!("search graph, recall@10 {recall:.3} measured on its own products ({len} products of {dim}-d, above {above})"),
        Some(recall) => format!("exact scan: the search graph measured recall@10 {recall:.3}, below the {:.3} asked for", config.ann_recall),
        None => format!("search graph, built and measured by the next `search` or `serve` ({len} products of {dim}-d, above {above})"),
    })
}

/// The catalog's saved search graph, caught up with the products changed since it was saved;
/// or, if there is none or it does not fit (other space, options or a damaged file), a new one,
/// saved for next time. Building takes minutes for a million products; loading, seconds.
/// `exact` holds the rows as of `generation` of the change log or later; the graph is saved as
/// of `generation`.
fn open_graph(catalog: &SqliteCatalog, space: &SearchSpace, exact: ExactIndex, generation: i64, config: &IndexConfig) -> Result<AnnIndex> {
    let (graph_path, stamp_path) = graph_paths(catalog.path());
    let _turn = graph_turn(&graph_path);
    let fingerprint = space.fingerprint();
    let stamp: Option<AnnStamp> = std::fs::read(&stamp_path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let mut exact = exact;
    if let Some(stamp) = stamp.filter(|s| s.space == fingerprint && s.options == config.ann_options && s.dim == exact.dim()) {
        let changed = catalog.changed_since(stamp.generation)?;
        match AnnIndex::load(&graph_path, &stamp, exact, &changed) {
            Ok(graph) if graph.needs_compaction() => {
                tracing::info!("rebuilding the search graph: {} of its entries are removed or replaced products", graph.tombstones());
                let graph = graph.compacted()?;
                save_graph(catalog, &graph, &fingerprint, generation, &graph_path, &stamp_path);
                return Ok(graph);
            }
            Ok(graph) => {
                if !changed.is_empty() {
                    save_graph(catalog, &graph, &fingerprint, generation, &graph_path, &stamp_path);
                }
                return Ok(graph);
            }
            Err((rows, e)) => {
                tracing::warn!("rebuilding the search graph: {e:#}");
                exact = rows;
            }
        }
    }
    tracing::info!("building the search graph for {} products (once; it is saved to {})", exact.len(), graph_path.display());
    let graph = AnnIndex::build(exact, config.ann_options)?;
    save_graph(catalog, &graph, &fingerprint, generation, &graph_path, &stamp_path);
    Ok(graph)
}

/// Waits for this process's turn at the catalog's graph files. Two processes opening one catalog
/// at once (two servers starting, `search` beside `serve`) take turns: the graph file, its stamp
/// and the change log they trim must come from the same process. Without a lock (read-only
/// directory) each still checks what it loads. The turn ends when the file is dropped.
pub fn graph_turn(graph_path: &std::path::Path) -> Option<std::fs::File> {
    let lock_path = crate::catalog::with_suffix(graph_path, ".lock");
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .and_then(|file| match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                // Said before waiting: building a large graph takes minutes, and a command that
                // sits silent that long looks hung.
                tracing::info!("waiting for another process to finish with the search graph ({} is locked)", std::path::Path::new(&lock_path).display());
                file.lock().map(|()| file)
            }
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        })
        .map_err(|e| tracing::debug!("no lock on {}: {e}", std::path::Path::new(&lock_path).display()))
        .ok()
}

/// Saves the graph and its stamp; a failure (read-only directory, full disk) only costs a
/// rebuild next time, so it is logged, not returned.
fn save_graph(catalog: &SqliteCatalog, graph: &AnnIndex, fingerprint: &str, generation: i64, graph_path: &std::path::Path, stamp_path: &std::path::Path) {
    let saved = write_graph(graph, fingerprint, generation, graph_path, stamp_path).and_then(|()| catalog.forget_changes_through(generation));
    if let Err(e) = saved {
        tracing::warn!("could not save the search graph (it will be rebuilt next time): {e:#}");
    }
}

/// Writes the graph, then its stamp, each through a temporary file.
pub fn write_graph(graph: &AnnIndex, fingerprint: &str, generation: i64, graph_path: &std::path::Path, stamp_path: &std::path::Path) -> Result<()> {
    let stamp = graph.save(graph_path, fingerprint, generation)?;
    let tmp = stamp_path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&stamp)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, stamp_path).with_context(|| format!("renaming {}", tmp.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{NewImage, NewProduct, VectorSpace};

    fn product(i: usize) -> NewProduct {
        NewProduct {
            id: format!("p{i}"),
            image: NewImage::Stored { bytes: vec![1, 2, 3], mime: "image/png".into() },
            content_hash: format!("hash-{i}"),
            metadata: Default::default(),
            vector: (0..8).map(|d| ((i * 8 + d) as f32 * 0.61).sin()).collect(),
            max_pooled: None,
            colour: None,
        }
    }

    /// A product another process adds while the graph's rows are read is neither in the rows nor
    /// trimmed from the change log: whoever follows the log (a server building its index in a
    /// new space, replaying what changed meanwhile) still finds it there. Before, the graph was
    /// saved as of the log's position after the rows were read, and the log trimmed to it.
    #[test]
    fn a_change_made_while_the_rows_are_read_stays_in_the_change_log() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("c.db");
        let mut catalog = SqliteCatalog::open(&db)?;
        catalog.bind_vector_space(&VectorSpace { model: "test".into(), dim: 8 })?;
        catalog.upsert(&(0..40).map(product).collect::<Vec<_>>())?;
        let config = IndexConfig { ann: crate::index::AnnMode::Always, ..IndexConfig::default() };
        let space = SearchSpace::Identity;

        let generation = catalog.generation()?;
        let exact = space.build_index(&catalog, VectorKind::Primary, crate::index::Precision::F32)?;
        let added = SqliteCatalog::open_existing(&db)?.upsert(&[product(40)])?[0];
        let graph = open_graph(&catalog, &space, exact, generation, &config)?;
        assert_eq!(graph.len(), 40, "the rows were read before the product was added");
        assert_eq!(catalog.changed_since(generation)?, vec![added], "the addition is still in the change log");
        Ok(())
    }
}
