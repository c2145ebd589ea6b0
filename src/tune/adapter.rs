//! The photo adapter `lookalike tune --adapt` learns: from shopper-like photos of the catalog's
//! own products to their catalog shots, in the untuned search space (no labels needed), and
//! what it gains on products held out of its training.

use anyhow::{ensure, Context, Result};
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use std::collections::HashMap;

use super::held_out::{held_out_photos, measure_adapter_held_out, AdapterHeldOut, HeldOut};
use super::shopper_views;
use crate::catalog::{SqliteCatalog, VectorKind};
use crate::types::{Key, Product, SamePhotos};

/// What `lookalike tune --adapt` learned from, and how much nearer their own products it moved
/// its training photos.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterReport {
    /// Shopper-like photos of catalog products, and clean catalog shots kept in place.
    pub photos: usize,
    pub clean: usize,
    pub ridge: f32,
    pub identity_weight: f32,
    /// Mean cosine of a training photo to its own product's vector, before and after.
    pub cosine_before: f64,
    pub cosine_after: f64,
    /// Search for a shopper-like photo of each of a few products held out of training,
    /// without the adapter and with it; none when the catalog is too small to spare them.
    pub held_out: Option<AdapterHeldOut>,
    pub seconds: f64,
}

/// What `tune --adapt` learns from: how many shopper-like photos, how many products to hold out
/// of training and measure on (see [`super::pick_held_out`]), the label column P@10 counts by
/// when products have it (the adapter itself learns without labels), and the seed.
#[derive(Debug, Clone)]
pub struct AdapterOptions<'a> {
    pub photos: usize,
    pub hold_out: usize,
    pub label: &'a str,
    pub seed: u64,
}

/// Learns the photo adapter ([`crate::adapter`]) for the catalog's untuned search space from
/// `options.photos` shopper-like photos of its own products and up to as many clean catalog
/// shots (no labels needed), leaving out the products it holds out to measure it on.
pub fn train_photo_adapter(catalog: &SqliteCatalog, encoder: &dyn crate::encoder::Encoder, options: &AdapterOptions) -> Result<(crate::adapter::PhotoAdapter, AdapterReport)> {
    let started = std::time::Instant::now();
    let AdapterOptions { photos, hold_out, label, seed } = *options;
    ensure!(photos > 0, "--augment must be at least 1 to learn the photo adapter");
    // The space the adapter works in: the catalog's centring, never an earlier adapter's output.
    let space = crate::space::SearchSpace::centred(catalog, VectorKind::Primary)?.without_photo_adapter();
    let mut products = catalog.all_products()?;
    let HeldOut { measured: held_out, left_out } = super::held_out::hold_out(by_label_value(&products, label), &SamePhotos::of(&products), hold_out, seed);
    products.retain(|p| !left_out.contains(&p.key));
    let (views, picked) = shopper_views(catalog, encoder, &products, photos, seed)?;
    ensure!(!picked.is_empty(), "none of the catalog's photos could be read");
    let map_rows = |rows: &mut dyn Iterator<Item = Vec<f32>>| -> Result<Array2<f32>> {
        let mapped: Vec<Vec<f32>> = rows.map(|v| space.map(&v)).collect::<Result<_>>()?;
        let dim = mapped.first().map_or(0, Vec::len);
        Array2::from_shape_vec((mapped.len(), dim), mapped.concat()).context("adapter rows")
    };
    let shot_of = |key: Key| -> Result<Vec<f32>> { catalog.vector(key)?.with_context(|| format!("product {key:?} has no vector; run `lookalike index` first")) };
    let x = map_rows(&mut views.rows().into_iter().map(|r| r.to_vec()))?;
    let y = map_rows(&mut picked.iter().map(|&i| shot_of(products[i].key)).collect::<Result<Vec<_>>>()?.into_iter())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xADA7);
    let mut order: Vec<usize> = (0..products.len()).collect();
    order.shuffle(&mut rng);
    order.truncate(picked.len());
    let clean = map_rows(&mut order.iter().map(|&i| shot_of(products[i].key)).collect::<Result<Vec<_>>>()?.into_iter())?;
    let adapter = crate::adapter::fit(x.view(), y.view(), clean.view(), crate::adapter::RIDGE, crate::adapter::IDENTITY_WEIGHT)?;
    let (mut before, mut after) = (0.0, 0.0);
    for (photo, shot) in x.rows().into_iter().zip(y.rows()) {
        let (photo, shot) = (photo.to_vec(), shot.to_vec());
        before += f64::from(crate::index::dot(&photo, &shot));
        after += f64::from(crate::index::dot(&adapter.apply(&photo)?, &shot));
    }
    let n = x.nrows() as f64;
    let held_out = match held_out.is_empty() {
        true => None,
        false => {
            tracing::info!("measuring the photo adapter on {} products held out of its training", held_out.len());
            let (photos, keys) = held_out_photos(catalog, encoder, &held_out, seed)?;
            Some(measure_adapter_held_out(catalog, &space, &space.with_photo_adapter(adapter.clone()), &photos, &keys, label)?)
        }
    };
    let report = AdapterReport {
        photos: x.nrows(),
        clean: clean.nrows(),
        ridge: crate::adapter::RIDGE,
        identity_weight: crate::adapter::IDENTITY_WEIGHT,
        cosine_before: before / n,
        cosine_after: after / n,
        held_out,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((adapter, report))
}

/// Each product with a number for its value of `label` (one number for the products without
/// it), so that held-out products are drawn from every value.
fn by_label_value(products: &[Product], label: &str) -> Vec<(Key, usize)> {
    let mut values: HashMap<Option<&str>, usize> = HashMap::new();
    products
        .iter()
        .map(|p| {
            let next = values.len();
            (p.key, *values.entry(p.metadata.get(label).map(String::as_str)).or_insert(next))
        })
        .collect()
}
