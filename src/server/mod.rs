//! `lookalike serve`: the shopper's page and the JSON API over one [`SearchEngine`].
//!
//! - [`api`]: the handlers (thin: parse, call the engine, shape the answer), one file per area;
//! - [`types`]: the JSON bodies; [`extract`]: typed extractors (admin token, search input);
//! - [`error`]: [`error::ApiError`], the one mapping from failures to status codes;
//! - [`batcher`]: the bounded encoder worker pool that batches concurrent photos;
//! - [`metrics`]: Prometheus counters and histograms;
//! - `page/`: the page's HTML, JS and CSS, compiled into the binary (no build step, no CDN).
//!
//! The server knows nothing of the model beyond the [`Encoder`](crate::encoder::Encoder) trait
//! behind [`SearchEngine`]; all state is in [`AppState`].

pub mod api;
pub mod batcher;
mod connections;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod types;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::Router;
use sha2::{Digest, Sha256};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::batcher::{Batcher, BatcherConfig};
use self::error::ApiError;
use self::metrics::Metrics;
use crate::search::SearchEngine;

/// How the server is set up (from `lookalike serve`'s flags).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    /// Bearer token for catalog changes; `None` switches them off (403).
    pub admin_token: Option<String>,
    /// Largest accepted photo, in bytes.
    pub max_upload_bytes: usize,
    pub batcher: BatcherConfig,
    /// Longest a request may take, body upload included; past it the client gets 408 and the
    /// work is dropped (a slow or stalled client cannot hold a connection and its memory).
    pub request_timeout: std::time::Duration,
    /// How long shutdown waits for in-flight requests before exiting anyway.
    pub shutdown_grace: std::time::Duration,
    /// Origins allowed to call the API from a browser page on another site. Empty: no CORS
    /// headers at all, so browsers keep other sites' pages out.
    pub cors_origins: Vec<HeaderValue>,
    /// Longest a client may take to send a request's headers. The request timeout only starts
    /// once they are read, so without this a client that never finishes them holds its
    /// connection (and a file descriptor) forever.
    pub header_timeout: std::time::Duration,
    /// Most connections open at once. Past it, new connections wait in the kernel's backlog
    /// until one closes, instead of the process running out of file descriptors and failing
    /// every accept (health checks included).
    pub max_connections: usize,
    /// How often the server reads the catalog's change log, to pick up products that other
    /// processes (`lookalike index`, `remove`, another server) added or removed.
    pub follow_interval: std::time::Duration,
    /// Where the page may show product photos from besides this server: the shop's image
    /// servers or CDNs the image route redirects to (`image_url` column), as CSP sources
    /// (`https://cdn.shop.example`). `None`: any `http(s)` origin.
    pub image_origins: Option<Vec<String>>,
}

/// The admin token as configured: surrounding whitespace is not part of it (the received
/// token is trimmed too), and an empty token means none, with changes off.
pub fn normalise_admin_token(token: Option<&str>) -> Option<String> {
    token.map(str::trim).filter(|t| !t.is_empty()).map(str::to_string)
}

/// Everything a handler may use.
pub struct AppState {
    pub engine: Arc<SearchEngine>,
    pub batcher: Batcher,
    pub metrics: Arc<Metrics>,
    /// SHA-256 of the admin token. Comparing digests makes the comparison constant-time
    /// regardless of the lengths involved, and the token itself is not kept around.
    pub(crate) admin_token_digest: Option<[u8; 32]>,
    pub max_upload_bytes: usize,
    pub request_timeout: std::time::Duration,
    pub cors_origins: Vec<HeaderValue>,
    /// The page's content security policy ([`page_policy`]).
    pub page_policy: HeaderValue,
}

impl AppState {
    pub fn new(engine: Arc<SearchEngine>, config: &ServerConfig) -> Result<AppState> {
        let metrics = Arc::new(Metrics::default());
        let batcher = Batcher::start(engine.clone(), metrics.clone(), config.batcher).context("starting the encoder workers")?;
        let admin_token_digest = normalise_admin_token(config.admin_token.as_deref()).map(|t| Sha256::digest(t.as_bytes()).into());
        Ok(AppState {
            engine,
            batcher,
            metrics,
            admin_token_digest,
            max_upload_bytes: config.max_upload_bytes,
            request_timeout: config.request_timeout,
            cors_origins: config.cors_origins.clone(),
            page_policy: page_policy(config.image_origins.as_deref())?,
        })
    }

    /// Largest request body: the photo plus room for the multipart framing and the small text
    /// fields around it (the photo itself is checked against `max_upload_bytes` exactly).
    pub fn body_limit(&self) -> usize {
        self.max_upload_bytes.saturating_add(64 * 1024)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "lookalike", description = "Reverse image search for fashion catalogs: upload a photo, get the most similar products."),
    modifiers(&AdminTokenScheme),
    components(schemas(error::ErrorBody, error::ErrorDetail))
)]
struct ApiDoc;

struct AdminTokenScheme;

impl utoipa::Modify for AdminTokenScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("admin_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// Every route, each registered together with its OpenAPI description, so the document cannot
/// miss one.
fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(page_index))
        .routes(routes!(page_script))
        .routes(routes!(page_style))
        .routes(routes!(api::search::search))
        .routes(routes!(api::products::list_products, api::products::add_product))
        .routes(routes!(api::products::get_product, api::products::patch_product, api::products::delete_product))
        .routes(routes!(api::products::product_image))
        .routes(routes!(api::search::facets))
        .routes(routes!(api::ops::healthz))
        .routes(routes!(api::ops::readyz))
        .routes(routes!(api::ops::metrics))
        .routes(routes!(api::ops::openapi_json))
}

/// The OpenAPI document as JSON, built once.
pub fn openapi_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let (_, api) = routes().split_for_parts();
        api.to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"cannot serialise the OpenAPI document: {e}\"}}"))
    })
}

/// The application: routes, body limit, metrics and request tracing around them.
pub fn router(state: Arc<AppState>) -> Router {
    let (router, _) = routes().split_for_parts();
    let body_limit = state.body_limit();
    let mut router = router
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, state.request_timeout));
    if !state.cors_origins.is_empty() {
        router = router.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(state.cors_origins.clone()))
                .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
                .allow_headers([header::CONTENT_TYPE]),
        );
    }
    router
        // Outside the timeout and CORS layers, so their answers get a JSON body too.
        .layer(axum::middleware::from_fn(error::json_error_bodies))
        .layer(axum::middleware::from_fn(error::log_internal_errors))
        .layer(axum::middleware::from_fn_with_state(state.metrics.clone(), metrics::track))
        // The default spans record method, URI and version only: never headers, so the admin
        // token is not logged. Failures are logged at debug level: a 503 under load is load
        // shedding working, and real internal errors are logged with their cause by
        // `error::log_internal_errors`.
        .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)))
        .with_state(state)
}

/// Binds `config.addr`, prints the bound address (`listening on http://...`, on stdout, so
/// scripts and tests using port 0 can find it) and serves until Ctrl-C or SIGTERM.
pub async fn serve(engine: Arc<SearchEngine>, config: ServerConfig) -> Result<()> {
    let state = Arc::new(AppState::new(engine.clone(), &config)?);
    let app = router(state);
    let listener = tokio::net::TcpListener::bind(config.addr).await.with_context(|| format!("binding {}", config.addr))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    println!("listening on http://{bound}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tracing::info!("serving on http://{bound}");
    tokio::spawn(follow_catalog(engine, config.follow_interval));
    // On Ctrl-C or SIGTERM: stop accepting, let in-flight requests finish, but give up after
    // the grace period so a stalled client cannot keep the process alive.
    let (stopping, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stopping.send(true);
    });
    let grace = config.shutdown_grace;
    let deadline = {
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        }
    };
    tokio::select! {
        () = connections::serve_connections(listener, app, &config, stop_rx) => {}
        () = deadline => tracing::warn!("requests still open {grace:?} after the shutdown signal; exiting anyway"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Keeps the engine in step with changes other processes make to the catalog file.
async fn follow_catalog(engine: Arc<SearchEngine>, every: std::time::Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticks.tick().await;
        let engine = engine.clone();
        let followed = tokio::task::spawn_blocking(move || engine.follow_catalog_in_background()).await;
        match followed {
            Ok(Ok(_)) => failing = false,
            // Said once per run of failures (a catalog locked for long would repeat it 4 times a second).
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::warn!("could not follow other processes' changes (retrying): {e:#}");
            }
            Ok(Err(_)) => {}
            Err(e) => tracing::warn!("the catalog follower failed: {e}"),
        }
    }
}

/// A JSON 404 for a path no route has.
async fn unknown_route(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no such page or API route: {}", uri.path()))
}

/// A JSON 405 for a route asked with a method it does not take (the `Allow` header is kept).
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} does not take {method} requests", uri.path()))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}

// ---------------------------------------------------------------------------------------------
// The page: three files embedded in the binary.

/// The page's content security policy. Same-origin only, but for images: the shopper's own
/// photo is shown from a blob: URL, a missing photo's placeholder is a data: URL, and a
/// product's photo may be the shop's own copy on its image server or CDN, where the image
/// route redirects (`image_url` column; a policy checks a redirect's target too, so `'self'`
/// alone would show no such photo): from `image_origins`, or any `http(s)` origin when the
/// shop names none. Images run no code; scripts, styles and everything else stay same-origin.
pub fn page_policy(image_origins: Option<&[String]>) -> Result<HeaderValue> {
    let mut images = vec!["'self'", "blob:", "data:"];
    match image_origins {
        Some(origins) => images.extend(origins.iter().map(String::as_str)),
        None => images.extend(["https:", "http:"]),
    }
    let images = images.join(" ");
    let policy = format!("default-src 'self'; img-src {images}; style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'");
    HeaderValue::from_str(&policy).context("the page's content security policy")
}

fn page_asset(policy: &HeaderValue, content_type: &'static str, body: impl IntoResponse) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_SECURITY_POLICY, policy.clone()),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
}

/// The shopper's page.
#[utoipa::path(get, path = "/", tag = "page", responses((status = 200, description = "The search page", content_type = "text/html")))]
async fn page_index(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    // The upload limit is written into the page, so the picker, the check before sending and
    // the server's own message all give this server's one figure.
    let limit = state.max_upload_bytes;
    let html = include_str!("page/index.html").replace("{{MAX_UPLOAD_BYTES}}", &limit.to_string()).replace("{{MAX_UPLOAD}}", &extract::megabytes(limit as u64));
    page_asset(&state.page_policy, "text/html; charset=utf-8", html)
}

/// The page's script.
#[utoipa::path(get, path = "/app.js", tag = "page", responses((status = 200, description = "The page's script", content_type = "text/javascript")))]
async fn page_script(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    page_asset(&state.page_policy, "text/javascript; charset=utf-8", include_str!("page/app.js"))
}

/// The page's style sheet.
#[utoipa::path(get, path = "/style.css", tag = "page", responses((status = 200, description = "The page's styles", content_type = "text/css")))]
async fn page_style(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    page_asset(&state.page_policy, "text/css; charset=utf-8", include_str!("page/style.css"))
}
