//! Catalog-tuned embeddings: a small projection of the model's features learned from the
//! catalog's own labels.
//!
//! An ImageNet model knows what objects look like but not what a shop means by "the same kind of
//! product": its features separate cats from cars better than a shirt from a T-shirt. A projection
//! (linear, or two layers) trained with a normalised-softmax loss (cosine logits against one
//! learned proxy per label, NormFace style) pulls products with the same label together in a
//! lower-dimensional space. It is applied to the stored CNN features, so tuning never re-runs the
//! model over the catalog; searching applies it to the query's features too.

use anyhow::{bail, ensure, Context, Result};
use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use std::collections::{BTreeSet, HashMap};

use crate::catalog::{SqliteCatalog, VectorKind};
use crate::index::basis::PrincipalBasis;
use crate::localise::ForegroundHead;
use crate::projection::Projection;
use crate::types::{Key, Product};

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
        bail!("tuning needs products labelled with at least two different {label:?} values; found {} (columns come from the catalog's metadata)", classes.len());
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
    pub seconds: f64,
}

/// Learns the photo adapter ([`crate::adapter`]) for the catalog's untuned search space from
/// `photos` shopper-like photos of its own products and up to as many clean catalog shots (no labels
/// needed).
pub fn train_photo_adapter(catalog: &SqliteCatalog, encoder: &dyn crate::encoder::Encoder, photos: usize, seed: u64) -> Result<(crate::adapter::PhotoAdapter, AdapterReport)> {
    let started = std::time::Instant::now();
    ensure!(photos > 0, "--augment must be at least 1 to learn the photo adapter");
    // The space the adapter works in: the catalog's centring, never an earlier adapter's output.
    let space = crate::space::SearchSpace::centred(catalog, VectorKind::Primary)?.without_photo_adapter();
    let products = catalog.all_products()?;
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
    let report = AdapterReport {
        photos: x.nrows(),
        clean: clean.nrows(),
        ridge: crate::adapter::RIDGE,
        identity_weight: crate::adapter::IDENTITY_WEIGHT,
        cosine_before: before / n,
        cosine_after: after / n,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((adapter, report))
}

/// Adam optimiser state for one parameter array.
struct Adam<D: ndarray::Dimension> {
    m: ndarray::Array<f32, D>,
    v: ndarray::Array<f32, D>,
}

impl<D: ndarray::Dimension> Adam<D> {
    fn new(like: &ndarray::Array<f32, D>) -> Self {
        Adam { m: ndarray::Array::zeros(like.raw_dim()), v: ndarray::Array::zeros(like.raw_dim()) }
    }

    fn step(&mut self, param: &mut ndarray::Array<f32, D>, grad: &ndarray::Array<f32, D>, lr: f32, t: i32, decay: f32) {
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let c1 = 1.0 - b1.powi(t);
        let c2 = 1.0 - b2.powi(t);
        ndarray::Zip::from(param).and(&mut self.m).and(&mut self.v).and(grad).for_each(|p, m, v, &g| {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            // Decoupled weight decay (AdamW).
            *p -= lr * ((*m / c1) / ((*v / c2).sqrt() + eps) + decay * *p);
        });
    }
}

fn glorot(rng: &mut impl Rng, rows: usize, cols: usize) -> Array2<f32> {
    let limit = (6.0 / (rows + cols) as f32).sqrt();
    Array2::from_shape_fn((rows, cols), |_| rng.random_range(-limit..limit))
}

/// Normalises rows in place and returns their norms.
fn normalise_rows(a: &mut Array2<f32>) -> Array1<f32> {
    let norms = a.map_axis(Axis(1), |r| r.dot(&r).sqrt().max(1e-12));
    for (mut row, n) in a.rows_mut().into_iter().zip(norms.iter()) {
        row /= *n;
    }
    norms
}

/// Backward pass of row-wise L2 normalisation: given y = x/|x| and dL/dy, returns dL/dx.
fn normalise_backward(y: &Array2<f32>, dy: &Array2<f32>, norms: &Array1<f32>) -> Array2<f32> {
    let dots = (y * dy).sum_axis(Axis(1));
    let mut dx = dy - &(y * &dots.insert_axis(Axis(1)));
    for (mut row, n) in dx.rows_mut().into_iter().zip(norms.iter()) {
        row /= *n;
    }
    dx
}

/// Gradients of a projection's weights.
struct Grads {
    w1: Array2<f32>,
    b1: Array1<f32>,
    w2: Option<(Array2<f32>, Array1<f32>)>,
}

impl Grads {
    fn add_scaled(&mut self, other: Grads, weight: f32) {
        self.w1.scaled_add(weight, &other.w1);
        self.b1.scaled_add(weight, &other.b1);
        if let (Some((w2, b2)), Some((ow2, ob2))) = (self.w2.as_mut(), other.w2) {
            w2.scaled_add(weight, &ow2);
            b2.scaled_add(weight, &ob2);
        }
    }
}

/// The rows of `x` projected and L2-normalised, and what [`Forward::backward`] needs.
struct Forward {
    x: Array2<f32>,
    h_pre: Array2<f32>,
    h: Array2<f32>,
    z: Array2<f32>,
    z_norms: Array1<f32>,
}

impl Forward {
    fn new(proj: &Projection, x: Array2<f32>) -> Forward {
        let (h_pre, h, mut z) = proj.forward(x.view());
        let z_norms = normalise_rows(&mut z);
        Forward { x, h_pre, h, z, z_norms }
    }

    /// Weight gradients, given the loss's gradient with respect to the normalised outputs.
    fn backward(&self, proj: &Projection, dz: &Array2<f32>) -> Grads {
        let dz_pre = normalise_backward(&self.z, dz, &self.z_norms);
        match proj.w2.as_ref() {
            None => Grads { w1: dz_pre.t().dot(&self.x), b1: dz_pre.sum_axis(Axis(0)), w2: None },
            Some((w2, _)) => {
                let mut dh = dz_pre.dot(w2);
                ndarray::Zip::from(&mut dh).and(&self.h_pre).for_each(|g, &pre| {
                    if pre <= 0.0 {
                        *g = 0.0;
                    }
                });
                Grads { w1: dh.t().dot(&self.x), b1: dh.sum_axis(Axis(0)), w2: Some((dz_pre.t().dot(&self.h), dz_pre.sum_axis(Axis(0)))) }
            }
        }
    }
}

/// Softmax cross-entropy of each row of `logits` against its `targets` entry: the summed
/// loss, the rows whose best logit is the target, and the gradient with respect to the logits
/// (divided by the number of rows, so it is the mean loss's).
fn softmax_cross_entropy(logits: &Array2<f32>, targets: impl Iterator<Item = usize>) -> (f64, usize, Array2<f32>) {
    let rows = logits.nrows();
    let mut dlogits = Array2::<f32>::zeros(logits.raw_dim());
    let (mut loss, mut correct) = (0.0f64, 0usize);
    for (i, target) in targets.enumerate() {
        let l = logits.row(i);
        let max = l.fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        let exp: Vec<f32> = l.iter().map(|v| (v - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        loss += f64::from(-((exp[target] / sum).max(1e-30)).ln());
        let argmax = l.iter().enumerate().max_by(|a, c| a.1.total_cmp(c.1)).map(|(j, _)| j);
        correct += usize::from(argmax == Some(target));
        for (j, e) in exp.iter().enumerate() {
            dlogits[[i, j]] = (e / sum - f32::from(u8::from(j == target))) / rows as f32;
        }
    }
    (loss, correct, dlogits)
}

/// Trains a projection on `features` (`[n, d]`, one row per product photo) with class
/// indices `labels` (each < `classes`). `pairs` are rows that show the same product, (a
/// shopper-style view, its catalog photo), for the instance term (see
/// [`TuneOptions::instance_weight`]); none leaves it out.
pub fn train(features: ArrayView2<f32>, labels: &[usize], classes: usize, label: &str, pairs: &[(usize, usize)], options: &TuneOptions) -> Result<(Projection, TuneReport)> {
    let (n, input_dim) = features.dim();
    // A small catalog trains fast anyway, and its rows span too few directions for a basis
    // (the search graph's basis has the same rule).
    if options.subspace == 0 || options.subspace >= input_dim || n < crate::index::basis::MIN_ROWS_PER_DIRECTION * options.subspace {
        return train_projection(features, labels, classes, label, pairs, options);
    }
    let started = std::time::Instant::now();
    let basis = match feature_basis(features, options.subspace, options.seed) {
        Ok(basis) => basis,
        Err(e) => {
            tracing::info!("training on every feature: {e:#}");
            return train_projection(features, labels, classes, label, pairs, options);
        }
    };
    let reduced = features.dot(&basis.rows().t());
    let (mut projection, mut report) = train_projection(reduced.view(), labels, classes, label, pairs, options)?;
    // W1 (P x) = (W1 P) x: the same map, on full-length features.
    projection.w1 = projection.w1.dot(&basis.rows());
    projection.input_dim = input_dim;
    report.seconds = started.elapsed().as_secs_f64();
    Ok((projection, report))
}

/// The top `dims` principal directions of the training features, fitted on a sample of them
/// (a covariance of every row would cost n x d^2 for the same directions), the same sample
/// for a given seed.
fn feature_basis(features: ArrayView2<f32>, dims: usize, seed: u64) -> Result<PrincipalBasis> {
    let mut sample: Vec<usize> = (0..features.nrows()).collect();
    sample.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    sample.truncate(crate::index::basis::FIT_SAMPLE);
    sample.sort_unstable();
    PrincipalBasis::fit(features.select(Axis(0), &sample).view(), dims, seed)
}

/// [`train`] on the features as given.
fn train_projection(features: ArrayView2<f32>, labels: &[usize], classes: usize, label: &str, pairs: &[(usize, usize)], options: &TuneOptions) -> Result<(Projection, TuneReport)> {
    let started = std::time::Instant::now();
    let (n, input_dim) = features.dim();
    ensure!(n == labels.len(), "{n} feature rows but {} labels", labels.len());
    ensure!(classes >= 2, "tuning needs at least two distinct labels, found {classes}");
    ensure!(options.output_dim >= 2, "the tuned dimension must be at least 2");
    ensure!(options.epochs >= 1 && options.batch_size >= 1, "epochs and batch size must be at least 1");
    ensure!((0.0..1.0).contains(&options.dropout), "dropout must be in [0, 1)");
    ensure!(options.instance_weight >= 0.0 && options.instance_weight.is_finite(), "the instance weight must be 0 or more");
    ensure!(labels.iter().all(|&l| l < classes), "label index out of range");
    ensure!(pairs.iter().all(|&(a, b)| a < n && b < n), "pair row out of range");
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    let first = if options.hidden == 0 { options.output_dim } else { options.hidden };
    let mut proj = Projection {
        label: label.to_string(),
        input_dim,
        hidden: options.hidden,
        output_dim: options.output_dim,
        w1: glorot(&mut rng, first, input_dim),
        b1: Array1::zeros(first),
        w2: (options.hidden > 0).then(|| (glorot(&mut rng, options.output_dim, options.hidden), Array1::zeros(options.output_dim))),
    };
    let mut proxies = glorot(&mut rng, classes, options.output_dim);
    let (mut adam_w1, mut adam_b1) = (Adam::new(&proj.w1), Adam::new(&proj.b1));
    let mut adam_w2 = proj.w2.as_ref().map(|(w, b)| (Adam::new(w), Adam::new(b)));
    let mut adam_p = Adam::new(&proxies);

    let mut order: Vec<usize> = (0..n).collect();
    let mut pair_order: Vec<usize> = (0..pairs.len()).collect();
    let use_pairs = options.instance_weight > 0.0 && pairs.len() >= 2;
    let mut report = TuneReport { examples: n, classes, loss: Vec::new(), accuracy: Vec::new(), seconds: 0.0 };
    let steps_per_epoch = n.div_ceil(options.batch_size.max(1));
    let total_steps = (steps_per_epoch * options.epochs).max(1);
    let mut t = 0i32;
    let dropout = |x: &mut Array2<f32>, rng: &mut rand::rngs::StdRng| {
        if options.dropout > 0.0 {
            let keep = 1.0 - options.dropout;
            x.mapv_inplace(|v| if rng.random::<f32>() < keep { v / keep } else { 0.0 });
        }
    };
    for epoch in 0..options.epochs {
        order.shuffle(&mut rng);
        pair_order.shuffle(&mut rng);
        let mut next_pair = 0;
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        for batch in order.chunks(options.batch_size.max(1)) {
            t += 1;
            // Cosine learning-rate decay: big steps first, fine ones at the end.
            let progress = t as f32 / total_steps as f32;
            let lr = options.learning_rate * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos());

            // The label term: cosine logits against one proxy per class.
            let mut x = features.select(Axis(0), batch);
            dropout(&mut x, &mut rng);
            let forward = Forward::new(&proj, x);
            let mut p_hat = proxies.clone();
            let p_norms = normalise_rows(&mut p_hat);
            let logits = forward.z.dot(&p_hat.t()) * options.scale;
            let (loss, right, dlogits) = softmax_cross_entropy(&logits, batch.iter().map(|&row| labels[row]));
            loss_sum += loss;
            correct += right;
            let dz = dlogits.dot(&p_hat) * options.scale;
            let dp = normalise_backward(&p_hat, &(dlogits.t().dot(&forward.z) * options.scale), &p_norms);
            let mut grads = forward.backward(&proj, &dz);

            // The instance term: each view against the catalog photos of the batch's products;
            // its own product is the target.
            if use_pairs {
                let b = options.batch_size.min(pairs.len());
                let picked: Vec<(usize, usize)> = (0..b).map(|i| pairs[pair_order[(next_pair + i) % pairs.len()]]).collect();
                next_pair = (next_pair + b) % pairs.len();
                let rows: Vec<usize> = picked.iter().map(|p| p.0).chain(picked.iter().map(|p| p.1)).collect();
                let mut x = features.select(Axis(0), &rows);
                dropout(&mut x, &mut rng);
                let forward = Forward::new(&proj, x);
                let (views, products) = (forward.z.slice(ndarray::s![..b, ..]), forward.z.slice(ndarray::s![b.., ..]));
                let logits = views.dot(&products.t()) * options.scale;
                let (_, _, dlogits) = softmax_cross_entropy(&logits, 0..b);
                let mut dz = Array2::<f32>::zeros(forward.z.raw_dim());
                dz.slice_mut(ndarray::s![..b, ..]).assign(&(dlogits.dot(&products) * options.scale));
                dz.slice_mut(ndarray::s![b.., ..]).assign(&(dlogits.t().dot(&views) * options.scale));
                grads.add_scaled(forward.backward(&proj, &dz), options.instance_weight);
            }

            adam_w1.step(&mut proj.w1, &grads.w1, lr, t, options.weight_decay);
            adam_b1.step(&mut proj.b1, &grads.b1, lr, t, 0.0);
            if let (Some((w2, b2)), Some((aw2, ab2)), Some((dw2, db2))) = (proj.w2.as_mut(), adam_w2.as_mut(), grads.w2.as_ref()) {
                aw2.step(w2, dw2, lr, t, options.weight_decay);
                ab2.step(b2, db2, lr, t, 0.0);
            }
            adam_p.step(&mut proxies, &dp, lr, t, 0.0);
        }
        let loss = (loss_sum / n as f64) as f32;
        let accuracy = correct as f32 / n as f32;
        tracing::info!("epoch {}/{}: loss {loss:.4}, train accuracy {accuracy:.4}", epoch + 1, options.epochs);
        report.loss.push(loss);
        report.accuracy.push(accuracy);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok((proj, report))
}

/// What `lookalike tune --localise` learned from.
#[derive(Debug, Clone, Serialize)]
pub struct ForegroundReport {
    pub scenes: usize,
    /// Grid cells trained on, and the share of them that showed a product.
    pub cells: usize,
    pub foreground_share: f64,
    pub epochs: usize,
    /// Cells classified right (0.5 threshold) on the training cells, balanced over the classes.
    pub balanced_accuracy: f64,
    /// Mean distance between a foreground cell's predicted box edges and its product's, as a
    /// fraction of the model's input, on the last fifth of the photos (held out while choosing
    /// the ridge).
    pub extent_error: f64,
    pub seconds: f64,
}

/// Learns where products are in a photo ([`ForegroundHead`]) from `scenes` photos composed of
/// 1-3 of the catalog's own products on solid or cluttered backgrounds
/// ([`crate::perturb::compose_scene`]): the boxes are known, so each cell of the encoder's
/// grid is labelled by whether its centre lies on a product. A logistic regression on the
/// cells' standardised features, classes weighted equally, trained with Adam on the full set.
pub fn train_foreground(catalog: &SqliteCatalog, encoder: &dyn crate::encoder::Encoder, scenes: usize, seed: u64) -> Result<(ForegroundHead, ForegroundReport)> {
    let started = std::time::Instant::now();
    let products = catalog.all_products()?;
    ensure!(!products.is_empty(), "the catalog has no products to learn from");
    ensure!(scenes > 0, "--scenes must be at least 1");
    let input = &encoder.spec().input;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xF0E6_A0D5);
    let (mut rows, mut labels, mut channels) = (Vec::new(), Vec::new(), 0);
    // Foreground cells (their index in `labels`) and their product's box edges around them.
    let mut extents: Vec<(usize, [f32; 4])> = Vec::new();
    for chunk_start in (0..scenes).step_by(16) {
        let mut photos = Vec::new();
        for _ in chunk_start..(chunk_start + 16).min(scenes) {
            let count = rng.random_range(1..=3);
            let images: Vec<image::DynamicImage> =
                (0..count).filter_map(|_| products.get(rng.random_range(0..products.len()))).filter_map(|p| catalog.decoded_image(p.key, &p.image).ok()).collect();
            if images.is_empty() {
                continue;
            }
            photos.push(crate::perturb::compose_scene(&images, &mut rng));
        }
        // What search finds products on: a long photo's square tiles, else the whole photo.
        let mut views: Vec<(usize, Option<crate::preprocess::Crop>)> = Vec::new();
        for (p, (photo, _)) in photos.iter().enumerate() {
            let tiles = crate::localise::tiles(photo.width(), photo.height());
            if tiles.is_empty() {
                views.push((p, None));
            }
            views.extend(tiles.into_iter().map(|tile| (p, Some(tile))));
        }
        let tensors: Vec<Vec<f32>> = views.iter().map(|&(p, crop)| crate::preprocess::prepare_image(&photos[p].0, crop, input)).collect();
        for (&(p, crop), query) in views.iter().zip(encoder.encode_queries(&tensors)?) {
            let (photo, boxes) = &photos[p];
            let grid = query.grid.context("the model gives no feature map to localise on")?;
            channels = grid.channels;
            let crop = crop.unwrap_or(crate::preprocess::Crop { x: 0.0, y: 0.0, width: 1.0, height: 1.0 });
            let (view_w, view_h) = (((photo.width() as f32 * crop.width).round() as u32).max(1), ((photo.height() as f32 * crop.height).round() as u32).max(1));
            for cell in 0..grid.width * grid.height {
                let (cx, cy) = (((cell % grid.width) as f32 + 0.5) / grid.width as f32, ((cell / grid.width) as f32 + 0.5) / grid.height as f32);
                let (vx, vy) = crate::preprocess::input_point_to_photo(cx, cy, view_w, view_h, input.fit);
                let (px, py) = (crop.x + vx * crop.width, crop.y + vy * crop.height);
                // The smallest placed box the cell's centre lies in (products may overlap).
                let inside = boxes.iter().filter(|b| px >= b[0] && px <= b[0] + b[2] && py >= b[1] && py <= b[1] + b[3]).min_by(|a, b| (a[2] * a[3]).total_cmp(&(b[2] * b[3])));
                rows.extend_from_slice(grid.cell(cell));
                labels.push(if inside.is_some() { 1.0f32 } else { 0.0 });
                if let Some(b) = inside {
                    // The box's edges on this view's model input, seen from the cell's centre.
                    let to_input = |x: f32, y: f32| crate::preprocess::photo_point_to_input((x - crop.x) / crop.width, (y - crop.y) / crop.height, view_w, view_h, input.fit);
                    let ((x0, y0), (x1, y1)) = (to_input(b[0], b[1]), to_input(b[0] + b[2], b[1] + b[3]));
                    extents.push((labels.len() - 1, [cx - x0, cy - y0, x1 - cx, y1 - cy]));
                }
            }
        }
    }
    let n = labels.len();
    ensure!(n > 0 && channels > 0, "no training cells");
    let x = Array2::from_shape_vec((n, channels), rows).context("cell feature matrix")?;
    let y = Array1::from(labels);
    let mean = x.mean_axis(Axis(0)).context("feature means")?;
    let std = x.std_axis(Axis(0), 0.0).mapv(|s| 1.0 / s.max(1e-6));
    let xs = (&x - &mean) * &std;
    drop(x);
    let positives = y.sum() as f64;
    ensure!(positives > 0.0 && positives < n as f64, "the composed photos gave only one class of cells");
    // Each class weighs half of the loss.
    let weight = y.mapv(|t| if t > 0.5 { 0.5 / positives as f32 } else { 0.5 / (n as f64 - positives) as f32 });
    let (mut w, mut b) = (Array1::<f32>::zeros(channels), 0.0f32);
    let (mut m_w, mut v_w, mut m_b, mut v_b) = (Array1::<f32>::zeros(channels), Array1::<f32>::zeros(channels), 0.0f32, 0.0f32);
    let (lr, beta1, beta2, eps, decay, epochs) = (0.05f32, 0.9f32, 0.999f32, 1e-8f32, 1e-4f32, 200usize);
    let features = xs.as_standard_layout();
    let features = features.as_slice().context("cell features are not contiguous")?;
    let (targets, weights) = (y.as_slice().context("labels")?, weight.as_slice().context("weights")?);
    for epoch in 1..=epochs {
        // One pass over the cells per epoch, in parallel blocks: each cell's probability and
        // its share of the gradient (cell features stream once; a matrix-vector product and
        // then a transposed one would read the 100+ MB matrix twice, the second time strided).
        let current = w.to_vec();
        let (grad_w, grad_b) = features
            .par_chunks(channels * 2048)
            .enumerate()
            .map(|(block, rows)| {
                let mut grad = vec![0.0f32; channels];
                let mut grad_b = 0.0f32;
                for (r, row) in rows.chunks_exact(channels).enumerate() {
                    let i = block * 2048 + r;
                    let z = crate::index::kernels::dot(row, &current) + b;
                    let e = (1.0 / (1.0 + (-z).exp()) - targets[i]) * weights[i];
                    for (g, x) in grad.iter_mut().zip(row) {
                        *g += e * x;
                    }
                    grad_b += e;
                }
                (grad, grad_b)
            })
            // Summed in block order, so training gives the same head on every run.
            .collect::<Vec<_>>()
            .into_iter()
            .fold((vec![0.0f32; channels], 0.0f32), |(mut a, ab), (g, gb)| {
                for (a, g) in a.iter_mut().zip(&g) {
                    *a += g;
                }
                (a, ab + gb)
            });
        let grad_w = Array1::from(grad_w) + &w * decay;
        m_w = &m_w * beta1 + &grad_w * (1.0 - beta1);
        v_w = &v_w * beta2 + &grad_w.mapv(|g| g * g) * (1.0 - beta2);
        m_b = m_b * beta1 + grad_b * (1.0 - beta1);
        v_b = v_b * beta2 + grad_b * grad_b * (1.0 - beta2);
        let (c1, c2) = (1.0 - beta1.powi(epoch as i32), 1.0 - beta2.powi(epoch as i32));
        w = &w - &((&m_w / c1) / ((&v_w / c2).mapv(f32::sqrt) + eps) * lr);
        b -= lr * (m_b / c1) / ((v_b / c2).sqrt() + eps);
    }
    let p = (xs.dot(&w) + b).mapv(|z| z > 0.0);
    let (mut right_pos, mut right_neg) = (0.0f64, 0.0f64);
    for (predicted, truth) in p.iter().zip(y.iter()) {
        match (*predicted, *truth > 0.5) {
            (true, true) => right_pos += 1.0,
            (false, false) => right_neg += 1.0,
            _ => {}
        }
    }
    let balanced_accuracy = 0.5 * (right_pos / positives + right_neg / (n as f64 - positives));
    let (extent, extent_error) = train_extent(xs.view(), &extents)?;
    let head = ForegroundHead { mean: mean.to_vec(), inv_std: std.to_vec(), weights: w.to_vec(), bias: b, extent: Some(extent) };
    let report = ForegroundReport { scenes, cells: n, foreground_share: positives / n as f64, epochs, balanced_accuracy, extent_error, seconds: started.elapsed().as_secs_f64() };
    Ok((head, report))
}

/// Ridge strengths tried for the [`crate::localise::ExtentHead`], as fractions of the features'
/// mean variance; the one with the least held-out error is kept.
const EXTENT_RIDGES: &[f64] = &[0.01, 0.1, 1.0];

/// Centred least squares in normal form: `XᵀX`, `XᵀY`, and the means of `X` and `Y`.
type NormalEquations = (Array2<f64>, Array2<f64>, Array1<f64>, Array1<f64>);

/// Fits the [`crate::localise::ExtentHead`]: ridge regression from a foreground cell's
/// standardised features (`features`, all cells) to its product's box edges around it
/// (`extents`: cell index, `[left, top, right, bottom]` distances). The ridge is chosen on the
/// last fifth of the cells (later photos), then the head refitted on all. Returns it with its
/// held-out mean error per edge.
fn train_extent(features: ArrayView2<f32>, extents: &[(usize, [f32; 4])]) -> Result<(crate::localise::ExtentHead, f64)> {
    ensure!(extents.len() >= 10, "too few foreground cells to learn the products' extents from");
    let channels = features.ncols();
    // The centred normal equations of a set of cells, computed once per set: each ridge only
    // adds to the diagonal.
    let normal_equations = |cells: &[(usize, [f32; 4])]| -> Result<NormalEquations> {
        let mut x = Array2::from_shape_fn((cells.len(), channels), |(r, c)| f64::from(features[[cells[r].0, c]]));
        let mut y = Array2::from_shape_fn((cells.len(), 4), |(r, e)| f64::from(cells[r].1[e]));
        let (x_mean, y_mean) = (x.mean_axis(Axis(0)).context("feature means")?, y.mean_axis(Axis(0)).context("extent means")?);
        x -= &x_mean;
        y -= &y_mean;
        Ok((x.t().dot(&x), x.t().dot(&y), x_mean, y_mean))
    };
    let solve = |(gram, xty, x_mean, y_mean): &NormalEquations, ridge: f64| -> Result<(Array2<f64>, [f64; 4])> {
        let mut gram = gram.clone();
        let strength = ridge * gram.diag().sum() / channels as f64;
        gram.diag_mut().mapv_inplace(|d| d + strength);
        let w = crate::adapter::solve_spd(gram, xty.clone())?;
        let bias = y_mean - &x_mean.dot(&w);
        Ok((w, [bias[0], bias[1], bias[2], bias[3]]))
    };
    let error = |w: &Array2<f64>, bias: &[f64; 4], cells: &[(usize, [f32; 4])]| -> f64 {
        let mut sum = 0.0;
        for (cell, truth) in cells {
            let row = features.row(*cell).mapv(f64::from);
            for e in 0..4 {
                sum += ((row.dot(&w.column(e)) + bias[e]).max(0.0) - f64::from(truth[e])).abs();
            }
        }
        sum / (4 * cells.len().max(1)) as f64
    };
    let split = extents.len() * 4 / 5;
    let (train, held_out) = extents.split_at(split);
    let mut best = (f64::INFINITY, EXTENT_RIDGES[0]);
    let train = normal_equations(train)?;
    for &ridge in EXTENT_RIDGES {
        let (w, bias) = solve(&train, ridge)?;
        let e = error(&w, &bias, held_out);
        tracing::info!("extent head, ridge {ridge}: held-out error {e:.4}");
        if e < best.0 {
            best = (e, ridge);
        }
    }
    let (w, bias) = solve(&normal_equations(extents)?, best.1)?;
    let weights = (0..4).flat_map(|e| w.column(e).iter().map(|&v| v as f32).collect::<Vec<_>>()).collect();
    Ok((crate::localise::ExtentHead { weights, bias: bias.map(|b| b as f32) }, best.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::l2_normalize;

    /// Two classes whose difference hides in a few of many noisy dimensions: the projection must
    /// learn to keep those and drop the noise.
    fn toy(n: usize, d: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut x = Array2::zeros((n, d));
        let mut labels = Vec::new();
        for i in 0..n {
            let class = i % 3;
            labels.push(class);
            for j in 0..d {
                x[[i, j]] = rng.random_range(-1.0..1.0f32);
            }
            x[[i, class]] += 1.5;
            let mut row = x.row(i).to_vec();
            l2_normalize(&mut row);
            x.row_mut(i).assign(&Array1::from(row));
        }
        (x, labels)
    }

    fn knn_precision(vectors: &Array2<f32>, labels: &[usize]) -> f32 {
        let sims = vectors.dot(&vectors.t());
        let mut hits = 0;
        for i in 0..labels.len() {
            let mut order: Vec<usize> = (0..labels.len()).filter(|&j| j != i).collect();
            order.sort_by(|&a, &b| sims[[i, b]].total_cmp(&sims[[i, a]]));
            hits += order.iter().take(5).filter(|&&j| labels[j] == labels[i]).count();
        }
        hits as f32 / (labels.len() * 5) as f32
    }

    #[test]
    fn tuning_separates_classes_hidden_in_noise() -> Result<()> {
        let (x, labels) = toy(3000, 64, 1);
        let before = knn_precision(&x, &labels);
        for hidden in [0, 32] {
            let options = TuneOptions { output_dim: 8, hidden, epochs: 10, batch_size: 64, learning_rate: 1e-2, ..Default::default() };
            let (proj, report) = train(x.view(), &labels, 3, "toy", &[], &options)?;
            assert!(report.loss.last() < report.loss.first(), "loss went down: {:?}", report.loss);
            let (test_x, test_labels) = toy(300, 64, 2);
            let after = knn_precision(&proj.apply_batch(test_x.view()), &test_labels);
            assert!(after > before + 0.05 && after > 0.8, "hidden={hidden}: precision@5 {before} -> {after}");
        }
        Ok(())
    }

    #[test]
    fn a_projection_trained_in_a_principal_subspace_takes_full_length_features() -> Result<()> {
        // The classes differ along three of 64 axes, so they lie in the top directions.
        let (x, labels) = toy(3000, 64, 1);
        let options = TuneOptions { output_dim: 8, hidden: 32, epochs: 10, batch_size: 64, learning_rate: 1e-2, subspace: 8, ..Default::default() };
        let (proj, _) = train(x.view(), &labels, 3, "toy", &[], &options)?;
        assert_eq!(proj.input_dim, 64, "the folded projection takes the model's features");
        // Folding changes nothing: the same training on the features projected by hand gives
        // the same vectors.
        let basis = feature_basis(x.view(), 8, options.seed)?;
        let (reduced_proj, _) = train_projection(x.dot(&basis.rows().t()).view(), &labels, 3, "toy", &[], &options)?;
        let (test_x, test_labels) = toy(300, 64, 2);
        let folded = proj.apply_batch(test_x.view());
        let by_hand = reduced_proj.apply_batch(test_x.dot(&basis.rows().t()).view());
        let largest_gap = (&folded - &by_hand).iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(largest_gap < 1e-4, "folded and by-hand outputs differ by {largest_gap}");
        let (before, after) = (knn_precision(&test_x, &test_labels), knn_precision(&folded, &test_labels));
        assert!(after > before + 0.05 && after > 0.8, "precision@5 {before} -> {after}");
        // Too few rows to fit 8 directions from (fewer than 4 per direction): trained on every
        // feature instead of refused.
        let (few, few_labels) = toy(20, 64, 3);
        let (small, _) = train(few.view(), &few_labels, 3, "toy", &[], &options)?;
        assert_eq!(small.input_dim, 64);
        Ok(())
    }

    /// `x`'s rows with noise of norm about `amount` added, normalised: other photos of the same
    /// products.
    fn views(x: &Array2<f32>, amount: f32, seed: u64) -> Array2<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let d = x.ncols() as f32;
        let mut out = x.mapv(|v| v + rng.random_range(-1.0..1.0f32) * amount * (3.0 / d).sqrt());
        normalise_rows(&mut out);
        out
    }

    /// Share of `views` whose nearest row of `products` is their own (same position).
    fn exact_recall_at_1(products: &Array2<f32>, views: &Array2<f32>) -> f32 {
        let sims = views.dot(&products.t());
        let found = sims.rows().into_iter().enumerate().filter(|(i, row)| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(j, _)| j) == Some(*i)).count();
        found as f32 / views.nrows() as f32
    }

    #[test]
    fn the_instance_term_keeps_a_product_findable_among_its_class() -> Result<()> {
        // 600 products in 3 classes, each also seen once more with noise (a shopper's photo).
        let (products, labels) = toy(600, 64, 4);
        let seen = views(&products, 0.8, 5);
        let features = ndarray::concatenate(Axis(0), &[products.view(), seen.view()])?;
        let all_labels: Vec<usize> = labels.iter().chain(&labels).copied().collect();
        let pairs: Vec<(usize, usize)> = (0..600).map(|i| (600 + i, i)).collect();
        // New photos of the same products, never trained on.
        let unseen = views(&products, 0.8, 6);
        let mut recall = Vec::new();
        for instance_weight in [0.0, 1.0] {
            let options = TuneOptions { output_dim: 16, hidden: 32, epochs: 10, batch_size: 64, learning_rate: 1e-2, instance_weight, ..Default::default() };
            let (proj, _) = train(features.view(), &all_labels, 3, "toy", &pairs, &options)?;
            let (p, v) = (proj.apply_batch(products.view()), proj.apply_batch(unseen.view()));
            recall.push(exact_recall_at_1(&p, &v));
            assert!(knn_precision(&p, &labels) > 0.8, "weight {instance_weight}: classes still separate");
        }
        assert!(recall[1] > recall[0] + 0.15, "the instance term finds the very product more often: {recall:?}");
        Ok(())
    }

    #[test]
    fn weights_round_trip() -> Result<()> {
        let (x, labels) = toy(90, 16, 3);
        for hidden in [0, 8] {
            let options = TuneOptions { output_dim: 4, hidden, epochs: 1, batch_size: 32, ..Default::default() };
            let (proj, _) = train(x.view(), &labels, 3, "toy", &[], &options)?;
            let back = Projection::from_weights("toy", 16, hidden, 4, &proj.weights_bytes())?;
            assert_eq!(back, proj);
            let v = back.apply(x.row(0).as_slice().unwrap_or(&[]))?;
            assert_eq!(v.len(), 4);
            let batch = back.apply_batch(x.view());
            assert!(v.iter().zip(batch.row(0)).all(|(a, b)| (a - b).abs() < 1e-5), "single and batched projection agree");
            assert!(Projection::from_weights("toy", 16, hidden, 5, &proj.weights_bytes()).is_err());
        }
        Ok(())
    }

    #[test]
    fn the_extent_head_learns_box_edges_that_the_features_carry() -> Result<()> {
        // Each cell's edges are a linear function of its features, plus a little noise.
        let (cells, channels) = (600, 12);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let features = Array2::from_shape_fn((cells, channels), |_| rng.random_range(-1.0f32..1.0));
        let extents: Vec<(usize, [f32; 4])> = (0..cells)
            .map(|i| {
                let f = features.row(i);
                (i, [0.3 + 0.1 * f[0], 0.2 + 0.05 * f[1] - 0.05 * f[2], 0.25 + 0.1 * f[3], 0.3 + 0.02 * rng.random_range(-1.0f32..1.0)])
            })
            .collect();
        let (head, error) = train_extent(features.view(), &extents)?;
        assert!(error < 0.01, "held-out error {error}");
        assert!((head.weights[0] - 0.1).abs() < 0.01 && (head.weights[2 * channels + 3] - 0.1).abs() < 0.01, "{:?}", &head.weights[..4]);
        assert!(train_extent(features.view(), &extents[..5]).is_err(), "too few cells");
        Ok(())
    }

    #[test]
    fn rejects_single_class() {
        let x = Array2::zeros((4, 3));
        assert!(train(x.view(), &[0, 0, 0, 0], 1, "one", &[], &TuneOptions::default()).is_err());
    }
}
