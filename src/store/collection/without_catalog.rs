//! Writes made through servers without the catalog that the catalog takes in: products they
//! removed (recorded beside the description), catalog products they replaced and catalog
//! products whose metadata they changed, which a sync would otherwise send back in the
//! catalog's version.

use anyhow::Result;

use super::points_collection;
use crate::catalog::{IndexedChange, SqliteCatalog};
use crate::index::qdrant::{ProductWithoutCatalog, QdrantConfig, QdrantIndex};

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

/// Takes into the catalog the metadata of catalog products that servers without the catalog
/// changed (`PATCH /api/products/{id}`: their points are marked, see
/// [`QdrantIndex::patch_product`]), so that a sync that sends the catalog's products (to a new
/// collection, or in a new search space) keeps the change; how many changed in the catalog.
/// The marks are dropped before the metadata is read: a change landing in between is marked
/// again, for the next sync, rather than dropped unread.
pub(super) fn apply_patches(catalog: &mut SqliteCatalog, store: &QdrantConfig) -> Result<usize> {
    let cluster = QdrantIndex::connect_cluster(store.clone())?;
    let (_, points) = points_collection(&cluster, store)?;
    if !cluster.collection_exists(&points)? {
        return Ok(0);
    }
    take_patches(catalog, &cluster.open_existing_points(points)?)
}

/// [`apply_patches`] from the collection `index` holds: also the one a swap replaced, which
/// servers without the catalog change until they read that the swap is done.
pub(super) fn take_patches(catalog: &mut SqliteCatalog, index: &QdrantIndex) -> Result<usize> {
    let ids = index.patched_without_catalog()?;
    index.forget_patches(&ids)?;
    let mut changes = Vec::new();
    for id in ids {
        let Some(indexed) = catalog.get_by_id(&id)? else { continue };
        if let Some((shown, _)) = index.product(&id)?.filter(|(shown, _)| shown.metadata != indexed.metadata) {
            changes.push(IndexedChange { id, colour: None, metadata: Some(shown.metadata) });
        }
    }
    catalog.refresh_indexed(&changes)
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
pub(super) fn apply_removals(catalog: &mut SqliteCatalog, cluster: &QdrantIndex) -> Result<(usize, Vec<String>)> {
    let recorded = cluster.recorded_removals()?;
    let mut removed = 0;
    for id in &recorded {
        removed += usize::from(catalog.remove(id)?.is_some());
    }
    cluster.forget_removals(&recorded)?;
    Ok((removed, recorded))
}
