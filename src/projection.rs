//! The catalog-tuned projection: a small learned map from the model's features to the tuned
//! search space (see [`crate::tune`] for how it is trained), and its storage format.

use anyhow::{bail, ensure, Result};
use ndarray::{Array1, Array2, ArrayView2};

use crate::index::{dot, l2_normalize};

/// A learned projection from model features to the tuned search space.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    /// The metadata column it was trained on.
    pub label: String,
    pub input_dim: usize,
    /// Width of the hidden layer; 0 for a linear projection.
    pub hidden: usize,
    pub output_dim: usize,
    /// First layer: `[hidden or output_dim, input_dim]` with bias.
    pub(crate) w1: Array2<f32>,
    pub(crate) b1: Array1<f32>,
    /// Second layer (two-layer projections only): `[output_dim, hidden]` with bias.
    pub(crate) w2: Option<(Array2<f32>, Array1<f32>)>,
}

impl Projection {
    /// Projects one feature vector and L2-normalises the result. A plain matrix-vector product:
    /// for one query this beats handing a 1-row product to the (threaded) matrix multiplier.
    pub fn apply(&self, x: &[f32]) -> Result<Vec<f32>> {
        ensure!(x.len() == self.input_dim, "vector has {} dimensions, the projection takes {}", x.len(), self.input_dim);
        let layer = |w: &Array2<f32>, b: &Array1<f32>, input: &[f32]| -> Vec<f32> {
            w.rows().into_iter().zip(b.iter()).map(|(row, bias)| row.as_slice().map_or(0.0, |r| dot(r, input)) + bias).collect()
        };
        let mut out = layer(&self.w1, &self.b1, x);
        if let Some((w2, b2)) = &self.w2 {
            out.iter_mut().for_each(|v| *v = v.max(0.0));
            out = layer(w2, b2, &out);
        }
        l2_normalize(&mut out);
        Ok(out)
    }

    /// Projects rows of `x` (`[n, input_dim]`), each L2-normalised.
    pub fn apply_batch(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let (_, _, mut z) = self.forward(x);
        for mut row in z.rows_mut() {
            if let Some(slice) = row.as_slice_mut() {
                l2_normalize(slice);
            }
        }
        z
    }

    /// Returns (pre-activation hidden, hidden, output) for training; hidden parts are empty for
    /// a linear projection.
    pub(crate) fn forward(&self, x: ArrayView2<f32>) -> (Array2<f32>, Array2<f32>, Array2<f32>) {
        let first = x.dot(&self.w1.t()) + &self.b1;
        match &self.w2 {
            None => (Array2::zeros((0, 0)), Array2::zeros((0, 0)), first),
            Some((w2, b2)) => {
                let hidden = first.mapv(|v| v.max(0.0));
                let out = hidden.dot(&w2.t()) + b2;
                (first, hidden, out)
            }
        }
    }

    /// Serialises the weights as little-endian f32: w1, b1, then w2, b2 if present.
    pub fn weights_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut put = |a: &[f32]| out.extend(a.iter().flat_map(|v| v.to_le_bytes()));
        put(&self.w1.iter().copied().collect::<Vec<_>>());
        put(&self.b1.to_vec());
        if let Some((w2, b2)) = &self.w2 {
            put(&w2.iter().copied().collect::<Vec<_>>());
            put(&b2.to_vec());
        }
        out
    }

    /// Rebuilds a projection from [`Projection::weights_bytes`] and its dimensions.
    pub fn from_weights(label: &str, input_dim: usize, hidden: usize, output_dim: usize, bytes: &[u8]) -> Result<Projection> {
        ensure!(bytes.len().is_multiple_of(4), "projection weights are not whole f32 values");
        let floats: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let first = if hidden == 0 { output_dim } else { hidden };
        let expected = first * input_dim + first + if hidden == 0 { 0 } else { output_dim * hidden + output_dim };
        if floats.len() != expected {
            bail!("projection weights hold {} values, expected {expected} for {input_dim}->{hidden}->{output_dim}", floats.len());
        }
        let mut rest = floats.as_slice();
        let mut take = |n: usize| {
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head.to_vec()
        };
        let w1 = Array2::from_shape_vec((first, input_dim), take(first * input_dim))?;
        let b1 = Array1::from(take(first));
        let w2 = if hidden == 0 { None } else { Some((Array2::from_shape_vec((output_dim, hidden), take(output_dim * hidden))?, Array1::from(take(output_dim)))) };
        Ok(Projection { label: label.to_string(), input_dim, hidden, output_dim, w1, b1, w2 })
    }
}
