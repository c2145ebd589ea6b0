//! Typed extractors: what a handler needs from a request, checked before it runs. The admin
//! token ([`AdminToken`]), a search's input in either body type ([`SearchInput`]), an upload
//! form ([`UploadForm`]); each rejects with an [`ApiError`], so every refusal has the API's
//! JSON body.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Multipart, Request};
use axum::http::header;
use axum::http::request::Parts;
use axum::Json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::types::SearchJson;
use super::AppState;

/// Proof that the request carries the admin token (`Authorization: Bearer TOKEN`). A handler
/// that takes it runs only then: 403 when the server has no token, 401 without the right one.
pub struct AdminToken;

impl FromRequestParts<Arc<AppState>> for AdminToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let Some(expected) = &state.admin_token_digest else {
            return Err(ApiError::Forbidden(
                "catalog changes are switched off on this server: start it with --admin-token TOKEN (or set LOOKALIKE_ADMIN_TOKEN) and send Authorization: Bearer TOKEN".into(),
            ));
        };
        // The scheme is case-insensitive (RFC 9110 section 11.1): "Bearer", "bearer", "BEARER".
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_start().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| ApiError::Unauthorized("this needs the admin token: send Authorization: Bearer TOKEN".into()))?;
        // Digests, so the comparison takes the same time whatever the lengths.
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if bool::from(digest.ct_eq(expected)) {
            Ok(AdminToken)
        } else {
            Err(ApiError::Unauthorized("the admin token is wrong".into()))
        }
    }
}

/// What `POST /api/search` was sent: a photo form, or JSON naming a product or a vector.
pub enum SearchInput {
    Photo(Multipart),
    Reference(SearchJson),
}

impl FromRequest<Arc<AppState>> for SearchInput {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let request = refuse_oversized(state, request).await?;
        let content_type = content_type(&request);
        if content_type.starts_with("multipart/form-data") {
            Ok(SearchInput::Photo(Multipart::from_request(request, state).await.map_err(|e| ApiError::BadRequest(e.body_text()))?))
        } else if content_type.starts_with("application/json") {
            let Json(body) = Json::<SearchJson>::from_request(request, state).await?;
            Ok(SearchInput::Reference(body))
        } else {
            Err(ApiError::UnsupportedType(format!("send the photo as multipart/form-data (field \"image\"), or JSON with product_id or vector; got content type {content_type:?}")))
        }
    }
}

/// A `multipart/form-data` upload within the size limit (`POST /api/products`).
pub struct UploadForm(pub Multipart);

impl FromRequest<Arc<AppState>> for UploadForm {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let request = refuse_oversized(state, request).await?;
        let content_type = content_type(&request);
        if !content_type.starts_with("multipart/form-data") {
            return Err(ApiError::UnsupportedType(format!("send the product as multipart/form-data with the fields id, image and metadata; got content type {content_type:?}")));
        }
        Ok(UploadForm(Multipart::from_request(request, state).await.map_err(|e| ApiError::BadRequest(e.body_text()))?))
    }
}

fn content_type(request: &Request) -> String {
    request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase()
}

/// Bytes in megabytes as `serve --max-upload-mb` counts them (1 MB = 1,048,576 bytes), so the
/// limit reads the same in the flag, the page and every message: "20 MB", "31.4 MB".
pub fn megabytes(bytes: u64) -> String {
    let mb = bytes as f64 / 1_048_576.0;
    if mb.fract() == 0.0 {
        format!("{mb:.0} MB")
    } else {
        format!("{mb:.1} MB")
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
pub async fn refuse_oversized(state: &AppState, request: Request) -> Result<Request, ApiError> {
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
    Err(ApiError::TooLarge(format!("the upload is {}; this server accepts photos up to {}", megabytes(declared), megabytes(state.max_upload_bytes as u64))))
}

/// Reads an uploaded photo into memory (never to disk), refusing it past the size limit.
pub async fn read_image_field(state: &AppState, field: axum::extract::multipart::Field<'_>) -> Result<Bytes, ApiError> {
    let bytes = field.bytes().await?;
    if bytes.len() > state.max_upload_bytes {
        return Err(ApiError::TooLarge(format!("the photo is {}; this server accepts up to {}", megabytes(bytes.len() as u64), megabytes(state.max_upload_bytes as u64))));
    }
    Ok(bytes)
}

/// The form fields seen so far, to refuse a repeated one: taking the first or the last of two
/// `id` or `image` fields silently would store or search something the client did not mean.
#[derive(Default)]
pub struct FieldNames(HashSet<String>);

impl FieldNames {
    pub fn once(&mut self, name: &str) -> Result<(), ApiError> {
        if self.0.insert(name.to_string()) {
            Ok(())
        } else {
            Err(ApiError::bad_parameters(format!("send one {name:?} field, not several")))
        }
    }
}
