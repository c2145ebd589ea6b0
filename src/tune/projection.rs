//! Training the projection: normalised softmax against one proxy per label (plus instance
//! pairs), AdamW, linear or two layers, optionally in the features' principal subspace.

use anyhow::{ensure, Result};
use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::{TuneOptions, TuneReport};
use crate::index::basis::PrincipalBasis;
use crate::projection::Projection;

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
    fn rejects_single_class() {
        let x = Array2::zeros((4, 3));
        assert!(train(x.view(), &[0, 0, 0, 0], 1, "one", &[], &TuneOptions::default()).is_err());
    }
}
