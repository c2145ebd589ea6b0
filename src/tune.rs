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
use serde::{Deserialize, Serialize};

use std::collections::{BTreeSet, HashMap};

use crate::catalog::{SqliteCatalog, VectorKind};
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
    pub seed: u64,
}

impl Default for TuneOptions {
    fn default() -> Self {
        TuneOptions { output_dim: 256, hidden: 1024, epochs: 12, batch_size: 256, learning_rate: 2e-3, scale: 16.0, weight_decay: 1e-4, dropout: 0.0, seed: 7 }
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

/// The catalog's stored model vectors with the value of column `label`, as a feature matrix,
/// class indices, and the class names (sorted). Products without the column are left out.
pub fn labelled_features(catalog: &SqliteCatalog, label: &str) -> Result<(Array2<f32>, Vec<usize>, Vec<String>)> {
    let products = catalog.all_products()?;
    let by_key: HashMap<Key, &str> = products.iter().filter_map(|p| p.metadata.get(label).map(|l| (p.key, l.as_str()))).collect();
    let classes: Vec<String> = by_key.values().map(|s| s.to_string()).collect::<BTreeSet<_>>().into_iter().collect();
    if classes.len() < 2 {
        bail!(
            "tuning needs products labelled with at least two different {label:?} values; found {} (columns come from the catalog's metadata)",
            classes.len()
        );
    }
    let class_index: HashMap<&str, usize> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let (mut rows, mut labels, mut dim) = (Vec::new(), Vec::new(), 0);
    catalog.for_each_vector(VectorKind::Primary, |key, v| {
        if let Some(class) = by_key.get(&key).and_then(|l| class_index.get(l)) {
            dim = v.len();
            rows.extend_from_slice(v);
            labels.push(*class);
        }
        Ok(())
    })?;
    let features = Array2::from_shape_vec((labels.len(), dim), rows).context("feature matrix shape")?;
    Ok((features, labels, classes))
}

/// Features of `count` shopper-like versions of randomly chosen labelled catalog products
/// (see [`crate::perturb`]), to train on beside the clean catalog features: a projection
/// learned from studio shots alone leans on details that a street photo loses. Uses only the
/// catalog's own images. Returns the feature rows (`[count, d]`) and their class indices.
pub fn perturbed_features(
    catalog: &SqliteCatalog,
    encoder: &dyn crate::encoder::Encoder,
    label: &str,
    classes: &[String],
    count: usize,
    seed: u64,
) -> Result<(Array2<f32>, Vec<usize>)> {
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
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let picks: Vec<usize> = (0..count).map(|_| rng.random_range(0..labelled.len())).collect();
    let input = &encoder.spec().input;
    let (mut rows, mut labels) = (Vec::new(), Vec::new());
    for (chunk_no, chunk) in picks.chunks(64).enumerate() {
        let prepared: Vec<(Vec<f32>, usize)> = chunk
            .iter()
            .enumerate()
            .filter_map(|(i, &pick)| {
                let (product, class) = &labelled[pick];
                let image = catalog.decoded_image(product.key, &product.image).ok()?;
                let mut item_rng = rand::rngs::StdRng::seed_from_u64(seed ^ ((chunk_no * 64 + i) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let shopper = crate::perturb::perturb(&image, &mut item_rng);
                Some((crate::preprocess::prepare_image(&shopper, None, input), *class))
            })
            .collect();
        let (tensors, classes_of): (Vec<Vec<f32>>, Vec<usize>) = prepared.into_iter().unzip();
        for (embedding, class) in encoder.encode(&tensors)?.into_iter().zip(classes_of) {
            rows.extend_from_slice(&embedding.vector);
            labels.push(class);
        }
        if chunk_no % 50 == 49 {
            tracing::info!("perturbed {} of {count} catalog photos", labels.len());
        }
    }
    let dim = if labels.is_empty() { 0 } else { rows.len() / labels.len() };
    Ok((Array2::from_shape_vec((labels.len(), dim), rows).context("perturbed feature matrix")?, labels))
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

/// Trains a projection on `features` (`[n, d]`, one row per product) with class indices
/// `labels` (each < `classes`).
pub fn train(features: ArrayView2<f32>, labels: &[usize], classes: usize, label: &str, options: &TuneOptions) -> Result<(Projection, TuneReport)> {
    let started = std::time::Instant::now();
    let (n, input_dim) = features.dim();
    ensure!(n == labels.len(), "{n} feature rows but {} labels", labels.len());
    ensure!(classes >= 2, "tuning needs at least two distinct labels, found {classes}");
    ensure!(options.output_dim >= 2, "the tuned dimension must be at least 2");
    ensure!(options.epochs >= 1 && options.batch_size >= 1, "epochs and batch size must be at least 1");
    ensure!((0.0..1.0).contains(&options.dropout), "dropout must be in [0, 1)");
    ensure!(labels.iter().all(|&l| l < classes), "label index out of range");
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
    let mut report = TuneReport { examples: n, classes, loss: Vec::new(), accuracy: Vec::new(), seconds: 0.0 };
    let steps_per_epoch = n.div_ceil(options.batch_size.max(1));
    let total_steps = (steps_per_epoch * options.epochs).max(1);
    let mut t = 0i32;
    for epoch in 0..options.epochs {
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        for batch in order.chunks(options.batch_size.max(1)) {
            t += 1;
            // Cosine learning-rate decay: big steps first, fine ones at the end.
            let progress = t as f32 / total_steps as f32;
            let lr = options.learning_rate * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos());
            let b = batch.len();
            let mut x = features.select(Axis(0), batch);
            if options.dropout > 0.0 {
                let keep = 1.0 - options.dropout;
                x.mapv_inplace(|v| if rng.random::<f32>() < keep { v / keep } else { 0.0 });
            }

            let (h_pre, h, mut z) = proj.forward(x.view());
            let z_norms = normalise_rows(&mut z);
            let mut p_hat = proxies.clone();
            let p_norms = normalise_rows(&mut p_hat);
            let logits = z.dot(&p_hat.t()) * options.scale;

            // Softmax cross-entropy; dlogits = (softmax - onehot) / b.
            let mut dlogits = Array2::<f32>::zeros((b, classes));
            for (i, &row) in batch.iter().enumerate() {
                let target = labels[row];
                let l = logits.row(i);
                let max = l.fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let exp: Vec<f32> = l.iter().map(|v| (v - max).exp()).collect();
                let sum: f32 = exp.iter().sum();
                loss_sum += f64::from(-((exp[target] / sum).max(1e-30)).ln());
                let argmax = l.iter().enumerate().max_by(|a, c| a.1.total_cmp(c.1)).map(|(j, _)| j);
                correct += usize::from(argmax == Some(target));
                for j in 0..classes {
                    dlogits[[i, j]] = (exp[j] / sum - f32::from(u8::from(j == target))) / b as f32;
                }
            }
            let dz = dlogits.dot(&p_hat) * options.scale;
            let dp_hat = dlogits.t().dot(&z) * options.scale;
            let dz_pre = normalise_backward(&z, &dz, &z_norms);
            let dp = normalise_backward(&p_hat, &dp_hat, &p_norms);

            match proj.w2.as_mut() {
                None => {
                    let dw1 = dz_pre.t().dot(&x);
                    let db1 = dz_pre.sum_axis(Axis(0));
                    adam_w1.step(&mut proj.w1, &dw1, lr, t, options.weight_decay);
                    adam_b1.step(&mut proj.b1, &db1, lr, t, 0.0);
                }
                Some((w2, b2)) => {
                    let dw2 = dz_pre.t().dot(&h);
                    let db2 = dz_pre.sum_axis(Axis(0));
                    let mut dh = dz_pre.dot(&*w2);
                    ndarray::Zip::from(&mut dh).and(&h_pre).for_each(|g, &pre| {
                        if pre <= 0.0 {
                            *g = 0.0;
                        }
                    });
                    let dw1 = dh.t().dot(&x);
                    let db1 = dh.sum_axis(Axis(0));
                    if let Some((aw2, ab2)) = adam_w2.as_mut() {
                        aw2.step(w2, &dw2, lr, t, options.weight_decay);
                        ab2.step(b2, &db2, lr, t, 0.0);
                    }
                    adam_w1.step(&mut proj.w1, &dw1, lr, t, options.weight_decay);
                    adam_b1.step(&mut proj.b1, &db1, lr, t, 0.0);
                }
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
        let tensors: Vec<Vec<f32>> = photos.iter().map(|(photo, _)| crate::preprocess::prepare_image(photo, None, input)).collect();
        for ((photo, boxes), query) in photos.iter().zip(encoder.encode_queries(&tensors)?) {
            let grid = query.grid.context("the model gives no feature map to localise on")?;
            channels = grid.channels;
            for cell in 0..grid.width * grid.height {
                let (cx, cy) = (((cell % grid.width) as f32 + 0.5) / grid.width as f32, ((cell / grid.width) as f32 + 0.5) / grid.height as f32);
                let (px, py) = crate::preprocess::input_point_to_photo(cx, cy, photo.width(), photo.height(), input.fit);
                let inside = boxes.iter().any(|b| px >= b[0] && px <= b[0] + b[2] && py >= b[1] && py <= b[1] + b[3]);
                rows.extend_from_slice(grid.cell(cell));
                labels.push(if inside { 1.0f32 } else { 0.0 });
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
    for epoch in 1..=epochs {
        let z = xs.dot(&w) + b;
        let p = z.mapv(|z| 1.0 / (1.0 + (-z).exp()));
        let err = (&p - &y) * &weight;
        let grad_w = xs.t().dot(&err) + &w * decay;
        let grad_b = err.sum();
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
    let head = ForegroundHead { mean: mean.to_vec(), inv_std: std.to_vec(), weights: w.to_vec(), bias: b };
    let report = ForegroundReport { scenes, cells: n, foreground_share: positives / n as f64, epochs, balanced_accuracy, seconds: started.elapsed().as_secs_f64() };
    Ok((head, report))
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
            let (proj, report) = train(x.view(), &labels, 3, "toy", &options)?;
            assert!(report.loss.last() < report.loss.first(), "loss went down: {:?}", report.loss);
            let (test_x, test_labels) = toy(300, 64, 2);
            let after = knn_precision(&proj.apply_batch(test_x.view()), &test_labels);
            assert!(after > before + 0.05 && after > 0.8, "hidden={hidden}: precision@5 {before} -> {after}");
        }
        Ok(())
    }

    #[test]
    fn weights_round_trip() -> Result<()> {
        let (x, labels) = toy(90, 16, 3);
        for hidden in [0, 8] {
            let options = TuneOptions { output_dim: 4, hidden, epochs: 1, batch_size: 32, ..Default::default() };
            let (proj, _) = train(x.view(), &labels, 3, "toy", &options)?;
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
    fn rejects_single_class() {
        let x = Array2::zeros((4, 3));
        assert!(train(x.view(), &[0, 0, 0, 0], 1, "one", &TuneOptions::default()).is_err());
    }
}
