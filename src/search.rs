//! The search path, top to bottom: decode → preprocess → encode → nearest neighbours → join
//! product metadata. The CLI and the HTTP API both call [`SearchEngine`]; neither knows how the
//! model or the store work.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::catalog::{Catalog, Filter, IndexingProgress, Key, NewProduct, Product, SqliteCatalog, VectorKind, VectorSpace};
use crate::encoder::{Embedding, Encoder};
use crate::index::{Allowed, AnnIndex, AnnStamp, ExactIndex, Hit, IndexConfig, IndexStats, VectorIndex};
use crate::preprocess::{self, DecodeLimits, ImageError};
use crate::space::SearchSpace;

/// What to return.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// Number of results.
    pub k: usize,
    /// Results to skip (for paging: "load more").
    pub offset: usize,
    pub filter: Filter,
}

impl Default for SearchRequest {
    fn default() -> Self {
        SearchRequest { k: 10, offset: 0, filter: Filter::default() }
    }
}

/// One ranked product.
#[derive(Debug, Clone)]
pub struct RankedProduct {
    /// 1-based rank across pages.
    pub rank: usize,
    /// Cosine similarity to the query, in [-1, 1].
    pub score: f32,
    pub product: Product,
}

/// A part of the photo to search with, as fractions of its width and height (after EXIF
/// orientation, i.e. as the shopper sees it): the shopper's box around one item in a photo of a
/// whole outfit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crop {
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub height: f32,
}

impl Crop {
    /// A crop box, checked: the corner inside the image, a positive size, and the box within the
    /// image (up to rounding: a box ending at 1.0000001 is clamped).
    pub fn new(x: f32, y: f32, width: f32, height: f32) -> Result<Crop, String> {
        let all = [x, y, width, height];
        if all.iter().any(|v| !v.is_finite()) {
            return Err("crop values must be numbers".into());
        }
        if !(0.0..1.0).contains(&x) || !(0.0..1.0).contains(&y) {
            return Err(format!("crop corner ({x}, {y}) must lie inside the image: fractions from 0 to below 1"));
        }
        if width <= 0.0 || height <= 0.0 {
            return Err(format!("crop size {width}x{height} must be positive"));
        }
        if x + width > 1.001 || y + height > 1.001 {
            return Err(format!("crop box x={x} y={y} w={width} h={height} reaches outside the image (x + w and y + h must be at most 1)"));
        }
        Ok(Crop { x, y, width: width.min(1.0 - x), height: height.min(1.0 - y) })
    }

    /// Parses `x,y,w,h` (fractions 0..1 of the image).
    pub fn parse(text: &str) -> Result<Crop, String> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        let [x, y, w, h] = parts.as_slice() else {
            return Err(format!("crop {text:?} must be four numbers x,y,w,h (fractions 0..1 of the image)"));
        };
        let number = |s: &str| s.parse::<f32>().map_err(|_| format!("crop {text:?}: {s:?} is not a number"));
        Crop::new(number(x)?, number(y)?, number(w)?, number(h)?)
    }

    /// The cropped image, at least one pixel in each direction.
    pub fn apply(&self, image: &image::DynamicImage) -> image::DynamicImage {
        let (w, h) = (image.width(), image.height());
        let px = |f: f32, side: u32| ((f * side as f32).round() as u32).min(side.saturating_sub(1));
        let (x0, y0) = (px(self.x, w), px(self.y, h));
        let cw = ((self.width * w as f32).round() as u32).clamp(1, w - x0);
        let ch = ((self.height * h as f32).round() as u32).clamp(1, h - y0);
        image.crop_imm(x0, y0, cw, ch)
    }
}

/// A query photo turned into the model's input, with the time each step took.
#[derive(Debug, Clone)]
pub struct PreparedQuery {
    pub tensor: Vec<f32>,
    pub timings: Timings,
}

/// Milliseconds spent in each stage of one search.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Timings {
    /// Time waiting for an encoder worker (the HTTP server's queue; 0 in the CLI).
    pub queue_ms: f64,
    pub decode_ms: f64,
    pub preprocess_ms: f64,
    pub encode_ms: f64,
    pub search_ms: f64,
    pub metadata_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone)]
pub struct SearchResults {
    pub hits: Vec<RankedProduct>,
    pub timings: Timings,
}

/// Why a search failed, so callers can tell the user's mistake from ours.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("unreadable image: {0}")]
    Image(#[from] ImageError),
    #[error("no product with id {0:?}")]
    UnknownProduct(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// A catalog, its vector index and the encoder, ready to answer searches. Safe to share
/// between threads: reads run concurrently, catalog writes are serialised.
pub struct SearchEngine {
    catalog: Mutex<SqliteCatalog>,
    index: RwLock<Box<dyn VectorIndex>>,
    encoder: Box<dyn Encoder>,
    /// How model vectors are mapped before they are indexed or searched for.
    space: SearchSpace,
    limits: DecodeLimits,
    /// Set while [`SearchEngine::compact_graph`] runs, so only one runs at a time.
    compacting: AtomicBool,
    /// Set once a due compaction was put off for want of memory (so that is said once).
    compaction_put_off: AtomicBool,
    /// How the index was opened, to open it again when the change log cannot be followed.
    config: IndexConfig,
    /// The change-log position the index is in step with (see [`SearchEngine::follow_catalog`]).
    /// Only read or written with the catalog lock held.
    followed: AtomicI64,
    /// The `index` run adding products to this catalog, as last seen by the follower.
    indexing: Mutex<Option<IndexingProgress>>,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

impl SearchEngine {
    /// Loads the catalog's stored vectors into the default index (exact up to 100,000
    /// products, approximate above).
    pub fn open(catalog: SqliteCatalog, encoder: Box<dyn Encoder>) -> Result<SearchEngine> {
        SearchEngine::open_with(catalog, encoder, &IndexConfig::default())
    }

    /// Loads the catalog's stored vectors into the index `config` asks for.
    pub fn open_with(catalog: SqliteCatalog, encoder: Box<dyn Encoder>, config: &IndexConfig) -> Result<SearchEngine> {
        let space = SearchSpace::for_catalog(&catalog)?;
        // Read before the vectors: what changes while they load is replayed by the follower.
        let followed = catalog.latest_change()?;
        let index = open_index(&catalog, &space, config)?;
        let engine = SearchEngine::assemble(catalog, encoder, space, index, config.clone())?;
        engine.followed.store(followed, Ordering::Release);
        Ok(engine)
    }

    fn assemble(catalog: SqliteCatalog, encoder: Box<dyn Encoder>, space: SearchSpace, index: Box<dyn VectorIndex>, config: IndexConfig) -> Result<SearchEngine> {
        if let Some(space) = catalog.vector_space()? {
            let model = &encoder.spec().name;
            if &space.model != model {
                anyhow::bail!(
                    "catalog {} holds vectors of model {:?} but the encoder is {:?}: pass --model {}",
                    catalog.path().display(),
                    space.model,
                    model,
                    space.model
                );
            }
        }
        Ok(SearchEngine {
            catalog: Mutex::new(catalog),
            index: RwLock::new(index),
            encoder,
            space,
            limits: DecodeLimits::default(),
            compacting: AtomicBool::new(false),
            compaction_put_off: AtomicBool::new(false),
            config,
            followed: AtomicI64::new(0),
            indexing: Mutex::new(None),
        })
    }

    /// Brings the index in step with the catalog file: products that other processes
    /// (`lookalike index`, `remove`, another server) added, replaced or removed since the last
    /// call become searchable or disappear. Its own changes are in the index already and are
    /// skipped. Returns how many products changed. A server calls this a few times a second;
    /// it reads one row when nothing changed.
    pub fn follow_catalog(&self) -> Result<usize> {
        let mut catalog = self.catalog.lock().map_err(|_| anyhow::anyhow!("catalog lock poisoned"))?;
        let indexing = catalog.indexing_progress()?;
        *self.indexing.lock().map_err(|_| anyhow::anyhow!("indexing lock poisoned"))? = indexing;
        self.catch_up(&mut catalog)
    }

    /// The `index` run adding products to this catalog, as the follower last saw it.
    pub fn indexing(&self) -> Option<IndexingProgress> {
        self.indexing.lock().ok().and_then(|p| *p)
    }

    /// [`SearchEngine::follow_catalog`]'s work, with the catalog lock held by the caller (so
    /// no change of this process's own can slip between reading the log and the index write).
    fn catch_up(&self, catalog: &mut SqliteCatalog) -> Result<usize> {
        let feed = catalog.changes_after(self.followed.load(Ordering::Acquire))?;
        if !feed.complete {
            // Part of the log was trimmed before this process read it (another process saved a
            // search graph that absorbed it): the changes cannot be told apart, so reload all.
            tracing::info!("reloading the index: other processes changed the catalog faster than its change log could be followed");
            let fresh = open_index(catalog, &self.space, &self.config)?;
            *self.index.write().map_err(|_| anyhow::anyhow!("index lock poisoned"))? = fresh;
            self.followed.store(feed.latest, Ordering::Release);
            return Ok(catalog.vector_count()?);
        }
        let mut changes = Vec::with_capacity(feed.keys.len());
        for &key in &feed.keys {
            let vector = catalog.vector(key)?.map(|v| self.space.map(&v)).transpose()?;
            let product = if vector.is_some() { catalog.get(key)? } else { None };
            changes.push((key, vector, product));
        }
        if !changes.is_empty() {
            let mut index = self.index.write().map_err(|_| anyhow::anyhow!("index lock poisoned"))?;
            for (key, vector, product) in &changes {
                match (vector, product) {
                    (Some(vector), Some(product)) => {
                        index.describe(*key, &product.id, &product.metadata);
                        if index.is_empty() && index.dim() != vector.len() {
                            *index = Box::new(ExactIndex::new(vector.len()));
                        }
                        index.upsert(*key, vector)?;
                    }
                    _ => index.remove(*key)?,
                }
            }
            tracing::debug!("followed {} catalog changes made by other processes", changes.len());
        }
        self.followed.store(feed.latest, Ordering::Release);
        Ok(changes.len())
    }

    /// Name of the model that encodes queries (and whose vectors the catalog holds).
    pub fn model_name(&self) -> &str {
        &self.encoder.spec().name
    }

    /// The space the index searches.
    pub fn space(&self) -> &SearchSpace {
        &self.space
    }

    /// Maps a model vector into the space the index searches.
    fn to_search_space(&self, model_vector: &[f32]) -> Result<Vec<f32>, SearchError> {
        self.space.map(model_vector).map_err(|e| SearchError::BadRequest(e.to_string()))
    }

    /// Runs `f` with the catalog locked.
    pub fn with_catalog<T>(&self, f: impl FnOnce(&mut SqliteCatalog) -> Result<T>) -> Result<T> {
        let mut catalog = self.catalog.lock().map_err(|_| anyhow::anyhow!("catalog lock poisoned"))?;
        f(&mut catalog)
    }

    /// Products most similar to the photo in `bytes`, optionally cropped to `crop` first.
    ///
    /// The whole path, top to bottom. The HTTP server runs the same three steps but sends the
    /// middle one through its batching worker pool ([`SearchEngine::encode_batch`] on several
    /// queries at once), so it calls them separately.
    pub fn search_image(&self, bytes: &[u8], crop: Option<Crop>, request: &SearchRequest) -> Result<SearchResults, SearchError> {
        let started = Instant::now();
        let query = self.prepare_query(bytes, crop)?;
        let mut timings = query.timings.clone();

        let t = Instant::now();
        let embedding = self.encode_batch(&[query.tensor])?.into_iter().next().context("the encoder returned no embedding")?;
        timings.encode_ms = ms(t);

        self.search_embedding(&embedding.vector, request, timings, started)
    }

    /// Decode → crop → composite on white → resize and normalise: the shopper's photo as the
    /// model's input tensor. CPU work that allocates; the bytes are only borrowed, nothing is
    /// written anywhere.
    pub fn prepare_query(&self, bytes: &[u8], crop: Option<Crop>) -> Result<PreparedQuery, SearchError> {
        let mut timings = Timings::default();
        let t = Instant::now();
        let mut image = preprocess::decode(bytes, &self.limits)?;
        timings.decode_ms = ms(t);

        let t = Instant::now();
        if let Some(crop) = crop {
            image = crop.apply(&image);
        }
        let tensor = preprocess::prepare(&preprocess::to_rgb_on_white(&image), &self.encoder.spec().input);
        timings.preprocess_ms = ms(t);
        Ok(PreparedQuery { tensor, timings })
    }

    /// Runs the encoder on prepared queries, one embedding per tensor, in order.
    pub fn encode_batch(&self, tensors: &[Vec<f32>]) -> Result<Vec<Embedding>, SearchError> {
        let embeddings = self.encoder.encode(tensors)?;
        if embeddings.len() != tensors.len() {
            return Err(SearchError::Internal(anyhow::anyhow!("the encoder returned {} embeddings for {} images", embeddings.len(), tensors.len())));
        }
        Ok(embeddings)
    }

    /// The last two steps of an image search: nearest neighbours of an embedding, then product
    /// metadata. `timings` carries the earlier stages' times; `started` is when the search began,
    /// for `total_ms`.
    pub fn search_embedding(&self, vector: &[f32], request: &SearchRequest, timings: Timings, started: Instant) -> Result<SearchResults, SearchError> {
        let mut results = self.search_vector(vector, request)?;
        results.timings = Timings { search_ms: results.timings.search_ms, metadata_ms: results.timings.metadata_ms, total_ms: ms(started), ..timings };
        Ok(results)
    }

    /// Adds a product (or replaces the one with the same id) and makes it searchable at once:
    /// the catalog is written first, so a crash between the two steps loses nothing that a
    /// restart (which rebuilds the index from the catalog) would not restore.
    pub fn add_product(&self, product: NewProduct) -> Result<Key, SearchError> {
        let expected = self.encoder.spec().name.clone();
        // Hold the catalog lock across both writes, so concurrent changes to the same id
        // reach the index in the order they reached the catalog.
        let mut catalog = self.catalog.lock().map_err(|_| anyhow::anyhow!("catalog lock poisoned"))?;
        catalog.bind_vector_space(&VectorSpace { model: expected, dim: product.vector.len() })?;
        // The catalog keeps model vectors; the index holds them mapped into the search space.
        let searched = self.to_search_space(&product.vector)?;
        let key = *catalog.upsert(std::slice::from_ref(&product))?.first().context("the catalog stored no product")?;
        let mut index = self.index.write().map_err(|_| anyhow::anyhow!("index lock poisoned"))?;
        index.describe(key, &product.id, &product.metadata);
        if index.is_empty() && index.dim() != searched.len() {
            // A catalog that was empty at start has a 0-d index; give it the search dimension.
            *index = Box::new(ExactIndex::new(searched.len()));
        }
        index.upsert(key, &searched)?;
        Ok(key)
    }

    /// Removes a product from the catalog, then from the index. Returns whether it existed.
    pub fn remove_product(&self, id: &str) -> Result<bool, SearchError> {
        let mut catalog = self.catalog.lock().map_err(|_| anyhow::anyhow!("catalog lock poisoned"))?;
        let Some(key) = catalog.remove(id)? else { return Ok(false) };
        self.index.write().map_err(|_| anyhow::anyhow!("index lock poisoned"))?.remove(key)?;
        Ok(true)
    }

    /// Rebuilds the search graph without the dead entries that removed and replaced products
    /// leave in it, once they reach a quarter of the live ones ([`AnnIndex::needs_compaction`]);
    /// the rebuilt graph is saved for the next start. Returns how many dead entries were
    /// dropped, or `None` when nothing was due (an exact index, a graph still lean enough, or a
    /// compaction already running).
    ///
    /// Searches and catalog changes go on meanwhile: the graph is built from a copy of the rows
    /// (so, while it runs, the vectors and the graph are held twice), the changes made during
    /// the build are replayed into it, and it replaces the old graph in one step.
    pub fn compact_graph(&self) -> Result<Option<usize>> {
        self.compact_graph_with(|| {})
    }

    /// [`SearchEngine::compact_graph`], running `while_rebuilding` once the new graph is built
    /// from the copied rows and before the changes made meanwhile are replayed into it. No lock
    /// is held then: tests use it to make searches and changes happen inside that window
    /// for certain, rather than hoping a thread is scheduled there.
    pub fn compact_graph_with(&self, while_rebuilding: impl FnOnce()) -> Result<Option<usize>> {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return Ok(None);
        }
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _done = Done(&self.compacting);

        // Writers hold the catalog lock until their index write is done, so every change up to
        // `since` is in the index when the rows are copied; later ones are replayed below.
        // Other processes' changes are caught up with first: the log up to `since` is trimmed
        // once the new graph is saved, so none of it may still be unread.
        let (since, catalog_path) = self.with_catalog(|c| {
            self.catch_up(c)?;
            Ok((c.generation()?, c.path().to_path_buf()))
        })?;
        let Some(compaction) = self.index.read().map_err(|_| anyhow::anyhow!("index lock poisoned"))?.compaction() else {
            return Ok(None);
        };
        let dropped = compaction.tombstones;
        tracing::info!("rebuilding the search graph: {dropped} of its entries are removed or replaced products");
        let mut fresh = compaction.build()?;
        while_rebuilding();
        // Saved as of `since`: the graph holds every change up to it (and perhaps a few later
        // ones, which a load replays again harmlessly).
        let (graph_path, stamp_path) = graph_paths(&catalog_path);
        let saved = {
            let _turn = graph_turn(&graph_path);
            write_graph(&fresh, &self.space.fingerprint(), since, &graph_path, &stamp_path)
        };
        if let Err(e) = &saved {
            tracing::warn!("could not save the rebuilt search graph (it is rebuilt again at the next start): {e:#}");
        }

        let catalog = self.catalog.lock().map_err(|_| anyhow::anyhow!("catalog lock poisoned"))?;
        if saved.is_ok() {
            catalog.forget_changes_through(since)?;
        }
        for key in catalog.changed_since(since)? {
            match catalog.vector(key)? {
                Some(vector) => fresh.upsert(key, &self.space.map(&vector)?)?,
                None => fresh.remove(key)?,
            }
        }
        let old = std::mem::replace(&mut *self.index.write().map_err(|_| anyhow::anyhow!("index lock poisoned"))?, Box::new(fresh));
        // Freed with no lock held: giving back gigabytes takes a moment.
        drop(catalog);
        drop(old);
        tracing::info!("search graph rebuilt without {dropped} dead entries");
        Ok(Some(dropped))
    }

    /// Starts [`SearchEngine::compact_graph`] on a thread of its own when it is due, so that a
    /// catalog change does not wait for a rebuild. A server calls this after each change; the
    /// command line need not, as a graph is compacted when it is opened.
    ///
    /// The rebuild holds a second copy of the index while it runs. When the machine has not
    /// that much memory available (with a quarter to spare), it is left to the next start, whose
    /// rebuild copies nothing ([`AnnIndex::compacted`]), rather than risk the server being
    /// killed for memory.
    pub fn compact_graph_in_background(self: &Arc<Self>) {
        if self.compacting.load(Ordering::Acquire) {
            return;
        }
        let Some(needed) = self.index.read().ok().filter(|index| index.needs_compaction()).map(|index| index.memory_bytes()) else {
            return;
        };
        if let Some(available) = available_memory_bytes() {
            if needed.saturating_add(needed / 4) > available {
                if !self.compaction_put_off.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "the search graph is due for a rebuild without its dead entries, but that needs about {} MB and {} MB are available: it is rebuilt at the next start",
                        needed >> 20,
                        available >> 20
                    );
                }
                return;
            }
        }
        let engine = Arc::clone(self);
        let started = std::thread::Builder::new().name("graph-compaction".into()).spawn(move || {
            if let Err(e) = engine.compact_graph() {
                tracing::warn!("rebuilding the search graph failed (searches go on with the old one): {e:#}");
            }
        });
        if let Err(e) = started {
            tracing::warn!("could not start rebuilding the search graph: {e}");
        }
    }

    /// What the index holds: vectors, bytes, dead entries (for `/metrics`).
    pub fn index_stats(&self) -> IndexStats {
        self.index.read().map(|i| IndexStats { vectors: i.len(), memory_bytes: i.memory_bytes(), dead_entries: i.dead_entries() }).unwrap_or_default()
    }

    /// Number of searchable products (vectors in the index).
    pub fn len(&self) -> usize {
        self.index.read().map(|i| i.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// "More like this": products most similar to a catalog product, from its stored vector.
    /// The product itself is left out of the results.
    pub fn search_like(&self, id: &str, request: &SearchRequest) -> Result<SearchResults, SearchError> {
        let (key, vector) = self.with_catalog(|c| {
            let Some(product) = c.get_by_id(id)? else { return Ok(None) };
            Ok(c.vector(product.key)?.map(|v| (product.key, v)))
        })?
        .ok_or_else(|| SearchError::UnknownProduct(id.to_string()))?;
        // Rank from the top with one extra hit, drop the product itself, then cut the page, so
        // pages line up whether or not the product falls inside the filter.
        let widened = SearchRequest { k: request.offset + request.k + 1, offset: 0, filter: request.filter.clone() };
        let mut results = self.search_vector(&vector, &widened)?;
        results.hits.retain(|h| h.product.key != key);
        results.hits = results.hits.into_iter().skip(request.offset).take(request.k).collect();
        for (i, hit) in results.hits.iter_mut().enumerate() {
            hit.rank = request.offset + i + 1;
        }
        Ok(results)
    }

    /// Products most similar to a model embedding (as the encoder produces it, before any
    /// tuned projection).
    pub fn search_vector(&self, model_vector: &[f32], request: &SearchRequest) -> Result<SearchResults, SearchError> {
        let started = Instant::now();
        let mut timings = Timings::default();
        let vector = self.to_search_space(model_vector)?;

        let t = Instant::now();
        let wanted = request.offset.saturating_add(request.k);
        let hits: Vec<Hit> = {
            let index = self.index.read().map_err(|_| anyhow::anyhow!("index lock poisoned"))?;
            if vector.len() != index.dim() && !index.is_empty() {
                return Err(SearchError::BadRequest(format!("vector has {} dimensions; this catalog's are {}", vector.len(), index.dim())));
            }
            match (request.filter.is_empty(), index.search_filter(&vector, wanted, &request.filter)) {
                (true, _) => index.search(&vector, wanted, None)?,
                // The store evaluates the filter itself.
                (false, Some(hits)) => hits?,
                // The embedded stores take the matching keys, computed from the catalog. The
                // index lock is let go first: writers hold the catalog lock while they wait for
                // the index lock, so a search holding both the other way round would deadlock.
                (false, None) => {
                    drop(index);
                    let allowed: Allowed = self.with_catalog(|c| c.filter_keys(&request.filter))?.into_iter().collect();
                    self.index.read().map_err(|_| anyhow::anyhow!("index lock poisoned"))?.search(&vector, wanted, Some(&allowed))?
                }
            }
        };
        timings.search_ms = ms(t);

        let t = Instant::now();
        let page: Vec<Hit> = hits.into_iter().skip(request.offset).collect();
        let keys: Vec<_> = page.iter().map(|h| h.key).collect();
        let products = self.with_catalog(|c| c.get_many(&keys))?;
        let hits = page
            .iter()
            .zip(0..)
            .filter_map(|(hit, i)| {
                products.iter().find(|p| p.key == hit.key).map(|p| RankedProduct { rank: request.offset + i + 1, score: hit.score, product: p.clone() })
            })
            .collect();
        timings.metadata_ms = ms(t);
        timings.total_ms = ms(started);
        Ok(SearchResults { hits, timings })
    }
}

/// Connects to the Qdrant collection for this catalog and tells it every product's id and
/// metadata (its writes carry them as payload). Warns when the collection and the catalog
/// disagree in size: `lookalike sync` fixes that.
pub fn open_qdrant(catalog: &SqliteCatalog, space: &SearchSpace, store: &crate::index::qdrant::QdrantConfig) -> Result<crate::index::qdrant::QdrantIndex> {
    let dim = space.output_dim(catalog.vector_space()?.map_or(0, |s| s.dim));
    let mut index = crate::index::qdrant::QdrantIndex::connect(store.clone(), dim)?;
    for product in catalog.all_products()? {
        index.describe(product.key, &product.id, &product.metadata);
    }
    let in_catalog = catalog.vector_count()?;
    if index.len() != in_catalog {
        tracing::warn!(
            "Qdrant collection {:?} holds {} vectors, the catalog {in_catalog}: run `lookalike sync --db {} --store ...`",
            store.collection,
            index.len(),
            catalog.path().display()
        );
    }
    Ok(index)
}

/// Makes the Qdrant collection agree with the catalog (adds what is missing, deletes what is
/// gone), and returns what changed.
pub fn sync_qdrant(catalog: &SqliteCatalog, store: &crate::index::qdrant::QdrantConfig) -> Result<crate::index::qdrant::SyncReport> {
    let space = SearchSpace::for_catalog(catalog)?;
    let exact = space.build_index(catalog, VectorKind::Primary, crate::index::Precision::F32)?;
    let mut index = open_qdrant(catalog, &space, store)?;
    index.sync(exact.keys(), |key| exact.vector(key))
}

/// The index `config` asks for over the catalog's vectors: a Qdrant collection, the exact scan,
/// or the search graph (loaded from its file and caught up, or built).
fn open_index(catalog: &SqliteCatalog, space: &SearchSpace, config: &IndexConfig) -> Result<Box<dyn VectorIndex>> {
    if let Some(store) = &config.store {
        return Ok(Box::new(open_qdrant(catalog, space, store)?));
    }
    let use_ann = config.uses_ann(catalog.vector_count()?);
    let precision = if use_ann { crate::index::Precision::F32 } else { config.precision };
    let exact = space.build_index(catalog, VectorKind::Primary, precision)?;
    Ok(if use_ann && !exact.is_empty() { Box::new(open_graph(catalog, space, exact, config)?) } else { Box::new(exact) })
}

/// Where a catalog's search graph is saved: beside the catalog file.
pub fn graph_paths(catalog: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let with = |suffix: &str| {
        let mut name = catalog.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    (with(".graph"), with(".graph.json"))
}

/// The catalog's saved search graph, caught up with the products changed since it was saved;
/// or, if there is none or it does not fit (other space, options or a damaged file), a new one,
/// saved for next time. Building takes minutes for a million products; loading, seconds.
fn open_graph(catalog: &SqliteCatalog, space: &SearchSpace, exact: ExactIndex, config: &IndexConfig) -> Result<AnnIndex> {
    let (graph_path, stamp_path) = graph_paths(catalog.path());
    let _turn = graph_turn(&graph_path);
    let fingerprint = space.fingerprint();
    let generation = catalog.generation()?;
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

/// Memory the kernel could give this process without swapping (`MemAvailable` in
/// `/proc/meminfo`); `None` where that is not known.
fn available_memory_bytes() -> Option<usize> {
    parse_mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_mem_available(meminfo: &str) -> Option<usize> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.trim_start_matches("MemAvailable:").trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// Waits for this process's turn at the catalog's graph files. Two processes opening one catalog
/// at once (two servers starting, `search` beside `serve`) take turns: the graph file, its stamp
/// and the change log they trim must come from the same process. Without a lock (read-only
/// directory) each still checks what it loads. The turn ends when the file is dropped.
fn graph_turn(graph_path: &std::path::Path) -> Option<std::fs::File> {
    let mut lock_path = graph_path.as_os_str().to_owned();
    lock_path.push(".lock");
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .and_then(|file| file.lock().map(|()| file))
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
fn write_graph(graph: &AnnIndex, fingerprint: &str, generation: i64, graph_path: &std::path::Path, stamp_path: &std::path::Path) -> Result<()> {
    let stamp = graph.save(graph_path, fingerprint, generation)?;
    let tmp = stamp_path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&stamp)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, stamp_path).with_context(|| format!("renaming {}", tmp.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_parses_fractions_and_rejects_boxes_outside_the_image() {
        assert_eq!(Crop::parse("0.1, 0.2, 0.5, 0.6"), Ok(Crop { x: 0.1, y: 0.2, width: 0.5, height: 0.6 }));
        let clamped = Crop::parse("0.5,0.5,0.5000001,0.5").expect("rounding is tolerated");
        assert!(clamped.x + clamped.width <= 1.0);
        for bad in ["", "1,2,3", "a,b,c,d", "0.5,0.5,0.9,0.1", "-0.1,0,0.5,0.5", "1,0,0.5,0.5", "0,0,0,0.5", "NaN,0,0.5,0.5"] {
            assert!(Crop::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn available_memory_is_read_from_meminfo() {
        let meminfo = "MemTotal:       24575392 kB\nMemFree:         1018112 kB\nMemAvailable:   20971520 kB\nBuffers:          123 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(20 << 30));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: lots\n"), None);
        if cfg!(target_os = "linux") {
            assert!(available_memory_bytes().is_some_and(|b| b > 0), "this machine reports its available memory");
        }
    }

    #[test]
    fn crop_cuts_the_requested_part_and_never_an_empty_image() {
        let image = image::DynamicImage::new_rgb8(200, 100);
        let part = Crop::new(0.25, 0.5, 0.5, 0.5).expect("crop").apply(&image);
        assert_eq!((part.width(), part.height()), (100, 50));
        let sliver = Crop::new(0.999, 0.999, 0.001, 0.001).expect("crop").apply(&image);
        assert!(sliver.width() >= 1 && sliver.height() >= 1);
    }
}
