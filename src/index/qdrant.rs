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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use qdrant_client::qdrant::{
    point_id::PointIdOptions, Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, DeletePointsBuilder, Distance, FacetCountsBuilder,
    FieldType, Filter as QFilter, GetPointsBuilder, PayloadExcludeSelector, PayloadIncludeSelector, PointId, PointStruct, PointsIdsList, QueryPointsBuilder,
    ScalarQuantizationBuilder, ScrollPointsBuilder, SearchParamsBuilder, UpsertPointsBuilder, Value as QValue, VectorParamsBuilder, WriteOrdering, WriteOrderingType,
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
    /// Store int8 copies of the vectors in RAM (Qdrant's scalar quantisation) in a collection
    /// lookalike makes, or not; `None`: not, or as the collection it replaces.
    pub quantize: Option<bool>,
    /// Write ordering across replicas: weak, medium or strong.
    pub write_ordering: WriteOrderingType,
    pub timeout: Duration,
    /// Metadata columns to index for filtering.
    pub filter_columns: Vec<String>,
    /// Search exactly (no HNSW) — for parity checks.
    pub exact: bool,
}

/// How a collection was made: a collection made in its place (`sync --swap`, `--recreate`) is
/// made the same way where this run's settings leave it open ([`QdrantIndex::inheriting`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectionLayout {
    pub shards: u32,
    pub replicas: Option<u32>,
    pub write_consistency: Option<u32>,
    pub quantized: bool,
    /// Payload fields with a keyword index, lookalike's own id field aside, by name.
    pub keyword_columns: Vec<String>,
}

impl QdrantConfig {
    /// These settings, with what they leave open taken from `layout`: shards, replicas and
    /// write consistency when not given, quantisation when the old collection had it, and
    /// keyword indexes on its columns as well as these.
    fn inheriting(mut self, layout: &CollectionLayout) -> QdrantConfig {
        self.shards = self.shards.or((layout.shards > 0).then_some(layout.shards));
        self.replicas = self.replicas.or(layout.replicas);
        self.write_consistency = self.write_consistency.or(layout.write_consistency);
        self.quantize = self.quantize.or(layout.quantized.then_some(true));
        for column in &layout.keyword_columns {
            if !self.filter_columns.contains(column) {
                self.filter_columns.push(column.clone());
            }
        }
        self
    }

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

/// Payload fields lookalike adds beside the product's metadata: the catalog key of a product a
/// catalog wrote (products added through a server without a catalog have none), the product
/// id, its colour descriptor (little-endian f32, base64) and its photo (base64, only up to
/// [`MAX_PAYLOAD_IMAGE`]).
const KEY_FIELD: &str = "_lookalike_key";
const ID_FIELD: &str = "_lookalike_id";
const COLOUR_FIELD: &str = "_lookalike_colour";
const IMAGE_FIELD: &str = "_lookalike_image";
/// Photos up to this size travel in the payload, so that a server without the catalog can show
/// them (Fashion-MNIST's are under 1 KiB, a 60x80 shop thumbnail a few KiB); larger ones are
/// shown from the shop's own image URL column (see `docs/deployment.md`).
pub const MAX_PAYLOAD_IMAGE: usize = 64 * 1024;
/// Bytes of the collection description per point of the side collection: far below gRPC's
/// 4 MiB message limit once base64 has grown them by a third.
const DESCRIPTION_CHUNK: usize = 1 << 20;
/// Points per upsert request: large enough to amortise the round trip, small enough to stay far
/// below gRPC's 4 MiB message limit at 2048 dimensions (256 × 8 KiB = 2 MiB).
const UPSERT_BATCH: usize = 256;

/// The point id of a product: a UUID made from the SHA-256 of its id.
pub fn point_id(product_id: &str) -> String {
    let digest = Sha256::digest(product_id.as_bytes());
    let h = hex::encode(&digest[..16]);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The key a product without a catalog key goes by in a server's results: negative, so it can
/// never be taken for a catalog's row, and the same on every server.
pub fn collection_key(product_id: &str) -> Key {
    let digest = Sha256::digest(product_id.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    -(i64::from_le_bytes(bytes) & i64::MAX) - 1
}

/// What a point carries about its product: all a server needs to show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredProduct {
    pub id: String,
    pub metadata: Metadata,
    /// The product's colour descriptor ([`crate::colour::ColourDescriptor::values`]).
    pub colour: Option<Vec<f32>>,
}

/// A product added to a collection through a server without the catalog (its point carries no
/// catalog key): all a `sync` that moves the points elsewhere can carry over.
#[derive(Debug, Clone)]
pub struct ProductWithoutCatalog {
    pub product: StoredProduct,
    /// Its photo, when small enough to travel in the payload ([`MAX_PAYLOAD_IMAGE`]).
    pub image: Option<Vec<u8>>,
    /// Its vector in the collection's search space, when asked for.
    pub vector: Option<Vec<f32>>,
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

/// One product's point as [`QdrantIndex::put_products`] writes it: its vector in the
/// collection's space, and its photo when small enough to travel in the payload.
pub struct ProductPoint {
    pub key: Key,
    pub product: StoredProduct,
    pub vector: Vec<f32>,
    pub image: Option<Vec<u8>>,
}

/// What [`QdrantIndex::sync`] changed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SyncReport {
    pub in_catalog: usize,
    pub in_collection_before: usize,
    pub added: usize,
    /// Points sent again because the collection held them in another search space (see
    /// [`QdrantIndex::holds_other_vectors`]).
    pub resent: usize,
    pub deleted: usize,
    /// The collection was deleted first and filled afresh (`sync --recreate`: its vectors did
    /// not fit the catalog's search space).
    pub recreated: bool,
    /// The collection that holds the points now: the one named, or the one `sync --swap`
    /// filled beside it (the description names it; every server follows).
    pub collection: String,
    /// The collection `sync --swap` filled this one in place of: kept for servers that have
    /// not yet read the new description.
    pub replaced: Option<String>,
    /// Collections earlier swaps replaced, deleted by this sync: kept long enough for every
    /// server to have moved off them.
    pub deleted_collections: Vec<String>,
    /// Collections swaps replaced (this one's first) that are kept for now: a later sync
    /// deletes them.
    pub kept_collections: Vec<String>,
    /// Catalog changes made while a new (or recreated) collection filled, sent to it before
    /// servers move to it.
    pub caught_up: usize,
    /// Products added through servers without the catalog, copied as they were from the
    /// collection this sync replaced or recreated (same search space).
    pub carried_without_catalog: usize,
    /// Products added through servers without the catalog whose vectors are in the search
    /// space before `tune`: encoded again from their photos by `lookalike sync`
    /// ([`SyncReport::to_encode`]), or, without a photo in their payload, to be added again.
    pub without_catalog_in_old_space: usize,
    /// Those products.
    #[serde(skip)]
    pub to_encode: Vec<ProductWithoutCatalog>,
    pub seconds: f64,
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
                "Qdrant at {} has no collection {:?} yet: fill it from the catalog first (`lookalike sync --db CATALOG --store {} --collection {}`), then start this server again",
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

    /// Whether the cluster has collection `name`.
    pub fn collection_exists(&self, name: &str) -> Result<bool> {
        self.retry("checking a collection", || self.client.collection_exists(name.to_string()))
    }

    /// Deletes collection `name` if the cluster has it; whether it had.
    pub fn delete_collection(&self, name: &str) -> Result<bool> {
        if !self.collection_exists(name)? {
            return Ok(false);
        }
        self.retry("deleting a collection", || self.client.delete_collection(name.to_string()))?;
        Ok(true)
    }

    /// Deletes collection `points` if it holds vectors that do not fit `dim` (dot product):
    /// what `lookalike tune` leaves behind when it changes the search space's dimension, since
    /// a collection's vector size is fixed when it is made. Whether it was deleted; a
    /// collection that fits, or none, is left as it is.
    pub fn delete_if_misfit(&self, points: &str, dim: usize) -> Result<bool> {
        if !self.collection_exists(points)? {
            return Ok(false);
        }
        if self.shape_of(points)? == Some((dim as u64, Distance::Dot as i32)) {
            return Ok(false);
        }
        self.delete_collection(points)
    }

    /// Whether points of the collection hold other vectors than `vector` gives for them: read
    /// back, in one request, for 16 products spread over `keys` (a point not there yet says
    /// nothing).
    pub fn holds_other_vectors(&self, keys: &[Key], vector: impl Fn(Key) -> Option<Vec<f32>>) -> Result<bool> {
        let sample: Vec<(String, Key)> =
            keys.iter().step_by((keys.len() / 16).max(1)).take(16).filter_map(|&key| self.products.get(&key).map(|p| (point_id(&p.id), key))).collect();
        if sample.is_empty() {
            return Ok(false);
        }
        let request =
            GetPointsBuilder::new(self.points.clone(), sample.iter().map(|(pid, _)| PointId::from(pid.clone())).collect::<Vec<_>>()).with_payload(false).with_vectors(true);
        let response = self.retry("reading points back", || self.client.get_points(request.clone()))?;
        let stored: HashMap<String, Vec<f32>> = response
            .result
            .into_iter()
            .filter_map(|point| {
                let vector = dense_vector(&point)?;
                let Some(PointIdOptions::Uuid(uuid)) = point.id.and_then(|i| i.point_id_options) else { return None };
                Some((uuid, vector))
            })
            .collect();
        Ok(sample.iter().any(|(pid, key)| match (stored.get(pid), vector(*key)) {
            (Some(stored), Some(wanted)) => stored.len() != wanted.len() || stored.iter().zip(&wanted).any(|(a, b)| (a - b).abs() > 1e-4),
            _ => false,
        }))
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

    fn ensure_collection(&self) -> Result<()> {
        let name = self.points.clone();
        let exists = self.retry("checking the collection", || self.client.collection_exists(name.clone()))?;
        if exists {
            match self.collection_shape()? {
                Some(shape) if self.fits(shape) => Ok(()),
                Some((size, distance)) => bail!(
                    "Qdrant collection {name:?} holds {size}-d {} vectors, but this catalog's search space is {}-d dot product (`lookalike tune` changes it): use another --collection, or `lookalike sync --swap` (fills a new collection beside it; servers move to it once it is full) or `--recreate` (deletes it and fills it afresh; servers answer errors meanwhile)",
                    Distance::try_from(distance).map_or_else(|_| format!("distance {distance}"), |d| d.as_str_name().to_lowercase()),
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
            if self.config.quantize == Some(true) {
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

    /// The metadata columns with a keyword index in the collection that holds the points: the
    /// facets it can count. They were made with the collection, from the `--filter-columns` of
    /// whoever made it, so they are read here rather than taken from this process's settings.
    /// By name (the API lists facets by name), so that every writer describes them alike.
    pub fn keyword_columns(&self) -> Result<Vec<String>> {
        Ok(self.layout_of(&self.points)?.keyword_columns)
    }

    /// How collection `name` was made.
    pub fn layout_of(&self, name: &str) -> Result<CollectionLayout> {
        let name = name.to_string();
        let info = self.retry("reading the collection", || self.client.collection_info(name.clone()))?.result.unwrap_or_default();
        let config = info.config.unwrap_or_default();
        let params = config.params.unwrap_or_default();
        let mut keyword_columns: Vec<String> = info
            .payload_schema
            .into_iter()
            .filter(|(field, schema)| field != ID_FIELD && schema.data_type == qdrant_client::qdrant::PayloadSchemaType::Keyword as i32)
            .map(|(field, _)| field)
            .collect();
        keyword_columns.sort();
        Ok(CollectionLayout {
            shards: params.shard_number,
            replicas: params.replication_factor,
            write_consistency: params.write_consistency_factor,
            quantized: config.quantization_config.is_some(),
            keyword_columns,
        })
    }

    /// This index, making any new collection as `layout` was made where its own settings leave
    /// it open: a swap or recreate run without `--shards 3 --replicas 2` must not make a
    /// collection of one shard and one copy in place of a replicated one.
    pub fn inheriting(mut self, layout: &CollectionLayout) -> QdrantIndex {
        self.config = self.config.inheriting(layout);
        self
    }

    /// Whether a collection of `shape` (vector size, distance) holds this index's vectors.
    fn fits(&self, shape: (u64, i32)) -> bool {
        shape == (self.dim as u64, Distance::Dot as i32)
    }

    /// The collection's vector size and distance; `None` for named or other vectors.
    fn collection_shape(&self) -> Result<Option<(u64, i32)>> {
        self.shape_of(&self.points)
    }

    /// Collection `name`'s vector size and distance, as [`QdrantIndex::collection_shape`].
    fn shape_of(&self, name: &str) -> Result<Option<(u64, i32)>> {
        let name = name.to_string();
        let info = self.retry("reading the collection", || self.client.collection_info(name.clone()))?;
        Ok(info.result.and_then(|r| r.config).and_then(|c| c.params).and_then(|p| p.vectors_config).and_then(|v| v.config).and_then(|c| match c {
            qdrant_client::qdrant::vectors_config::Config::Params(p) => Some((p.size, p.distance)),
            _ => None,
        }))
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

    fn count(&self) -> Result<usize> {
        let request = CountPointsBuilder::new(self.points.clone()).exact(true);
        let response = self.retry("counting points", || self.client.count(request.clone()))?;
        Ok(response.result.map_or(0, |r| r.count as usize))
    }

    fn ordering(&self) -> WriteOrdering {
        WriteOrdering { r#type: self.config.write_ordering as i32 }
    }

    /// Tells the index who `key` is (the point id and payload of its vector).
    pub fn describe(&mut self, key: Key, product: StoredProduct) {
        self.products.insert(key, product);
    }

    /// A point: the vector, the product's payload, the catalog key when the product has one
    /// (`key` ≥ 0) and its photo when one is given.
    fn point(product: &StoredProduct, key: Option<Key>, vector: &[f32], image: Option<&[u8]>) -> PointStruct {
        let mut payload: HashMap<String, QValue> = product.metadata.iter().map(|(k, v)| (k.clone(), QValue::from(v.clone()))).collect();
        if let Some(key) = key {
            payload.insert(KEY_FIELD.into(), QValue::from(key));
        }
        payload.insert(ID_FIELD.into(), QValue::from(product.id.clone()));
        if let Some(colour) = &product.colour {
            let bytes: Vec<u8> = colour.iter().flat_map(|v| v.to_le_bytes()).collect();
            payload.insert(COLOUR_FIELD.into(), QValue::from(base64::engine::general_purpose::STANDARD.encode(bytes)));
        }
        if let Some(image) = image.filter(|i| i.len() <= MAX_PAYLOAD_IMAGE) {
            payload.insert(IMAGE_FIELD.into(), QValue::from(base64::engine::general_purpose::STANDARD.encode(image)));
        }
        PointStruct::new(point_id(&product.id), vector.to_vec(), payload)
    }

    /// The point of catalog key `key`, described before.
    fn keyed_point(&self, key: Key, vector: &[f32], image: Option<&[u8]>) -> Result<PointStruct> {
        let product = self.products.get(&key).with_context(|| format!("no product id known for key {key}"))?;
        Ok(QdrantIndex::point(product, (key >= 0).then_some(key), vector, image))
    }

    /// Upserts many points in batches of [`UPSERT_BATCH`].
    pub fn upsert_many(&mut self, rows: &[(Key, Vec<f32>)]) -> Result<()> {
        for chunk in rows.chunks(UPSERT_BATCH) {
            let points = chunk.iter().map(|(k, v)| self.keyed_point(*k, v, None)).collect::<Result<Vec<_>>>()?;
            self.upsert_points(points)?;
        }
        self.len = self.count()?;
        Ok(())
    }

    /// Adds or replaces one product's point, with its photo when small enough to travel in the
    /// payload.
    pub fn put_product(&mut self, key: Key, product: StoredProduct, vector: &[f32], image: Option<&[u8]>) -> Result<()> {
        self.put_products(vec![ProductPoint { key, product, vector: vector.to_vec(), image: image.map(<[u8]>::to_vec) }])
    }

    /// [`QdrantIndex::put_product`] for many, sent in batches.
    pub fn put_products(&mut self, rows: Vec<ProductPoint>) -> Result<()> {
        if let Some(row) = rows.iter().find(|row| row.vector.len() != self.dim) {
            bail!("vector has {} dimensions, the collection holds {}-d vectors", row.vector.len(), self.dim);
        }
        let points: Vec<PointStruct> = rows.iter().map(|row| QdrantIndex::point(&row.product, (row.key >= 0).then_some(row.key), &row.vector, row.image.as_deref())).collect();
        for chunk in points.chunks(UPSERT_BATCH) {
            self.upsert_points(chunk.to_vec())?;
        }
        self.products.extend(rows.into_iter().map(|row| (row.key, row.product)));
        self.len = self.count()?;
        Ok(())
    }

    fn upsert_points(&self, points: Vec<PointStruct>) -> Result<()> {
        let request = UpsertPointsBuilder::new(self.points.clone(), points).wait(true).ordering(self.ordering());
        self.retry("upserting points", || self.client.upsert_points(request.clone()))?;
        Ok(())
    }

    /// Every point id in the collection, with the catalog key its payload records (none for a
    /// product added through a server without a catalog).
    fn all_points(&self) -> Result<HashMap<String, Option<Key>>> {
        let mut out = HashMap::new();
        let mut offset: Option<PointId> = None;
        loop {
            let mut request =
                ScrollPointsBuilder::new(self.points.clone()).limit(1000).with_payload(PayloadIncludeSelector { fields: vec![KEY_FIELD.to_string()] }).with_vectors(false);
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

    /// Writes products a server without the catalog added, with the vectors they have, as
    /// they were (no catalog key); how many had a vector to write.
    pub fn carry(&mut self, products: &[ProductWithoutCatalog]) -> Result<usize> {
        let points: Vec<PointStruct> = products.iter().filter_map(|p| Some(QdrantIndex::point(&p.product, None, p.vector.as_deref()?, p.image.as_deref()))).collect();
        for chunk in points.chunks(UPSERT_BATCH) {
            self.upsert_points(chunk.to_vec())?;
        }
        self.len = self.count()?;
        Ok(points.len())
    }

    /// Every product of collection `name` that a server without the catalog added (its point
    /// has no catalog key), with its photo and, if `with_vectors`, its vector.
    pub fn products_without_catalog(&self, name: &str, with_vectors: bool) -> Result<Vec<ProductWithoutCatalog>> {
        let mut out = Vec::new();
        let mut offset: Option<PointId> = None;
        loop {
            let mut request =
                ScrollPointsBuilder::new(name.to_string()).filter(QFilter::must([Condition::is_empty(KEY_FIELD)])).limit(256).with_payload(true).with_vectors(with_vectors);
            if let Some(o) = offset.clone() {
                request = request.offset(o);
            }
            let page = self.retry("listing products added without the catalog", || self.client.scroll(request.clone()))?;
            for point in page.result {
                let vector = if with_vectors { dense_vector(&point) } else { None };
                let image = point.payload.get(IMAGE_FIELD).and_then(string).and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok());
                if let Some(product) = stored_product(point.payload) {
                    out.push(ProductWithoutCatalog { product, image, vector });
                }
            }
            match page.next_page_offset {
                Some(next) => offset = Some(next),
                None => break,
            }
        }
        Ok(out)
    }

    /// Makes the collection agree with the catalog: upserts every product that is missing (or
    /// whose recorded key differs), deletes points a catalog wrote whose product is gone.
    /// Products added through a server without a catalog (no key in their payload) are kept:
    /// the catalog never knew them, so their absence from it says nothing. `keys` are the
    /// catalog's products; `vector` gives one's vector in the search space, `image` its photo.
    /// Vectors are fetched 256 at a time as they are sent, so a million-product sync holds no
    /// second copy of them.
    pub fn sync(&mut self, keys: &[Key], vector: impl Fn(Key) -> Option<Vec<f32>>, image: impl Fn(Key) -> Option<Vec<u8>>) -> Result<SyncReport> {
        let started = std::time::Instant::now();
        let existing = self.all_points()?;
        let mut report = SyncReport { in_catalog: keys.len(), in_collection_before: existing.len(), collection: self.points.clone(), ..Default::default() };
        // Points are matched by id alone; vectors sent in another search space (`tune` at the
        // same dimension, an untuned catalog centred anew) would stay and be searched with
        // queries mapped in the new one. So a sample is read back, and all are sent again if
        // it differs.
        let resend = self.holds_other_vectors(keys, &vector)?;
        let mut wanted: HashSet<String> = HashSet::new();
        let mut missing = Vec::new();
        for &key in keys {
            let product = self.products.get(&key).with_context(|| format!("no product id known for key {key}"))?;
            let pid = point_id(&product.id);
            let present = existing.get(&pid) == Some(&Some(key));
            if !present || resend {
                missing.push(key);
                report.resent += usize::from(present);
            }
            wanted.insert(pid);
        }
        let stale: Vec<PointId> = existing.iter().filter(|(p, key)| key.is_some() && !wanted.contains(*p)).map(|(p, _)| PointId::from(p.clone())).collect();
        report.added = missing.len() - report.resent;
        report.deleted = stale.len();
        for chunk in missing.chunks(UPSERT_BATCH) {
            let points = chunk
                .iter()
                .map(|&k| {
                    let vector = vector(k).with_context(|| format!("no vector for key {k}"))?;
                    self.keyed_point(k, &vector, image(k).as_deref())
                })
                .collect::<Result<Vec<_>>>()?;
            self.upsert_points(points)?;
        }
        for chunk in stale.chunks(1000) {
            let request = DeletePointsBuilder::new(self.points.clone()).points(PointsIdsList { ids: chunk.to_vec() }).wait(true).ordering(self.ordering());
            self.retry("deleting points", || self.client.delete_points(request.clone()))?;
        }
        self.len = self.count()?;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
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

    /// A product's payload and vector (in the search space), read from its point.
    pub fn product(&self, id: &str) -> Result<Option<(StoredProduct, Vec<f32>)>> {
        let request = GetPointsBuilder::new(self.points.clone(), vec![PointId::from(point_id(id))])
            .with_payload(PayloadExcludeSelector::new(vec![IMAGE_FIELD.to_string()]))
            .with_vectors(true);
        let response = self.retry("reading a point", || self.client.get_points(request.clone()))?;
        let Some(point) = response.result.into_iter().next() else { return Ok(None) };
        let vector = dense_vector(&point).with_context(|| format!("the point of product {id:?} has no plain vector"))?;
        Ok(stored_product(point.payload).map(|product| (product, vector)))
    }

    /// The photo kept in a product's payload, if it has one.
    pub fn product_image(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let request = GetPointsBuilder::new(self.points.clone(), vec![PointId::from(point_id(id))])
            .with_payload(PayloadIncludeSelector { fields: vec![IMAGE_FIELD.to_string()] })
            .with_vectors(false);
        let response = self.retry("reading a photo", || self.client.get_points(request.clone()))?;
        let Some(point) = response.result.into_iter().next() else { return Ok(None) };
        Ok(point.payload.get(IMAGE_FIELD).and_then(string).and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok()))
    }

    /// Deletes a product's point by its id; whether there was one.
    pub fn remove_product(&mut self, id: &str) -> Result<bool> {
        let pid = PointId::from(point_id(id));
        let request = GetPointsBuilder::new(self.points.clone(), vec![pid.clone()]).with_payload(false).with_vectors(false);
        let existed = !self.retry("reading a point", || self.client.get_points(request.clone()))?.result.is_empty();
        let request = DeletePointsBuilder::new(self.points.clone()).points(PointsIdsList { ids: vec![pid] }).wait(true).ordering(self.ordering());
        self.retry("deleting a point", || self.client.delete_points(request.clone()))?;
        self.products.retain(|_, p| p.id != id);
        self.len = self.count()?;
        Ok(existed)
    }

    /// Deletes the point whose payload records catalog key `key`, if any.
    fn remove_catalog_key(&mut self, key: Key) -> Result<()> {
        let filter = QFilter::must([Condition::matches(KEY_FIELD, key)]);
        let request = DeletePointsBuilder::new(self.points.clone()).points(filter).wait(true).ordering(self.ordering());
        self.retry("deleting a point", || self.client.delete_points(request.clone()))?;
        self.len = self.count()?;
        Ok(())
    }

    /// Points in the collection now, as Qdrant counts them (other servers' writes included).
    pub fn count_now(&self) -> Result<usize> {
        self.count()
    }

    /// How many products have each value of each of `columns` (Qdrant's facet counts; a
    /// column needs a keyword index, as `--filter-columns` gives a new collection), most
    /// frequent first, at most `limit` values a column.
    pub fn facets(&self, columns: &[String], limit: u64) -> Result<Vec<(String, String, usize)>> {
        let mut out = Vec::new();
        for column in columns {
            let request = FacetCountsBuilder::new(self.points.clone(), column.clone()).limit(limit).exact(true);
            let response = match self.run(self.client.facet(request.clone())) {
                Ok(response) => response,
                // A column without a keyword index has no facet: left out, not an error.
                Err(qdrant_client::QdrantError::ResponseError { status }) if matches!(status.code() as i32, 3 | 5) => {
                    tracing::debug!("no facet for {column:?}: {}", status.message());
                    continue;
                }
                Err(_) => self.retry("counting values", || self.client.facet(request.clone()))?,
            };
            for hit in response.hits {
                if let Some(qdrant_client::qdrant::facet_value::Variant::StringValue(value)) = hit.value.and_then(|v| v.variant) {
                    out.push((column.clone(), value, hit.count as usize));
                }
            }
        }
        Ok(out)
    }

    /// The side collection that holds this collection's description.
    fn description_collection(&self) -> String {
        format!("{}_lookalike", self.config.collection)
    }

    /// Keeps `bytes` (the collection's description: model, search space) beside the
    /// collection, in points of a side collection, replacing what was there. A tuned search
    /// space is megabytes, too large for Qdrant's collection metadata, so it is cut into
    /// chunks, each checked by the SHA-256 of the whole.
    pub fn write_description(&self, bytes: &[u8]) -> Result<()> {
        let name = self.description_collection();
        if !self.retry("checking the description", || self.client.collection_exists(name.clone()))? {
            let mut create = CreateCollectionBuilder::new(name.clone()).vectors_config(VectorParamsBuilder::new(1, Distance::Dot));
            if let Some(replicas) = self.config.replicas {
                create = create.replication_factor(replicas);
            }
            self.retry("creating the description collection", || self.client.create_collection(create.clone()))?;
        }
        let digest = hex::encode(Sha256::digest(bytes));
        let chunks: Vec<&[u8]> = bytes.chunks(DESCRIPTION_CHUNK).collect();
        let points: Vec<PointStruct> = chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| {
                let payload: HashMap<String, QValue> = HashMap::from([
                    ("index".to_string(), QValue::from(i as i64)),
                    ("count".to_string(), QValue::from(chunks.len() as i64)),
                    ("sha256".to_string(), QValue::from(digest.clone())),
                    ("data".to_string(), QValue::from(base64::engine::general_purpose::STANDARD.encode(chunk))),
                ]);
                PointStruct::new(i as u64, vec![1.0], payload)
            })
            .collect();
        for point in points {
            let request = UpsertPointsBuilder::new(name.clone(), vec![point]).wait(true).ordering(WriteOrdering { r#type: WriteOrderingType::Strong as i32 });
            self.retry("writing the description", || self.client.upsert_points(request.clone()))?;
        }
        // Chunks of a longer, older description.
        let request = DeletePointsBuilder::new(name.clone())
            .points(QFilter::must([Condition::range("index", qdrant_client::qdrant::Range { gte: Some(chunks.len() as f64), ..Default::default() })]))
            .wait(true);
        self.retry("trimming the description", || self.client.delete_points(request.clone()))?;
        Ok(())
    }

    /// The SHA-256 of the description [`QdrantIndex::write_description`] kept, as its first
    /// chunk records it (one small read: how a server without the catalog notices a new one);
    /// `None` when there is none.
    pub fn description_digest(&self) -> Result<Option<String>> {
        let request = GetPointsBuilder::new(self.description_collection(), vec![PointId::from(0u64)])
            .with_payload(PayloadIncludeSelector { fields: vec!["sha256".to_string()] })
            .with_vectors(false);
        // One request, every few seconds on every replica: a missing side collection is
        // Qdrant's "not found", not a question asked first.
        let response = self.retry("reading the description's digest", || async {
            match self.client.get_points(request.clone()).await {
                Err(qdrant_client::QdrantError::ResponseError { status }) if status.code() as i32 == 5 => Ok(None),
                other => other.map(Some),
            }
        })?;
        Ok(response.and_then(|r| r.result.into_iter().next()).and_then(|point| point.payload.get("sha256").and_then(string).map(str::to_string)))
    }

    /// The description [`QdrantIndex::write_description`] kept and its SHA-256, or `None` when
    /// there is none (a collection filled before descriptions were kept) or it is half-written.
    pub fn read_description(&self) -> Result<Option<(Vec<u8>, String)>> {
        let name = self.description_collection();
        if !self.retry("checking the description", || self.client.collection_exists(name.clone()))? {
            return Ok(None);
        }
        let request = ScrollPointsBuilder::new(name).limit(1000).with_payload(true).with_vectors(false);
        let page = self.retry("reading the description", || self.client.scroll(request.clone()))?;
        let mut chunks: BTreeMap<i64, (i64, String, Vec<u8>)> = BTreeMap::new();
        for point in page.result {
            let field = |name: &str| point.payload.get(name);
            let (Some(index), Some(count), Some(digest), Some(data)) =
                (field("index").and_then(integer), field("count").and_then(integer), field("sha256").and_then(string), field("data").and_then(string))
            else {
                continue;
            };
            let data = base64::engine::general_purpose::STANDARD.decode(data).context("the collection description is not base64")?;
            chunks.insert(index, (count, digest.to_string(), data));
        }
        let Some((count, digest, _)) = chunks.values().next().cloned() else { return Ok(None) };
        let bytes: Vec<u8> = chunks.values().take(count as usize).flat_map(|(_, _, data)| data.iter().copied()).collect();
        if chunks.len() as i64 != count || hex::encode(Sha256::digest(&bytes)) != digest {
            tracing::warn!("the description of collection {:?} is incomplete or being rewritten", self.config.collection);
            return Ok(None);
        }
        Ok(Some((bytes, digest)))
    }
}

/// Qdrant's form of `filter`: all columns must match, any value of a column will do.
fn qdrant_filter(filter: &Filter) -> Option<QFilter> {
    let conditions: Vec<Condition> = filter.conditions().map(|(column, values)| Condition::matches(column.to_string(), values.to_vec())).collect();
    (!conditions.is_empty()).then(|| QFilter::must(conditions))
}

/// A point's one unnamed dense vector; `None` for named or other vectors.
fn dense_vector(point: &qdrant_client::qdrant::RetrievedPoint) -> Option<Vec<f32>> {
    match point.vectors.as_ref()?.get_vector()? {
        qdrant_client::qdrant::vector_output::Vector::Dense(dense) => Some(dense.data),
        _ => None,
    }
}

/// The product a point's payload describes; `None` for a point lookalike did not write.
fn stored_product(payload: HashMap<String, QValue>) -> Option<StoredProduct> {
    let id = payload.get(ID_FIELD).and_then(string)?.to_string();
    let colour = payload
        .get(COLOUR_FIELD)
        .and_then(string)
        .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok())
        .map(|bytes| bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect());
    let metadata = payload.iter().filter(|(k, _)| !k.starts_with("_lookalike_")).filter_map(|(k, v)| string(v).map(|v| (k.clone(), v.to_string()))).collect();
    Some(StoredProduct { id, metadata, colour })
}

fn string(v: &QValue) -> Option<&str> {
    match &v.kind {
        Some(qdrant_client::qdrant::value::Kind::StringValue(s)) => Some(s),
        _ => None,
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
        _ if message.contains("InvalidCertificate") => {
            format!("{message} (the server's TLS certificate is not trusted here: add its CA to the system's certificates, or point SSL_CERT_FILE at it)")
        }
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

    /// A collection made in place of another (a swap's) is made as that one was where this
    /// run's settings leave it open: a `sync --swap` without `--shards 3 --replicas 2` keeps a
    /// replicated collection replicated; what the run gives wins; indexes add up.
    #[test]
    fn a_collection_made_in_place_of_another_inherits_what_the_run_leaves_open() {
        let run = |shards, quantize| QdrantConfig {
            url: "http://127.0.0.1:6334".into(),
            api_key: None,
            collection: "shop".into(),
            shards,
            replicas: None,
            write_consistency: None,
            quantize,
            write_ordering: WriteOrderingType::Weak,
            timeout: Duration::from_secs(30),
            filter_columns: vec!["articleType".into(), "gender".into()],
            exact: false,
        };
        let old = CollectionLayout { shards: 3, replicas: Some(2), write_consistency: Some(2), quantized: true, keyword_columns: vec!["gender".into(), "season".into()] };
        let made = run(None, None).inheriting(&old);
        assert_eq!((made.shards, made.replicas, made.write_consistency, made.quantize), (Some(3), Some(2), Some(2), Some(true)));
        assert_eq!(made.filter_columns, ["articleType", "gender", "season"]);
        let given = run(Some(6), Some(false)).inheriting(&old);
        assert_eq!((given.shards, given.replicas, given.quantize), (Some(6), Some(2), Some(false)), "--shards and --no-quantize given win");
        let unknown = run(None, None).inheriting(&CollectionLayout::default());
        assert_eq!((unknown.shards, unknown.replicas, unknown.quantize), (None, None, None), "nothing read, nothing taken");
    }
}
