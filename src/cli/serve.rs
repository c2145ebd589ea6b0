//! `lookalike serve`: the shopper's page and the JSON API.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::args::*;
use lookalike::assets::Assets;
use lookalike::catalog::SqliteCatalog;
use lookalike::search::SearchEngine;
use lookalike::server::{self, batcher::BatcherConfig, ServerConfig};

#[derive(Args)]
pub struct ServeArgs {
    /// The catalog file (SQLite), created by `index`.
    #[arg(long, env = "LOOKALIKE_DB", required_unless_present = "no_catalog")]
    pub db: Option<std::path::PathBuf>,
    /// Serve a Qdrant collection without the catalog file (`--store qdrant://... --collection
    /// NAME`): products, facets, colours and small photos come from the collection's payloads,
    /// the model and search space from the description the catalog's side keeps beside it
    /// (`lookalike sync`). Products added or removed through any server reach every server.
    #[arg(long, conflicts_with = "db", requires = "collection")]
    pub no_catalog: bool,
    /// Address to listen on. The default is reachable from this machine only; use
    /// 0.0.0.0:8080 to serve the network (behind a TLS-terminating proxy). Port 0 picks a free
    /// port; the bound address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// Bearer token that allows catalog changes (POST/DELETE /api/products). Without one,
    /// those routes answer 403.
    #[arg(long, env = "LOOKALIKE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Largest accepted photo upload, in megabytes.
    #[arg(long, default_value_t = 20)]
    pub max_upload_mb: usize,
    /// Encoder worker threads (each decodes, preprocesses and runs the model on its batch).
    /// Default: one per core, so one worker's decoding overlaps another's inference.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Photos that may wait for a worker; past that, requests get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Most photos encoded in one model call.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Longest a request may take (upload included) before it is answered 408.
    #[arg(long, default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Longest a client may take to send its request headers before the connection is closed.
    #[arg(long, default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Most connections open at once; more wait until one closes. Keep it below the process's
    /// open-file limit (`ulimit -n`).
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// How often to look for products that other processes (`lookalike index`, `remove`,
    /// another server) added to or removed from the catalog, in milliseconds.
    #[arg(long, default_value_t = 250)]
    pub follow_interval_ms: u64,
    /// On Ctrl-C / SIGTERM, how long to let in-flight requests finish.
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// Let browser pages from this origin (e.g. https://shop.example) call the API; repeat for
    /// several. Without it no CORS headers are sent.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    /// Let the page show product photos only from this origin besides the server itself (the
    /// shop's image server or CDN its `image_url` column links, e.g. https://cdn.shop.example);
    /// repeat for several, or `self` for none. Without it the page shows photos from any
    /// http(s) origin the image route redirects to.
    #[arg(long = "image-origin", value_name = "ORIGIN")]
    pub image_origins: Vec<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub index: SearchIndexArgs,
}

/// `value` of `flag` as a web origin: scheme and host (and port), nothing else, so that it can
/// go into a header as it is (no path, no separator of the header's own syntax).
fn origin<'a>(flag: &str, value: &'a str) -> Result<&'a str> {
    let host = value.strip_prefix("https://").or_else(|| value.strip_prefix("http://"));
    let ok = host.is_some_and(|host| !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')));
    anyhow::ensure!(ok, "{flag} {value:?} must be an origin like https://shop.example (scheme and host, no path)");
    Ok(value)
}

pub fn run(args: ServeArgs) -> Result<()> {
    if args.max_upload_mb == 0 {
        bail!("--max-upload-mb must be at least 1");
    }
    let workers = args.workers.unwrap_or_else(cores);
    if workers == 0 || args.queue == 0 || args.max_batch == 0 || args.request_timeout_secs == 0 {
        bail!("--workers, --queue, --max-batch and --request-timeout-secs must be at least 1");
    }
    if args.header_timeout_secs == 0 || args.max_connections == 0 || args.follow_interval_ms == 0 {
        bail!("--header-timeout-secs, --max-connections and --follow-interval-ms must be at least 1");
    }
    let cors_origins = args.cors_origins.iter().map(|o| Ok(axum::http::HeaderValue::from_str(origin("--cors-origin", o)?)?)).collect::<Result<Vec<_>>>()?;
    let image_origins = match args.image_origins.as_slice() {
        [] => None,
        origins => Some(origins.iter().filter(|o| *o != "self").map(|o| Ok(origin("--image-origin", o)?.to_string())).collect::<Result<Vec<_>>>()?),
    };
    let assets = Assets::from_env();
    let engine = Arc::new(match &args.db {
        Some(db) => {
            let catalog = SqliteCatalog::open_existing(db)?;
            let encoder = load_encoder(&assets, &catalog, &args.model)?;
            SearchEngine::open_with(catalog, Box::new(encoder), &args.index.config(db)?)?
        }
        None => {
            let config = args.index.config(std::path::Path::new(""))?;
            let store = config.store.context("--no-catalog serves a Qdrant collection: give --store qdrant://HOST:PORT")?;
            let (index, described, digest) = lookalike::store::open_collection(&store)?;
            let encoder = load_collection_encoder(&assets, &described, &args.model)?;
            SearchEngine::over_collection(index, described, digest, Box::new(encoder), &store)?
        }
    });
    let config = ServerConfig {
        addr: args.addr,
        admin_token: server::normalise_admin_token(args.admin_token.as_deref()),
        max_upload_bytes: args.max_upload_mb.saturating_mul(1024 * 1024),
        batcher: BatcherConfig { workers, queue: args.queue, max_batch: args.max_batch },
        request_timeout: std::time::Duration::from_secs(args.request_timeout_secs),
        shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace_secs),
        cors_origins,
        image_origins,
        header_timeout: std::time::Duration::from_secs(args.header_timeout_secs),
        max_connections: args.max_connections,
        follow_interval: std::time::Duration::from_millis(args.follow_interval_ms),
    };
    if config.admin_token.is_none() {
        eprintln!("catalog changes over the API are off: pass --admin-token or set LOOKALIKE_ADMIN_TOKEN to allow them");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(server::serve(engine, config))
}
