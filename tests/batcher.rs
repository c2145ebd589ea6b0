//! The encoder queue sheds load: with its one worker busy and its one queue place taken, the
//! next photo is refused at once with 503 and Retry-After. The worker is held inside the model
//! by a gate the test opens, so the queue is full for certain, on any machine at any load.

mod common;

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use axum::response::IntoResponse;
use common::*;
use lookalike::catalog::SqliteCatalog;
use lookalike::encoder::{Embedding, Encoder, OrtEncoder};
use lookalike::model::ModelSpec;
use lookalike::search::SearchEngine;
use lookalike::server::batcher::{Batcher, BatcherConfig};
use lookalike::server::error::ApiError;
use lookalike::server::metrics::Metrics;

/// The real encoder, entered only when the test lets it: each call says it has started, then
/// waits for the gate.
struct Gated {
    inner: OrtEncoder,
    entered: Mutex<Sender<()>>,
    gate: Mutex<Receiver<()>>,
}

impl Encoder for Gated {
    fn spec(&self) -> &ModelSpec {
        self.inner.spec()
    }

    fn encode(&self, batch: &[Vec<f32>]) -> anyhow::Result<Vec<Embedding>> {
        self.entered.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.send(()).ok();
        self.gate.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.recv().ok();
        self.inner.encode(batch)
    }
}

#[test]
fn a_full_encoder_queue_answers_503_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let (entered_tx, entered) = channel();
    let (open_gate, gate) = channel();
    let encoder = Gated { inner: encoder(), entered: Mutex::new(entered_tx), gate: Mutex::new(gate) };
    let engine = Arc::new(SearchEngine::open(SqliteCatalog::open_existing(&db).expect("catalog"), Box::new(encoder)).expect("engine"));
    let batcher = Arc::new(Batcher::start(engine, Arc::new(Metrics::default()), BatcherConfig { workers: 1, queue: 1, max_batch: 1 }).expect("workers"));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (png, _) = test_photo(0);
    let photo = axum::body::Bytes::from(png);

    // The worker takes the first photo and stops inside the model.
    let first = runtime.spawn({
        let (batcher, photo) = (batcher.clone(), photo.clone());
        async move { batcher.encode(photo, None, lookalike::search::Items::Main).await }
    });
    entered.recv().expect("the worker enters the encoder");
    // The second waits in the queue's one place.
    let second = runtime.spawn({
        let (batcher, photo) = (batcher.clone(), photo.clone());
        async move { batcher.encode(photo, None, lookalike::search::Items::Main).await }
    });
    while batcher.waiting() < 1 {
        std::thread::yield_now();
    }
    // The third is refused at once.
    let third = runtime.block_on(batcher.encode(photo, None, lookalike::search::Items::Main));
    let Err(refused) = third else { panic!("a full queue took a third photo") };
    assert!(matches!(refused, ApiError::Busy(_)), "{refused:?}");
    let response = refused.into_response();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));

    // Opened, the gate lets both queued photos through.
    open_gate.send(()).expect("gate");
    entered.recv().expect("the second enters");
    open_gate.send(()).expect("gate");
    for job in [first, second] {
        let encoded = runtime.block_on(job).expect("task").expect("encoded");
        assert_eq!(encoded.photo.whole.vector.len(), 1280);
    }
}

/// A search's follow-up runs on the encoder worker right after its photo is encoded, and its
/// answer comes back to the request; a follow-up that panics fails its own request with an
/// internal error and leaves the worker serving the next one.
#[test]
fn a_follow_up_runs_on_the_worker_and_a_panicking_one_fails_only_its_request() {
    let engine = Arc::new(SearchEngine::open(SqliteCatalog::open_existing(shared_catalog()).expect("catalog"), Box::new(encoder())).expect("engine"));
    let batcher = Batcher::start(engine, Arc::new(Metrics::default()), BatcherConfig { workers: 1, queue: 4, max_batch: 1 }).expect("workers");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let photo = axum::body::Bytes::from(test_photo(0).0);
    let main = lookalike::search::Items::Main;

    let (thread, dimensions) = runtime
        .block_on(batcher.encode_then(photo.clone(), None, main, |encoded| Ok((std::thread::current().name().unwrap_or("").to_string(), encoded.photo.whole.vector.len()))))
        .expect("followed up");
    assert_eq!((thread.as_str(), dimensions), ("encoder-0", 1280));

    let failed = runtime.block_on(batcher.encode_then(photo.clone(), None, main, |_| -> Result<(), ApiError> { panic!("a bug in a follow-up") }));
    assert!(matches!(failed, Err(ApiError::Internal(_))), "{failed:?}");

    let encoded = runtime.block_on(batcher.encode(photo, None, main)).expect("the worker still encodes");
    assert_eq!(encoded.photo.whole.vector.len(), 1280);
}
