//! A photo's colour descriptor: a soft histogram over the named colours in CIELAB, taken over
//! the product's own pixels (see the module above for the rules), and the colour named from it.

use std::sync::OnceLock;

use anyhow::{bail, Result};

use super::{delta_e, lab_of, ACHROMATIC, BINS, MULTI, PROTOTYPES, VOCABULARY};
use crate::preprocess::InputPixels;
use crate::types::{Metadata, COMPUTED_COLOUR_COLUMN};

/// A product is named after its dominant colour when that colour holds at least this share of
/// its pixels; below it, [`MULTI`] (two colours in equal parts hold about half each).
const DOMINANT_SHARE: f32 = 0.6;

/// Named colours that differ only in lightness, so that one product's own shading spans both:
/// a white shirt's folds read light grey, a black shoe's highlights dark grey. A product mostly
/// of two such neighbours is one colour, named after the larger, not [`MULTI`] (black and white
/// are no neighbours: black-and-white stripes stay `Multi`).
const SHADES_OF_ONE_COLOUR: [[&str; 2]; 2] = [["White", "Grey"], ["Grey", "Black"]];

/// A named colour is one of a photo's main colours from this share of it on
/// ([`ColourDescriptor::main_colours`]): a stripe or a print's second colour, not the soft
/// histogram's spill into a neighbouring shade.
const MIN_MAIN_SHARE: f32 = 0.15;

/// At most this many main colours: more would not read in a swatch.
const MAX_MAIN_COLOURS: usize = 3;

/// Spread of each prototype's soft bin, in CIELAB ΔE.
const BIN_SIGMA: f32 = 11.0;

/// A pixel at least this far (ΔE) from the background colour can be wholly product (see
/// `estimate`); half as far, it is background; linear in between.
const FOREGROUND_DELTA_E: f32 = 18.0;

/// Below this share of a photo's pixels, what differs from the border is noise, not a
/// product: the colour is then taken from all pixels, centre-weighted.
const MIN_FOREGROUND_SHARE: f32 = 0.03;

/// Pixels sampled along the longer side of the region a colour is taken from (about 3,000
/// pixels in all): plenty for a histogram of 15 bins, and cheap next to decoding.
const SAMPLES_PER_SIDE: usize = 56;

/// A photo's colours: the square roots of its soft histogram over the named colours' shades (unit length;
/// the dot product of two is their Bhattacharyya coefficient).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColourDescriptor {
    roots: [f32; BINS],
}

impl ColourDescriptor {
    /// From a histogram of non-negative weights (normalised here); `None` when it is empty.
    fn from_histogram(histogram: &[f32; BINS]) -> Option<ColourDescriptor> {
        let total: f32 = histogram.iter().sum();
        if total.is_nan() || total <= 0.0 {
            return None;
        }
        Some(ColourDescriptor { roots: histogram.map(|w| (w.max(0.0) / total).sqrt()) })
    }

    /// How alike two photos' colours are: 1 for the same histogram, 0 for disjoint ones.
    pub fn similarity(&self, other: &ColourDescriptor) -> f32 {
        self.roots.iter().zip(&other.roots).map(|(a, b)| a * b).sum::<f32>().clamp(0.0, 1.0)
    }

    /// Each named colour's share of the photo (they add up to 1).
    pub fn shares(&self) -> [f32; BINS] {
        self.roots.map(|r| r * r)
    }

    /// Each named colour's share (its prototypes' shares summed), in [`VOCABULARY`]'s order.
    pub fn name_shares(&self) -> [f32; VOCABULARY.len()] {
        let shares = self.shares();
        VOCABULARY.map(|c| PROTOTYPES.iter().zip(shares).filter(|(p, _)| p.name == c.name).map(|(_, s)| s).sum())
    }

    /// The dominant named colour, or [`MULTI`]. Shading is not a second colour: the two
    /// largest shares count together when they are `SHADES_OF_ONE_COLOUR`.
    pub fn name(&self) -> &'static str {
        let shares = self.name_shares();
        let mut ranked: Vec<usize> = (0..shares.len()).collect();
        ranked.sort_by(|&a, &b| shares[b].total_cmp(&shares[a]));
        let (first, second) = (VOCABULARY[ranked[0]].name, VOCABULARY[ranked[1]].name);
        let shading = SHADES_OF_ONE_COLOUR.iter().any(|pair| pair.contains(&first) && pair.contains(&second));
        let share = shares[ranked[0]] + if shading { shares[ranked[1]] } else { 0.0 };
        if share >= DOMINANT_SHARE {
            first
        } else {
            MULTI
        }
    }

    /// The photo's main named colours, largest share first: those holding at least 15 % of
    /// it, at most three (what a [`MULTI`] product's swatch shows).
    pub fn main_colours(&self) -> Vec<(&'static str, f32)> {
        let shares = self.name_shares();
        let mut named: Vec<(&'static str, f32)> = VOCABULARY.iter().zip(shares).map(|(c, share)| (c.name, share)).filter(|&(_, share)| share >= MIN_MAIN_SHARE).collect();
        named.sort_by(|a, b| b.1.total_cmp(&a.1));
        named.truncate(MAX_MAIN_COLOURS);
        named
    }

    /// Whether the photo has colour to speak of: at least a quarter of it is neither black,
    /// white nor grey.
    pub fn is_chromatic(&self) -> bool {
        let shares = self.shares();
        let grey: f32 = PROTOTYPES.iter().zip(shares).filter(|(c, _)| ACHROMATIC.contains(&c.name)).map(|(_, s)| s).sum();
        1.0 - grey >= 0.25
    }

    /// Its values, as the catalog stores them.
    pub fn values(&self) -> Vec<f32> {
        self.roots.to_vec()
    }

    /// From stored values, checked.
    pub fn from_values(values: &[f32]) -> Result<ColourDescriptor> {
        if values.len() != BINS {
            bail!("a colour descriptor has {BINS} values, not {}", values.len());
        }
        let mut roots = [0f32; BINS];
        for (root, &v) in roots.iter_mut().zip(values) {
            if !v.is_finite() || v < 0.0 {
                bail!("a colour descriptor holds {v}, not a share's square root");
            }
            *root = v;
        }
        Ok(ColourDescriptor { roots })
    }
}

/// A photo's colour as a shopper sees it: the descriptor, its name, and the average sRGB of
/// the pixels of that colour (a swatch).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColourEstimate {
    pub descriptor: ColourDescriptor,
    pub name: &'static str,
    pub rgb: [u8; 3],
    /// Every sampled pixel is grey (a greyscale photo, e.g. Fashion-MNIST): the photo has no
    /// colour to name.
    pub greyscale: bool,
}

impl ColourEstimate {
    /// Records the named colour in `metadata` (as [`COMPUTED_COLOUR_COLUMN`]) when it names no
    /// colour of its own (a shop's column always wins) and the photo has colour.
    pub fn name_in(&self, metadata: &mut Metadata) {
        if !crate::types::names_a_colour(metadata) && !self.greyscale {
            metadata.insert(COMPUTED_COLOUR_COLUMN.to_string(), self.name.to_string());
        }
    }
}

/// Packed 8-bit RGB pixels, `width * height * 3` bytes, and the part of them that is the photo
/// (`[x, y, w, h]` in pixels; the rest is padding, e.g. the white around a photo fitted into
/// the model's square input).
#[derive(Debug, Clone, Copy)]
pub struct Pixels<'a> {
    pub rgb: &'a [u8],
    pub width: usize,
    pub height: usize,
    pub region: [usize; 4],
}

impl<'a> Pixels<'a> {
    /// All of `rgb` is the photo.
    pub fn whole(rgb: &'a [u8], width: usize, height: usize) -> Pixels<'a> {
        Pixels { rgb, width, height, region: [0, 0, width, height] }
    }

    /// A square of `size` x `size` pixels of which `photo` (`[x, y, w, h]`) is the photo: the
    /// model's input as [`crate::preprocess::InputPixels`] holds it.
    pub fn square(rgb: &'a [u8], size: u32, photo: [u32; 4]) -> Pixels<'a> {
        Pixels { rgb, width: size as usize, height: size as usize, region: photo.map(|v| v as usize) }
    }

    fn at(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// The region, clipped to the pixels (an inconsistent region is clipped, never read past).
    fn clipped_region(&self) -> [usize; 4] {
        let [x, y, w, h] = self.region;
        let (x, y) = (x.min(self.width), y.min(self.height));
        let (w, h) = (w.min(self.width - x), h.min(self.height - y));
        if self.rgb.len() < self.width * self.height * 3 {
            return [0, 0, 0, 0];
        }
        [x, y, w, h]
    }

    /// The median colour of the region's border: a catalog shot's background.
    fn border_colour(&self) -> [u8; 3] {
        let [x0, y0, w, h] = self.clipped_region();
        let mut channels: [Vec<u8>; 3] = Default::default();
        let mut push = |p: [u8; 3]| {
            for c in 0..3 {
                channels[c].push(p[c]);
            }
        };
        for x in x0..x0 + w {
            push(self.at(x, y0));
            push(self.at(x, y0 + h.saturating_sub(1)));
        }
        for y in y0..y0 + h {
            push(self.at(x0, y));
            push(self.at(x0 + w.saturating_sub(1), y));
        }
        channels.map(|mut values| {
            values.sort_unstable();
            values.get(values.len() / 2).copied().unwrap_or(255)
        })
    }
}

/// A catalog photo's colour, from the model's input pixels ([`describe_product`]).
pub fn of_product(pixels: &InputPixels) -> Option<ColourEstimate> {
    describe_product(Pixels::square(&pixels.rgb, pixels.size, pixels.photo))
}

/// Where a shopper's photo shows a product: the probability at a point (`x`, `y` fractions of
/// the pixels' width and height), as the catalog's learned foreground head reads it
/// ([`crate::localise::Localisation::foreground_map`]).
pub type Foreground<'a> = &'a dyn Fn(f32, f32) -> f32;

/// A shopper's photo's colour, from the model's input pixels, focused on `main` (the main
/// product's box as [`crate::localise`] gives it: fractions of the model's square) when one
/// was found, and weighted by `foreground` when the head is learned ([`describe_query`]).
pub fn of_query(pixels: &InputPixels, main: Option<[f32; 4]>, foreground: Option<Foreground<'_>>) -> Option<ColourEstimate> {
    let [px, py, pw, ph] = pixels.photo.map(|v| v as f32);
    let side = pixels.size as f32;
    let focus = main.map(|[x, y, w, h]| [(x * side - px) / pw.max(1.0), (y * side - py) / ph.max(1.0), w * side / pw.max(1.0), h * side / ph.max(1.0)]);
    describe_query(Pixels::square(&pixels.rgb, pixels.size, pixels.photo), focus, foreground)
}

/// A catalog shot's colour: its pixels that differ from the border's colour (the studio
/// background), or, when almost none do (a white shirt on white), all of them weighted
/// towards the centre.
pub fn describe_product(pixels: Pixels<'_>) -> Option<ColourEstimate> {
    let background = lab_of(pixels.border_colour());
    estimate(pixels, None, background, false, None)
}

/// A shopper's photo's colour: pixels inside `focus` (`[x, y, w, h]` fractions of the region:
/// where localisation found the main product) when given, else the whole photo; weighted
/// towards the focus's centre and away from the photo's border colour (the floor, the wall).
///
/// With a `foreground` map each pixel is also weighted by how likely its place is product and
/// how likely its colour is: the share of that colour's pixels the map puts on the product
/// (histogram back-projection). A cluttered floor has many colours besides the border's, and
/// the box around a product holds some of them; a colour found mostly off the product is
/// the floor's, wherever it shows. Measured on 1,000 painted perturbed queries: the colour read
/// is the painted one for 0.658 of one-colour photos against 0.625 with the box alone, and
/// clean queries are unchanged (0.964 against 0.966; docs/colour-study.md).
pub fn describe_query(pixels: Pixels<'_>, focus: Option<[f32; 4]>, foreground: Option<Foreground<'_>>) -> Option<ColourEstimate> {
    let background = lab_of(pixels.border_colour());
    let weighting = foreground.map(|at| PixelWeights { at, colours: back_projection(pixels, at) });
    estimate(pixels, focus, background, true, weighting.as_ref())
}

/// Levels per RGB channel of the colours [`back_projection`] tells apart: 8 (512 colours) is
/// coarse enough for JPEG noise and shading to stay in one colour on about 3,000 samples;
/// 4 and 16 measured the same.
const BACK_PROJECTION_LEVELS: usize = 8;

/// A pixel's weight from a foreground map: its place's probability times its colour's.
struct PixelWeights<'a> {
    at: Foreground<'a>,
    /// Per quantised colour ([`quantised`]), the share of its weight that lies on the product.
    colours: Vec<f32>,
}

impl PixelWeights<'_> {
    fn of(&self, pixels: &Pixels<'_>, x: usize, y: usize, rgb: [u8; 3]) -> f32 {
        let place = (self.at)((x as f32 + 0.5) / pixels.width as f32, (y as f32 + 0.5) / pixels.height as f32).clamp(0.0, 1.0);
        place * self.colours.get(quantised(rgb)).copied().unwrap_or(1.0)
    }
}

/// For every quantised colour, how much more it belongs to the product than to the rest of
/// the photo: its share of the foreground's colours over the sum of that and its share of the
/// background's (0.5 for a colour found equally in both, or in neither).
fn back_projection(pixels: Pixels<'_>, foreground_at: Foreground<'_>) -> Vec<f32> {
    let colours = BACK_PROJECTION_LEVELS.pow(3);
    let (mut on, mut off) = (vec![0f32; colours], vec![0f32; colours]);
    let [rx, ry, rw, rh] = pixels.clipped_region();
    let step = (rw.max(rh) / SAMPLES_PER_SIDE).max(1);
    for y in (ry..ry + rh).step_by(step) {
        for x in (rx..rx + rw).step_by(step) {
            let p = foreground_at((x as f32 + 0.5) / pixels.width as f32, (y as f32 + 0.5) / pixels.height as f32).clamp(0.0, 1.0);
            let c = quantised(pixels.at(x, y));
            on[c] += p;
            off[c] += 1.0 - p;
        }
    }
    let (on_total, off_total) = (on.iter().sum::<f32>().max(f32::MIN_POSITIVE), off.iter().sum::<f32>().max(f32::MIN_POSITIVE));
    on.iter()
        .zip(&off)
        .map(|(on, off)| {
            let (on, off) = (on / on_total, off / off_total);
            if on + off > 0.0 {
                on / (on + off)
            } else {
                0.5
            }
        })
        .collect()
}

/// A colour's index among [`BACK_PROJECTION_LEVELS`]³.
fn quantised(rgb: [u8; 3]) -> usize {
    let level = |v: u8| usize::from(v) * BACK_PROJECTION_LEVELS / 256;
    (level(rgb[0]) * BACK_PROJECTION_LEVELS + level(rgb[1])) * BACK_PROJECTION_LEVELS + level(rgb[2])
}

fn estimate(pixels: Pixels<'_>, focus: Option<[f32; 4]>, background: [f32; 3], centre_weighted: bool, weights: Option<&PixelWeights<'_>>) -> Option<ColourEstimate> {
    let [rx, ry, rw, rh] = pixels.clipped_region();
    if rw == 0 || rh == 0 {
        return None;
    }
    let [fx, fy, fw, fh] = focus.map_or([0.0, 0.0, 1.0, 1.0], |[x, y, w, h]| {
        let (x0, y0) = (x.clamp(0.0, 1.0), y.clamp(0.0, 1.0));
        [x0, y0, w.clamp(0.0, 1.0 - x0), h.clamp(0.0, 1.0 - y0)]
    });
    let x0 = (rx + (fx * rw as f32) as usize).min(rx + rw - 1);
    let y0 = (ry + (fy * rh as f32) as usize).min(ry + rh - 1);
    let w = ((fw * rw as f32).round() as usize).clamp(1, rx + rw - x0);
    let h = ((fh * rh as f32).round() as usize).clamp(1, ry + rh - y0);
    let step = (w.max(h) / SAMPLES_PER_SIDE).max(1);
    let table = table();

    // Sampled pixels with their table entries and two weights: how much product each is (by
    // its distance from the background colour), and how central (and, with a foreground map,
    // how likely its place and colour are product).
    let mut samples = Vec::with_capacity((w / step + 1) * (h / step + 1));
    let (mut foreground, mut count, mut greyscale) = (0.0f32, 0usize, true);
    for y in (y0..y0 + h).step_by(step) {
        for x in (x0..x0 + w).step_by(step) {
            let rgb = pixels.at(x, y);
            let entry = &table[table_index(rgb)];
            let distance = delta_e(&entry.lab, &background);
            let likely = weights.map_or(1.0, |w| w.of(&pixels, x, y, rgb));
            let centrality = likely
                * if centre_weighted {
                    // A Gaussian on the distance from the centre, in half-sides: 1 at the centre,
                    // 0.37 at the edge's midpoint.
                    let dx = (x as f32 + 0.5 - x0 as f32 - w as f32 / 2.0) / (w as f32 / 2.0);
                    let dy = (y as f32 + 0.5 - y0 as f32 - h as f32 / 2.0) / (h as f32 / 2.0);
                    (-(dx * dx + dy * dy)).exp()
                } else {
                    1.0
                };
            count += 1;
            greyscale &= rgb.iter().max().copied().unwrap_or(0) - rgb.iter().min().copied().unwrap_or(0) <= 2;
            samples.push((rgb, entry, distance, centrality));
        }
    }
    // How far from the background a pixel must be to count wholly as product: most of the
    // way to the product's own colour (the 90th percentile distance), so the pale fringe where
    // a product blends into its background does not count as a colour of its own.
    let mut distances: Vec<f32> = samples.iter().map(|s| s.2).collect();
    distances.sort_unstable_by(f32::total_cmp);
    let far = distances.get(distances.len() * 9 / 10).copied().unwrap_or(0.0);
    let threshold = FOREGROUND_DELTA_E.max(0.8 * far);
    for sample in &mut samples {
        sample.2 = ((sample.2 - threshold / 2.0) / (threshold / 2.0)).clamp(0.0, 1.0);
        foreground += sample.2;
    }
    let use_foreground = count > 0 && foreground / count as f32 >= MIN_FOREGROUND_SHARE;
    let weight = |product: f32, centrality: f32| if use_foreground { product * centrality } else { centrality };

    let mut histogram = [0f32; BINS];
    for &(_, entry, product, centrality) in &samples {
        let w = weight(product, centrality);
        for (h, s) in histogram.iter_mut().zip(&entry.soft) {
            *h += w * s;
        }
    }
    let descriptor = ColourDescriptor::from_histogram(&histogram)?;
    let name = descriptor.name();
    let dominant: Vec<bool> = PROTOTYPES.iter().map(|p| p.name == name).collect();
    // The swatch: the average of the pixels of the named colour (of all product pixels for
    // Multi), so a pale red shows pale.
    let (mut sum, mut total) = ([0f32; 3], 0f32);
    for &(rgb, entry, product, centrality) in &samples {
        let of_name: f32 = entry.soft.iter().zip(&dominant).filter(|(_, d)| **d).map(|(s, _)| s).sum();
        let w = weight(product, centrality) * if name == MULTI { 1.0 } else { of_name };
        for c in 0..3 {
            sum[c] += w * f32::from(rgb[c]);
        }
        total += w;
    }
    let rgb = if total > 0.0 { sum.map(|s| (s / total).round().clamp(0.0, 255.0) as u8) } else { [128, 128, 128] };
    Some(ColourEstimate { descriptor, name, rgb, greyscale })
}

/// Per quantised sRGB colour (5 bits a channel): its CIELAB value and its soft share of each
/// prototype. Built once (32,768 entries, a few milliseconds), so describing a photo costs a
/// lookup and 15 additions per sampled pixel.
struct TableEntry {
    lab: [f32; 3],
    soft: [f32; BINS],
}

fn table_index([r, g, b]: [u8; 3]) -> usize {
    (usize::from(r >> 3) << 10) | (usize::from(g >> 3) << 5) | usize::from(b >> 3)
}

fn table() -> &'static [TableEntry] {
    static TABLE: OnceLock<Vec<TableEntry>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let prototypes: Vec<[f32; 3]> = PROTOTYPES.iter().map(|c| lab_of(c.rgb)).collect();
        (0..32 * 32 * 32)
            .map(|i: usize| {
                // The centre of the quantisation cell.
                let channel = |shift: usize| (((i >> shift) & 31) as u8) << 3 | 4;
                let lab = lab_of([channel(10), channel(5), channel(0)]);
                let mut soft = [0f32; BINS];
                let distances: Vec<f32> = prototypes.iter().map(|p| delta_e(&lab, p)).collect();
                // Relative to the nearest prototype, so a pixel far from every prototype still
                // counts (for the nearest ones) instead of vanishing in underflow.
                let nearest = distances.iter().copied().fold(f32::INFINITY, f32::min);
                for (s, d) in soft.iter_mut().zip(&distances) {
                    *s = (-(d * d - nearest * nearest) / (2.0 * BIN_SIGMA * BIN_SIGMA)).exp();
                }
                let total: f32 = soft.iter().sum();
                soft.iter_mut().for_each(|s| *s /= total);
                TableEntry { lab, soft }
            })
            .collect()
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A `side` x `side` shot: a centred square of `colour` (shaded from 85 % to 100 %, as
    /// folds do) on `background`.
    pub(in crate::colour) fn shot(colour: [u8; 3], background: [u8; 3], side: usize) -> Vec<u8> {
        shaded_shot(colour, background, side, 0.85)
    }

    /// [`shot`] with the colour shaded from `darkest` to 100 %.
    fn shaded_shot(colour: [u8; 3], background: [u8; 3], side: usize, darkest: f32) -> Vec<u8> {
        let mut rgb = Vec::with_capacity(side * side * 3);
        for y in 0..side {
            for x in 0..side {
                let inside = (side / 4..side * 3 / 4).contains(&x) && (side / 5..side * 4 / 5).contains(&y);
                let shade = darkest + (1.0 - darkest) * (x % 7) as f32 / 6.0;
                let p = if inside { colour.map(|c| (f32::from(c) * shade) as u8) } else { background };
                rgb.extend_from_slice(&p);
            }
        }
        rgb
    }

    #[test]
    fn every_named_colour_is_named_itself_on_white_and_on_grey() {
        for colour in VOCABULARY {
            for background in [[255, 255, 255], [200, 200, 200]] {
                if colour.name == "White" && background == [255, 255, 255] {
                    continue; // covered below: no foreground at all
                }
                let rgb = shot(colour.rgb, background, 64);
                let found = describe_product(Pixels::whole(&rgb, 64, 64)).map(|e| e.name);
                assert_eq!(found, Some(colour.name), "on {background:?}");
            }
        }
    }

    #[test]
    fn a_white_shirt_on_white_is_white() {
        let rgb = shaded_shot([250, 250, 250], [255, 255, 255], 64, 0.95);
        assert_eq!(describe_product(Pixels::whole(&rgb, 64, 64)).map(|e| e.name), Some("White"));
    }

    #[test]
    fn shading_is_no_second_colour_but_black_and_white_are_two() {
        // A white shirt shaded in its folds (to 80 %) is part light grey; a black shoe with grey
        // highlights (a dark grey, 64, shaded to 30 %) is part black, part grey. Each is one colour,
        // named after its larger part.
        let share_of = |e: &ColourEstimate, name: &str| e.descriptor.name_shares()[VOCABULARY.iter().position(|c| c.name == name).expect("a name")];
        for (colour, background, darkest, name) in [([246, 246, 244], [0, 0, 0], 0.8, "White"), ([64, 64, 66], [255, 255, 255], 0.3, "Black")] {
            let rgb = shaded_shot(colour, background, 64, darkest);
            let found = describe_product(Pixels::whole(&rgb, 64, 64)).expect("a product");
            let (own, grey) = (share_of(&found, name), share_of(&found, "Grey"));
            assert!(own < DOMINANT_SHARE && own > grey && own + grey > DOMINANT_SHARE, "{name}: the largest share, not dominant alone ({own}, grey {grey})");
            assert_eq!(found.name, name);
        }
        // Black and white halves (on a colour far from both): two colours, not one shaded.
        let mut rgb = shot([22, 22, 24], [40, 120, 160], 64);
        for y in 0..64 {
            for x in 32..64 {
                let i = (y * 64 + x) * 3;
                if rgb[i..i + 3] != [40, 120, 160] {
                    rgb[i..i + 3].copy_from_slice(&[246, 246, 244]);
                }
            }
        }
        assert_eq!(describe_product(Pixels::whole(&rgb, 64, 64)).map(|e| e.name), Some(MULTI));
    }

    #[test]
    fn two_colours_in_halves_are_multi() {
        let mut rgb = shot(VOCABULARY[5].rgb, [255, 255, 255], 64);
        // Repaint the square's right half blue.
        for y in 0..64 {
            for x in 32..64 {
                let i = (y * 64 + x) * 3;
                if rgb[i..i + 3] != [255, 255, 255] {
                    rgb[i..i + 3].copy_from_slice(&VOCABULARY[4].rgb);
                }
            }
        }
        let found = describe_product(Pixels::whole(&rgb, 64, 64)).expect("a product");
        assert_eq!(found.name, MULTI);
        let main: Vec<&str> = found.descriptor.main_colours().into_iter().map(|(name, _)| name).collect();
        let mut sorted = main.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, ["Blue", "Red"], "its main colours are its two halves' ({main:?})");
    }

    #[test]
    fn similarity_is_one_for_the_same_colour_and_low_for_another() {
        let red = describe_product(Pixels::whole(&shot([215, 30, 40], [255; 3], 48), 48, 48)).map(|e| e.descriptor);
        let red2 = describe_product(Pixels::whole(&shot([200, 35, 35], [240; 3], 48), 48, 48)).map(|e| e.descriptor);
        let blue = describe_product(Pixels::whole(&shot([40, 105, 215], [255; 3], 48), 48, 48)).map(|e| e.descriptor);
        let (Some(red), Some(red2), Some(blue)) = (red, red2, blue) else { panic!("no descriptor") };
        assert!((red.similarity(&red) - 1.0).abs() < 1e-4);
        assert!(red.similarity(&red2) > 0.9, "{}", red.similarity(&red2));
        assert!(red.similarity(&blue) < 0.1, "{}", red.similarity(&blue));
        assert_eq!(ColourDescriptor::from_values(&red.values()).ok(), Some(red));
        assert!(ColourDescriptor::from_values(&[0.5; 7]).is_err());
        assert!(ColourDescriptor::from_values(&[f32::NAN; BINS]).is_err());
    }

    #[test]
    fn grey_photos_are_not_chromatic() {
        for grey in [20u8, 90, 128, 200, 245] {
            let rgb = shot([grey; 3], [255; 3], 32);
            let e = describe_product(Pixels::whole(&rgb, 32, 32));
            assert_eq!(e.map(|e| e.descriptor.is_chromatic()), Some(false), "grey {grey}");
        }
        let rgb = shot([40, 105, 215], [255; 3], 32);
        assert_eq!(describe_product(Pixels::whole(&rgb, 32, 32)).map(|e| e.descriptor.is_chromatic()), Some(true));
    }

    #[test]
    fn a_query_takes_the_colour_at_its_focus() {
        // Left half red, right half green, on a blue floor: the focus decides.
        let side = 64;
        let mut rgb = Vec::new();
        for y in 0..side {
            for x in 0..side {
                let p = if !(8..56).contains(&y) {
                    [40, 105, 215]
                } else if x < 32 {
                    [215, 30, 40]
                } else {
                    [35, 150, 65]
                };
                rgb.extend_from_slice(&p);
            }
        }
        let left = describe_query(Pixels::whole(&rgb, side, side), Some([0.05, 0.2, 0.4, 0.6]), None).map(|e| e.name);
        let right = describe_query(Pixels::whole(&rgb, side, side), Some([0.55, 0.2, 0.4, 0.6]), None).map(|e| e.name);
        assert_eq!((left, right), (Some("Red"), Some("Green")));
    }

    #[test]
    fn a_foreground_map_discounts_the_floors_colours_inside_the_box() {
        // A red product (the middle third) on a floor whose border is blue, with a green rug
        // under the product that the box around it takes in: the box alone reads red and
        // green; the map (product in the middle third) knows green lies mostly off the product.
        let side = 60;
        let mut rgb = Vec::new();
        for y in 0..side {
            for x in 0..side {
                let p = if (20..40).contains(&x) && (20..40).contains(&y) {
                    [215, 30, 40]
                } else if (6..54).contains(&x) && (6..54).contains(&y) {
                    [35, 150, 65]
                } else {
                    [40, 105, 215]
                };
                rgb.extend_from_slice(&p);
            }
        }
        let pixels = Pixels::whole(&rgb, side, side);
        let focus = Some([0.2, 0.2, 0.6, 0.6]);
        let on_product = |x: f32, y: f32| if (1.0 / 3.0..2.0 / 3.0).contains(&x) && (1.0 / 3.0..2.0 / 3.0).contains(&y) { 0.9 } else { 0.1 };
        let with_box = describe_query(pixels, focus, None).map(|e| e.name);
        let with_map = describe_query(pixels, focus, Some(&on_product)).map(|e| e.name);
        assert_eq!((with_box, with_map), (Some(MULTI), Some("Red")));
    }
}
