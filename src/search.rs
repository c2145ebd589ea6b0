//! The search path, top to bottom: decode → preprocess → encode → nearest neighbours → join
//! product metadata. The CLI and the HTTP API both call [`SearchEngine`]; neither knows how the
//! model or the store work.

use std::sync::{Mutex, RwLock};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::catalog::{Catalog, Filter, Product, SqliteCatalog, VectorKind};
use crate::encoder::Encoder;
use crate::index::{Allowed, Hit, VectorIndex};
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

/// Milliseconds spent in each stage of one search.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
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
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

impl SearchEngine {
    /// Loads the catalog's stored vectors into an exact in-memory index.
    pub fn open(catalog: SqliteCatalog, encoder: Box<dyn Encoder>) -> Result<SearchEngine> {
        let space = SearchSpace::for_catalog(&catalog)?;
        let index = space.build_index(&catalog, VectorKind::Primary)?;
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
        Ok(SearchEngine { catalog: Mutex::new(catalog), index: RwLock::new(Box::new(index)), encoder, space, limits: DecodeLimits::default() })
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

    /// Products most similar to the photo in `bytes`.
    pub fn search_image(&self, bytes: &[u8], request: &SearchRequest) -> Result<SearchResults, SearchError> {
        let started = Instant::now();
        let mut timings = Timings::default();

        let t = Instant::now();
        let image = preprocess::decode(bytes, &self.limits)?;
        timings.decode_ms = ms(t);

        let t = Instant::now();
        let tensor = preprocess::prepare(&preprocess::to_rgb_on_white(&image), &self.encoder.spec().input);
        timings.preprocess_ms = ms(t);

        let t = Instant::now();
        let embedding = self.encoder.encode(&[tensor])?.into_iter().next().context("the encoder returned no embedding")?;
        timings.encode_ms = ms(t);

        let mut results = self.search_vector(&embedding.vector, request)?;
        results.timings = Timings { search_ms: results.timings.search_ms, metadata_ms: results.timings.metadata_ms, total_ms: ms(started), ..timings };
        Ok(results)
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
        let allowed: Option<Allowed> =
            if request.filter.is_empty() { None } else { Some(self.with_catalog(|c| c.filter_keys(&request.filter))?.into_iter().collect()) };
        let wanted = request.offset.saturating_add(request.k);
        let hits: Vec<Hit> = {
            let index = self.index.read().map_err(|_| anyhow::anyhow!("index lock poisoned"))?;
            if vector.len() != index.dim() && !index.is_empty() {
                return Err(SearchError::BadRequest(format!("vector has {} dimensions; this catalog's are {}", vector.len(), index.dim())));
            }
            index.search(&vector, wanted, allowed.as_ref())?
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
