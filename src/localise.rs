//! Finding the products in a shopper's photo from the encoder's own feature grid.
//!
//! Each grid cell gets a foreground score: from the catalog's learned [`ForegroundHead`] (a
//! logistic regression on the cell's features, trained by `lookalike tune --localise` on
//! catalog products composed onto backgrounds, where the boxes are known), or, without one,
//! training-free (the selective-convolutional-descriptor idea, SCDA: a cell whose activations
//! summed over channels are above the map's mean). 4-connected foreground cells form an item;
//! the item with the most foreground is the main one.

use anyhow::{ensure, Result};

use crate::encoder::GridFeatures;

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
}

/// The items on a feature grid: by the learned head when there is one, else training-free.
pub fn find_items(grid: &GridFeatures, head: Option<&ForegroundHead>) -> Localisation {
    match head {
        Some(head) => {
            let scores: Vec<f32> = (0..grid.width * grid.height).map(|c| head.probability(grid.cell(c))).collect();
            items_above(&scores, grid.width, grid.height, 0.5, SUBDIVISIONS)
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
    items_above(energy, width, height, mean, 1)
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
fn items_above(scores: &[f32], width: usize, height: usize, threshold: f32, subdivisions: usize) -> Localisation {
    let subdivisions = subdivisions.max(1);
    let cells = width * height;
    if cells == 0 || scores.len() != cells {
        return Localisation { width, height, items: Vec::new() };
    }
    let (fine_w, fine_h) = (width * subdivisions, height * subdivisions);
    // The score at a sub-cell's centre, in cell units (cell centres sit at 0.5, 1.5, ...),
    // clamped at the borders so the outer half-cells take the edge cell's score.
    let sample = |fx: usize, fy: usize| -> f32 {
        let at = |f: usize, n: usize| -> (usize, usize, f32) {
            let position = ((f as f32 + 0.5) / subdivisions as f32 - 0.5).clamp(0.0, (n - 1) as f32);
            let low = (position.floor() as usize).min(n - 1);
            (low, (low + 1).min(n - 1), position - low as f32)
        };
        let ((x0, x1, tx), (y0, y1, ty)) = (at(fx, width), at(fy, height));
        let s = |x: usize, y: usize| scores[y * width + x];
        let top = s(x0, y0) * (1.0 - tx) + s(x1, y0) * tx;
        let bottom = s(x0, y1) * (1.0 - tx) + s(x1, y1) * tx;
        top * (1.0 - ty) + bottom * ty
    };
    let fine: Vec<f32> = (0..fine_w * fine_h).map(|i| sample(i % fine_w, i / fine_w)).collect();
    let foreground: Vec<bool> = fine.iter().map(|&v| v > threshold).collect();
    let total: f32 = fine.iter().zip(&foreground).filter(|(_, &f)| f).map(|(&v, _)| v).sum::<f32>().max(f32::MIN_POSITIVE);
    let mut seen = vec![false; fine.len()];
    let mut items = Vec::new();
    for start in 0..fine.len() {
        if !foreground[start] || seen[start] {
            continue;
        }
        // Flood fill over 4-neighbours.
        let (mut stack, mut component) = (vec![start], Vec::new());
        seen[start] = true;
        while let Some(at) = stack.pop() {
            component.push(at);
            let (row, col) = (at / fine_w, at % fine_w);
            let neighbours = [
                (row > 0).then(|| at - fine_w),
                (row + 1 < fine_h).then(|| at + fine_w),
                (col > 0).then(|| at - 1),
                (col + 1 < fine_w).then(|| at + 1),
            ];
            for next in neighbours.into_iter().flatten() {
                if foreground[next] && !seen[next] {
                    seen[next] = true;
                    stack.push(next);
                }
            }
        }
        let score_sum: f32 = component.iter().map(|&i| fine[i]).sum();
        let (rows, cols) = (component.iter().map(|&i| i / fine_w), component.iter().map(|&i| i % fine_w));
        let (top, bottom) = (rows.clone().min().unwrap_or(0), rows.max().unwrap_or(0));
        let (left, right) = (cols.clone().min().unwrap_or(0), cols.max().unwrap_or(0));
        let bounds = [
            left as f32 / fine_w as f32,
            top as f32 / fine_h as f32,
            (right - left + 1) as f32 / fine_w as f32,
            (bottom - top + 1) as f32 / fine_h as f32,
        ];
        // The cells it covers at least half of; a sliver covering none keeps its best cell.
        let mut coverage = vec![0usize; cells];
        for &i in &component {
            coverage[(i / fine_w / subdivisions) * width + (i % fine_w) / subdivisions] += 1;
        }
        let half = (subdivisions * subdivisions).div_ceil(2);
        let mut item_cells: Vec<usize> = (0..cells).filter(|&c| coverage[c] >= half).collect();
        if item_cells.is_empty() {
            item_cells.extend((0..cells).max_by_key(|&c| coverage[c]));
        }
        items.push(Item { cells: item_cells, bounds, score: score_sum / total });
    }
    items.sort_by(|a, b| b.score.total_cmp(&a.score));
    Localisation { width, height, items }
}

/// A per-cell logistic regression on standardised features: the probability that a grid cell
/// shows a product rather than background.
#[derive(Debug, Clone, PartialEq)]
pub struct ForegroundHead {
    /// Per-channel mean and 1/std of the training cells' features.
    pub mean: Vec<f32>,
    pub inv_std: Vec<f32>,
    pub weights: Vec<f32>,
    pub bias: f32,
}

impl ForegroundHead {
    /// The probability that a cell with this feature is foreground.
    pub fn probability(&self, feature: &[f32]) -> f32 {
        let z: f32 = feature.iter().zip(&self.mean).zip(&self.inv_std).zip(&self.weights).map(|(((x, m), s), w)| (x - m) * s * w).sum::<f32>() + self.bias;
        1.0 / (1.0 + (-z).exp())
    }

    pub fn channels(&self) -> usize {
        self.weights.len()
    }

    /// Little-endian f32: channel count, then mean, 1/std, weights, bias.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 * (2 + 3 * self.weights.len()));
        out.extend((self.weights.len() as f32).to_le_bytes());
        for v in self.mean.iter().chain(&self.inv_std).chain(&self.weights).chain(std::iter::once(&self.bias)) {
            out.extend(v.to_le_bytes());
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<ForegroundHead> {
        ensure!(bytes.len().is_multiple_of(4) && bytes.len() >= 8, "the foreground head is damaged (size {})", bytes.len());
        let floats: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let n = floats[0] as usize;
        ensure!(floats.len() == 2 + 3 * n, "the foreground head is damaged ({} values for {n} channels)", floats.len());
        Ok(ForegroundHead { mean: floats[1..1 + n].to_vec(), inv_std: floats[1 + n..1 + 2 * n].to_vec(), weights: floats[1 + 2 * n..1 + 3 * n].to_vec(), bias: floats[1 + 3 * n] })
    }
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
        let fine = items_above(&energy, 5, 4, 2.1, 4);
        assert_eq!(fine.items.len(), 2);
        assert_eq!(fine.items[0].cells, [0, 1, 5, 6]);
        assert_eq!(fine.items[0].bounds, [0.0, 0.0, 2.25 / 5.0, 2.25 / 4.0]);
        assert_eq!(fine.items[1].cells, [19]);
        let [x, y, w, h] = fine.items[1].bounds;
        assert!((x - 3.75 / 5.0).abs() < 1e-6 && (y - 2.75 / 4.0).abs() < 1e-6 && (x + w - 1.0).abs() < 1e-6 && (y + h - 1.0).abs() < 1e-6, "{:?}", fine.items[1].bounds);
    }

    #[test]
    fn a_head_round_trips_through_bytes() {
        let head = ForegroundHead { mean: vec![0.5, 1.0], inv_std: vec![2.0, 1.0], weights: vec![1.5, -0.5], bias: 0.25 };
        assert_eq!(ForegroundHead::from_bytes(&head.to_bytes()).expect("read back"), head);
        assert!(ForegroundHead::from_bytes(&head.to_bytes()[..10]).is_err());
        // z = (1 - 0.5) * 2 * 1.5 + (1 - 1) * 1 * -0.5 + 0.25 = 1.75
        assert!((head.probability(&[1.0, 1.0]) - 1.0 / (1.0 + (-1.75f32).exp())).abs() < 1e-6);
    }

    #[test]
    fn a_flat_or_empty_map_has_no_items() {
        assert!(localise(&[1.0; 49], 7, 7).items.is_empty(), "nothing stands out");
        assert!(localise(&[], 0, 0).items.is_empty());
        assert!(localise(&[1.0, 2.0], 7, 7).items.is_empty(), "a size mismatch finds nothing");
    }
}
