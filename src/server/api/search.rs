//! `POST /api/search` (by photo, product or vector) and `GET /api/facets`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Multipart, State};
use axum::Json;

use super::super::error::{ApiError, ErrorBody};
use super::super::extract::{read_image_field, FieldNames, SearchInput};
use super::super::types::{Facet, FacetValue, FacetsResponse, OneOrMany, SearchForm, SearchJson, SearchResponse};
use super::super::AppState;
use super::{blocking, Shared};
use crate::colour::ColourDescriptor;
use crate::index::l2_normalize;
use crate::preprocess::Crop;
use crate::search::{Items, SearchRequest};
use crate::types::Filter;

/// Most results one page may ask for.
pub const MAX_K: usize = 100;
/// Deepest page: beyond this, paging through a visual search means nothing to a shopper.
pub const MAX_OFFSET: usize = 10_000;
/// Columns with more distinct values than this (ids, free text) are not offered as facets.
pub const MAX_FACET_VALUES: usize = 50;

fn page_request(k: Option<usize>, offset: Option<usize>, filter: crate::types::Filter, colour: Option<&str>, kind: Option<&str>) -> Result<SearchRequest, ApiError> {
    let k = k.unwrap_or(10);
    let offset = offset.unwrap_or(0);
    if k == 0 || k > MAX_K {
        return Err(ApiError::bad_parameters(format!("k must be between 1 and {MAX_K}, not {k}")));
    }
    if offset > MAX_OFFSET {
        return Err(ApiError::bad_parameters(format!("offset must be at most {MAX_OFFSET}, not {offset}")));
    }
    let max = Filter::MAX_VALUES;
    if filter.value_count() > max {
        return Err(ApiError::bad_parameters(format!("at most {max} filter values in one search, not {}", filter.value_count())));
    }
    let colour = colour.map(str::parse).transpose().map_err(ApiError::BadParameters)?.unwrap_or_default();
    let kind = kind.map(str::parse).transpose().map_err(ApiError::BadParameters)?.unwrap_or_default();
    Ok(SearchRequest { k, offset, filter, colour, kind })
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
pub async fn search(State(state): Shared, input: SearchInput) -> Result<Json<SearchResponse>, ApiError> {
    match input {
        SearchInput::Photo(form) => search_by_photo(state, form).await,
        SearchInput::Reference(body) => search_by_reference(state, body).await,
    }
}

async fn search_by_photo(state: Arc<AppState>, mut form: Multipart) -> Result<Json<SearchResponse>, ApiError> {
    let started = Instant::now();
    let (mut image, mut k, mut offset, mut crop, mut filters, mut include_vector) = (None, None, None, None, Vec::new(), false);
    let mut items = Items::Main;
    let (mut colour, mut kind) = (None, None);
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
            "items" => items = field.text().await?.parse().map_err(ApiError::BadParameters)?,
            "colour" => colour = Some(field.text().await?),
            "kind" => kind = Some(field.text().await?),
            other => return Err(ApiError::bad_parameters(format!("unknown form field {other:?}: expected image, k, offset, filter, crop, include_vector, items, colour, kind"))),
        }
    }
    let image = image.ok_or_else(|| ApiError::bad_parameters("the form has no \"image\" field with the photo"))?;
    let filter = Filter::parse(&filters).map_err(|e| ApiError::BadParameters(e.to_string()))?;
    let request = page_request(k, offset, filter, colour.as_deref(), kind.as_deref())?;

    let engine = state.engine.clone();
    // The search runs on the encoder worker straight after the encode (see the batcher).
    state
        .batcher
        .encode_then(image, crop, items, move |encoded| {
            let results = engine.search_photo(&encoded.photo, &request, encoded.timings, started)?;
            let vector = match include_vector {
                true => Some(engine.query_vector(&encoded.photo)?.to_vec()),
                false => None,
            };
            Ok(Json(SearchResponse::for_photo(&results, items, vector)))
        })
        .await
}

async fn search_by_reference(state: Arc<AppState>, body: SearchJson) -> Result<Json<SearchResponse>, ApiError> {
    if body.crop.is_some() {
        return Err(ApiError::bad_parameters("crop applies to uploaded photos only (multipart search)"));
    }
    let mut filter = Filter::default();
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
    let request = page_request(body.k, body.offset, filter, body.colour.as_deref(), body.kind.as_deref())?;
    let engine = state.engine.clone();
    let colour = match (&body.colour_vector, &body.vector) {
        (Some(_), None) => return Err(ApiError::bad_parameters("colour_vector goes with vector (a product's own colour is used with product_id)")),
        (Some(values), Some(_)) => Some(ColourDescriptor::from_values(values).map_err(|e| ApiError::BadParameters(format!("colour_vector: {e}")))?),
        (None, _) => None,
    };
    match (body.product_id, body.vector) {
        (Some(id), None) => blocking(move || Ok(Json(SearchResponse::new(&engine.search_like(&id, &request)?, None)))).await,
        (None, Some(mut vector)) => {
            if vector.is_empty() {
                return Err(ApiError::bad_parameters("vector is empty"));
            }
            // JSON numbers beyond f32's range arrive as infinities; they would make every score NaN.
            if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
                return Err(ApiError::bad_parameters(format!("vector[{i}] is not a finite number in f32's range")));
            }
            l2_normalize(&mut vector);
            blocking(move || Ok(Json(SearchResponse::new(&engine.search_vector_with_colour(&vector, colour.as_ref(), &request)?, None)))).await
        }
        _ => Err(ApiError::bad_parameters("give exactly one of product_id or vector (or upload a photo as multipart/form-data)")),
    }
}

/// Filterable metadata columns and how many products have each value. Only columns with 2 to
/// 50 distinct values are offered: one value filters nothing, hundreds (ids, names) are not a
/// facet.
#[utoipa::path(get, path = "/api/facets", tag = "search", responses((status = 200, body = FacetsResponse)))]
pub async fn facets(State(state): Shared) -> Result<Json<FacetsResponse>, ApiError> {
    let engine = state.engine.clone();
    let (counts, products) = blocking(move || Ok(engine.facets()?)).await?;
    Ok(Json(FacetsResponse { products, facets: facets_of(counts) }))
}

/// The facets (column, value, products) counts make. A blank value is no choice to offer: a
/// column only some products fill (a size for clothes, none for bags) lists the values it has.
fn facets_of(counts: Vec<(String, String, usize)>) -> Vec<Facet> {
    let mut by_column: BTreeMap<String, Vec<FacetValue>> = BTreeMap::new();
    for (column, value, count) in counts.into_iter().filter(|(_, value, _)| !value.trim().is_empty()) {
        by_column.entry(column).or_default().push(FacetValue { value, count });
    }
    by_column.into_iter().filter(|(_, values)| (2..=MAX_FACET_VALUES).contains(&values.len())).map(|(column, values)| Facet { column, values }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facets_offer_two_to_fifty_values_and_never_a_blank() {
        let count = |column: &str, value: &str, n: usize| (column.to_string(), value.to_string(), n);
        let mut counts = vec![count("size", "", 111), count("size", "M", 9), count("size", "S", 9), count("size", " ", 1)];
        counts.extend([count("brand", "", 5), count("brand", "Acme", 5)]);
        counts.extend((0..51).map(|i| count("id", &i.to_string(), 1)));
        let facets = facets_of(counts);
        assert_eq!(facets.len(), 1, "brand has one value besides blanks, id too many");
        assert_eq!(facets[0].column, "size");
        assert_eq!(facets[0].values.iter().map(|v| (v.value.as_str(), v.count)).collect::<Vec<_>>(), [("M", 9), ("S", 9)]);
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert!(page_request(Some(0), None, Default::default(), None, None).is_err());
        assert!(page_request(Some(MAX_K + 1), None, Default::default(), None, None).is_err());
        assert!(page_request(Some(5), Some(MAX_OFFSET + 1), Default::default(), None, None).is_err());
        assert_eq!(page_request(None, None, Default::default(), None, None).map(|r| (r.k, r.offset)).ok(), Some((10, 0)));
        assert!(page_request(None, None, Default::default(), Some("chartreuse"), None).is_err());
        let red = page_request(None, None, Default::default(), Some("red"), None).map(|r| r.colour).ok();
        assert_eq!(red, Some(crate::colour::ColourMode::Named("Red".into())));
        assert!(page_request(None, None, Default::default(), None, Some("dresses")).is_err());
        let any = page_request(None, None, Default::default(), None, Some("any")).map(|r| r.kind).ok();
        assert_eq!(any, Some(crate::kind::KindMode::Any));
    }
}
