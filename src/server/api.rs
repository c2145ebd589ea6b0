//! The JSON API handlers. Each one parses its request, calls [`SearchEngine`] (through the
//! [`Batcher`](super::batcher::Batcher) for anything that encodes a photo) and shapes the
//! answer; errors go through [`ApiError`], which alone decides status codes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::metrics::Gauges;
use super::AppState;
use crate::catalog::{ImageRef, Metadata, NewImage, NewProduct, Product};
use crate::index::l2_normalize;
use crate::search::{Crop, SearchRequest, SearchResults, Timings};

/// Most results one page may ask for.
pub const MAX_K: usize = 100;
/// Deepest page: beyond this, paging through a visual search means nothing to a shopper.
pub const MAX_OFFSET: usize = 10_000;
/// Columns with more distinct values than this (ids, free text) are not offered as facets.
pub const MAX_FACET_VALUES: usize = 50;

type Shared = State<Arc<AppState>>;

/// Runs CPU-bound or blocking work (index scans, SQLite) off the async runtime.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::Internal(anyhow::anyhow!("a worker task failed: {e}")))?
}

// ---------------------------------------------------------------------------------------------
// Response bodies

/// One ranked product.
#[derive(Debug, Serialize, ToSchema)]
pub struct HitBody {
    /// 1-based rank across pages.
    pub rank: usize,
    pub id: String,
    /// Cosine similarity to the query, -1..1 (higher is more alike).
    pub score: f32,
    pub name: String,
    pub category: Option<String>,
    pub colour: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Where to fetch the product's photo.
    pub image_url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    /// Best first.
    pub hits: Vec<HitBody>,
    pub timings: Timings,
    /// The query photo's embedding, only when the request set `include_vector`: lets a client
    /// page or refilter with `{"vector": ...}` without uploading the photo again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_vector: Option<Vec<f32>>,
}

/// A product and all its metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductBody {
    pub id: String,
    pub name: String,
    pub category: Option<String>,
    pub colour: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub image_url: String,
}

impl From<&Product> for ProductBody {
    fn from(p: &Product) -> Self {
        ProductBody {
            id: p.id.clone(),
            name: p.name().to_string(),
            category: p.category().map(str::to_string),
            colour: p.colour().map(str::to_string),
            metadata: p.metadata.clone(),
            image_url: image_url(&p.id),
        }
    }
}

/// `/api/products/{id}/image` with the id percent-encoded (ids may hold `/`, spaces, ...).
fn image_url(id: &str) -> String {
    format!("/api/products/{}/image", percent_encode(id))
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn search_response(results: SearchResults, query_vector: Option<Vec<f32>>) -> SearchResponse {
    let hits = results
        .hits
        .into_iter()
        .map(|h| HitBody {
            rank: h.rank,
            id: h.product.id.clone(),
            score: h.score,
            name: h.product.name().to_string(),
            category: h.product.category().map(str::to_string),
            colour: h.product.colour().map(str::to_string),
            image_url: image_url(&h.product.id),
            metadata: h.product.metadata,
        })
        .collect();
    SearchResponse { hits, timings: results.timings.clone(), query_vector }
}

// ---------------------------------------------------------------------------------------------
// Search

/// `POST /api/search` as `multipart/form-data` (documentation only: the fields are read by hand).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct SearchForm {
    /// The photo: JPEG, PNG, WebP, GIF (first frame), BMP or TIFF.
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    /// Results per page (1..=100, default 10).
    k: Option<usize>,
    /// Results to skip (paging).
    offset: Option<usize>,
    /// `column=value`; repeat the field for several (same column: alternatives; different
    /// columns: all must match).
    filter: Option<Vec<String>>,
    /// `x,y,w,h`: search only this part of the photo, fractions 0..1 of its width and height.
    crop: Option<String>,
    /// `true` to get the photo's embedding back as `query_vector`.
    include_vector: Option<bool>,
}

/// `POST /api/search` as JSON: by a catalog product ("more like this") or by an embedding.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchJson {
    /// Search with this product's stored vector; the product itself is left out.
    pub product_id: Option<String>,
    /// Search with this embedding (as returned in `query_vector`).
    pub vector: Option<Vec<f32>>,
    pub k: Option<usize>,
    pub offset: Option<usize>,
    /// Column → accepted values.
    #[serde(default)]
    pub filters: BTreeMap<String, OneOrMany>,
    /// Not allowed here: crops apply to uploaded photos only.
    pub crop: Option<serde_json::Value>,
}

/// One filter value or a list of alternatives.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn page_request(k: Option<usize>, offset: Option<usize>, filter: crate::catalog::Filter) -> Result<SearchRequest, ApiError> {
    let k = k.unwrap_or(10);
    let offset = offset.unwrap_or(0);
    if k == 0 || k > MAX_K {
        return Err(ApiError::bad_parameters(format!("k must be between 1 and {MAX_K}, not {k}")));
    }
    if offset > MAX_OFFSET {
        return Err(ApiError::bad_parameters(format!("offset must be at most {MAX_OFFSET}, not {offset}")));
    }
    let max = crate::catalog::Filter::MAX_VALUES;
    if filter.value_count() > max {
        return Err(ApiError::bad_parameters(format!("at most {max} filter values in one search, not {}", filter.value_count())));
    }
    Ok(SearchRequest { k, offset, filter })
}

fn parse_number(field: &str, text: &str) -> Result<usize, ApiError> {
    text.trim().parse().map_err(|_| ApiError::bad_parameters(format!("{field} must be a whole number, not {text:?}")))
}

/// Search by photo (multipart) or by product / vector (JSON).
#[utoipa::path(
    post,
    path = "/api/search",
    tag = "search",
    request_body(content(
        (SearchForm = "multipart/form-data"),
        (SearchJson = "application/json"),
    )),
    responses(
        (status = 200, description = "Ranked products, best first", body = SearchResponse),
        (status = 400, description = "Unreadable image", body = ErrorBody),
        (status = 404, description = "Unknown product_id", body = ErrorBody),
        (status = 413, description = "Upload too large", body = ErrorBody),
        (status = 415, description = "Not a supported image type or body type", body = ErrorBody),
        (status = 422, description = "Bad parameters", body = ErrorBody),
        (status = 503, description = "Encoder queue full; see Retry-After", body = ErrorBody),
    )
)]
pub async fn search(State(state): Shared, request: Request) -> Result<Json<SearchResponse>, ApiError> {
    let request = refuse_oversized(&state, request).await?;
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        let multipart = Multipart::from_request(request, &state).await.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        search_by_photo(state, multipart).await
    } else if content_type.starts_with("application/json") {
        let Json(body) = Json::<SearchJson>::from_request(request, &state).await?;
        search_by_reference(state, body).await
    } else {
        Err(ApiError::UnsupportedType(format!(
            "send the photo as multipart/form-data (field \"image\"), or JSON with product_id or vector; got content type {content_type:?}"
        )))
    }
}

async fn search_by_photo(state: Arc<AppState>, mut form: Multipart) -> Result<Json<SearchResponse>, ApiError> {
    let started = Instant::now();
    let (mut image, mut k, mut offset, mut crop, mut filters, mut include_vector) = (None, None, None, None, Vec::new(), false);
    let mut seen = FieldNames::default();
    while let Some(field) = form.next_field().await? {
        let name = field.name().unwrap_or("").to_string();
        if name != "filter" {
            seen.once(&name)?;
        }
        match name.as_str() {
            "image" => image = Some(read_image_field(&state, field).await?),
            "k" => k = Some(parse_number("k", &field.text().await?)?),
            "offset" => offset = Some(parse_number("offset", &field.text().await?)?),
            "filter" => filters.push(field.text().await?),
            "crop" => {
                let text = field.text().await?;
                if !text.trim().is_empty() {
                    crop = Some(Crop::parse(&text).map_err(ApiError::BadParameters)?);
                }
            }
            "include_vector" => include_vector = matches!(field.text().await?.trim(), "true" | "1" | "yes"),
            other => return Err(ApiError::bad_parameters(format!("unknown form field {other:?}: expected image, k, offset, filter, crop, include_vector"))),
        }
    }
    let image = image.ok_or_else(|| ApiError::bad_parameters("the form has no \"image\" field with the photo"))?;
    let filter = crate::catalog::Filter::parse(&filters).map_err(|e| ApiError::BadParameters(e.to_string()))?;
    let request = page_request(k, offset, filter)?;

    let encoded = state.batcher.encode(image, crop).await?;
    let engine = state.engine.clone();
    let vector = encoded.embedding.vector;
    blocking(move || {
        let results = engine.search_embedding(&vector, &request, encoded.timings, started)?;
        Ok(Json(search_response(results, include_vector.then_some(vector))))
    })
    .await
}

/// The form fields seen so far, to refuse a repeated one: taking the first or the last of two
/// `id` or `image` fields silently would store or search something the client did not mean.
#[derive(Default)]
struct FieldNames(std::collections::HashSet<String>);

impl FieldNames {
    fn once(&mut self, name: &str) -> Result<(), ApiError> {
        if self.0.insert(name.to_string()) {
            Ok(())
        } else {
            Err(ApiError::bad_parameters(format!("send one {name:?} field, not several")))
        }
    }
}

/// Most bytes of an oversized upload read and thrown away so that the client hears the 413.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

/// Refuses a body whose declared length is over the limit before reading any of it.
///
/// Answering while the client is still sending makes most clients (browsers included) report
/// a broken connection instead of the 413 and its message. So the rest of the body is read and
/// dropped first, chunk by chunk (nothing is kept), unless it is absurdly large, in which case
/// the connection is simply closed.
async fn refuse_oversized(state: &AppState, request: Request) -> Result<Request, ApiError> {
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let Some(declared) = declared.filter(|&n| n > state.body_limit() as u64) else { return Ok(request) };
    if declared <= DRAIN_LIMIT {
        use http_body_util::BodyExt;
        let mut body = request.into_body();
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
    }
    Err(ApiError::TooLarge(format!(
        "the upload is {:.1} MB; this server accepts photos up to {:.1} MB",
        declared as f64 / 1e6,
        state.max_upload_bytes as f64 / 1e6
    )))
}

/// Reads an uploaded photo into memory (never to disk), refusing it past the size limit.
async fn read_image_field(state: &AppState, field: axum::extract::multipart::Field<'_>) -> Result<Bytes, ApiError> {
    let bytes = field.bytes().await?;
    if bytes.len() > state.max_upload_bytes {
        return Err(ApiError::TooLarge(format!(
            "the photo is {:.1} MB; this server accepts up to {:.1} MB",
            bytes.len() as f64 / 1e6,
            state.max_upload_bytes as f64 / 1e6
        )));
    }
    Ok(bytes)
}

async fn search_by_reference(state: Arc<AppState>, body: SearchJson) -> Result<Json<SearchResponse>, ApiError> {
    if body.crop.is_some() {
        return Err(ApiError::bad_parameters("crop applies to uploaded photos only (multipart search)"));
    }
    let mut filter = crate::catalog::Filter::default();
    for (column, values) in &body.filters {
        let values = match values {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(vs) => vs.as_slice(),
        };
        // An empty list would otherwise filter nothing, silently: the opposite of what a filter
        // that matches no value means.
        if values.is_empty() {
            return Err(ApiError::bad_parameters(format!("the filter on {column:?} lists no values: give a value or a list of alternatives")));
        }
        for value in values {
            filter.add(column.trim(), value).map_err(ApiError::BadParameters)?;
        }
    }
    let request = page_request(body.k, body.offset, filter)?;
    let engine = state.engine.clone();
    match (body.product_id, body.vector) {
        (Some(id), None) => blocking(move || Ok(Json(search_response(engine.search_like(&id, &request)?, None)))).await,
        (None, Some(mut vector)) => {
            if vector.is_empty() {
                return Err(ApiError::bad_parameters("vector is empty"));
            }
            // JSON numbers beyond f32's range arrive as infinities; they would make every score NaN.
            if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
                return Err(ApiError::bad_parameters(format!("vector[{i}] is not a finite number in f32's range")));
            }
            l2_normalize(&mut vector);
            blocking(move || Ok(Json(search_response(engine.search_vector(&vector, &request)?, None)))).await
        }
        _ => Err(ApiError::bad_parameters("give exactly one of product_id or vector (or upload a photo as multipart/form-data)")),
    }
}

// ---------------------------------------------------------------------------------------------
// Products

/// A product's metadata.
#[utoipa::path(
    get,
    path = "/api/products/{id}",
    tag = "catalog",
    params(("id" = String, Path, description = "The shop's product id")),
    responses(
        (status = 200, body = ProductBody),
        (status = 404, description = "Unknown product", body = ErrorBody),
    )
)]
pub async fn get_product(State(state): Shared, Path(id): Path<String>) -> Result<Json<ProductBody>, ApiError> {
    let product = find_product(&state, id).await?;
    Ok(Json(ProductBody::from(&product)))
}

async fn find_product(state: &Arc<AppState>, id: String) -> Result<Product, ApiError> {
    let engine = state.engine.clone();
    blocking(move || {
        engine
            .with_catalog(|c| crate::catalog::Catalog::get_by_id(c, &id))?
            .ok_or_else(|| ApiError::NotFound(format!("no product with id {id:?}")))
    })
    .await
}

/// A product's photo: the bytes stored in the catalog, or the file recorded at import.
#[utoipa::path(
    get,
    path = "/api/products/{id}/image",
    tag = "catalog",
    params(("id" = String, Path, description = "The shop's product id")),
    responses(
        (status = 200, description = "The image bytes", content_type = "image/*"),
        (status = 404, description = "Unknown product, or its image is gone", body = ErrorBody),
    )
)]
pub async fn product_image(State(state): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let product = find_product(&state, id).await?;
    let bytes = match &product.image {
        ImageRef::Stored { .. } => {
            let engine = state.engine.clone();
            let key = product.key;
            blocking(move || Ok(engine.with_catalog(|c| crate::catalog::Catalog::stored_image(c, key))?)).await?.map(|(bytes, _)| bytes)
        }
        // Only the path the catalog recorded at import is ever read; nothing from the request.
        ImageRef::File(path) => read_recorded_image(path).await,
    };
    let bytes = bytes.ok_or_else(|| ApiError::NotFound(format!("the image of product {:?} is no longer available", product.id)))?;
    // The type comes from the bytes themselves, and only image types are ever declared, so a
    // stored file can never be served as HTML or script.
    let mime = image::guess_format(&bytes).map(|f| f.to_mime_type()).unwrap_or("application/octet-stream");
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(mime)),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300")),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        Body::from(bytes),
    )
        .into_response())
}

/// Reads an image file the catalog recorded, unless a symbolic link is anywhere on its path
/// now: the importer records real paths, so a link there was put in afterwards and could point
/// anywhere on the machine (a replaced file or a replaced folder alike).
async fn read_recorded_image(path: &std::path::Path) -> Option<Vec<u8>> {
    let real = tokio::fs::canonicalize(path).await.ok()?;
    if real != path || !tokio::fs::symlink_metadata(path).await.ok()?.is_file() {
        tracing::warn!("not serving {}: a symbolic link is on its path (re-run `lookalike index` if the catalog moved)", path.display());
        return None;
    }
    tokio::fs::read(path).await.ok()
}

/// `POST /api/products` as `multipart/form-data` (documentation only).
#[derive(Debug, ToSchema)]
#[allow(dead_code, non_snake_case)]
pub struct NewProductForm {
    /// The shop's product id (replaces the product with this id if there is one).
    id: String,
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    /// A JSON object of strings, e.g. `{"articleType": "Dresses", "baseColour": "Red"}`.
    metadata: Option<String>,
    /// Any other text field becomes a metadata column of that name.
    #[schema(value_type = Option<String>)]
    articleType: Option<String>,
}

/// Adds or replaces a product; searchable as soon as this returns. Needs the admin token.
#[utoipa::path(
    post,
    path = "/api/products",
    tag = "catalog",
    request_body(content = NewProductForm, content_type = "multipart/form-data"),
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "Stored and searchable", body = ProductBody),
        (status = 400, description = "Unreadable image", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 403, description = "Catalog changes are off: no admin token configured", body = ErrorBody),
        (status = 413, description = "Upload too large", body = ErrorBody),
        (status = 415, description = "Not a supported image type", body = ErrorBody),
        (status = 422, description = "Bad fields", body = ErrorBody),
        (status = 503, description = "Encoder queue full; see Retry-After", body = ErrorBody),
    )
)]
pub async fn add_product(State(state): Shared, headers: HeaderMap, request: Request) -> Result<(StatusCode, Json<ProductBody>), ApiError> {
    state.require_admin(&headers)?;
    let request = refuse_oversized(&state, request).await?;
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    if !content_type.starts_with("multipart/form-data") {
        return Err(ApiError::UnsupportedType(format!(
            "send the product as multipart/form-data with the fields id, image and metadata; got content type {content_type:?}"
        )));
    }
    let mut form = Multipart::from_request(request, &state).await.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (mut id, mut image, mut metadata) = (None, None, Metadata::new());
    let mut seen = FieldNames::default();
    while let Some(field) = form.next_field().await? {
        let name = field.name().unwrap_or("").to_string();
        seen.once(&name)?;
        match name.as_str() {
            "image" => image = Some(read_image_field(&state, field).await?),
            "id" => id = Some(field.text().await?.trim().to_string()),
            "metadata" => {
                let text = field.text().await?;
                let object: Metadata = serde_json::from_str(&text)
                    .map_err(|e| ApiError::bad_parameters(format!("metadata must be a JSON object of strings: {e}")))?;
                metadata.extend(object);
            }
            "" => return Err(ApiError::bad_parameters("a form field has no name")),
            column => {
                let value = field.text().await?;
                metadata.insert(column.to_string(), value.trim().to_string());
            }
        }
    }
    let id = id.filter(|id| !id.is_empty()).ok_or_else(|| ApiError::bad_parameters("the form needs a non-empty \"id\" field"))?;
    if id.len() > 256 || id.chars().any(char::is_control) {
        return Err(ApiError::bad_parameters("id must be at most 256 bytes without control characters"));
    }
    let image = image.ok_or_else(|| ApiError::bad_parameters("the form needs an \"image\" field with the product photo"))?;

    let encoded = state.batcher.encode(image.clone(), None).await?;
    let mime = image::guess_format(&image).map(|f| f.to_mime_type()).unwrap_or("application/octet-stream").to_string();
    let product = NewProduct {
        id: id.clone(),
        content_hash: hex::encode(Sha256::digest(&image)),
        image: NewImage::Stored { bytes: image.to_vec(), mime },
        metadata,
        vector: encoded.embedding.vector,
        max_pooled: encoded.embedding.max_pooled,
    };
    let engine = state.engine.clone();
    let stored = blocking(move || {
        engine.add_product(product)?;
        engine.compact_graph_in_background();
        Ok(engine.with_catalog(|c| crate::catalog::Catalog::get_by_id(c, &id))?)
    })
    .await?
    .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the product just stored cannot be read back")))?;
    tracing::info!(id = %stored.id, "product added");
    Ok((StatusCode::CREATED, Json(ProductBody::from(&stored))))
}

/// Removes a product; gone from search results as soon as this returns. Needs the admin token.
#[utoipa::path(
    delete,
    path = "/api/products/{id}",
    tag = "catalog",
    params(("id" = String, Path, description = "The shop's product id")),
    security(("admin_token" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 403, description = "Catalog changes are off: no admin token configured", body = ErrorBody),
        (status = 404, description = "Unknown product", body = ErrorBody),
    )
)]
pub async fn delete_product(State(state): Shared, headers: HeaderMap, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    state.require_admin(&headers)?;
    let engine = state.engine.clone();
    let removed = blocking({
        let id = id.clone();
        move || {
            let removed = engine.remove_product(&id)?;
            engine.compact_graph_in_background();
            Ok(removed)
        }
    })
    .await?;
    if !removed {
        return Err(ApiError::NotFound(format!("no product with id {id:?}")));
    }
    tracing::info!(id = %id, "product removed");
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Facets

#[derive(Debug, Serialize, ToSchema)]
pub struct FacetsResponse {
    /// Products in the catalog.
    pub products: usize,
    pub facets: Vec<Facet>,
}

/// A metadata column a shopper can filter on.
#[derive(Debug, Serialize, ToSchema)]
pub struct Facet {
    pub column: String,
    /// Most common first.
    pub values: Vec<FacetValue>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FacetValue {
    pub value: String,
    pub count: usize,
}

/// Filterable metadata columns and how many products have each value. Only columns with 2 to
/// 50 distinct values are offered: one value filters nothing, hundreds (ids, names) are not a
/// facet.
#[utoipa::path(get, path = "/api/facets", tag = "search", responses((status = 200, body = FacetsResponse)))]
pub async fn facets(State(state): Shared) -> Result<Json<FacetsResponse>, ApiError> {
    let engine = state.engine.clone();
    let (counts, products) = blocking(move || Ok(engine.with_catalog(|c| Ok((c.value_counts()?, crate::catalog::Catalog::len(c)?)))?)).await?;
    let mut by_column: BTreeMap<String, Vec<FacetValue>> = BTreeMap::new();
    for (column, value, count) in counts {
        by_column.entry(column).or_default().push(FacetValue { value, count });
    }
    let facets = by_column
        .into_iter()
        .filter(|(_, values)| (2..=MAX_FACET_VALUES).contains(&values.len()))
        .map(|(column, values)| Facet { column, values })
        .collect();
    Ok(Json(FacetsResponse { products, facets }))
}

// ---------------------------------------------------------------------------------------------
// Operations

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// Liveness: the process is up and answering.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub status: &'static str,
    pub model: String,
    /// Searchable products.
    pub products: usize,
    pub workers: usize,
    /// A `lookalike index` run still adding products (searches already cover those it added).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indexing: Option<crate::catalog::IndexingProgress>,
}

/// Readiness: the model is loaded (the server does not listen before) and the catalog answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses((status = 200, body = Readiness), (status = 500, description = "The catalog does not answer", body = ErrorBody))
)]
pub async fn readyz(State(state): Shared) -> Result<Json<Readiness>, ApiError> {
    let engine = state.engine.clone();
    let products = blocking(move || Ok(engine.with_catalog(|c| crate::catalog::Catalog::len(c))?)).await?;
    Ok(Json(Readiness {
        status: "ready",
        model: state.engine.model_name().to_string(),
        products,
        workers: state.batcher.config().workers,
        indexing: state.engine.indexing(),
    }))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): Shared) -> impl IntoResponse {
    let config = state.batcher.config();
    let index = state.engine.index_stats();
    let gauges = Gauges {
        catalog_products: index.vectors,
        index_memory_bytes: index.memory_bytes,
        index_dead_entries: index.dead_entries,
        queue_waiting: state.batcher.waiting(),
        queue_capacity: config.queue,
        workers: config.workers,
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render(&gauges))
}

/// This API's OpenAPI 3.1 description, generated from the handlers.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI document", content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::openapi_text()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_percent_encoded_in_image_urls() {
        assert_eq!(image_url("fmnist-train-00001"), "/api/products/fmnist-train-00001/image");
        assert_eq!(image_url("shoes/red boot.jpg"), "/api/products/shoes%2Fred%20boot.jpg/image");
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert!(page_request(Some(0), None, Default::default()).is_err());
        assert!(page_request(Some(MAX_K + 1), None, Default::default()).is_err());
        assert!(page_request(Some(5), Some(MAX_OFFSET + 1), Default::default()).is_err());
        assert_eq!(page_request(None, None, Default::default()).map(|r| (r.k, r.offset)).ok(), Some((10, 0)));
    }
}
