//! Every error the API returns, and the one place where each becomes an HTTP status.
//!
//! Handlers return `Result<_, ApiError>`; library errors ([`SearchError`], [`ImageError`])
//! convert into it with `?`. The body is always `{"error": {"code": "...", "message": "..."}}`
//! so the page (and any client) can show the message as is and branch on the code.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::preprocess::ImageError;
use crate::search::SearchError;

/// An API failure: what went wrong, in words meant for the person who sent the request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The upload is not a readable image (empty, truncated, damaged).
    #[error("{0}")]
    UnreadableImage(String),
    /// The request itself is malformed (a broken multipart body, a path that is not UTF-8).
    #[error("{0}")]
    BadRequest(String),
    /// The route exists but not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The body or the image is over the configured size (bytes or pixels).
    #[error("{0}")]
    TooLarge(String),
    /// Not an image format lookalike reads, or a request body that is neither multipart nor JSON.
    #[error("{0}")]
    UnsupportedType(String),
    /// Well-formed request with parameters that make no sense (k = 0, a bad crop, ...).
    #[error("{0}")]
    BadParameters(String),
    #[error("{0}")]
    NotFound(String),
    /// No or wrong admin token.
    #[error("{0}")]
    Unauthorized(String),
    /// Catalog changes are switched off: no admin token was configured.
    #[error("{0}")]
    Forbidden(String),
    /// The encoder queue is full: try again in a moment.
    #[error("{0}")]
    Busy(String),
    /// The vector store (a Qdrant cluster) does not answer: no result rather than a wrong one.
    #[error("{0}")]
    Unavailable(String),
    /// Our fault. The message is logged; the client gets a generic one.
    #[error("internal error: {0:#}")]
    Internal(anyhow::Error),
}

/// The JSON error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `unsupported_type`.
    pub code: &'static str,
    /// Human-readable explanation, safe to show to a shopper.
    pub message: String,
}

/// Seconds a client should wait after a 503 before retrying: one batch of encoding is well
/// under a second, so the queue has moved on by then.
const RETRY_AFTER_SECONDS: &str = "1";

/// ... and after a 503 for an unreachable store: a Qdrant node restarting or a leader being
/// elected takes seconds, not milliseconds.
const STORE_RETRY_AFTER_SECONDS: &str = "5";

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::UnreadableImage(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BadParameters(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Busy(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::UnreadableImage(_) => "unreadable_image",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::TooLarge(_) => "too_large",
            ApiError::UnsupportedType(_) => "unsupported_type",
            ApiError::BadParameters(_) => "bad_parameters",
            ApiError::NotFound(_) => "not_found",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Busy(_) => "busy",
            ApiError::Unavailable(_) => "store_unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn bad_parameters(message: impl Into<String>) -> ApiError {
        ApiError::BadParameters(message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (message, cause) = match &self {
            ApiError::Internal(err) => ("something went wrong on our side; the error has been logged".to_string(), Some(InternalCause(format!("{err:#}")))),
            other => (other.to_string(), None),
        };
        let status = self.status();
        let body = ErrorBody { error: ErrorDetail { code: self.code(), message } };
        let mut response = (status, Json(body)).into_response();
        // Logged by `log_internal_errors`, not here: turning an error into a response should
        // have no side effect.
        if let Some(cause) = cause {
            response.extensions_mut().insert(cause);
        }
        match self {
            ApiError::Busy(_) => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
            }
            ApiError::Unavailable(_) => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(STORE_RETRY_AFTER_SECONDS));
            }
            ApiError::Unauthorized(_) => {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<ImageError> for ApiError {
    fn from(err: ImageError) -> ApiError {
        let message = format!("the uploaded image cannot be used: {err}");
        match err {
            ImageError::Empty | ImageError::Corrupt(_) => ApiError::UnreadableImage(message),
            ImageError::UnsupportedFormat(_) => ApiError::UnsupportedType(message),
            ImageError::TooLarge { .. } | ImageError::FileTooLarge { .. } => ApiError::TooLarge(message),
        }
    }
}

impl From<SearchError> for ApiError {
    fn from(err: SearchError) -> ApiError {
        match err {
            SearchError::Image(e) => e.into(),
            SearchError::UnknownProduct(id) => ApiError::NotFound(format!("no product with id {id:?}")),
            SearchError::BadRequest(message) => ApiError::BadParameters(message),
            SearchError::Unavailable(e) => {
                // Said to the client in general terms; the store's address stays in the log.
                tracing::warn!("{e}");
                ApiError::Unavailable("search is unavailable for a moment (the product index does not answer); please try again shortly".to_string())
            }
            SearchError::Internal(e) => ApiError::Internal(e),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> ApiError {
        ApiError::Internal(err)
    }
}

impl From<axum::extract::multipart::MultipartError> for ApiError {
    fn from(err: axum::extract::multipart::MultipartError) -> ApiError {
        if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!("the upload is larger than this server accepts: {}", err.body_text()))
        } else {
            ApiError::BadRequest(format!("the multipart form could not be read: {}", err.body_text()))
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(err: axum::extract::rejection::JsonRejection) -> ApiError {
        match err.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(err.body_text()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedType(err.body_text()),
            _ => ApiError::BadParameters(err.body_text()),
        }
    }
}

/// The cause of a 500, carried on the response for [`log_internal_errors`]; the client sees
/// only a generic message.
#[derive(Debug, Clone)]
pub struct InternalCause(pub String);

/// Logs every internal error with its cause, the method and the route: the one place where
/// failures of ours reach the log.
pub async fn log_internal_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let response = next.run(request).await;
    if let Some(InternalCause(cause)) = response.extensions().get::<InternalCause>() {
        tracing::error!(%method, %path, "internal error: {cause}");
    }
    response
}

/// Gives every error response a JSON body. Handlers' errors have one already ([`ApiError`]);
/// this covers the answers axum and tower-http write themselves: a path parameter that is not
/// UTF-8, a body over the size limit, a request timeout. Their text, if any, becomes the message.
pub async fn json_error_bodies(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // These bodies are a line of text; anything longer is cut, not buffered.
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_type",
        StatusCode::UNPROCESSABLE_ENTITY => "bad_parameters",
        StatusCode::SERVICE_UNAVAILABLE => "busy",
        s if s.is_server_error() => "internal",
        _ => "error",
    };
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    let body = serde_json::to_vec(&ErrorBody { error: ErrorDetail { code, message } }).unwrap_or_default();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::StoreUnavailable;

    /// A store that does not answer reaches the client as a 503 with Retry-After, never as a
    /// 500 or an empty result, and the store's address stays out of the answer.
    #[test]
    fn an_unreachable_store_is_a_503_with_retry_after() {
        let failure = anyhow::Error::new(StoreUnavailable("searching (Qdrant at http://10.0.0.7:6334): tcp connect error".into())).context("searching");
        let search_error = SearchError::from(failure);
        assert!(matches!(search_error, SearchError::Unavailable(_)), "{search_error:?}");
        let response = ApiError::from(search_error).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some(STORE_RETRY_AFTER_SECONDS));
        let other = SearchError::from(anyhow::anyhow!("disk I/O error"));
        assert!(matches!(other, SearchError::Internal(_)), "{other:?}");
    }
}
