//! The principal subspace of a set of vectors, for walking the search graph in fewer dimensions.
//!
//! Why: a graph search spends nearly all its time computing distances to the nodes it visits
//! (perf: `nk_dot_i8` dominates), and each costs in proportion to the dimension. lookalike's
//! 1280-d vectors keep about 85 % of their variance in their top 256 principal directions, so a
//! graph over 256-d projections, a fifth of the bytes per node, still proposes the true
//! neighbours, and the exact f32 re-rank of its candidates restores their order
//! (`lookalike bench search --graph-dims 256,0` compares it with the full-length graph).
//!
//! Only the subspace matters, not the individual principal directions (dot products inside it
//! do not change under a rotation of it), so the basis comes from subspace iteration on the
//! sample's covariance with a Gram-Schmidt step, without an eigensolver.

use anyhow::{ensure, Result};
use ndarray::{Array2, ArrayView2, Axis};
use rand::{Rng, SeedableRng};

/// Rows of the sample the basis is fitted on: enough for a stable 1280 x 1280 covariance,
/// cheap to multiply (about a second on 2 cores).
pub const FIT_SAMPLE: usize = 10_000;

/// Fewest rows per direction a basis is fitted from: with fewer, the sample's covariance is
/// too noisy (or too low in rank) for its top directions to mean much.
pub const MIN_ROWS_PER_DIRECTION: usize = 4;

/// Rounds of subspace iteration. The top directions of embedding covariances are well
/// separated, so a few rounds settle the subspace.
const ROUNDS: usize = 6;

/// `dim_out` orthonormal directions in a `dim_in`-d space, one per row.
#[derive(Debug, Clone, PartialEq)]
pub struct PrincipalBasis {
    rows: Array2<f32>,
}

impl PrincipalBasis {
    /// The top `dim_out` principal directions of `sample` (one vector per row, any number of
    /// rows; it is centred here). Deterministic for a given sample and seed.
    pub fn fit(sample: ArrayView2<f32>, dim_out: usize, seed: u64) -> Result<PrincipalBasis> {
        let dim_in = sample.ncols();
        ensure!(dim_out >= 1 && dim_out <= dim_in, "a basis of {dim_out} directions in a {dim_in}-d space");
        ensure!(sample.nrows() >= 2, "a principal basis needs at least 2 vectors, got {}", sample.nrows());
        let mean = sample.mean_axis(Axis(0)).unwrap_or_else(|| ndarray::Array1::zeros(dim_in));
        let centred = &sample - &mean;
        let covariance = centred.t().dot(&centred);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut rows = Array2::from_shape_fn((dim_out, dim_in), |_| rng.random_range(-1.0f32..1.0));
        orthonormalise(&mut rows)?;
        for _ in 0..ROUNDS {
            // The covariance is symmetric: (C Q)^T = Q^T C, row by row.
            rows = rows.dot(&covariance);
            orthonormalise(&mut rows)?;
        }
        Ok(PrincipalBasis { rows })
    }

    pub fn dim_in(&self) -> usize {
        self.rows.ncols()
    }

    pub fn dim_out(&self) -> usize {
        self.rows.nrows()
    }

    /// `v`'s coordinates in the subspace.
    pub fn project(&self, v: &[f32]) -> Vec<f32> {
        self.rows.outer_iter().map(|row| super::dot(row.as_slice().unwrap_or(&[]), v)).collect()
    }

    /// The directions, one per row (`[dim_out, dim_in]`).
    pub fn rows(&self) -> ndarray::ArrayView2<'_, f32> {
        self.rows.view()
    }

    /// Little-endian f32 rows, for saving beside the graph.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.rows.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    pub fn from_bytes(bytes: &[u8], dim_out: usize, dim_in: usize) -> Result<PrincipalBasis> {
        ensure!(bytes.len() == dim_out * dim_in * 4, "a {dim_out} x {dim_in} basis takes {} bytes, found {}", dim_out * dim_in * 4, bytes.len());
        let values = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok(PrincipalBasis { rows: Array2::from_shape_vec((dim_out, dim_in), values)? })
    }
}

/// Modified Gram-Schmidt over the rows, twice (one pass loses orthogonality in f32 when rows
/// are nearly parallel, as they become under iteration).
pub(crate) fn orthonormalise(rows: &mut Array2<f32>) -> Result<()> {
    for _ in 0..2 {
        for i in 0..rows.nrows() {
            let (done, mut rest) = rows.view_mut().split_at(Axis(0), i);
            let mut row = rest.row_mut(0);
            for prev in done.outer_iter() {
                let along = prev.dot(&row);
                row.scaled_add(-along, &prev);
            }
            let norm = row.dot(&row).sqrt();
            ensure!(norm > 1e-12, "the sample spans fewer than {} directions", rows.nrows());
            row /= norm;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_basis_is_orthonormal_and_finds_the_directions_the_data_varies_in() -> Result<()> {
        // 2,000 vectors in 40-d that vary a lot along axes 3 and 17, little elsewhere.
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let sample = Array2::from_shape_fn((2000, 40), |(_, j)| {
            let spread = if j == 3 || j == 17 { 10.0 } else { 0.1 };
            spread * rng.random_range(-1.0f32..1.0)
        });
        let basis = PrincipalBasis::fit(sample.view(), 2, 1)?;
        let gram = basis.rows.dot(&basis.rows.t());
        for ((i, j), g) in gram.indexed_iter() {
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((g - want).abs() < 1e-4, "gram[{i}][{j}] = {g}");
        }
        // The subspace is spanned by axes 3 and 17: each keeps nearly its whole length in it.
        for axis in [3, 17] {
            let mut e = vec![0.0f32; 40];
            e[axis] = 1.0;
            let kept: f32 = basis.project(&e).iter().map(|c| c * c).sum();
            assert!(kept > 0.99, "axis {axis} keeps {kept}");
        }
        let mut e = vec![0.0f32; 40];
        e[5] = 1.0;
        assert!(basis.project(&e).iter().map(|c| c * c).sum::<f32>() < 0.01);

        // Saved and read back bit for bit; a wrong size is refused.
        let bytes = basis.to_bytes();
        assert_eq!(PrincipalBasis::from_bytes(&bytes, 2, 40)?, basis);
        assert!(PrincipalBasis::from_bytes(&bytes[..bytes.len() - 4], 2, 40).is_err());
        assert!(PrincipalBasis::fit(sample.view(), 41, 1).is_err());
        Ok(())
    }
}
