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

use crate::adapter::PhotoAdapter;
use crate::catalog::{SqliteCatalog, VectorKind};
use crate::index::{l2_normalize, ExactIndex, Precision, VectorIndex};
use crate::likeness;
use crate::projection::Projection;
use crate::types::Key;
use std::sync::Arc;

/// A mapping from model vectors to searched vectors (all results L2-normalised).
#[derive(Debug, Clone)]
pub enum SearchSpace {
    /// Vectors as stored.
    Identity,
    /// Square-rooted (sign kept), minus the catalog's mean of such vectors, re-normalised;
    /// query photos then go through the catalog's photo adapter, when it has one
    /// ([`crate::adapter`]; catalog vectors never do).
    Centred { mean: Vec<f32>, adapter: Option<Arc<PhotoAdapter>> },
    /// Through the catalog-tuned projection.
    Tuned(Box<Projection>),
}

impl SearchSpace {
    /// What search uses for `catalog`: its tuned projection if it has one, else centring.
    pub fn for_catalog(catalog: &SqliteCatalog) -> Result<SearchSpace> {
        match catalog.projection()? {
            Some(p) => Ok(SearchSpace::Tuned(Box::new(p))),
            None => SearchSpace::kept_centring(catalog),
        }
    }

    /// Centring on the mean kept in the catalog's settings, recomputed (and kept) when there is
    /// none or the catalog has since doubled or halved. Keeping it fixed keeps the searched
    /// vectors fixed, so a saved search graph stays valid while products come and go; the mean
    /// of a catalog barely moves until its size changes a lot.
    fn kept_centring(catalog: &SqliteCatalog) -> Result<SearchSpace> {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Kept {
            count: usize,
            mean: Vec<f32>,
        }
        let count = catalog.vector_count()?;
        let dim = catalog.vector_space()?.map(|s| s.dim);
        if let Some(kept) = catalog.setting("centring_mean")?.and_then(|text| serde_json::from_str::<Kept>(&text).ok()) {
            let similar_size = kept.count.saturating_mul(2) >= count && count.saturating_mul(2) >= kept.count;
            if similar_size && Some(kept.mean.len()) == dim && count > 0 {
                return Ok(SearchSpace::Centred { adapter: photo_adapter(catalog, kept.mean.len()), mean: kept.mean });
            }
        }
        let space = SearchSpace::centred(catalog, VectorKind::Primary)?;
        if let SearchSpace::Centred { mean, .. } = &space {
            let text = serde_json::to_string(&Kept { count, mean: mean.clone() })?;
            if let Err(e) = catalog.set_setting("centring_mean", &text) {
                tracing::warn!("could not keep the centring mean in the catalog: {e:#}");
            }
        }
        Ok(space)
    }

    /// Dimension of the searched vectors for model vectors of `model_dim`.
    pub fn output_dim(&self, model_dim: usize) -> usize {
        match self {
            SearchSpace::Tuned(p) => p.output_dim,
            _ => model_dim,
        }
    }

    /// A short digest of the mapping: equal digests map vectors identically.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        match self {
            SearchSpace::Identity => h.update(b"identity"),
            // Not the adapter: it never touches the indexed vectors.
            SearchSpace::Centred { mean, .. } => {
                h.update(b"centred");
                mean.iter().for_each(|x| h.update(x.to_le_bytes()));
            }
            SearchSpace::Tuned(p) => {
                h.update(b"tuned");
                h.update(p.weights_bytes());
            }
        }
        hex::encode(&h.finalize()[..8])
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
        let mean = centring_mean(&sum, n);
        Ok(SearchSpace::Centred { adapter: photo_adapter(catalog, mean.len()), mean })
    }

    /// A short description for logs and reports.
    pub fn describe(&self) -> String {
        match self {
            SearchSpace::Identity => "model vectors".into(),
            SearchSpace::Centred { adapter: None, .. } => "model vectors, square-rooted and centred on the catalog mean".into(),
            SearchSpace::Centred { adapter: Some(_), .. } => "model vectors, square-rooted and centred on the catalog mean; query photos through the photo adapter".into(),
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
            SearchSpace::Centred { mean, .. } => {
                ensure!(v.len() == mean.len(), "vector has {} dimensions, this catalog's have {}", v.len(), mean.len());
                let mut out: Vec<f32> = power_normalised(v).zip(mean).map(|(x, m)| x - m).collect();
                l2_normalize(&mut out);
                Ok(out)
            }
            SearchSpace::Tuned(p) => p.apply(v),
        }
    }

    /// Maps the model vector of a query photo: as [`SearchSpace::map`], then through the photo
    /// adapter where the space has one. Catalog products used as queries ("more like this")
    /// are not photos and take [`SearchSpace::map`].
    pub fn map_photo(&self, v: &[f32]) -> Result<Vec<f32>> {
        let mapped = self.map(v)?;
        match self {
            SearchSpace::Centred { adapter: Some(adapter), .. } => adapter.apply(&mapped),
            _ => Ok(mapped),
        }
    }

    /// Whether query photos go through a photo adapter.
    pub fn adapts_photos(&self) -> bool {
        matches!(self, SearchSpace::Centred { adapter: Some(_), .. })
    }

    /// The same space without the photo adapter (what `eval` compares it with).
    pub fn without_photo_adapter(&self) -> SearchSpace {
        match self {
            SearchSpace::Centred { mean, .. } => SearchSpace::Centred { mean: mean.clone(), adapter: None },
            other => other.clone(),
        }
    }

    /// The same space with `adapter` for query photos (what `tune --adapt` measures before
    /// storing it); a tuned space has none and stays as it is.
    pub fn with_photo_adapter(&self, adapter: PhotoAdapter) -> SearchSpace {
        match self {
            SearchSpace::Centred { mean, .. } => SearchSpace::Centred { mean: mean.clone(), adapter: Some(Arc::new(adapter)) },
            other => other.clone(),
        }
    }

    /// Measures the likeness bands ([`crate::likeness`]) on the catalog's own products in this
    /// space, with an exact scan, and keeps them in the catalog, so that searches find them
    /// there instead of measuring them first. `index` and `tune` call this when they finish.
    /// Only when `changed` says the vectors changed, or the recorded bands are missing or do
    /// not fit this space and catalog size.
    pub fn record_likeness_bands(&self, catalog: &SqliteCatalog, changed: bool) -> Result<Option<likeness::LikenessBands>> {
        let products = catalog.vector_count()?;
        let recorded = catalog.setting(likeness::SETTING)?.as_deref().and_then(likeness::RecordedBands::from_setting);
        if let Some(recorded) = recorded.filter(|r| !changed && r.fits(&self.fingerprint(), products)) {
            return Ok(Some(recorded.bands));
        }
        if products == 0 {
            return Ok(None);
        }
        let index = self.build_index(catalog, VectorKind::Primary, Precision::F32)?;
        let recorded = self.measured_likeness_bands(catalog, &index)?;
        if let Some(recorded) = &recorded {
            catalog.set_setting(likeness::SETTING, &recorded.to_setting())?;
        }
        Ok(recorded.map(|r| r.bands))
    }

    /// The likeness bands of this space measured on the catalog's products (`index`: their
    /// vectors in this space), as [`SearchSpace::record_likeness_bands`] keeps them, without
    /// keeping them (`tune` stores them with its projection). `None` for a catalog too small to
    /// compare its products.
    pub fn measured_likeness_bands(&self, catalog: &SqliteCatalog, index: &dyn VectorIndex) -> Result<Option<likeness::RecordedBands>> {
        if index.is_empty() {
            return Ok(None);
        }
        let bands = self.measure_likeness_bands(catalog, index)?;
        Ok(bands.map(|bands| likeness::RecordedBands { space: self.fingerprint(), products: index.len(), bands }))
    }

    /// The likeness bands of this space as `index` or `tune` recorded them in `catalog`, when
    /// they fit it; else measured now against `index` (the catalog's vectors in this space) and
    /// not written back. `None` for a catalog too small to compare its products.
    pub fn likeness_bands(&self, catalog: &SqliteCatalog, index: &dyn VectorIndex) -> Result<Option<likeness::LikenessBands>> {
        let recorded = catalog.setting(likeness::SETTING)?.as_deref().and_then(likeness::RecordedBands::from_setting);
        match recorded.filter(|r| r.fits(&self.fingerprint(), index.len())) {
            Some(recorded) => Ok(Some(recorded.bands)),
            None => self.measure_likeness_bands(catalog, index),
        }
    }

    fn measure_likeness_bands(&self, catalog: &SqliteCatalog, index: &dyn VectorIndex) -> Result<Option<likeness::LikenessBands>> {
        let sample = catalog.sample_vectors(likeness::SAMPLE)?;
        let sample: Vec<(Key, Vec<f32>)> = sample.into_iter().map(|(key, v)| Ok((key, self.map(&v)?))).collect::<Result<_>>()?;
        likeness::measure(&sample, &catalog.shared_photos()?, |v, n| Ok(index.search(v, n, None)?.into_iter().map(|h| (h.key, h.score)).collect()))
    }

    /// Builds an exact index over the catalog's stored vectors of `kind`, mapped into this space,
    /// keeping its rows in `precision`.
    pub fn build_index(&self, catalog: &SqliteCatalog, kind: VectorKind, precision: Precision) -> Result<ExactIndex> {
        let context = || format!("loading vectors from {}", catalog.path().display());
        let count = catalog.vector_count()?;
        let SearchSpace::Tuned(projection) = self else {
            let mut index: Option<ExactIndex> = None;
            catalog
                .for_each_vector(kind, |key, v| {
                    let mapped = self.map(v)?;
                    let index = index.get_or_insert_with(|| {
                        let mut index = ExactIndex::with_precision(mapped.len(), precision);
                        index.reserve(count);
                        index
                    });
                    index.upsert(key, &mapped)
                })
                .with_context(context)?;
            let dim = catalog.vector_space()?.map(|s| s.dim).unwrap_or(0);
            return Ok(index.unwrap_or_else(|| ExactIndex::with_precision(dim, precision)));
        };
        // Project in blocks: one matrix product per block instead of one per product.
        const BLOCK: usize = 4096;
        let mut index = ExactIndex::with_precision(projection.output_dim, precision);
        index.reserve(count);
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

/// The catalog's photo adapter, when it has one for vectors of `dim`. A damaged or unreadable
/// adapter is reported and left out: searches still work, as before it was learned.
fn photo_adapter(catalog: &SqliteCatalog, dim: usize) -> Option<Arc<PhotoAdapter>> {
    match catalog.photo_adapter() {
        Ok(Some(adapter)) if adapter.dim() == dim => Some(Arc::new(adapter)),
        Ok(Some(adapter)) => {
            tracing::warn!("the photo adapter takes {}-d vectors, the catalog's are {dim}-d: not used (run `lookalike tune --adapt` again)", adapter.dim());
            None
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("photo adapter not used: {e:#}");
            None
        }
    }
}

/// How many products' worth of weight the centring mean's estimate gives to "no shared
/// component" (the origin): `mean = sum / (n + CENTRING_PRIOR)`.
///
/// Why: centring on the mean of a handful of products removes the products themselves, not
/// what all products share: a catalog of one product centred on its own vector maps it to
/// zero (every search scored 0 and called it only "related"), and two products centred on
/// their mean point in opposite directions. A shop trying lookalike on its first few photos
/// met exactly that. With the prior, one product is centred on a third of itself (its own
/// photo scores 1) and a catalog of 60,000 on 99.997 % of its mean, as measured in
/// docs/quality-study.md. Two was measured against eight on Fashion-MNIST catalogs of 30 and
/// 100 products (1,000 queries): eight cost 0.009 of precision@1 at 30 products, two matched
/// the plain mean within 0.005 of mAP@10 (docs/quality-study.md, "Small catalogs").
const CENTRING_PRIOR: f64 = 2.0;

/// The centring mean of `n` power-normalised vectors summing to `sum`, shrunk towards the
/// origin for small catalogs ([`CENTRING_PRIOR`]).
fn centring_mean(sum: &[f64], n: usize) -> Vec<f32> {
    sum.iter().map(|s| (s / (n as f64 + CENTRING_PRIOR)) as f32).collect()
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
        let space = SearchSpace::Centred { mean, adapter: None };
        let (ca, cb) = (space.map(&a)?, space.map(&b)?);
        let before = crate::index::dot(&a, &b);
        let after = crate::index::dot(&ca, &cb);
        assert!(before > 0.9 && after < -0.9, "cosine {before} -> {after}");
        assert!(space.map(&[1.0]).is_err());
        Ok(())
    }

    /// A catalog of one or two products still finds a product's own photo at score 1 and
    /// keeps two alike products alike (a plain mean maps a lone product to zero and sets two
    /// products opposite each other); a large catalog's mean is nearly the plain mean.
    #[test]
    fn a_small_catalog_is_centred_on_a_shrunk_mean() -> Result<()> {
        let mut a = vec![1.0, 1.0, 0.2];
        let mut b = vec![1.0, 1.0, -0.2];
        l2_normalize(&mut a);
        l2_normalize(&mut b);
        let sum_of = |vs: &[&[f32]]| -> Vec<f64> { (0..3).map(|i| vs.iter().map(|v| f64::from(power_normalised(v).nth(i).unwrap_or(0.0))).sum()).collect() };
        let one = SearchSpace::Centred { mean: centring_mean(&sum_of(&[&a]), 1), adapter: None };
        let mapped = one.map(&a)?;
        assert!((crate::index::dot(&mapped, &mapped) - 1.0).abs() < 1e-5, "a lone product's own photo scores 1: {mapped:?}");
        let two = SearchSpace::Centred { mean: centring_mean(&sum_of(&[&a, &b]), 2), adapter: None };
        let after = crate::index::dot(&two.map(&a)?, &two.map(&b)?);
        assert!(after > 0.25, "two alike products are not set against each other in a two-product catalog: {after}");
        let many = centring_mean(&[60_000.0], 60_000);
        assert!((many[0] - 1.0).abs() < 5e-5, "{many:?}");
        Ok(())
    }
}
