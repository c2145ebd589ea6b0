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
}

/// The items on a feature grid: by the learned head when there is one, else training-free.
pub fn find_items(grid: &GridFeatures, head: Option<&ForegroundHead>) -> Localisation {
    match head {
        Some(head) => {
            let scores: Vec<f32> = (0..grid.width * grid.height).map(|c| head.probability(grid.cell(c))).collect();
            items_above(&scores, grid.width, grid.height, 0.5)
        }
        None => localise(&grid.energy(), grid.width, grid.height),
    }
}

/// Finds the items on a `width` x `height` grid whose per-cell activation energy (the sum of
/// the channels at that cell) is `energy`, row-major: cells above the mean are foreground.
pub fn localise(energy: &[f32], width: usize, height: usize) -> Localisation {
    let mean = energy.iter().sum::<f32>() / energy.len().max(1) as f32;
    items_above(energy, width, height, mean)
}

/// The connected groups of cells whose `score` is above `threshold`, strongest first.
fn items_above(energy: &[f32], width: usize, height: usize, threshold: f32) -> Localisation {
    let cells = width * height;
    if cells == 0 || energy.len() != cells {
        return Localisation { width, height, items: Vec::new() };
    }
    let foreground: Vec<bool> = energy.iter().map(|&e| e > threshold).collect();
    let total: f32 = energy.iter().zip(&foreground).filter(|(_, &f)| f).map(|(&e, _)| e).sum::<f32>().max(f32::MIN_POSITIVE);
    let mut seen = vec![false; cells];
    let mut items = Vec::new();
    for start in 0..cells {
        if !foreground[start] || seen[start] {
            continue;
        }
        // Flood fill over 4-neighbours.
        let (mut stack, mut component) = (vec![start], Vec::new());
        seen[start] = true;
        while let Some(cell) = stack.pop() {
            component.push(cell);
            let (row, col) = (cell / width, cell % width);
            let neighbours = [
                (row > 0).then(|| cell - width),
                (row + 1 < height).then(|| cell + width),
                (col > 0).then(|| cell - 1),
                (col + 1 < width).then(|| cell + 1),
            ];
            for next in neighbours.into_iter().flatten() {
                if foreground[next] && !seen[next] {
                    seen[next] = true;
                    stack.push(next);
                }
            }
        }
        component.sort_unstable();
        let energy_sum: f32 = component.iter().map(|&c| energy[c]).sum();
        let (rows, cols) = (component.iter().map(|&c| c / width), component.iter().map(|&c| c % width));
        let (top, bottom) = (rows.clone().min().unwrap_or(0), rows.max().unwrap_or(0));
        let (left, right) = (cols.clone().min().unwrap_or(0), cols.max().unwrap_or(0));
        let bounds = [
            left as f32 / width as f32,
            top as f32 / height as f32,
            (right - left + 1) as f32 / width as f32,
            (bottom - top + 1) as f32 / height as f32,
        ];
        items.push(Item { cells: component, bounds, score: energy_sum / total });
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
