//! The collection's points: each product's vector with its payload (id, metadata, colour, small
//! photo), written one by one or in batches, synced against a catalog, read back, removed, and
//! counted by facet.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use qdrant_client::qdrant::{
    point_id::PointIdOptions, Condition, CountPointsBuilder, DeletePayloadPointsBuilder, DeletePointsBuilder, FacetCountsBuilder, Filter as QFilter, GetPointsBuilder,
    PayloadExcludeSelector, PayloadIncludeSelector, PointId, PointStruct, PointsIdsList, Range, ScrollPointsBuilder, SetPayloadPointsBuilder, UpsertPointsBuilder, Value as QValue,
};

use super::{
    point_id, qdrant_filter, IfMissing, QdrantIndex, COLOUR_FIELD, ID_FIELD, IMAGE_FIELD, KEY_FIELD, LISTINGS_FIELD, MAX_PAYLOAD_IMAGE, PATCHED_FIELD, PHOTO_FIELD, SHARED_FIELD,
};
use crate::types::{Filter, Key, Metadata, MetadataPatch, Product, IMAGE_LINK_COLUMNS, RESERVED_COLUMN_PREFIX};

/// Points per upsert request: large enough to amortise the round trip, small enough to stay far
/// below gRPC's 4 MiB message limit at 2048 dimensions (256 × 8 KiB = 2 MiB).
pub(super) const UPSERT_BATCH: usize = 256;

/// What a point carries about its product: all a server needs to show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredProduct {
    pub id: String,
    pub metadata: Metadata,
    /// The product's colour descriptor ([`crate::colour::ColourDescriptor::values`]).
    pub colour: Option<Vec<f32>>,
    /// The content hash of its photo ([`crate::types::content_hash`]): products listed with the
    /// same photo (size variants) are one search result. `None` on points written before
    /// lookalike kept it (`sync` sends those again).
    pub photo: Option<String>,
    /// What the collection has marked about the photo's other listings: every write marks
    /// the points whose photo other points have (what a writer sets here is not written).
    pub photo_listings: PhotoListings,
}

/// How many points of a collection have a point's photo, as the collection marked it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PhotoListings {
    /// Unmarked: no other point had the photo when one of its points was last written.
    #[default]
    Own,
    /// This many points (two or more) had the photo when one of them was last written.
    Counted(usize),
    /// Marked as shared by a lookalike that did not count them.
    Uncounted,
}

impl PhotoListings {
    /// Whether a search that found `found` listings of the photo may have left some out:
    /// only then must it ask the collection for the rest. (An unmarked photo found more than
    /// once lost its mark to a failed write: asked, not trusted.)
    pub fn more_than(self, found: usize) -> bool {
        match self {
            PhotoListings::Own => found > 1,
            PhotoListings::Counted(listings) => found < listings,
            PhotoListings::Uncounted => true,
        }
    }
}

impl StoredProduct {
    /// What a point carries about catalog product `product`, whose colour descriptor is
    /// `colour`.
    pub fn of(product: Product, colour: Option<Vec<f32>>) -> StoredProduct {
        let photo = (!product.content_hash.is_empty()).then_some(product.content_hash);
        StoredProduct { id: product.id, metadata: product.metadata, colour, photo, photo_listings: PhotoListings::Own }
    }
}

/// What a point's payload says of the catalog product it was written for.
pub(super) struct WrittenPoint {
    key: Option<Key>,
    photo: Option<String>,
}

/// A product added to a collection through a server without the catalog (its point carries no
/// catalog key): all a `sync` that moves the points elsewhere can carry over.
#[derive(Debug, Clone)]
pub struct ProductWithoutCatalog {
    pub product: StoredProduct,
    /// Its photo as the payload carries it (up to [`MAX_PAYLOAD_IMAGE`]: a larger one travels
    /// as a reduced copy, and points written before lookalike made copies carry none).
    pub image: Option<Vec<u8>>,
    /// Its vector in the collection's search space, when asked for.
    pub vector: Option<Vec<f32>>,
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
    /// Points sent again to carry their photo, which they were written without (by a lookalike
    /// before points carried copies of photos over 64 KiB).
    pub photos_added: usize,
    /// Points without their photo left as they are because the catalog cannot read the photo
    /// (a file moved after the import: `lookalike check` lists them).
    pub photos_unreadable: usize,
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
    /// Catalog products removed through servers without the catalog since the last sync: removed
    /// from the catalog too (recorded beside the description), so the sync does not send them back.
    pub removed_without_catalog: usize,
    /// Catalog products whose metadata servers without the catalog changed since the last
    /// sync: the catalog took the collection's metadata first, so the sync keeps the change.
    pub patched_without_catalog: usize,
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

/// A point's one unnamed dense vector; `None` for named or other vectors.
pub(super) fn dense_vector(point: &qdrant_client::qdrant::RetrievedPoint) -> Option<Vec<f32>> {
    match point.vectors.as_ref()?.get_vector()? {
        qdrant_client::qdrant::vector_output::Vector::Dense(dense) => Some(dense.data),
        _ => None,
    }
}

/// The product a point's payload describes; `None` for a point lookalike did not write.
pub(super) fn stored_product(payload: HashMap<String, QValue>) -> Option<StoredProduct> {
    let id = payload.get(ID_FIELD).and_then(string)?.to_string();
    let colour = payload
        .get(COLOUR_FIELD)
        .and_then(string)
        .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok())
        .map(|bytes| bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect());
    let photo = payload.get(PHOTO_FIELD).and_then(string).map(str::to_string);
    let photo_listings = match (payload.get(LISTINGS_FIELD).and_then(integer), payload.get(SHARED_FIELD).map(|v| &v.kind)) {
        (Some(n), _) => usize::try_from(n).map_or(PhotoListings::Uncounted, PhotoListings::Counted),
        (None, Some(Some(qdrant_client::qdrant::value::Kind::BoolValue(true)))) => PhotoListings::Uncounted,
        _ => PhotoListings::Own,
    };
    let metadata = payload.iter().filter(|(k, _)| !k.starts_with(RESERVED_COLUMN_PREFIX)).filter_map(|(k, v)| string(v).map(|v| (k.clone(), v.to_string()))).collect();
    Some(StoredProduct { id, metadata, colour, photo, photo_listings })
}

pub(super) fn string(v: &QValue) -> Option<&str> {
    match &v.kind {
        Some(qdrant_client::qdrant::value::Kind::StringValue(s)) => Some(s),
        _ => None,
    }
}

pub(super) fn integer(v: &QValue) -> Option<i64> {
    match v.kind {
        Some(qdrant_client::qdrant::value::Kind::IntegerValue(i)) => Some(i),
        _ => None,
    }
}

impl QdrantIndex {
    /// Tells the index who `key` is (the point id and payload of its vector).
    pub fn describe(&mut self, key: Key, product: StoredProduct) {
        self.products.insert(key, product);
    }

    /// A point: the vector, the product's payload, the catalog key when the product has one
    /// (`key` ≥ 0) and its photo when one is given.
    pub(super) fn point(product: &StoredProduct, key: Option<Key>, vector: &[f32], image: Option<&[u8]>) -> PointStruct {
        let mut payload: HashMap<String, QValue> = product.metadata.iter().map(|(k, v)| (k.clone(), QValue::from(v.clone()))).collect();
        if let Some(key) = key {
            payload.insert(KEY_FIELD.into(), QValue::from(key));
        }
        payload.insert(ID_FIELD.into(), QValue::from(product.id.clone()));
        if let Some(colour) = &product.colour {
            let bytes: Vec<u8> = colour.iter().flat_map(|v| v.to_le_bytes()).collect();
            payload.insert(COLOUR_FIELD.into(), QValue::from(base64::engine::general_purpose::STANDARD.encode(bytes)));
        }
        if let Some(photo) = &product.photo {
            payload.insert(PHOTO_FIELD.into(), QValue::from(photo.clone()));
        }
        if let Some(image) = image.filter(|i| i.len() <= MAX_PAYLOAD_IMAGE) {
            payload.insert(IMAGE_FIELD.into(), QValue::from(base64::engine::general_purpose::STANDARD.encode(image)));
        }
        PointStruct::new(point_id(&product.id), vector.to_vec(), payload)
    }

    /// The point of catalog key `key`, described before.
    pub(super) fn keyed_point(&self, key: Key, vector: &[f32], image: Option<&[u8]>) -> Result<PointStruct> {
        let product = self.products.get(&key).with_context(|| format!("no product id known for key {key}"))?;
        Ok(QdrantIndex::point(product, (key >= 0).then_some(key), vector, image))
    }

    /// Upserts many points in batches of `UPSERT_BATCH`.
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

    pub(super) fn upsert_points(&self, points: Vec<PointStruct>) -> Result<()> {
        let photos: Vec<String> = points.iter().filter_map(|p| p.payload.get(PHOTO_FIELD).and_then(string).map(str::to_string)).collect();
        let request = UpsertPointsBuilder::new(self.points.clone(), points).wait(true).ordering(self.ordering());
        self.retry("upserting points", || self.client.upsert_points(request.clone()))?;
        // An upsert replaces a point's whole payload, its mark included, and a photo it
        // brings may be one other points have: the marks of its photos are made again.
        self.mark_shared_photos(&photos)
    }

    /// Marks every point whose photo (one of `photos`) other points have too with the number
    /// of points that have it: a search asks the collection for a hit's other listings only
    /// where its point is marked and the search did not find that many itself, so a
    /// collection where every photo is its own pays no second request a search, and one of
    /// size variants only where a filter or the page's depth left some out. Read after the
    /// write, so of two servers adding listings of one photo at once, the later counts both;
    /// a count is only ever raised, so the earlier's smaller count cannot land over it. A
    /// count outlives the listing that made it (a search then asks, and finds fewer).
    pub(super) fn mark_shared_photos(&self, photos: &[String]) -> Result<()> {
        if photos.is_empty() {
            return Ok(());
        }
        // Counted first: where there are as many points as photos (every photo its own, as in
        // most catalogs), no photo needs a mark, and no payloads need reading.
        let distinct: HashSet<&String> = photos.iter().collect();
        let with_photos = QFilter::must([Condition::matches(PHOTO_FIELD, distinct.iter().map(|p| p.to_string()).collect::<Vec<_>>())]);
        let count = CountPointsBuilder::new(self.points.clone()).filter(with_photos.clone()).exact(true);
        let count = self.retry("counting the products listed with a photo", || self.client.count(count.clone()))?.result.map_or(0, |r| r.count as usize);
        if count <= distinct.len() {
            return Ok(());
        }
        let listed = self.strings_of("reading the photos of the products written", self.points.clone(), with_photos, PHOTO_FIELD, IfMissing::Fail)?;
        let mut listings: HashMap<&str, usize> = HashMap::new();
        for photo in &listed {
            *listings.entry(photo.as_str()).or_default() += 1;
        }
        // One request for each count (the sizes of a product line mostly have one).
        let mut by_count: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (photo, n) in listings.into_iter().filter(|&(_, n)| n > 1) {
            by_count.entry(n).or_default().push(photo.to_string());
        }
        for (n, shared) in by_count {
            let mark = HashMap::from([(LISTINGS_FIELD.to_string(), QValue::from(n as i64))]);
            let not_counted_as_many = Condition::range(LISTINGS_FIELD, Range { gte: Some(n as f64), ..Range::default() });
            let points = QFilter { must: vec![Condition::matches(PHOTO_FIELD, shared)], must_not: vec![not_counted_as_many], ..QFilter::default() };
            let request = SetPayloadPointsBuilder::new(self.points.clone(), mark).points_selector(points).wait(true).ordering(self.ordering());
            self.retry("marking products listed with one photo", || self.client.set_payload(request.clone()))?;
        }
        Ok(())
    }

    /// Every point id in the collection, with the catalog key and the photo hash its payload
    /// records (no key for a product added through a server without a catalog).
    pub(super) fn all_points(&self) -> Result<HashMap<String, WrittenPoint>> {
        let fields = vec![KEY_FIELD.to_string(), PHOTO_FIELD.to_string()];
        let request = ScrollPointsBuilder::new(self.points.clone()).limit(1000).with_payload(PayloadIncludeSelector { fields }).with_vectors(false);
        let mut out = HashMap::new();
        self.scroll_all("listing points", request, IfMissing::Fail, |point| {
            if let Some(PointIdOptions::Uuid(uuid)) = point.id.and_then(|i| i.point_id_options) {
                let written = WrittenPoint { key: point.payload.get(KEY_FIELD).and_then(integer), photo: point.payload.get(PHOTO_FIELD).and_then(string).map(str::to_string) };
                out.insert(uuid, written);
            }
        })?;
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

    /// The ids of the catalog's products whose points carry no photo though their product links
    /// none of the shop's own ([`Product::image_link_of`], which servers redirect to): points a
    /// lookalike wrote before points carried copies of photos over 64 KiB, or whose photo the
    /// catalog could not read. `sync` sends them again; `info` counts them. One small read: the
    /// ids and link columns of points without a photo.
    pub fn ids_without_photo(&self) -> Result<HashSet<String>> {
        let filter = QFilter { must: vec![Condition::is_empty(IMAGE_FIELD)], must_not: vec![Condition::is_empty(KEY_FIELD)], ..Default::default() };
        let fields = [ID_FIELD].into_iter().chain(IMAGE_LINK_COLUMNS).map(str::to_string).collect();
        let request = ScrollPointsBuilder::new(self.points.clone()).filter(filter).limit(1000).with_payload(PayloadIncludeSelector { fields }).with_vectors(false);
        let mut ids = HashSet::new();
        self.scroll_all("listing points without a photo", request, IfMissing::Fail, |point| {
            if let Some(product) = stored_product(point.payload).filter(|p| Product::image_link_of(&p.metadata).is_none()) {
                ids.insert(product.id);
            }
        })?;
        Ok(ids)
    }

    /// The ids of the products a server without the catalog wrote (points without a catalog
    /// key): their ids alone, one small read however large their photos.
    pub fn ids_without_catalog(&self) -> Result<Vec<String>> {
        let filter = QFilter::must([Condition::is_empty(KEY_FIELD)]);
        self.strings_of("listing products added without the catalog", self.points.clone(), filter, ID_FIELD, IfMissing::Fail)
    }

    /// Every product of collection `name` that a server without the catalog added (its point
    /// has no catalog key), with its photo and, if `with_vectors`, its vector.
    pub fn products_without_catalog(&self, name: &str, with_vectors: bool) -> Result<Vec<ProductWithoutCatalog>> {
        // 256 a page: each may carry a photo of up to 64 KiB.
        let request = ScrollPointsBuilder::new(name.to_string()).filter(QFilter::must([Condition::is_empty(KEY_FIELD)])).limit(256).with_payload(true).with_vectors(with_vectors);
        let mut out = Vec::new();
        self.scroll_all("listing products added without the catalog", request, IfMissing::Fail, |point| {
            let vector = if with_vectors { dense_vector(&point) } else { None };
            let image = point.payload.get(IMAGE_FIELD).and_then(string).and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok());
            if let Some(product) = stored_product(point.payload) {
                out.push(ProductWithoutCatalog { product, image, vector });
            }
        })?;
        Ok(out)
    }

    /// Makes the collection agree with the catalog: upserts every product that is missing (or
    /// whose recorded key differs), deletes points a catalog wrote whose product is gone.
    /// Products added through a server without a catalog (no key in their payload) are kept:
    /// the catalog never knew them, so their absence from it says nothing. `keys` are the
    /// catalog's products; `vector` gives one's vector in the search space, `images` the
    /// photos of a batch of them, in order, as payloads carry them (the caller makes the copies
    /// of large ones); a point written without its photo ([`QdrantIndex::ids_without_photo`]) is
    /// sent again with it. Vectors are fetched 256 at a time as they are sent, so
    /// a million-product sync holds no second copy of them.
    pub fn sync(&mut self, keys: &[Key], vector: impl Fn(Key) -> Option<Vec<f32>>, images: impl Fn(&[Key]) -> Vec<Option<Vec<u8>>>) -> Result<SyncReport> {
        let started = std::time::Instant::now();
        self.index_own_fields()?;
        let existing = self.all_points()?;
        let mut report = SyncReport { in_catalog: keys.len(), in_collection_before: existing.len(), collection: self.points.clone(), ..Default::default() };
        // Points are matched by id alone; vectors sent in another search space (`tune` at the
        // same dimension, an untuned catalog centred anew) would stay and be searched with
        // queries mapped in the new one. So a sample is read back, and all are sent again if
        // it differs.
        let resend = self.holds_other_vectors(keys, &vector)?;
        let without_photo = self.ids_without_photo()?;
        let mut wanted: HashSet<String> = HashSet::new();
        let mut missing = Vec::new();
        let mut photo_only = HashSet::new();
        for &key in keys {
            let product = self.products.get(&key).with_context(|| format!("no product id known for key {key}"))?;
            let pid = point_id(&product.id);
            let written = existing.get(&pid);
            let present = written.is_some_and(|w| w.key == Some(key));
            // A point whose photo hash differs (a new photo, or a point written before points
            // kept it) is sent again: search folds a photo's listings by it.
            if !present || resend || written.is_some_and(|w| w.photo != product.photo) {
                missing.push(key);
                report.resent += usize::from(present);
            } else if without_photo.contains(&product.id) {
                missing.push(key);
                photo_only.insert(key);
            }
            wanted.insert(pid);
        }
        let stale: Vec<PointId> = existing.iter().filter(|(p, written)| written.key.is_some() && !wanted.contains(*p)).map(|(p, _)| PointId::from(p.clone())).collect();
        report.added = missing.len() - report.resent - photo_only.len();
        report.deleted = stale.len();
        for chunk in missing.chunks(UPSERT_BATCH) {
            let images = images(chunk);
            ensure!(images.len() == chunk.len(), "{} photos for {} products", images.len(), chunk.len());
            let sent: Vec<(Key, Option<Vec<u8>>)> = chunk.iter().copied().zip(images).filter(|(k, image)| !photo_only.contains(k) || image.is_some()).collect();
            // A point sent only for its photo, whose photo the catalog cannot read, would be
            // written as it is, and again by every sync.
            report.photos_unreadable += chunk.len() - sent.len();
            if sent.is_empty() {
                continue;
            }
            let points = sent
                .into_iter()
                .map(|(k, image)| {
                    let vector = vector(k).with_context(|| format!("no vector for key {k}"))?;
                    self.keyed_point(k, &vector, image.as_deref())
                })
                .collect::<Result<Vec<_>>>()?;
            self.upsert_points(points)?;
        }
        for chunk in stale.chunks(1000) {
            let request = DeletePointsBuilder::new(self.points.clone()).points(PointsIdsList { ids: chunk.to_vec() }).wait(true).ordering(self.ordering());
            self.retry("deleting points", || self.client.delete_points(request.clone()))?;
        }
        report.photos_added = photo_only.len() - report.photos_unreadable;
        self.len = self.count()?;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
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

    /// Changes a product's metadata in its point's payload (its vector, photo and lookalike's
    /// own fields untouched); the product as it is now, `None` when the collection has no such
    /// product. Where a server without the catalog changes a catalog product, the point is
    /// marked, so that the next `sync` takes the change into the catalog instead of sending the
    /// catalog's version back. `patch_for` makes the patch from the product as the
    /// collection holds it (to complete it by what only that copy says).
    pub fn patch_product(&mut self, id: &str, patch_for: impl FnOnce(&StoredProduct) -> MetadataPatch, without_catalog: bool) -> Result<Option<StoredProduct>> {
        let pid = PointId::from(point_id(id));
        let request = GetPointsBuilder::new(self.points.clone(), vec![pid.clone()]).with_payload(PayloadExcludeSelector::new(vec![IMAGE_FIELD.to_string()])).with_vectors(false);
        let response = self.retry("reading a point", || self.client.get_points(request.clone()))?;
        let Some(point) = response.result.into_iter().next() else { return Ok(None) };
        let key = point.payload.get(KEY_FIELD).and_then(integer);
        let Some(mut product) = stored_product(point.payload) else { return Ok(None) };
        let patch = patch_for(&product);
        let mut payload: HashMap<String, QValue> = patch.set.iter().map(|(k, v)| (k.clone(), QValue::from(v.clone()))).collect();
        if without_catalog && key.is_some() {
            payload.insert(PATCHED_FIELD.to_string(), QValue::from(id.to_string()));
        }
        if !payload.is_empty() {
            let request = SetPayloadPointsBuilder::new(self.points.clone(), payload).points_selector(PointsIdsList { ids: vec![pid.clone()] }).wait(true).ordering(self.ordering());
            self.retry("changing a product's payload", || self.client.set_payload(request.clone()))?;
        }
        if !patch.remove.is_empty() {
            let columns: Vec<String> = patch.remove.iter().cloned().collect();
            let request = DeletePayloadPointsBuilder::new(self.points.clone(), columns).points_selector(PointsIdsList { ids: vec![pid] }).wait(true).ordering(self.ordering());
            self.retry("removing columns from a product's payload", || self.client.delete_payload(request.clone()))?;
        }
        product.metadata = patch.apply(&product.metadata);
        if let Some(known) = key.and_then(|key| self.products.get_mut(&key)) {
            known.metadata = product.metadata.clone();
        }
        Ok(Some(product))
    }

    /// The ids of catalog products whose metadata servers without the catalog changed since
    /// the last `sync` took such changes in ([`QdrantIndex::patch_product`]).
    pub fn patched_without_catalog(&self) -> Result<Vec<String>> {
        let filter = QFilter::must_not([Condition::is_empty(PATCHED_FIELD)]);
        self.strings_of("listing products changed without the catalog", self.points.clone(), filter, PATCHED_FIELD, IfMissing::Fail)
    }

    /// Drops the marks [`QdrantIndex::patch_product`] left on the points of `ids`.
    pub fn forget_patches(&self, ids: &[String]) -> Result<()> {
        for chunk in ids.chunks(1000) {
            let points = chunk.iter().map(|id| PointId::from(point_id(id))).collect();
            let request = DeletePayloadPointsBuilder::new(self.points.clone(), vec![PATCHED_FIELD.to_string()])
                .points_selector(PointsIdsList { ids: points })
                .wait(true)
                .ordering(self.ordering());
            self.retry("forgetting changes made without the catalog", || self.client.delete_payload(request.clone()))?;
        }
        Ok(())
    }

    /// The products listed with any of `photos` (content hashes) that `filter` admits: a
    /// search hit's variants, a product's other sizes. Products without a photo hash in their
    /// payload (written before it was kept) are in none.
    pub fn products_with_photos(&self, photos: &[&str], filter: &Filter) -> Result<Vec<StoredProduct>> {
        if photos.is_empty() {
            return Ok(Vec::new());
        }
        let hashes: Vec<String> = photos.iter().map(|p| p.to_string()).collect();
        let mut conditions = vec![Condition::matches(PHOTO_FIELD, hashes)];
        conditions.extend(qdrant_filter(filter).map(Condition::from));
        let request = ScrollPointsBuilder::new(self.points.clone())
            .filter(QFilter::must(conditions))
            .limit(1000)
            .with_payload(PayloadExcludeSelector::new(vec![IMAGE_FIELD.to_string()]))
            .with_vectors(false);
        let mut out = Vec::new();
        self.scroll_all("reading the products listed with a photo", request, IfMissing::Fail, |point| out.extend(stored_product(point.payload)))?;
        Ok(out)
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
        self.remove_point(id, false)
    }

    /// [`QdrantIndex::remove_product`] by a server without the catalog: a removal of a product
    /// the collection has is recorded first, so that the next `sync` removes it from the catalog
    /// too instead of sending it back (see removals.rs).
    pub fn remove_product_without_catalog(&mut self, id: &str) -> Result<bool> {
        self.remove_point(id, true)
    }

    fn remove_point(&mut self, id: &str, record: bool) -> Result<bool> {
        let pid = PointId::from(point_id(id));
        let request = GetPointsBuilder::new(self.points.clone(), vec![pid.clone()]).with_payload(false).with_vectors(false);
        let existed = !self.retry("reading a point", || self.client.get_points(request.clone()))?.result.is_empty();
        if existed && record {
            self.record_removal(id)?;
        }
        let request = DeletePointsBuilder::new(self.points.clone()).points(PointsIdsList { ids: vec![pid] }).wait(true).ordering(self.ordering());
        self.retry("deleting a point", || self.client.delete_points(request.clone()))?;
        self.products.retain(|_, p| p.id != id);
        self.len = self.count()?;
        Ok(existed)
    }

    /// Deletes the point whose payload records catalog key `key`, if any.
    pub(super) fn remove_catalog_key(&mut self, key: Key) -> Result<()> {
        let filter = QFilter::must([Condition::matches(KEY_FIELD, key)]);
        let request = DeletePointsBuilder::new(self.points.clone()).points(filter).wait(true).ordering(self.ordering());
        self.retry("deleting a point", || self.client.delete_points(request.clone()))?;
        self.len = self.count()?;
        Ok(())
    }

    /// How many of the collection's products match `filter` (counted exactly).
    pub fn count_matching(&self, filter: &Filter) -> Result<usize> {
        let mut request = CountPointsBuilder::new(self.points.clone()).exact(true);
        if let Some(filter) = qdrant_filter(filter) {
            request = request.filter(filter);
        }
        let response = self.retry("counting products", || self.client.count(request.clone()))?;
        Ok(response.result.map_or(0, |r| r.count as usize))
    }

    /// Up to `limit` products matching `filter`, in the collection's point order, from point
    /// `from` (the `next` an earlier page returned; `None`: the first page), and the point the
    /// next page starts from (`None` after the last).
    pub fn products_page(&self, filter: &Filter, from: Option<&str>, limit: usize) -> Result<(Vec<StoredProduct>, Option<String>)> {
        let limit = u32::try_from(limit).context("page size")?;
        let mut request = ScrollPointsBuilder::new(self.points.clone()).limit(limit).with_payload(PayloadExcludeSelector::new(vec![IMAGE_FIELD.to_string()])).with_vectors(false);
        if let Some(filter) = qdrant_filter(filter) {
            request = request.filter(filter);
        }
        if let Some(from) = from {
            request = request.offset(PointId::from(from.to_string()));
        }
        let page = self.retry("listing products", || self.client.scroll(request.clone()))?;
        let products = page.result.into_iter().filter_map(|point| stored_product(point.payload)).collect();
        let next = page.next_page_offset.and_then(|id| match id.point_id_options {
            Some(PointIdOptions::Uuid(uuid)) => Some(uuid),
            _ => None,
        });
        Ok((products, next))
    }

    /// Points in the collection now, as Qdrant counts them (other servers' writes included).
    pub fn count_now(&self) -> Result<usize> {
        self.count()
    }

    /// Points whose payload has no photo hash: written before lookalike kept it.
    pub fn count_without_photo_hash(&self) -> Result<usize> {
        let request = CountPointsBuilder::new(self.points.clone()).filter(QFilter::must([Condition::is_empty(PHOTO_FIELD)])).exact(true);
        let response = self.retry("counting products without a photo hash", || self.client.count(request.clone()))?;
        Ok(response.result.map_or(0, |r| r.count as usize))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A point's mark reads as the count a write left, the older "shared" flag as a mark
    /// without a count, and anything else as no mark a search could trust to skip asking.
    #[test]
    fn a_points_photo_mark_reads_as_its_count() {
        let payload = |extra: &[(&str, QValue)]| {
            let mut payload = HashMap::from([(ID_FIELD.to_string(), QValue::from("1001")), (PHOTO_FIELD.to_string(), QValue::from("abc"))]);
            payload.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
            stored_product(payload).expect("a product").photo_listings
        };
        assert_eq!(payload(&[]), PhotoListings::Own);
        assert_eq!(payload(&[(LISTINGS_FIELD, QValue::from(3i64))]), PhotoListings::Counted(3));
        assert_eq!(payload(&[(SHARED_FIELD, QValue::from(true))]), PhotoListings::Uncounted);
        assert_eq!(payload(&[(SHARED_FIELD, QValue::from(true)), (LISTINGS_FIELD, QValue::from(4i64))]), PhotoListings::Counted(4));
        assert_eq!(payload(&[(LISTINGS_FIELD, QValue::from(-2i64))]), PhotoListings::Uncounted);
        assert_eq!(payload(&[(SHARED_FIELD, QValue::from(false))]), PhotoListings::Own);
        // A count asks only where the search found fewer; no mark only where it found more than one.
        assert!(PhotoListings::Counted(3).more_than(2) && !PhotoListings::Counted(3).more_than(3));
        assert!(!PhotoListings::Own.more_than(1) && PhotoListings::Own.more_than(2));
        assert!(PhotoListings::Uncounted.more_than(5));
    }
}
