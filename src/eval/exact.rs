//! `eval --exact N`: catalog products re-photographed as a shopper would; is each found itself?
//! `eval --product-photos DIR`: the same, from photos of catalog products the shop took anew.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use rand::SeedableRng;
use serde::Serialize;

use super::methods::{MethodRanking, Methods};
use super::queries::ProductPhotos;
use super::stratified_sample;
use crate::catalog::SqliteCatalog;
use crate::types::{Key, SamePhotos};

/// Catalog products re-photographed as a shopper would ([`crate::perturb::perturb`]: on a
/// background, cropped, rotated, re-lit, blurred, JPEG): does search find that very product?
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExactReport {
    pub products: usize,
    /// Per method, as in [`super::EvalReport::methods`].
    pub methods: BTreeMap<String, ExactRecall>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExactRecall {
    /// Share of the re-photographed products ranked first.
    pub exact_recall_at_1: f64,
    /// Share ranked in the top 10.
    pub exact_recall_at_10: f64,
}

/// [`ExactReport`]: `n` catalog products (stratified by the label `columns` give them, seeded)
/// re-photographed by [`crate::perturb::perturb`] and searched with every method. Finding a
/// product itself needs no label: in a catalog where none has the columns, the sample is drawn
/// from all products alike. A product with the same photo (`same_photos`) counts as itself.
pub(super) fn evaluate_exact(
    catalog: &SqliteCatalog,
    methods: &Methods,
    products: &[crate::types::Product],
    same_photos: &SamePhotos,
    columns: &[&str],
    (n, seed): (usize, u64),
    each_photo: &mut dyn FnMut(FoundPhoto<'_>) -> Result<()>,
) -> Result<ExactReport> {
    let mut labelled: Vec<(&crate::types::Product, String)> =
        products.iter().filter_map(|p| Some((p, super::joined_label(columns, |c| p.metadata.get(c).map(String::as_str))?))).collect();
    if labelled.is_empty() {
        labelled = products.iter().map(|p| (p, String::new())).collect();
    }
    let labels: Vec<String> = labelled.iter().map(|(_, l)| l.clone()).collect();
    let picked = stratified_sample(&labels, n.min(labelled.len()), seed ^ 0x00E7_AC71);
    let photos = picked.iter().enumerate().map(|(i, &pick)| {
        let product = labelled[pick].0;
        let image = catalog.decoded_image(product.key, &product.image)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64((seed ^ 0x00E7_AC71).wrapping_mul(1_000_003).wrapping_add(i as u64));
        Ok((None, product.key, crate::perturb::perturb(&image, &mut rng)))
    });
    Ok(ExactReport { products: picked.len(), methods: found_itself(methods, photos, same_photos, each_photo)? })
}

/// Photos of catalog products taken anew (`eval --product-photos`): does search find the
/// product each shows?
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProductPhotoReport {
    /// Photos searched.
    pub photos: usize,
    /// Products they show.
    pub products: usize,
    /// Per method, as in [`super::EvalReport::methods`]: the share of the photos whose product
    /// is ranked first, and in the top 10.
    pub methods: BTreeMap<String, ExactRecall>,
    /// Photos left out: their name is no product's id.
    pub unknown: Vec<String>,
    /// Photos left out: the catalog's own photo of their product.
    pub catalog_photos: Vec<String>,
    /// Photos left out: they could not be read (with the reason).
    pub unreadable: Vec<String>,
}

/// [`ProductPhotoReport`] of the photos read from a folder, searched with every method as
/// they are (a photo taken anew is already what a shopper sends: not perturbed). A product
/// with the same catalog photo as the one shown (`same_photos`) counts as it.
pub(super) fn evaluate_product_photos(
    methods: &Methods,
    read: ProductPhotos,
    same_photos: &SamePhotos,
    each_photo: &mut dyn FnMut(FoundPhoto<'_>) -> Result<()>,
) -> Result<ProductPhotoReport> {
    let products: BTreeSet<Key> = read.photos.iter().map(|p| p.product).collect();
    Ok(ProductPhotoReport {
        photos: read.photos.len(),
        products: products.len(),
        methods: found_itself(methods, read.photos.into_iter().map(|p| Ok((Some(p.id), p.product, p.image))), same_photos, each_photo)?,
        unknown: read.unknown,
        catalog_photos: read.catalog_photos,
        unreadable: read.unreadable.into_iter().map(|(id, reason)| format!("{id} ({reason})")).collect(),
    })
}

/// One photo of a catalog product, searched: its name in the folder (`None`: re-photographed
/// by `--exact`), the product it shows, and every method's ranking of it.
pub(super) struct FoundPhoto<'a> {
    pub photo: Option<&'a str>,
    pub product: Key,
    pub rankings: &'a [MethodRanking],
}

/// For each method, the share of `photos` (each of a catalog product: its name, the product,
/// the photo) that find their own product (or one with its photo) at rank 1 and in the top 10.
/// `each_photo` is told every photo's rankings as they are made.
fn found_itself(
    methods: &Methods,
    photos: impl Iterator<Item = Result<(Option<String>, Key, image::DynamicImage)>>,
    same_photos: &SamePhotos,
    each_photo: &mut dyn FnMut(FoundPhoto<'_>) -> Result<()>,
) -> Result<BTreeMap<String, ExactRecall>> {
    let mut found: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    let mut searched = 0usize;
    for photo in photos {
        let (name, product, photo) = photo?;
        searched += 1;
        let rankings = methods.rank(&photo)?.0;
        for (method, hits, _) in &rankings {
            let tally = found.entry(method).or_default();
            tally.0 += usize::from(hits.first().is_some_and(|h| same_photos.is_product(h.key, product)));
            tally.1 += usize::from(hits.iter().any(|h| same_photos.is_product(h.key, product)));
        }
        each_photo(FoundPhoto { photo: name.as_deref(), product, rankings: &rankings })?;
    }
    let share = |count: usize| count as f64 / searched.max(1) as f64;
    Ok(found.into_iter().map(|(m, (at1, at10))| (m.to_string(), ExactRecall { exact_recall_at_1: share(at1), exact_recall_at_10: share(at10) })).collect())
}
