//! Collections as wholes: whether one exists, making one (dimension, shards, copies,
//! quantisation, keyword indexes), how one was made, deleting one, and the side collection
//! (`NAME_lookalike`) that holds the description servers without the catalog search by.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use qdrant_client::qdrant::{
    point_id::PointIdOptions, Condition, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, DeletePointsBuilder, Distance, FieldType, Filter as QFilter, GetPointsBuilder,
    PayloadIncludeSelector, PointId, PointStruct, ScalarQuantizationBuilder, ScrollPointsBuilder, UpsertPointsBuilder, Value as QValue, VectorParamsBuilder, WriteOrdering,
    WriteOrderingType,
};
use sha2::{Digest, Sha256};

use super::points::{dense_vector, integer, string};
use super::removals::REMOVED_FIELD;
use super::{is_not_found, point_id, CollectionLayout, IfMissing, QdrantIndex, ID_FIELD, KEY_FIELD, PHOTO_FIELD};
use crate::types::{Key, RESERVED_COLUMN_PREFIX};

/// Bytes of the collection description per point of the side collection: far below gRPC's
/// 4 MiB message limit once base64 has grown them by a third.
pub(super) const DESCRIPTION_CHUNK: usize = 1 << 20;

impl QdrantIndex {
    /// Whether the cluster has collection `name`.
    pub fn collection_exists(&self, name: &str) -> Result<bool> {
        self.retry("checking a collection", || self.client.collection_exists(name.to_string()))
    }

    /// The names of the cluster's collections.
    pub fn collection_names(&self) -> Result<Vec<String>> {
        let response = self.retry("listing collections", || self.client.list_collections())?;
        Ok(response.collections.into_iter().map(|c| c.name).collect())
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
    /// nothing, nor one a server without the catalog wrote: its vector is that server's, not a
    /// sign of another search space).
    pub fn holds_other_vectors(&self, keys: &[Key], vector: impl Fn(Key) -> Option<Vec<f32>>) -> Result<bool> {
        let sample: Vec<(String, Key)> =
            keys.iter().step_by((keys.len() / 16).max(1)).take(16).filter_map(|&key| self.products.get(&key).map(|p| (point_id(&p.id), key))).collect();
        if sample.is_empty() {
            return Ok(false);
        }
        let request = GetPointsBuilder::new(self.points.clone(), sample.iter().map(|(pid, _)| PointId::from(pid.clone())).collect::<Vec<_>>())
            .with_payload(PayloadIncludeSelector { fields: vec![KEY_FIELD.to_string()] })
            .with_vectors(true);
        let response = self.retry("reading points back", || self.client.get_points(request.clone()))?;
        let stored: HashMap<String, (Option<Key>, Vec<f32>)> = response
            .result
            .into_iter()
            .filter_map(|point| {
                let vector = dense_vector(&point)?;
                let key = point.payload.get(KEY_FIELD).and_then(integer);
                let Some(PointIdOptions::Uuid(uuid)) = point.id.and_then(|i| i.point_id_options) else { return None };
                Some((uuid, (key, vector)))
            })
            .collect();
        Ok(sample.iter().any(|(pid, key)| match (stored.get(pid), vector(*key)) {
            (Some((Some(written), stored)), Some(wanted)) if written == key => stored.len() != wanted.len() || stored.iter().zip(&wanted).any(|(a, b)| (a - b).abs() > 1e-4),
            _ => false,
        }))
    }

    pub(super) fn ensure_collection(&self) -> Result<()> {
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
            for column in &self.config.filter_columns {
                self.index_keyword_field(column)?;
            }
            self.index_own_fields()
        }
    }

    /// Keyword indexes on the fields lookalike itself filters points by: the product id and
    /// the photo hash. Also for a collection made before the photo hash was kept (indexing a
    /// field that has its index already changes nothing).
    pub(super) fn index_own_fields(&self) -> Result<()> {
        self.index_keyword_field(ID_FIELD)?;
        self.index_keyword_field(PHOTO_FIELD)
    }

    fn index_keyword_field(&self, column: &str) -> Result<()> {
        let field = CreateFieldIndexCollectionBuilder::new(self.points.clone(), column.to_string(), FieldType::Keyword).wait(true);
        self.retry("indexing a payload field", || self.client.create_field_index(field.clone()))?;
        Ok(())
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
            .filter(|(field, schema)| !field.starts_with(RESERVED_COLUMN_PREFIX) && schema.data_type == qdrant_client::qdrant::PayloadSchemaType::Keyword as i32)
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
    pub(super) fn fits(&self, shape: (u64, i32)) -> bool {
        shape == (self.dim as u64, Distance::Dot as i32)
    }

    /// The collection's vector size and distance; `None` for named or other vectors.
    pub(super) fn collection_shape(&self) -> Result<Option<(u64, i32)>> {
        self.shape_of(&self.points)
    }

    /// Collection `name`'s vector size and distance, as [`QdrantIndex::collection_shape`].
    pub(super) fn shape_of(&self, name: &str) -> Result<Option<(u64, i32)>> {
        let name = name.to_string();
        let info = self.retry("reading the collection", || self.client.collection_info(name.clone()))?;
        Ok(info.result.and_then(|r| r.config).and_then(|c| c.params).and_then(|p| p.vectors_config).and_then(|v| v.config).and_then(|c| match c {
            qdrant_client::qdrant::vectors_config::Config::Params(p) => Some((p.size, p.distance)),
            _ => None,
        }))
    }

    /// The side collection that holds this collection's description.
    pub(super) fn description_collection(&self) -> String {
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
                Err(e) if is_not_found(&e) => Ok(None),
                other => other.map(Some),
            }
        })?;
        Ok(response.and_then(|r| r.result.into_iter().next()).and_then(|point| point.payload.get("sha256").and_then(string).map(str::to_string)))
    }

    /// The description [`QdrantIndex::write_description`] kept and its SHA-256, or `None` when
    /// there is none (a collection filled before descriptions were kept) or it is half-written.
    pub fn read_description(&self) -> Result<Option<(Vec<u8>, String)>> {
        // The description's chunks, not the removals recorded beside them; two a page, as each
        // is over a megabyte and a page should stay under gRPC's usual 4 MiB. No side
        // collection: nothing described (yet).
        let request =
            ScrollPointsBuilder::new(self.description_collection()).filter(QFilter::must([Condition::is_empty(REMOVED_FIELD)])).limit(2).with_payload(true).with_vectors(false);
        let mut chunks: BTreeMap<i64, (i64, String, String)> = BTreeMap::new();
        self.scroll_all("reading the description", request, IfMissing::Empty, |point| {
            let field = |name: &str| point.payload.get(name);
            if let (Some(index), Some(count), Some(digest), Some(data)) =
                (field("index").and_then(integer), field("count").and_then(integer), field("sha256").and_then(string), field("data").and_then(string))
            {
                chunks.insert(index, (count, digest.to_string(), data.to_string()));
            }
        })?;
        let Some((count, digest, _)) = chunks.values().next().cloned() else { return Ok(None) };
        let mut bytes = Vec::new();
        for (_, _, data) in chunks.values() {
            bytes.extend(base64::engine::general_purpose::STANDARD.decode(data).context("the collection description is not base64")?);
        }
        if chunks.len() as i64 != count || hex::encode(Sha256::digest(&bytes)) != digest {
            tracing::warn!("the description of collection {:?} is incomplete or being rewritten", self.config.collection);
            return Ok(None);
        }
        Ok(Some((bytes, digest)))
    }
}
