//! Shopper-photo perturbations for evaluation.
//!
//! Catalog shots are clean: one product, centred, plain background, studio light. Shoppers'
//! photos are not. `eval --perturb` passes every query through [`perturb`] (seeded, so runs are
//! comparable) to measure how much of the quality survives: the product is placed on a coloured
//! or cluttered background, cropped and rescaled, rotated a little, re-lit, blurred and
//! re-compressed as JPEG.

use image::{DynamicImage, GenericImageView, Rgb, RgbImage};
use rand::Rng;

/// Side the query is upscaled to before perturbing, so that small catalog images (Fashion-MNIST
/// is 28 px) are perturbed at a resolution a phone screenshot would have.
const WORK_SIDE: u32 = 160;

/// Applies a random, realistic combination of changes to `img`.
pub fn perturb(img: &DynamicImage, rng: &mut impl Rng) -> DynamicImage {
    let rgb = upscale(&img.to_rgb8());
    let placed = place_on_background(&rgb, rng);
    let cropped = random_crop(&placed, rng);
    let rotated = crate::straighten::rotate(&cropped, rng.random_range(-12.0f32..12.0));
    let mut lit = rotated;
    relight(&mut lit, rng.random_range(0.75f32..1.25), rng.random_range(0.7f32..1.3));
    let blurred = if rng.random_bool(0.5) { image::imageops::blur(&lit, rng.random_range(0.4f32..1.5)) } else { lit };
    recompress(&blurred, rng.random_range(30u8..80))
}

fn upscale(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    if w.max(h) >= WORK_SIDE {
        return img.clone();
    }
    let scale = WORK_SIDE as f32 / w.max(h) as f32;
    image::imageops::resize(img, ((w as f32 * scale) as u32).max(1), ((h as f32 * scale) as u32).max(1), image::imageops::FilterType::Triangle)
}

/// The colour most of the border has: the catalog shot's background. The median of each
/// channel, not the mean: a product that touches the border (a trouser spans its shot's whole
/// height) must not tint the background colour, or the background around it is pasted half
/// opaque.
fn border_colour(img: &RgbImage) -> [f32; 3] {
    let (w, h) = img.dimensions();
    let mut channels: [Vec<u8>; 3] = Default::default();
    for (x, y, p) in img.enumerate_pixels() {
        if x == 0 || y == 0 || x + 1 == w || y + 1 == h {
            for c in 0..3 {
                channels[c].push(p[c]);
            }
        }
    }
    channels.map(|mut values| {
        values.sort_unstable();
        values.get(values.len() / 2).map_or(0.0, |&v| f32::from(v))
    })
}

/// Cuts the product out of its plain background (alpha from the distance to the background
/// colour) and pastes it, scaled to 60-95 % of the frame, at a random place on a solid colour or
/// a clutter of overlapping rectangles.
fn place_on_background(img: &RgbImage, rng: &mut impl Rng) -> RgbImage {
    let (w, h) = img.dimensions();
    let side = w.max(h);
    let mut canvas = background(side, side, rng);
    let scale = rng.random_range(0.6f32..0.95);
    let (pw, ph) = (((w as f32 * scale) as u32).max(1), ((h as f32 * scale) as u32).max(1));
    let (ox, oy) = (rng.random_range(0..=side - pw), rng.random_range(0..=side - ph));
    paste(&mut canvas, img, ox, oy, pw, ph);
    canvas
}

/// A solid colour, or (half the time) a clutter of overlapping rectangles on it.
fn background(width: u32, height: u32, rng: &mut impl Rng) -> RgbImage {
    let mut canvas = RgbImage::from_pixel(width, height, Rgb([rng.random(), rng.random(), rng.random()]));
    if rng.random_bool(0.5) {
        for _ in 0..rng.random_range(4..12) {
            let colour = Rgb([rng.random(), rng.random(), rng.random()]);
            let (x0, y0) = (rng.random_range(0..width), rng.random_range(0..height));
            let (rw, rh) = (rng.random_range(width / 8..width / 2 + 1), rng.random_range(height / 8..height / 2 + 1));
            for y in y0..(y0 + rh).min(height) {
                for x in x0..(x0 + rw).min(width) {
                    canvas.put_pixel(x, y, colour);
                }
            }
        }
    }
    canvas
}

/// A shopper's photo of several products at once ("shop the look"): each of `products` cut
/// out of its plain background and placed side by side, in a row of equal slots with some
/// jitter, on one background; upscaled, perturbed like [`perturb`]'s placement (no rotation or
/// crop, so the boxes stay exact). Returns the photo and each product's box, as fractions
/// `[x, y, w, h]` of the photo: tight around the product as it shows (its pixels at least half
/// opaque), not the pasted rectangle, whose catalog background is cut away (a trouser is much
/// narrower than its square shot).
pub fn compose_scene(products: &[DynamicImage], rng: &mut impl Rng) -> (DynamicImage, Vec<[f32; 4]>) {
    let n = products.len().max(1) as u32;
    let (width, height) = (WORK_SIDE * n, WORK_SIDE * 3 / 2);
    let mut canvas = background(width, height, rng);
    let mut boxes = Vec::with_capacity(products.len());
    for (i, product) in products.iter().enumerate() {
        let rgb = upscale(&product.to_rgb8());
        let (w, h) = rgb.dimensions();
        let slot = WORK_SIDE;
        let scale = rng.random_range(0.7f32..0.9) * slot as f32 / w.max(h) as f32;
        let (pw, ph) = (((w as f32 * scale) as u32).clamp(1, slot), ((h as f32 * scale) as u32).clamp(1, height));
        let ox = i as u32 * slot + rng.random_range(0..=slot - pw);
        let oy = rng.random_range(0..=height - ph);
        let [x, y, w, h] = paste(&mut canvas, &rgb, ox, oy, pw, ph);
        boxes.push([x as f32 / width as f32, y as f32 / height as f32, w as f32 / width as f32, h as f32 / height as f32]);
    }
    relight(&mut canvas, rng.random_range(0.85f32..1.15), rng.random_range(0.85f32..1.15));
    (recompress(&canvas, rng.random_range(50u8..90)), boxes)
}

/// Cuts `img` out of its plain background (alpha from the distance to the border colour),
/// scales it to `pw` x `ph` and pastes it with its corner at (`ox`, `oy`). Returns the box, in
/// canvas pixels `[x, y, w, h]`, of the pixels pasted at least half opaque (the whole rectangle
/// when none is).
fn paste(canvas: &mut RgbImage, img: &RgbImage, ox: u32, oy: u32, pw: u32, ph: u32) -> [u32; 4] {
    let bg = border_colour(img);
    let product = image::imageops::resize(img, pw, ph, image::imageops::FilterType::Triangle);
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in product.enumerate_pixels() {
        let distance = (0..3).map(|c| (f32::from(p[c]) - bg[c]).abs()).fold(0.0, f32::max);
        let alpha = (distance / 48.0).clamp(0.0, 1.0);
        if alpha >= 0.5 {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
        let under = canvas.get_pixel(ox + x, oy + y);
        let mixed = Rgb([0, 1, 2].map(|c| (alpha * f32::from(p[c]) + (1.0 - alpha) * f32::from(under[c])) as u8));
        canvas.put_pixel(ox + x, oy + y, mixed);
    }
    if x0 > x1 {
        return [ox, oy, pw, ph];
    }
    [ox + x0, oy + y0, x1 - x0 + 1, y1 - y0 + 1]
}

/// Keeps a random 75-100 % of each side.
fn random_crop(img: &RgbImage, rng: &mut impl Rng) -> RgbImage {
    let (w, h) = img.dimensions();
    let (cw, ch) = (((w as f32 * rng.random_range(0.75f32..1.0)) as u32).max(1), ((h as f32 * rng.random_range(0.75f32..1.0)) as u32).max(1));
    let (x, y) = (rng.random_range(0..=w - cw), rng.random_range(0..=h - ch));
    img.view(x, y, cw, ch).to_image()
}

/// Scales brightness and contrast (around mid-grey).
fn relight(img: &mut RgbImage, brightness: f32, contrast: f32) {
    for p in img.pixels_mut() {
        for c in 0..3 {
            let v = (f32::from(p[c]) - 128.0) * contrast + 128.0;
            p[c] = (v * brightness).clamp(0.0, 255.0) as u8;
        }
    }
}

/// Encodes as JPEG at `quality` and decodes again: the artefacts of a forwarded photo.
fn recompress(img: &RgbImage, quality: u8) -> DynamicImage {
    let mut bytes = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality);
    if img.write_with_encoder(encoder).is_err() {
        return DynamicImage::ImageRgb8(img.clone());
    }
    image::load_from_memory(&bytes).unwrap_or_else(|_| DynamicImage::ImageRgb8(img.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn product() -> DynamicImage {
        // A white T-shape on black, like a Fashion-MNIST item.
        DynamicImage::ImageLuma8(image::GrayImage::from_fn(28, 28, |x, y| image::Luma([if y < 8 || (10..18).contains(&x) { 230 } else { 0 }])))
    }

    #[test]
    fn perturbation_is_seeded_and_changes_the_image() {
        let a = perturb(&product(), &mut rand::rngs::StdRng::seed_from_u64(1));
        let b = perturb(&product(), &mut rand::rngs::StdRng::seed_from_u64(1));
        let c = perturb(&product(), &mut rand::rngs::StdRng::seed_from_u64(2));
        assert_eq!(a.to_rgb8().as_raw(), b.to_rgb8().as_raw(), "same seed, same photo");
        assert_ne!(a.to_rgb8().as_raw(), c.to_rgb8().as_raw());
        assert!(a.width() >= 100 && a.height() >= 100, "upscaled before perturbing");
        // The background is no longer plain black.
        let corner = a.to_rgb8().get_pixel(0, 0).0;
        let others = (0..50u64).filter(|s| perturb(&product(), &mut rand::rngs::StdRng::seed_from_u64(*s)).to_rgb8().get_pixel(0, 0).0 != corner).count();
        assert!(others > 40);
    }

    #[test]
    fn scene_boxes_are_tight_around_what_shows() {
        // A narrow bar (a trouser) and the T-shape, side by side.
        let bar = DynamicImage::ImageLuma8(image::GrayImage::from_fn(28, 28, |x, _| image::Luma([if (11..17).contains(&x) { 230 } else { 0 }])));
        let (photo, boxes) = compose_scene(&[bar, product()], &mut rand::rngs::StdRng::seed_from_u64(3));
        assert_eq!((photo.width(), photo.height(), boxes.len()), (2 * WORK_SIDE, WORK_SIDE * 3 / 2, 2));
        let [bx, _, bw, bh] = boxes[0];
        let [tx, _, tw, th] = boxes[1];
        // The bar is 6/28 of its square shot wide: its box is far narrower than it is tall.
        assert!(bw * photo.width() as f32 * 3.0 < bh * photo.height() as f32, "bar box {:?}", boxes[0]);
        // The T-shape fills its shot's width: its box is about as wide as tall.
        let ratio = tw * photo.width() as f32 / (th * photo.height() as f32);
        assert!((0.8..1.25).contains(&ratio), "T box {:?}", boxes[1]);
        assert!(bx + bw <= 0.5 && tx >= 0.5, "each in its own half");
    }
}
