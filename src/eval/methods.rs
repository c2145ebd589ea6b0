//! The rows `eval` reports (`--methods`), and how each ranks the catalog for a photo.

use std::time::Instant;

use anyhow::{Context, Result};

use super::K;
use crate::colour::{self, ColourMode, ColourTable};
use crate::encoder::Encoder;
use crate::index::{l2_normalize, ExactIndex, VectorIndex};
use crate::kind::{self, KindTable};
use crate::localise::{find_items, ForegroundHead};
use crate::preprocess;
use crate::space::SearchSpace;
use crate::straighten;
use crate::types::SamePhotos;

/// Every row `eval` can report: a way of ranking the catalog for a query photo.
pub const METHODS: [&str; 10] = [
    "lookalike",
    "lookalike_any_kind",
    "lookalike_as_taken",
    "lookalike_unadapted",
    "lookalike_any",
    "lookalike_item",
    "lookalike_item_crop",
    "lookalike_untuned",
    "original_recipe",
    "raw_pixels",
];

/// The rows an evaluation computes. Every row costs a search of the whole catalog per query,
/// some an encode: leaving out the comparisons makes a full-protocol run (10,000 queries) a
/// few times shorter when only `lookalike` is wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodSet(pub(super) Vec<&'static str>);

impl MethodSet {
    pub fn all() -> MethodSet {
        MethodSet(METHODS.to_vec())
    }

    pub fn has(&self, method: &str) -> bool {
        self.0.contains(&method)
    }
}

impl Default for MethodSet {
    fn default() -> MethodSet {
        MethodSet::all()
    }
}

impl std::str::FromStr for MethodSet {
    type Err = String;

    /// `all`, or method names separated by commas.
    fn from_str(text: &str) -> Result<MethodSet, String> {
        if text.trim() == "all" {
            return Ok(MethodSet::all());
        }
        let mut picked = Vec::new();
        for name in text.split(',').map(str::trim) {
            let known = METHODS.iter().find(|m| **m == name).ok_or_else(|| format!("unknown method {name:?}: choose from all, {}", METHODS.join(", ")))?;
            if !picked.contains(known) {
                picked.push(*known);
            }
        }
        Ok(MethodSet(picked))
    }
}

/// One method's top [`K`] for a photo and the milliseconds it took.
pub(super) type MethodRanking = (&'static str, Vec<crate::index::Hit>, f64);

/// Every method's index, and how each turns a photo into its query: what [`evaluate`] ranks
/// labelled queries and re-photographed products with.
pub(super) struct Methods<'a> {
    pub(super) encoder: &'a dyn Encoder,
    pub(super) space: &'a SearchSpace,
    pub(super) lookalike: &'a dyn VectorIndex,
    /// The "Very similar" score of the lookalike rows' space: a tilted photo whose view as
    /// taken scores this is not tried straightened, as in search.
    pub(super) very_similar: Option<f32>,
    /// The model's own space and its "Very similar" score, beside a tuned one.
    pub(super) untuned: Option<(&'a ExactIndex, &'a SearchSpace, Option<f32>)>,
    pub(super) original: &'a ExactIndex,
    pub(super) raw: &'a ExactIndex,
    /// Side of the raw-pixel baseline's images.
    pub(super) side: u32,
    pub(super) head: Option<&'a ForegroundHead>,
    pub(super) colours: &'a ColourTable,
    /// How the lookalike rows treat colour (`Any` on a grey catalog).
    pub(super) colour: ColourMode,
    pub(super) colour_weight: f32,
    /// The products' categories, when the lookalike rows put the agreed kind first.
    pub(super) kinds: Option<&'a KindTable>,
    pub(super) kind_weight: f32,
    /// The rows to rank.
    pub(super) wanted: &'a MethodSet,
    /// Products listed with the very same photo (size variants): one result, as search shows
    /// them, so each row's top [`K`] counts photos.
    pub(super) same_photos: &'a SamePhotos,
    /// How deep each row ranks before its same-photo listings are folded: [`K`] photos' worth.
    pub(super) depth: usize,
}

impl Methods<'_> {
    /// The top [`K`] photos of every method for one photo (a listing whose photo a better-ranked
    /// one has is left out, as search shows them), with the milliseconds each took (the CNN
    /// methods share one encoding; each is charged the full encode time), and the name of the
    /// colour read from the photo.
    pub(super) fn rank(&self, photo: &image::DynamicImage) -> Result<(Vec<MethodRanking>, Option<&'static str>)> {
        let spec = self.encoder.spec();
        let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
        let mut ranked = Vec::with_capacity(6);
        let t = Instant::now();
        let pixels = preprocess::input_pixels(photo, None, &spec.input);
        let query = self.encoder.encode_queries(&[pixels.tensor(&spec.input)])?.into_iter().next().context("encoder returned nothing")?;
        let embedding = &query.embedding;
        let found = query.grid.as_ref().map(|grid| (grid, find_items(grid, self.head)));
        // The photo's colour as search takes it: its main product's, else its centre's.
        let map = found.as_ref().and_then(|(_, f)| f.foreground_map());
        let foreground = map.as_ref().map(|at| at as colour::Foreground<'_>);
        let query_colour = colour::of_query(&pixels, found.as_ref().and_then(|(_, f)| f.main()).map(|m| m.bounds), foreground);
        let query_colour_name = query_colour.as_ref().map(|c| c.name);
        let query_colour = query_colour.map(|c| c.descriptor);
        // A tilted photo is also encoded straightened where its view as taken finds nothing
        // very similar, as search does (in search's second batch; here once, for whichever row
        // asks first), and each CNN row searches the view nearer its catalog.
        let tilted = straighten::Tilted::of(photo, &spec.input);
        let straightened: std::cell::OnceCell<Vec<f32>> = std::cell::OnceCell::new();
        let encode_ms = ms(t);
        // The model vector a row searches with: the photo's, or its straightened view's when
        // that one's best match in `index` scores higher.
        let view = |index: &dyn VectorIndex, space: &SearchSpace, very_similar: Option<f32>| -> Result<Vec<f32>> {
            let as_taken = space.map_photo(&embedding.vector)?;
            let Some(tilted) = &tilted else { return Ok(as_taken) };
            let best = |v: &[f32]| -> Result<f32> { Ok(index.search(v, 1, None)?.first().map_or(f32::NEG_INFINITY, |h| h.score)) };
            let as_taken_best = best(&as_taken)?;
            if !straighten::worth_straightening(as_taken_best, very_similar) {
                return Ok(as_taken);
            }
            let straight = match straightened.get() {
                Some(v) => v,
                None => {
                    let encoded = self.encoder.encode(&[tilted.straightened_input(&spec.input)])?.into_iter().next().context("encoder returned nothing")?.vector;
                    straightened.get_or_init(|| encoded)
                }
            };
            let straight = space.map_photo(straight)?;
            Ok(if straighten::pick_view(&[as_taken_best, best(&straight)?]) == 0 { as_taken } else { straight })
        };
        // A lookalike row's top K, colour and kind treated as search treats them.
        let search_kind = |index: &dyn VectorIndex, vector: &[f32], kinds: Option<&KindTable>| -> Result<Vec<crate::index::Hit>> {
            let pool = if kinds.is_some() { kind::CANDIDATES.max(self.depth) } else { self.depth };
            // As search: the kind is voted on by the shape ranking, before colour blends in.
            let mut voters: Vec<crate::index::Hit> = Vec::new();
            let mut by_shape = |n: usize, allowed: Option<&crate::index::Allowed>| -> Result<Vec<crate::index::Hit>> {
                let hits = index.search(vector, n, allowed)?;
                kind::keep_voters(&mut voters, &hits);
                Ok(hits)
            };
            let hits = match (&self.colour, &query_colour) {
                (ColourMode::Match, Some(q)) => {
                    colour::search_matching(self.colour_weight, self.depth, |n| by_shape(n, None), |hits, weight| Ok(self.colours.rerank(hits, q, weight)))?
                }
                (ColourMode::Named(name), _) => by_shape(pool, Some(&self.colours.keys_named(name)))?,
                _ => by_shape(pool, None)?,
            };
            Ok(match kinds {
                Some(kinds) => kinds.rerank_by_voters(hits, &voters, self.kind_weight),
                None => hits,
            }
            .into_iter()
            .take(self.depth)
            .collect())
        };
        let search = |index: &dyn VectorIndex, vector: &[f32]| search_kind(index, vector, self.kinds);

        let wants = |method: &str| self.wanted.has(method);
        let t = Instant::now();
        let vector = view(self.lookalike, self.space, self.very_similar)?;
        let view_ms = ms(t);
        if wants("lookalike") {
            let t = Instant::now();
            ranked.push(("lookalike", search(self.lookalike, &vector)?, encode_ms + view_ms + ms(t)));
        }
        // Likeness alone, without the kind the best matches agree on: what the consensus adds.
        if self.kinds.is_some() && wants("lookalike_any_kind") {
            let t = Instant::now();
            ranked.push(("lookalike_any_kind", search_kind(self.lookalike, &vector, None)?, encode_ms + ms(t)));
        }
        // The photo as taken, never straightened: what straightening adds.
        if wants("lookalike_as_taken") {
            let t = Instant::now();
            ranked.push(("lookalike_as_taken", search(self.lookalike, &self.space.map_photo(&embedding.vector)?)?, encode_ms + ms(t)));
        }
        // Without the photo adapter: what it adds.
        if self.space.adapts_photos() && wants("lookalike_unadapted") {
            let t = Instant::now();
            ranked.push(("lookalike_unadapted", search(self.lookalike, &view(self.lookalike, &self.space.without_photo_adapter(), self.very_similar)?)?, encode_ms + ms(t)));
        }
        if self.colour != ColourMode::Any && wants("lookalike_any") {
            let t = Instant::now();
            let hits = self.lookalike.search(&vector, if self.kinds.is_some() { kind::CANDIDATES.max(self.depth) } else { self.depth }, None)?;
            let hits = self.kinds.map_or(hits.clone(), |k| k.rerank_with(hits, self.kind_weight)).into_iter().take(self.depth).collect();
            ranked.push(("lookalike_any", hits, encode_ms + ms(t)));
        }

        // The same search with the query pooled over the main item found on its feature map,
        // as search does (the whole photo when nothing stands out or the item fills it).
        if wants("lookalike_item") {
            let t = Instant::now();
            let item_vector = found.as_ref().and_then(|(grid, f)| Some(grid.pool_over(&f.search_item()?.cells)));
            let hits = search(self.lookalike, &self.space.map_photo(item_vector.as_ref().unwrap_or(&embedding.vector))?)?;
            ranked.push(("lookalike_item", hits, encode_ms + ms(t)));
        }

        // Or cropped to the main item's box (half a grid cell of margin) and encoded again.
        if wants("lookalike_item_crop") {
            let t = Instant::now();
            let crop = found.as_ref().and_then(|(_, found)| {
                let main = found.search_item()?;
                let margin = 0.5 / found.width.max(1) as f32;
                preprocess::input_box_to_crop(main.bounds, margin, photo.width(), photo.height(), spec.input.fit)
            });
            let vector = match crop {
                Some(crop) => self.encoder.encode(&[preprocess::prepare_image(photo, Some(crop), &spec.input)])?.into_iter().next().context("encoder returned nothing")?.vector,
                None => embedding.vector.clone(),
            };
            ranked.push(("lookalike_item_crop", search(self.lookalike, &self.space.map_photo(&vector)?)?, encode_ms + ms(t)));
        }

        if let Some((untuned, untuned_space, very_similar)) = &self.untuned {
            let t = Instant::now();
            ranked.push(("lookalike_untuned", search(*untuned, &view(*untuned, untuned_space, *very_similar)?)?, encode_ms + ms(t)));
        }
        if let (Some(max), false) = (&embedding.max_pooled, self.original.is_empty()) {
            let t = Instant::now();
            ranked.push(("original_recipe", self.original.search(max, self.depth, None)?, encode_ms + ms(t)));
        }
        if !self.raw.is_empty() {
            let t = Instant::now();
            let mut v = preprocess::greyscale_pixels(photo, self.side);
            l2_normalize(&mut v);
            ranked.push(("raw_pixels", self.raw.search(&v, self.depth, None)?, ms(t)));
        }
        for (_, hits, _) in &mut ranked {
            *hits = self.same_photos.one_per_photo(std::mem::take(hits), |hit| hit.key, K);
        }
        Ok((ranked, query_colour_name))
    }
}
