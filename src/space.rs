//! The space the index searches: how the model's vectors are mapped before they are indexed and
//! before a query is compared with them.
//!
//! Post-ReLU CNN features are all non-negative, so every product's vector shares a large common
//! component and cosine similarities crowd together near 1; a few strongly firing channels also
//! dominate every comparison. A signed square root of each component (power normalisation)
//! evens out those channels, and subtracting the catalog's mean vector (no labels needed)
//! removes the shared component; together they measurably improve ranking
//! (docs/quality-study.md).
//! When the shop has tuned the catalog on a label column (`lookalike tune`), the learned
//! projection replaces that.

use anyhow::{ensure, Context, Result};

use crate::catalog::{Key, SqliteCatalog, VectorKind};
use crate::index::{l2_normalize, ExactIndex, VectorIndex};
use crate::tune::Projection;

/// A mapping from model vectors to searched vectors (all results L2-normalised).
#[derive(Debug, Clone)]
pub enum SearchSpace {
    /// Vectors as stored.
    Identity,
    /// Square-rooted (sign kept), minus the catalog's mean of such vectors, re-normalised.
    Centred { mean: Vec<f32> },
    /// Through the catalog-tuned projection.
    Tuned(Box<Projection>),
}

impl SearchSpace {
    /// What search uses for `catalog`: its tuned projection if it has one, else centring.
    pub fn for_catalog(catalog: &SqliteCatalog) -> Result<SearchSpace> {
        match catalog.projection()? {
            Some(p) => Ok(SearchSpace::Tuned(Box::new(p))),
            None => SearchSpace::centred(catalog, VectorKind::Primary),
        }
    }

    /// Centring on the mean of the catalog's stored vectors of `kind`.
    pub fn centred(catalog: &SqliteCatalog, kind: VectorKind) -> Result<SearchSpace> {
        let mut sum: Vec<f64> = Vec::new();
        let mut n = 0usize;
        catalog.for_each_vector(kind, |_, v| {
            if sum.is_empty() {
                sum = vec![0.0; v.len()];
            }
            ensure!(v.len() == sum.len(), "stored vectors differ in dimension");
            sum.iter_mut().zip(power_normalised(v)).for_each(|(s, x)| *s += f64::from(x));
            n += 1;
            Ok(())
        })?;
        if n == 0 {
            return Ok(SearchSpace::Identity);
        }
        Ok(SearchSpace::Centred { mean: sum.into_iter().map(|s| (s / n as f64) as f32).collect() })
    }

    /// A short description for logs and reports.
    pub fn describe(&self) -> String {
        match self {
            SearchSpace::Identity => "model vectors".into(),
            SearchSpace::Centred { .. } => "model vectors, square-rooted and centred on the catalog mean".into(),
            SearchSpace::Tuned(p) => format!("tuned on {} ({} dims)", p.label, p.output_dim),
        }
    }

    pub fn tuned_on(&self) -> Option<&str> {
        match self {
            SearchSpace::Tuned(p) => Some(&p.label),
            _ => None,
        }
    }

    /// Maps one model vector.
    pub fn map(&self, v: &[f32]) -> Result<Vec<f32>> {
        match self {
            SearchSpace::Identity => Ok(v.to_vec()),
            SearchSpace::Centred { mean } => {
                ensure!(v.len() == mean.len(), "vector has {} dimensions, this catalog's have {}", v.len(), mean.len());
                let mut out: Vec<f32> = power_normalised(v).zip(mean).map(|(x, m)| x - m).collect();
                l2_normalize(&mut out);
                Ok(out)
            }
            SearchSpace::Tuned(p) => p.apply(v),
        }
    }

    /// Builds an exact index over the catalog's stored vectors of `kind`, mapped into this space.
    pub fn build_index(&self, catalog: &SqliteCatalog, kind: VectorKind) -> Result<ExactIndex> {
        let context = || format!("loading vectors from {}", catalog.path().display());
        let SearchSpace::Tuned(projection) = self else {
            let mut index: Option<ExactIndex> = None;
            catalog
                .for_each_vector(kind, |key, v| {
                    let mapped = self.map(v)?;
                    index.get_or_insert_with(|| ExactIndex::new(mapped.len())).upsert(key, &mapped)
                })
                .with_context(context)?;
            let dim = catalog.vector_space()?.map(|s| s.dim).unwrap_or(0);
            return Ok(index.unwrap_or_else(|| ExactIndex::new(dim)));
        };
        // Project in blocks: one matrix product per block instead of one per product.
        const BLOCK: usize = 4096;
        let mut index = ExactIndex::new(projection.output_dim);
        let (mut keys, mut rows): (Vec<Key>, Vec<f32>) = (Vec::with_capacity(BLOCK), Vec::new());
        let flush = |keys: &mut Vec<Key>, rows: &mut Vec<f32>, index: &mut ExactIndex| -> Result<()> {
            if keys.is_empty() {
                return Ok(());
            }
            let block = ndarray::ArrayView2::from_shape((keys.len(), projection.input_dim), rows.as_slice()).context("vector block shape")?;
            for (key, row) in keys.iter().zip(projection.apply_batch(block).rows()) {
                index.upsert(*key, row.as_slice().context("projected row layout")?)?;
            }
            keys.clear();
            rows.clear();
            Ok(())
        };
        catalog
            .for_each_vector(kind, |key, v| {
                ensure!(v.len() == projection.input_dim, "stored vector has {} dimensions, the projection takes {}", v.len(), projection.input_dim);
                keys.push(key);
                rows.extend_from_slice(v);
                if keys.len() == BLOCK {
                    flush(&mut keys, &mut rows, &mut index)?;
                }
                Ok(())
            })
            .with_context(context)?;
        flush(&mut keys, &mut rows, &mut index)?;
        Ok(index)
    }
}

/// Signed square root of each component.
fn power_normalised(v: &[f32]) -> impl Iterator<Item = f32> + '_ {
    v.iter().map(|x| x.signum() * x.abs().sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centring_spreads_vectors_that_share_a_common_component() -> Result<()> {
        let mut a = vec![1.0, 1.0, 0.2];
        let mut b = vec![1.0, 1.0, -0.2];
        l2_normalize(&mut a);
        l2_normalize(&mut b);
        let mean: Vec<f32> = power_normalised(&a).zip(power_normalised(&b)).map(|(x, y)| (x + y) / 2.0).collect();
        let space = SearchSpace::Centred { mean };
        let (ca, cb) = (space.map(&a)?, space.map(&b)?);
        let before = crate::index::dot(&a, &b);
        let after = crate::index::dot(&ca, &cb);
        assert!(before > 0.9 && after < -0.9, "cosine {before} -> {after}");
        assert!(space.map(&[1.0]).is_err());
        Ok(())
    }
}
