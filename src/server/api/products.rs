//! `GET /api/products` (a page of them), `GET /api/products/{id}` (and its image),
//! `POST /api/products`, `PATCH /api/products/{id}` (its metadata alone),
//! `DELETE /api/products/{id}`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::super::error::{ApiError, ErrorBody};
use super::super::extract::{read_image_field, AdminToken, FieldNames, UploadForm};
use super::super::types::{NewProductForm, ProductBody, ProductDetailBody, ProductListBody, ProductPatchBody};
use super::super::AppState;
use super::{blocking, Shared};
use crate::types::{check_column_name, Filter, ImageRef, Metadata, MetadataPatch, NewImage, NewProduct, Product};

/// Products on a page listing them, at most this many a page.
const MAX_PAGE: usize = 500;

/// The catalog's products, a page at a time: all of them, or those matching the filters. With
/// a Qdrant collection as the store, the collection's (products added through any server).
#[utoipa::path(
    get,
    path = "/api/products",
    tag = "catalog",
    params(
        ("limit" = Option<usize>, Query, description = "Products a page, 1-500 (default 50)"),
        ("page" = Option<String>, Query, description = "The `next_page` of the page before; none for the first page"),
        ("filter" = Option<String>, Query, description = "`column=value`, repeatable: every column must match, any listed value of a column"),
    ),
    responses(
        (status = 200, body = ProductListBody),
        (status = 422, description = "Bad limit, page token or filter, or an unknown parameter", body = ErrorBody),
    )
)]
pub async fn list_products(State(state): Shared, Query(params): Query<Vec<(String, String)>>) -> Result<Json<ProductListBody>, ApiError> {
    let (mut limit, mut page, mut filters) = (50, None, Vec::new());
    for (name, value) in params {
        match name.as_str() {
            "limit" => {
                limit = value
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| ApiError::bad_parameters(format!("limit must be 1 to {MAX_PAGE}, not {value:?}")))?
            }
            "page" => page = Some(value),
            "filter" => filters.push(value),
            other => return Err(ApiError::bad_parameters(format!("unknown parameter {other:?}: expected limit, page, filter"))),
        }
    }
    let filter = Filter::parse(&filters).map_err(|e| ApiError::BadParameters(e.to_string()))?;
    let engine = state.engine.clone();
    let listed = blocking(move || Ok(engine.products_page(&filter, page.as_deref(), limit)?)).await?;
    Ok(Json(ProductListBody::from(&listed)))
}

/// A product's metadata, and the other products listed with its very photo (size variants).
#[utoipa::path(
    get,
    path = "/api/products/{id}",
    tag = "catalog",
    params(("id" = String, Path, description = "The shop's product id")),
    responses(
        (status = 200, body = ProductDetailBody),
        (status = 404, description = "Unknown product", body = ErrorBody),
    )
)]
pub async fn get_product(State(state): Shared, Path(id): Path<String>) -> Result<Json<ProductDetailBody>, ApiError> {
    let engine = state.engine.clone();
    let (product, variants) = blocking(move || {
        let product = engine.product(&id)?.ok_or_else(|| ApiError::NotFound(format!("no product with id {id:?}")))?;
        let variants = engine.variants_of(&product.product)?;
        Ok((product, variants))
    })
    .await?;
    Ok(Json(ProductDetailBody::new(&product, &variants)))
}

async fn find_product(state: &Arc<AppState>, id: String) -> Result<Product, ApiError> {
    let engine = state.engine.clone();
    blocking(move || Ok(engine.product(&id)?.ok_or_else(|| ApiError::NotFound(format!("no product with id {id:?}")))?.product)).await
}

/// A product's photo: the bytes stored in the catalog, or the file recorded at import.
#[utoipa::path(
    get,
    path = "/api/products/{id}/image",
    tag = "catalog",
    params(("id" = String, Path, description = "The shop's product id")),
    responses(
        (status = 200, description = "The image bytes", content_type = "image/*"),
        (status = 307, description = "The shop's own copy (the product's image_url column): for a product known from a Qdrant collection, or whose photo is not kept here"),
        (status = 404, description = "Unknown product, or its image is gone", body = ErrorBody),
    )
)]
pub async fn product_image(State(state): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let product = find_product(&state, id).await?;
    let shop_copy = product.image_link().and_then(|l| HeaderValue::from_str(l.trim()).ok());
    // A product known from a Qdrant collection whose row links the shop's own copy: that copy,
    // at full size (a point carries at most a reduced one), and no photo read through Qdrant.
    if let (ImageRef::Collection, Some(link)) = (&product.image, &shop_copy) {
        return Ok((StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, link.clone())]).into_response());
    }
    let engine = state.engine.clone();
    let bytes = blocking({
        let product = product.clone();
        move || Ok(engine.product_image(&product)?)
    })
    .await?;
    let Some(bytes) = bytes else {
        // Not here (a file gone, a point written before points carried copies of photos over
        // 64 KiB): the shop's own copy, if its metadata links one.
        if let Some(link) = shop_copy {
            return Ok((StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, link)]).into_response());
        }
        return Err(ApiError::NotFound(format!("the image of product {:?} is no longer available", product.id)));
    };
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
pub async fn add_product(State(state): Shared, _admin: AdminToken, UploadForm(mut form): UploadForm) -> Result<(StatusCode, Json<ProductBody>), ApiError> {
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
                let object: Metadata = serde_json::from_str(&text).map_err(|e| ApiError::bad_parameters(format!("metadata must be a JSON object of strings: {e}")))?;
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
    if let Some(e) = metadata.keys().find_map(|column| check_column_name(column).err()) {
        return Err(ApiError::BadParameters(e.to_string()));
    }

    // A photo the catalog already has (another size of a listing) takes its stored vectors,
    // as `index` copies them: the same bytes, already decoded and encoded once.
    let content_hash = crate::types::content_hash(&image);
    let engine = state.engine.clone();
    let hash = content_hash.clone();
    let stored_vectors = blocking(move || Ok(engine.vectors_of_photo(&hash)?)).await?;
    let (vector, max_pooled) = match stored_vectors {
        Some(stored) => (stored.vector, stored.max_pooled),
        None => {
            let encoded = state.batcher.encode(image.clone(), None, crate::search::Items::Main).await?;
            (encoded.photo.whole.vector, encoded.photo.whole.max_pooled)
        }
    };
    let mime = image::guess_format(&image).map(|f| f.to_mime_type()).unwrap_or("application/octet-stream").to_string();
    let product = NewProduct {
        id: id.clone(),
        content_hash,
        image: NewImage::Stored { bytes: image.to_vec(), mime },
        metadata,
        vector,
        max_pooled,
        // Taken by the engine from the photo's own pixels, as `index` takes it.
        colour: None,
    };
    let engine = state.engine.clone();
    let stored = blocking(move || {
        engine.add_product(product)?;
        engine.compact_graph_in_background();
        Ok(engine.product(&id)?)
    })
    .await?
    .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the product just stored cannot be read back")))?;
    tracing::info!(id = %stored.product.id, "product added");
    Ok((StatusCode::CREATED, Json(ProductBody::from(&stored))))
}

/// Changes a product's metadata (a new price, name, category or colour) without sending its
/// photo again: nothing is encoded, and searches, filters and facets show the change as soon
/// as this returns. A product left naming no colour takes the one lookalike names from its
/// photo, as `index` does. Needs the admin token.
#[utoipa::path(
    patch,
    path = "/api/products/{id}",
    tag = "catalog",
    params(("id" = String, Path, description = "The shop's product id")),
    request_body(content = ProductPatchBody, content_type = "application/merge-patch+json"),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Changed: the product as it is now", body = ProductBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 403, description = "Catalog changes are off: no admin token configured", body = ErrorBody),
        (status = 404, description = "Unknown product", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Not a patch of the metadata, or a bad column or value", body = ErrorBody),
    )
)]
pub async fn patch_product(
    State(state): Shared,
    _admin: AdminToken,
    Path(id): Path<String>,
    body: Result<Json<ProductPatchBody>, JsonRejection>,
) -> Result<Json<ProductBody>, ApiError> {
    let Json(body) = body?;
    let patch = MetadataPatch::try_from(body).map_err(ApiError::BadParameters)?;
    let engine = state.engine.clone();
    let patched = blocking({
        let id = id.clone();
        move || engine.patch_product(&id, &patch)?.ok_or_else(|| ApiError::NotFound(format!("no product with id {id:?}")))
    })
    .await?;
    tracing::info!(id = %id, "product metadata changed");
    Ok(Json(ProductBody::from(&patched)))
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
pub async fn delete_product(State(state): Shared, _admin: AdminToken, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
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
