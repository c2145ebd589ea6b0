//! How well colours are named: at import, against the catalog's `baseColour`, and as read
//! from each query photo.

use serde::Serialize;

use crate::colour::{self, ColourTable};

/// The named colour lookalike computes at import against the catalog's own `baseColour`.
#[derive(Debug, Clone, Serialize)]
pub struct ColourNamingReport {
    /// Products of one colour (`baseColour` other than `Multi`) named exactly that.
    pub solid_correct: f64,
    pub solid_products: usize,
    /// `Multi` products named `Multi`.
    pub multi_correct: f64,
    pub multi_products: usize,
}

/// Counts named colours against the truth, for a [`ColourNamingReport`].
#[derive(Debug, Default)]
pub(super) struct NamingTally {
    solid: usize,
    solid_ok: usize,
    multi: usize,
    multi_ok: usize,
}

impl NamingTally {
    pub(super) fn add(&mut self, truth: &str, named: &str) {
        if truth == colour::MULTI {
            self.multi += 1;
            self.multi_ok += usize::from(named == colour::MULTI);
        } else {
            self.solid += 1;
            self.solid_ok += usize::from(named.eq_ignore_ascii_case(truth));
        }
    }

    pub(super) fn report(&self) -> Option<ColourNamingReport> {
        let share = |ok: usize, n: usize| ok as f64 / n.max(1) as f64;
        (self.solid + self.multi > 0).then(|| ColourNamingReport {
            solid_correct: share(self.solid_ok, self.solid),
            solid_products: self.solid,
            multi_correct: share(self.multi_ok, self.multi),
            multi_products: self.multi,
        })
    }
}

/// [`ColourNamingReport`] over `products`, whose colours `table` holds.
pub(super) fn colour_naming(products: &[crate::types::Product], table: &ColourTable) -> Option<ColourNamingReport> {
    let mut tally = NamingTally::default();
    for p in products {
        if let (Some(truth), Some(descriptor)) = (p.metadata.get("baseColour"), table.descriptor(p.key)) {
            tally.add(truth, descriptor.name());
        }
    }
    tally.report()
}
