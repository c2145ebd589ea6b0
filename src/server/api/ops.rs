//! `GET /healthz`, `/readyz`, `/metrics` and `/api/openapi.json`.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::super::error::{ApiError, ErrorBody};
use super::super::metrics::Gauges;
use super::super::types::{Health, Readiness};
use super::{blocking, Shared};

/// Liveness: the process is up and answering.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: the model is loaded (the server does not listen before), the catalog answers and
/// so does the vector store (a Qdrant cluster is asked each time: a load balancer then stops
/// sending searches to a replica that cannot answer them).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, body = Readiness),
        (status = 503, description = "The vector store does not answer; see Retry-After", body = ErrorBody),
        (status = 500, description = "The catalog does not answer", body = ErrorBody)
    )
)]
pub async fn readyz(State(state): Shared) -> Result<Json<Readiness>, ApiError> {
    let engine = state.engine.clone();
    let products = blocking(move || {
        engine.store_health()?;
        Ok(engine.product_count()?)
    })
    .await?;
    Ok(Json(Readiness { status: "ready", model: state.engine.model_name().to_string(), products, workers: state.batcher.config().workers, indexing: state.engine.indexing() }))
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
        index_graph_recall: index.graph_recall_at_10,
        queue_waiting: state.batcher.waiting(),
        queue_capacity: config.queue,
        workers: config.workers,
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render(&gauges))
}

/// This API's OpenAPI 3.1 description, generated from the handlers.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI document", content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::super::openapi_text()).into_response()
}
