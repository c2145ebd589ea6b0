//! `eval --scenes N`: photos of 2-3 held-out products on one background; are the products found
//! in them, and searched well by their boxes?

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::{LabelledQuery, K};
use crate::encoder::Encoder;
use crate::index::VectorIndex;
use crate::kind::{self, KindTable};
use crate::localise::ForegroundHead;
use crate::preprocess;
use crate::space::SearchSpace;
use crate::types::{Key, SamePhotos};

/// Photos of 2-3 held-out products side by side on one background ([`crate::perturb::compose_scene`]):
/// are the products found in them, and does searching with each found item's box find its kind?
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SceneReport {
    pub scenes: usize,
    /// Products placed in all scenes.
    pub products: usize,
    /// Placed products that a detected box matches (intersection over union at least 0.5).
    pub detection_recall: f64,
    /// Detected boxes that match a placed product.
    pub detection_precision: f64,
    /// P@10 by label for each placed product, searching with the detected box matched to it,
    /// cropped with [`crate::localise::ITEM_CROP_MARGIN`] as `items=all` does (0
    /// for a product no box matched).
    pub scene_precision_at_10: f64,
    /// The same, searching with the features pooled over the matched item (no second encode):
    /// what `items=all` returns for it.
    pub scene_pooled_precision_at_10: f64,
    /// P@10 by label for each placed product when the whole photo is searched: what a search
    /// without localisation gives.
    pub whole_photo_precision_at_10: f64,
    /// Why the products no box matched were not found, as shares of all placed products:
    /// `merged`, inside a box that also holds most of another placed product; `loose`, the best
    /// box overlaps it at IoU 0.2-0.5; `missed`, no box near it. Where detection loses.
    pub unmatched: UnmatchedProducts,
}

/// The placed products of [`SceneReport`] that no detected box matched, by why.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct UnmatchedProducts {
    pub merged: f64,
    pub loose: f64,
    pub missed: f64,
}

/// The area two `[x, y, w, h]` boxes share.
fn intersection(a: [f32; 4], b: [f32; 4]) -> f32 {
    let (ix, iy) = ((a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0]), (a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1]));
    ix.max(0.0) * iy.max(0.0)
}

/// Intersection over union of two `[x, y, w, h]` boxes.
pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let inter = intersection(a, b);
    let union = a[2] * a[3] + b[2] * b[3] - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// [`SceneReport`] over `n` scenes made of the queries in turn (2 or 3 per scene, seeded).
#[allow(clippy::too_many_arguments)]
pub(super) fn evaluate_scenes(
    index: &dyn VectorIndex,
    space: &SearchSpace,
    kinds: Option<(&KindTable, f32)>,
    encoder: &dyn Encoder,
    head: Option<&ForegroundHead>,
    queries: &[LabelledQuery],
    n: usize,
    seed: u64,
    labels: &HashMap<Key, String>,
    same_photos: &SamePhotos,
) -> Result<SceneReport> {
    ensure!(queries.len() >= 3, "scenes need at least 3 queries");
    let input = &encoder.spec().input;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x005C_E7E5);
    let precision = |hits: &[crate::index::Hit], label: &str| hits.iter().filter(|h| labels.get(&h.key).is_some_and(|l| l == label)).count() as f64 / K as f64;
    // Ranked deep enough for K photos, and folded to them, as search shows them (size variants
    // listed with one photo are one result).
    let depth = K * same_photos.most_listings_of_a_photo();
    let search = |vector: &[f32]| -> Result<Vec<crate::index::Hit>> {
        let hits = match kinds {
            Some((kinds, weight)) => kinds.rerank_with(index.search(&space.map_photo(vector)?, kind::CANDIDATES.max(depth), None)?, weight),
            None => index.search(&space.map_photo(vector)?, depth, None)?,
        };
        Ok(same_photos.one_per_photo(hits, |hit| hit.key, K))
    };
    let (mut placed_total, mut matched, mut detected_total, mut scene_p10, mut pooled_p10, mut whole_p10) = (0usize, 0usize, 0usize, 0.0f64, 0.0f64, 0.0f64);
    // Products no box matched: merged with a neighbour, loosely boxed, missed.
    let mut unmatched = [0usize; 3];
    // Why the placed product at `placed` was matched by no box: an index into `unmatched`.
    let unmatched_reason = |placed: [f32; 4], all: &[[f32; 4]], detections: &[[f32; 4]]| -> usize {
        let covers_most = |det: [f32; 4], b: [f32; 4]| intersection(det, b) >= 0.5 * b[2] * b[3];
        let best = detections.iter().copied().max_by(|a, b| iou(placed, *a).total_cmp(&iou(placed, *b)));
        match best {
            Some(det) if covers_most(det, placed) && all.iter().filter(|b| **b != placed).any(|b| covers_most(det, *b)) => 0,
            Some(det) if iou(placed, det) >= 0.2 => 1,
            _ => 2,
        }
    };
    let mut next = 0;
    for _ in 0..n {
        let count = rng.random_range(2..=3);
        let members: Vec<&LabelledQuery> = (0..count).map(|i| &queries[(next + i) % queries.len()]).collect();
        next += count;
        let images: Vec<image::DynamicImage> = members.iter().map(|q| q.image.clone()).collect();
        let (photo, boxes) = crate::perturb::compose_scene(&images, &mut rng);
        let query = encoder.encode_queries(&[preprocess::prepare_image(&photo, None, input)])?.into_iter().next().context("encoder returned nothing")?;
        let whole = search(&query.embedding.vector)?;
        // Detected boxes, as fractions of the photo.
        let found = match query.grid.as_ref() {
            Some(grid) => Some((grid, crate::localise::find_items_in_photo(encoder, &photo, grid, head)?)),
            None => None,
        };
        // Each detected box with the item's own pooled vector (what `items=all` searches with).
        let (detections, item_vectors): (Vec<[f32; 4]>, Vec<Vec<f32>>) = found
            .as_ref()
            .map(|(grid, f)| {
                f.products()
                    .filter_map(|item| {
                        let c = preprocess::input_box_to_crop(item.bounds, 0.0, photo.width(), photo.height(), input.fit)?;
                        Some(([c.x, c.y, c.width, c.height], grid.pool_over(&item.cells)))
                    })
                    .unzip()
            })
            .unwrap_or_default();
        // Greedy one-to-one matching, best overlap first.
        let mut pairs: Vec<(f32, usize, usize)> =
            boxes.iter().enumerate().flat_map(|(p, b)| detections.iter().enumerate().map(move |(d, det)| (iou(*b, *det), p, d))).filter(|(o, _, _)| *o >= 0.5).collect();
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (mut placed_used, mut det_used) = (vec![None; boxes.len()], vec![false; detections.len()]);
        for (_, p, d) in pairs {
            if placed_used[p].is_none() && !det_used[d] {
                placed_used[p] = Some(d);
                det_used[d] = true;
            }
        }
        for (p, member) in members.iter().enumerate() {
            whole_p10 += precision(&whole, &member.label);
            if placed_used[p].is_none() {
                unmatched[unmatched_reason(boxes[p], &boxes, &detections)] += 1;
            }
            if let Some(d) = placed_used[p] {
                let [x, y, w, h] = detections[d];
                // With a margin, as search crops an item (`items=all`).
                let crop = preprocess::Crop::new(x, y, w, h).map_err(anyhow::Error::msg)?.grown(crate::localise::ITEM_CROP_MARGIN);
                let cropped = encoder.encode(&[preprocess::prepare_image(&photo, Some(crop), input)])?.into_iter().next().context("encoder returned nothing")?;
                scene_p10 += precision(&search(&cropped.vector)?, &member.label);
                pooled_p10 += precision(&search(&item_vectors[d])?, &member.label);
                matched += 1;
            }
        }
        placed_total += boxes.len();
        detected_total += detections.len();
    }
    let share = |a: f64, b: usize| if b == 0 { 0.0 } else { a / b as f64 };
    Ok(SceneReport {
        scenes: n,
        products: placed_total,
        detection_recall: share(matched as f64, placed_total),
        detection_precision: share(matched as f64, detected_total),
        scene_precision_at_10: share(scene_p10, placed_total),
        scene_pooled_precision_at_10: share(pooled_p10, placed_total),
        whole_photo_precision_at_10: share(whole_p10, placed_total),
        unmatched: UnmatchedProducts {
            merged: share(unmatched[0] as f64, placed_total),
            loose: share(unmatched[1] as f64, placed_total),
            missed: share(unmatched[2] as f64, placed_total),
        },
    })
}
