//! Catalog-tuned embeddings: a small projection of the model's features learned from the
//! catalog's own labels.
//!
//! An ImageNet model knows what objects look like but not what a shop means by "the same kind of
//! product": its features separate cats from cars better than a shirt from a T-shirt. A projection
//! (linear, or two layers) trained with a normalised-softmax loss (cosine logits against one
//! learned proxy per label, NormFace style) pulls products with the same label together in a
//! lower-dimensional space. It is applied to the stored CNN features, so tuning never re-runs the
//! model over the catalog; searching applies it to the query's features too.
//!
//! Here: the settings and the rows training reads (labelled catalog vectors, shopper-like
//! photos of catalog products). Beside it: training the projection (projection.rs), the photo
//! adapter `tune --adapt` learns (adapter.rs), and the foreground head `tune --localise` learns
//! (foreground.rs).

use anyhow::{bail, ensure, Context, Result};
use ndarray::{Array2, Axis};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::catalog::{SqliteCatalog, VectorKind};
use crate::types::{Key, Product};

mod adapter;
mod foreground;
mod held_out;
mod projection;

pub use adapter::{train_photo_adapter, AdapterOptions, AdapterReport};
pub use foreground::{train_foreground, ForegroundReport};
pub use held_out::{held_out_photos, hold_out, measure_adapter_held_out, measure_held_out, pick_held_out, AdapterHeldOut, HeldOut, HeldOutReport, HeldOutScores, MIN_HELD_OUT};
pub use projection::train;

/// Training settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TuneOptions {
    pub output_dim: usize,
    /// Hidden width; 0 trains a linear projection.
    pub hidden: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f32,
    /// Scale of the cosine logits (NormFace's s): sharp enough for the softmax to separate.
    pub scale: f32,
    pub weight_decay: f32,
    /// Fraction of input features zeroed at random in each training step (then rescaled): keeps
    /// the projection from leaning on a few features that happen to separate the catalog.
    #[serde(default)]
    pub dropout: f32,
    /// Weight of the instance term beside the label term: each shopper-style view of a product
    /// is pulled to that product's own catalog photo and away from the other products in its
    /// batch (in-batch contrastive pairs, InfoNCE). Without it the label proxies pull every
    /// product of a class onto one point, and a re-photographed product no longer finds itself.
    #[serde(default)]
    pub instance_weight: f32,
    /// Train on the features' top `subspace` principal directions (0: on all of them), then
    /// fold that projection into the first layer, so the result still takes the model's
    /// full-length features. The first layer is most of training's arithmetic, and the
    /// directions left out carry little of the features' variance: on 60,000 Fashion-MNIST
    /// products, 512 of 1280 trained 1.7x faster within 0.003 of P@10 (256: 0.011 lower).
    #[serde(default)]
    pub subspace: usize,
    pub seed: u64,
}

impl Default for TuneOptions {
    fn default() -> Self {
        TuneOptions {
            output_dim: 256,
            hidden: 1024,
            epochs: 12,
            batch_size: 256,
            learning_rate: 2e-3,
            scale: 16.0,
            weight_decay: 1e-4,
            dropout: 0.0,
            instance_weight: 2.0,
            subspace: 512,
            seed: 7,
        }
    }
}

/// What training did, per epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TuneReport {
    pub examples: usize,
    pub classes: usize,
    pub loss: Vec<f32>,
    /// Accuracy of the proxy classifier on the training batches, per epoch.
    pub accuracy: Vec<f32>,
    pub seconds: f64,
}

/// Training rows: features (`[n, d]`), each row's class index and product.
pub struct Labelled {
    pub features: Array2<f32>,
    pub labels: Vec<usize>,
    /// The product each row shows.
    pub keys: Vec<Key>,
}

/// The catalog's stored model vectors of the products with a value in column `label`, and the
/// class names (sorted). Products without the column are left out.
pub fn labelled_features(catalog: &SqliteCatalog, label: &str) -> Result<(Labelled, Vec<String>)> {
    let products = catalog.all_products()?;
    let by_key: HashMap<Key, &str> = products.iter().filter_map(|p| p.metadata.get(label).map(|l| (p.key, l.as_str()))).collect();
    let classes: Vec<String> = by_key.values().map(|s| s.to_string()).collect::<BTreeSet<_>>().into_iter().collect();
    if classes.len() < 2 {
        bail!(
            "tuning needs products labelled with at least two different {label:?} values; found {} (the catalog's columns: {})",
            classes.len(),
            crate::types::columns_of(&products).join(", ")
        );
    }
    for warning in check_grouping(&products, label)? {
        tracing::warn!("{warning}");
    }
    let class_index: HashMap<&str, usize> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let (mut rows, mut labels, mut keys, mut dim) = (Vec::new(), Vec::new(), Vec::new(), 0);
    catalog.for_each_vector(VectorKind::Primary, |key, v| {
        if let Some(class) = by_key.get(&key).and_then(|l| class_index.get(l)) {
            dim = v.len();
            rows.extend_from_slice(v);
            labels.push(*class);
            keys.push(key);
        }
        Ok(())
    })?;
    let features = Array2::from_shape_vec((labels.len(), dim), rows).context("feature matrix shape")?;
    Ok((Labelled { features, labels, keys }, classes))
}

impl Labelled {
    /// The rows of `other` after these ones.
    pub fn append(&mut self, other: Labelled) -> Result<()> {
        self.features = ndarray::concatenate(Axis(0), &[self.features.view(), other.features.view()]).context("joining feature rows")?;
        self.labels.extend(other.labels);
        self.keys.extend(other.keys);
        Ok(())
    }

    /// Pairs of rows showing the same product: (a later row, the first row of its product).
    /// After [`perturbed_features`] are appended to the catalog's own rows, these are (a
    /// shopper-style view, its catalog photo): what the instance term of [`train`] learns from.
    pub fn same_product_pairs(&self) -> Vec<(usize, usize)> {
        let mut first: HashMap<Key, usize> = HashMap::new();
        let mut pairs = Vec::new();
        for (row, key) in self.keys.iter().enumerate() {
            match first.get(key) {
                Some(&original) => pairs.push((row, original)),
                None => {
                    first.insert(*key, row);
                }
            }
        }
        pairs
    }
}

/// Features of `count` shopper-like versions of randomly chosen labelled catalog products
/// (see [`crate::perturb`]), to train on beside the clean catalog features: a projection
/// learned from studio shots alone leans on details that a street photo loses. Uses only the
/// catalog's own images; none of the products in `leave_out` (those held out of training to
/// measure it). Returns the feature rows (`[count, d]`, fewer when an image cannot be
/// read), their class indices and products.
pub fn perturbed_features(
    catalog: &SqliteCatalog,
    encoder: &dyn crate::encoder::Encoder,
    label: &str,
    classes: &[String],
    (count, seed): (usize, u64),
    leave_out: &HashSet<Key>,
) -> Result<Labelled> {
    let class_index: HashMap<&str, usize> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let labelled: Vec<(Product, usize)> = catalog
        .all_products()?
        .into_iter()
        .filter(|p| !leave_out.contains(&p.key))
        .filter_map(|p| {
            let class = p.metadata.get(label).and_then(|l| class_index.get(l.as_str())).copied();
            class.map(|c| (p, c))
        })
        .collect();
    ensure!(!labelled.is_empty(), "no labelled products to perturb");
    let (products, classes): (Vec<Product>, Vec<usize>) = labelled.into_iter().unzip();
    let (features, picked) = shopper_views(catalog, encoder, &products, count, seed)?;
    Ok(Labelled { features, labels: picked.iter().map(|&i| classes[i]).collect(), keys: picked.iter().map(|&i| products[i].key).collect() })
}

/// Model vectors of `count` shopper-like photos ([`crate::perturb::perturb`]) of products
/// picked at random (seeded) from `products`, and the index in `products` of each row's
/// product (a photo that cannot be read is left out).
pub fn shopper_views(catalog: &SqliteCatalog, encoder: &dyn crate::encoder::Encoder, products: &[Product], count: usize, seed: u64) -> Result<(Array2<f32>, Vec<usize>)> {
    ensure!(!products.is_empty(), "no products to photograph");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let picks: Vec<usize> = (0..count).map(|_| rng.random_range(0..products.len())).collect();
    photographed(catalog, encoder, products, &picks, seed)
}

/// Model vectors of a shopper-like photo of each of `products[picks[i]]`, and the pick of each
/// row (a photo that cannot be read is left out).
fn photographed(catalog: &SqliteCatalog, encoder: &dyn crate::encoder::Encoder, products: &[Product], picks: &[usize], seed: u64) -> Result<(Array2<f32>, Vec<usize>)> {
    let count = picks.len();
    let input = &encoder.spec().input;
    // Reading from the catalog is serial (one SQLite connection); decoding, perturbing and
    // preparing run on every core, and each chunk is split across the encoder's sessions, so
    // both cores work in every phase. The photos are the same whatever the thread count: each
    // view's randomness comes from its own seed, and the results keep the picks' order.
    let sessions = encoder.parallelism().max(1);
    let (mut rows, mut picked) = (Vec::new(), Vec::new());
    for (chunk_no, chunk) in picks.chunks(64).enumerate() {
        let read: Vec<(usize, Vec<u8>, usize)> = chunk
            .iter()
            .enumerate()
            .filter_map(|(i, &pick)| {
                let product = &products[pick];
                let bytes = catalog.image_bytes(product.key, &product.image).ok()?;
                Some((chunk_no * 64 + i, bytes, pick))
            })
            .collect();
        let prepared: Vec<(Vec<f32>, usize)> = read
            .into_par_iter()
            .filter_map(|(view, bytes, pick)| {
                let image = crate::preprocess::decode_reduced(&bytes, &crate::preprocess::DecodeLimits::default(), crate::preprocess::needed_side(input, None)).ok()?;
                let mut item_rng = rand::rngs::StdRng::seed_from_u64(seed ^ (view as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let shopper = crate::perturb::perturb(&image, &mut item_rng);
                Some((crate::preprocess::prepare_image(&shopper, None, input), pick))
            })
            .collect();
        let (tensors, sources): (Vec<Vec<f32>>, Vec<usize>) = prepared.into_iter().unzip();
        let per_session = tensors.len().div_ceil(sessions).max(1);
        let encoded: Vec<Vec<crate::encoder::Embedding>> = tensors.par_chunks(per_session).map(|part| encoder.encode(part)).collect::<Result<_>>()?;
        for (embedding, pick) in encoded.into_iter().flatten().zip(sources) {
            rows.extend_from_slice(&embedding.vector);
            picked.push(pick);
        }
        if chunk_no % 50 == 49 {
            tracing::info!("perturbed {} of {count} catalog photos", picked.len());
        }
    }
    let dim = if picked.is_empty() { 0 } else { rows.len() / picked.len() };
    Ok((Array2::from_shape_vec((picked.len(), dim), rows).context("perturbed feature matrix")?, picked))
}

/// The values of the tuned label that products of `catalog` have and tuning never learned
/// (products imported since with a new kind of product), each with how many products have it,
/// most first; empty for a catalog not tuned. Tuning places products of the values it learned
/// near their proxy; one of a value it never saw is placed only by what it looks like, so a
/// shop that adds a kind of product should tune again.
pub fn values_not_learned(catalog: &SqliteCatalog) -> Result<Vec<(String, usize)>> {
    let (Some(projection), Some(record)) = (catalog.projection()?, catalog.projection_report()?) else {
        return Ok(Vec::new());
    };
    let record: serde_json::Value = serde_json::from_str(&record).context("reading the tuning record")?;
    let Some(learned) = record["classes"].as_array() else {
        return Ok(Vec::new());
    };
    let learned: HashSet<&str> = learned.iter().filter_map(serde_json::Value::as_str).collect();
    let mut new: HashMap<String, usize> = HashMap::new();
    for product in catalog.all_products()? {
        if let Some(value) = product.metadata.get(&projection.label).filter(|v| !learned.contains(v.as_str())) {
            *new.entry(value.clone()).or_default() += 1;
        }
    }
    let mut new: Vec<(String, usize)> = new.into_iter().collect();
    new.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(new)
}

/// Values of a column with fewer products than this are learned little about.
const FEW_PRODUCTS: usize = 3;

/// Whether `label` groups `products` enough to learn from: tuning learns which products belong
/// together from the values they share, so a column where most products have a value of
/// their own (a name, a SKU, a running number) is refused, naming the columns that do group
/// them; it would teach nothing, with one proxy a product. Values only a few products have are
/// warned of (the warnings returned): the space learns little about them.
fn check_grouping(products: &[Product], label: &str) -> Result<Vec<String>> {
    let counts = |column: &str| {
        let mut per_value: HashMap<&str, usize> = HashMap::new();
        for value in products.iter().filter_map(|p| p.metadata.get(column)) {
            *per_value.entry(value.as_str()).or_default() += 1;
        }
        per_value
    };
    // Products whose value another product shares, of those with a value.
    let grouped = |per_value: &HashMap<&str, usize>| {
        let labelled: usize = per_value.values().sum();
        (per_value.values().filter(|&&n| n > 1).sum::<usize>(), labelled)
    };
    let per_value = counts(label);
    let (shared, labelled) = grouped(&per_value);
    if shared * 2 < labelled {
        let groups: Vec<String> = crate::types::columns_of(products)
            .into_iter()
            .filter(|&column| column != label)
            .filter_map(|column| {
                let per_value = counts(column);
                let (shared, labelled) = grouped(&per_value);
                (per_value.len() >= 2 && shared * 2 >= labelled && labelled * 2 >= products.len()).then(|| format!("{column} ({} values)", per_value.len()))
            })
            .collect();
        bail!(
            "{label:?} groups almost no products: {} of {labelled} products have a value of it no other product has, and tuning learns which products belong together from the values they share; {}",
            labelled - shared,
            match groups.is_empty() {
                true => "no column of this catalog groups its products (give them one, e.g. articleType, and import again)".to_string(),
                false => format!("columns that group them: {}", groups.join(", ")),
            }
        );
    }
    let mut rare: Vec<(&str, usize)> = per_value.into_iter().filter(|&(_, n)| n < FEW_PRODUCTS).collect();
    rare.sort_unstable_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(b.0)));
    let mut warnings = Vec::new();
    if !rare.is_empty() {
        let named: Vec<String> = rare.iter().map(|(value, n)| format!("{value} {n}")).collect();
        warnings.push(format!(
            "{} {label} values have fewer than {FEW_PRODUCTS} products ({}): the tuned space learns little about them; measure before and after (eval --exact, --product-photos)",
            rare.len(),
            crate::types::first_few(&named, 8)
        ));
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn products(rows: &[&[(&str, &str)]]) -> Vec<Product> {
        rows.iter()
            .enumerate()
            .map(|(i, row)| Product {
                key: i as Key,
                id: format!("p{i}"),
                image: crate::types::ImageRef::Stored { mime: "image/png".into() },
                content_hash: String::new(),
                metadata: row.iter().map(|&(c, v)| (c.to_string(), v.to_string())).collect(),
            })
            .collect()
    }

    #[test]
    fn a_column_of_one_value_a_product_is_refused_naming_the_columns_that_group() {
        let rows: Vec<Vec<(&str, &str)>> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .zip(["Shirt", "Shirt", "Shirt", "Dress", "Dress", "Dress"])
            .map(|(&name, kind)| vec![("name", name), ("articleType", kind), ("shop", "one")])
            .collect();
        let catalog = products(&rows.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let refused = check_grouping(&catalog, "name").expect_err("names group nothing").to_string();
        assert!(refused.contains("6 of 6 products have a value of it no other product has") && refused.ends_with("columns that group them: articleType (2 values)"), "{refused}");
        assert_eq!(check_grouping(&catalog, "articleType").expect("groups"), Vec::<String>::new());
    }

    #[test]
    fn values_of_few_products_are_warned_of() {
        let kinds = ["Shirt", "Shirt", "Shirt", "Dress", "Dress", "Dress", "Scarf", "Scarf", "Belt"];
        let rows: Vec<Vec<(&str, &str)>> = kinds.iter().map(|&kind| vec![("articleType", kind)]).collect();
        let catalog = products(&rows.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let warnings = check_grouping(&catalog, "articleType").expect("most products share a value");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("2 articleType values have fewer than 3 products (Belt 1, Scarf 2)"), "{warnings:?}");
    }
}
