//! Finding the products in a shopper's photo from the encoder's own feature grid.
//!
//! Each grid cell gets a foreground score: from the catalog's learned [`ForegroundHead`] (a
//! logistic regression on the cell's features, trained by `lookalike tune --localise` on
//! catalog products composed onto backgrounds, where the boxes are known), or, without one,
//! training-free (the selective-convolutional-descriptor idea, SCDA: a cell whose activations
//! summed over channels are above the map's mean). 4-connected foreground cells form an item;
//! the item with the most foreground is the main one.

use anyhow::{ensure, Result};

use crate::encoder::{Encoder, GridFeatures};
use crate::model::{Fit, InputSpec};
use crate::preprocess::{self, Crop};

/// One item found on the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Grid cells (row-major positions) that belong to the item.
    pub cells: Vec<usize>,
    /// Its box on the grid, as fractions of the model input: x, y, width, height.
    pub bounds: [f32; 4],
    /// Its share of the map's foreground activation, 0..1.
    pub score: f32,
}

/// How much of a found item's width and height is added on each side when it is cropped out
/// to be searched on its own (`items=all`, `eval --scenes`): a garment cut at its box's edge
/// loses its outline, which the encoder reads. On 1,000 composed scenes (tuned 60,000-product
/// catalog) P@10 by the item's crop rose 0.808 -> 0.820 with it; 0.2 and 0.3 measured no
/// better than 0.1 (docs/localisation-study.md).
pub const ITEM_CROP_MARGIN: f32 = 0.1;

/// Share of a photo's foreground below which an item is not reported as a product: specks of
/// texture, a corner of a patterned background.
pub const MIN_ITEM_SCORE: f32 = 0.15;

/// Share of the grid above which the main item is not searched on its own (see
/// [`Localisation::search_item`]).
pub const MAX_SEARCH_ITEM_SHARE: f32 = 1.0 / 3.0;

/// The items on one image's feature map, the main one first.
#[derive(Debug, Clone, PartialEq)]
pub struct Localisation {
    pub width: usize,
    pub height: usize,
    pub items: Vec<Item>,
    /// The learned head's probability that each cell of the whole photo's grid shows a
    /// product (row-major); empty when found training-free, whose energies are no probability.
    pub foreground: Vec<f32>,
}

impl Localisation {
    /// The main item: the one with the most activation.
    pub fn main(&self) -> Option<&Item> {
        self.items.first()
    }

    /// The item to search for instead of the whole photo, were search to do so: the main
    /// product, when it covers less than [`MAX_SEARCH_ITEM_SHARE`] of the grid (a garment on a
    /// floor, a bag beside other things); a product that fills much of the photo loses the
    /// edges of the garment. `eval` measures this as `lookalike_item` beside the whole photo;
    /// search keeps the whole photo, which measured better (docs/localisation-study.md).
    pub fn search_item(&self) -> Option<&Item> {
        self.products().next().filter(|item| (item.cells.len() as f32) < MAX_SEARCH_ITEM_SHARE * (self.width * self.height) as f32)
    }

    /// The items worth reporting as products ([`MIN_ITEM_SCORE`] or more of the foreground),
    /// the main one first.
    pub fn products(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|item| item.score >= MIN_ITEM_SCORE)
    }

    /// The learned head's foreground probability at any point (`x`, `y` fractions of the
    /// model's input), read bilinearly between cell centres; `None` without a learned head.
    pub fn foreground_map(&self) -> Option<impl Fn(f32, f32) -> f32 + '_> {
        (!self.foreground.is_empty() && self.foreground.len() == self.width * self.height).then_some(|x, y| sample_grid(&self.foreground, self.width, self.height, x, y))
    }
}

/// The items on a feature grid: by the learned head when there is one, else training-free.
pub fn find_items(grid: &GridFeatures, head: Option<&ForegroundHead>) -> Localisation {
    match head {
        Some(head) => {
            let scores: Vec<f32> = (0..grid.width * grid.height).map(|c| head.probability(grid.cell(c))).collect();
            let mut found = items_above(&scores, grid.width, grid.height, FOREGROUND_THRESHOLD, SUBDIVISIONS, true);
            // Boxes from the item's cells' predicted extents, where the head predicts them.
            for item in &mut found.items {
                let predictions: Vec<(f32, [f32; 4])> = item
                    .cells
                    .iter()
                    .filter(|&&c| scores[c] >= EXTENT_MIN_PROBABILITY)
                    .filter_map(|&c| {
                        let (x, y) = (((c % grid.width) as f32 + 0.5) / grid.width as f32, ((c / grid.width) as f32 + 0.5) / grid.height as f32);
                        Some((scores[c], head.predicted_box(grid.cell(c), x, y)?))
                    })
                    .collect();
                if let Some(predicted) = box_from_predictions(&predictions) {
                    item.bounds = mean_box(item.bounds, predicted);
                }
            }
            Localisation { foreground: scores, ..found }
        }
        None => localise(&grid.energy(), grid.width, grid.height),
    }
}

/// Finds the items on a `width` x `height` grid whose per-cell activation energy (the sum of
/// the channels at that cell) is `energy`, row-major: cells above the mean are foreground.
pub fn localise(energy: &[f32], width: usize, height: usize) -> Localisation {
    let mean = energy.iter().sum::<f32>() / energy.len().max(1) as f32;
    // Traced on whole cells: the mean is no midpoint between product and background (a
    // busy background is above it too), so edges interpolated to it land far outside products.
    items_above(energy, width, height, mean, 1, false)
}

/// Sub-cells per grid cell side on which the learned head's items are traced (see
/// [`items_above`]).
const SUBDIVISIONS: usize = 4;

/// The connected regions whose score is above `threshold`, strongest first.
///
/// Scores are known at cell centres only. Tracing items on the cells themselves gives boxes
/// that snap to whole cells: on a 7x7 grid a box can be off by a seventh of the photo on each
/// side, enough to miss a small product's box at IoU 0.5. So the score is interpolated
/// bilinearly between cell centres onto a grid `subdivisions` times finer and items are
/// traced there: box edges fall where the score crosses the threshold (measured on composed
/// scenes with the learned head: detection recall 0.283 against 0.275 on whole cells,
/// precision 0.422 against 0.390). An item pools the cells it covers at least half of.
fn items_above(scores: &[f32], width: usize, height: usize, threshold: f32, subdivisions: usize, split: bool) -> Localisation {
    let subdivisions = subdivisions.max(1);
    let cells = width * height;
    if cells == 0 || scores.len() != cells {
        return Localisation { width, height, items: Vec::new(), foreground: Vec::new() };
    }
    let (fine_w, fine_h) = (width * subdivisions, height * subdivisions);
    let fine: Vec<f32> = (0..fine_w * fine_h)
        .map(|i| {
            let (x, y) = ((i % fine_w) as f32 + 0.5, (i / fine_w) as f32 + 0.5);
            sample_grid(scores, width, height, x / fine_w as f32, y / fine_h as f32)
        })
        .collect();
    let mut items = Vec::new();
    let mut regions = regions_above(&fine, fine_w, fine_h, threshold);
    if split {
        regions = split_touching(&fine, fine_w, fine_h, regions, subdivisions * subdivisions);
    }
    for region in regions {
        // The cells it covers at least half of; a sliver covering none keeps its best cell.
        let mut coverage = vec![0usize; cells];
        for &i in &region.points {
            coverage[(i / fine_w / subdivisions) * width + (i % fine_w) / subdivisions] += 1;
        }
        let half = (subdivisions * subdivisions).div_ceil(2);
        let mut item_cells: Vec<usize> = (0..cells).filter(|&c| coverage[c] >= half).collect();
        if item_cells.is_empty() {
            item_cells.extend((0..cells).max_by_key(|&c| coverage[c]));
        }
        items.push(Item { cells: item_cells, bounds: region.bounds, score: region.score });
    }
    Localisation { width, height, items, foreground: Vec::new() }
}

/// A `width` x `height` grid of scores (known at cell centres) read at `(x, y)`, fractions of
/// the grid: bilinear between the nearest cell centres, clamped at the borders so the outer
/// half-cells take the edge cell's score.
fn sample_grid(scores: &[f32], width: usize, height: usize, x: f32, y: f32) -> f32 {
    let at = |f: f32, n: usize| -> (usize, usize, f32) {
        let position = (f * n as f32 - 0.5).clamp(0.0, (n - 1) as f32);
        let low = (position.floor() as usize).min(n - 1);
        (low, (low + 1).min(n - 1), position - low as f32)
    };
    let ((x0, x1, tx), (y0, y1, ty)) = (at(x, width), at(y, height));
    let s = |x: usize, y: usize| scores[y * width + x];
    let top = s(x0, y0) * (1.0 - tx) + s(x1, y0) * tx;
    let bottom = s(x0, y1) * (1.0 - tx) + s(x1, y1) * tx;
    top * (1.0 - ty) + bottom * ty
}

/// One connected region of a fine score map.
struct Region {
    /// Its points (row-major positions on the fine map).
    points: Vec<usize>,
    /// Its box as fractions of the map: x, y, width, height.
    bounds: [f32; 4],
    /// Its share of the map's score above the threshold.
    score: f32,
}

/// The 4-connected regions of a `width` x `height` map whose score is above `threshold`,
/// strongest first.
fn regions_above(fine: &[f32], width: usize, height: usize, threshold: f32) -> Vec<Region> {
    let foreground: Vec<bool> = fine.iter().map(|&v| v > threshold).collect();
    let total: f32 = fine.iter().zip(&foreground).filter(|(_, &f)| f).map(|(&v, _)| v).sum::<f32>().max(f32::MIN_POSITIVE);
    let mut seen = vec![false; fine.len()];
    let mut regions = Vec::new();
    for start in 0..fine.len() {
        if !foreground[start] || seen[start] {
            continue;
        }
        // Flood fill over 4-neighbours.
        let (mut stack, mut points) = (vec![start], Vec::new());
        seen[start] = true;
        while let Some(at) = stack.pop() {
            points.push(at);
            let (row, col) = (at / width, at % width);
            let neighbours = [(row > 0).then(|| at - width), (row + 1 < height).then(|| at + width), (col > 0).then(|| at - 1), (col + 1 < width).then(|| at + 1)];
            for next in neighbours.into_iter().flatten() {
                if foreground[next] && !seen[next] {
                    seen[next] = true;
                    stack.push(next);
                }
            }
        }
        let score_sum: f32 = points.iter().map(|&i| fine[i]).sum();
        let bounds = bounds_of(&points, width, height);
        regions.push(Region { points, bounds, score: score_sum / total });
    }
    regions.sort_by(|a, b| b.score.total_cmp(&a.score));
    regions
}

/// Products touching in the photo make one region above the head's threshold. Where the
/// region holds two or more peaks that stay apart at a higher threshold, it is split between
/// them (a watershed): each point goes to the peak it reaches first within the region. The
/// level is the one of [`SPLIT_LEVELS`] that separates the most peaks of at least
/// `min_peak` points (a cell's worth, so texture does not split a product).
fn split_touching(fine: &[f32], width: usize, height: usize, regions: Vec<Region>, min_peak: usize) -> Vec<Region> {
    let total: f32 = regions.iter().flat_map(|r| r.points.iter().map(|&i| fine[i])).sum::<f32>().max(f32::MIN_POSITIVE);
    let mut out = Vec::new();
    for region in regions {
        let mut inside = vec![false; fine.len()];
        for &i in &region.points {
            inside[i] = true;
        }
        // The level with the most peaks big enough to be products.
        let mut best: Vec<Vec<usize>> = Vec::new();
        for &level in SPLIT_LEVELS {
            let level_map: Vec<f32> = fine.iter().zip(&inside).map(|(&v, &i)| if i { v } else { 0.0 }).collect();
            let peaks: Vec<Vec<usize>> = regions_above(&level_map, width, height, level).into_iter().map(|r| r.points).filter(|p| p.len() >= min_peak).collect();
            if peaks.len() > best.len() {
                best = peaks;
            }
        }
        if best.len() < 2 {
            out.push(region);
            continue;
        }
        // Breadth-first from every peak at once, inside the region.
        let mut owner = vec![usize::MAX; fine.len()];
        let mut queue = std::collections::VecDeque::new();
        for (p, peak) in best.iter().enumerate() {
            for &i in peak {
                owner[i] = p;
                queue.push_back(i);
            }
        }
        while let Some(at) = queue.pop_front() {
            let (row, col) = (at / width, at % width);
            let neighbours = [(row > 0).then(|| at - width), (row + 1 < height).then(|| at + width), (col > 0).then(|| at - 1), (col + 1 < width).then(|| at + 1)];
            for next in neighbours.into_iter().flatten() {
                if inside[next] && owner[next] == usize::MAX {
                    owner[next] = owner[at];
                    queue.push_back(next);
                }
            }
        }
        for p in 0..best.len() {
            let points: Vec<usize> = region.points.iter().copied().filter(|&i| owner[i] == p).collect();
            if points.is_empty() {
                continue;
            }
            let score = points.iter().map(|&i| fine[i]).sum::<f32>() / total;
            out.push(Region { bounds: bounds_of(&points, width, height), points, score });
        }
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

/// The thresholds, above [`FOREGROUND_THRESHOLD`], at which [`split_touching`] looks for
/// separate peaks.
const SPLIT_LEVELS: &[f32] = &[0.7, 0.8, 0.9, 0.95];

/// The learned head's probability above which a cell's predicted box counts towards its
/// item's ([`ExtentHead`]): the extent is learned on foreground cells only.
const EXTENT_MIN_PROBABILITY: f32 = 0.5;

/// The learned head's probability above which a point of the photo is on a product. Not
/// 0.5: the head is trained with the classes weighted equally, and its 0.5 edge lies outside
/// the product (on 300 composed scenes of a 10,000-product catalog, tiled: detection recall
/// 0.858 and precision 0.897 at 0.5, 0.894 and 0.949 at 0.6, 0.892 and 0.958 at 0.7 with
/// boxes too tight; docs/localisation-study.md).
pub const FOREGROUND_THRESHOLD: f32 = 0.6;

/// The box of `points` on a `width` x `height` map, as fractions of the map.
fn bounds_of(points: &[usize], width: usize, height: usize) -> [f32; 4] {
    let (rows, cols) = (points.iter().map(|&i| i / width), points.iter().map(|&i| i % width));
    let (top, bottom) = (rows.clone().min().unwrap_or(0), rows.max().unwrap_or(0));
    let (left, right) = (cols.clone().min().unwrap_or(0), cols.max().unwrap_or(0));
    [left as f32 / width as f32, top as f32 / height as f32, (right - left + 1) as f32 / width as f32, (bottom - top + 1) as f32 / height as f32]
}

/// Photos whose long side is at least this many times their short side are also searched
/// for products in square tiles ([`tiles`]).
///
/// Why: the model sees a photo padded to a square, 7x7 cells. A wide photo of three products
/// side by side fills three of the seven rows and each product about 2x2 cells, too coarse
/// for the foreground head to tell neighbours apart (docs/localisation-study.md). Cut into
/// squares of the photo's short side, each product spans about 4x4 cells of a tile.
pub const TILE_ASPECT: f32 = 1.25;

/// The square tiles, as fractions of a `width` x `height` photo, on which its products are
/// found when it is [`TILE_ASPECT`] or more times longer than wide (or the other way round):
/// squares of the short side, evenly spaced along the long side, each overlapping the next by
/// at least half. Empty for a photo closer to square (its own grid is used).
pub fn tiles(width: u32, height: u32) -> Vec<Crop> {
    let (w, h) = (width.max(1) as f32, height.max(1) as f32);
    let ratio = w.max(h) / w.min(h);
    if ratio < TILE_ASPECT {
        return Vec::new();
    }
    let count = ((ratio - 1.0) / 0.5).ceil() as usize + 1;
    let side = 1.0 / ratio;
    (0..count)
        .filter_map(|i| {
            let start = (1.0 - side) * i as f32 / (count - 1) as f32;
            let crop = if w >= h { Crop::new(start, 0.0, side, 1.0) } else { Crop::new(0.0, start, 1.0, side) };
            crop.ok()
        })
        .collect()
}

/// The items in a `width` x `height` photo found on its [`tiles`]' grids by the learned head,
/// reported like [`find_items`] on the whole photo's grid (boxes as fractions of the model's
/// input for the whole photo, cells of `whole`).
///
/// Each tile's cell probabilities are read bilinearly onto one map over the photo, as fine as
/// `SUBDIVISIONS` sub-cells per tile cell, averaged where tiles overlap; items are traced on
/// that map as on one grid. Falls back to the whole photo's grid when no tile has a grid.
pub fn find_items_tiled(whole: &GridFeatures, tiles: &[(Crop, GridFeatures)], head: &ForegroundHead, width: u32, height: u32, fit: Fit) -> Localisation {
    let Some((_, first)) = tiles.first() else {
        return find_items(whole, Some(head));
    };
    let probabilities: Vec<Vec<f32>> = tiles.iter().map(|(_, grid)| (0..grid.width * grid.height).map(|c| head.probability(grid.cell(c))).collect()).collect();
    let (w, h) = (width.max(1) as f32, height.max(1) as f32);
    // Fine points per tile side, and the map's size over the whole photo.
    let per_tile = first.width.max(first.height).max(1) * SUBDIVISIONS;
    let (fine_w, fine_h) = if w >= h { (((w / h) * per_tile as f32).round() as usize, per_tile) } else { (per_tile, ((h / w) * per_tile as f32).round() as usize) };
    let fine: Vec<f32> = (0..fine_w * fine_h)
        .map(|i| {
            let (x, y) = (((i % fine_w) as f32 + 0.5) / fine_w as f32, ((i / fine_w) as f32 + 0.5) / fine_h as f32);
            let (mut sum, mut count) = (0.0f32, 0usize);
            for ((crop, grid), scores) in tiles.iter().zip(&probabilities) {
                let (tx, ty) = ((x - crop.x) / crop.width, (y - crop.y) / crop.height);
                if (0.0..=1.0).contains(&tx) && (0.0..=1.0).contains(&ty) && scores.len() == grid.width * grid.height && !scores.is_empty() {
                    sum += sample_grid(scores, grid.width, grid.height, tx, ty);
                    count += 1;
                }
            }
            if count == 0 {
                0.0
            } else {
                sum / count as f32
            }
        })
        .collect();
    let cells = whole.width * whole.height;
    let regions = regions_above(&fine, fine_w, fine_h, FOREGROUND_THRESHOLD);
    let regions = split_touching(&fine, fine_w, fine_h, regions, SUBDIVISIONS * SUBDIVISIONS);
    // Each region's box as its tile cells predict it (photo fractions), where the head does.
    let mut owner = vec![usize::MAX; fine_w * fine_h];
    for (r, region) in regions.iter().enumerate() {
        for &i in &region.points {
            owner[i] = r;
        }
    }
    let mut predictions: Vec<Vec<(f32, [f32; 4])>> = vec![Vec::new(); regions.len()];
    for ((crop, grid), scores) in tiles.iter().zip(&probabilities) {
        let (view_w, view_h) = (((width as f32 * crop.width).round() as u32).max(1), ((height as f32 * crop.height).round() as u32).max(1));
        let to_photo = |x: f32, y: f32| {
            let (vx, vy) = preprocess::input_point_to_photo(x, y, view_w, view_h, fit);
            (crop.x + vx * crop.width, crop.y + vy * crop.height)
        };
        for (c, &p) in scores.iter().enumerate().filter(|(_, &p)| p >= EXTENT_MIN_PROBABILITY) {
            let (cx, cy) = (((c % grid.width) as f32 + 0.5) / grid.width as f32, ((c / grid.width) as f32 + 0.5) / grid.height as f32);
            let (px, py) = to_photo(cx, cy);
            let at = ((py * fine_h as f32) as usize).min(fine_h - 1) * fine_w + ((px * fine_w as f32) as usize).min(fine_w - 1);
            let Some(region) = owner.get(at).copied().filter(|&r| r != usize::MAX) else { continue };
            if let Some([l, t, r, b]) = head.predicted_box(grid.cell(c), cx, cy) {
                let ((x0, y0), (x1, y1)) = (to_photo(l, t), to_photo(r, b));
                predictions[region].push((p, [x0, y0, x1, y1]));
            }
        }
    }
    let items = regions
        .into_iter()
        .zip(&predictions)
        .map(|(region, predicted)| {
            let [x, y, bw, bh] = box_from_predictions(predicted).map_or(region.bounds, |predicted| mean_box(region.bounds, predicted));
            let (x0, y0) = preprocess::photo_point_to_input(x, y, width, height, fit);
            let (x1, y1) = preprocess::photo_point_to_input(x + bw, y + bh, width, height, fit);
            // The whole photo's cells whose centres lie in the box (pooled over by eval's
            // `lookalike_item`); a box between centres keeps the cell under its middle.
            let centre = |c: usize| (((c % whole.width) as f32 + 0.5) / whole.width as f32, ((c / whole.width) as f32 + 0.5) / whole.height as f32);
            let mut item_cells: Vec<usize> = (0..cells).filter(|&c| (x0..=x1).contains(&centre(c).0) && (y0..=y1).contains(&centre(c).1)).collect();
            if item_cells.is_empty() && cells > 0 {
                let (mx, my) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
                let (col, row) = (((mx * whole.width as f32) as usize).min(whole.width - 1), ((my * whole.height as f32) as usize).min(whole.height - 1));
                item_cells.push(row * whole.width + col);
            }
            Item { cells: item_cells, bounds: [x0, y0, x1 - x0, y1 - y0], score: region.score }
        })
        .collect();
    let foreground = (0..cells).map(|c| head.probability(whole.cell(c))).collect();
    Localisation { width: whole.width, height: whole.height, items, foreground }
}

/// The items in `photo`, whose whole-photo grid is `whole`: on its [`tiles`] (encoded here)
/// when it is long and the head is learned, else on `whole`. What `eval` measures; search
/// does the same in its batches.
pub fn find_items_in_photo(encoder: &dyn Encoder, photo: &image::DynamicImage, whole: &GridFeatures, head: Option<&ForegroundHead>) -> Result<Localisation> {
    let input = &encoder.spec().input;
    let Some(head) = head else {
        return Ok(find_items(whole, None));
    };
    let (crops, tensors): (Vec<Crop>, Vec<Vec<f32>>) = tile_inputs(photo, input).into_iter().unzip();
    if crops.is_empty() {
        return Ok(find_items(whole, Some(head)));
    }
    let grids = encoder.encode_queries(&tensors)?;
    let tiles: Vec<(Crop, GridFeatures)> = crops.into_iter().zip(grids).filter_map(|(crop, tile)| Some((crop, tile.grid?))).collect();
    Ok(find_items_tiled(whole, &tiles, head, photo.width(), photo.height(), input.fit))
}

/// The model's input tensors for a photo's [`tiles`], each with its tile.
pub fn tile_inputs(photo: &image::DynamicImage, input: &InputSpec) -> Vec<(Crop, Vec<f32>)> {
    tiles(photo.width(), photo.height()).into_iter().map(|tile| (tile, preprocess::prepare_image(photo, Some(tile), input))).collect()
}

/// A per-cell logistic regression on standardised features: the probability that a grid cell
/// shows a product rather than background; and, when learned, where that product's edges are
/// ([`ExtentHead`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ForegroundHead {
    /// Per-channel mean and 1/std of the training cells' features.
    pub mean: Vec<f32>,
    pub inv_std: Vec<f32>,
    pub weights: Vec<f32>,
    pub bias: f32,
    /// Where the product's box lies around a foreground cell; `None` in heads learned before it
    /// existed (their boxes come from the probabilities alone).
    pub extent: Option<ExtentHead>,
}

/// Where a product's edges are, seen from one of its grid cells: the distances from the cell's
/// centre to the left, top, right and bottom of the product's box, as fractions of the model's
/// input. A linear map (ridge regression) on the same standardised features as the foreground
/// probability, learned on the foreground cells of the composed photos, as a one-stage
/// detector's box head is.
///
/// Why: a 7x7 grid is too coarse to draw boxes from where the probability crosses a threshold.
/// A cell is a seventh of the view, the map is blurred by about a cell, and boxes come out
/// squarer than the product: a trouser too wide, a sandal too tall. Each cell's features
/// carry what the product is and where it sits in the cell's view: evidence about its extent
/// that the map's edge lacks, with other errors, so an item's box is taken halfway between
/// the two (`mean_box`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExtentHead {
    /// One row of `channels` weights for each of left, top, right, bottom.
    pub weights: Vec<f32>,
    pub bias: [f32; 4],
}

impl ForegroundHead {
    /// The probability that a cell with this feature is foreground.
    pub fn probability(&self, feature: &[f32]) -> f32 {
        let z: f32 = feature.iter().zip(&self.mean).zip(&self.inv_std).zip(&self.weights).map(|(((x, m), s), w)| (x - m) * s * w).sum::<f32>() + self.bias;
        1.0 / (1.0 + (-z).exp())
    }

    /// The box of the product that a foreground cell centred at (`x`, `y`) (fractions of the
    /// model's input) shows, predicted from its feature: `[left, top, right, bottom]` edges as
    /// fractions of the input. `None` without an [`ExtentHead`].
    pub fn predicted_box(&self, feature: &[f32], x: f32, y: f32) -> Option<[f32; 4]> {
        let extent = self.extent.as_ref()?;
        let channels = self.weights.len();
        let standardised: Vec<f32> = feature.iter().zip(&self.mean).zip(&self.inv_std).map(|((x, m), s)| (x - m) * s).collect();
        let reach: Vec<f32> =
            (0..4).map(|edge| (crate::index::kernels::dot(&standardised, &extent.weights[edge * channels..(edge + 1) * channels]) + extent.bias[edge]).max(0.0)).collect();
        Some([x - reach[0], y - reach[1], x + reach[2], y + reach[3]])
    }

    pub fn channels(&self) -> usize {
        self.weights.len()
    }

    /// Little-endian f32: channel count, then mean, 1/std, weights, bias; then, when learned,
    /// the extent head's four weight rows and four biases.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 * (2 + 7 * self.weights.len() + 4));
        out.extend((self.weights.len() as f32).to_le_bytes());
        let extent = self.extent.iter().flat_map(|e| e.weights.iter().chain(&e.bias));
        for v in self.mean.iter().chain(&self.inv_std).chain(&self.weights).chain(std::iter::once(&self.bias)).chain(extent) {
            out.extend(v.to_le_bytes());
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<ForegroundHead> {
        ensure!(bytes.len().is_multiple_of(4) && bytes.len() >= 8, "the foreground head is damaged (size {})", bytes.len());
        let floats: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let n = floats[0] as usize;
        let (plain, with_extent) = (2 + 3 * n, 2 + 7 * n + 4);
        ensure!(floats.len() == plain || floats.len() == with_extent, "the foreground head is damaged ({} values for {n} channels)", floats.len());
        let extent = (floats.len() == with_extent).then(|| ExtentHead { weights: floats[plain..plain + 4 * n].to_vec(), bias: [0, 1, 2, 3].map(|i| floats[plain + 4 * n + i]) });
        Ok(ForegroundHead {
            mean: floats[1..1 + n].to_vec(),
            inv_std: floats[1 + n..1 + 2 * n].to_vec(),
            weights: floats[1 + 2 * n..1 + 3 * n].to_vec(),
            bias: floats[1 + 3 * n],
            extent,
        })
    }
}

/// The box halfway between where the foreground map crosses its threshold (`traced`) and where
/// the item's cells predict the product's edges (`predicted`), both `[x, y, w, h]` fractions
/// of the same frame, clamped to it.
///
/// Why both: their errors differ. The traced box is blurred by the coarse map towards a square
/// (a trouser's too wide, a sandal's too tall); the predicted one is noisier (0.09 of the
/// view per edge on held-out cells). On 300 composed scenes of 2-3 products (tuned 60,000-product
/// catalog) detection recall was 0.885 traced, 0.864 predicted, 0.928 halfway; anywhere from
/// 0.4 to 0.6 of the way measured the same (docs/localisation-study.md).
fn mean_box(traced: [f32; 4], predicted: [f32; 4]) -> [f32; 4] {
    let edges = |b: [f32; 4]| [b[0], b[1], b[0] + b[2], b[1] + b[3]];
    let (a, b) = (edges(traced), edges(predicted));
    let [x0, y0, x1, y1] = [0, 1, 2, 3].map(|e| ((a[e] + b[e]) / 2.0).clamp(0.0, 1.0));
    [x0, y0, (x1 - x0).max(0.0), (y1 - y0).max(0.0)]
}

/// One product's box from its cells' predictions (`[left, top, right, bottom]` each, weighted):
/// the weighted median of each edge, so one cell that sees a neighbour's product does not pull
/// the box. As `[x, y, w, h]`; `None` without predictions.
fn box_from_predictions(predictions: &[(f32, [f32; 4])]) -> Option<[f32; 4]> {
    let total: f32 = predictions.iter().map(|(w, _)| w).sum();
    if predictions.is_empty() || total <= 0.0 {
        return None;
    }
    let edge = |e: usize| {
        let mut values: Vec<(f32, f32)> = predictions.iter().map(|(w, b)| (b[e], *w)).collect();
        values.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut seen = 0.0;
        for (v, w) in &values {
            seen += w;
            if seen >= total / 2.0 {
                return *v;
            }
        }
        values.last().map_or(0.0, |v| v.0)
    };
    let [l, t, r, b] = [edge(0), edge(1), edge(2), edge(3)];
    (r > l && b > t).then_some([l, t, r - l, b - t])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_blobs_are_two_items_the_stronger_first() {
        // 5 x 4 grid: a strong 2x2 blob top-left, a weaker single cell bottom-right.
        #[rustfmt::skip]
        let energy = [
            9.0, 9.0, 0.0, 0.0, 0.0,
            9.0, 9.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 0.0, 0.0, 6.0,
        ];
        let found = localise(&energy, 5, 4);
        assert_eq!(found.items.len(), 2);
        let main = found.main().expect("an item");
        assert_eq!(main.cells, [0, 1, 5, 6]);
        assert_eq!(main.bounds, [0.0, 0.0, 0.4, 0.5]);
        assert!((main.score - 36.0 / 42.0).abs() < 1e-6);
        assert_eq!(found.items[1].cells, [19]);
        assert_eq!(found.items[1].bounds, [0.8, 0.75, 0.2, 0.25]);

        // Traced on sub-cells (as the learned head's scores are), the same map gives boxes that
        // end where the score crosses the threshold: 2.1 is crossed 0.77 of the way from the
        // blob's outer cell centres (1.5) to the next ones (2.5), so the box ends at 2.25 cells,
        // the last sub-cell centre inside. The pooled cells stay the same.
        let fine = items_above(&energy, 5, 4, 2.1, 4, false);
        assert_eq!(fine.items.len(), 2);
        assert_eq!(fine.items[0].cells, [0, 1, 5, 6]);
        assert_eq!(fine.items[0].bounds, [0.0, 0.0, 2.25 / 5.0, 2.25 / 4.0]);
        assert_eq!(fine.items[1].cells, [19]);
        let [x, y, w, h] = fine.items[1].bounds;
        assert!((x - 3.75 / 5.0).abs() < 1e-6 && (y - 2.75 / 4.0).abs() < 1e-6 && (x + w - 1.0).abs() < 1e-6 && (y + h - 1.0).abs() < 1e-6, "{:?}", fine.items[1].bounds);
    }

    #[test]
    fn a_head_round_trips_through_bytes() {
        let head = ForegroundHead { mean: vec![0.5, 1.0], inv_std: vec![2.0, 1.0], weights: vec![1.5, -0.5], bias: 0.25, extent: None };
        assert_eq!(ForegroundHead::from_bytes(&head.to_bytes()).expect("read back"), head);
        assert!(ForegroundHead::from_bytes(&head.to_bytes()[..10]).is_err());
        // z = (1 - 0.5) * 2 * 1.5 + (1 - 1) * 1 * -0.5 + 0.25 = 1.75
        assert!((head.probability(&[1.0, 1.0]) - 1.0 / (1.0 + (-1.75f32).exp())).abs() < 1e-6);
        assert_eq!(head.predicted_box(&[1.0, 1.0], 0.5, 0.5), None, "no extent head, no predicted box");

        // With an extent head; the plain layout (heads learned before it) still reads.
        let with_extent = ForegroundHead { extent: Some(ExtentHead { weights: vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], bias: [0.1, 0.2, 0.3, 0.4] }), ..head.clone() };
        assert_eq!(ForegroundHead::from_bytes(&with_extent.to_bytes()).expect("read back"), with_extent);
        assert_eq!(ForegroundHead::from_bytes(&head.to_bytes()).expect("read back").extent, None);
        assert!(ForegroundHead::from_bytes(&with_extent.to_bytes()[..with_extent.to_bytes().len() - 4]).is_err());
        // Standardised (1, 0): left reaches 0.1 * 1 + 0.2 * 0 + 0.1 = 0.2 from the centre, right 0.5 + 0.3 = 0.8.
        let [l, t, r, b] = with_extent.predicted_box(&[1.0, 1.0], 0.5, 0.5).expect("a box");
        assert!((l - 0.3).abs() < 1e-6 && (t - 0.0).abs() < 1e-6 && (r - 1.3).abs() < 1e-6 && (b - 1.6).abs() < 1e-6, "{l} {t} {r} {b}");
    }

    /// A head reading a cell's logit from channel 0 and, from channels 1-4, how far the
    /// product's left, top, right and bottom edges are from the cell's centre.
    fn head_with_extent() -> ForegroundHead {
        let mut weights = vec![0.0; 20];
        for edge in 0..4 {
            weights[edge * 5 + 1 + edge] = 1.0;
        }
        let mut head = ForegroundHead { mean: vec![0.0; 5], inv_std: vec![1.0; 5], weights: vec![1.0, 0.0, 0.0, 0.0, 0.0], bias: 0.0, extent: None };
        head.extent = Some(ExtentHead { weights, bias: [0.0; 4] });
        head
    }

    /// A 7x7 grid of cells that see `product` (`[x, y, w, h]` fractions of the grid): logit +4
    /// on it and on the ring of cells around it (the coarse map's blur), -4 elsewhere, and the
    /// distances from each cell's centre to the product's edges.
    fn grid_seeing(product: [f32; 4]) -> GridFeatures {
        let [x0, y0, x1, y1] = [product[0], product[1], product[0] + product[2], product[1] + product[3]];
        let mut data = Vec::new();
        for cell in 0..49 {
            let (x, y) = (((cell % 7) as f32 + 0.5) / 7.0, ((cell / 7) as f32 + 0.5) / 7.0);
            let near = x > x0 - 1.0 / 7.0 && x < x1 + 1.0 / 7.0 && y > y0 - 1.0 / 7.0 && y < y1 + 1.0 / 7.0;
            data.extend([if near { 4.0 } else { -4.0 }, x - x0, y - y0, x1 - x, y1 - y]);
        }
        GridFeatures { width: 7, height: 7, channels: 5, data, pooling: crate::model::Pooling::Gem { p: 3.0 } }
    }

    #[test]
    fn the_cells_predicted_edges_pull_a_blurred_box_onto_the_product() {
        // A thin product (a trouser): a seventh of the width, half the height. The map is
        // blurred by a cell around it, so the traced box is far too wide.
        let product = [3.0 / 7.0, 0.25, 1.0 / 7.0, 0.5];
        let grid = grid_seeing(product);
        let traced = find_items(&grid, Some(&ForegroundHead { extent: None, ..head_with_extent() }));
        let refined = find_items(&grid, Some(&head_with_extent()));
        let (traced, refined) = (traced.main().expect("found").bounds, refined.main().expect("found").bounds);
        assert!(iou(product, traced) < 0.3, "the traced box alone is far too wide: {traced:?}");
        assert!(iou(product, refined) > iou(product, traced) + 0.15, "halfway to the exact prediction: {refined:?}");
        for e in 0..4 {
            let edge = |b: [f32; 4]| [b[0], b[1], b[0] + b[2], b[1] + b[3]][e];
            assert!((edge(refined) - (edge(traced) + edge(product)) / 2.0).abs() < 1e-5, "edge {e}: {refined:?} {traced:?}");
        }
    }

    #[test]
    fn the_middle_prediction_wins_over_a_stray_cell() {
        let votes = [(1.0, [0.2, 0.2, 0.4, 0.8]), (1.0, [0.21, 0.19, 0.41, 0.79]), (0.9, [0.9, 0.0, 1.0, 1.0])];
        let [x, y, w, h] = box_from_predictions(&votes).expect("a box");
        assert!((x - 0.21).abs() < 1e-6 && (y - 0.19).abs() < 1e-6 && (x + w - 0.41).abs() < 1e-6 && (y + h - 0.8).abs() < 1e-6, "{x} {y} {w} {h}");
        assert_eq!(box_from_predictions(&[]), None);
        assert_eq!(box_from_predictions(&[(1.0, [0.5, 0.5, 0.4, 0.6])]), None, "an inside-out box is no box");
        assert_eq!(mean_box([0.0, 0.0, 0.4, 0.4], [0.2, 0.2, 0.4, 0.4]), [0.1, 0.1, 0.4, 0.4]);
    }

    #[test]
    fn a_flat_or_empty_map_has_no_items() {
        assert!(localise(&[1.0; 49], 7, 7).items.is_empty(), "nothing stands out");
        assert!(localise(&[], 0, 0).items.is_empty());
        assert!(localise(&[1.0, 2.0], 7, 7).items.is_empty(), "a size mismatch finds nothing");
    }

    fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
        let ix = (a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0]);
        let iy = (a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1]);
        let inter = ix.max(0.0) * iy.max(0.0);
        inter / (a[2] * a[3] + b[2] * b[3] - inter)
    }

    /// A head that reads a cell's first channel as its logit (after standardising with mean 0
    /// and scale 1): a feature of +4 is foreground (p 0.98), -4 background (p 0.02).
    fn first_channel_head() -> ForegroundHead {
        ForegroundHead { mean: vec![0.0, 0.0], inv_std: vec![1.0, 1.0], weights: vec![1.0, 0.0], bias: 0.0, extent: None }
    }

    /// A 7x7 grid whose cells' first channel is `logit(x, y)` at the cell centre (fractions).
    fn grid_from(logit: impl Fn(f32, f32) -> f32) -> GridFeatures {
        let mut data = Vec::new();
        for cell in 0..49 {
            let (x, y) = (((cell % 7) as f32 + 0.5) / 7.0, ((cell / 7) as f32 + 0.5) / 7.0);
            data.extend([logit(x, y), 0.0]);
        }
        GridFeatures { width: 7, height: 7, channels: 2, data, pooling: crate::model::Pooling::Gem { p: 3.0 } }
    }

    #[test]
    fn long_photos_are_cut_into_overlapping_squares() {
        assert!(tiles(640, 600).is_empty(), "near-square photos use their own grid");
        let wide = tiles(480, 240);
        assert_eq!(wide.len(), 3, "{wide:?}");
        for (tile, x) in wide.iter().zip([0.0, 0.25, 0.5]) {
            assert!((tile.x - x).abs() < 1e-6 && tile.y == 0.0 && (tile.width - 0.5).abs() < 1e-6 && tile.height == 1.0, "{tile:?}");
        }
        let tall = tiles(300, 400);
        assert_eq!(tall.len(), 2, "{tall:?}");
        assert!(tall[1].y > 0.0 && (tall[1].y + tall[1].height - 1.0).abs() < 1e-6 && tall[1].width == 1.0);
    }

    #[test]
    fn products_side_by_side_on_a_wide_photo_are_found_on_its_tiles() {
        // A 480 x 240 photo with three products, each 0.2 of the width and 0.6 of the height,
        // 0.1 apart: too close for the whole photo's 7x7 grid (three cells high in it).
        let photo = (480u32, 240u32);
        let placed = [[0.05f32, 0.2, 0.2, 0.6], [0.4, 0.2, 0.2, 0.6], [0.75, 0.2, 0.2, 0.6]];
        let on_product = |x: f32, y: f32| placed.iter().any(|b| x >= b[0] && x <= b[0] + b[2] && y >= b[1] && y <= b[1] + b[3]);
        let head = first_channel_head();
        let tile_grids: Vec<(Crop, GridFeatures)> = tiles(photo.0, photo.1)
            .into_iter()
            .map(|tile| {
                let grid = grid_from(|x, y| if on_product(tile.x + x * tile.width, tile.y + y * tile.height) { 4.0 } else { -4.0 });
                (tile, grid)
            })
            .collect();
        let whole = grid_from(|_, _| -4.0);
        let found = find_items_tiled(&whole, &tile_grids, &head, photo.0, photo.1, Fit::Pad);
        assert_eq!(found.products().count(), 3, "{found:?}");
        for b in placed {
            let best = found
                .products()
                .filter_map(|item| preprocess::input_box_to_crop(item.bounds, 0.0, photo.0, photo.1, Fit::Pad))
                .map(|c| iou(b, [c.x, c.y, c.width, c.height]))
                .fold(0.0, f32::max);
            assert!(best >= 0.5, "{b:?} found at IoU {best}: {found:?}");
        }
        // Each item pools over the whole photo's cells under it.
        assert!(found.items.iter().all(|item| !item.cells.is_empty()));
    }

    #[test]
    fn touching_products_are_split_between_their_peaks() {
        // Two strong blobs joined by a bridge above the foreground threshold but below the
        // next level: one region at the threshold, two peaks above it.
        #[rustfmt::skip]
        let p = [
            0.1,  0.1,  0.1,  0.1,  0.1,  0.1,  0.1,
            0.1,  0.99, 0.99, 0.65, 0.99, 0.99, 0.1,
            0.1,  0.99, 0.99, 0.65, 0.99, 0.99, 0.1,
            0.1,  0.99, 0.99, 0.65, 0.99, 0.99, 0.1,
            0.1,  0.1,  0.1,  0.1,  0.1,  0.1,  0.1,
        ];
        let joined = items_above(&p, 7, 5, FOREGROUND_THRESHOLD, 1, false);
        assert_eq!(joined.items.len(), 1, "one region without splitting");
        let split = items_above(&p, 7, 5, FOREGROUND_THRESHOLD, 1, true);
        assert_eq!(split.items.len(), 2, "{split:?}");
        let mut lefts: Vec<f32> = split.items.iter().map(|i| i.bounds[0]).collect();
        lefts.sort_by(f32::total_cmp);
        assert!(lefts[0] < 2.0 / 7.0 && lefts[1] >= 3.0 / 7.0, "one item each side of the bridge: {split:?}");
        // A single peak with a weak shoulder stays one item.
        let mut one = p;
        for bridge in [10, 17, 24] {
            one[bridge] = 0.99;
        }
        assert_eq!(items_above(&one, 7, 5, FOREGROUND_THRESHOLD, 1, true).items.len(), 1);
    }
}
