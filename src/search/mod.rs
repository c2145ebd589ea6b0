//! The search path, top to bottom: decode → preprocess → encode → nearest neighbours → join
//! product metadata. The CLI and the HTTP API both call [`SearchEngine`]; neither knows how the
//! model or the store work.
//!
//! This file holds the engine's state and the types its callers see; its work is one file per
//! part: `photo.rs` (a photo query, step by step), `rank.rs` (ranking a query vector: the
//! index, colour, kind, metadata, products listed with the very same photo shown as one result;
//! "more like this"; likeness bands), `products.rs` (products added, removed and read through
//! the engine) and `follow.rs` (keeping up with what other
//! processes and `tune` change in the catalog).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::catalog::SqliteCatalog;
use crate::colour::{ColourEstimate, ColourMode, ColourTable};
use crate::encoder::{Embedding, Encoder};
use crate::index::qdrant::QdrantConfig;
use crate::index::{IndexConfig, IndexStats, StoreUnavailable};
use crate::kind::{KindMode, KindTable};
use crate::likeness::{Likeness, LikenessBands};
use crate::localise::ForegroundHead;
use crate::preprocess::{self, Crop, DecodeLimits, ImageError};
use crate::space::SearchSpace;
use crate::store::{collection_space, open_collection, open_index, CollectionDescription, Store};
use crate::straighten;
use crate::types::{Detection, Filter, IndexingProgress, Product};

mod follow;
mod photo;
mod products;
mod rank;

pub use products::{catalog_page, collection_page};

/// What to return.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// Number of results.
    pub k: usize,
    /// Results to skip (for paging: "load more").
    pub offset: usize,
    pub filter: Filter,
    /// How colour ranks (by default, blended with shape: [`ColourMode::Match`]).
    pub colour: ColourMode,
    /// Whether the kind most of the best matches share comes first (by default:
    /// [`KindMode::Match`], see [`crate::kind`]).
    pub kind: KindMode,
}

impl Default for SearchRequest {
    fn default() -> Self {
        SearchRequest { k: 10, offset: 0, filter: Filter::default(), colour: ColourMode::default(), kind: KindMode::default() }
    }
}

/// One ranked product.
#[derive(Debug, Clone)]
pub struct RankedProduct {
    /// 1-based rank across pages.
    pub rank: usize,
    /// Cosine similarity to the query, in [-1, 1].
    pub score: f32,
    /// `score` in a shopper's words, against how alike the catalog's own products are.
    pub likeness: Likeness,
    pub product: Product,
    /// A patterned product's (named colour [`crate::colour::MULTI`]) main colours in its photo,
    /// with their shares, largest first ([`crate::colour::ColourDescriptor::main_colours`]);
    /// empty for the rest.
    pub colour_mix: Vec<(&'static str, f32)>,
    /// The other products listed with the very same photo (size variants): one result with
    /// `product` ([`crate::types::SamePhotos`]). Only those the search's filter admits; in a
    /// Qdrant collection, those whose points carry the photo's hash.
    pub variants: Vec<Product>,
}

/// A query photo turned into the model's input, with the time each step took.
#[derive(Debug, Clone)]
pub struct PreparedQuery {
    pub tensor: Vec<f32>,
    /// The model's input pixels the tensor was made from: the photo's colour is read from
    /// them once the products in it are found.
    pub pixels: preprocess::InputPixels,
    /// The photo's width and height, when its products are to be found in it: `None` when the
    /// shopper cropped it (their box wins).
    pub localise_in: Option<(u32, u32)>,
    /// Square tiles of a long photo and their input tensors, encoded beside the photo to find
    /// its products on a finer grid ([`crate::localise::tiles`]; only with a learned head).
    pub tiles: Vec<(Crop, Vec<f32>)>,
    /// The learned foreground head that finds its products (`None`: training-free), taken when
    /// the photo was prepared, so the tiles and the head agree even if the catalog's head
    /// changes meanwhile.
    pub foreground: Option<Arc<ForegroundHead>>,
    /// The decoded photo, kept only when each product found in it is to be cropped out and
    /// encoded on its own (`Items::All`).
    pub photo: Option<image::DynamicImage>,
    /// The photo, when it looks tilted ([`crate::straighten`]; not when the shopper cropped
    /// it): straightened and encoded again only if the photo as taken finds nothing very
    /// similar.
    pub tilted: Option<straighten::Tilted>,
    pub timings: Timings,
}

/// Which results a photo search returns besides the photo's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Items {
    /// The photo's results and where the products in it are.
    #[default]
    Main,
    /// Also each product found searched on its own ("shop the look"): one ranked list per item.
    All,
}

impl std::str::FromStr for Items {
    type Err = String;
    fn from_str(text: &str) -> Result<Items, String> {
        match text.trim() {
            "main" => Ok(Items::Main),
            "all" => Ok(Items::All),
            other => Err(format!("items must be \"main\" or \"all\", not {other:?}")),
        }
    }
}

/// A product found in the query photo.
#[derive(Debug, Clone)]
pub struct FoundItem {
    pub detection: Detection,
    /// The part of the photo the item's own encode sees: its box.
    pub crop: Crop,
    /// With `Items::All`, the item cropped out and encoded on its own (L2-normalised). A crop
    /// found the item's kind far more often than the photo's features pooled over the item's
    /// cells, for one more encode per item (docs/localisation-study.md).
    pub vector: Option<Vec<f32>>,
    /// The item's own colour (read inside its box): what its results are ranked by under
    /// `colour=match`, not the main item's.
    pub colour: Option<ColourEstimate>,
}

/// A query photo encoded: the whole photo's embedding and the products found in it.
#[derive(Debug, Clone)]
pub struct EncodedPhoto {
    pub whole: Embedding,
    /// The photo turned straight, encoded beside it when it looked tilted: searched instead
    /// of `whole` when it lies nearer the catalog ([`SearchEngine::query_vector`]).
    pub straightened: Option<Embedding>,
    /// The best match score of the photo as taken, where it was looked up to decide on the
    /// straightened view: spares looking it up again to pick the view.
    pub as_taken_best: Option<f32>,
    /// The photo's colour: of its main item when one was found, else of its centre.
    pub colour: Option<ColourEstimate>,
    /// Main item first; empty when nothing stands out, the photo was cropped by the shopper,
    /// or the model gives no feature map.
    pub items: Vec<FoundItem>,
}

impl EncodedPhoto {
    pub fn detections(&self) -> Vec<Detection> {
        self.items.iter().map(|item| item.detection).collect()
    }
}

/// One found item's own results (`Items::All`).
#[derive(Debug, Clone)]
pub struct ItemResults {
    pub detection: Detection,
    /// The item's colour, which its hits were ranked by.
    pub query_colour: Option<ColourEstimate>,
    pub hits: Vec<RankedProduct>,
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

#[derive(Debug, Clone, Default)]
pub struct SearchResults {
    pub hits: Vec<RankedProduct>,
    pub timings: Timings,
    /// The products found in a query photo, main first (empty for other searches).
    pub detections: Vec<Detection>,
    /// Each found product's own results, with `Items::All`.
    pub items: Vec<ItemResults>,
    /// The query's colour (photo searches, and "more like this" from a product's stored one).
    pub query_colour: Option<ColourEstimate>,
    /// How colour ranked these results: the mode asked for, or `any` where colour cannot
    /// apply (a grey catalog, a query without colour).
    pub colour_mode: ColourMode,
    /// Whether the photo's kind came first: the mode asked for, or `any` where products have
    /// no category to agree on.
    pub kind_mode: KindMode,
    /// Why a filtered search found nothing, when the filter is to blame: the part of it no
    /// product has, and what there is instead (most often a typo).
    pub why_nothing_matches: Option<String>,
}

/// Why a search failed, so callers can tell the user's mistake from ours.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    // Not `#[from]`: that would make the image error this one's source as well, and a report
    // of the whole chain (the CLI's) would say it twice.
    #[error("unreadable image: {0}")]
    Image(ImageError),
    #[error("no product with id {0:?}")]
    UnknownProduct(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The vector store did not answer (a Qdrant cluster down): no result, rather than a
    /// wrong or partial one.
    #[error(transparent)]
    Unavailable(StoreUnavailable),
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl From<ImageError> for SearchError {
    fn from(err: ImageError) -> SearchError {
        SearchError::Image(err)
    }
}

impl From<anyhow::Error> for SearchError {
    fn from(err: anyhow::Error) -> SearchError {
        match err.downcast::<StoreUnavailable>() {
            Ok(unavailable) => SearchError::Unavailable(unavailable),
            Err(err) => SearchError::Internal(err),
        }
    }
}

/// A product in a listing, with its patterned colours as search hits carry them.
#[derive(Debug, Clone)]
pub struct ListedProduct {
    pub product: Product,
    /// As [`RankedProduct::colour_mix`]: a patterned product's main colours; empty for the rest.
    pub colour_mix: Vec<(&'static str, f32)>,
}

/// One page of a listing of the products ([`SearchEngine::products_page`]).
#[derive(Debug, Clone)]
pub struct ProductPage {
    pub products: Vec<ListedProduct>,
    /// The token that asks for the next page; `None` after the last.
    pub next: Option<String>,
    /// How many products match the listing's filter, on every page.
    pub total: usize,
    /// Why the listing's filter matches no product, as [`SearchResults::why_nothing_matches`].
    pub why_nothing_matches: Option<String>,
}

/// One facet of the page's filters: column, value, and how many products have it.
pub type FacetCount = (String, String, usize);

/// A catalog, its vector index and the encoder, ready to answer searches. Safe to share
/// between threads: reads run concurrently, catalog writes are serialised.
pub struct SearchEngine {
    /// The shop's catalog file; `None` for a server that answers from a Qdrant collection
    /// alone (its products' payloads and its description: [`SearchEngine::open_collection`]).
    catalog: Option<Mutex<SqliteCatalog>>,
    /// The index and the space its vectors are in, under one lock (see [`IndexInSpace`]).
    index: RwLock<IndexInSpace>,
    encoder: Box<dyn Encoder>,
    /// Vectors in the catalog when the index's space was chosen.
    space_chosen_at: AtomicUsize,
    /// The catalog's [`SqliteCatalog::search_space_generation`] that the space was chosen at.
    /// Only read or written with the catalog lock held.
    space_generation: AtomicI64,
    limits: DecodeLimits,
    /// Set while [`SearchEngine::compact_graph`] or [`SearchEngine::take_up_new_space_with`] runs,
    /// so only one of them runs at a time.
    compacting: AtomicBool,
    /// Set once a due compaction was put off for want of memory (so that is said once).
    compaction_put_off: AtomicBool,
    /// On a Qdrant collection, the search space (its fingerprint) `tune` moved the catalog's
    /// vectors to while the collection still holds them in the old one: taken up once `sync`
    /// has filled the collection in it ([`SearchEngine::take_up_new_space_with`]).
    space_awaiting_sync: Mutex<Option<String>>,
    /// On a Qdrant collection, the collection the catalog last said holds the points (`sync`
    /// records it; `sync --swap` moves them): each new one is followed once
    /// ([`SearchEngine::follow_catalog`]).
    points_seen: Mutex<Option<String>>,
    /// How the index was opened, to open it again when the change log cannot be followed.
    config: IndexConfig,
    /// The change-log position the index is in step with (see [`SearchEngine::follow_catalog`]).
    /// Only read or written with the catalog lock held.
    followed: AtomicI64,
    /// The `index` run adding products to this catalog, as last seen by the follower.
    indexing: Mutex<Option<IndexingProgress>>,
    /// Where products are in a photo, learned by `tune --localise`; `None`: training-free.
    /// Replaced when the catalog's head changes ([`SearchEngine::follow_catalog`]); a search
    /// takes the head once and keeps it for the photo.
    foreground: RwLock<Option<Arc<ForegroundHead>>>,
    /// The catalog's [`SqliteCatalog::foreground_generation`] that `foreground` was loaded at.
    /// Only read or written with the catalog lock held.
    foreground_generation: AtomicI64,
    /// Every product's colour, kept in step with the index (under the catalog lock, like it).
    colours: RwLock<ColourTable>,
    /// Every product's category, kept in step with the index like `colours`.
    kinds: RwLock<KindTable>,
    /// The likeness bands and what they were measured on (see [`SearchEngine::likeness_bands`]).
    likeness: Mutex<Option<MeasuredBands>>,
    /// Without a catalog: what the collection's description says of it, replaced when a new
    /// one is written ([`SearchEngine::follow_collection_description`]).
    described: Option<RwLock<Described>>,
}

/// A collection's description as a server without the catalog took it up.
struct Described {
    description: Arc<CollectionDescription>,
    /// The SHA-256 it was written under ([`crate::index::qdrant::QdrantIndex::description_digest`]).
    digest: String,
    /// When the follower last asked the collection for its description's digest.
    checked: Instant,
}

/// The index and how model vectors are mapped into the space its vectors are in. Replaced
/// together, in one write under the catalog lock, when the space changes (`tune` learned or
/// dropped a projection or a photo adapter; an untuned catalog grew or shrunk enough for its
/// centring mean to be recomputed: [`SearchEngine::follow_catalog`]). A search maps its query
/// while it holds the index for reading ([`Query::in_space`]), so it never compares vectors of
/// two spaces, however a change falls between its steps.
struct IndexInSpace {
    space: Arc<SearchSpace>,
    store: Store,
}

impl std::ops::Deref for IndexInSpace {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

impl std::ops::DerefMut for IndexInSpace {
    fn deref_mut(&mut self) -> &mut Store {
        &mut self.store
    }
}

/// A search's query vector as the model gave it (or a collection's stored vector, already in
/// the collection's space), mapped into the index's space when the index is read, and again
/// only if the space was replaced since.
enum QueryVector<'a> {
    /// A shopper's photo: mapped through the photo adapter, where the catalog has one.
    Photo(&'a [f32]),
    /// A catalog product's model vector ("more like this").
    Product(&'a [f32]),
    /// A vector in the searched space already (a Qdrant collection's: its space never changes
    /// under a running server).
    InSpace(Vec<f32>),
}

struct Query<'a> {
    vector: QueryVector<'a>,
    mapped: Option<(Arc<SearchSpace>, Vec<f32>)>,
}

impl<'a> Query<'a> {
    fn new(vector: QueryVector<'a>) -> Query<'a> {
        Query { vector, mapped: None }
    }

    /// The query in `space` (the space of the index the caller holds for reading).
    fn in_space(&mut self, space: &Arc<SearchSpace>) -> Result<&[f32], SearchError> {
        let model = match &self.vector {
            QueryVector::InSpace(vector) => return Ok(vector),
            QueryVector::Photo(model) | QueryVector::Product(model) => *model,
        };
        let current = matches!(&self.mapped, Some((mapped_in, _)) if Arc::ptr_eq(mapped_in, space));
        if !current {
            let mapped = match self.vector {
                QueryVector::Photo(_) => space.map_photo(model),
                _ => space.map(model),
            };
            self.mapped = Some((space.clone(), mapped.map_err(|e| SearchError::BadRequest(e.to_string()))?));
        }
        Ok(self.mapped.as_ref().map_or(&[][..], |(_, vector)| vector.as_slice()))
    }
}

/// Likeness bands, with the search space and catalog size they were measured on.
struct MeasuredBands {
    space: Arc<SearchSpace>,
    products: usize,
    bands: Option<LikenessBands>,
}

/// A product's model vector in `space` (a vector of the wrong size is the caller's mistake).
fn map_product(space: &SearchSpace, model_vector: &[f32]) -> Result<Vec<f32>, SearchError> {
    space.map(model_vector).map_err(|e| SearchError::BadRequest(e.to_string()))
}

/// A lock whose holder panicked: the state it guards may be half-changed, so nothing goes on.
fn poisoned(what: &str) -> anyhow::Error {
    anyhow::anyhow!("the {what} lock is poisoned (a thread panicked while holding it); restart the process")
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
        // Read before what they count: what changes meanwhile is taken up by the follower.
        let space_generation = catalog.search_space_generation()?;
        let (space, awaiting_sync) = match &config.store {
            Some(store) => collection_space(&catalog, store)?,
            None => (SearchSpace::for_catalog(&catalog)?, None),
        };
        let followed = catalog.latest_change()?;
        let index = open_index(&catalog, &space, config)?;
        let vectors = catalog.vector_count()?;
        let engine = SearchEngine::assemble(catalog, encoder, space, index, config.clone())?;
        *engine.space_awaiting_sync.lock().map_err(|_| poisoned("space awaiting sync"))? = awaiting_sync;
        engine.followed.store(followed, Ordering::Release);
        engine.space_chosen_at.store(vectors, Ordering::Release);
        engine.space_generation.store(space_generation, Ordering::Release);
        Ok(engine)
    }

    /// A server without the catalog file: products, their colours and photos come from the
    /// Qdrant collection's payloads, the search space and likeness bands from its description
    /// (kept there by the catalog's side, [`crate::store::open_qdrant`]). Searches see every
    /// change any server writes to the collection; products are added and removed there.
    pub fn open_collection(store: &QdrantConfig, encoder: Box<dyn Encoder>) -> Result<SearchEngine> {
        let (index, described, digest) = open_collection(store)?;
        SearchEngine::over_collection(index, described, digest, encoder, store)
    }

    /// [`SearchEngine::open_collection`] with the collection already opened (its description
    /// names the model, which the caller loads first).
    pub fn over_collection(
        index: crate::index::qdrant::QdrantIndex,
        described: CollectionDescription,
        digest: String,
        encoder: Box<dyn Encoder>,
        store: &QdrantConfig,
    ) -> Result<SearchEngine> {
        anyhow::ensure!(
            encoder.spec().name == described.model,
            "collection {:?} holds vectors of model {:?}, not {:?}: start with --model {}",
            store.collection,
            described.model,
            encoder.spec().name,
            described.model
        );
        let space = described.search_space()?;
        let foreground = described.foreground_head()?;
        let config = IndexConfig { store: Some(store.clone()), ..IndexConfig::default() };
        let tables = (ColourTable::default(), KindTable::default());
        Ok(SearchEngine::from_parts(
            None,
            encoder,
            space,
            Store::Qdrant(index),
            config,
            foreground,
            tables,
            Some(Described { description: Arc::new(described), digest, checked: Instant::now() }),
        ))
    }

    fn assemble(catalog: SqliteCatalog, encoder: Box<dyn Encoder>, space: SearchSpace, index: Store, config: IndexConfig) -> Result<SearchEngine> {
        catalog.ensure_model(&encoder.spec().name)?;
        let generation = catalog.foreground_generation()?;
        let foreground = catalog.foreground_head()?;
        let tables = (ColourTable::load(&catalog)?, KindTable::load(&catalog)?);
        let engine = SearchEngine::from_parts(Some(catalog), encoder, space, index, config, foreground, tables, None);
        engine.foreground_generation.store(generation, Ordering::Release);
        Ok(engine)
    }

    /// The engine over its parts, with nothing followed or measured yet.
    #[allow(clippy::too_many_arguments)] // private, called twice: each argument is one part
    fn from_parts(
        catalog: Option<SqliteCatalog>,
        encoder: Box<dyn Encoder>,
        space: SearchSpace,
        index: Store,
        config: IndexConfig,
        foreground: Option<ForegroundHead>,
        (colours, kinds): (ColourTable, KindTable),
        described: Option<Described>,
    ) -> SearchEngine {
        SearchEngine {
            catalog: catalog.map(Mutex::new),
            index: RwLock::new(IndexInSpace { space: Arc::new(space), store: index }),
            encoder,
            space_chosen_at: AtomicUsize::new(0),
            space_generation: AtomicI64::new(0),
            limits: DecodeLimits::default(),
            compacting: AtomicBool::new(false),
            compaction_put_off: AtomicBool::new(false),
            space_awaiting_sync: Mutex::new(None),
            points_seen: Mutex::new(None),
            config,
            followed: AtomicI64::new(0),
            indexing: Mutex::new(None),
            foreground: RwLock::new(foreground.map(Arc::new)),
            foreground_generation: AtomicI64::new(0),
            colours: RwLock::new(colours),
            kinds: RwLock::new(kinds),
            likeness: Mutex::new(None),
            described: described.map(RwLock::new),
        }
    }

    /// The foreground head searches use now (see [`SearchEngine::follow_catalog`]).
    fn foreground_head(&self) -> Result<Option<Arc<ForegroundHead>>, SearchError> {
        Ok(self.foreground.read().map_err(|_| poisoned("foreground head"))?.clone())
    }

    fn current_space(&self) -> Result<Arc<SearchSpace>> {
        Ok(self.read_index()?.space.clone())
    }

    /// Name of the model that encodes queries (and whose vectors the catalog holds).
    pub fn model_name(&self) -> &str {
        &self.encoder.spec().name
    }

    /// The space the index searches.
    pub fn space(&self) -> Result<Arc<SearchSpace>> {
        self.current_space()
    }

    /// Runs `f` with the catalog locked.
    pub fn with_catalog<T>(&self, f: impl FnOnce(&mut SqliteCatalog) -> Result<T>) -> Result<T> {
        let mut catalog = self.lock_catalog()?;
        f(&mut catalog)
    }

    // The engine's locks. Lock order, everywhere: the catalog, then the index, then the colour
    // table; a search that needs several lets go of each before taking the next (see
    // `search_vector_with_colour`).

    fn lock_catalog(&self) -> Result<MutexGuard<'_, SqliteCatalog>> {
        let catalog = self.catalog.as_ref().context("this server has no catalog file: it answers from its Qdrant collection alone")?;
        catalog.lock().map_err(|_| poisoned("catalog"))
    }

    /// Without a catalog: the collection's description as last taken up.
    fn description(&self) -> Result<Option<Arc<CollectionDescription>>> {
        self.described.as_ref().map(|d| d.read().map(|d| d.description.clone()).map_err(|_| poisoned("collection description"))).transpose()
    }

    fn read_index(&self) -> Result<RwLockReadGuard<'_, IndexInSpace>> {
        self.index.read().map_err(|_| poisoned("index"))
    }

    fn write_index(&self) -> Result<RwLockWriteGuard<'_, IndexInSpace>> {
        self.index.write().map_err(|_| poisoned("index"))
    }

    fn read_colours(&self) -> Result<RwLockReadGuard<'_, ColourTable>> {
        self.colours.read().map_err(|_| poisoned("colour table"))
    }

    fn write_colours(&self) -> Result<RwLockWriteGuard<'_, ColourTable>> {
        self.colours.write().map_err(|_| poisoned("colour table"))
    }

    fn read_kinds(&self) -> Result<RwLockReadGuard<'_, KindTable>> {
        self.kinds.read().map_err(|_| poisoned("kind table"))
    }

    fn write_kinds(&self) -> Result<RwLockWriteGuard<'_, KindTable>> {
        self.kinds.write().map_err(|_| poisoned("kind table"))
    }

    /// Whether the vector store answers now (a Qdrant cluster is asked; an embedded index
    /// always does).
    pub fn store_health(&self) -> Result<(), SearchError> {
        self.read_index()?.health().map_err(SearchError::Unavailable)
    }

    /// What the index holds: vectors, bytes, dead entries (for `/metrics`).
    pub fn index_stats(&self) -> IndexStats {
        self.index.read().map(|store| store.stats()).unwrap_or_default()
    }

    /// Number of searchable products (vectors in the index).
    pub fn len(&self) -> usize {
        self.index.read().map(|store| store.index().len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
