//! `lookalike sync`: makes a catalog's collection agree with the catalog, in place, recreated,
//! or by a swap that fills a new collection beside it and moves every server at once.

use anyhow::{bail, Result};

use super::description::{describe_collection, ReplacedCollection};
use super::without_catalog::{apply_patches, apply_removals, take_patches};
use super::{connect_qdrant_to, payload_images, points_collection, points_setting, send_changes_since, sent_through_setting, synced_space_setting};
use crate::catalog::{SqliteCatalog, VectorKind};
use crate::index::qdrant::{ProductWithoutCatalog, QdrantConfig, QdrantIndex, SyncReport};
use crate::space::SearchSpace;
use crate::types::{Key, Product};

/// Makes the Qdrant collection agree with the catalog (adds what is missing, deletes what is
/// gone), and returns what changed.
///
/// Once every point is in the catalog's search space, the catalog records so
/// ([`super::collection_synced_space`]): a server on this catalog and collection that has kept
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
    // A collection's vectors have the catalog model's dimension, which only its first
    // import records.
    if catalog.vector_space()?.is_none() {
        bail!("{} holds no products yet: import some with `lookalike index` before making a Qdrant collection of it", catalog.path().display());
    }
    let cluster = QdrantIndex::connect_cluster(store.clone())?;
    // Products removed through servers without the catalog leave it first: the fill below
    // would send them back.
    let (mut removed_without_catalog, _) = apply_removals(catalog, &cluster)?;
    // And the metadata they changed comes in: the fill below sends the catalog's.
    let mut patched_without_catalog = apply_patches(catalog, store)?;
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
    // it reads them once the new one is full, and those added meanwhile go too. In place and in
    // the same space they stay where they are, as they are: nothing to read (with their photos
    // and vectors, that read was most of such a sync's traffic).
    let read_early = match mode {
        SyncMode::Swap => None,
        SyncMode::InPlace if same_space => Some(Vec::new()),
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
    let mut report = index.sync(exact.keys(), |key| exact.vector(key), |keys| payload_images(catalog, &keys.iter().map(|key| products.get(key)).collect::<Vec<_>>()))?;
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
        // And the catalog products whose details they changed there since the first read
        // (the fill sent the catalog's): taken into the catalog, and from it to this one.
        let before = catalog.generation()?;
        let old = QdrantIndex::connect_cluster(store.clone())?.open_existing_points(current.clone())?;
        patched_without_catalog += take_patches(catalog, &old)?;
        send_changes_since(catalog, &space, &mut index, before)?;
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
    Ok(SyncReport { recreated, replaced, deleted_collections, kept_collections, removed_without_catalog, patched_without_catalog, ..report })
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

/// The collection a swap fills next: `NAME_v2` after `NAME`, `NAME_v3` after `NAME_v2`.
fn next_points_collection(name: &str, current: &str) -> String {
    let generation = current.strip_prefix(name).and_then(|rest| rest.strip_prefix("_v")).and_then(|n| n.parse::<u64>().ok()).unwrap_or(1);
    format!("{name}_v{}", generation + 1)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each `sync --swap` fills a collection of its own beside the named one (never the
    /// description's side collection).
    #[test]
    fn swaps_fill_numbered_collections() {
        assert_eq!(next_points_collection("shop", "shop"), "shop_v2");
        assert_eq!(next_points_collection("shop", "shop_v2"), "shop_v3");
        assert_eq!(next_points_collection("shop", "shop_v19"), "shop_v20");
        assert_eq!(next_points_collection("shop_v2", "shop_v2"), "shop_v2_v2");
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
}
