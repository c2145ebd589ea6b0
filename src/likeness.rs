//! How alike a result is to the query, in a shopper's words: "Very similar", "Similar" or
//! "Related", instead of a raw cosine score that means nothing to a shopper (and means
//! different things in different search spaces: a tuned catalog's scores run higher).
//!
//! The bands are read from the catalog itself: how alike its own products are to their
//! neighbours. A result as alike to the query as a typical (median) product is to its tenth
//! closest look-alike in the shop is "Very similar"; as alike as nine products in ten are to
//! their fiftieth closest, "Similar"; anything less alike, "Related". Each band also needs a
//! minimum likeness: "Very similar" at least halfway from what two of the shop's products
//! picked at random score to an identical photo, "Similar" a quarter of the way. A shop whose
//! products are all unlike each other (a demo folder of unrelated photos) has neighbours no
//! closer than random pairs, and its relative bands alone called every result "Very
//! similar". (Measured on 10,000
//! Fashion-MNIST products: a garment photographed cleanly gets "Very similar" products of its
//! kind, the same garment on a cluttered background "Similar" ones, a photo of a cat only
//! "Related" ones.)

use serde::Serialize;

use crate::types::{Key, SamePhotos};

/// A result's band. Serialised `very_similar`, `similar`, `related`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Likeness {
    VerySimilar,
    Similar,
    Related,
}

impl Likeness {
    /// As a shopper reads it.
    pub fn label(self) -> &'static str {
        match self {
            Likeness::VerySimilar => "Very similar",
            Likeness::Similar => "Similar",
            Likeness::Related => "Related",
        }
    }
}

/// Products sampled from the catalog to set the bands: enough for stable medians, few enough
/// that the exact scan over 60,000 products does them in well under a second.
pub const SAMPLE: usize = 100;

/// Which neighbour sets the "Very similar" band: the tenth, a first page's worth.
pub const VERY_SIMILAR_NEIGHBOUR: usize = 10;
/// Which neighbour sets the "Similar" band: the fiftieth, a few pages deep.
pub const SIMILAR_NEIGHBOUR: usize = 50;
/// ... for this share of sampled products (its low decile).
const SIMILAR_QUANTILE: f32 = 0.1;
/// The least a "Very similar" result has: this share of the way from a typical pair of the
/// catalog's products to an identical photo.
const VERY_SIMILAR_MINIMUM: f32 = 0.5;
/// ... and a "Similar" one.
const SIMILAR_MINIMUM: f32 = 0.25;

/// Score thresholds of the bands, in the search space's own scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LikenessBands {
    /// Scores at or above this are "Very similar".
    pub very_similar: f32,
    /// Scores at or above this (and below `very_similar`) are "Similar".
    pub similar: f32,
}

impl LikenessBands {
    /// Bands from sampled products' neighbour scores: for each sampled product, its scores
    /// against the other products, best first (the product itself left out; up to
    /// [`SIMILAR_NEIGHBOUR`] of them, fewer in a small catalog, whose furthest then counts).
    /// `None` for no sampled product (an empty catalog).
    ///
    /// `typical_pair` is the median score of two products picked at random (the floor the
    /// minimum likeness of each band is measured from; -1 for none).
    pub fn from_neighbours(neighbour_scores: &[Vec<f32>], typical_pair: f32) -> Option<LikenessBands> {
        if neighbour_scores.is_empty() {
            return None;
        }
        if neighbour_scores.iter().all(Vec::is_empty) {
            // A catalog of one product has nothing to measure against: the bands are their
            // minimums alone, from what an unrelated photo scores in a centred space (0). Without
            // bands its own photo at score 1 was only "Related".
            return Some(LikenessBands { very_similar: VERY_SIMILAR_MINIMUM, similar: SIMILAR_MINIMUM });
        }
        let nth = |n: usize| -> Vec<f32> { neighbour_scores.iter().filter_map(|s| s.get(n - 1).or(s.last()).copied()).collect() };
        let at_least = |share: f32| typical_pair + share * (1.0 - typical_pair);
        let very_similar = quantile(nth(VERY_SIMILAR_NEIGHBOUR), 0.5)?.max(at_least(VERY_SIMILAR_MINIMUM));
        let similar = quantile(nth(SIMILAR_NEIGHBOUR), SIMILAR_QUANTILE)?.max(at_least(SIMILAR_MINIMUM)).min(very_similar);
        Some(LikenessBands { very_similar, similar })
    }

    pub fn band(&self, score: f32) -> Likeness {
        if score >= self.very_similar {
            Likeness::VerySimilar
        } else if score >= self.similar {
            Likeness::Similar
        } else {
            Likeness::Related
        }
    }
}

/// Measures the bands on `sample` (products' keys and vectors, in the search space): each
/// against `nearest` (the index's best `n` for a vector, as key and score, best first), itself
/// left out.
/// The sample is a random one, so its pairs' scores (the vectors are unit length: a score is
/// their dot product) say what two products picked at random score. Products listed with the
/// very same photo (`same_photos`: size variants, scoring 1 with each other) are one product,
/// as search shows them: a photo is sampled once, and its neighbours are other photos.
pub fn measure(
    sample: &[(Key, Vec<f32>)],
    same_photos: &SamePhotos,
    mut nearest: impl FnMut(&[f32], usize) -> anyhow::Result<Vec<(Key, f32)>>,
) -> anyhow::Result<Option<LikenessBands>> {
    let later = same_photos.later_listings();
    let sample: Vec<&(Key, Vec<f32>)> = sample.iter().filter(|(key, _)| !later.contains(key)).collect();
    // Deep enough that SIMILAR_NEIGHBOUR other photos remain once listings are folded.
    let depth = (SIMILAR_NEIGHBOUR + 1) * same_photos.most_listings_of_a_photo();
    let mut neighbour_scores = Vec::with_capacity(sample.len());
    for (key, vector) in &sample {
        let others = nearest(vector, depth)?.into_iter().filter(|&(k, _)| !same_photos.is_product(k, *key));
        neighbour_scores.push(same_photos.one_per_photo(others, |&(k, _)| k, SIMILAR_NEIGHBOUR + 1).into_iter().map(|(_, score)| score).collect::<Vec<f32>>());
    }
    let pairs: Vec<f32> = sample.iter().enumerate().flat_map(|(i, (_, a))| sample[i + 1..].iter().map(move |(_, b)| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>())).collect();
    let typical_pair = quantile(pairs, 0.5).unwrap_or(-1.0);
    Ok(LikenessBands::from_neighbours(&neighbour_scores, typical_pair))
}

/// Bands as the catalog keeps them (setting [`SETTING`]), with what they were measured on: the
/// search space's fingerprint and the number of products.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedBands {
    pub space: String,
    pub products: usize,
    pub bands: LikenessBands,
}

/// Whether bands measured on `measured` products still describe `now`: no more than a fifth
/// more or fewer (the one rule for recorded bands and a server's own).
pub fn still_fits(measured: usize, now: usize) -> bool {
    measured.abs_diff(now) * 5 <= measured.max(1)
}

/// The catalog setting that keeps the bands, written by `index` and `tune`.
pub const SETTING: &str = "likeness_bands";

impl RecordedBands {
    /// Whether these bands still describe a catalog of `products` in the space `space`: the
    /// same space, and no more than a fifth more or fewer products.
    pub fn fits(&self, space: &str, products: usize) -> bool {
        self.space == space && still_fits(self.products, products)
    }

    pub fn to_setting(&self) -> String {
        format!("{} {} {} {}", self.space, self.products, self.bands.very_similar, self.bands.similar)
    }

    /// `None` for anything that is not what [`RecordedBands::to_setting`] writes.
    pub fn from_setting(text: &str) -> Option<RecordedBands> {
        let mut parts = text.split_whitespace();
        let space = parts.next()?.to_string();
        let products = parts.next()?.parse().ok()?;
        let very_similar: f32 = parts.next()?.parse().ok()?;
        let similar: f32 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !very_similar.is_finite() || !similar.is_finite() {
            return None;
        }
        Some(RecordedBands { space, products, bands: LikenessBands { very_similar, similar } })
    }
}

/// The value `q` (0..1) of the way up the sorted finite `values`.
fn quantile(mut values: Vec<f32>, q: f32) -> Option<f32> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_unstable_by(f32::total_cmp);
    let at = ((values.len() - 1) as f32 * q).round() as usize;
    Some(values[at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_come_from_the_tenth_and_fiftieth_neighbours() {
        // Eleven sampled products, fifty neighbours each (best first), each product's scores a
        // little lower than the one before.
        let scores: Vec<Vec<f32>> = (0..11).map(|p| (0..50).map(|i| 0.9 - 0.01 * p as f32 - 0.005 * i as f32).collect()).collect();
        let bands = LikenessBands::from_neighbours(&scores, -1.0).expect("bands");
        // Tenth neighbour (i = 9) of the median product (p = 5); fiftieth (i = 49) of the low
        // decile (p = 9 of 0..=10, rounded from 9.0).
        assert!((bands.very_similar - (0.9 - 0.05 - 0.045)).abs() < 1e-5, "{bands:?}");
        assert!((bands.similar - (0.9 - 0.09 - 0.245)).abs() < 1e-5, "{bands:?}");
        assert_eq!(bands.band(0.9), Likeness::VerySimilar);
        assert_eq!(bands.band(bands.very_similar), Likeness::VerySimilar);
        assert_eq!(bands.band(0.7), Likeness::Similar);
        assert_eq!(bands.band(0.3), Likeness::Related);
    }

    #[test]
    fn recorded_bands_round_trip_and_go_stale() {
        let recorded = RecordedBands { space: "ab12".into(), products: 1000, bands: LikenessBands { very_similar: 0.61, similar: 0.375 } };
        assert_eq!(RecordedBands::from_setting(&recorded.to_setting()), Some(recorded.clone()));
        assert!(recorded.fits("ab12", 1200) && recorded.fits("ab12", 800));
        assert!(!recorded.fits("ab12", 1201) && !recorded.fits("cd34", 1000));
        for bad in ["", "ab12 1000 0.6", "ab12 x 0.6 0.3", "ab12 1000 NaN 0.3", "ab12 1000 0.6 0.3 extra"] {
            assert_eq!(RecordedBands::from_setting(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn measuring_leaves_each_product_out_of_its_own_neighbours() {
        // Four products on a line (unit vectors, unrelated as pairs); each one's neighbours
        // are the others, nearest first.
        let one_hot = |k: usize| (0..4).map(|i| f32::from(u8::from(i == k))).collect::<Vec<f32>>();
        let sample: Vec<(Key, Vec<f32>)> = (0..4).map(|k| (k as Key, one_hot(k))).collect();
        let bands = measure(&sample, &SamePhotos::default(), |v, n| {
            let at = v.iter().position(|&x| x == 1.0).expect("one-hot") as f32;
            let mut hits: Vec<(Key, f32)> = (0..4).map(|k| (k, 1.0 - (at - k as f32).abs() / 10.0)).collect();
            hits.sort_by(|a, b| b.1.total_cmp(&a.1));
            hits.truncate(n);
            Ok(hits)
        })
        .expect("measured")
        .expect("bands");
        // Nearest other product: 0.9 for all; furthest (the "fiftieth" here): 0.7 or 0.8.
        assert!(bands.very_similar < 1.0, "the product itself is left out: {bands:?}");
        assert!((bands.similar - 0.7).abs() < 1e-6, "{bands:?}");
    }

    /// Size variants score 1 with each other: listed as rows of their own, they would be each
    /// other's nearest neighbours and push "Very similar" up to identical photos. Folded, the
    /// bands are those of the same photos listed once.
    #[test]
    fn a_photo_listed_in_several_sizes_is_measured_once_against_other_photos() {
        // Photos 0..20 on a line; photo p listed as products 3p, 3p+1, 3p+2 (or once, as p).
        let photo_at = |p: usize| (0..20).map(|i| f32::from(u8::from(i == p))).collect::<Vec<f32>>();
        let neighbours = |listings: usize| {
            move |v: &[f32], n: usize| -> anyhow::Result<Vec<(Key, f32)>> {
                let at = v.iter().position(|&x| x == 1.0).expect("one-hot") as f32;
                let mut hits: Vec<(Key, f32)> = (0..20 * listings).map(|k| (k as Key, 1.0 - (at - (k / listings) as f32).abs() / 40.0)).collect();
                hits.sort_by(|a, b| b.1.total_cmp(&a.1));
                hits.truncate(n);
                Ok(hits)
            }
        };
        let once: Vec<(Key, Vec<f32>)> = (0..20).map(|p| (p as Key, photo_at(p))).collect();
        let expected = measure(&once, &SamePhotos::default(), neighbours(1)).expect("measured");
        let sizes: Vec<(Key, Vec<f32>)> = (0..60).map(|k| (k as Key, photo_at(k / 3))).collect();
        let shared = SamePhotos::from_shared((0..60).map(|k| (k as Key, format!("photo-{}", k / 3))).collect());
        assert_eq!(measure(&sizes, &shared, neighbours(3)).expect("measured"), expected);
        let unfolded = measure(&sizes, &SamePhotos::default(), neighbours(3)).expect("measured").expect("bands");
        assert!(unfolded.very_similar > expected.expect("bands").very_similar, "twins counted as neighbours raise the bands: {unfolded:?}");
    }

    /// A catalog of unrelated photos: every product's neighbours score no more than a random
    /// pair does, so the bands fall back to their minimums instead of calling everything "Very
    /// similar".
    #[test]
    fn unrelated_products_are_not_very_similar_to_each_other() {
        let sample: Vec<(Key, Vec<f32>)> = (0..28).map(|k| (k as Key, (0..28).map(|i| f32::from(u8::from(i == k))).collect())).collect();
        let bands = measure(&sample, &SamePhotos::default(), |v, n| {
            let at = v.iter().position(|&x| x == 1.0).expect("one-hot") as Key;
            let mut hits: Vec<(Key, f32)> = (0..28).map(|k| (k, if k == at { 1.0 } else { 0.05 - 0.001 * k as f32 })).collect();
            hits.sort_by(|a, b| b.1.total_cmp(&a.1));
            hits.truncate(n);
            Ok(hits)
        })
        .expect("measured")
        .expect("bands");
        assert_eq!((bands.very_similar, bands.similar), (0.5, 0.25), "halfway and a quarter of the way from a random pair (0) to identical");
        assert_eq!(bands.band(1.0), Likeness::VerySimilar, "the photo itself");
        assert_eq!(bands.band(0.044), Likeness::Related);
    }

    #[test]
    fn small_catalogs_use_the_furthest_neighbour_they_have_and_one_product_the_minimums() {
        let bands = LikenessBands::from_neighbours(&[vec![0.9, 0.5], vec![0.7, 0.3]], -1.0).expect("bands");
        // Medians round up between two; the low decile of two is the lower.
        assert_eq!((bands.very_similar, bands.similar), (0.5, 0.3));
        let one = LikenessBands::from_neighbours(&[vec![]], -1.0).expect("bands of one product");
        assert_eq!((one.very_similar, one.similar), (VERY_SIMILAR_MINIMUM, SIMILAR_MINIMUM));
        assert_eq!((one.band(1.0), one.band(0.3), one.band(0.1)), (Likeness::VerySimilar, Likeness::Similar, Likeness::Related));
        assert_eq!(LikenessBands::from_neighbours(&[], -1.0), None, "an empty catalog");
    }
}
