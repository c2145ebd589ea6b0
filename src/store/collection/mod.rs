//! A catalog's Qdrant collection: opening it (in the collection the description names after a
//! swap), where it stands (`lookalike info`), and what the catalog records of the last sync.
//! Beside it: keeping it in sync with the catalog (sync.rs: `lookalike sync`, in place,
//! recreated, or swapped for a new collection), the description kept beside it, by which
//! servers without the catalog search it and every server finds its points (description.rs),
//! and taking in what servers without the catalog removed or replaced (without_catalog.rs).

use anyhow::{Context, Result};
use rayon::prelude::*;

use crate::catalog::SqliteCatalog;
use crate::index::qdrant::{CollectionLayout, ProductPoint, QdrantConfig, QdrantIndex, StoredProduct, MAX_PAYLOAD_IMAGE};
use crate::index::VectorIndex;
use crate::preprocess;
use crate::space::SearchSpace;
use crate::types::{ImageRef, Key, Metadata, Product};

mod description;
mod sync;
mod without_catalog;

use description::describe_collection;
pub use description::{CollectionDescription, ReplacedCollection, StoredSpace};
pub use sync::{sync_qdrant, sync_qdrant_observed, KeepReplaced, SyncMode, SyncStep};
pub use without_catalog::{apply_recorded_removals, remove_from_collection, replaced_without_catalog};

/// Connects to the Qdrant collection for this catalog and tells it every product's id and
/// metadata (its writes carry them as payload). Warns when the collection and the catalog
/// disagree in size: `lookalike sync` fixes that.
pub fn open_qdrant(catalog: &SqliteCatalog, space: &SearchSpace, store: &QdrantConfig) -> Result<QdrantIndex> {
    let cluster = QdrantIndex::connect_cluster(store.clone())?;
    let (kept, points) = points_collection(&cluster, store)?;
    let index = connect_qdrant_to(catalog, space, cluster, points)?;
    // Not between a `tune` that changed the vectors and the `sync` that sends them (servers
    // without the catalog follow the description, and the collection still holds the old
    // ones), nor in the old space meanwhile ([`collection_space`]: the catalog's head and
    // likeness bands are the new space's).
    let own = SearchSpace::for_catalog(catalog)?.fingerprint();
    if space.fingerprint() == own && collection_synced_space(catalog, store)?.is_none_or(|synced| synced == own) {
        let replaced = kept.as_ref().map(|d| d.replaced.clone()).unwrap_or_default();
        describe_collection(catalog, space, store, &index, kept.as_ref(), replaced)?;
    }
    let in_catalog = catalog.vector_count()?;
    if index.len() != in_catalog {
        tracing::warn!(
            "Qdrant collection {:?} holds {} vectors, the catalog {in_catalog}: run `lookalike sync --db {} --store ...`",
            store.collection,
            index.len(),
            catalog.path().display()
        );
    }
    Ok(index)
}

/// Opens collection `points` of the cluster for `catalog`: tells it every product's id and
/// metadata (its writes carry them as payload).
pub(super) fn connect_qdrant_to(catalog: &SqliteCatalog, space: &SearchSpace, cluster: QdrantIndex, points: String) -> Result<QdrantIndex> {
    let dim = space.output_dim(catalog.vector_space()?.map_or(0, |s| s.dim));
    let mut index = cluster.open_points(points, dim)?;
    let colours: std::collections::HashMap<Key, Vec<f32>> = catalog.colours()?.into_iter().collect();
    for product in catalog.all_products()? {
        let colour = colours.get(&product.key).cloned();
        index.describe(product.key, StoredProduct::of(product, colour));
    }
    Ok(index)
}

/// Where a catalog's Qdrant collection stands, for `lookalike info`.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionStatus {
    /// The collection that holds the points: the one named, or the one a swap filled.
    pub points: String,
    /// Points in it and how it was made; `None` while it does not exist.
    pub held: Option<(usize, CollectionLayout)>,
    /// Points whose payload has no photo hash (written by a lookalike before it kept one): a
    /// search cannot fold their photos' listings until `sync` sends them again.
    pub without_photo_hash: usize,
    /// Catalog points without their photo whose product links no copy of the shop's own
    /// (written before points carried copies of large photos): the next `sync` sends them
    /// again with one.
    pub without_photo: usize,
    /// Catalog points without their photo whose photo file is gone from where the catalog
    /// recorded it (`lookalike check` names them): no sync can send it.
    pub photo_files_gone: usize,
    /// Whether the last `sync` from this catalog filled it in the catalog's search space as it
    /// is now (false after a `tune` until the sync sends it); `None` before any sync.
    pub in_catalog_space: Option<bool>,
    /// Whether it has a description, which servers without the catalog need.
    pub described: bool,
    /// Collections swaps replaced, kept for servers that may not have moved yet.
    pub replaced: Vec<ReplacedCollection>,
    /// Products removed through servers without the catalog that the next sync removes from
    /// the catalog too.
    pub removals_to_apply: usize,
}

/// Reads where `catalog`'s collection in `store` stands.
pub fn collection_status(catalog: &SqliteCatalog, store: &QdrantConfig) -> Result<CollectionStatus> {
    let cluster = QdrantIndex::connect_cluster(store.clone())?;
    let (kept, points) = points_collection(&cluster, store)?;
    let recorded = cluster.recorded_removals()?;
    let (held, without_photo_hash, without_photo) = match cluster.collection_exists(&points)? {
        true => {
            let layout = cluster.layout_of(&points)?;
            let index = cluster.open_existing_points(points.clone())?;
            (Some((index.count_now()?, layout)), index.count_without_photo_hash()?, index.ids_without_photo()?)
        }
        false => (None, 0, Default::default()),
    };
    // Of the points without their photo, those whose photo file is gone stay so (sync counts
    // them as unreadable): only the rest wait for the next sync.
    let mut photo_files_gone = 0;
    for id in &without_photo {
        let gone = catalog.get_by_id(id)?.is_some_and(|p| matches!(&p.image, ImageRef::File(path) if crate::catalog::open_image_file(path).is_err()));
        photo_files_gone += usize::from(gone);
    }
    let own = SearchSpace::for_catalog(catalog)?.fingerprint();
    Ok(CollectionStatus {
        points,
        held,
        without_photo_hash,
        without_photo: without_photo.len() - photo_files_gone,
        photo_files_gone,
        in_catalog_space: collection_synced_space(catalog, store)?.map(|synced| synced == own),
        described: kept.is_some(),
        replaced: kept.map(|d| d.replaced).unwrap_or_default(),
        removals_to_apply: recorded.iter().map(|id| catalog.get_by_id(id).map(|p| usize::from(p.is_some()))).sum::<Result<usize>>()?,
    })
}

/// Sends `index` the catalog's changes after change-log position `generation` (products added,
/// replaced or removed since its rows were read); how many. When part of that log is gone (a
/// saved search graph absorbed it), says to sync again, which compares every product.
pub fn send_changes_since(catalog: &SqliteCatalog, space: &SearchSpace, index: &mut QdrantIndex, generation: i64) -> Result<usize> {
    let Some(keys) = catalog.changed_since_whole(generation)? else {
        tracing::warn!("the catalog's change log since collection {:?} was sent its changes is partly gone (a saved search graph absorbed it): run `lookalike sync` again to send what changed meanwhile", index.points());
        return Ok(0);
    };
    let mut rows = Vec::new();
    for &key in &keys {
        match (catalog.vector(key)?, catalog.get(key)?) {
            (Some(vector), Some(product)) => rows.push((key, vector, product)),
            _ => index.remove(key)?,
        }
    }
    let images = payload_images(catalog, &rows.iter().map(|(_, _, product)| Some(product)).collect::<Vec<_>>());
    let mut put = Vec::with_capacity(rows.len());
    for ((key, vector, product), image) in rows.into_iter().zip(images) {
        let product = StoredProduct::of(product, catalog.colour(key)?);
        put.push(ProductPoint { key, product, vector: space.map(&vector)?, image });
    }
    // In batches: a large import while the collection filled is thousands of products.
    index.put_products(put)?;
    Ok(keys.len())
}

/// The search space (its fingerprint) in which `lookalike sync` last filled `store`'s
/// collection from this catalog; `None` before any sync.
pub fn collection_synced_space(catalog: &SqliteCatalog, store: &QdrantConfig) -> Result<Option<String>> {
    catalog.setting(&synced_space_setting(&store.collection))
}

/// The search space a server with the catalog searches `store`'s collection in, and the
/// catalog's own fingerprint when that is another, to take up once `sync` has run. Between a `tune` that changed
/// the vectors and the `sync` that sends them, the collection holds them in the space of the
/// last sync, which its description keeps; otherwise, and when the description cannot say, the
/// catalog's own.
pub fn collection_space(catalog: &SqliteCatalog, store: &QdrantConfig) -> Result<(SearchSpace, Option<String>)> {
    let own = SearchSpace::for_catalog(catalog)?;
    let Some(synced) = collection_synced_space(catalog, store)?.filter(|synced| *synced != own.fingerprint()) else { return Ok((own, None)) };
    let described = QdrantIndex::connect_cluster(store.clone()).and_then(|index| read_collection_description(&index, store)).and_then(|(d, _)| d.search_space());
    match described {
        Ok(space) if space.fingerprint() == synced => {
            tracing::warn!(
                "the catalog's search space ({}) changed since collection {:?} was synced: searching in the collection's ({}) until `lookalike sync --swap` sends it the new one",
                own.describe(),
                store.collection,
                space.describe()
            );
            Ok((space, Some(own.fingerprint())))
        }
        _ => Ok((own, None)),
    }
}

/// The catalog setting [`collection_synced_space`] reads. By the collection's name alone: a
/// server may reach the cluster through another node's address than `sync` did.
pub(super) fn synced_space_setting(collection: &str) -> String {
    format!("qdrant_synced_space:{collection}")
}

/// The collection that holds `store`'s points since this catalog's last `sync` (another than
/// the one named after `sync --swap`); `None` before any sync. A server with the catalog
/// reads it to follow a swap.
pub fn collection_points(catalog: &SqliteCatalog, store: &QdrantConfig) -> Result<Option<String>> {
    catalog.setting(&points_setting(&store.collection))
}

pub(super) fn points_setting(collection: &str) -> String {
    format!("qdrant_points:{collection}")
}

/// The catalog's change-log position up to which `lookalike sync` last sent `store`'s
/// collection the catalog's changes (`None` before any sync): a server with the catalog that
/// moves to the collection a swap filled, or to the search space a sync sent, sends it the
/// changes after it ([`send_changes_since`]), which it wrote meanwhile elsewhere.
pub fn collection_sent_through(catalog: &SqliteCatalog, store: &QdrantConfig) -> Result<Option<i64>> {
    let setting = catalog.setting(&sent_through_setting(&store.collection))?;
    setting.map(|s| s.parse::<i64>().with_context(|| format!("catalog setting {:?} is not a change-log position: {s:?}", sent_through_setting(&store.collection)))).transpose()
}

pub(super) fn sent_through_setting(collection: &str) -> String {
    format!("qdrant_sent_through:{collection}")
}

/// The photos of catalog products as their points' payloads carry them ([`payload_photo`]), in
/// their order (`None` in, or a photo that cannot be read or decoded: `None` out), but no copy
/// of a large photo whose product links the shop's own (`image_url`): every server sends
/// shoppers there, and the catalog encodes from its original. The photos are read in turn,
/// the copies made on every core (a catalog of camera photos is mostly large ones, each a
/// decode and a JPEG encode), 64 originals at a time in memory.
pub fn payload_images(catalog: &SqliteCatalog, products: &[Option<&Product>]) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::with_capacity(products.len());
    for chunk in products.chunks(64) {
        let read: Vec<Option<Vec<u8>>> = chunk.iter().map(|p| p.and_then(|p| photo_to_carry(catalog, p))).collect();
        out.par_extend(read.into_par_iter().map(|bytes| bytes.and_then(payload_photo)));
    }
    out
}

/// A catalog product's photo as read for its point, unless it is large and the product links
/// the shop's own copy (a large file of such a product is not even read).
fn photo_to_carry(catalog: &SqliteCatalog, product: &Product) -> Option<Vec<u8>> {
    if let ImageRef::File(path) = &product.image {
        if std::fs::metadata(path).map_or(true, |m| !carries_photo(usize::try_from(m.len()).unwrap_or(usize::MAX), &product.metadata)) {
            return None;
        }
    }
    catalog.image_bytes(product.key, &product.image).ok().filter(|bytes| carries_photo(bytes.len(), &product.metadata))
}

/// Whether a catalog product's point carries its photo of `size` bytes (itself or a reduced
/// copy): always, but for a large one the product links on the shop's own image server, where
/// servers without the photo send shoppers (the catalog keeps the original to encode from).
pub fn carries_photo(size: usize, metadata: &Metadata) -> bool {
    size <= MAX_PAYLOAD_IMAGE || Product::image_link_of(metadata).is_none()
}

/// A photo as a point's payload carries it, so that servers without the catalog can show it
/// and `sync` can encode it again when the search space changes: itself up to
/// [`MAX_PAYLOAD_IMAGE`], else a JPEG copy reduced to fit ([`preprocess::jpeg_within`]: 640 px
/// on its longer side where that fits). `None` for bytes that do not decode.
pub fn payload_photo(bytes: Vec<u8>) -> Option<Vec<u8>> {
    if bytes.len() <= MAX_PAYLOAD_IMAGE {
        return Some(bytes);
    }
    // Decoded no larger than the copy needs (a 3:4 photo's shorter side at the copy's size):
    // a camera JPEG at a half or a quarter of its size, in a fraction of the time.
    let short_side = preprocess::JPEG_COPY_SIDE * 3 / 4;
    let image = preprocess::decode_reduced(&bytes, &preprocess::DecodeLimits::default(), short_side)
        .map_err(|e| tracing::warn!("a photo of {} bytes travels without a copy in its point: {e}", bytes.len()))
        .ok()?;
    preprocess::jpeg_within(&image, MAX_PAYLOAD_IMAGE)
}

/// Connects to an existing Qdrant collection and reads its description (with the digest it
/// was written under, [`QdrantIndex::description_digest`]), for a server without the catalog
/// file. Fails with what to do when the collection or its description is missing.
pub fn open_collection(store: &QdrantConfig) -> Result<(QdrantIndex, CollectionDescription, String)> {
    let cluster = QdrantIndex::connect_cluster(store.clone())?;
    let (description, digest) = match read_collection_description(&cluster, store) {
        Ok(described) => described,
        // When there is no collection at all, that is what to say.
        Err(e) => return Err(cluster.open_existing_points(store.collection.clone()).err().unwrap_or(e)),
    };
    let index = cluster.open_existing_points(description.points(&store.collection).to_string())?;
    Ok((index, description, digest))
}

/// The description kept beside `store`'s collection, if there is one it can read, and the
/// collection that holds the points: the one it names, else the one named.
pub(super) fn points_collection(cluster: &QdrantIndex, store: &QdrantConfig) -> Result<(Option<CollectionDescription>, String)> {
    let kept = kept_description(cluster)?;
    let points = kept.as_ref().map_or(store.collection.as_str(), |d| d.points(&store.collection)).to_string();
    Ok((kept, points))
}

/// The description `index` keeps beside its collection, if there is one it can read.
fn kept_description(index: &QdrantIndex) -> Result<Option<CollectionDescription>> {
    Ok(index.read_description()?.and_then(|(bytes, _)| serde_json::from_slice::<CollectionDescription>(&bytes).ok()))
}

/// The collection's description and its digest, for a server without the catalog.
pub fn read_collection_description(index: &QdrantIndex, store: &QdrantConfig) -> Result<(CollectionDescription, String)> {
    let (bytes, digest) = index.read_description()?.with_context(|| {
        let (collection, flag) = (&store.collection, store.store_flag());
        format!("collection {collection:?} has no lookalike description (model, search space) yet: run `lookalike sync --db CATALOG --store {flag} --collection {collection}` once on the catalog's machine")
    })?;
    let description: CollectionDescription = serde_json::from_slice(&bytes).context("reading the collection's description")?;
    Ok((description, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_carries_a_small_photo_as_it_is_and_a_large_one_as_a_copy_that_fits() {
        let mut png = Vec::new();
        image::RgbImage::from_fn(1000, 500, |x, y| image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x * y) % 239) as u8]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .expect("png");
        assert!(png.len() > MAX_PAYLOAD_IMAGE, "{} bytes", png.len());
        let copy = payload_photo(png).expect("a copy");
        assert!(copy.len() <= MAX_PAYLOAD_IMAGE, "{} bytes", copy.len());
        assert_eq!(image::guess_format(&copy).ok(), Some(image::ImageFormat::Jpeg));
        let small = copy.clone();
        assert_eq!(payload_photo(small), Some(copy), "a photo that fits travels as it is");
        assert_eq!(payload_photo(vec![0xFF; MAX_PAYLOAD_IMAGE + 1]), None, "bytes that are no photo travel not at all");
    }
}
