//! What tuning gains on products it did not learn from: `tune` holds a few labelled products
//! out of training, photographs each as a shopper would ([`crate::perturb`]), and searches the
//! whole catalog with those photos in the space search used before and in the tuned one.
//!
//! Why inside `tune`: its train accuracy is measured on the products it learned from and says
//! little of what shoppers will get, and a shop should not need a folder of labelled photos
//! and a second command to learn whether tuning helped its catalog. `tune --adapt` measures
//! its photo adapter the same way: the same photos searched without it and with it.

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use ndarray::{Array2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::Labelled;
use crate::catalog::{SqliteCatalog, VectorKind};
use crate::index::{Precision, VectorIndex};
use crate::space::SearchSpace;
use crate::types::{Key, Product, SamePhotos};

/// Mixed into `tune --seed` for the held-out products and their photos: other draws than
/// training's.
const HELD_OUT_SEED: u64 = 0x04E1_D0A7;

/// Fewer held-out products than this measure too little to be worth the training they cost.
pub const MIN_HELD_OUT: usize = 20;

/// Search quality for the held-out products' photos in one space.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeldOutScores {
    /// Share of the first 10 results with the photo's label (P@10, as `eval` counts it); none
    /// when the products have no such label (the photo adapter learns without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision_at_10: Option<f64>,
    /// Share of the photos whose own product comes first.
    pub found_at_1: f64,
    /// Share of the photos whose own product is in the first 10.
    pub found_at_10: f64,
}

/// [`HeldOutScores`] of the same photos before tuning (the catalog's untuned space) and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldOutReport {
    /// Products held out of training, one shopper-like photo each.
    pub products: usize,
    pub untuned: HeldOutScores,
    pub tuned: HeldOutScores,
}

impl HeldOutReport {
    /// One line for `tune` and `info`.
    pub fn summary(&self, label: &str) -> String {
        format!("on shopper-like photos of {} products held out of training: {} (untuned -> tuned)", self.products, changes(&self.untuned, &self.tuned, label))
    }

    /// Whether tuning made the held-out photos' results worse on the label it learned.
    pub fn tuning_hurt(&self) -> bool {
        matches!((self.untuned.precision_at_10, self.tuned.precision_at_10), (Some(before), Some(after)) if after < before)
    }
}

/// [`HeldOutScores`] of the same photos searched without the photo adapter and with it (the
/// catalog's untuned space, `tune --adapt`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterHeldOut {
    /// Products held out of the adapter's training, one shopper-like photo each.
    pub products: usize,
    /// The label P@10 counts by, when the held-out products have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub without: HeldOutScores,
    pub with: HeldOutScores,
}

impl AdapterHeldOut {
    /// One line for `tune --adapt` and `info`.
    pub fn summary(&self) -> String {
        let label = self.label.as_deref().unwrap_or("");
        format!("on shopper-like photos of {} products held out of its training: {} (without -> with the adapter)", self.products, changes(&self.without, &self.with, label))
    }

    /// Whether the adapter found fewer of the held-out photos' own products in the top 10.
    pub fn adapter_hurt(&self) -> bool {
        self.with.found_at_10 < self.without.found_at_10
    }
}

/// "P@10 by LABEL a -> b, the very product first c -> d, in the top 10 e -> f".
fn changes(before: &HeldOutScores, after: &HeldOutScores, label: &str) -> String {
    let precision = match (before.precision_at_10, after.precision_at_10) {
        (Some(before), Some(after)) => format!("P@10 by {label} {before:.3} -> {after:.3}, "),
        _ => String::new(),
    };
    format!("{precision}the very product first {:.3} -> {:.3}, in the top 10 {:.3} -> {:.3}", before.found_at_1, after.found_at_1, before.found_at_10, after.found_at_10)
}

/// Up to `wanted` of the `labelled` products (each with its label value's number; a product
/// may come more than once), seeded, but at most a tenth of them, and a tenth of each label
/// value's (so a value of fewer than 10 products keeps every one to learn from); none when
/// that is fewer than [`MIN_HELD_OUT`].
pub fn pick_held_out(labelled: impl IntoIterator<Item = (Key, usize)>, wanted: usize, seed: u64) -> HashSet<Key> {
    let mut label_of: HashMap<Key, usize> = HashMap::new();
    for (key, label) in labelled {
        label_of.entry(key).or_insert(label);
    }
    let mut products: Vec<(Key, usize)> = label_of.into_iter().collect();
    products.sort_unstable();
    let n = wanted.min(products.len() / 10);
    if n < MIN_HELD_OUT {
        return HashSet::new();
    }
    let mut per_label: HashMap<usize, usize> = HashMap::new();
    for (_, label) in &products {
        *per_label.entry(*label).or_default() += 1;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ HELD_OUT_SEED);
    products.shuffle(&mut rng);
    let (mut held, mut taken) = (HashSet::new(), HashMap::<usize, usize>::new());
    for (key, label) in products {
        let of_label = taken.entry(label).or_default();
        if held.len() < n && *of_label < per_label[&label] / 10 {
            *of_label += 1;
            held.insert(key);
        }
    }
    held
}

/// Which products [`hold_out`] measures on, and which training leaves out.
#[derive(Debug, Clone, Default)]
pub struct HeldOut {
    /// Held out of training to measure what it gains ([`pick_held_out`]): one listing of a
    /// photo at most.
    pub measured: HashSet<Key>,
    /// Left out of every training row: the measured products, the other listings of their
    /// photos (a size variant left in training would be the measured product itself), and
    /// each shared photo's listings after its first (one listing stands for a photo, so the
    /// instance term never tells identical twins apart and no photo counts thrice).
    pub left_out: HashSet<Key>,
}

/// [`pick_held_out`] over one listing of each photo (`same_photos`), with what training must
/// leave out for it ([`HeldOut::left_out`]).
pub fn hold_out(labelled: impl IntoIterator<Item = (Key, usize)>, same_photos: &SamePhotos, wanted: usize, seed: u64) -> HeldOut {
    let later = same_photos.later_listings();
    let measured = pick_held_out(labelled.into_iter().filter(|(key, _)| !later.contains(key)), wanted, seed);
    let mut left_out = same_photos.with_twins(&measured);
    left_out.extend(later);
    HeldOut { measured, left_out }
}

impl Labelled {
    /// Each row's product and label value.
    pub fn products(&self) -> impl Iterator<Item = (Key, usize)> + '_ {
        self.keys.iter().copied().zip(self.labels.iter().copied())
    }

    /// These rows without those of the products in `left_out`.
    pub fn without(&self, left_out: &HashSet<Key>) -> Labelled {
        let kept: Vec<usize> = (0..self.keys.len()).filter(|&row| !left_out.contains(&self.keys[row])).collect();
        Labelled {
            features: self.features.select(Axis(0), &kept),
            labels: kept.iter().map(|&row| self.labels[row]).collect(),
            keys: kept.iter().map(|&row| self.keys[row]).collect(),
        }
    }
}

/// One shopper-like photo of each product in `held_out`, encoded by `encoder` (the catalog's
/// own model, as query photos are): the model vectors and the product each shows.
pub fn held_out_photos(catalog: &SqliteCatalog, encoder: &dyn crate::encoder::Encoder, held_out: &HashSet<Key>, seed: u64) -> Result<(Array2<f32>, Vec<Key>)> {
    let mut products: Vec<Product> = catalog.all_products()?.into_iter().filter(|p| held_out.contains(&p.key)).collect();
    products.sort_unstable_by_key(|p| p.key);
    let picks: Vec<usize> = (0..products.len()).collect();
    let (features, picked) = super::photographed(catalog, encoder, &products, &picks, seed ^ HELD_OUT_SEED)?;
    Ok((features, picked.into_iter().map(|i| products[i].key).collect()))
}

/// Searches the catalog with `photos` (each of the product in `keys`) in the `untuned` space
/// and in the `tuned` one (the space and the catalog's vectors indexed in it, which `tune`
/// builds once for this and its likeness bands), counting relevance by the products' `label`.
pub fn measure_held_out(
    catalog: &SqliteCatalog,
    untuned: &SearchSpace,
    tuned: (&SearchSpace, &dyn VectorIndex),
    photos: &Array2<f32>,
    keys: &[Key],
    label: &str,
) -> Result<HeldOutReport> {
    let relevance = Relevance::of(catalog, label)?;
    let untuned_index = untuned.build_index(catalog, VectorKind::Primary, Precision::F32)?;
    Ok(HeldOutReport {
        products: keys.len(),
        untuned: held_out_scores(&untuned_index, untuned, photos, keys, &relevance)?,
        tuned: held_out_scores(tuned.1, tuned.0, photos, keys, &relevance)?,
    })
}

/// Searches the catalog with `photos` (each of the product in `keys`) in the untuned space
/// `without` the photo adapter and `with` it (the same catalog vectors: the adapter maps only
/// photos), with P@10 by `label` when the products have it.
pub fn measure_adapter_held_out(catalog: &SqliteCatalog, without: &SearchSpace, with: &SearchSpace, photos: &Array2<f32>, keys: &[Key], label: &str) -> Result<AdapterHeldOut> {
    let relevance = Relevance::of(catalog, label)?;
    let index = without.build_index(catalog, VectorKind::Primary, Precision::F32)?;
    let without = held_out_scores(&index, without, photos, keys, &relevance)?;
    let with = held_out_scores(&index, with, photos, keys, &relevance)?;
    let label = without.precision_at_10.map(|_| label.to_string());
    Ok(AdapterHeldOut { products: keys.len(), label, without, with })
}

/// What a held-out photo's results are counted by: each product's value of the label
/// (products without it are left out), and which products share a photo (any of them is the
/// very product).
#[derive(Default)]
struct Relevance {
    label_of: HashMap<Key, String>,
    same_photos: SamePhotos,
}

impl Relevance {
    fn of(catalog: &SqliteCatalog, label: &str) -> Result<Relevance> {
        let products = catalog.all_products()?;
        let same_photos = SamePhotos::of(&products);
        let label_of = products.into_iter().filter_map(|mut p| Some((p.key, p.metadata.remove(label)?))).collect();
        Ok(Relevance { label_of, same_photos })
    }
}

/// [`HeldOutScores`] of `photos` (each of the product in `keys`) searched over `index` (the
/// catalog's vectors in `space`), counted by `relevance`; with no P@10 when none of the
/// photos' products has a value of the label.
fn held_out_scores(index: &dyn VectorIndex, space: &SearchSpace, photos: &Array2<f32>, keys: &[Key], relevance: &Relevance) -> Result<HeldOutScores> {
    let mut ranked = Vec::with_capacity(keys.len());
    for photo in photos.rows() {
        let hits = index.search(&space.map_photo(&photo.to_vec())?, 10, None)?;
        ranked.push(hits.into_iter().map(|h| h.key).collect::<Vec<Key>>());
    }
    Ok(score(&ranked, keys, relevance))
}

/// [`HeldOutScores`] of the first results `ranked` for photos of the products `keys`.
fn score(ranked: &[Vec<Key>], keys: &[Key], relevance: &Relevance) -> HeldOutScores {
    let Relevance { label_of, same_photos } = relevance;
    let n = ranked.len().max(1) as f64;
    let (mut precision, mut first, mut top10) = (0.0, 0usize, 0usize);
    for (hits, key) in ranked.iter().zip(keys) {
        let label = label_of.get(key);
        precision += hits.iter().take(10).filter(|hit| label.is_some() && label_of.get(hit) == label).count() as f64 / 10.0;
        first += usize::from(hits.first().is_some_and(|&hit| same_photos.is_product(hit, *key)));
        top10 += usize::from(hits.iter().take(10).any(|&hit| same_photos.is_product(hit, *key)));
    }
    let labelled = keys.iter().any(|key| label_of.contains_key(key));
    HeldOutScores { precision_at_10: labelled.then_some(precision / n), found_at_1: first as f64 / n, found_at_10: top10 as f64 / n }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_count_the_label_and_the_very_product() {
        let label_of: HashMap<Key, String> = [(1, "Shirt"), (2, "Shirt"), (3, "Dress"), (4, "Dress")].into_iter().map(|(k, v)| (k, v.to_string())).collect();
        // The photo of 1 finds itself first, then a shirt and a dress; the photo of 3 finds
        // two shirts before itself.
        let ranked = vec![vec![1, 2, 3], vec![1, 2, 3]];
        let relevance = Relevance { label_of, same_photos: SamePhotos::default() };
        let scores = score(&ranked, &[1, 3], &relevance);
        assert_eq!(scores, HeldOutScores { precision_at_10: Some((0.2 + 0.1) / 2.0), found_at_1: 0.5, found_at_10: 1.0 });
        // Products without the label: no P@10, the very product still counted.
        let scores = score(&ranked, &[1, 3], &Relevance::default());
        assert_eq!(scores, HeldOutScores { precision_at_10: None, found_at_1: 0.5, found_at_10: 1.0 });
        // 1 and 3 listed with one photo (size variants): the photo of 3 finding 1 first finds it.
        let product =
            |key: Key, hash: &str| Product { key, id: key.to_string(), image: crate::types::ImageRef::Collection, content_hash: hash.into(), metadata: Default::default() };
        let same_photos = SamePhotos::of(&[product(1, "a"), product(2, "b"), product(3, "a"), product(4, "c")]);
        let scores = score(&ranked, &[1, 3], &Relevance { label_of: HashMap::new(), same_photos });
        assert_eq!(scores, HeldOutScores { precision_at_10: None, found_at_1: 1.0, found_at_10: 1.0 });
    }

    #[test]
    fn held_out_products_leave_training_entirely() {
        let keys: Vec<Key> = (0..300).map(|i| i % 250).collect();
        let rows = Labelled { features: Array2::from_shape_fn((300, 4), |(r, c)| (r * 4 + c) as f32), labels: keys.iter().map(|k| (*k % 5) as usize).collect(), keys };
        let held = pick_held_out(rows.products(), 500, 7);
        assert_eq!(held.len(), 25, "a tenth of the 250 products, a tenth of each label's 50");
        for label in 0..5 {
            assert_eq!(held.iter().filter(|&&k| k % 5 == label as Key).count(), 5, "label {label}");
        }
        assert_eq!(held, pick_held_out(rows.products(), 500, 7), "seeded");
        let trained = rows.without(&held);
        assert!(trained.keys.iter().all(|k| !held.contains(k)));
        // The kept rows, in order, with their features and labels.
        let kept: Vec<usize> = (0..300).filter(|&r| !held.contains(&rows.keys[r])).collect();
        for (row, &original) in kept.iter().enumerate() {
            assert_eq!((trained.keys[row], trained.labels[row]), (rows.keys[original], rows.labels[original]));
            assert_eq!(trained.features.row(row), rows.features.row(original));
        }
        assert!(pick_held_out(rows.products(), 19, 7).is_empty(), "too few to measure anything");
        // A label of fewer than 10 products keeps them all.
        let keys: Vec<Key> = (0..400).collect();
        let labels: Vec<usize> = (0..400).map(|i| usize::from(i >= 391)).collect();
        let rows = Labelled { features: Array2::zeros((400, 1)), labels, keys };
        let held = pick_held_out(rows.products(), 500, 7);
        assert_eq!(held.len(), 39, "a tenth of label 0's 391");
        assert!(held.iter().all(|&k| k < 391), "none of label 1's 9");
    }

    #[test]
    fn a_photo_listed_in_several_sizes_is_held_out_whole_and_trained_on_once() {
        // 600 products; the first 300 are 100 shirts listed in three sizes (one photo each).
        let product = |key: Key| {
            let hash = if key < 300 { format!("shirt-{}", key / 3) } else { format!("own-{key}") };
            Product { key, id: key.to_string(), image: crate::types::ImageRef::Collection, content_hash: hash, metadata: Default::default() }
        };
        let same_photos = SamePhotos::of(&(0..600).map(product).collect::<Vec<_>>());
        let held = hold_out((0..600).map(|k| (k, (k % 2) as usize)), &same_photos, 50, 7);
        assert_eq!(held.measured.len(), 40, "a tenth of the 400 photos");
        assert!(held.measured.iter().all(|&k| k >= 300 || k % 3 == 0), "one listing a photo measured: {:?}", held.measured);
        for &k in &held.measured {
            assert!(held.left_out.contains(&k));
            if k < 300 {
                assert!(held.left_out.contains(&(k + 1)) && held.left_out.contains(&(k + 2)), "the sizes of {k} go with it");
            }
        }
        // Every shirt's later sizes are out of training; each unmeasured shirt keeps its first.
        assert!((0..300).filter(|k| k % 3 != 0).all(|k| held.left_out.contains(&k)));
        let trained_shirts = (0..300).filter(|k| !held.left_out.contains(k)).count();
        let measured_shirts = held.measured.iter().filter(|&&k| k < 300).count();
        assert_eq!(trained_shirts, 100 - measured_shirts);
        assert_eq!(held.left_out.len(), 200 + held.measured.len(), "the later sizes and the measured products, nothing else");
        // A catalog where every product has its own photo: as pick_held_out alone.
        let plain = hold_out((300..600).map(|k| (k, 0)), &SamePhotos::default(), 50, 7);
        assert_eq!(plain.measured, pick_held_out((300..600).map(|k| (k, 0)), 50, 7));
        assert_eq!(plain.left_out, plain.measured);
    }
}
