//! Qdrant as the vector store, for shops that outgrow one machine: the same [`VectorIndex`] the
//! embedded indexes implement, backed by a Qdrant collection over gRPC.
//!
//! Qdrant holds each product's vector (in the search space) with everything a server shows of
//! it as payload: its id, metadata, colour and, when small, its photo ([`StoredProduct`]).
//! So filters run inside Qdrant's search, and any number of servers, with or without the
//! catalog file, answer searches from the collection alone. Point ids are derived from product
//! ids (a UUID from their SHA-256), so the same product always lands on the same point,
//! whichever catalog file or machine writes it. [`QdrantIndex::sync`] makes a collection agree
//! with a catalog; a side collection (`NAME_lookalike`) holds what a server needs to search it
//! without the catalog: the model and the search space ([`QdrantIndex::write_description`]).
//!
//! Here: the connection (retries, errors a person can act on, health) and searching. Beside
//! it: where a collection lives and how it is made (config.rs), collections as wholes and the
//! description (collections.rs), and the points themselves (points.rs).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use qdrant_client::qdrant::{
    Condition, Filter as QFilter, PayloadExcludeSelector, PayloadIncludeSelector, PointId, QueryPointsBuilder, RetrievedPoint, ScrollPointsBuilder, SearchParamsBuilder,
    WriteOrdering,
};
use qdrant_client::Qdrant;
use sha2::{Digest, Sha256};

use super::{Allowed, Hit, StoreUnavailable, VectorIndex};
use crate::types::{Filter, Key};

mod collections;
mod config;
mod points;
mod removals;

pub use config::{CollectionLayout, QdrantConfig};
use points::{integer, stored_product};
pub use points::{PhotoListings, ProductPoint, ProductWithoutCatalog, StoredProduct, SyncReport};

/// Payload fields lookalike adds beside the product's metadata: the catalog key of a product a
/// catalog wrote (products added through a server without a catalog have none), the product
/// id, its colour descriptor (little-endian f32, base64) and its photo (base64, only up to
/// [`MAX_PAYLOAD_IMAGE`]).
const KEY_FIELD: &str = "_lookalike_key";

const ID_FIELD: &str = "_lookalike_id";

const COLOUR_FIELD: &str = "_lookalike_colour";

const IMAGE_FIELD: &str = "_lookalike_image";

/// On a catalog product's point whose metadata a server without the catalog changed: its id,
/// until the next `sync` takes the change into the catalog (see
/// [`QdrantIndex::patched_without_catalog`]).
const PATCHED_FIELD: &str = "_lookalike_patched";

/// The content hash of the product's photo ([`StoredProduct::photo`]), keyword-indexed: a
/// search asks for the other products listed with its hits' photos.
const PHOTO_FIELD: &str = "_lookalike_photo";

/// On a point whose photo other points have too: how many points the collection held with
/// that photo when one of them was last written ([`QdrantIndex::mark_shared_photos`]).
const LISTINGS_FIELD: &str = "_lookalike_photo_listings";

/// `true` on a point whose photo other points have too, as lookalike marked them before it
/// counted them ([`LISTINGS_FIELD`]): read as "shared, count unknown".
const SHARED_FIELD: &str = "_lookalike_photo_shared";

/// Photos up to this size travel in the payload, so that a server without the catalog can show
/// them (Fashion-MNIST's are under 1 KiB, a 60x80 shop thumbnail a few KiB); the callers send
/// a reduced copy of a larger one (`store::payload_photo`), or none where the shop serves it
/// (see `docs/deployment.md`).
pub const MAX_PAYLOAD_IMAGE: usize = 64 * 1024;

/// The point id of a product: a UUID made from the SHA-256 of its id.
pub fn point_id(product_id: &str) -> String {
    let digest = Sha256::digest(product_id.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Uuid::from_bytes(bytes).hyphenated().to_string()
}

/// Whether `token` is a point id as Qdrant reads one (a UUID): anything else sent to Qdrant
/// as a point id is an invalid request.
pub fn is_point_id(token: &str) -> bool {
    uuid::Uuid::try_parse(token).is_ok()
}

/// The key a product without a catalog key goes by in a server's results: negative, so it can
/// never be taken for a catalog's row, and the same on every server.
pub fn collection_key(product_id: &str) -> Key {
    let digest = Sha256::digest(product_id.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    -(i64::from_le_bytes(bytes) & i64::MAX) - 1
}

/// A Qdrant collection as a [`VectorIndex`].
pub struct QdrantIndex {
    client: Qdrant,
    runtime: tokio::runtime::Runtime,
    config: QdrantConfig,
    /// The collection that holds the points: the one servers are given (`config.collection`),
    /// or the one that `lookalike sync --swap` filled beside it and the description names
    /// ([`QdrantIndex::open_points`]). The description itself always lives beside the given
    /// name (`NAME_lookalike`): it is how every server finds the points.
    points: String,
    dim: usize,
    /// Who each catalog key is, so that writes by key can carry the payload.
    products: HashMap<Key, StoredProduct>,
    len: usize,
}

impl QdrantIndex {
    /// Connects, and creates the collection (or checks that an existing one fits `dim`).
    pub fn connect(config: QdrantConfig, dim: usize) -> Result<QdrantIndex> {
        let points = config.collection.clone();
        QdrantIndex::connect_cluster(config)?.open_points(points, dim)
    }

    /// Searches and writes the points of collection `points` (creating it, or checking that
    /// an existing one fits `dim`).
    pub fn open_points(mut self, points: String, dim: usize) -> Result<QdrantIndex> {
        (self.points, self.dim) = (points, dim);
        self.ensure_collection()?;
        self.len = self.count()?;
        Ok(self)
    }

    /// Searches and writes the points of collection `points`, which must exist already (a
    /// server without the catalog cannot create one: it does not know the vectors), taking
    /// its dimension from it.
    pub fn open_existing_points(mut self, points: String) -> Result<QdrantIndex> {
        self.points = points;
        if !self.collection_exists(&self.points)? {
            bail!(
                "Qdrant at {} has no collection {:?} yet: fill it from the catalog first (`lookalike sync --db CATALOG --store {} --collection {}`), then try again",
                self.config.url,
                self.points,
                self.config.url,
                self.config.collection
            );
        }
        self.dim = self.collection_shape()?.map_or(0, |(size, _)| size as usize);
        self.len = self.count()?;
        Ok(self)
    }

    /// The collection that holds the points.
    pub fn points(&self) -> &str {
        &self.points
    }

    /// Connects to the cluster without opening a collection: to read the description first,
    /// which says which collection holds the points ([`QdrantIndex::points`]).
    pub fn connect_cluster(config: QdrantConfig) -> Result<QdrantIndex> {
        // The client's own version check prints to stdout (which carries lookalike's JSON
        // output) and refuses servers more than one minor version apart; lookalike uses only
        // long-stable calls, tested against Qdrant 1.18.
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the Qdrant client runtime")?;
        let mut builder = Qdrant::from_url(&config.url).timeout(config.timeout).connect_timeout(Duration::from_secs(10)).skip_compatibility_check();
        if let Some(key) = &config.api_key {
            builder = builder.api_key(key.clone());
        }
        let client = builder.build().with_context(|| format!("connecting to Qdrant at {}", config.url))?;
        let points = config.collection.clone();
        Ok(QdrantIndex { client, runtime, config, points, dim: 0, products: HashMap::new(), len: 0 })
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

    /// [`explain`] for this index's server (TLS or not).
    fn explain(&self, e: &qdrant_client::QdrantError) -> String {
        explain(e, self.config.url.starts_with("https:"))
    }

    /// Whether the cluster answers now (one try, no retries: for readiness probes).
    pub fn health(&self) -> Result<(), StoreUnavailable> {
        match self.run(self.client.collection_exists(self.points.clone())) {
            Ok(true) => Ok(()),
            Ok(false) => Err(StoreUnavailable(format!("Qdrant at {} has no collection {:?} (any more)", self.config.url, self.points))),
            Err(e) => Err(StoreUnavailable(format!("Qdrant at {}: {}", self.config.url, self.explain(&e)))),
        }
    }

    /// Every point `request` selects, read page by page (Qdrant's scroll) and handed to `each`
    /// in the order Qdrant returns them. A collection that does not exist is an error, or
    /// reads as empty with [`IfMissing::Empty`] (a side collection never made).
    fn scroll_all(&self, what: &str, request: ScrollPointsBuilder, if_missing: IfMissing, mut each: impl FnMut(RetrievedPoint)) -> Result<()> {
        let mut offset: Option<PointId> = None;
        loop {
            let mut page_request = request.clone();
            if let Some(o) = offset.take() {
                page_request = page_request.offset(o);
            }
            let page = self.retry(what, || async {
                match self.client.scroll(page_request.clone()).await {
                    Err(e) if if_missing == IfMissing::Empty && is_not_found(&e) => Ok(None),
                    other => other.map(Some),
                }
            })?;
            let Some(page) = page else { return Ok(()) };
            page.result.into_iter().for_each(&mut each);
            match page.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// The text payload `field` of every point of `collection` that `filter` selects (points
    /// without it are skipped): the listings that need one field of many points, not the points.
    fn strings_of(&self, what: &str, collection: String, filter: QFilter, field: &str, if_missing: IfMissing) -> Result<Vec<String>> {
        let request = ScrollPointsBuilder::new(collection).filter(filter).limit(1000).with_payload(PayloadIncludeSelector { fields: vec![field.to_string()] }).with_vectors(false);
        let mut out = Vec::new();
        self.scroll_all(what, request, if_missing, |point| {
            out.extend(point.payload.get(field).and_then(points::string).map(str::to_string));
        })?;
        Ok(out)
    }

    fn count(&self) -> Result<usize> {
        self.count_matching(&Filter::default())
    }

    fn ordering(&self) -> WriteOrdering {
        WriteOrdering { r#type: self.config.write_ordering as i32 }
    }

    /// The `k` nearest points: score, the catalog key recorded, the product.
    fn query(&self, query: &[f32], k: usize, filter: Option<QFilter>) -> Result<Vec<(f32, Option<Key>, StoredProduct)>> {
        if query.len() != self.dim {
            bail!("vector has {} dimensions, the collection holds {}-d vectors", query.len(), self.dim);
        }
        // Everything but the photo, which only the image route reads.
        let mut request = QueryPointsBuilder::new(self.points.clone())
            .query(query.to_vec())
            .limit(k as u64)
            .with_payload(PayloadExcludeSelector::new(vec![IMAGE_FIELD.to_string()]))
            .params(SearchParamsBuilder::default().exact(self.config.exact));
        if let Some(filter) = filter {
            request = request.filter(filter);
        }
        let response = self.retry("searching", || self.client.query(request.clone()))?;
        Ok(response
            .result
            .into_iter()
            .filter_map(|p| {
                let key = p.payload.get(KEY_FIELD).and_then(integer);
                stored_product(p.payload).map(|product| (p.score, key, product))
            })
            .collect())
    }

    /// The `k` products nearest `query` that `filter` admits (evaluated by Qdrant on the
    /// payloads, with the embedded store's meaning: all columns must match, any value of a
    /// column will do), with what their points say of them.
    pub fn search_products(&self, query: &[f32], k: usize, filter: &Filter) -> Result<Vec<(f32, StoredProduct)>> {
        Ok(self.query(query, k, qdrant_filter(filter))?.into_iter().map(|(score, _, product)| (score, product)).collect())
    }

    /// [`QdrantIndex::search_products`] as hits by key ([`VectorIndex::search`]'s keys).
    pub fn search_filter(&self, query: &[f32], k: usize, filter: &Filter) -> Result<Vec<Hit>> {
        Ok(self.hits(self.query(query, k, qdrant_filter(filter))?))
    }

    /// Hits by the catalog key recorded where this process knows that key as the same product
    /// (a collection shared by two catalogs records either's keys), else by collection key.
    fn hits(&self, rows: Vec<(f32, Option<Key>, StoredProduct)>) -> Vec<Hit> {
        rows.into_iter()
            .map(|(score, key, product)| {
                let known = key.filter(|k| self.products.get(k).is_some_and(|p| p.id == product.id));
                Hit { key: known.unwrap_or_else(|| collection_key(&product.id)), score }
            })
            .collect()
    }
}

/// How [`QdrantIndex::scroll_all`] takes a collection that does not exist.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IfMissing {
    Fail,
    Empty,
}

/// Qdrant's form of `filter`: all columns must match, any value of a column will do.
fn qdrant_filter(filter: &Filter) -> Option<QFilter> {
    let conditions: Vec<Condition> = filter.conditions().map(|(column, values)| Condition::matches(column.to_string(), values.to_vec())).collect();
    (!conditions.is_empty()).then(|| QFilter::must(conditions))
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
        _ if message.contains("InvalidCertificate") => {
            format!("{message} (the server's TLS certificate is not trusted here: add its CA to the system's certificates, or point SSL_CERT_FILE at it)")
        }
        2 if !tls && message == "transport error" => format!("{message} (if the server speaks TLS, use qdrants://HOST:PORT)"),
        _ => format!("{:?}: {message}", status.code()),
    }
}

/// Qdrant's gRPC "not found": for a side collection, one never made (nothing described yet).
fn is_not_found(e: &qdrant_client::QdrantError) -> bool {
    matches!(e, qdrant_client::QdrantError::ResponseError { status } if status.code() as i32 == 5)
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
        match self.products.get(&key).cloned() {
            Some(product) => self.remove_product(&product.id).map(|_| ()),
            // A product removed from the catalog before this collection was opened (its id is
            // gone with its row): found by the catalog key its payload records.
            None => self.remove_catalog_key(key),
        }
    }

    fn search(&self, query: &[f32], k: usize, allowed: Option<&Allowed>) -> Result<Vec<Hit>> {
        let filter = allowed.map(|a| {
            let ids: Vec<PointId> = a.iter().filter_map(|k| self.products.get(k)).map(|p| PointId::from(point_id(&p.id))).collect();
            QFilter::must([Condition::has_id(ids)])
        });
        Ok(self.hits(self.query(query, k, filter)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Point ids are how every collection already written finds its products again: they must
    /// never change (these are the SHA-256-derived ids collections hold since the first sync).
    #[test]
    fn point_ids_are_stable_and_checked_as_qdrant_reads_them() {
        assert_eq!(point_id("fmnist-train-00000"), "26152834-f3b1-3535-50c9-9cd9e81f451b");
        assert_eq!(point_id("15970"), "78cccd4f-5129-0479-26f6-a483863e7c0f");
        assert!(is_point_id(&point_id("any product")));
        for token in ["", "12", "not-a-token", "26152834-f3b1-3535-50c9-9cd9e81f451", "26152834-f3b1-3535-50c9-9cd9e81f451g"] {
            assert!(!is_point_id(token), "{token:?}");
        }
    }

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
