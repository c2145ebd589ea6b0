//! A catalog's Qdrant collection: opening it (in the collection the description names after a
//! swap), keeping it in sync with the catalog (`lookalike sync`: in place, recreated, or swapped
//! for a new collection), and the description kept beside it, by which servers without the
//! catalog search it and every server finds its points.

use anyhow::{Context, Result};

use crate::catalog::{SqliteCatalog, VectorKind};
use crate::index::qdrant::{CollectionLayout, ProductPoint, ProductWithoutCatalog, QdrantConfig, QdrantIndex, StoredProduct, SyncReport, MAX_PAYLOAD_IMAGE};
use crate::index::VectorIndex;
use crate::space::SearchSpace;
use crate::types::{ImageRef, Key, Product};

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
fn connect_qdrant_to(catalog: &SqliteCatalog, space: &SearchSpace, cluster: QdrantIndex, points: String) -> Result<QdrantIndex> {
    let dim = space.output_dim(catalog.vector_space()?.map_or(0, |s| s.dim));
    let mut index = cluster.open_points(points, dim)?;
    let colours: std::collections::HashMap<Key, Vec<f32>> = catalog.colours()?.into_iter().collect();
    for product in catalog.all_products()? {
        let colour = colours.get(&product.key).cloned();
        index.describe(product.key, StoredProduct { id: product.id, metadata: product.metadata, colour });
    }
    Ok(index)
}

/// Servers without the catalog search the collection by its description: kept in step with
/// the catalog's model and search space (written only when it changed).
///
/// The description names the collection `index` holds the points in and the collections
/// swaps `replaced`. `kept` is the description as read when the collection was opened
/// (megabytes when tuned: read once).
fn describe_collection(
    catalog: &SqliteCatalog,
    space: &SearchSpace,
    store: &QdrantConfig,
    index: &QdrantIndex,
    kept: Option<&CollectionDescription>,
    replaced: Vec<ReplacedCollection>,
) -> Result<()> {
    if let Some(description) = CollectionDescription::of_catalog(catalog, space, store, index, replaced)? {
        if kept != Some(&description) {
            index.write_description(&serde_json::to_vec(&description)?)?;
        }
    }
    Ok(())
}

/// Makes the Qdrant collection agree with the catalog (adds what is missing, deletes what is
/// gone), and returns what changed.
///
/// Once every point is in the catalog's search space, the catalog records so
/// ([`collection_synced_space`]): a server on this catalog and collection that has kept
/// searching in the old space since `tune` changed the vectors takes up the new one then.
///
/// [`SyncMode::Swap`] fills a new collection beside the one that holds the points and then
/// rewrites the description to name it: servers search the old one, whole and in its own
/// space, until they read the new description, then the new one. The collection it replaced
/// is kept for servers that have not moved yet; any sync deletes the collections swaps
/// replaced `keep.at_least` ago or longer.
pub fn sync_qdrant(catalog: &mut SqliteCatalog, store: &QdrantConfig, mode: SyncMode, keep: KeepReplaced) -> Result<SyncReport> {
    sync_qdrant_observed(catalog, store, mode, keep, &mut |_, _| Ok(()))
}

/// Where [`sync_qdrant_observed`] calls its observer, with the name of the collection it fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStep {
    /// The catalog's rows as read at the start are in the collection; the catalog's changes
    /// since are not yet sent, nor products added without the catalog carried.
    Filled,
    /// Those are sent too; the description does not name the collection yet.
    CaughtUp,
}

/// [`sync_qdrant`], calling `observe` at each [`SyncStep`]: tests change the catalog or the
/// collections there, as servers do while a swap fills (a server with the catalog writes to the
/// collection it searches, the old one; a server without it, to the one the description names).
pub fn sync_qdrant_observed(
    catalog: &mut SqliteCatalog,
    store: &QdrantConfig,
    mode: SyncMode,
    keep: KeepReplaced,
    observe: &mut dyn FnMut(SyncStep, &str) -> Result<()>,
) -> Result<SyncReport> {
    let cluster = QdrantIndex::connect_cluster(store.clone())?;
    // Products removed through servers without the catalog leave it first: the fill below
    // would send them back.
    let (mut removed_without_catalog, _) = apply_removals(catalog, &cluster)?;
    // Where the catalog's change log stands before its rows are read: what changes after this
    // is sent again once the collection is filled.
    let generation = catalog.generation()?;
    let space = SearchSpace::for_catalog(catalog)?;
    let (kept, current) = points_collection(&cluster, store)?;
    // Products added through servers without the catalog: the catalog cannot send them again.
    // In the collection's own space they are copied wherever the points go; in another, they
    // must be encoded again from their photos (which the caller, holding the model, does).
    let kept_space = kept.as_ref().and_then(|d| d.search_space().ok()).map(|s| s.fingerprint());
    let same_space = kept_space.as_deref() == Some(space.fingerprint().as_str());
    let products: std::collections::HashMap<Key, Product> = catalog.all_products()?.into_iter().map(|p| (p.key, p)).collect();
    let in_catalog: std::collections::HashSet<&str> = products.values().map(|p| p.id.as_str()).collect();
    let current_exists = cluster.collection_exists(&current)?;
    let has_old = kept.is_some() && current_exists;
    let without_catalog_in = |index: &QdrantIndex| -> Result<Vec<ProductWithoutCatalog>> {
        match has_old {
            true => Ok(index.products_without_catalog(&current, same_space)?.into_iter().filter(|p| !in_catalog.contains(p.product.id.as_str())).collect()),
            false => Ok(Vec::new()),
        }
    };
    // Read before the collection is deleted or changed; a swap leaves the old one as it is, so
    // it reads them once the new one is full, and those added meanwhile go too.
    let read_early = match mode {
        SyncMode::Swap => None,
        _ => Some(without_catalog_in(&cluster)?),
    };
    let (points, replaced) = match mode {
        SyncMode::Swap if current_exists => {
            // Past names that are collections of their own (servers may be given one: it has
            // a description beside it); a name without, a swap that failed half-way left.
            let mut next = next_points_collection(&store.collection, &current);
            while cluster.collection_exists(&format!("{next}_lookalike"))? {
                next = next_points_collection(&store.collection, &next);
            }
            cluster.delete_collection(&next)?;
            (next, Some(current.clone()))
        }
        _ => (current.clone(), None),
    };
    // A collection made in place of another (a swap's, or one recreated) is made as that one
    // was, where this run's settings leave it open: shards, replicas, quantisation, indexes.
    let cluster = match mode != SyncMode::InPlace && current_exists {
        true => {
            let layout = cluster.layout_of(&current)?;
            cluster.inheriting(&layout)
        }
        false => cluster,
    };
    let recreated = mode == SyncMode::Recreate && cluster.delete_if_misfit(&points, space.output_dim(catalog.vector_space()?.map_or(0, |s| s.dim)))?;
    let exact = space.build_index(catalog, VectorKind::Primary, crate::index::Precision::F32)?;
    let mut index = connect_qdrant_to(catalog, &space, cluster, points)?;
    let mut report = index.sync(exact.keys(), |key| exact.vector(key), |key| products.get(&key).and_then(|p| payload_image(catalog, p)))?;
    let moved = recreated || index.points() != current;
    observe(SyncStep::Filled, index.points())?;
    // The change-log position up to which the collection has the catalog's changes. Servers
    // with the catalog send it theirs after it again when they move to it (a swap's collection,
    // or a new search space): until they read that this sync is done, they write to the
    // collection they search, the old one, or in the old space.
    let sent_through = match moved {
        true => {
            let at = catalog.generation()?;
            // What servers with the catalog wrote meanwhile to the collection they search, not
            // this one (a swap's), or failed to (one recreated in another space).
            report.caught_up = send_changes_since(catalog, &space, &mut index, generation)?;
            at
        }
        false => generation,
    };
    let read_after_filling = read_early.is_none();
    let without_catalog = match read_early {
        Some(read) => read,
        None => without_catalog_in(&index)?,
    };
    let carried: std::collections::HashSet<String> = without_catalog.iter().map(|p| p.product.id.clone()).collect();
    match same_space {
        true if moved => report.carried_without_catalog = index.carry(&without_catalog)?,
        true => {}
        false => (report.without_catalog_in_old_space, report.to_encode) = (without_catalog.len(), without_catalog),
    }
    observe(SyncStep::CaughtUp, index.points())?;
    // Collections swaps replaced long enough ago that every server has left them go (deleted
    // before the description stops naming them, so that one whose deletion fails is tried
    // again by the next sync); the rest stay named, with the one this swap replaced.
    let earlier = kept.as_ref().map(|d| d.replaced.clone()).unwrap_or_default();
    let earlier = earlier.into_iter().filter(|r| r.collection != index.points() && Some(&r.collection) != replaced.as_ref()).collect();
    let (due, mut still_kept) = keep.due(earlier);
    let mut deleted_collections = Vec::new();
    for old in due {
        if index.delete_collection(&old.collection)? {
            deleted_collections.push(old.collection);
        }
    }
    if let Some(collection) = &replaced {
        still_kept.insert(0, ReplacedCollection { collection: collection.clone(), at: Some(keep.now_secs()) });
    }
    let kept_collections = still_kept.iter().map(|r| r.collection.clone()).collect();
    // The description once the points are in its space: servers without the catalog follow it.
    describe_collection(catalog, &space, store, &index, kept.as_ref(), still_kept)?;
    if read_after_filling && has_old {
        // Servers without the catalog wrote to the old collection until the description named
        // this one, also after the read above: what they added or removed since is read again.
        let again = without_catalog_in(&index)?;
        let now: std::collections::HashSet<&str> = again.iter().map(|p| p.product.id.as_str()).collect();
        let added: Vec<ProductWithoutCatalog> = again.iter().filter(|p| !carried.contains(&p.product.id)).cloned().collect();
        match same_space {
            true => {
                for gone in carried.iter().filter(|id| !now.contains(id.as_str())) {
                    index.remove_product(gone)?;
                }
                report.carried_without_catalog += index.carry(&added)?;
            }
            false => {
                report.to_encode.retain(|p| now.contains(p.product.id.as_str()));
                report.to_encode.extend(added);
                report.without_catalog_in_old_space = report.to_encode.len();
            }
        }
    }
    // Removals through servers without the catalog recorded while this sync ran: the fill, the
    // catch-up or the carry may have sent the product again.
    let (removed_meanwhile, recorded) = apply_removals(catalog, &index)?;
    removed_without_catalog += removed_meanwhile;
    for id in &recorded {
        index.remove_product(id)?;
    }
    // Before the settings servers with the catalog follow: one that reads them reads it too.
    catalog.set_setting(&sent_through_setting(&store.collection), &sent_through.to_string())?;
    catalog.set_setting(&synced_space_setting(&store.collection), &space.fingerprint())?;
    catalog.set_setting(&points_setting(&store.collection), index.points())?;
    Ok(SyncReport { recreated, replaced, deleted_collections, kept_collections, removed_without_catalog, ..report })
}

/// Removes from the catalog the products that servers without it removed from the collection
/// since the last sync (recorded beside the description, see [`QdrantIndex::recorded_removals`])
/// and forgets the records; how many the catalog held. Every `sync` does this first;
/// `index --store` too, before it imports, so that a product its source still lists comes
/// back as a product imported anew.
pub fn apply_recorded_removals(catalog: &mut SqliteCatalog, store: &QdrantConfig) -> Result<usize> {
    Ok(apply_removals(catalog, &QdrantIndex::connect_cluster(store.clone())?)?.0)
}

/// Catalog products that servers without the catalog replaced (added again under the same id:
/// their points carry no catalog key): a sync would send the catalog's older versions back, so
/// the caller, holding the model, takes them into the catalog first (`lookalike sync` encodes
/// their photos again). Empty while the collection does not exist.
pub fn replaced_without_catalog(catalog: &SqliteCatalog, store: &QdrantConfig) -> Result<Vec<ProductWithoutCatalog>> {
    let cluster = QdrantIndex::connect_cluster(store.clone())?;
    let (_, points) = points_collection(&cluster, store)?;
    if !cluster.collection_exists(&points)? {
        return Ok(Vec::new());
    }
    // Ids first: products only ever added through such servers are most of them, and their
    // photos need not travel.
    let index = cluster.open_existing_points(points)?;
    let mut replaced = Vec::new();
    for id in index.ids_without_catalog()? {
        if catalog.get_by_id(&id)?.is_none() {
            continue;
        }
        if let Some((product, _)) = index.product(&id)? {
            replaced.push(ProductWithoutCatalog { product, image: index.product_image(&id)?, vector: None });
        }
    }
    Ok(replaced)
}

/// Removes products by id from the collection the description names (after swaps, the one
/// holding the points), whoever added them: a product added or replaced through a server
/// without the catalog has a point without a catalog key, which a sync keeps. Which ids had a
/// point.
pub fn remove_from_collection(store: &QdrantConfig, ids: &[String]) -> Result<Vec<bool>> {
    let cluster = QdrantIndex::connect_cluster(store.clone())?;
    let (_, points) = points_collection(&cluster, store)?;
    if !cluster.collection_exists(&points)? {
        return Ok(vec![false; ids.len()]);
    }
    let mut index = cluster.open_existing_points(points)?;
    ids.iter().map(|id| index.remove_product(id)).collect()
}

/// [`apply_recorded_removals`] on a connected cluster: how many the catalog held, and the ids
/// recorded.
fn apply_removals(catalog: &mut SqliteCatalog, cluster: &QdrantIndex) -> Result<(usize, Vec<String>)> {
    let recorded = cluster.recorded_removals()?;
    let mut removed = 0;
    for id in &recorded {
        removed += usize::from(catalog.remove(id)?.is_some());
    }
    cluster.forget_removals(&recorded)?;
    Ok((removed, recorded))
}

/// Where a catalog's Qdrant collection stands, for `lookalike info`.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionStatus {
    /// The collection that holds the points: the one named, or the one a swap filled.
    pub points: String,
    /// Points in it and how it was made; `None` while it does not exist.
    pub held: Option<(usize, CollectionLayout)>,
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
    let held = match cluster.collection_exists(&points)? {
        true => {
            let layout = cluster.layout_of(&points)?;
            Some((cluster.open_existing_points(points.clone())?.count_now()?, layout))
        }
        false => None,
    };
    let own = SearchSpace::for_catalog(catalog)?.fingerprint();
    Ok(CollectionStatus {
        points,
        held,
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
    let mut put = Vec::new();
    for &key in &keys {
        match (catalog.vector(key)?, catalog.get(key)?) {
            (Some(vector), Some(product)) => {
                let image = payload_image(catalog, &product);
                let product = StoredProduct { id: product.id, metadata: product.metadata, colour: catalog.colour(key)? };
                put.push(ProductPoint { key, product, vector: space.map(&vector)?, image });
            }
            _ => index.remove(key)?,
        }
    }
    // In batches: a large import while the collection filled is thousands of products.
    index.put_products(put)?;
    Ok(keys.len())
}

/// The collection a swap fills next: `NAME_v2` after `NAME`, `NAME_v3` after `NAME_v2`.
fn next_points_collection(name: &str, current: &str) -> String {
    let generation = current.strip_prefix(name).and_then(|rest| rest.strip_prefix("_v")).and_then(|n| n.parse::<u64>().ok()).unwrap_or(1);
    format!("{name}_v{}", generation + 1)
}

/// What [`sync_qdrant`] does with the collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Syncs it where it is; refuses one whose vectors do not fit the catalog's search space
    /// (after `lookalike tune` changed their dimension; a collection's vector size is fixed
    /// when it is made), with a message naming `--swap` and `--recreate`.
    InPlace,
    /// Deletes one that does not fit and fills it afresh (searches fail meanwhile).
    Recreate,
    /// Fills a new collection beside it and moves every server to it at once.
    Swap,
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
fn synced_space_setting(collection: &str) -> String {
    format!("qdrant_synced_space:{collection}")
}

/// The collection that holds `store`'s points since this catalog's last `sync` (another than
/// the one named after `sync --swap`); `None` before any sync. A server with the catalog
/// reads it to follow a swap.
pub fn collection_points(catalog: &SqliteCatalog, store: &QdrantConfig) -> Result<Option<String>> {
    catalog.setting(&points_setting(&store.collection))
}

fn points_setting(collection: &str) -> String {
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

fn sent_through_setting(collection: &str) -> String {
    format!("qdrant_sent_through:{collection}")
}

/// A product's photo when it is small enough to travel in its point's payload
/// ([`MAX_PAYLOAD_IMAGE`]), for servers without the catalog to show.
pub fn payload_image(catalog: &SqliteCatalog, product: &Product) -> Option<Vec<u8>> {
    if let ImageRef::File(path) = &product.image {
        if std::fs::metadata(path).map_or(true, |m| m.len() > MAX_PAYLOAD_IMAGE as u64) {
            return None;
        }
    }
    catalog.image_bytes(product.key, &product.image).ok().filter(|bytes| bytes.len() <= MAX_PAYLOAD_IMAGE)
}

/// What a server needs to search a Qdrant collection without the catalog file, kept beside
/// the collection by the catalog's side ([`open_qdrant`]): the model that made the vectors
/// and the search space they were mapped into, the likeness bands measured on them, and how
/// the catalog names colours.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CollectionDescription {
    /// The model's name, as the catalog records it.
    pub model: String,
    /// Dimension of the model's vectors (before the search space maps them).
    pub model_dim: usize,
    /// A plug-in model's description JSON, as the catalog keeps it.
    pub model_json: Option<String>,
    pub space: StoredSpace,
    /// The likeness bands as the catalog records them ([`crate::likeness::SETTING`]).
    pub likeness: Option<String>,
    /// Whether the catalog has colour, and the metadata column colours are named in.
    pub has_colour: bool,
    pub colour_column: String,
    /// The columns with a keyword index in the collection: the facets it can count.
    pub facet_columns: Vec<String>,
    /// The learned foreground head (`tune --localise`), base64 of its bytes: where products
    /// are in a photo, which decides the query's colour.
    pub foreground: Option<String>,
    /// The collection that holds the points when it is not the one named: the one `lookalike
    /// sync --swap` filled beside it. Every server looks here to find the points, so one swap
    /// of the description moves them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points: Option<String>,
    /// The collections swaps moved the points from, newest first, kept for servers that have
    /// not yet read this description; a sync deletes each once it has been kept long enough
    /// ([`KeepReplaced`]). (Written by a lookalike before 2026-12-06 as one name, without a time.)
    #[serde(default, deserialize_with = "replaced_collections", skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<ReplacedCollection>,
}

/// A collection a swap moved the points from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReplacedCollection {
    pub collection: String,
    /// When the swap named the new collection, in seconds since the Unix epoch by the clock of
    /// the machine that ran it; absent when an older lookalike swapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
}

impl ReplacedCollection {
    /// Seconds since the swap replaced it, at time `now`: `None` when an older lookalike
    /// swapped (no time kept), or when the swap's time is ahead of `now` (another machine's
    /// clock).
    pub fn age_secs(&self, now: std::time::SystemTime) -> Option<u64> {
        let now = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        now.checked_sub(self.at?)
    }
}

/// Reads `replaced` as a list, or as the one name older descriptions kept.
fn replaced_collections<'de, D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Vec<ReplacedCollection>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Field {
        Name(String),
        List(Vec<ReplacedCollection>),
    }
    Ok(match <Field as serde::Deserialize>::deserialize(deserializer)? {
        Field::Name(collection) => vec![ReplacedCollection { collection, at: None }],
        Field::List(list) => list,
    })
}

/// How long a collection a swap replaced is kept before a sync deletes it, and the time now.
///
/// Servers move to the new collection when they next read the description: a replica every
/// 5 s, a server with the catalog on its next follow round. Deleting the old one before then
/// leaves a server searching a collection that is gone (it answers 503 until it moves), so a
/// second swap right after the first, as a script may run them, must keep it. The time is
/// given, not read inside, so that tests choose it.
#[derive(Debug, Clone, Copy)]
pub struct KeepReplaced {
    pub at_least: std::time::Duration,
    pub now: std::time::SystemTime,
}

impl KeepReplaced {
    /// Twelve of a replica's description checks: room for a few that fail.
    pub const DEFAULT: std::time::Duration = std::time::Duration::from_secs(60);

    /// Kept `at_least`, counted from now.
    pub fn from_now(at_least: std::time::Duration) -> KeepReplaced {
        KeepReplaced { at_least, now: std::time::SystemTime::now() }
    }

    fn now_secs(&self) -> u64 {
        self.now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    /// Splits `replaced` into the collections kept long enough (to delete) and the rest. One
    /// replaced by an older lookalike (no time) has been kept since before this one ran; one
    /// replaced "later" than now (another machine's clock ahead) is kept.
    fn due(&self, replaced: Vec<ReplacedCollection>) -> (Vec<ReplacedCollection>, Vec<ReplacedCollection>) {
        replaced.into_iter().partition(|r| r.at.is_none() || r.age_secs(self.now).is_some_and(|kept| kept >= self.at_least.as_secs()))
    }
}

/// A [`SearchSpace`] as the description keeps it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoredSpace {
    Identity,
    Centred {
        mean: Vec<f32>,
        /// The photo adapter (`tune --adapt`), base64 of its bytes: query photos go through it.
        /// (Absent from descriptions written before it was kept.)
        #[serde(default, skip_serializing_if = "Option::is_none")]
        adapter: Option<String>,
    },
    /// The projection's weights as little-endian f32, base64.
    Tuned {
        label: String,
        input_dim: usize,
        hidden: usize,
        output_dim: usize,
        weights: String,
    },
}

impl StoredSpace {
    pub fn of(space: &SearchSpace) -> StoredSpace {
        use base64::Engine as _;
        match space {
            SearchSpace::Identity => StoredSpace::Identity,
            SearchSpace::Centred { mean, adapter } => {
                StoredSpace::Centred { mean: mean.clone(), adapter: adapter.as_ref().map(|a| base64::engine::general_purpose::STANDARD.encode(a.to_bytes())) }
            }
            SearchSpace::Tuned(p) => StoredSpace::Tuned {
                label: p.label.clone(),
                input_dim: p.input_dim,
                hidden: p.hidden,
                output_dim: p.output_dim,
                weights: base64::engine::general_purpose::STANDARD.encode(p.weights_bytes()),
            },
        }
    }

    /// The search space it stands for.
    pub fn search_space(&self) -> Result<SearchSpace> {
        use base64::Engine as _;
        Ok(match self {
            StoredSpace::Identity => SearchSpace::Identity,
            StoredSpace::Centred { mean, adapter } => {
                let adapter = match adapter {
                    Some(text) => {
                        let bytes = base64::engine::general_purpose::STANDARD.decode(text).context("the photo adapter in the collection description is not base64")?;
                        Some(std::sync::Arc::new(crate::adapter::PhotoAdapter::from_bytes(&bytes)?))
                    }
                    None => None,
                };
                SearchSpace::Centred { mean: mean.clone(), adapter }
            }
            StoredSpace::Tuned { label, input_dim, hidden, output_dim, weights } => {
                let bytes = base64::engine::general_purpose::STANDARD.decode(weights).context("the tuned projection in the collection description is not base64")?;
                SearchSpace::Tuned(Box::new(crate::projection::Projection::from_weights(label, *input_dim, *hidden, *output_dim, &bytes)?))
            }
        })
    }
}

impl CollectionDescription {
    /// The description of `catalog`'s collection, its points in `index`'s collection (whose
    /// keyword-indexed columns are the facets); `None` before it has vectors (no model yet).
    fn of_catalog(
        catalog: &SqliteCatalog,
        space: &SearchSpace,
        store: &QdrantConfig,
        index: &QdrantIndex,
        replaced: Vec<ReplacedCollection>,
    ) -> Result<Option<CollectionDescription>> {
        use base64::Engine as _;
        let Some(vector_space) = catalog.vector_space()? else { return Ok(None) };
        let (points, facet_columns) = (index.points(), index.keyword_columns()?);
        let space = StoredSpace::of(space);
        let colours = crate::colour::ColourTable::load(catalog)?;
        Ok(Some(CollectionDescription {
            model: vector_space.model,
            model_dim: vector_space.dim,
            model_json: catalog.model_description()?,
            space,
            likeness: catalog.setting(crate::likeness::SETTING)?,
            has_colour: colours.has_colour(),
            colour_column: colours.column().to_string(),
            facet_columns,
            foreground: catalog.foreground_head()?.map(|head| base64::engine::general_purpose::STANDARD.encode(head.to_bytes())),
            points: (points != store.collection).then(|| points.to_string()),
            replaced,
        }))
    }

    /// The foreground head it carries, if the catalog had one.
    pub fn foreground_head(&self) -> Result<Option<crate::localise::ForegroundHead>> {
        use base64::Engine as _;
        let Some(text) = &self.foreground else { return Ok(None) };
        let bytes = base64::engine::general_purpose::STANDARD.decode(text).context("the foreground head in the collection description is not base64")?;
        crate::localise::ForegroundHead::from_bytes(&bytes).map(Some)
    }

    /// The search space it describes.
    pub fn search_space(&self) -> Result<SearchSpace> {
        self.space.search_space()
    }

    /// The collection that holds the points of the collection named `named`.
    pub fn points<'a>(&'a self, named: &'a str) -> &'a str {
        self.points.as_deref().unwrap_or(named)
    }
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
fn points_collection(cluster: &QdrantIndex, store: &QdrantConfig) -> Result<(Option<CollectionDescription>, String)> {
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
        format!(
            "collection {:?} has no lookalike description (model, search space) yet: run `lookalike sync --db CATALOG --store {} --collection {}` once on the catalog's machine",
            store.collection, store.url, store.collection
        )
    })?;
    let description: CollectionDescription = serde_json::from_slice(&bytes).context("reading the collection's description")?;
    Ok((description, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each `sync --swap` fills a collection of its own beside the named one (never the
    /// description's side collection), and a description without `points` (written before
    /// swaps, or never swapped) names the collection it was given.
    #[test]
    fn swaps_fill_numbered_collections_and_descriptions_name_them() -> Result<()> {
        assert_eq!(next_points_collection("shop", "shop"), "shop_v2");
        assert_eq!(next_points_collection("shop", "shop_v2"), "shop_v3");
        assert_eq!(next_points_collection("shop", "shop_v19"), "shop_v20");
        assert_eq!(next_points_collection("shop_v2", "shop_v2"), "shop_v2_v2");
        let old = r#"{"model":"m","model_dim":4,"model_json":null,"space":{"kind":"identity"},"likeness":null,"has_colour":false,"colour_column":"baseColour","facet_columns":[],"foreground":null}"#;
        let read: CollectionDescription = serde_json::from_str(old)?;
        assert_eq!((read.points("shop"), read.replaced.as_slice()), ("shop", &[][..]));
        let replaced = |collection: &str, at| ReplacedCollection { collection: collection.into(), at };
        let swapped = CollectionDescription { points: Some("shop_v3".into()), replaced: vec![replaced("shop_v2", Some(1_000)), replaced("shop", None)], ..read.clone() };
        let back: CollectionDescription = serde_json::from_slice(&serde_json::to_vec(&swapped)?)?;
        assert_eq!(back, swapped);
        // As the first lookalike with swaps wrote it: one name, no time.
        let one = old.replace(r#""foreground":null"#, r#""foreground":null,"points":"shop_v2","replaced":"shop""#);
        let read_one: CollectionDescription = serde_json::from_str(&one)?;
        assert_eq!((read_one.points("shop"), read_one.replaced.clone()), ("shop_v2", vec![replaced("shop", None)]));
        Ok(())
    }

    /// A collection a swap replaced is deleted only once servers have had `at_least` to move
    /// off it: a second swap right after the first keeps it. One an older lookalike replaced
    /// (no time) is old enough; one stamped ahead of this machine's clock is not.
    #[test]
    fn replaced_collections_are_kept_until_servers_have_had_time_to_move() {
        let replaced = |collection: &str, at| ReplacedCollection { collection: collection.into(), at };
        let at = |secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let keep = |now| KeepReplaced { at_least: KeepReplaced::DEFAULT, now: at(now) };
        let names = |list: Vec<ReplacedCollection>| list.into_iter().map(|r| r.collection).collect::<Vec<String>>();
        let list = vec![replaced("shop_v3", Some(10_000)), replaced("shop_v2", Some(9_000)), replaced("shop", None), replaced("ahead", Some(20_000))];
        let (due, kept) = keep(10_030).due(list.clone());
        assert_eq!((names(due), names(kept)), (vec!["shop_v2".to_string(), "shop".into()], vec!["shop_v3".to_string(), "ahead".into()]));
        let (due, kept) = keep(10_060).due(list.clone());
        assert_eq!((names(due), names(kept)), (vec!["shop_v3".to_string(), "shop_v2".into(), "shop".into()], vec!["ahead".to_string()]));
        let (due, _) = KeepReplaced { at_least: std::time::Duration::ZERO, now: at(10_000) }.due(list);
        assert_eq!(names(due), vec!["shop_v3", "shop_v2", "shop"], "kept for no time: all but the one from the future");
    }

    /// A server without the catalog maps queries exactly as the catalog's side does: every kind
    /// of search space survives the description's JSON unchanged (same fingerprint, same
    /// mapped vector).
    #[test]
    fn search_spaces_survive_the_collection_description() -> Result<()> {
        let weights: Vec<u8> = (0..(3 * 4 + 3 + 2 * 3 + 2)).flat_map(|i| (i as f32 * 0.37 - 2.0).sin().to_le_bytes()).collect();
        let tuned = SearchSpace::Tuned(Box::new(crate::projection::Projection::from_weights("articleType", 4, 3, 2, &weights)?));
        // A photo adapter of rank 1 on 4-d vectors: dim, rank, then what it reads and writes.
        let adapter: Vec<u8> = [4u32, 1].iter().flat_map(|n| n.to_le_bytes()).chain([0.3f32, -0.1, 0.2, 0.4, 0.0, 0.6, 0.0, 0.8].iter().flat_map(|w| w.to_le_bytes())).collect();
        let adapter = std::sync::Arc::new(crate::adapter::PhotoAdapter::from_bytes(&adapter)?);
        let mean = vec![0.1, -0.2, 0.3, 0.05];
        let adapted = SearchSpace::Centred { mean: mean.clone(), adapter: Some(adapter) };
        for space in [SearchSpace::Identity, SearchSpace::Centred { mean: mean.clone(), adapter: None }, adapted, tuned] {
            let json = serde_json::to_vec(&StoredSpace::of(&space))?;
            let back = serde_json::from_slice::<StoredSpace>(&json)?.search_space()?;
            assert_eq!(back.fingerprint(), space.fingerprint(), "{}", space.describe());
            assert_eq!(back.adapts_photos(), space.adapts_photos(), "{}", space.describe());
            let v = [0.5, 0.1, 0.7, 0.2];
            assert_eq!(back.map(&v)?, space.map(&v)?);
            assert_eq!(back.map_photo(&v)?, space.map_photo(&v)?);
        }
        // A description written before the adapter was kept reads as a space without one.
        let old = serde_json::from_str::<StoredSpace>(r#"{"kind": "centred", "mean": [0.1, -0.2, 0.3, 0.05]}"#)?.search_space()?;
        assert!(!old.adapts_photos());
        Ok(())
    }
}
