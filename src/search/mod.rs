//! The search path, top to bottom: decode → preprocess → encode → nearest neighbours → join
//! product metadata. The CLI and the HTTP API both call [`SearchEngine`]; neither knows how the
//! model or the store work.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::catalog::SqliteCatalog;
use crate::colour::{self, ColourDescriptor, ColourEstimate, ColourMode, ColourTable};
use crate::encoder::{Embedding, Encoder, QueryEmbedding};
use crate::index::qdrant::{collection_key, QdrantConfig, StoredProduct};
use crate::index::{Allowed, Hit, IndexConfig, IndexStats, StoreUnavailable};
use crate::kind::{self, KindMode, KindTable};
use crate::likeness::{self, Likeness, LikenessBands, RecordedBands};
use crate::localise::{self, find_items, ForegroundHead};
use crate::preprocess::{self, Crop, DecodeLimits, ImageError};
use crate::space::SearchSpace;
use crate::store::{open_collection, open_index, CollectionDescription, Store};
use crate::straighten;
use crate::types::{Detection, Filter, ImageRef, IndexingProgress, Key, NewProduct, Product, VectorSpace};

mod follow;

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
    /// The vector store did not answer (a Qdrant cluster down): no result, rather than a
    /// wrong or partial one.
    #[error(transparent)]
    Unavailable(StoreUnavailable),
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for SearchError {
    fn from(err: anyhow::Error) -> SearchError {
        match err.downcast::<StoreUnavailable>() {
            Ok(unavailable) => SearchError::Unavailable(unavailable),
            Err(err) => SearchError::Internal(err),
        }
    }
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
    /// Without a catalog: what the collection's description says of it.
    described: Option<CollectionDescription>,
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
        let space = SearchSpace::for_catalog(&catalog)?;
        let followed = catalog.latest_change()?;
        let index = open_index(&catalog, &space, config)?;
        let vectors = catalog.vector_count()?;
        let engine = SearchEngine::assemble(catalog, encoder, space, index, config.clone())?;
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
        let (index, described) = open_collection(store)?;
        SearchEngine::over_collection(index, described, encoder, store)
    }

    /// [`SearchEngine::open_collection`] with the collection already opened (its description
    /// names the model, which the caller loads first).
    pub fn over_collection(index: crate::index::qdrant::QdrantIndex, described: CollectionDescription, encoder: Box<dyn Encoder>, store: &QdrantConfig) -> Result<SearchEngine> {
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
        Ok(SearchEngine::from_parts(None, encoder, space, Store::Qdrant(index), config, foreground, tables, Some(described)))
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
        described: Option<CollectionDescription>,
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
            config,
            followed: AtomicI64::new(0),
            indexing: Mutex::new(None),
            foreground: RwLock::new(foreground.map(Arc::new)),
            foreground_generation: AtomicI64::new(0),
            colours: RwLock::new(colours),
            kinds: RwLock::new(kinds),
            likeness: Mutex::new(None),
            described,
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

    /// Products most similar to the photo in `bytes`, optionally cropped to `crop` first.
    ///
    /// The whole path, top to bottom. The HTTP server runs the same three steps but sends the
    /// middle one through its batching worker pool ([`SearchEngine::encode_photos`] on several
    /// queries at once), so it calls them separately.
    pub fn search_image(&self, bytes: &[u8], crop: Option<Crop>, request: &SearchRequest, items: Items) -> Result<SearchResults, SearchError> {
        let started = Instant::now();
        let query = self.prepare_query(bytes, crop, items)?;
        let mut timings = query.timings.clone();

        let t = Instant::now();
        let photo = self.encode_photos(vec![query])?.into_iter().next().context("the encoder returned no embedding")?;
        timings.encode_ms = ms(t);

        self.search_photo(&photo, request, timings, started)
    }

    /// Decode → crop → composite on white → resize and normalise: the shopper's photo as the
    /// model's input tensor. CPU work that allocates; the bytes are only borrowed, nothing is
    /// written anywhere.
    pub fn prepare_query(&self, bytes: &[u8], crop: Option<Crop>, items: Items) -> Result<PreparedQuery, SearchError> {
        let mut timings = Timings::default();
        let t = Instant::now();
        let input = &self.encoder.spec().input;
        let image = preprocess::decode_reduced(bytes, &self.limits, preprocess::needed_side(input, crop))?;
        timings.decode_ms = ms(t);

        let t = Instant::now();
        let pixels = preprocess::input_pixels(&image, crop, input);
        let tensor = pixels.tensor(input);
        let localise_in = crop.is_none().then(|| (image.width(), image.height()));
        let foreground = self.foreground_head()?;
        let tiles = if crop.is_none() && foreground.is_some() { localise::tile_inputs(&image, input) } else { Vec::new() };
        // A tilted photo may also be searched straightened ([`SearchEngine::encode_photos`]).
        let tilted = crop.is_none().then(|| straighten::Tilted::of(&image, input)).flatten();
        timings.preprocess_ms = ms(t);
        let photo = (crop.is_none() && items == Items::All).then_some(image);
        Ok(PreparedQuery { tensor, pixels, localise_in, tiles, foreground, photo, tilted, timings })
    }

    /// Runs the encoder on prepared queries and finds the products in each photo, in order;
    /// then encodes, in one more batch, each tilted photo straightened whose view as taken
    /// found nothing very similar ([`straighten::worth_straightening`]) and, for queries that
    /// kept their photo (`Items::All`), each product found on its own.
    pub fn encode_photos(&self, queries: Vec<PreparedQuery>) -> Result<Vec<EncodedPhoto>, SearchError> {
        // One batch: every photo, then every photo's tiles.
        let count = queries.len();
        let mut tensors = Vec::with_capacity(count);
        let mut rest = Vec::with_capacity(count);
        let mut tile_crops: Vec<Vec<Crop>> = Vec::with_capacity(count);
        let mut tile_tensors = Vec::new();
        let mut tilted = Vec::new();
        for (q, query) in queries.into_iter().enumerate() {
            tensors.push(query.tensor);
            let (crops, inputs): (Vec<Crop>, Vec<Vec<f32>>) = query.tiles.into_iter().unzip();
            tile_crops.push(crops);
            tile_tensors.extend(inputs);
            if let Some(photo) = query.tilted {
                tilted.push((q, photo));
            }
            rest.push((query.localise_in, query.photo, query.pixels, query.foreground));
        }
        let tile_count = tile_tensors.len();
        let expected = tensors.len() + tile_count;
        tensors.extend(tile_tensors);
        let mut encoded = self.encoder.encode_queries(&tensors)?;
        if encoded.len() != expected {
            return Err(SearchError::Internal(anyhow::anyhow!("the encoder returned {} embeddings for {} images", encoded.len(), expected)));
        }
        drop(tensors);
        let mut tile_grids = encoded.split_off(count).into_iter();
        let (mut found, photos): (Vec<EncodedPhoto>, Vec<Option<image::DynamicImage>>) = encoded
            .into_iter()
            .zip(rest)
            .zip(tile_crops)
            .map(|((embedding, (localise_in, photo, pixels, foreground)), crops)| {
                let tiles: Vec<(Crop, crate::encoder::GridFeatures)> = crops.into_iter().zip(tile_grids.by_ref()).filter_map(|(crop, tile)| Some((crop, tile.grid?))).collect();
                (self.find_products(embedding, &tiles, localise_in, &pixels, foreground.as_deref()), photo)
            })
            .unzip();

        // The second batch: straightened photos first, then the products found, each on its own.
        let input = &self.encoder.spec().input;
        let very_similar = if tilted.is_empty() { None } else { self.likeness_bands()?.map(|b| b.very_similar) };
        let mut crops = Vec::new();
        let mut straightened_of = Vec::new();
        for (q, photo) in tilted {
            let best = self.best_score(&mut Query::new(QueryVector::Photo(&found[q].whole.vector)))?;
            found[q].as_taken_best = Some(best);
            if straighten::worth_straightening(best, very_similar) {
                crops.push(photo.straightened_input(input));
                straightened_of.push(q);
            }
        }
        let mut owners = Vec::new();
        for (q, photo) in photos.iter().enumerate() {
            let Some(photo) = photo else { continue };
            for (i, item) in found[q].items.iter().enumerate() {
                crops.push(preprocess::prepare_image(photo, Some(item.crop), input));
                owners.push((q, i));
            }
        }
        if !crops.is_empty() {
            let mut vectors = self.encoder.encode(&crops)?;
            if vectors.len() != crops.len() {
                return Err(SearchError::Internal(anyhow::anyhow!("the encoder returned {} embeddings for {} images", vectors.len(), crops.len())));
            }
            let items = vectors.split_off(straightened_of.len());
            for (q, view) in straightened_of.into_iter().zip(vectors) {
                found[q].straightened = Some(view);
            }
            for ((q, i), embedding) in owners.into_iter().zip(items) {
                found[q].items[i].vector = Some(embedding.vector);
            }
        }
        Ok(found)
    }

    /// The products on a query's feature map, as boxes on the photo, and the photo's colour
    /// (its main product's, where one was found).
    fn find_products(
        &self,
        query: QueryEmbedding,
        tiles: &[(Crop, crate::encoder::GridFeatures)],
        photo: Option<(u32, u32)>,
        pixels: &preprocess::InputPixels,
        foreground: Option<&ForegroundHead>,
    ) -> EncodedPhoto {
        let (Some(grid), Some((width, height))) = (&query.grid, photo) else {
            let colour = colour::of_query(pixels, None, None);
            return EncodedPhoto { whole: query.embedding, straightened: None, as_taken_best: None, colour, items: Vec::new() };
        };
        let fit = self.encoder.spec().input.fit;
        let found = match foreground {
            Some(head) if !tiles.is_empty() => localise::find_items_tiled(grid, tiles, head, width, height, fit),
            head => find_items(grid, head),
        };
        // Where the learned head sees product: the colour is read there (a floor's colours are
        // discounted wherever they show).
        let map = found.foreground_map();
        let foreground = map.as_ref().map(|at| at as colour::Foreground<'_>);
        let colour = colour::of_query(pixels, found.main().map(|main| main.bounds), foreground);
        let mut items: Vec<FoundItem> = Vec::new();
        for item in found.products() {
            // Items wholly on the padding around a photo are not in the photo.
            let Some(on_photo) = preprocess::input_box_to_crop(item.bounds, 0.0, width, height, fit) else { continue };
            let detection = Detection { bounds: [on_photo.x, on_photo.y, on_photo.width, on_photo.height], score: item.score };
            // Searched with a margin around its box: what `eval --scenes` measures.
            let colour = colour::of_query(pixels, Some(item.bounds), foreground);
            items.push(FoundItem { detection, crop: on_photo.grown(localise::ITEM_CROP_MARGIN), vector: None, colour });
        }
        EncodedPhoto { whole: query.embedding, straightened: None, as_taken_best: None, colour, items }
    }

    /// What a search for the photo looks for: the whole photo, as taken or straightened (when
    /// it looked tilted), whichever view's best match in the catalog scores higher
    /// ([`straighten::pick_view`]).
    ///
    /// Not its main item: pooled over the item or cropped to it, the query found fewer
    /// products of the right kind on clean and on shopper-style photos of one product, and
    /// the very product less often (docs/localisation-study.md). The items found are offered
    /// beside the results instead (`detections`, `Items::All`), for the shopper to choose.
    pub fn query_vector<'a>(&self, photo: &'a EncodedPhoto) -> Result<&'a [f32], SearchError> {
        Ok(self.chosen_view(photo)?.0)
    }

    /// [`SearchEngine::query_vector`], and the query that searches for it.
    fn chosen_view<'a>(&self, photo: &'a EncodedPhoto) -> Result<(&'a [f32], Query<'a>), SearchError> {
        let as_taken = photo.whole.vector.as_slice();
        let mut as_taken_query = Query::new(QueryVector::Photo(as_taken));
        let Some(straightened) = &photo.straightened else { return Ok((as_taken, as_taken_query)) };
        let straight = straightened.vector.as_slice();
        let mut straight_query = Query::new(QueryVector::Photo(straight));
        // (Scored when the photo was encoded: if `tune` changed the space since, in the old one;
        // it only chooses between two views of one photo.)
        let as_taken_best = match photo.as_taken_best {
            Some(best) => best,
            None => self.best_score(&mut as_taken_query)?,
        };
        Ok(match straighten::pick_view(&[as_taken_best, self.best_score(&mut straight_query)?]) {
            0 => (as_taken, as_taken_query),
            _ => (straight, straight_query),
        })
    }

    /// The score of the product nearest `query`; minus infinity in an empty catalog.
    fn best_score(&self, query: &mut Query<'_>) -> Result<f32, SearchError> {
        let index = self.read_index()?;
        let vector = query.in_space(&index.space)?;
        Ok(index.search(vector, 1, &Filter::default(), None)?.first().map_or(f32::NEG_INFINITY, |h| h.score))
    }

    /// The last two steps of a photo search: nearest neighbours of the photo (and of each item
    /// encoded on its own, as `Items::All` asked [`SearchEngine::prepare_query`] to), then product
    /// metadata. `timings` carries the earlier stages' times; `started` is when the search began,
    /// for `total_ms`.
    pub fn search_photo(&self, photo: &EncodedPhoto, request: &SearchRequest, timings: Timings, started: Instant) -> Result<SearchResults, SearchError> {
        let query_colour = photo.colour.map(|c| c.descriptor);
        let (_, query) = self.chosen_view(photo)?;
        let mut results = self.search_in_space(query, query_colour.as_ref(), request)?;
        results.query_colour = photo.colour;
        for item in &photo.items {
            let Some(vector) = &item.vector else { continue };
            // Each item by its own colour: in a red top and blue jeans, the jeans' look-alikes
            // are blue.
            let item_colour = item.colour.map(|c| c.descriptor);
            let found = self.search_vector_with_colour(vector, item_colour.as_ref(), request)?;
            results.timings.search_ms += found.timings.search_ms;
            results.timings.metadata_ms += found.timings.metadata_ms;
            results.items.push(ItemResults { detection: item.detection, query_colour: item.colour, hits: found.hits });
        }
        results.detections = photo.detections();
        results.timings = Timings { search_ms: results.timings.search_ms, metadata_ms: results.timings.metadata_ms, total_ms: ms(started), ..timings };
        Ok(results)
    }

    /// Adds a product (or replaces the one with the same id) and makes it searchable at once:
    /// the catalog is written first, so a crash between the two steps loses nothing that a
    /// restart (which rebuilds the index from the catalog) would not restore.
    pub fn add_product(&self, mut product: NewProduct) -> Result<Key, SearchError> {
        // A photo stored without its colour (an upload through the API) gets it here, from its
        // own pixels as a catalog shot, as `index` gives it (so searches do not pay for it).
        if product.colour.is_none() {
            if let crate::types::NewImage::Stored { bytes, .. } = &product.image {
                let input = &self.encoder.spec().input;
                let image = preprocess::decode_reduced(bytes, &self.limits, preprocess::needed_side(input, None))?;
                if let Some(colour) = colour::of_product(&preprocess::input_pixels(&image, None, input)) {
                    colour.name_in(&mut product.metadata);
                    product.colour = Some(colour.descriptor.values());
                }
            }
        }
        let colour = product.colour.as_deref().map(ColourDescriptor::from_values).transpose()?;
        let image = match &product.image {
            crate::types::NewImage::Stored { bytes, .. } => Some(bytes.clone()),
            _ => None,
        };
        let stored = StoredProduct { id: product.id.clone(), metadata: product.metadata.clone(), colour: product.colour.clone() };
        if self.catalog.is_none() {
            // Straight to the collection, where every server finds it on its next search.
            let key = collection_key(&product.id);
            let mut index = self.write_index()?;
            let searched = map_product(&index.space, &product.vector)?;
            index.put(key, &searched, stored, image.as_deref())?;
            return Ok(key);
        }
        let expected = self.encoder.spec().name.clone();
        // Hold the catalog lock across both writes, so concurrent changes to the same id
        // reach the index in the order they reached the catalog.
        let mut catalog = self.lock_catalog()?;
        catalog.bind_vector_space(&VectorSpace { model: expected, dim: product.vector.len() })?;
        // The catalog keeps model vectors; the index holds them mapped into the search space.
        let key = *catalog.upsert(std::slice::from_ref(&product))?.first().context("the catalog stored no product")?;
        // Mapped by the index's own space: it is only replaced under the catalog lock, held here.
        let mut index = self.write_index()?;
        let searched = map_product(&index.space, &product.vector)?;
        index.put(key, &searched, stored, image.as_deref())?;
        drop(index);
        self.write_colours()?.put(key, colour, crate::types::Product::named_colour(&product.metadata));
        self.write_kinds()?.put(key, &product.metadata);
        Ok(key)
    }

    /// Removes a product from the catalog, then from the index (from a Qdrant collection by
    /// its id, so also a product another server added there). Returns whether it existed.
    pub fn remove_product(&self, id: &str) -> Result<bool, SearchError> {
        if self.catalog.is_none() {
            return Ok(self.collection_mut(|c| c.remove_product(id))?);
        }
        let mut catalog = self.lock_catalog()?;
        let Some(key) = catalog.remove(id)? else {
            drop(catalog);
            return Ok(self.read_index()?.collection().is_some() && self.collection_mut(|c| c.remove_product(id))?);
        };
        self.write_index()?.index_mut().remove(key)?;
        self.write_colours()?.remove(key);
        self.write_kinds()?.remove(key);
        Ok(true)
    }

    /// Runs `f` on the Qdrant collection (an error when the store is embedded).
    fn collection_mut<T>(&self, f: impl FnOnce(&mut crate::index::qdrant::QdrantIndex) -> Result<T>) -> Result<T> {
        let mut store = self.write_index()?;
        f(store.collection_mut().context("the vector store is not a Qdrant collection")?)
    }

    /// A product by its id. With a Qdrant collection as the store, the collection says whether
    /// it exists (any server may have added or removed it there); the catalog's row is
    /// preferred where there is one, for its photo.
    pub fn product(&self, id: &str) -> Result<Option<Product>> {
        let in_collection = match self.read_index()?.collection() {
            Some(collection) => Some(collection.product(id)?.map(|(stored, _)| collection_product(stored))),
            None => None,
        };
        if in_collection == Some(None) {
            return Ok(None);
        }
        if self.catalog.is_some() {
            if let Some(product) = self.with_catalog(|c| c.get_by_id(id))? {
                return Ok(Some(product));
            }
        }
        Ok(in_collection.flatten())
    }

    /// A product's photo: stored in the catalog, the file recorded at import, or (for a
    /// product known only from a Qdrant collection) the photo its payload carries. `None`
    /// when it is gone.
    pub fn product_image(&self, product: &Product) -> Result<Option<Vec<u8>>> {
        match &product.image {
            ImageRef::Stored { .. } => self.with_catalog(|c| c.stored_image(product.key)).map(|found| found.map(|(bytes, _)| bytes)),
            // Only the path the catalog recorded at import is ever read; nothing from the request.
            ImageRef::File(path) => Ok(crate::catalog::read_image_file(path).map_err(|e| tracing::warn!("{e:#}")).ok()),
            ImageRef::Collection => match self.read_index()?.collection() {
                Some(collection) => collection.product_image(&product.id),
                None => Ok(None),
            },
        }
    }

    /// Every (column, value, products) count for the page's filters, and the number of
    /// products: from the catalog, or counted by Qdrant over the collection's indexed columns.
    pub fn facets(&self) -> Result<(Vec<FacetCount>, usize)> {
        match &self.described {
            None => self.with_catalog(|c| Ok((c.value_counts()?, c.len()?))),
            Some(described) => {
                let store = self.read_index()?;
                let collection = store.collection().context("a server without a catalog searches a Qdrant collection")?;
                Ok((collection.facets(&described.facet_columns, 100)?, collection.count_now()?))
            }
        }
    }

    /// Products searchable now: the catalog's, or the Qdrant collection's as it counts them
    /// (with every server's changes).
    pub fn product_count(&self) -> Result<usize> {
        match self.catalog {
            Some(_) => self.with_catalog(|c| c.len()),
            None => self.read_index()?.collection().context("a server without a catalog searches a Qdrant collection")?.count_now(),
        }
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

    /// The score bands of "Very similar", "Similar" and "Related" ([`crate::likeness`]),
    /// measured on a sample of the catalog's own products against the index, and measured again
    /// when the search space changes or the catalog has grown or shrunk by a fifth.
    /// `None` for a catalog too small to compare its products.
    pub fn likeness_bands(&self) -> Result<Option<LikenessBands>> {
        let mut measured = self.likeness.lock().map_err(|_| poisoned("likeness bands"))?;
        let space = self.current_space()?;
        let products = self.len();
        let fresh = |m: &MeasuredBands| Arc::ptr_eq(&m.space, &space) && likeness::still_fits(m.products, products);
        if let Some(m) = measured.as_ref().filter(|m| fresh(m)) {
            return Ok(m.bands);
        }
        // As `index` or `tune` recorded them for this space, or measured now (not written back:
        // a search never writes to the catalog).
        let fingerprint = space.fingerprint();
        let recorded = match &self.described {
            Some(described) => described.likeness.as_deref().and_then(RecordedBands::from_setting),
            None => self.with_catalog(|c| Ok(c.setting(likeness::SETTING)?.as_deref().and_then(RecordedBands::from_setting)))?,
        };
        let bands = match recorded {
            Some(recorded) if recorded.fits(&fingerprint, products) => Some(recorded.bands),
            // Without the catalog there are no model vectors to sample: as described, or none.
            recorded if self.described.is_some() => recorded.map(|r| r.bands),
            _ => {
                let sample = self.with_catalog(|c| c.sample_vectors(likeness::SAMPLE))?;
                let sample: Vec<(Key, Vec<f32>)> = sample.into_iter().filter_map(|(key, v)| space.map(&v).ok().map(|v| (key, v))).collect();
                let moved = std::cell::Cell::new(false);
                let bands = likeness::measure(&sample, |v, n| {
                    let index = self.read_index()?;
                    if !Arc::ptr_eq(&index.space, &space) {
                        moved.set(true);
                        return Ok(Vec::new());
                    }
                    Ok(index.search(v, n, &Filter::default(), None)?.into_iter().map(|h| (h.key, h.score)).collect())
                })?;
                if moved.get() {
                    // The space was replaced while measuring (`tune` ran): measured in the new one.
                    drop(measured);
                    return self.likeness_bands();
                }
                bands
            }
        };
        *measured = Some(MeasuredBands { space: space.clone(), products, bands });
        Ok(bands)
    }

    /// Number of searchable products (vectors in the index).
    pub fn len(&self) -> usize {
        self.index.read().map(|store| store.index().len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// "More like this": products most similar to a catalog product, from its stored vector
    /// (a Qdrant collection's, where that is the store: any server's product, in any server).
    /// The product itself is left out of the results.
    pub fn search_like(&self, id: &str, request: &SearchRequest) -> Result<SearchResults, SearchError> {
        let from_collection = {
            let store = self.read_index()?;
            match store.collection() {
                Some(collection) => Some(collection.product(id)?),
                None => None,
            }
        };
        let model_vector: Vec<f32>;
        let (query, colour) = match from_collection {
            Some(found) => {
                let (stored, vector) = found.ok_or_else(|| SearchError::UnknownProduct(id.to_string()))?;
                (Query::new(QueryVector::InSpace(vector)), stored.colour.as_deref().map(ColourDescriptor::from_values).transpose()?)
            }
            None => {
                let (key, vector) = self
                    .with_catalog(|c| {
                        let Some(product) = c.get_by_id(id)? else { return Ok(None) };
                        Ok(c.vector(product.key)?.map(|v| (product.key, v)))
                    })?
                    .ok_or_else(|| SearchError::UnknownProduct(id.to_string()))?;
                model_vector = vector;
                (Query::new(QueryVector::Product(&model_vector)), self.read_colours()?.descriptor(key).copied())
            }
        };
        // Rank from the top with one extra hit, drop the product itself, then cut the page, so
        // pages line up whether or not the product falls inside the filter.
        let widened = SearchRequest { k: request.offset + request.k + 1, offset: 0, ..request.clone() };
        let mut results = self.search_in_space(query, colour.as_ref(), &widened)?;
        results.hits.retain(|h| h.product.id != id);
        results.hits = results.hits.into_iter().skip(request.offset).take(request.k).collect();
        for (i, hit) in results.hits.iter_mut().enumerate() {
            hit.rank = request.offset + i + 1;
        }
        Ok(results)
    }

    /// Products most similar to a model embedding (as the encoder produces it, before any
    /// tuned projection), taken as a photo's: the photo adapter applies, so that a search by a
    /// photo's returned `query_vector` finds what the photo found. A vector has no colour:
    /// `colour=match` ranks by shape alone.
    pub fn search_vector(&self, model_vector: &[f32], request: &SearchRequest) -> Result<SearchResults, SearchError> {
        self.search_vector_with_colour(model_vector, None, request)
    }

    /// Products most similar to a model embedding whose photo has `colour` (a
    /// [`ColourDescriptor`], as a photo search returns it), with colour treated as
    /// `request.colour` says.
    pub fn search_vector_with_colour(&self, model_vector: &[f32], colour: Option<&ColourDescriptor>, request: &SearchRequest) -> Result<SearchResults, SearchError> {
        self.search_in_space(Query::new(QueryVector::Photo(model_vector)), colour, request)
    }

    /// Whether the catalog has colour, and the column it names colours in.
    fn colour_facts(&self) -> Result<(bool, String)> {
        Ok(match &self.described {
            Some(described) => (described.has_colour, described.colour_column.clone()),
            None => {
                let colours = self.read_colours()?;
                (colours.has_colour(), colours.column().to_string())
            }
        })
    }

    /// [`SearchEngine::search_vector_with_colour`] for any query.
    fn search_in_space(&self, query: Query<'_>, colour: Option<&ColourDescriptor>, request: &SearchRequest) -> Result<SearchResults, SearchError> {
        let started = Instant::now();
        let mut timings = Timings::default();

        let t = Instant::now();
        let wanted = request.offset.saturating_add(request.k);
        // Colour applies only where the catalog has colour (a grey catalog ranks by shape
        // under every mode) and, for `match`, where the query has a colour. (The colour table
        // is locked only for a moment each time: it is written after the catalog and the
        // index, so it must never be held while waiting for either.)
        let (has_colour, colour_column) = self.colour_facts()?;
        let mode = match (&request.colour, colour) {
            _ if !has_colour => ColourMode::Any,
            (ColourMode::Match, None) => ColourMode::Any,
            (mode, _) => mode.clone(),
        };
        // A Qdrant collection answers with each product's payload, which is shown instead of
        // the catalog's rows: it holds what every server added, and a hit's key is only known
        // to the catalog that wrote it.
        let from_collection = self.read_index()?.collection().is_some();
        // An embedded store takes the keys the filter admits, read from the catalog before the
        // index lock is taken: writers hold the catalog lock while they wait for the index
        // lock, so a search holding both the other way round could deadlock.
        let mut filter = request.filter.clone();
        let mut allowed: Option<Allowed> = match request.filter.is_empty() || from_collection {
            true => None,
            false => Some(self.with_catalog(|c| c.filter_keys(&request.filter))?.into_iter().collect()),
        };
        if let ColourMode::Named(name) = &mode {
            if from_collection {
                // Qdrant filters its payloads: on the column the shop's colours are named in.
                filter.add(&colour_column, name).map_err(SearchError::BadRequest)?;
            } else {
                let named = self.read_colours()?.keys_named(name);
                allowed = Some(match allowed {
                    Some(allowed) => allowed.intersection(&named).copied().collect(),
                    None => named,
                });
            }
        }
        let mut query = query;
        {
            // A vector of the wrong size is the caller's mistake, said before anything is searched.
            let store = self.read_index()?;
            let vector = query.in_space(&store.space)?;
            let index = store.index();
            if vector.len() != index.dim() && !index.is_empty() {
                return Err(SearchError::BadRequest(format!("vector has {} dimensions; this catalog's are {}", vector.len(), index.dim())));
            }
        }
        // The products a collection's answers described, by their hits' keys.
        let found: std::cell::RefCell<HashMap<Key, StoredProduct>> = Default::default();
        let query = std::cell::RefCell::new(query);
        let by_shape = |n: usize| -> Result<Vec<Hit>> {
            let store = self.read_index()?;
            let mut query = query.borrow_mut();
            let vector = query.in_space(&store.space)?;
            let Some(collection) = store.collection() else { return store.search(vector, n, &filter, allowed.as_ref()) };
            let mut found = found.borrow_mut();
            Ok(collection
                .search_products(vector, n, &filter)?
                .into_iter()
                .map(|(score, product)| {
                    let key = collection_key(&product.id);
                    found.insert(key, product);
                    Hit { key, score }
                })
                .collect())
        };
        // The kind is voted on by the shape ranking, before colour blends in: the best matches
        // by shape say best what the photo shows; the colour-matched ones are the right colour,
        // of whatever kind comes closest in it.
        let mut voters: Vec<Hit> = Vec::new();
        let mut by_shape = |n: usize| -> Result<Vec<Hit>> {
            let hits = by_shape(n)?;
            kind::keep_voters(&mut voters, &hits);
            Ok(hits)
        };
        // The kind consensus re-ranks a deeper pool than the page (a collection's products
        // carry their categories in their payloads; a catalog's are in the kind table).
        let by_kind = request.kind == KindMode::Match && (from_collection || self.read_kinds()?.has_kinds());
        let pool = match by_kind {
            true => wanted.max(kind::CANDIDATES),
            false => wanted,
        };
        let hits: Vec<Hit> = match (&mode, colour) {
            // The index's lock and the colour table's are taken one at a time.
            (ColourMode::Match, Some(query)) => colour::search_matching(colour::MATCH_WEIGHT, wanted, by_shape, |hits, weight| match from_collection {
                true => Ok(payload_colours(&found.borrow())?.rerank(hits, query, weight)),
                false => Ok(self.read_colours()?.rerank(hits, query, weight)),
            })?,
            _ => by_shape(pool)?,
        };
        let (hits, kind_mode) = match (by_kind, from_collection) {
            (false, _) => (hits, KindMode::Any),
            (true, false) => (self.read_kinds()?.rerank_by_voters(hits, &voters, kind::WEIGHT), KindMode::Match),
            (true, true) => {
                let kinds = payload_kinds(&found.borrow());
                match kinds.has_kinds() {
                    true => (kinds.rerank_by_voters(hits, &voters, kind::WEIGHT), KindMode::Match),
                    false => (hits, KindMode::Any),
                }
            }
        };
        timings.search_ms = ms(t);

        let t = Instant::now();
        let page: Vec<Hit> = hits.into_iter().skip(request.offset).take(request.k).collect();
        let products: Vec<Product> = match from_collection {
            true => {
                let found = found.borrow();
                page.iter().filter_map(|h| found.get(&h.key).cloned().map(collection_product)).collect()
            }
            false => {
                let keys: Vec<_> = page.iter().map(|h| h.key).collect();
                self.with_catalog(|c| c.get_many(&keys))?
            }
        };
        let bands = self.likeness_bands()?;
        let likeness = |score: f32| bands.map_or(Likeness::Related, |b| b.band(score));
        let hits = page
            .iter()
            .zip(0..)
            .filter_map(|(hit, i)| {
                // A colour blend not re-ranked by kind may pass 1 (`ColourTable::rerank`).
                let score = hit.score.clamp(-1.0, 1.0);
                products.iter().find(|p| p.key == hit.key).map(|p| RankedProduct { rank: request.offset + i + 1, score, likeness: likeness(score), product: p.clone() })
            })
            .collect();
        timings.metadata_ms = ms(t);
        timings.total_ms = ms(started);
        Ok(SearchResults { hits, timings, colour_mode: mode, kind_mode, ..SearchResults::default() })
    }
}

/// A product as a Qdrant collection's payload describes it (its photo, if it has one there,
/// is read by [`SearchEngine::product_image`]).
fn collection_product(stored: StoredProduct) -> Product {
    Product { key: collection_key(&stored.id), id: stored.id, image: ImageRef::Collection, content_hash: String::new(), metadata: stored.metadata }
}

/// The categories of products a collection's answer described, to agree on.
fn payload_kinds(found: &HashMap<Key, StoredProduct>) -> KindTable {
    let mut table = KindTable::default();
    for (key, product) in found {
        table.put(*key, &product.metadata);
    }
    table
}

/// The colours of products a collection's answer described, to re-rank them by.
fn payload_colours(found: &HashMap<Key, StoredProduct>) -> Result<ColourTable> {
    let mut table = ColourTable::default();
    for (key, product) in found {
        let descriptor = product.colour.as_deref().map(ColourDescriptor::from_values).transpose()?;
        table.put(*key, descriptor, Product::named_colour(&product.metadata));
    }
    Ok(table)
}
