//! Colour as a search control: how a search treats colour ([`ColourMode`]), every product's
//! colour in memory beside the vector index ([`ColourTable`]), and the blend of shape and colour
//! that `match` ranks by.

use std::collections::{HashMap, HashSet};

use anyhow::Result;

use super::{parse_name, ColourDescriptor};
use crate::catalog::SqliteCatalog;
use crate::index::Hit;
use crate::types::{Key, COLOUR_COLUMNS, COMPUTED_COLOUR_COLUMN};

/// How a search treats colour.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ColourMode {
    /// Rank by shape blended with colour similarity to the query ("this style in this
    /// colour"). The default.
    #[default]
    Match,
    /// Shape only ("this style in any colour").
    Any,
    /// Only products of this named colour, ranked by shape ("this style in red").
    Named(String),
}

impl std::str::FromStr for ColourMode {
    type Err = String;
    fn from_str(text: &str) -> Result<ColourMode, String> {
        match text.trim().to_lowercase().as_str() {
            "match" | "" => Ok(ColourMode::Match),
            "any" => Ok(ColourMode::Any),
            _ => parse_name(text).map(|name| ColourMode::Named(name.to_string())),
        }
    }
}

impl std::fmt::Display for ColourMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ColourMode::Match => f.write_str("match"),
            ColourMode::Any => f.write_str("any"),
            ColourMode::Named(name) => f.write_str(name),
        }
    }
}

/// Weight of colour against shape under [`ColourMode::Match`], relative to how much each
/// varies among the candidates ([`ColourTable::rerank`]): at 1.0 a candidate's colour moves it
/// as far as its shape does.
///
/// Why relative: a fixed weight means something else in every search space. Cosine scores in a
/// tuned space spread several times wider than in the model's own, so a fixed 0.1 (measured
/// best untuned) hardly moved tuned results (colour P@10 0.90 against 0.95 untuned). Measured
/// on the colourised Fashion-MNIST benchmark (docs/colour-study.md), P@10 by kind and colour,
/// fixed 0.1 -> relative 1.0: untuned 0.707 -> 0.709 clean (10,000 queries), 0.395 -> 0.409
/// perturbed (3,000); tuned 0.741 -> 0.774 clean, 0.569 -> 0.608 perturbed; P@10 by kind alone
/// stays within 0.02 of shape only in all four (relative 1.5 did not then, untuned: -0.026).
///
/// 1.5 since the kind consensus keeps the right kind on the first page while colour reorders
/// it (docs/colour-study.md, "The weight again").
pub const MATCH_WEIGHT: f32 = 1.5;

/// Shape candidates re-ranked by colour under [`ColourMode::Match`] when the first
/// [`MATCH_FIRST_CANDIDATES`] are not enough (more when a page reaches deeper). Fetching 300
/// from the graph costs about 1.5 ms more per search than 10 (`bench e2e --colour match`
/// against `--colour any`, 60,000 products); 100 alone cost 0.2-0.35 ms but lost perturbed
/// untuned P@10 (0.409 -> 0.386): the right products sat deeper (docs/colour-study.md).
pub const MATCH_CANDIDATES: usize = 300;

/// Shape candidates `match` fetches first: when the blend's first page comes from the top half
/// of them, colour found what it needed near the top of the shape ranking and the wider pool is
/// not fetched. Fewer candidates spread their shape scores less, so their blend weighs colour
/// [`NARROW_POOL_WEIGHT`] times more to rank alike.
pub const MATCH_FIRST_CANDIDATES: usize = 100;
/// See [`MATCH_FIRST_CANDIDATES`]: 100 candidates at relative weight 1.25 ranked as 300 at 1.0
/// on 1,000 clean painted queries (docs/colour-study.md).
pub const NARROW_POOL_WEIGHT: f32 = 1.25;
/// The pool is widened when the blend's first page holds a candidate from below the first
/// 1/`DEEP_FRACTION` of the shape ranking.
const DEEP_FRACTION: usize = 2;

/// Below this share of products with colour (neither black, white nor grey), a catalog is
/// grey (Fashion-MNIST): colour controls leave its ranking exactly as shape ranks it.
const MIN_CHROMATIC_SHARE: f64 = 0.02;

/// Every product's colour, in memory beside the vector index: its descriptor and its named
/// colour (the shop's own column if the product has one, else the computed name).
#[derive(Debug, Default)]
pub struct ColourTable {
    by_key: HashMap<Key, (ColourDescriptor, String)>,
    chromatic: usize,
    /// The metadata column most products name their colour in (for stores that filter
    /// metadata themselves, Qdrant); `None` before any product names one.
    column: Option<&'static str>,
}

impl ColourTable {
    /// Every product's colour stored in `catalog`.
    pub fn load(catalog: &SqliteCatalog) -> Result<ColourTable> {
        let mut table = ColourTable::default();
        let stored = catalog.colours()?;
        if stored.is_empty() {
            return Ok(table);
        }
        let products = catalog.all_products()?;
        let named: HashMap<Key, String> = products.iter().filter_map(|p| p.colour().map(|c| (p.key, c.to_string()))).collect();
        let counts = COLOUR_COLUMNS.map(|c| products.iter().filter(|p| p.metadata.contains_key(c)).count());
        table.column = COLOUR_COLUMNS.into_iter().zip(counts).filter(|(_, n)| *n > 0).max_by_key(|(_, n)| *n).map(|(c, _)| c);
        for (key, values) in stored {
            table.put(key, Some(ColourDescriptor::from_values(&values)?), named.get(&key).map(String::as_str));
        }
        Ok(table)
    }

    /// Adds or replaces a product's colour; `descriptor` `None` forgets it.
    pub fn put(&mut self, key: Key, descriptor: Option<ColourDescriptor>, named: Option<&str>) {
        self.remove(key);
        let Some(descriptor) = descriptor else { return };
        if descriptor.is_chromatic() {
            self.chromatic += 1;
        }
        let name = named.filter(|n| !n.trim().is_empty()).unwrap_or(descriptor.name()).to_string();
        self.by_key.insert(key, (descriptor, name));
    }

    pub fn remove(&mut self, key: Key) {
        if let Some((old, _)) = self.by_key.remove(&key) {
            if old.is_chromatic() {
                self.chromatic -= 1;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Whether the catalog has colour at all; a grey one ignores colour controls.
    pub fn has_colour(&self) -> bool {
        !self.by_key.is_empty() && self.chromatic as f64 >= MIN_CHROMATIC_SHARE * self.by_key.len() as f64
    }

    pub fn descriptor(&self, key: Key) -> Option<&ColourDescriptor> {
        self.by_key.get(&key).map(|(d, _)| d)
    }

    /// The metadata column the catalog's products name their colour in (the most common).
    pub fn column(&self) -> &'static str {
        self.column.unwrap_or(COMPUTED_COLOUR_COLUMN)
    }

    /// The products whose named colour is `name` (any case).
    pub fn keys_named(&self, name: &str) -> HashSet<Key> {
        self.by_key.iter().filter(|(_, (_, n))| n.eq_ignore_ascii_case(name)).map(|(k, _)| *k).collect()
    }

    /// Re-ranks shape `hits` by shape blended with colour similarity to `query` (a hit with no
    /// colour stored counts as half similar: neither favoured nor buried), `weight` relative to
    /// the two signals' spreads over `hits` ([`MATCH_WEIGHT`]).
    ///
    /// The blended score stays on the shape score's scale: shape plus `weight` shape spreads
    /// per colour spread above or below the candidates' mean colour. (A convex blend,
    /// `(shape + λ colour) / (1 + λ)`, ranks the same but drifts towards colour similarity
    /// wherever λ is large: on a small catalog of unrelated photos an unrelated one scored 0.5,
    /// and the likeness bands, measured on shape scores, called it "very similar".)
    ///
    /// Scores are not clamped here: a product far ahead in shape *and* colour (a same-colour copy
    /// of the photo's product) goes above 1, and the kind consensus that re-ranks next must
    /// still see it ahead of a product that merely reaches 1. Search clamps what it reports.
    pub fn rerank(&self, hits: Vec<Hit>, query: &ColourDescriptor, weight: f32) -> Vec<Hit> {
        let colours: Vec<f32> = hits.iter().map(|h| self.descriptor(h.key).map_or(0.5, |d| d.similarity(query))).collect();
        // The blend is scale-free: `weight` times the ratio of the two signals' spreads (their
        // standard deviations over the candidates). When the candidates' colours do not differ
        // there is nothing to re-rank by; when their shapes do not differ, colour decides. The
        // best match by shape is left out of the spreads: on a small catalog the photo's own
        // product scores far above all the rest, and as one of a few dozen candidates it
        // would pass for a wide spread of shape scores and let colour lift unrelated photos
        // by half a cosine (one of 300 changes nothing).
        let best = hits.iter().enumerate().max_by(|a, b| a.1.score.total_cmp(&b.1.score)).map_or(0, |(i, _)| i);
        let counted = |i: usize| i != best || hits.len() <= 2;
        let shape_spread = standard_deviation(hits.iter().enumerate().filter(|(i, _)| counted(*i)).map(|(_, h)| h.score));
        let colour_spread = standard_deviation(colours.iter().enumerate().filter(|(i, _)| counted(*i)).map(|(_, c)| *c));
        let weight = if colour_spread > 1e-6 { weight * shape_spread.max(1e-6) / colour_spread } else { 0.0 };
        let mean_colour = colours.iter().sum::<f32>() / colours.len().max(1) as f32;
        let mut blended: Vec<Hit> = hits.into_iter().zip(colours).map(|(h, colour)| Hit { key: h.key, score: h.score + weight * (colour - mean_colour) }).collect();
        blended.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.key.cmp(&b.key)));
        blended
    }
}

/// The best `wanted` products under [`ColourMode::Match`], from shape candidates `by_shape(n)`
/// gives (the `n` best by shape, best first) re-ranked by `rerank(hits, weight)` (a
/// [`ColourTable::rerank`] for the query's colour): [`MATCH_FIRST_CANDIDATES`] first, then
/// [`MATCH_CANDIDATES`] when the blend's best `wanted` reach into the bottom half of the first
/// pool (the right colour lies deeper in the shape ranking than the first pool shows). Two
/// closures, so a caller can take its index's lock and its colour table's one at a time.
pub fn search_matching(
    weight: f32,
    wanted: usize,
    mut by_shape: impl FnMut(usize) -> Result<Vec<Hit>>,
    mut rerank: impl FnMut(Vec<Hit>, f32) -> Result<Vec<Hit>>,
) -> Result<Vec<Hit>> {
    let first = wanted.max(MATCH_FIRST_CANDIDATES);
    let hits = by_shape(first)?;
    let fetched = hits.len();
    let depth: HashMap<Key, usize> = hits.iter().enumerate().map(|(i, h)| (h.key, i)).collect();
    let blended = rerank(hits, weight * NARROW_POOL_WEIGHT)?;
    let deep = blended.iter().take(wanted).any(|h| depth.get(&h.key).is_some_and(|&d| d >= first / DEEP_FRACTION));
    let wider = wanted.max(MATCH_CANDIDATES);
    if !deep || fetched < first || wider <= first {
        return Ok(blended);
    }
    rerank(by_shape(wider)?, weight)
}

fn standard_deviation(values: impl Iterator<Item = f32>) -> f32 {
    let values: Vec<f32> = values.collect();
    let n = values.len().max(1) as f32;
    let mean = values.iter().sum::<f32>() / n;
    (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::colour::descriptor::tests::shot;
    use crate::colour::{describe_product, Pixels};

    /// A tuned space spreads cosine scores wider than the model's own; the blend must rank the
    /// same candidates the same way in both, and colour must still move them.
    #[test]
    fn match_ranks_alike_whatever_the_spread_of_shape_scores() {
        let paint = [[215, 30, 40], [40, 105, 215], [30, 150, 60], [230, 200, 40], [200, 35, 35], [120, 40, 160]];
        let mut table = ColourTable::default();
        for (key, rgb) in paint.iter().enumerate() {
            let descriptor = describe_product(Pixels::whole(&shot(*rgb, [255; 3], 48), 48, 48)).map(|e| e.descriptor);
            table.put(key as Key, descriptor, None);
        }
        let Some(red) = describe_product(Pixels::whole(&shot([215, 30, 40], [255; 3], 48), 48, 48)).map(|e| e.descriptor) else { panic!("no descriptor") };
        let shape = [0.62f32, 0.64, 0.61, 0.60, 0.58, 0.63];
        let order = |stretch: f32, offset: f32| -> Vec<Key> {
            let hits = shape.iter().enumerate().map(|(key, s)| Hit { key: key as Key, score: offset + stretch * s }).collect();
            table.rerank(hits, &red, MATCH_WEIGHT).into_iter().map(|h| h.key).collect()
        };
        let untuned = order(1.0, 0.0);
        assert_eq!(untuned, order(6.0, -3.2), "a wider spread of the same shape scores changes nothing");
        assert_eq!(untuned[0], 0, "the red leads, though blue's and purple's shapes are better: {untuned:?}");
    }

    /// A blended score reads like the shape score it started from: on a small catalog of two
    /// unrelated photos, the photo itself stays at 1 and the unrelated one is not lifted
    /// towards colour similarity; over many candidates the blend only moves scores about
    /// their mean.
    #[test]
    fn match_scores_stay_on_the_shape_scale() {
        let describe = |rgb| describe_product(Pixels::whole(&shot(rgb, [255; 3], 48), 48, 48)).map(|e| e.descriptor);
        let mut table = ColourTable::default();
        table.put(0, describe([215, 30, 40]), None);
        table.put(1, describe([40, 105, 215]), None);
        let Some(red) = describe([215, 30, 40]) else { panic!("no descriptor") };
        let hits = vec![Hit { key: 0, score: 1.0 }, Hit { key: 1, score: 0.044 }];
        let blended = table.rerank(hits, &red, MATCH_WEIGHT);
        assert_eq!(blended.iter().map(|h| h.key).collect::<Vec<_>>(), [0, 1]);
        assert!(blended[0].score > 0.99 && blended[1].score <= 0.044, "{blended:?}");

        let paint = [[215, 30, 40], [40, 105, 215], [30, 150, 60], [230, 200, 40], [200, 35, 35], [120, 40, 160]];
        let mut table = ColourTable::default();
        for (key, rgb) in paint.iter().enumerate() {
            table.put(key as Key, describe(*rgb), None);
        }
        let shape = [0.62f32, 0.64, 0.61, 0.60, 0.58, 0.63];
        let hits: Vec<Hit> = shape.iter().enumerate().map(|(key, s)| Hit { key: key as Key, score: *s }).collect();
        let blended = table.rerank(hits, &red, MATCH_WEIGHT);
        let mean = |scores: &mut dyn Iterator<Item = f32>| scores.sum::<f32>() / shape.len() as f32;
        let (before, after) = (mean(&mut shape.iter().copied()), mean(&mut blended.iter().map(|h| h.score)));
        assert!((before - after).abs() < 1e-5, "mean shape {before}, mean blend {after}");
        assert!(blended.iter().all(|h| (h.score - before).abs() < 0.1), "{blended:?}");
    }

    /// `match` fetches 100 candidates by shape, and 300 only when the blend's first page
    /// reaches into the bottom half of the 100 (there, deeper candidates of the right colour
    /// may be missing).
    #[test]
    fn match_widens_the_pool_only_when_colour_reaches_deep() {
        let describe = |rgb| describe_product(Pixels::whole(&shot(rgb, [255; 3], 48), 48, 48)).map(|e| e.descriptor);
        let Some(red) = describe([215, 30, 40]) else { panic!("no descriptor") };
        // 300 products by falling shape score; the red ones are at shape ranks `red_at`.
        let run = |red_at: &[usize]| -> (Vec<usize>, Vec<Key>) {
            let mut table = ColourTable::default();
            for key in 0..300 {
                table.put(key as Key, describe(if red_at.contains(&key) { [215, 30, 40] } else { [40, 105, 215] }), None);
            }
            let mut asked = Vec::new();
            let hits = search_matching(
                MATCH_WEIGHT,
                10,
                |n| {
                    asked.push(n);
                    Ok((0..n).map(|key| Hit { key: key as Key, score: 0.9 - 0.001 * key as f32 }).collect())
                },
                |hits, weight| Ok(table.rerank(hits, &red, weight)),
            )
            .expect("search");
            (asked, hits.iter().take(10).map(|h| h.key).collect())
        };
        let (asked, top) = run(&[3, 20, 40]);
        assert_eq!(asked, [MATCH_FIRST_CANDIDATES], "the reds are near the top of the shape ranking");
        assert_eq!(top[..3], [3, 20, 40], "and lead the blend");
        let (asked, top) = run(&[3, 70, 250]);
        assert_eq!(asked, [MATCH_FIRST_CANDIDATES, MATCH_CANDIDATES], "a red at shape rank 70 sends it deeper");
        assert!(top.contains(&250), "where the red at rank 250 is found: {top:?}");
    }
}
