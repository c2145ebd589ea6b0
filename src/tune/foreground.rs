//! The foreground head `lookalike tune --localise` learns: where products are on the encoder's
//! grid, and their boxes' edges, from scenes composed of the catalog's own products.

use anyhow::{ensure, Context, Result};
use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;

use crate::catalog::SqliteCatalog;
use crate::localise::ForegroundHead;

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
}
