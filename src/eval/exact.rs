//! `eval --exact N`: catalog products re-photographed as a shopper would; is each found itself?

use std::collections::BTreeMap;

use anyhow::Result;
use rand::SeedableRng;
use serde::Serialize;

use super::methods::Methods;
use super::stratified_sample;
use crate::catalog::SqliteCatalog;

/// Catalog products re-photographed as a shopper would ([`crate::perturb::perturb`]: on a
/// background, cropped, rotated, re-lit, blurred, JPEG): does search find that very product?
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExactReport {
    pub products: usize,
    /// Per method, as in [`super::EvalReport::methods`].
    pub methods: BTreeMap<String, ExactRecall>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExactRecall {
    /// Share of the re-photographed products ranked first.
    pub exact_recall_at_1: f64,
    /// Share ranked in the top 10.
    pub exact_recall_at_10: f64,
}

/// [`ExactReport`]: `n` catalog products (stratified by the label `columns` give them, seeded)
/// re-photographed by [`crate::perturb::perturb`] and searched with every method. Finding a
/// product itself needs no label: in a catalog where none has the columns, the sample is drawn
/// from all products alike.
pub(super) fn evaluate_exact(catalog: &SqliteCatalog, methods: &Methods, products: &[crate::types::Product], columns: &[&str], n: usize, seed: u64) -> Result<ExactReport> {
    let mut labelled: Vec<(&crate::types::Product, String)> =
        products.iter().filter_map(|p| Some((p, super::joined_label(columns, |c| p.metadata.get(c).map(String::as_str))?))).collect();
    if labelled.is_empty() {
        labelled = products.iter().map(|p| (p, String::new())).collect();
    }
    let labels: Vec<String> = labelled.iter().map(|(_, l)| l.clone()).collect();
    let picked = stratified_sample(&labels, n.min(labelled.len()), seed ^ 0x00E7_AC71);
    let mut found: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    for (i, &pick) in picked.iter().enumerate() {
        let product = labelled[pick].0;
        let image = catalog.decoded_image(product.key, &product.image)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64((seed ^ 0x00E7_AC71).wrapping_mul(1_000_003).wrapping_add(i as u64));
        let photo = crate::perturb::perturb(&image, &mut rng);
        for (method, hits, _) in methods.rank(&photo)?.0 {
            let tally = found.entry(method).or_default();
            tally.0 += usize::from(hits.first().is_some_and(|h| h.key == product.key));
            tally.1 += usize::from(hits.iter().any(|h| h.key == product.key));
        }
    }
    let share = |count: usize| count as f64 / picked.len().max(1) as f64;
    Ok(ExactReport {
        products: picked.len(),
        methods: found.into_iter().map(|(m, (at1, at10))| (m.to_string(), ExactRecall { exact_recall_at_1: share(at1), exact_recall_at_10: share(at10) })).collect(),
    })
}
