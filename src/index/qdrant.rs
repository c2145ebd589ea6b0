//! Qdrant as the vector store, for shops that outgrow one machine: the same [`VectorIndex`] the
//! embedded indexes implement, backed by a Qdrant collection over gRPC.
//!
//! The SQLite catalog stays the source of truth for products and metadata; Qdrant holds each
//! product's vector (in the search space) with the product's metadata as payload, so filters
//! run inside Qdrant's search. Point ids are derived from product ids (a UUID from their
//! SHA-256), so the same product always lands on the same point, whichever catalog file or
//! machine writes it. [`QdrantIndex::sync`] makes a collection agree with a catalog.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use qdrant_client::qdrant::{
    point_id::PointIdOptions, Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, DeletePointsBuilder, Distance,
    FieldType, Filter as QFilter, PayloadIncludeSelector, PointId, PointStruct, PointsIdsList, QueryPointsBuilder, ScalarQuantizationBuilder, ScrollPointsBuilder,
    SearchParamsBuilder, UpsertPointsBuilder, Value as QValue, VectorParamsBuilder, WriteOrdering, WriteOrderingType,
};
use qdrant_client::Qdrant;
use sha2::{Digest, Sha256};

use super::{Allowed, Hit, StoreUnavailable, VectorIndex};
use crate::types::{Filter, Key, Metadata};

/// Where the collection lives and how it is set up.
#[derive(Debug, Clone)]
pub struct QdrantConfig {
    /// gRPC address, e.g. `http://127.0.0.1:6334` (`qdrant://host:port` is accepted too;
    /// `qdrants://` means TLS).
    pub url: String,
    pub api_key: Option<String>,
    pub collection: String,
    pub shards: Option<u32>,
    pub replicas: Option<u32>,
    /// Replicas of a shard that must acknowledge a write before it succeeds (Qdrant's
    /// `write_consistency_factor`; its default is 1).
    pub write_consistency: Option<u32>,
    /// Store int8 copies of the vectors in RAM (Qdrant's scalar quantisation).
    pub quantize: bool,
    /// Write ordering across replicas: weak, medium or strong.
    pub write_ordering: WriteOrderingType,
    pub timeout: Duration,
    /// Metadata columns to index for filtering.
    pub filter_columns: Vec<String>,
    /// Search exactly (no HNSW) — for parity checks.
    pub exact: bool,
}

impl QdrantConfig {
    /// The collection of the catalog at `db` when none is named: the file's name without its
    /// extension (`shop.db` → `shop`).
    pub fn default_collection(db: &std::path::Path) -> String {
        db.file_stem().and_then(|s| s.to_str()).unwrap_or("lookalike").to_string()
    }

    /// Parses `weak`, `medium` or `strong`.
    pub fn parse_write_ordering(text: &str) -> Result<WriteOrderingType> {
        Ok(match text {
            "weak" => WriteOrderingType::Weak,
            "medium" => WriteOrderingType::Medium,
            "strong" => WriteOrderingType::Strong,
            other => bail!("--write-ordering {other:?}: expected weak, medium or strong"),
        })
    }

    /// Refuses settings Qdrant would refuse later, or worse, accept with another meaning: a
    /// collection name outside letters, digits, `-` and `_`, and a write consistency above the
    /// replica count.
    pub fn validate(&self) -> Result<()> {
        if let Some(factor) = self.write_consistency {
            let replicas = self.replicas.unwrap_or(1);
            if factor == 0 || factor > replicas {
                bail!("--write-consistency {factor}: must be between 1 and the number of --replicas ({replicas})");
            }
        }
        let collection = &self.collection;
        if collection.is_empty() || !collection.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')) {
            bail!("collection name {collection:?}: use letters, digits, - and _ (--collection)");
        }
        Ok(())
    }

    /// Parses `qdrant://host:port`, `qdrants://host:port` or an `http(s)://` URL.
    pub fn parse_url(store: &str) -> Result<String> {
        let url = if let Some(rest) = store.strip_prefix("qdrant://") {
            format!("http://{rest}")
        } else if let Some(rest) = store.strip_prefix("qdrants://") {
            format!("https://{rest}")
        } else if store.starts_with("http://") || store.starts_with("https://") {
            store.to_string()
        } else {
            bail!("--store {store:?}: expected qdrant://HOST:PORT (gRPC port, usually 6334), qdrants://HOST:PORT for TLS, or `embedded`");
        };
        Ok(url.trim_end_matches('/').to_string())
    }
}

/// Payload fields lookalike adds beside the product's metadata.
const KEY_FIELD: &str = "_lookalike_key";
const ID_FIELD: &str = "_lookalike_id";
/// Points per upsert request: large enough to amortise the round trip, small enough to stay far
/// below gRPC's 4 MiB message limit at 2048 dimensions (256 × 8 KiB = 2 MiB).
const UPSERT_BATCH: usize = 256;

/// The point id of a product: a UUID made from the SHA-256 of its id.
pub fn point_id(product_id: &str) -> String {
    let digest = Sha256::digest(product_id.as_bytes());
    let h = hex::encode(&digest[..16]);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// A Qdrant collection as a [`VectorIndex`].
pub struct QdrantIndex {
    client: Qdrant,
    runtime: tokio::runtime::Runtime,
    config: QdrantConfig,
    dim: usize,
    /// Product id and metadata of each key, so writes can carry the payload.
    products: HashMap<Key, (String, Metadata)>,
    len: usize,
}

/// What [`QdrantIndex::sync`] changed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SyncReport {
    pub in_catalog: usize,
    pub in_collection_before: usize,
    pub added: usize,
    pub deleted: usize,
    pub seconds: f64,
}

impl QdrantIndex {
    /// Connects, and creates the collection (or checks that an existing one fits `dim`).
    pub fn connect(config: QdrantConfig, dim: usize) -> Result<QdrantIndex> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the Qdrant client runtime")?;
        // The client's own version check prints to stdout (which carries lookalike's JSON
        // output) and refuses servers more than one minor version apart; lookalike uses only
        // long-stable calls, tested against Qdrant 1.18.
        let mut builder = Qdrant::from_url(&config.url).timeout(config.timeout).connect_timeout(Duration::from_secs(10)).skip_compatibility_check();
        if let Some(key) = &config.api_key {
            builder = builder.api_key(key.clone());
        }
        let client = builder.build().with_context(|| format!("connecting to Qdrant at {}", config.url))?;
        let mut index = QdrantIndex { client, runtime, config, dim, products: HashMap::new(), len: 0 };
        index.ensure_collection()?;
        index.len = index.count()?;
        Ok(index)
    }

    /// Runs a future to completion on the client's runtime, also from threads that belong to
    /// another runtime (the HTTP server calls the index from its blocking pool).
    fn run<F: Future + Send>(&self, future: F) -> F::Output
    where
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| s.spawn(|| self.runtime.block_on(future)).join()).unwrap_or_else(|p| std::panic::resume_unwind(p))
        } else {
            self.runtime.block_on(future)
        }
    }

    /// Retries transient failures (unavailable, timeouts) with exponential backoff.
    fn retry<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T, qdrant_client::QdrantError>> + Send,
        T: Send,
    {
        let mut delay = Duration::from_millis(100);
        for tries in 1.. {
            match self.run(attempt()) {
                Ok(value) => return Ok(value),
                Err(e) if tries < 5 && is_transient(&e) => {
                    tracing::warn!("{what}: {e}; retrying in {delay:?}");
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                Err(e) => {
                    let message = format!("{what} (Qdrant at {}): {}", self.config.url, self.explain(&e));
                    return Err(match is_transient(&e) || is_unreachable(&e) {
                        true => StoreUnavailable(message).into(),
                        false => anyhow!(message),
                    });
                }
            }
        }
        unreachable!("the retry loop returns")
    }

    fn ensure_collection(&self) -> Result<()> {
        let name = self.config.collection.clone();
        let exists = self.retry("checking the collection", || self.client.collection_exists(name.clone()))?;
        if exists {
            let info = self.retry("reading the collection", || self.client.collection_info(name.clone()))?;
            let size = info
                .result
                .and_then(|r| r.config)
                .and_then(|c| c.params)
                .and_then(|p| p.vectors_config)
                .and_then(|v| v.config)
                .and_then(|c| match c {
                    qdrant_client::qdrant::vectors_config::Config::Params(p) => Some((p.size, p.distance)),
                    _ => None,
                });
            match size {
                Some((size, distance)) if size as usize == self.dim && distance == Distance::Dot as i32 => Ok(()),
                Some((size, distance)) => bail!(
                    "Qdrant collection {name:?} holds {size}-d vectors with distance {distance}, but this catalog's search space is {}-d dot product: use another --collection, or delete that one",
                    self.dim
                ),
                None => bail!("Qdrant collection {name:?} has named or unknown vectors; lookalike needs one unnamed vector per point"),
            }
        } else {
            let mut create = CreateCollectionBuilder::new(name.clone()).vectors_config(VectorParamsBuilder::new(self.dim as u64, Distance::Dot));
            if let Some(shards) = self.config.shards {
                create = create.shard_number(shards);
            }
            if let Some(replicas) = self.config.replicas {
                create = create.replication_factor(replicas);
            }
            if let Some(factor) = self.config.write_consistency {
                create = create.write_consistency_factor(factor);
            }
            if self.config.quantize {
                create = create.quantization_config(ScalarQuantizationBuilder::default().always_ram(true));
            }
            self.retry("creating the collection", || self.client.create_collection(create.clone()))?;
            for column in self.config.filter_columns.iter().chain([&ID_FIELD.to_string()]) {
                let field = CreateFieldIndexCollectionBuilder::new(name.clone(), column.clone(), FieldType::Keyword).wait(true);
                self.retry("indexing a payload field", || self.client.create_field_index(field.clone()))?;
            }
            Ok(())
        }
    }

    /// [`explain`] for this index's server (TLS or not).
    fn explain(&self, e: &qdrant_client::QdrantError) -> String {
        explain(e, self.config.url.starts_with("https:"))
    }

    /// Whether the cluster answers now (one try, no retries: for readiness probes).
    pub fn health(&self) -> Result<(), StoreUnavailable> {
        let name = self.config.collection.clone();
        match self.run(self.client.collection_exists(name)) {
            Ok(true) => Ok(()),
            Ok(false) => Err(StoreUnavailable(format!("Qdrant at {} has no collection {:?} (any more)", self.config.url, self.config.collection))),
            Err(e) => Err(StoreUnavailable(format!("Qdrant at {}: {}", self.config.url, self.explain(&e)))),
        }
    }

    fn count(&self) -> Result<usize> {
        let request = CountPointsBuilder::new(self.config.collection.clone()).exact(true);
        let response = self.retry("counting points", || self.client.count(request.clone()))?;
        Ok(response.result.map_or(0, |r| r.count as usize))
    }

    fn ordering(&self) -> WriteOrdering {
        WriteOrdering { r#type: self.config.write_ordering as i32 }
    }

    /// Tells the index a product's id and metadata (the point id and payload of its vector).
    pub fn describe(&mut self, key: Key, id: &str, metadata: &Metadata) {
        self.products.insert(key, (id.to_string(), metadata.clone()));
    }

    fn point(&self, key: Key, vector: &[f32]) -> Result<PointStruct> {
        let (id, metadata) = self.products.get(&key).with_context(|| format!("no product id known for key {key}"))?;
        let mut payload: HashMap<String, QValue> = metadata.iter().map(|(k, v)| (k.clone(), QValue::from(v.clone()))).collect();
        payload.insert(KEY_FIELD.into(), QValue::from(key));
        payload.insert(ID_FIELD.into(), QValue::from(id.clone()));
        Ok(PointStruct::new(point_id(id), vector.to_vec(), payload))
    }

    /// Upserts many points in batches of [`UPSERT_BATCH`].
    pub fn upsert_many(&mut self, rows: &[(Key, Vec<f32>)]) -> Result<()> {
        for chunk in rows.chunks(UPSERT_BATCH) {
            self.upsert_batch(chunk)?;
        }
        self.len = self.count()?;
        Ok(())
    }

    fn upsert_batch(&self, rows: &[(Key, Vec<f32>)]) -> Result<()> {
        let points = rows.iter().map(|(k, v)| self.point(*k, v)).collect::<Result<Vec<_>>>()?;
        let request = UpsertPointsBuilder::new(self.config.collection.clone(), points).wait(true).ordering(self.ordering());
        self.retry("upserting points", || self.client.upsert_points(request.clone()))?;
        Ok(())
    }

    /// Every point id in the collection, with the catalog key its payload records.
    fn all_points(&self) -> Result<HashMap<String, Option<Key>>> {
        let mut out = HashMap::new();
        let mut offset: Option<PointId> = None;
        loop {
            let mut request = ScrollPointsBuilder::new(self.config.collection.clone()).limit(1000).with_payload(PayloadIncludeSelector { fields: vec![KEY_FIELD.to_string()] }).with_vectors(false);
            if let Some(o) = offset.clone() {
                request = request.offset(o);
            }
            let page = self.retry("listing points", || self.client.scroll(request.clone()))?;
            for point in page.result {
                let Some(PointIdOptions::Uuid(uuid)) = point.id.and_then(|i| i.point_id_options) else { continue };
                let key = point.payload.get(KEY_FIELD).and_then(integer);
                out.insert(uuid, key);
            }
            match page.next_page_offset {
                Some(next) => offset = Some(next),
                None => break,
            }
        }
        Ok(out)
    }

    /// Makes the collection agree with the catalog: upserts every product that is missing (or
    /// whose recorded key differs), deletes points whose product is gone. `keys` are the
    /// catalog's products; `vector` gives one's vector in the search space. Vectors are fetched
    /// 256 at a time as they are sent, so a million-product sync holds no second copy of them.
    pub fn sync(&mut self, keys: &[Key], vector: impl Fn(Key) -> Option<Vec<f32>>) -> Result<SyncReport> {
        let started = std::time::Instant::now();
        let existing = self.all_points()?;
        let mut report = SyncReport { in_catalog: keys.len(), in_collection_before: existing.len(), ..Default::default() };
        let mut wanted: HashSet<String> = HashSet::new();
        let mut missing = Vec::new();
        for &key in keys {
            let (id, _) = self.products.get(&key).with_context(|| format!("no product id known for key {key}"))?;
            let pid = point_id(id);
            if existing.get(&pid) != Some(&Some(key)) {
                missing.push(key);
            }
            wanted.insert(pid);
        }
        let stale: Vec<PointId> = existing.keys().filter(|p| !wanted.contains(*p)).map(|p| PointId::from(p.clone())).collect();
        report.added = missing.len();
        report.deleted = stale.len();
        for chunk in missing.chunks(UPSERT_BATCH) {
            let rows = chunk.iter().map(|&k| vector(k).map(|v| (k, v)).with_context(|| format!("no vector for key {k}"))).collect::<Result<Vec<_>>>()?;
            self.upsert_batch(&rows)?;
        }
        for chunk in stale.chunks(1000) {
            let request = DeletePointsBuilder::new(self.config.collection.clone()).points(PointsIdsList { ids: chunk.to_vec() }).wait(true).ordering(self.ordering());
            self.retry("deleting points", || self.client.delete_points(request.clone()))?;
        }
        self.len = self.count()?;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    fn query(&self, query: &[f32], k: usize, filter: Option<QFilter>) -> Result<Vec<Hit>> {
        let mut request = QueryPointsBuilder::new(self.config.collection.clone())
            .query(query.to_vec())
            .limit(k as u64)
            .with_payload(PayloadIncludeSelector { fields: vec![KEY_FIELD.to_string()] })
            .params(SearchParamsBuilder::default().exact(self.config.exact));
        if let Some(filter) = filter {
            request = request.filter(filter);
        }
        let response = self.retry("searching", || self.client.query(request.clone()))?;
        Ok(response
            .result
            .into_iter()
            .filter_map(|p| p.payload.get(KEY_FIELD).and_then(integer).map(|key| Hit { key, score: p.score }))
            .collect())
    }

    /// Searches with the filter applied inside Qdrant (payload conditions), with the same
    /// meaning as the embedded store: all columns must match, any value of a column will do.
    pub fn search_filter(&self, query: &[f32], k: usize, filter: &Filter) -> Result<Vec<Hit>> {
        let conditions: Vec<Condition> = filter.conditions().map(|(column, values)| Condition::matches(column.to_string(), values.to_vec())).collect();
        self.query(query, k, Some(QFilter::must(conditions)))
    }
}

fn integer(v: &QValue) -> Option<i64> {
    match v.kind {
        Some(qdrant_client::qdrant::value::Kind::IntegerValue(i)) => Some(i),
        _ => None,
    }
}

/// A Qdrant error as a person can act on it: the server's own message without the gRPC
/// metadata, and what to do about a missing, wrong or read-only API key or a TLS mismatch.
/// `tls` says whether the connection was made with TLS (`qdrants://`).
fn explain(e: &qdrant_client::QdrantError, tls: bool) -> String {
    let qdrant_client::QdrantError::ResponseError { status } = e else { return e.to_string() };
    let message = status.message();
    match status.code() as i32 {
        16 => format!("{message} (pass --qdrant-api-key KEY or set QDRANT_API_KEY)"),
        7 => format!("{message} (this API key may not do that: changing the collection needs a read-write key)"),
        _ if message.contains("InvalidCertificate") => format!(
            "{message} (the server's TLS certificate is not trusted here: add its CA to the system's certificates, or point SSL_CERT_FILE at it)"
        ),
        2 if !tls && message == "transport error" => format!("{message} (if the server speaks TLS, use qdrants://HOST:PORT)"),
        _ => format!("{:?}: {message}", status.code()),
    }
}

/// Unavailable (a node restarting), deadline exceeded, resource exhausted, aborted: worth a retry.
fn is_transient(e: &qdrant_client::QdrantError) -> bool {
    match e {
        qdrant_client::QdrantError::ResponseError { status } => matches!(status.code() as i32, 4 | 8 | 10 | 14),
        qdrant_client::QdrantError::ResourceExhaustedError { .. } => true,
        _ => false,
    }
}

/// The server did not answer at all (refused, reset, timed out): nothing about the request is
/// known, unlike an answer that refuses it.
fn is_unreachable(e: &qdrant_client::QdrantError) -> bool {
    match e {
        qdrant_client::QdrantError::ResponseError { status } => {
            // The client's own connection failures come back as Internal or Unknown statuses
            // with the transport's words in the message.
            let message = status.message();
            matches!(status.code() as i32, 4 | 14) || ["Failed to connect", "transport error", "tcp connect error", "connection reset"].iter().any(|m| message.contains(m))
        }
        _ => false,
    }
}

impl VectorIndex for QdrantIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        self.len
    }

    fn upsert(&mut self, key: Key, vector: &[f32]) -> Result<()> {
        if vector.len() != self.dim {
            bail!("vector has {} dimensions, the collection holds {}-d vectors", vector.len(), self.dim);
        }
        self.upsert_many(&[(key, vector.to_vec())])
    }

    fn remove(&mut self, key: Key) -> Result<()> {
        let Some((id, _)) = self.products.remove(&key) else { return Ok(()) };
        let request = DeletePointsBuilder::new(self.config.collection.clone())
            .points(PointsIdsList { ids: vec![PointId::from(point_id(&id))] })
            .wait(true)
            .ordering(self.ordering());
        self.retry("deleting a point", || self.client.delete_points(request.clone()))?;
        self.len = self.count()?;
        Ok(())
    }

    fn search(&self, query: &[f32], k: usize, allowed: Option<&Allowed>) -> Result<Vec<Hit>> {
        if query.len() != self.dim {
            bail!("vector has {} dimensions, the collection holds {}-d vectors", query.len(), self.dim);
        }
        let filter = allowed.map(|a| {
            let ids: Vec<PointId> = a.iter().filter_map(|k| self.products.get(k)).map(|(id, _)| PointId::from(point_id(id))).collect();
            QFilter::must([Condition::has_id(ids)])
        });
        self.query(query, k, filter)
    }

}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_keys_and_tls_mismatches_are_explained_without_grpc_metadata() {
        let error = |code, message: &str| qdrant_client::QdrantError::ResponseError { status: tonic::Status::new(code, message) };
        let missing = explain(&error(tonic::Code::Unauthenticated, "Must provide an API key or an Authorization bearer token"), false);
        assert_eq!(missing, "Must provide an API key or an Authorization bearer token (pass --qdrant-api-key KEY or set QDRANT_API_KEY)");
        let read_only = explain(&error(tonic::Code::PermissionDenied, "Access denied"), false);
        assert!(read_only.contains("read-write key"), "{read_only}");
        let other = explain(&error(tonic::Code::NotFound, "Collection `shop` doesn't exist!"), false);
        assert_eq!(other, "NotFound: Collection `shop` doesn't exist!");
        assert!(!other.contains("MetadataMap"));
        // What tonic says for an untrusted certificate, and for plain gRPC sent to a TLS port.
        let untrusted = explain(&error(tonic::Code::Internal, "Failed to connect: ConnectError(InvalidCertificate(UnknownIssuer))"), true);
        assert!(untrusted.contains("SSL_CERT_FILE"), "{untrusted}");
        let plain_to_tls = explain(&error(tonic::Code::Unknown, "transport error"), false);
        assert!(plain_to_tls.contains("qdrants://"), "{plain_to_tls}");
        assert!(!explain(&error(tonic::Code::Unknown, "transport error"), true).contains("qdrants://"));
    }
}
