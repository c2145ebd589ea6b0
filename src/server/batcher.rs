//! The encoder worker pool: the only place where query photos meet the model.
//!
//! Decoding, preprocessing and inference are CPU-bound and would stall the async runtime, so
//! they run on a fixed number of plain threads fed through a bounded queue:
//!
//! - **Bounded:** when the queue is full a request is turned away at once ([`ApiError::Busy`],
//!   503 with `Retry-After`) instead of piling up until every client times out.
//! - **Batched:** a worker takes the first waiting job, then drains whatever else is already
//!   queued (up to `max_batch`) and runs the encoder once on all of them. Requests that arrive
//!   together share one inference call, which costs much less than one call each; a lone
//!   request is never held back waiting for company.
//!
//! A job carries the uploaded bytes; the worker drops them as soon as the photo is preprocessed,
//! and nothing of them is written anywhere.
//!
//! - **Followed up in place:** a job may carry the work that needs its encoded photo (a search
//!   does: nearest neighbours, then product rows), run on the same worker right after the
//!   encode. Handing the photo back to the async runtime and on to the blocking pool instead
//!   costs two thread wake-ups, about 0.1 ms of a 7 ms search on a 2-core machine.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use tokio::sync::oneshot;

use super::error::ApiError;
use super::metrics::Metrics;
use crate::preprocess::Crop;
use crate::search::{EncodedPhoto, Items, SearchEngine, SearchError, Timings};

/// Sizes of the pool.
#[derive(Debug, Clone, Copy)]
pub struct BatcherConfig {
    /// Worker threads (each prepares its batch, then runs the encoder on it).
    pub workers: usize,
    /// Jobs that may wait for a worker; one more is refused with 503.
    pub queue: usize,
    /// Most jobs encoded in one inference call.
    pub max_batch: usize,
}

/// A photo encoded by a worker, with the time each step took.
pub struct EncodedQuery {
    pub photo: EncodedPhoto,
    /// `queue_ms`, `decode_ms`, `preprocess_ms` and `encode_ms` are filled in.
    pub timings: Timings,
}

struct EncodeJob {
    bytes: Bytes,
    crop: Option<Crop>,
    items: Items,
    enqueued: Instant,
    reply: Box<dyn Reply>,
}

/// Where a job's encoded photo goes: through the caller's follow-up, back to the waiting
/// request.
trait Reply: Send {
    /// The request stopped waiting (its client went away): the job's work can be skipped.
    fn is_closed(&self) -> bool;
    fn send(self: Box<Self>, encoded: Result<EncodedQuery, SearchError>);
}

struct FollowUp<T, F> {
    sender: oneshot::Sender<Result<T, ApiError>>,
    then: F,
}

impl<T, F> Reply for FollowUp<T, F>
where
    T: Send,
    F: FnOnce(EncodedQuery) -> Result<T, ApiError> + Send,
{
    fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    fn send(self: Box<Self>, encoded: Result<EncodedQuery, SearchError>) {
        let FollowUp { sender, then } = *self;
        if sender.is_closed() {
            return;
        }
        // A panic in the follow-up fails its request, not the worker thread.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| encoded.map_err(ApiError::from).and_then(then)))
            .unwrap_or_else(|_| Err(ApiError::Internal(anyhow::anyhow!("the search after encoding the photo failed (panicked)"))));
        let _ = sender.send(outcome);
    }
}

/// Handle to the pool. Dropping it closes the queue; the workers finish what they hold and exit.
pub struct Batcher {
    queue: SyncSender<EncodeJob>,
    waiting: Arc<AtomicUsize>,
    config: BatcherConfig,
}

impl Batcher {
    pub fn start(engine: Arc<SearchEngine>, metrics: Arc<Metrics>, config: BatcherConfig) -> std::io::Result<Batcher> {
        let config = BatcherConfig { workers: config.workers.max(1), queue: config.queue.max(1), max_batch: config.max_batch.max(1) };
        let (sender, receiver) = sync_channel::<EncodeJob>(config.queue);
        let receiver = Arc::new(Mutex::new(receiver));
        let waiting = Arc::new(AtomicUsize::new(0));
        for n in 0..config.workers {
            let worker = Worker { engine: engine.clone(), metrics: metrics.clone(), receiver: receiver.clone(), waiting: waiting.clone(), max_batch: config.max_batch };
            std::thread::Builder::new().name(format!("encoder-{n}")).spawn(move || worker.run())?;
        }
        Ok(Batcher { queue: sender, waiting, config })
    }

    pub fn config(&self) -> BatcherConfig {
        self.config
    }

    /// Jobs waiting for a worker now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Decodes, crops, preprocesses and encodes a photo on a worker, and finds the products in
    /// it (with `Items::All`, encoding each on its own too). Fails at once with
    /// [`ApiError::Busy`] when the queue is full.
    pub async fn encode(&self, bytes: Bytes, crop: Option<Crop>, items: Items) -> Result<EncodedQuery, ApiError> {
        self.encode_then(bytes, crop, items, Ok).await
    }

    /// [`Batcher::encode`], then `then` on the encoded photo, on the same worker.
    pub async fn encode_then<T, F>(&self, bytes: Bytes, crop: Option<Crop>, items: Items, then: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(EncodedQuery) -> Result<T, ApiError> + Send + 'static,
    {
        let (sender, answer) = oneshot::channel();
        let job = EncodeJob { bytes, crop, items, enqueued: Instant::now(), reply: Box::new(FollowUp { sender, then }) };
        self.waiting.fetch_add(1, Ordering::Relaxed);
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                return Err(ApiError::Busy(format!("the server is busy: {} photos are already waiting to be encoded; try again in a second", self.config.queue)));
            }
            Err(TrySendError::Disconnected(_)) => {
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                return Err(ApiError::Internal(anyhow::anyhow!("the encoder workers have stopped")));
            }
        }
        answer.await.map_err(|_| ApiError::Internal(anyhow::anyhow!("an encoder worker dropped a job")))?
    }
}

struct Worker {
    engine: Arc<SearchEngine>,
    metrics: Arc<Metrics>,
    receiver: Arc<Mutex<Receiver<EncodeJob>>>,
    waiting: Arc<AtomicUsize>,
    max_batch: usize,
}

impl Worker {
    fn run(self) {
        while let Some(jobs) = self.next_batch() {
            self.waiting.fetch_sub(jobs.len(), Ordering::Relaxed);
            self.process(jobs);
        }
    }

    /// Blocks for the first job, then takes what else is queued, up to `max_batch`. `None` when
    /// the queue is closed (the server is shutting down).
    fn next_batch(&self) -> Option<Vec<EncodeJob>> {
        // Only one idle worker waits on the queue at a time; the others wait for the lock.
        let receiver = self.receiver.lock().ok()?;
        let first = receiver.recv().ok()?;
        let mut jobs = vec![first];
        while jobs.len() < self.max_batch {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        Some(jobs)
    }

    fn process(&self, jobs: Vec<EncodeJob>) {
        let mut prepared = Vec::with_capacity(jobs.len());
        for job in jobs {
            if job.reply.is_closed() {
                continue; // The client went away while queued: skip the work.
            }
            let queue_ms = job.enqueued.elapsed().as_secs_f64() * 1000.0;
            match self.engine.prepare_query(&job.bytes, job.crop, job.items) {
                Ok(query) => prepared.push((job.reply, Timings { queue_ms, ..query.timings.clone() }, query)),
                Err(err) => job.reply.send(Err(err)),
            }
            // `job.bytes` (the upload) is dropped here, before inference; the decoded photo is
            // kept until its items are encoded only with `Items::All`.
        }
        if prepared.is_empty() {
            return;
        }
        let (replies, rest): (Vec<_>, Vec<_>) = prepared.into_iter().map(|(reply, timings, query)| (reply, (timings, query))).unzip();
        let (timings, queries): (Vec<Timings>, Vec<_>) = rest.into_iter().unzip();
        let count = queries.len();
        let started = Instant::now();
        let encoded = self.engine.encode_photos(queries);
        let elapsed = started.elapsed();
        self.metrics.observe_encode(count, elapsed);
        let encode_ms = elapsed.as_secs_f64() * 1000.0;
        match encoded {
            Ok(photos) => {
                for ((reply, photo), timings) in replies.into_iter().zip(photos).zip(timings) {
                    reply.send(Ok(EncodedQuery { photo, timings: Timings { encode_ms, ..timings } }));
                }
            }
            Err(err) => {
                let message = format!("{err:#}");
                for reply in replies {
                    reply.send(Err(SearchError::Internal(anyhow::anyhow!("encoding failed: {message}"))));
                }
            }
        }
    }
}
