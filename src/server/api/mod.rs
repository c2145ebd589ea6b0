//! The JSON API handlers, one file per area: [`search`] (search and facets), [`products`]
//! (read, add, remove), [`ops`] (health, metrics, the OpenAPI document). Each parses its
//! request through typed extractors, calls [`SearchEngine`](crate::search::SearchEngine)
//! (through the [`Batcher`](super::batcher::Batcher) for anything that encodes a photo) and
//! shapes the answer; errors go through [`ApiError`], which alone decides status codes.

pub mod ops;
pub mod products;
pub mod search;

use std::sync::Arc;

use axum::extract::State;

use super::error::ApiError;
use super::AppState;

type Shared = State<Arc<AppState>>;

/// Runs CPU-bound or blocking work (index scans, SQLite, file reads) off the async runtime.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::Internal(anyhow::anyhow!("a worker task failed: {e}")))?
}
