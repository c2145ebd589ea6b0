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

use std::collections::{BTreeSet, HashMap};

use crate::catalog::{SqliteCatalog, VectorKind};
use crate::types::{Key, Product};

mod adapter;
mod foreground;
mod projection;

pub use adapter::{train_photo_adapter, AdapterReport};
pub use foreground::{train_foreground, ForegroundReport};
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
/// catalog's own images. Returns the feature rows (`[count, d]`, fewer when an image cannot be
/// read), their class indices and products.
pub fn perturbed_features(catalog: &SqliteCatalog, encoder: &dyn crate::encoder::Encoder, label: &str, classes: &[String], count: usize, seed: u64) -> Result<Labelled> {
    let class_index: HashMap<&str, usize> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let labelled: Vec<(Product, usize)> = catalog
        .all_products()?
        .into_iter()
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
