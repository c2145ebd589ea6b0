//! Colour: what colour a product is, from its own pixels, and how alike two colours are.
//!
//! A shape-only match gets colour wrong most visibly, and colour is what a shopper can always
//! name. Each photo gets a [`ColourDescriptor`]: a soft histogram over the named colours of
//! [`VOCABULARY`] in CIELAB (each pixel shares its weight between the prototypes near it, so a
//! red that is almost orange counts a little as orange), taken over the product's own pixels:
//! - a catalog shot's background is what its border has (its median colour); the product is
//!   what differs from it ([`describe_product`]);
//! - in a shopper's photo the product is where localisation found it, else near the centre;
//!   the photo's border colour is discounted the same way, and, where the learned head says
//!   which places are product, so are colours found mostly elsewhere ([`describe_query`]).
//!
//! Descriptors are stored as the square roots of the histogram's shares, so their dot product
//! is the Bhattacharyya coefficient (1 for the same colours, 0 for disjoint ones) and a
//! descriptor has unit length. The named colour is the histogram's dominant prototype, or
//! [`MULTI`] when no colour has most of the product.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use anyhow::{bail, Result};

use crate::catalog::SqliteCatalog;
use crate::index::Hit;
use crate::preprocess::InputPixels;
use crate::types::{Key, Metadata, COLOUR_COLUMNS, COMPUTED_COLOUR_COLUMN};

/// A colour shoppers name, with the sRGB value it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamedColour {
    pub name: &'static str,
    pub rgb: [u8; 3],
}

/// The named colours: the Fashion Product Images `baseColour` names most products carry, each
/// with a reference sRGB value. The values are spread so that a garment's own shading (10-15 %
/// darker in its folds) stays nearest its own name (`tests` check every one).
pub const VOCABULARY: [NamedColour; 15] = [
    NamedColour { name: "Black", rgb: [22, 22, 24] },
    NamedColour { name: "White", rgb: [246, 246, 244] },
    NamedColour { name: "Grey", rgb: [128, 128, 130] },
    NamedColour { name: "Navy Blue", rgb: [22, 32, 92] },
    NamedColour { name: "Blue", rgb: [40, 105, 215] },
    NamedColour { name: "Red", rgb: [215, 30, 40] },
    NamedColour { name: "Maroon", rgb: [105, 12, 32] },
    NamedColour { name: "Pink", rgb: [245, 150, 190] },
    NamedColour { name: "Green", rgb: [35, 150, 65] },
    NamedColour { name: "Olive", rgb: [115, 120, 40] },
    NamedColour { name: "Yellow", rgb: [245, 215, 45] },
    NamedColour { name: "Orange", rgb: [245, 125, 25] },
    NamedColour { name: "Brown", rgb: [120, 72, 40] },
    NamedColour { name: "Beige", rgb: [222, 202, 165] },
    NamedColour { name: "Purple", rgb: [120, 45, 155] },
];

/// The name of a product with no dominant colour (stripes, prints, two-tone).
pub const MULTI: &str = "Multi";

/// The histogram's bins: every named colour, and more shades of the greys, which span the
/// whole lightness range (a light grey would otherwise fall between white and beige, and
/// count as beige).
const PROTOTYPES: [NamedColour; 17] = {
    let mut all = [NamedColour { name: "", rgb: [0; 3] }; 17];
    let mut i = 0;
    while i < VOCABULARY.len() {
        all[i] = VOCABULARY[i];
        i += 1;
    }
    all[15] = NamedColour { name: "Grey", rgb: [190, 190, 192] };
    all[16] = NamedColour { name: "Grey", rgb: [76, 76, 78] };
    all
};

/// Dimensions of a [`ColourDescriptor`]: one per prototype.
pub const BINS: usize = PROTOTYPES.len();

/// Names without chroma: a product whose descriptor is mostly these is "grey" for
/// [`ColourDescriptor::is_chromatic`].
const ACHROMATIC: [&str; 3] = ["Black", "White", "Grey"];

/// A product is named after its dominant colour when that colour holds at least this share of
/// its pixels; below it, [`MULTI`] (two colours in equal parts hold about half each).
const DOMINANT_SHARE: f32 = 0.6;

/// Named colours that differ only in lightness, so that one product's own shading spans both:
/// a white shirt's folds read light grey, a black shoe's highlights dark grey. A product mostly
/// of two such neighbours is one colour, named after the larger, not [`MULTI`] (black and white
/// are no neighbours: black-and-white stripes stay `Multi`).
const SHADES_OF_ONE_COLOUR: [[&str; 2]; 2] = [["White", "Grey"], ["Grey", "Black"]];

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
    /// largest shares count together when they are [`SHADES_OF_ONE_COLOUR`].
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

/// The named colour `text` means (case and spacing ignored), or a message listing the names.
pub fn parse_name(text: &str) -> Result<&'static str, String> {
    let wanted: String = text.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_lowercase();
    VOCABULARY
        .iter()
        .map(|c| c.name)
        .chain([MULTI])
        .find(|name| name.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_lowercase() == wanted)
        .ok_or_else(|| format!("unknown colour {text:?}: use match, any or one of {}", names().join(", ")))
}

/// Every colour name, [`MULTI`] last.
pub fn names() -> Vec<&'static str> {
    VOCABULARY.iter().map(|c| c.name).chain([MULTI]).collect()
}

/// The reference sRGB of a named colour (any case), for a swatch.
pub fn reference_rgb(name: &str) -> Option<[u8; 3]> {
    VOCABULARY.iter().find(|c| c.name.eq_ignore_ascii_case(name)).map(|c| c.rgb)
}

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

/// sRGB (D65) to CIELAB.
pub fn lab_of(rgb: [u8; 3]) -> [f32; 3] {
    let linear = rgb.map(|c| {
        let c = f32::from(c) / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    });
    let [r, g, b] = linear;
    let x = (0.412_456_4 * r + 0.357_576_1 * g + 0.180_437_5 * b) / 0.950_47;
    let y = 0.212_672_9 * r + 0.715_152_2 * g + 0.072_175 * b;
    let z = (0.019_333_9 * r + 0.119_192 * g + 0.950_304_1 * b) / 1.088_83;
    let f = |t: f32| if t > 216.0 / 24389.0 { t.cbrt() } else { (24389.0 / 27.0 * t + 16.0) / 116.0 };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

fn delta_e(a: &[f32; 3], b: &[f32; 3]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `side` x `side` shot: a centred square of `colour` (shaded from 85 % to 100 %, as
    /// folds do) on `background`.
    fn shot(colour: [u8; 3], background: [u8; 3], side: usize) -> Vec<u8> {
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
        assert_eq!(describe_product(Pixels::whole(&rgb, 64, 64)).map(|e| e.name), Some(MULTI));
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

    #[test]
    fn names_parse_in_any_case_and_bad_ones_list_the_choices() {
        assert_eq!(parse_name("navy blue"), Ok("Navy Blue"));
        assert_eq!(parse_name("NavyBlue"), Ok("Navy Blue"));
        assert_eq!(parse_name("multi"), Ok(MULTI));
        let error = parse_name("chartreuse").unwrap_err();
        assert!(error.contains("Red") && error.contains("Navy Blue") && error.contains("match"), "{error}");
    }
}
