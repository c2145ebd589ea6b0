//! The photo adapter: a linear map that moves the vector of a shopper's photo towards the
//! vector of the catalog shot of the same product, learned from the catalog's own photos
//! without labels (`lookalike tune --adapt`).
//!
//! Why: a shopper's photo of a product (tilted, cropped, relit, blurred, JPEG-compressed, on a
//! background) lands away from the product's catalog shot in the model's space, and the
//! losses compound; the model was never trained for it. lookalike's perturbation pipeline
//! makes such photos of catalog products, so it knows, for each, which vector it *should*
//! have had. A ridge regression from the perturbed photos' vectors to their products' vectors
//! learns the average correction. It is applied to query photos only: catalog vectors, the
//! index and its graph stay as they are. Clean catalog shots are added as pairs that map to
//! themselves, so that a clean photo is left (nearly) where it is. Measured in
//! docs/localisation-study.md ("The photo adapter").

use anyhow::{ensure, Context, Result};
use ndarray::{Array2, ArrayView2};
use rand::{Rng, SeedableRng};

use crate::index::{dot, l2_normalize};

/// How strongly the fit is held to the identity map ([`fit`]'s `ridge`); chosen by measurement
/// (docs/localisation-study.md).
pub const RIDGE: f32 = 10.0;
/// Weight of the clean catalog shots that map to themselves, relative to the perturbed photos.
pub const IDENTITY_WEIGHT: f32 = 3.0;
/// Rank of the correction kept (`W = I + P V^T`). Why not the full `dim x dim` map: applying
/// it reads 6.5 MB of weights per query view at 1280 dims, memory-bound at about 0.7 ms, and
/// a rank-128 truncation searched as well (docs/localisation-study.md); 160 directions from
/// subspace iteration stand in for the exact top 128.
pub const RANK: usize = 160;
/// Rounds of subspace iteration for the correction's top directions.
const ROUNDS: usize = 8;

/// A learned map in the search space: `x -> x + sum_k (p_k . x) v_k`, L2-normalised.
#[derive(Clone, PartialEq)]
pub struct PhotoAdapter {
    dim: usize,
    /// `[rank, dim]`: what each direction reads from the input (`p_k`).
    read: Array2<f32>,
    /// `[rank, dim]`: the orthonormal directions it writes along (`v_k`).
    write: Array2<f32>,
}

// Not derived: a log line would print all of the weights.
impl std::fmt::Debug for PhotoAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PhotoAdapter({}-d, rank {})", self.dim, self.read.nrows())
    }
}

impl PhotoAdapter {
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Maps one search-space vector, L2-normalised (the space's vectors are).
    pub fn apply(&self, x: &[f32]) -> Result<Vec<f32>> {
        ensure!(x.len() == self.dim, "vector has {} dimensions, the photo adapter takes {}", x.len(), self.dim);
        let mut out = x.to_vec();
        for (read, write) in self.read.outer_iter().zip(self.write.outer_iter()) {
            let (Some(read), Some(write)) = (read.as_slice(), write.as_slice()) else { continue };
            let c = dot(read, x);
            out.iter_mut().zip(write).for_each(|(o, w)| *o += c * w);
        }
        l2_normalize(&mut out);
        Ok(out)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 8 * self.read.len());
        out.extend((self.dim as u32).to_le_bytes());
        out.extend((self.read.nrows() as u32).to_le_bytes());
        self.read.iter().chain(self.write.iter()).for_each(|v| out.extend(v.to_le_bytes()));
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<PhotoAdapter> {
        ensure!(bytes.len() >= 8 && bytes.len().is_multiple_of(4), "the photo adapter is damaged (size {})", bytes.len());
        let dim = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let rank = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        let values: Vec<f32> = bytes[8..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        ensure!(dim > 0 && values.len() == 2 * rank * dim, "the photo adapter is damaged ({} weights for rank {rank} in {dim} dimensions)", values.len());
        ensure!(values.iter().all(|v| v.is_finite()), "the photo adapter is damaged (weights that are not numbers)");
        let (read, write) = values.split_at(rank * dim);
        Ok(PhotoAdapter { dim, read: Array2::from_shape_vec((rank, dim), read.to_vec())?, write: Array2::from_shape_vec((rank, dim), write.to_vec())? })
    }
}

/// Fits the map `W` minimising `|photos W - shots|^2 + identity_weight |clean W - clean|^2 +
/// ridge |W - I|^2`, where row `i` of `photos` is a shopper-like photo of the product whose
/// catalog vector is row `i` of `shots`, and `clean` are catalog vectors that should stay put.
/// All rows are search-space vectors. The normal equations are solved exactly (Cholesky), and
/// the correction `W - I` is kept in its top [`RANK`] directions; deterministic.
pub fn fit(photos: ArrayView2<f32>, shots: ArrayView2<f32>, clean: ArrayView2<f32>, ridge: f32, identity_weight: f32) -> Result<PhotoAdapter> {
    let dim = photos.ncols();
    ensure!(dim > 0 && photos.nrows() > 0, "no photos to learn the adapter from");
    ensure!(shots.dim() == photos.dim(), "{} photos but {} catalog shots", photos.nrows(), shots.nrows());
    ensure!(clean.ncols() == dim, "clean shots have {} dimensions, photos {dim}", clean.ncols());
    ensure!(ridge > 0.0 && ridge.is_finite(), "the ridge must be above 0");
    // The Gram matrices in f32 (the threaded matrix multiplier), summed and solved in f64.
    let to_f64 = |a: Array2<f32>| a.mapv(f64::from);
    let clean_gram = to_f64(clean.t().dot(&clean)) * f64::from(identity_weight);
    let mut gram = to_f64(photos.t().dot(&photos)) + &clean_gram;
    let mut rhs = to_f64(photos.t().dot(&shots)) + &clean_gram;
    for i in 0..dim {
        gram[[i, i]] += f64::from(ridge);
        rhs[[i, i]] += f64::from(ridge);
    }
    let mut correction = solve_spd(gram, rhs).context("fitting the photo adapter")?;
    for i in 0..dim {
        correction[[i, i]] -= 1.0;
    }
    let m = correction.mapv(|v| v as f32);
    Ok(low_rank(m.view(), RANK.min(dim))?.into_adapter(dim))
}

/// `m ~ p v^T` in `m`'s top `rank` right singular directions `v` (orthonormal), by subspace
/// iteration on `m^T m`.
struct LowRank {
    read: Array2<f32>,
    write: Array2<f32>,
}

impl LowRank {
    fn into_adapter(self, dim: usize) -> PhotoAdapter {
        PhotoAdapter { dim, read: self.read, write: self.write }
    }
}

fn low_rank(m: ArrayView2<f32>, rank: usize) -> Result<LowRank> {
    let dim = m.ncols();
    let mut normal = m.t().dot(&m);
    // Scaled to a mean eigenvalue of 1, plus a little of the identity: the iteration stays
    // full rank when the correction is (nearly) zero, and its directions do not change.
    let mean_eigenvalue = normal.diag().sum() / dim as f32;
    if mean_eigenvalue > 0.0 && mean_eigenvalue.is_finite() {
        normal /= mean_eigenvalue;
    }
    normal.diag_mut().mapv_inplace(|v| v + 1e-6);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xADA9);
    let mut write = Array2::from_shape_fn((rank, dim), |_| rng.random_range(-1.0f32..1.0));
    crate::index::basis::orthonormalise(&mut write)?;
    for _ in 0..ROUNDS {
        // `normal` is symmetric: (N V)^T = V^T N, row by row.
        write = write.dot(&normal);
        crate::index::basis::orthonormalise(&mut write)?;
    }
    // `x m ~ x (m v) v^T`: direction k reads `(m v)[:, k]` from x.
    let read = write.dot(&m.t());
    Ok(LowRank { read, write })
}

/// Solves `a x = b` for a symmetric positive definite `a` (`[n, n]`) and `b` (`[n, m]`) by a
/// Cholesky factorisation `a = l l^T`.
pub(crate) fn solve_spd(mut a: Array2<f64>, mut b: Array2<f64>) -> Result<Array2<f64>> {
    let n = a.nrows();
    // Factor in place: the lower triangle becomes l.
    for j in 0..n {
        let mut d = a[[j, j]];
        for k in 0..j {
            d -= a[[j, k]] * a[[j, k]];
        }
        ensure!(d > 0.0 && d.is_finite(), "the system is not positive definite");
        let d = d.sqrt();
        a[[j, j]] = d;
        let row_j = a.row(j).to_owned();
        for i in j + 1..n {
            let mut s = a[[i, j]];
            let row_i = a.row(i);
            for k in 0..j {
                s -= row_i[k] * row_j[k];
            }
            a[[i, j]] = s / d;
        }
    }
    // Forward (l y = b), then back (l^T x = y), row operations over all right-hand sides.
    for i in 0..n {
        for k in 0..i {
            let f = a[[i, k]];
            if f != 0.0 {
                let (top, mut rest) = b.view_mut().split_at(ndarray::Axis(0), i);
                rest.row_mut(0).scaled_add(-f, &top.row(k));
            }
        }
        let d = a[[i, i]];
        b.row_mut(i).mapv_inplace(|v| v / d);
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            let f = a[[k, i]];
            if f != 0.0 {
                let (mut top, rest) = b.view_mut().split_at(ndarray::Axis(0), k);
                top.row_mut(i).scaled_add(-f, &rest.row(0));
            }
        }
        let d = a[[i, i]];
        b.row_mut(i).mapv_inplace(|v| v / d);
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Array2::from_shape_fn((rows, cols), |_| rng.random_range(-1.0..1.0))
    }

    #[test]
    fn solves_a_positive_definite_system() -> Result<()> {
        let m = random(6, 6, 1).mapv(f64::from);
        let a = m.t().dot(&m) + Array2::<f64>::eye(6);
        let x = random(6, 3, 2).mapv(f64::from);
        let solved = solve_spd(a.clone(), a.dot(&x))?;
        assert!((solved - x).iter().all(|d| d.abs() < 1e-9));
        assert!(solve_spd(-Array2::<f64>::eye(3), Array2::zeros((3, 1))).is_err());
        Ok(())
    }

    #[test]
    fn learns_the_correction_from_photos_to_their_shots() -> Result<()> {
        // Photos are their shots seen through a fixed distortion plus noise; the adapter
        // learns to undo it, so each photo lands nearer its own shot than before.
        let (n, d) = (400, 8);
        let shots = random(n, d, 3);
        let distortion = Array2::<f32>::eye(d) + random(d, d, 4) * 0.4;
        let photos = shots.dot(&distortion) + random(n, d, 5) * 0.05;
        let adapter = fit(photos.view(), shots.view(), Array2::<f32>::zeros((0, d)).view(), 0.01, 0.0)?;
        let cosine = |a: &[f32], b: &[f32]| dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt());
        let (mut before, mut after) = (0.0, 0.0);
        for (photo, shot) in photos.rows().into_iter().zip(shots.rows()) {
            let (photo, shot) = (photo.to_vec(), shot.to_vec());
            before += cosine(&photo, &shot);
            after += cosine(&adapter.apply(&photo)?, &shot);
        }
        assert!(after / n as f32 > 0.99, "mean cosine to the shot after adapting: {}", after / n as f32);
        assert!(after > before);
        Ok(())
    }

    #[test]
    fn photos_that_look_like_their_shots_are_left_alone() -> Result<()> {
        let shots = random(300, 5, 6);
        let adapter = fit(shots.view(), shots.view(), shots.view(), 1.0, 3.0)?;
        for row in shots.rows() {
            let mut x = row.to_vec();
            l2_normalize(&mut x);
            let mapped = adapter.apply(&x)?;
            assert!(x.iter().zip(&mapped).all(|(a, b)| (a - b).abs() < 1e-5), "{x:?} -> {mapped:?}");
        }
        Ok(())
    }

    #[test]
    fn the_correction_keeps_its_strongest_directions() -> Result<()> {
        // A correction of rank 2 in 12 dimensions, read back from 4 directions: exact.
        let (u, v) = (random(12, 2, 9), random(12, 2, 10));
        let m = u.dot(&v.t());
        let kept = low_rank(m.view(), 4)?;
        let rebuilt = kept.read.t().dot(&kept.write);
        assert!((rebuilt - &m).iter().all(|d| d.abs() < 1e-4));
        Ok(())
    }

    #[test]
    fn round_trips_and_refuses_damage() -> Result<()> {
        let shots = random(50, 4, 7);
        let adapter = fit(random(50, 4, 8).view(), shots.view(), shots.view(), 1.0, 1.0)?;
        let bytes = adapter.to_bytes();
        assert_eq!(PhotoAdapter::from_bytes(&bytes)?, adapter);
        assert!(PhotoAdapter::from_bytes(&bytes[..bytes.len() - 4]).is_err());
        assert!(PhotoAdapter::from_bytes(&[1, 2]).is_err());
        assert!(adapter.apply(&[1.0, 2.0]).is_err());
        Ok(())
    }
}
