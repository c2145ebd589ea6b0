//! Straightening a tilted shopper's photo.
//!
//! A phone photo of a garment on a floor or a bed is rarely square to the product: the photo is
//! turned a few degrees. Catalog shots are upright, and the encoder is not invariant to
//! rotation: turning Fashion-MNIST queries by up to 12° costs more P@10 than any other part of
//! `eval --perturb` (docs/localisation-study.md).
//!
//! The tilt is read from the photo's edges: the strongest direction of its gradients, folded
//! onto a quarter turn, because floors, walls, furniture and most garments' own hems and seams
//! run along or across the photo once it is straight. That reading is wrong for a product with
//! diagonal edges on a plain background (a sandal's straps), so search does not trust it
//! alone: it encodes the photo as taken and straightened and keeps whichever lies nearer the
//! catalog ([`pick_view`]). Measured, the straightened view is kept where it helps
//! and the photo as taken where straightening would have hurt (clean queries lose nothing).
//!
//! The second encode is only spent where it can matter ([`worth_straightening`]): a photo
//! whose view as taken already finds a "Very similar" product (as close as the shop's own
//! products are to their tenth look-alike, [`crate::likeness`]) is a catalog-like shot, and is
//! searched as taken. Measured on Fashion-MNIST (60,000 products, docs/localisation-study.md):
//! the edges of 55 % of clean catalog-style queries read as tilted (a garment's sleeves and
//! hems are diagonals), the straightened view won for only 22 % of those, and straightening
//! cost clean P@10 0.001; two in three of them score "Very similar" as taken, against 0.4 % of
//! shopper-style photos, whose straightened view wins 69 % of the time.

use image::{DynamicImage, RgbImage};

use crate::model::InputSpec;

/// Smallest tilt, in degrees, worth a second encode.
pub const MIN_TILT_DEGREES: f32 = 1.0;

/// Largest tilt that is read as a turned photo; beyond it the strongest edges are more likely
/// the product's own diagonals.
pub const MAX_TILT_DEGREES: f32 = 15.0;

/// Side the photo is reduced to before reading its edges: enough for a floor's or a wall's
/// lines, and a phone photo of 4,000 px costs no more than a thumbnail.
const WORK_SIDE: u32 = 192;

/// Gradient magnitude (0..255 greyscale, Sobel) below which a pixel is texture or noise, not
/// an edge.
const MIN_EDGE: f32 = 20.0;

/// By how many degrees `img` is turned (counter-clockwise positive, as [`rotate`] turns it),
/// when it is turned by at least [`MIN_TILT_DEGREES`] and at most [`MAX_TILT_DEGREES`]; `None`
/// for a straight photo, one without edges, or one too small to tell.
pub fn tilt(img: &DynamicImage) -> Option<f32> {
    let (w, h) = (img.width(), img.height());
    if w < 8 || h < 8 {
        return None;
    }
    let small = DynamicImage::ImageRgb8(crate::preprocess::reduced(img, WORK_SIDE)).to_luma8();
    if small.width() < 3 || small.height() < 3 {
        return None;
    }
    let degrees = edge_direction(&small)?;
    (MIN_TILT_DEGREES..=MAX_TILT_DEGREES).contains(&degrees.abs()).then_some(degrees)
}

/// The strongest edge direction of a greyscale image, folded onto -45..45 degrees: a histogram
/// of Sobel gradient angles in 1° bins weighted by magnitude, smoothed, its peak refined by a
/// parabola through its neighbours.
fn edge_direction(grey: &image::GrayImage) -> Option<f32> {
    let (w, h) = (grey.width() as usize, grey.height() as usize);
    let g = |x: usize, y: usize| f32::from(grey.as_raw()[y * w + x]);
    let mut histogram = [0f32; 90];
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let gx = g(x + 1, y - 1) + 2.0 * g(x + 1, y) + g(x + 1, y + 1) - g(x - 1, y - 1) - 2.0 * g(x - 1, y) - g(x - 1, y + 1);
            let gy = g(x - 1, y + 1) + 2.0 * g(x, y + 1) + g(x + 1, y + 1) - g(x - 1, y - 1) - 2.0 * g(x, y - 1) - g(x + 1, y - 1);
            let magnitude = (gx * gx + gy * gy).sqrt();
            if magnitude < MIN_EDGE {
                continue;
            }
            let folded = gy.atan2(gx).to_degrees().rem_euclid(90.0);
            histogram[(folded.round() as usize) % 90] += magnitude;
        }
    }
    let smooth: Vec<f32> = (0..90).map(|i| histogram[(i + 89) % 90] + 2.0 * histogram[i] + histogram[(i + 1) % 90]).collect();
    let (peak, &top) = smooth.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
    if top <= 0.0 {
        return None;
    }
    let (left, right) = (smooth[(peak + 89) % 90], smooth[(peak + 1) % 90]);
    let curvature = left - 2.0 * top + right;
    let offset = if curvature.abs() > f32::EPSILON { 0.5 * (left - right) / curvature } else { 0.0 };
    let degrees = peak as f32 + offset;
    Some(if degrees >= 45.0 { degrees - 90.0 } else { degrees })
}

/// Side, in multiples of the model's input side, beyond which a tilted photo is reduced before
/// it is kept for straightening: a 12-megapixel phone photo waiting in an encoder batch would
/// otherwise hold 36 MB, and turning it costs far more than turning what the model will see.
const KEPT_SIDE_PER_INPUT: u32 = 4;

/// A photo whose edges read as turned, kept until the photo as taken has been searched: its
/// straightened view is encoded only if that search found nothing very similar
/// ([`worth_straightening`]).
#[derive(Debug, Clone)]
pub struct Tilted {
    photo: DynamicImage,
    degrees: f32,
}

impl Tilted {
    /// `Some` when `img` looks turned by [`tilt`]; the photo is kept no larger than
    /// `KEPT_SIDE_PER_INPUT` times the model's input side.
    pub fn of(img: &DynamicImage, input: &InputSpec) -> Option<Tilted> {
        let degrees = tilt(img)?;
        let side = input.size.saturating_mul(KEPT_SIDE_PER_INPUT).max(1);
        let photo = if img.width().max(img.height()) > side { DynamicImage::ImageRgb8(crate::preprocess::reduced(img, side)) } else { img.clone() };
        Some(Tilted { photo, degrees })
    }

    pub fn degrees(&self) -> f32 {
        self.degrees
    }

    /// The photo turned straight, as the model's input tensor.
    pub fn straightened_input(&self, input: &InputSpec) -> Vec<f32> {
        crate::preprocess::prepare_image(&straighten(&self.photo, self.degrees), None, input)
    }
}

/// Whether a tilted photo's straightened view is worth encoding, given the best score its view
/// as taken found in the catalog and the catalog's "Very similar" score (`None` for a catalog
/// too small to have one): not when the photo as taken already finds a very similar product.
/// Such a photo is a catalog-like shot whose diagonals are the product's own, and turning it
/// rarely finds anything closer.
pub fn worth_straightening(as_taken_best: f32, very_similar: Option<f32>) -> bool {
    very_similar.is_none_or(|threshold| as_taken_best < threshold)
}

/// `img` turned back by `tilt` degrees.
pub fn straighten(img: &DynamicImage, tilt: f32) -> DynamicImage {
    DynamicImage::ImageRgb8(rotate(&img.to_rgb8(), -tilt))
}

/// Rotates by `degrees` about the centre (bilinear), filling uncovered corners with the
/// nearest edge pixel, as a phone's straightening tool does.
///
/// Written over the raw bytes, with the rounding inline: `tune` rotates every one of its
/// 30,000 perturbed photos, and per-pixel `get_pixel` bounds checks plus a libm `roundf` call
/// per channel (the build targets baseline x86-64, which has no rounding instruction) were
/// 5-8 % of perf's samples in its encoding phase. The result is bit for bit what the straightforward
/// version gives (test `rotation_matches_the_per_pixel_reference`), so `eval --perturb`'s
/// photos do not change.
pub fn rotate(img: &RgbImage, degrees: f32) -> RgbImage {
    let (w, h) = img.dimensions();
    let mut out = RgbImage::new(w, h);
    if w == 0 || h == 0 {
        return out;
    }
    let (sin, cos) = degrees.to_radians().sin_cos();
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let (src, stride) = (img.as_raw(), w as usize * 3);
    for (y, row) in out.chunks_exact_mut(stride).enumerate() {
        let dy = y as f32 + 0.5 - cy;
        for (x, pixel) in row.chunks_exact_mut(3).enumerate() {
            let dx = x as f32 + 0.5 - cx;
            let sx = (cos * dx + sin * dy + cx - 0.5).clamp(0.0, (w - 1) as f32);
            let sy = (-sin * dx + cos * dy + cy - 0.5).clamp(0.0, (h - 1) as f32);
            // Both are clamped to 0 or more, where truncating is flooring.
            let (x0, y0) = (sx as u32, sy as u32);
            let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            let at = |xx: u32, yy: u32| yy as usize * stride + xx as usize * 3;
            let (p00, p10, p01, p11) = (at(x0, y0), at(x1, y0), at(x0, y1), at(x1, y1));
            for c in 0..3 {
                let top = f32::from(src[p00 + c]) * (1.0 - fx) + f32::from(src[p10 + c]) * fx;
                let bottom = f32::from(src[p01 + c]) * (1.0 - fx) + f32::from(src[p11 + c]) * fx;
                pixel[c] = round_to_u8(top * (1.0 - fy) + bottom * fy);
            }
        }
    }
    out
}

/// `v.round() as u8` for `v >= 0` (or NaN), without a libm call: halves round up, as
/// `f32::round` rounds them away from zero; `v - trunc(v)` is exact, so no value rounds
/// differently.
fn round_to_u8(v: f32) -> u8 {
    let whole = v as u32 as f32;
    (if v - whole >= 0.5 { whole + 1.0 } else { whole }) as u8
}

/// Which of a photo's views to search with, given each view's best match score (the photo as
/// taken first): the view nearest the catalog. A straightened view that is really straight
/// matches its product more closely than the tilted photo; one turned by a misread tilt
/// matches worse, and the photo as taken wins. Ties keep the photo as taken.
pub fn pick_view(best_scores: &[f32]) -> usize {
    best_scores.iter().enumerate().fold((0, f32::NEG_INFINITY), |(best, top), (i, &s)| if s > top { (i, s) } else { (best, top) }).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    /// A light rectangle on a dark floor with a few straight boards: edges along the photo.
    fn straight_photo() -> RgbImage {
        let mut img = RgbImage::from_pixel(240, 180, Rgb([40, 30, 20]));
        for y in 0..180 {
            for x in 0..240 {
                if y % 45 < 4 {
                    img.put_pixel(x, y, Rgb([90, 70, 50]));
                }
                if (70..170).contains(&x) && (40..140).contains(&y) {
                    img.put_pixel(x, y, Rgb([210, 60, 60]));
                }
            }
        }
        img
    }

    #[test]
    fn reads_the_tilt_a_photo_was_turned_by() {
        let img = straight_photo();
        for turned in [-12.0f32, -6.0, 3.0, 9.0] {
            let photo = DynamicImage::ImageRgb8(rotate(&img, turned));
            let read = tilt(&photo).expect("a turned photo has a tilt");
            assert!((read - turned).abs() < 1.5, "turned {turned}°, read {read}°");
            // Straightened, it reads as straight (within the smallest tilt worth correcting).
            let back = straighten(&photo, read);
            assert!(tilt(&back).is_none_or(|t| t.abs() < 1.5), "straightened photo still tilted: {:?}", tilt(&back));
        }
    }

    #[test]
    fn a_straight_or_blank_photo_has_no_tilt() {
        assert_eq!(tilt(&DynamicImage::ImageRgb8(straight_photo())), None);
        assert_eq!(tilt(&DynamicImage::ImageRgb8(RgbImage::from_pixel(64, 64, Rgb([200, 200, 200])))), None);
        assert_eq!(tilt(&DynamicImage::ImageRgb8(RgbImage::new(4, 4))), None);
    }

    /// The straightforward rotation [`rotate`] replaced, kept to check it against.
    fn rotate_reference(img: &RgbImage, degrees: f32) -> RgbImage {
        let (w, h) = img.dimensions();
        let (sin, cos) = degrees.to_radians().sin_cos();
        let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
        RgbImage::from_fn(w, h, |x, y| {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let sx = (cos * dx + sin * dy + cx - 0.5).clamp(0.0, (w - 1) as f32);
            let sy = (-sin * dx + cos * dy + cy - 0.5).clamp(0.0, (h - 1) as f32);
            let (x0, y0) = (sx.floor() as u32, sy.floor() as u32);
            let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            let px = |xx, yy| img.get_pixel(xx, yy);
            Rgb([0, 1, 2].map(|c| {
                let top = f32::from(px(x0, y0)[c]) * (1.0 - fx) + f32::from(px(x1, y0)[c]) * fx;
                let bottom = f32::from(px(x0, y1)[c]) * (1.0 - fx) + f32::from(px(x1, y1)[c]) * fx;
                (top * (1.0 - fy) + bottom * fy).round() as u8
            }))
        })
    }

    #[test]
    fn rotation_matches_the_per_pixel_reference() {
        // Noise, so that every channel takes many values and halves turn up in the blend.
        let mut state = 0x2545_F491u32;
        let noise = RgbImage::from_fn(37, 23, |_, _| {
            Rgb([0; 3].map(|_: u8| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 24) as u8
            }))
        });
        for img in [straight_photo(), noise, RgbImage::from_pixel(1, 1, Rgb([255, 0, 128]))] {
            for degrees in [-12.0f32, -7.3, -0.5, 0.0, 0.25, 3.0, 11.9, 45.0, 90.0] {
                assert!(rotate(&img, degrees) == rotate_reference(&img, degrees), "{degrees}° on {:?}", img.dimensions());
            }
        }
        for v in [0.0f32, 0.49999997, 0.5, 1.5, 2.5, 127.5, 254.49998, 254.5, 255.0, 255.4, 255.6, f32::NAN] {
            assert_eq!(round_to_u8(v), v.round() as u8, "{v}");
        }
        assert!(rotate(&RgbImage::new(0, 5), 10.0).is_empty());
    }

    #[test]
    fn rotation_by_zero_is_identity() {
        let img = straight_photo();
        assert_eq!(rotate(&img, 0.0), img);
    }

    #[test]
    fn a_photo_that_already_finds_a_very_similar_product_is_not_straightened() {
        assert!(!worth_straightening(0.75, Some(0.7)));
        assert!(!worth_straightening(0.7, Some(0.7)), "at the band's edge the match is very similar");
        assert!(worth_straightening(0.69, Some(0.7)));
        assert!(worth_straightening(0.99, None), "without bands every tilted photo is tried straightened");
    }

    #[test]
    fn a_large_tilted_photo_is_kept_reduced_and_straightened_as_the_model_sees_it() {
        let input = InputSpec { name: "image".into(), size: 32, layout: crate::model::Layout::Nchw, mean: [0.5; 3], std: [0.5; 3], fit: crate::model::Fit::Pad };
        let big = DynamicImage::ImageRgb8(rotate(&image::imageops::resize(&straight_photo(), 480, 360, image::imageops::FilterType::Triangle), 6.0));
        let tilted = Tilted::of(&big, &input).expect("turned");
        assert!((tilted.degrees() - 6.0).abs() < 1.5, "read {}", tilted.degrees());
        assert_eq!((tilted.photo.width(), tilted.photo.height()), (128, 96), "kept at 4x the input side");
        assert_eq!(tilted.straightened_input(&input).len(), 3 * 32 * 32);
        assert!(Tilted::of(&DynamicImage::ImageRgb8(straight_photo()), &input).is_none());
    }

    #[test]
    fn the_view_nearest_the_catalog_is_searched() {
        assert_eq!(pick_view(&[0.8]), 0);
        assert_eq!(pick_view(&[0.8, 0.9]), 1);
        assert_eq!(pick_view(&[0.9, 0.8]), 0);
        assert_eq!(pick_view(&[0.9, 0.9]), 0, "a tie keeps the photo as taken");
        assert_eq!(pick_view(&[]), 0);
    }
}
