//! `lookalike bench e2e`: `POST /api/search` through the real HTTP server (in this process, on
//! a loopback port), one client, one request at a time. The client's wall time per request is
//! the headline; the server's own stage timings (returned in every response) break it down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use super::{BenchEnv, Latency};
use crate::search::SearchEngine;
use crate::server::{batcher::BatcherConfig, router, AppState, ServerConfig};

#[derive(Debug, Clone)]
pub struct E2eBench {
    pub requests: usize,
    /// Query photos, used in turn.
    pub images: Vec<PathBuf>,
    pub k: usize,
    /// The `colour` field sent with each search (`None`: the server's default, `match`).
    pub colour: Option<crate::colour::ColourMode>,
    /// The `kind` field sent with each search (`None`: the server's default, `match`).
    pub kind: Option<crate::kind::KindMode>,
    /// A new connection per search instead of one kept open (see `Client`).
    pub fresh_connections: bool,
    pub name: String,
}

/// The multipart body of one search, and its boundary.
fn search_form(image: &[u8], file_name: &str, opts: &E2eBench) -> (Vec<u8>, &'static str) {
    const BOUNDARY: &str = "lookalike-bench-boundary";
    let mut body = Vec::with_capacity(image.len() + 512);
    body.extend_from_slice(
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(image);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n{}", opts.k).as_bytes());
    let fields = [("colour", opts.colour.as_ref().map(ToString::to_string)), ("kind", opts.kind.map(|k| k.to_string()))];
    for (name, value) in fields.iter().filter_map(|(n, v)| Some((n, v.as_ref()?))) {
        body.extend_from_slice(format!("\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}").as_bytes());
    }
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    (body, BOUNDARY)
}

/// The bench's HTTP client: hyper's HTTP/1.1 client on a runtime of its own (the calling
/// thread), so it takes none of the server's threads. By default it keeps one connection open
/// and sends every search on it, as a browser does after loading the page; with
/// `fresh_connections` it opens a new one per search (`Connection: close`).
struct Client {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    fresh_connections: bool,
    open: Option<http1::SendRequest<Full<Bytes>>>,
}

impl Client {
    fn new(addr: SocketAddr, fresh_connections: bool) -> Result<Client> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the client's runtime")?;
        Ok(Client { runtime, addr, fresh_connections, open: None })
    }

    /// One multipart POST; returns the response body.
    fn post(&mut self, image: &[u8], file_name: &str, opts: &E2eBench) -> Result<Bytes> {
        let (body, boundary) = search_form(image, file_name, opts);
        let mut request = hyper::Request::post("/api/search")
            .header(hyper::header::HOST, self.addr.to_string())
            .header(hyper::header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"));
        if self.fresh_connections {
            request = request.header(hyper::header::CONNECTION, "close");
        }
        let request = request.body(Full::new(Bytes::from(body)))?;
        let (addr, reuse) = (self.addr, !self.fresh_connections);
        let mut sender = match self.open.take() {
            Some(sender) if reuse && !sender.is_closed() => sender,
            _ => self.runtime.block_on(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
                stream.set_nodelay(true)?;
                let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.context("HTTP handshake")?;
                tokio::spawn(connection);
                anyhow::Ok(sender)
            })?,
        };
        let (status, body) = self.runtime.block_on(async {
            sender.ready().await.context("waiting for the connection")?;
            let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request)).await.context("no answer in 30 s")??;
            let status = response.status();
            let body = response.into_body().collect().await.context("reading the answer")?.to_bytes();
            anyhow::Ok((status, body))
        })?;
        if reuse {
            self.open = Some(sender);
        }
        if status != hyper::StatusCode::OK {
            bail!("{status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(body)
    }
}

pub fn run(engine: Arc<SearchEngine>, env: &BenchEnv, opts: &E2eBench) -> Result<Value> {
    anyhow::ensure!(!opts.images.is_empty(), "no query images");
    let photos: Vec<(String, Vec<u8>)> = opts
        .images
        .iter()
        .map(|p| Ok((p.file_name().and_then(|n| n.to_str()).unwrap_or("photo").to_string(), std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)))
        .collect::<Result<_>>()?;
    let products = engine.len();
    let config = ServerConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_token: None,
        max_upload_bytes: 20 << 20,
        batcher: BatcherConfig { workers: 2, queue: 64, max_batch: 16 },
        request_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(1),
        cors_origins: Vec::new(),
        image_origins: None,
        header_timeout: Duration::from_secs(10),
        max_connections: 512,
        follow_interval: Duration::from_secs(1),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the runtime")?;
    let state = Arc::new(AppState::new(engine, &config)?);
    let listener = runtime.block_on(tokio::net::TcpListener::bind(config.addr)).context("binding a loopback port")?;
    let addr = listener.local_addr()?;
    runtime.spawn(async move { axum::serve(listener, router(state)).await });

    let mut client = Client::new(addr, opts.fresh_connections)?;
    // Warm-up: first inference allocates ONNX Runtime's buffers.
    for (name, bytes) in photos.iter().take(3) {
        client.post(bytes, name, opts)?;
    }
    let stages = ["queue_ms", "decode_ms", "preprocess_ms", "encode_ms", "search_ms", "metadata_ms", "total_ms"];
    let mut wall = Vec::with_capacity(opts.requests);
    let mut per_stage: Vec<Vec<f64>> = vec![Vec::new(); stages.len()];
    for i in 0..opts.requests {
        let (name, bytes) = &photos[i % photos.len()];
        let t = Instant::now();
        let body = client.post(bytes, name, opts)?;
        wall.push(t.elapsed());
        let response: Value = serde_json::from_slice(&body).context("response is not JSON")?;
        for (stage, values) in stages.iter().zip(per_stage.iter_mut()) {
            values.push(response["timings"][*stage].as_f64().unwrap_or(f64::NAN));
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    let wall = Latency::of(&wall);
    let breakdown: serde_json::Map<String, Value> = stages.iter().zip(per_stage.iter_mut()).map(|(s, v)| (s.to_string(), json!(Latency::of_ms(v).median_ms))).collect();
    let connections = match opts.fresh_connections {
        true => "a new connection per request",
        false => "one connection, kept open",
    };
    let report = json!({
        "machine": super::machine(),
        "products": products,
        "requests": opts.requests,
        "images": photos.len(),
        "k": opts.k,
        "colour": opts.colour.as_ref().map_or("match (default)".to_string(), ToString::to_string),
        "kind": opts.kind.map_or("match (default)".to_string(), |k| k.to_string()),
        "connections": connections,
        "client_wall": wall,
        "server_median_ms": breakdown,
    });
    let mut md = format!(
        "# End-to-end search benchmark\n\nMachine: {}. `POST /api/search` (multipart photo, k = {}, colour {}, kind {}) against a {}-product catalog, one client, {} sequential requests cycling through {} photos over {connections}, real server on loopback.\n\nClient wall time: median **{:.1} ms**, p99 {:.1} ms, mean {:.1} ms.\n\nServer stage medians (ms):\n\n| queue | decode | preprocess | encode | search | metadata | total |\n|---|---|---|---|---|---|---|\n|",
        super::machine(),
        opts.k,
        report["colour"].as_str().unwrap_or("match"),
        report["kind"].as_str().unwrap_or("match"),
        products,
        opts.requests,
        photos.len(),
        wall.median_ms,
        wall.p99_ms,
        wall.mean_ms
    );
    for s in stages {
        md.push_str(&format!(" {:.2} |", breakdown[s].as_f64().unwrap_or(f64::NAN)));
    }
    md.push('\n');
    let (j, m) = env.write(&opts.name, &report, &md)?;
    eprintln!("wrote {} and {}", j.display(), m.display());
    println!("{md}");
    Ok(report)
}
