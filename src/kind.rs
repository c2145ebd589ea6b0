//! Kind consensus: the results of a photo search put the kind of product the photo shows first.
//!
//! A shopper's photo of a dress should bring back dresses before the shirt, bag or coat that
//! happen to look alike in the embedding. The catalog's nearest neighbours already say what the
//! photo shows: most of the best matches share one category. Each candidate's score is raised
//! by its category's share of the best matches' votes (votes weighted by how close each match
//! is to the best), so candidates of the category the neighbours agree on move up, and a
//! photo whose neighbours disagree is left almost as it was. No labels are learned and nothing
//! is stored: the category is the product's own metadata (`articleType`, else `subCategory`,
//! ..., as [`Product::category_of`] reads it), so it works on untuned catalogs too.
//!
//! Measured in docs/localisation-study.md ("Kind consensus", session 19): on 60,000
//! Fashion-MNIST products the voters, temperature and weight below lift P@10 by 0.02-0.05 on
//! clean and shopper-like photos, untuned and tuned (tuned clean 0.888 → 0.911, untuned clean
//! 0.847 → 0.893), and leave a re-photographed product's own rank almost where it was
//! (recall@1 0.532 → 0.531, recall@10 0.804 → 0.796).

use std::collections::HashMap;

use anyhow::Result;

use crate::catalog::SqliteCatalog;
use crate::index::Hit;
use crate::types::{Key, Metadata, Product};

/// The best matches that vote on the photo's kind.
pub const VOTERS: usize = 10;
/// Shape candidates the consensus re-ranks (deeper candidates of the agreed kind can move up).
pub const CANDIDATES: usize = 100;
/// Cosine distance from the best match at which a vote counts 1/e as much: a match far below
/// the best says little about what the photo shows.
pub const TEMPERATURE: f32 = 0.05;
/// Score added to a candidate whose kind has every vote (a share of them adds that share).
pub const WEIGHT: f32 = 0.2;

/// Whether search puts the photo's kind first (`match`, the default) or ranks by likeness alone
/// (`any`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KindMode {
    #[default]
    Match,
    Any,
}

impl std::str::FromStr for KindMode {
    type Err = String;
    fn from_str(text: &str) -> Result<KindMode, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "match" => Ok(KindMode::Match),
            "any" => Ok(KindMode::Any),
            other => Err(format!("kind must be `match` (the photo's kind first) or `any` (likeness alone), not {other:?}")),
        }
    }
}

impl std::fmt::Display for KindMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KindMode::Match => "match",
            KindMode::Any => "any",
        })
    }
}

/// Each product's category, as a small number (kinds are few; products many).
#[derive(Debug, Default, Clone)]
pub struct KindTable {
    by_key: HashMap<Key, u32>,
    ids: HashMap<String, u32>,
}

impl KindTable {
    /// The categories of every product in `catalog`.
    pub fn load(catalog: &SqliteCatalog) -> Result<KindTable> {
        let mut table = KindTable::default();
        for product in catalog.all_products()? {
            table.put(product.key, &product.metadata);
        }
        Ok(table)
    }

    /// Records (or replaces) the category of `key`; a product without one is forgotten.
    pub fn put(&mut self, key: Key, metadata: &Metadata) {
        match Product::category_of(metadata) {
            Some(kind) => {
                let next = self.ids.len() as u32;
                let id = *self.ids.entry(kind.to_string()).or_insert(next);
                self.by_key.insert(key, id);
            }
            None => {
                self.by_key.remove(&key);
            }
        }
    }

    pub fn remove(&mut self, key: Key) {
        self.by_key.remove(&key);
    }

    /// Whether there is anything to agree on: products of at least two kinds.
    pub fn has_kinds(&self) -> bool {
        self.ids.len() >= 2 && !self.by_key.is_empty()
    }

    /// `hits` (any order) ordered by score plus [`WEIGHT`] times their kind's share of the
    /// votes of the [`VOTERS`] best, best first. Scores are only ever lowered: a hit of the
    /// kind with the most votes keeps its likeness, others lose the difference in lift, so the
    /// scores still fall down the list and a shopper is never told a product is more alike
    /// than it is.
    pub fn rerank(&self, hits: Vec<Hit>) -> Vec<Hit> {
        self.rerank_with(hits, WEIGHT)
    }

    /// [`KindTable::rerank`] with another weight than [`WEIGHT`] (`eval --kind-weight`, to
    /// choose it).
    pub fn rerank_with(&self, hits: Vec<Hit>, weight: f32) -> Vec<Hit> {
        let votes = self.votes(&hits);
        self.rerank_by(hits, votes.as_ref(), weight)
    }

    /// `hits` (any order) ordered as [`KindTable::rerank_with`] orders them, but with the
    /// votes of `voters`: another ranking of the same photo. A colour-matched search votes
    /// with its shape ranking ([`keep_voters`]), where the kind shows best.
    pub fn rerank_by_voters(&self, hits: Vec<Hit>, voters: &[Hit], weight: f32) -> Vec<Hit> {
        let votes = self.votes(voters);
        self.rerank_by(hits, votes.as_ref(), weight)
    }

    /// What the [`VOTERS`] best of `hits` (any order) say the photo shows: each kind's share
    /// of their votes, a vote weighted by how close its match is to the best. `None` when
    /// there is nothing to agree on.
    fn votes(&self, hits: &[Hit]) -> Option<KindVotes> {
        if !self.has_kinds() || hits.len() < 2 {
            return None;
        }
        let mut voters: Vec<&Hit> = hits.iter().collect();
        voters.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.key.cmp(&b.key)));
        let best = voters[0].score;
        let mut votes: HashMap<u32, f32> = HashMap::new();
        let mut total = 0.0f32;
        for hit in voters.into_iter().take(VOTERS) {
            let weight = ((hit.score - best) / TEMPERATURE).exp();
            total += weight;
            if let Some(kind) = self.by_key.get(&hit.key) {
                *votes.entry(*kind).or_default() += weight;
            }
        }
        if total <= 0.0 || !total.is_finite() {
            return None;
        }
        votes.values_mut().for_each(|v| *v /= total);
        Some(KindVotes { shares: votes })
    }

    /// `hits` (any order) ordered by score plus `weight` times their kind's share of `votes`.
    fn rerank_by(&self, mut hits: Vec<Hit>, votes: Option<&KindVotes>, weight: f32) -> Vec<Hit> {
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.key.cmp(&b.key)));
        let Some(votes) = votes.filter(|_| hits.len() >= 2) else { return hits };
        // A product without a category is neither promoted nor held back: shares are taken
        // relative to the candidates' mean share, and such a product keeps its score.
        let share = |key: &Key| self.by_key.get(key).map(|k| votes.shares.get(k).copied().unwrap_or(0.0));
        let known: Vec<f32> = hits.iter().filter_map(|h| share(&h.key)).collect();
        let mean = known.iter().sum::<f32>() / known.len().max(1) as f32;
        let top = known.iter().copied().fold(mean, f32::max);
        let mut ranked: Vec<Hit> = hits
            .into_iter()
            .map(|hit| {
                let lift = share(&hit.key).map_or(0.0, |s| weight * (s - mean));
                Hit { key: hit.key, score: hit.score + lift - weight * (top - mean) }
            })
            .collect();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.key.cmp(&b.key)));
        // Clamped after sorting, so the order is the re-rank's (scores from the colour blend
        // may exceed 1) and a score reads like a cosine.
        ranked.iter_mut().for_each(|h| h.score = h.score.clamp(-1.0, 1.0));
        ranked
    }
}

/// Each kind's share of the best matches' votes ([`KindTable::votes`]).
#[derive(Debug, Clone, Default)]
struct KindVotes {
    shares: HashMap<u32, f32>,
}

/// Keeps the [`VOTERS`] best of a query's first shape ranking in `voters` (later, wider
/// rankings of the same query add nothing): the hits that vote on its kind
/// ([`KindTable::rerank_by_voters`]) before colour blends in.
pub fn keep_voters(voters: &mut Vec<Hit>, shape_ranking: &[Hit]) {
    if voters.is_empty() {
        voters.extend(shape_ranking.iter().take(VOTERS).copied());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(kinds: &[(Key, &str)]) -> KindTable {
        let mut t = KindTable::default();
        for (key, kind) in kinds {
            t.put(*key, &Metadata::from([("articleType".to_string(), kind.to_string())]));
        }
        t
    }

    fn hit(key: Key, score: f32) -> Hit {
        Hit { key, score }
    }

    #[test]
    fn the_kind_most_best_matches_share_moves_up() {
        // A shirt edges out the dresses by a hair; four of the five best are dresses.
        let t = table(&[(1, "Shirt"), (2, "Dress"), (3, "Dress"), (4, "Dress"), (5, "Dress"), (6, "Bag")]);
        let hits = vec![hit(1, 0.80), hit(2, 0.79), hit(3, 0.79), hit(6, 0.785), hit(4, 0.78), hit(5, 0.70)];
        let ranked: Vec<Key> = t.rerank(hits).iter().map(|h| h.key).collect();
        assert_eq!(&ranked[..5], &[2, 3, 4, 1, 6], "dresses first, then the shirt, then the bag");
    }

    #[test]
    fn votes_from_the_shape_ranking_order_a_colour_blended_one() {
        // By shape the photo is a dress (keys 2-4); blended with its colour, a shirt of that
        // colour (1) and a bag (6) lead. The shape ranking's votes put the dresses back first;
        // the blended ranking's own votes would have kept the shirt on top.
        let t = table(&[(1, "Shirt"), (2, "Dress"), (3, "Dress"), (4, "Dress"), (6, "Bag")]);
        let by_shape = vec![hit(2, 0.82), hit(3, 0.81), hit(4, 0.80), hit(1, 0.74), hit(6, 0.70)];
        let blended = vec![hit(1, 0.84), hit(6, 0.81), hit(2, 0.78), hit(3, 0.77), hit(4, 0.76)];
        let votes = t.votes(&by_shape);
        let ranked: Vec<Key> = t.rerank_by(blended.clone(), votes.as_ref(), WEIGHT).iter().map(|h| h.key).collect();
        assert_eq!(&ranked[..3], &[2, 3, 4], "{ranked:?}");
        assert_eq!(t.rerank(blended)[0].key, 1, "voting on the blend itself keeps the shirt first");
        assert!(KindTable::default().votes(&by_shape).is_none(), "no kinds, no votes");
    }

    /// A colour blend may score a same-colour copy of the photo's product above 1 and lift
    /// another product to 1: the re-rank orders them by those scores, then reports cosines.
    #[test]
    fn scores_above_one_keep_their_order_and_are_reported_clamped() {
        let t = table(&[(2, "Coat"), (3, "Coat"), (4, "Dress")]);
        let by_shape = vec![hit(2, 0.45), hit(3, 0.44), hit(9, 0.97), hit(4, 0.40)];
        // Key 9, the copy, has no category (neither promoted nor held back); clamped before
        // sorting, it would tie with the coat at 1 and lose on its larger key.
        let blended = vec![hit(9, 1.30), hit(2, 1.02), hit(3, 0.90), hit(4, 0.85)];
        let ranked = t.rerank_by(blended, t.votes(&by_shape).as_ref(), WEIGHT);
        assert_eq!(ranked[0].key, 9, "{ranked:?}");
        assert!(ranked.iter().all(|h| (-1.0..=1.0).contains(&h.score)), "{ranked:?}");
        assert!(ranked.windows(2).all(|w| w[0].score >= w[1].score), "{ranked:?}");
    }

    #[test]
    fn a_clear_best_match_keeps_its_place() {
        // The photo's own product far above the rest: its vote dominates, so its kind wins.
        let t = table(&[(1, "Sandal"), (2, "Sneaker"), (3, "Sneaker"), (4, "Sneaker")]);
        let hits = vec![hit(1, 0.95), hit(2, 0.70), hit(3, 0.69), hit(4, 0.68)];
        assert_eq!(t.rerank(hits)[0].key, 1);
    }

    #[test]
    fn one_kind_or_none_changes_nothing() {
        let hits = vec![hit(1, 0.5), hit(2, 0.4)];
        let same = table(&[(1, "Dress"), (2, "Dress")]);
        assert_eq!(same.rerank(hits.clone()).iter().map(|h| (h.key, h.score)).collect::<Vec<_>>(), vec![(1, 0.5), (2, 0.4)]);
        let two = table(&[(1, "Dress"), (2, "Shirt")]);
        let ranked = two.rerank(vec![hit(2, 0.4), hit(1, 0.5)]);
        assert_eq!((ranked[0].key, ranked[0].score), (1, 0.5), "the agreed kind keeps its likeness");
        assert!(ranked[1].score < 0.4, "another kind's is lowered, never raised: {}", ranked[1].score);
        assert_eq!(KindTable::default().rerank(hits.clone()).len(), 2);
    }

    #[test]
    fn a_product_without_a_category_is_neither_lifted_nor_held_back() {
        // Key 9 (no category) between two dresses and two shirts: it stays where its score puts it
        // relative to the average candidate, ahead of the disfavoured shirts, behind the dresses.
        let t = table(&[(1, "Dress"), (2, "Dress"), (3, "Shirt"), (4, "Shirt")]);
        let ranked: Vec<Key> = t.rerank(vec![hit(1, 0.80), hit(2, 0.80), hit(9, 0.79), hit(3, 0.785), hit(4, 0.78)]).iter().map(|h| h.key).collect();
        assert_eq!(ranked, vec![1, 2, 9, 3, 4]);
        let first: Vec<Key> = t.rerank(vec![hit(9, 0.90), hit(3, 0.80), hit(1, 0.79), hit(2, 0.79)]).iter().map(|h| h.key).collect();
        assert_eq!(first[0], 9, "a clear best match without a category stays first");
    }

    #[test]
    fn removed_products_no_longer_vote() {
        let mut t = table(&[(1, "Shirt"), (2, "Dress"), (3, "Dress")]);
        let hits = vec![hit(1, 0.80), hit(2, 0.79), hit(3, 0.79)];
        assert_eq!(t.rerank(hits.clone())[0].key, 2, "two close dresses outvote the shirt");
        t.remove(2);
        t.remove(3);
        assert_eq!(t.rerank(hits)[0].key, 1, "with their kinds gone, the shirt keeps its place");
    }

    #[test]
    fn modes_parse_and_bad_ones_say_what_is_accepted() {
        assert_eq!("Match".parse::<KindMode>(), Ok(KindMode::Match));
        assert_eq!(" any ".parse::<KindMode>(), Ok(KindMode::Any));
        let err = "dress".parse::<KindMode>().unwrap_err();
        assert!(err.contains("match") && err.contains("any"), "{err}");
    }
}
