//! From uploaded bytes to the model's input tensor: decode with limits ([`decode`], in
//! decode.rs), orient, flatten alpha onto white, fit to a square, resize, normalise. Everything
//! that turns a photo into pixels for the model, or for the colour and localisation steps that
//! read the same pixels, goes through here, so that a catalog shot and a shopper's photo of the
//! same product are prepared alike.

mod decode;

pub use decode::{decode, decode_reduced, DecodeLimits, ImageError};

use std::borrow::Cow;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, RgbImage};

use crate::model::{Fit, InputSpec, Layout};

/// Converts any decoded image to 8-bit RGB, compositing transparency onto white.
///
/// Catalog product shots are photographed on white, so a transparent background (a cut-out PNG)
/// must become white too, not black (what dropping the alpha channel gives), or the same product
/// would look different in a cut-out and in a studio shot. Greyscale, 16-bit and float images
/// are converted to 8-bit RGB. (CMYK JPEGs are already RGB: the JPEG decoder converts them.)
pub fn to_rgb_on_white(img: &DynamicImage) -> RgbImage {
    rgb_on_white(img).into_owned()
}

/// [`to_rgb_on_white`], borrowing a photo that already is 8-bit RGB (most decoded JPEGs) instead
/// of copying all its pixels.
fn rgb_on_white(img: &DynamicImage) -> Cow<'_, RgbImage> {
    if let DynamicImage::ImageRgb8(rgb) = img {
        return Cow::Borrowed(rgb);
    }
    if !img.color().has_alpha() {
        return Cow::Owned(img.to_rgb8());
    }
    let rgba = img.to_rgba8();
    let mut out = RgbImage::new(rgba.width(), rgba.height());
    for (src, dst) in rgba.pixels().zip(out.pixels_mut()) {
        let [r, g, b, a] = src.0;
        let a = u32::from(a);
        // c * a + 255 * (1 - a), on the 0..255 scale, rounded.
        let blend = |c: u8| ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        dst.0 = [blend(r), blend(g), blend(b)];
    }
    Cow::Owned(out)
}

/// The photo on white, reduced so that its longer side is at most `max_side` (never enlarged),
/// by the same resizer as the model's input: for what needs the photo smaller than taken
/// (reading its edges, keeping it for a second look) at a fraction of the cost of
/// `image::imageops` on a full-size phone photo.
pub fn reduced(img: &DynamicImage, max_side: u32) -> RgbImage {
    let rgb = rgb_on_white(img);
    let (w, h) = rgb.dimensions();
    let long = w.max(h);
    if long <= max_side || w == 0 || h == 0 || max_side == 0 {
        return rgb.into_owned();
    }
    let scaled = |d: u32| ((f64::from(d) * f64::from(max_side) / f64::from(long)).round() as u32).clamp(1, max_side);
    let (nw, nh) = (scaled(w), scaled(h));
    let pixels = resize_u8(rgb.as_raw(), w, h, nw, nh, PixelType::U8x3, None);
    RgbImage::from_raw(nw, nh, pixels).expect("the resizer returns width * height * 3 bytes")
}

/// The longer side of [`jpeg_within`]'s copy where it fits at its first step.
pub const JPEG_COPY_SIDE: u32 = 640;

/// The photo as a JPEG of at most `max_bytes`: its longer side reduced to [`JPEG_COPY_SIDE`]
/// first, then step by step smaller (at lower quality) until it fits; `None` when not even
/// 96 px at quality 60 does. For a copy that must travel where the original cannot (a Qdrant
/// point's payload): large enough to show on a product page and to encode again at the
/// model's 224 px.
pub fn jpeg_within(img: &DynamicImage, max_bytes: usize) -> Option<Vec<u8>> {
    const STEPS: [(u32, u8); 6] = [(JPEG_COPY_SIDE, 85), (480, 85), (360, 80), (256, 75), (160, 70), (96, 60)];
    let mut photo = reduced(img, JPEG_COPY_SIDE);
    for (side, quality) in STEPS {
        if photo.width().max(photo.height()) > side {
            photo = reduced(&DynamicImage::ImageRgb8(photo), side);
        }
        let mut out = Vec::new();
        // `jpeg-encoder` rather than `image`'s encoder: on AVX2 it encodes a 640 px copy in about
        // a quarter of the time (2.1 against 8.5 ms), and with the 4:2:0 chroma of camera JPEGs
        // the copy is a sixth smaller (measured in the README, "Scaling out with Qdrant").
        let (width, height) = (u16::try_from(photo.width()).ok()?, u16::try_from(photo.height()).ok()?);
        jpeg_encoder::Encoder::new(&mut out, quality).encode(photo.as_raw(), width, height, jpeg_encoder::ColorType::Rgb).ok()?;
        if out.len() <= max_bytes {
            return Some(out);
        }
    }
    None
}

/// A part of the photo to search with, as fractions of its width and height (after EXIF
/// orientation, i.e. as the shopper sees it): the shopper's box around one item in a photo of a
/// whole outfit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crop {
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub height: f32,
}

impl Crop {
    /// A crop box, checked: the corner inside the image, a positive size, and the box within the
    /// image (up to rounding: a box ending at 1.0000001 is clamped).
    pub fn new(x: f32, y: f32, width: f32, height: f32) -> Result<Crop, String> {
        let all = [x, y, width, height];
        if all.iter().any(|v| !v.is_finite()) {
            return Err("crop values must be numbers".into());
        }
        if !(0.0..1.0).contains(&x) || !(0.0..1.0).contains(&y) {
            return Err(format!("crop corner ({x}, {y}) must lie inside the image: fractions from 0 to below 1"));
        }
        if width <= 0.0 || height <= 0.0 {
            return Err(format!("crop size {width}x{height} must be positive"));
        }
        if x + width > 1.001 || y + height > 1.001 {
            return Err(format!("crop box x={x} y={y} w={width} h={height} reaches outside the image (x + w and y + h must be at most 1)"));
        }
        Ok(Crop { x, y, width: width.min(1.0 - x), height: height.min(1.0 - y) })
    }

    /// The box grown by `fraction` of its own width and height on every side, clamped to the
    /// image.
    pub fn grown(&self, fraction: f32) -> Crop {
        let (x0, y0) = ((self.x - fraction * self.width).max(0.0), (self.y - fraction * self.height).max(0.0));
        let (x1, y1) = ((self.x + self.width * (1.0 + fraction)).min(1.0), (self.y + self.height * (1.0 + fraction)).min(1.0));
        Crop { x: x0, y: y0, width: x1 - x0, height: y1 - y0 }
    }

    /// Parses `x,y,w,h` (fractions 0..1 of the image).
    pub fn parse(text: &str) -> Result<Crop, String> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        let [x, y, w, h] = parts.as_slice() else {
            return Err(format!("crop {text:?} must be four numbers x,y,w,h (fractions 0..1 of the image)"));
        };
        let number = |s: &str| s.parse::<f32>().map_err(|_| format!("crop {text:?}: {s:?} is not a number"));
        Crop::new(number(x)?, number(y)?, number(w)?, number(h)?)
    }

    /// The cropped image, at least one pixel in each direction.
    pub fn apply(&self, image: &image::DynamicImage) -> image::DynamicImage {
        let (w, h) = (image.width(), image.height());
        let px = |f: f32, side: u32| ((f * side as f32).round() as u32).min(side.saturating_sub(1));
        let (x0, y0) = (px(self.x, w), px(self.y, h));
        let cw = ((self.width * w as f32).round() as u32).clamp(1, w - x0);
        let ch = ((self.height * h as f32).round() as u32).clamp(1, h - y0);
        image.crop_imm(x0, y0, cw, ch)
    }
}

/// Where a point of the model's square input (`x`, `y` as fractions of the square) lies in a
/// `width` x `height` photo, as fractions of the photo (outside 0..1 on the padding).
pub fn input_point_to_photo(x: f32, y: f32, width: u32, height: u32, fit: Fit) -> (f32, f32) {
    let InputSquare { w, h, side, left, top } = InputSquare::of(width, height, fit);
    ((left + x * side) / w, (top + y * side) / h)
}

/// Where the model's square input lies on a `w` x `h` photo, in photo pixels: its side and its
/// top-left corner (negative on the padding of a padded photo).
struct InputSquare {
    w: f32,
    h: f32,
    side: f32,
    left: f32,
    top: f32,
}

impl InputSquare {
    fn of(width: u32, height: u32, fit: Fit) -> InputSquare {
        let (w, h) = (width.max(1) as f32, height.max(1) as f32);
        let side = match fit {
            Fit::Pad => w.max(h),
            Fit::CenterCrop => w.min(h),
        };
        InputSquare { w, h, side, left: (w - side) / 2.0, top: (h - side) / 2.0 }
    }
}

/// The inverse of [`input_point_to_photo`]: where a point of the photo (fractions of it) lies
/// on the model's square input (fractions of the square).
pub fn photo_point_to_input(x: f32, y: f32, width: u32, height: u32, fit: Fit) -> (f32, f32) {
    let InputSquare { w, h, side, left, top } = InputSquare::of(width, height, fit);
    ((x * w - left) / side, (y * h - top) / side)
}

/// The part of a `width` x `height` photo that a box on the model's square input covers
/// (`[x, y, w, h]` fractions of that square, as [`crate::localise`] reports them), grown by
/// `margin` (a fraction of the square) on every side; `None` when it falls outside the photo.
pub fn input_box_to_crop(bounds: [f32; 4], margin: f32, width: u32, height: u32, fit: Fit) -> Option<Crop> {
    let [x, y, bw, bh] = bounds;
    let (x0, y0) = input_point_to_photo(x - margin, y - margin, width, height, fit);
    let (x1, y1) = input_point_to_photo(x + bw + margin, y + bh + margin, width, height, fit);
    let (x0, y0, x1, y1) = (x0.clamp(0.0, 1.0), y0.clamp(0.0, 1.0), x1.clamp(0.0, 1.0), y1.clamp(0.0, 1.0));
    if x1 <= x0 || y1 <= y0 || x0 >= 1.0 || y0 >= 1.0 {
        return None;
    }
    Crop::new(x0, y0, x1 - x0, y1 - y0).ok()
}

/// A decoded photo as the model's input: cropped to `crop` (the shopper's box) if given, alpha
/// composited on white, then resized and normalised as `input` says. The one way every photo
/// becomes a tensor: queries, catalog imports, evaluation and tuning.
pub fn prepare_image(image: &DynamicImage, crop: Option<Crop>, input: &InputSpec) -> Vec<f32> {
    input_pixels(image, crop, input).tensor(input)
}

/// The model's square input as 8-bit RGB, before normalising: what [`prepare_image`] feeds the
/// model, kept for what else is read from the same pixels (the product's colour, in
/// [`crate::colour`]) so the photo is resized once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputPixels {
    /// `size * size * 3` bytes, packed RGB.
    pub rgb: Vec<u8>,
    pub size: u32,
    /// The part of the square that is the photo, `[x, y, w, h]` in pixels (the rest is the
    /// white padding of [`Fit::Pad`]).
    pub photo: [u32; 4],
}

impl InputPixels {
    /// The model's input tensor from these pixels.
    pub fn tensor(&self, input: &InputSpec) -> Vec<f32> {
        normalise(&self.rgb, self.size, input)
    }
}

/// The shorter side a photo needs once decoded ([`decode_reduced`]) for search or import:
/// three times the model's input side, over the share of the photo a `crop` keeps. Every
/// later step reads the photo at the input size or below (the tilt at 192 px, the colour on the
/// input pixels, a wide photo's tiles at their own short side), and the margin keeps a product
/// a third of the photo wide (one of `items=all`'s crops) at its full input resolution.
pub fn needed_side(input: &InputSpec, crop: Option<Crop>) -> u32 {
    let share = crop.map_or(1.0, |c| c.width.min(c.height)).clamp(1e-3, 1.0);
    (3.0 * input.size as f32 / share).ceil() as u32
}

/// A decoded photo as the model's square input in 8-bit RGB: cropped to `crop` if given,
/// composited on white, resized (and padded) as `input` says.
pub fn input_pixels(image: &DynamicImage, crop: Option<Crop>, input: &InputSpec) -> InputPixels {
    match crop {
        Some(crop) => square_pixels(&rgb_on_white(&crop.apply(image)), input),
        None => square_pixels(&rgb_on_white(image), input),
    }
}

fn square_pixels(img: &RgbImage, input: &InputSpec) -> InputPixels {
    let size = input.size;
    if size == 0 {
        return InputPixels { rgb: Vec::new(), size, photo: [0; 4] };
    }
    match input.fit {
        Fit::Pad => {
            let (rgb, photo) = pad_resize(img, size);
            InputPixels { rgb, size, photo }
        }
        Fit::CenterCrop => InputPixels { rgb: crop_resize(img, size), size, photo: [0, 0, size, size] },
    }
}

/// Turns an RGB image into the model's input: `3 * size * size` floats, laid out as
/// `input.layout` says, each channel normalised as `(pixel / 255 - mean) / std`.
///
/// **[`Fit::Pad`]** (the default for the built-in models) pads the short side with white to a
/// square and resizes. Fashion photos are rarely square, and the alternatives both damage what
/// the search is about: stretching to a square distorts the garment's silhouette (a long dress
/// squeezed into a square looks like a skirt, a boot like a shoe), and centre-cropping cuts off
/// the ends (shoes, sleeves, hems, a bag's strap). Padding keeps the whole product and its
/// aspect ratio, on the white a catalog shot already has. (Implemented as resize-then-pad, which
/// gives the same picture without allocating the padded full-resolution square.)
///
/// **[`Fit::CenterCrop`]** resizes the short side to `size` and crops the centre: the ImageNet
/// evaluation convention, for models that expect it.
///
/// Resizing uses `fast_image_resize` (bilinear convolution, whose kernel widens when
/// downscaling, so large photos are properly anti-aliased), roughly ten times faster than
/// `image::imageops`.
pub fn prepare(img: &RgbImage, input: &InputSpec) -> Vec<f32> {
    let size = input.size;
    if size == 0 {
        return Vec::new();
    }
    normalise(&square_pixels(img, input).rgb, size, input)
}

/// Decodes, composites onto white and prepares in one step.
pub fn prepare_bytes(bytes: &[u8], input: &InputSpec, limits: &DecodeLimits) -> Result<Vec<f32>, ImageError> {
    let image = decode(bytes, limits)?;
    Ok(prepare(&to_rgb_on_white(&image), input))
}

/// The image as greyscale (transparency on white), resized to `side` x `side` without padding,
/// values in 0..1: the input of the raw-pixel baseline in [`crate::eval`].
pub fn greyscale_pixels(img: &DynamicImage, side: u32) -> Vec<f32> {
    if side == 0 {
        return Vec::new();
    }
    let grey = DynamicImage::ImageRgb8(to_rgb_on_white(img)).to_luma8();
    let pixels = if grey.width() == 0 || grey.height() == 0 {
        vec![255u8; (side as usize) * (side as usize)]
    } else {
        resize_u8(grey.as_raw(), grey.width(), grey.height(), side, side, PixelType::U8, None)
    };
    pixels.into_iter().map(|p| f32::from(p) / 255.0).collect()
}

const WHITE: u8 = 255;

fn bilinear() -> ResizeOptions {
    ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
}

/// Resizes packed 8-bit pixels of `pixel_type`. The buffers are built here from well-formed
/// `image` buffers, so the resizer's only failure modes (size or pixel type mismatch) cannot
/// occur.
fn resize_u8(src: &[u8], width: u32, height: u32, dst_width: u32, dst_height: u32, pixel_type: PixelType, options: Option<ResizeOptions>) -> Vec<u8> {
    let src = ImageRef::new(width, height, src, pixel_type).expect("buffer of a well-formed image matches its size");
    let mut dst = Image::new(dst_width, dst_height, pixel_type);
    let options = options.unwrap_or_else(bilinear);
    Resizer::new().resize(&src, &mut dst, &options).expect("source and destination have the same pixel type");
    dst.into_vec()
}

/// Fits the whole image into a `size` square, centred, padding with white; also returns where
/// the image lies in the square (`[x, y, w, h]` pixels).
fn pad_resize(img: &RgbImage, size: u32) -> (Vec<u8>, [u32; 4]) {
    let side = size as usize;
    let mut canvas = vec![WHITE; side * side * 3];
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return (canvas, [0, 0, 0, 0]);
    }
    let long = f64::from(w.max(h));
    let scaled = |d: u32| ((f64::from(d) * f64::from(size) / long).round() as u32).clamp(1, size);
    let (nw, nh) = (scaled(w), scaled(h));
    let resized = if (nw, nh) == (w, h) { img.as_raw().clone() } else { resize_u8(img.as_raw(), w, h, nw, nh, PixelType::U8x3, None) };
    let (x0, y0) = (((size - nw) / 2) as usize, ((size - nh) / 2) as usize);
    let row = nw as usize * 3;
    for (y, src_row) in resized.chunks_exact(row).enumerate() {
        let start = ((y0 + y) * side + x0) * 3;
        canvas[start..start + row].copy_from_slice(src_row);
    }
    (canvas, [x0 as u32, y0 as u32, nw, nh])
}

/// Resizes the short side to `size` and keeps the centre square.
fn crop_resize(img: &RgbImage, size: u32) -> Vec<u8> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return vec![WHITE; (size as usize) * (size as usize) * 3];
    }
    resize_u8(img.as_raw(), w, h, size, size, PixelType::U8x3, Some(bilinear().fit_into_destination(Some((0.5, 0.5)))))
}

/// Packed RGB (`size * size * 3` bytes) to normalised floats in the model's layout.
fn normalise(rgb: &[u8], size: u32, input: &InputSpec) -> Vec<f32> {
    // One lookup table per channel: exactly `(p / 255 - mean) / std`, without a division per value.
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (p, v) in table.iter_mut().enumerate() {
            *v = (p as f32 / 255.0 - input.mean[c]) / input.std[c];
        }
    }
    let n = (size as usize) * (size as usize);
    let mut out = vec![0f32; 3 * n];
    match input.layout {
        Layout::Nhwc => {
            for (i, (o, &p)) in out.iter_mut().zip(rgb).enumerate() {
                *o = lut[i % 3][usize::from(p)];
            }
        }
        Layout::Nchw => {
            let (r, rest) = out.split_at_mut(n);
            let (g, b) = rest.split_at_mut(n);
            for (i, px) in rgb.chunks_exact(3).enumerate() {
                r[i] = lut[0][usize::from(px[0])];
                g[i] = lut[1][usize::from(px[1])];
                b[i] = lut[2][usize::from(px[2])];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use image::{GrayAlphaImage, ImageFormat, LumaA, Rgb, Rgba, RgbaImage};

    use super::decode::tests::{encode, gradient, jpeg};
    use super::*;

    #[test]
    fn a_reduced_photo_keeps_its_shape_on_white_and_is_never_enlarged() {
        let photo = DynamicImage::ImageRgba8(RgbaImage::from_fn(1200, 600, |x, _| if x < 600 { Rgba([200, 30, 30, 255]) } else { Rgba([0, 0, 0, 0]) }));
        let small = reduced(&photo, 192);
        assert_eq!(small.dimensions(), (192, 96));
        // Opaque red stays red, transparent becomes white (as for the model's input).
        assert_eq!(small.get_pixel(20, 48).0, [200, 30, 30]);
        assert_eq!(small.get_pixel(170, 48).0, [255, 255, 255]);
        let tall = DynamicImage::ImageRgb8(RgbImage::new(90, 300));
        assert_eq!(reduced(&tall, 100).dimensions(), (30, 100));
        assert_eq!(reduced(&tall, 400).dimensions(), (90, 300));
    }

    #[test]
    fn a_jpeg_within_a_size_is_the_photo_reduced_until_it_fits() {
        // Noise does not compress: 900x600 of it needs several steps to fit 64 KiB.
        let mut state = 12345u32;
        let mut noise = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        };
        let photo = DynamicImage::ImageRgb8(RgbImage::from_fn(900, 600, |_, _| Rgb([noise(), noise(), noise()])));
        let copy = jpeg_within(&photo, 64 * 1024).expect("a copy that fits");
        assert!(copy.len() <= 64 * 1024, "{} bytes", copy.len());
        let read = decode(&copy, &DecodeLimits::default()).expect("the copy decodes");
        let (w, h) = (read.width(), read.height());
        assert!(w < 640 && w * 2 == h * 3, "{w}x{h}: smaller than the first step, the same shape");
        // A plain photo fits at the first step: 640 px on its longer side.
        let plain = DynamicImage::ImageRgb8(RgbImage::from_pixel(1200, 1600, Rgb([180, 40, 40])));
        let copy = decode(&jpeg_within(&plain, 64 * 1024).expect("fits"), &DecodeLimits::default()).expect("decodes");
        assert_eq!((copy.width(), copy.height()), (480, 640));
        let px = copy.to_rgb8().get_pixel(240, 320).0;
        assert!(px.iter().zip([180u8, 40, 40]).all(|(a, b)| a.abs_diff(b) <= 3), "{px:?}: the colour survives");
        assert_eq!(jpeg_within(&photo, 100), None, "nothing fits 100 bytes");
    }

    #[test]
    fn photo_and_input_points_map_back_and_forth() {
        for fit in [Fit::Pad, Fit::CenterCrop] {
            for (width, height) in [(480, 240), (300, 400), (200, 200)] {
                let (ix, iy) = photo_point_to_input(0.3, 0.7, width, height, fit);
                let (px, py) = input_point_to_photo(ix, iy, width, height, fit);
                assert!((px - 0.3).abs() < 1e-5 && (py - 0.7).abs() < 1e-5, "{fit:?} {width}x{height}: {px} {py}");
            }
        }
        // A 2:1 photo padded to a square fills its middle half, top to bottom.
        assert_eq!(photo_point_to_input(0.0, 0.0, 480, 240, Fit::Pad), (0.0, 0.25));
        assert_eq!(photo_point_to_input(1.0, 1.0, 480, 240, Fit::Pad), (1.0, 0.75));
    }

    fn spec(size: u32, layout: Layout, fit: Fit) -> InputSpec {
        InputSpec { name: "input".to_string(), size, layout, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], fit }
    }

    fn white_value(input: &InputSpec, c: usize) -> f32 {
        (1.0 - input.mean[c]) / input.std[c]
    }

    #[test]
    fn grey_alpha_png_is_composited_on_white() {
        let img = GrayAlphaImage::from_fn(3, 1, |x, _| match x {
            0 => LumaA([0, 0]),   // fully transparent black: white
            1 => LumaA([0, 255]), // opaque black: black
            _ => LumaA([0, 128]), // half-transparent black: mid grey
        });
        let bytes = encode(&DynamicImage::ImageLumaA8(img), ImageFormat::Png);
        let rgb = to_rgb_on_white(&decode(&bytes, &DecodeLimits::default()).unwrap());
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [0, 0, 0]);
        assert_eq!(rgb.get_pixel(2, 0).0, [127, 127, 127]);
    }

    #[test]
    fn float_images_are_converted() {
        let img = image::Rgb32FImage::from_pixel(2, 2, Rgb([1.0, 0.5, 0.0]));
        let p = to_rgb_on_white(&DynamicImage::ImageRgb32F(img)).get_pixel(1, 1).0;
        assert_eq!(p[0], 255);
        assert!(p[1].abs_diff(128) <= 1);
        assert_eq!(p[2], 0);
    }

    #[test]
    fn wide_image_is_padded_with_white() {
        let red = RgbImage::from_pixel(200, 100, Rgb([255, 0, 0]));
        let input = spec(64, Layout::Nchw, Fit::Pad);
        let x = prepare(&red, &input);
        assert_eq!(x.len(), 3 * 64 * 64);
        let at = |c: usize, y: usize, xx: usize| x[c * 64 * 64 + y * 64 + xx];
        // 200x100 fits as 64x32, centred: rows 0..16 and 48..64 are padding.
        for y in (0..16).chain(48..64) {
            for xx in 0..64 {
                for c in 0..3 {
                    assert!((at(c, y, xx) - white_value(&input, c)).abs() < 1e-6, "({c},{y},{xx}) is not white");
                }
            }
        }
        let red_value = |c: usize| ((if c == 0 { 1.0 } else { 0.0 }) - input.mean[c]) / input.std[c];
        for y in 17..47 {
            for c in 0..3 {
                assert!((at(c, y, 32) - red_value(c)).abs() < 1e-3, "({c},{y},32) is not red");
            }
        }
    }

    #[test]
    fn tall_image_is_padded_left_and_right() {
        let blue = RgbImage::from_pixel(50, 100, Rgb([0, 0, 255]));
        let input = spec(32, Layout::Nhwc, Fit::Pad);
        let x = prepare(&blue, &input);
        let at = |y: usize, xx: usize, c: usize| x[(y * 32 + xx) * 3 + c];
        assert!((at(16, 0, 2) - white_value(&input, 2)).abs() < 1e-6);
        assert!((at(16, 31, 0) - white_value(&input, 0)).abs() < 1e-6);
        assert!((at(16, 16, 0) - (0.0 - input.mean[0]) / input.std[0]).abs() < 1e-3);
    }

    #[test]
    fn center_crop_keeps_the_middle() {
        // Blue | red | blue thirds; the centre crop of a 300x100 image is the red third.
        let img = RgbImage::from_fn(300, 100, |x, _| if (100..200).contains(&x) { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) });
        let input = spec(20, Layout::Nchw, Fit::CenterCrop);
        let x = prepare(&img, &input);
        assert_eq!(x.len(), 3 * 20 * 20);
        let red = (1.0 - input.mean[0]) / input.std[0];
        let blue = (0.0 - input.mean[0]) / input.std[0];
        // The outermost columns may blend in a little blue: the filter's support reaches past the
        // crop box, as it would when cropping the full-resolution image.
        for y in 0..20 {
            for xx in 1..19 {
                let v = x[y * 20 + xx];
                assert!((v - red).abs() < 1e-3, "({y},{xx}) of the red plane is {v}");
            }
            assert!(x[y * 20] > (red + blue) / 2.0, "edge column is mostly red");
        }
    }

    #[test]
    fn nhwc_and_nchw_hold_the_same_values_permuted() {
        let img = gradient(90, 60);
        for fit in [Fit::Pad, Fit::CenterCrop] {
            let nchw = prepare(&img, &spec(48, Layout::Nchw, fit));
            let nhwc = prepare(&img, &spec(48, Layout::Nhwc, fit));
            assert_eq!(nchw.len(), nhwc.len());
            let n = 48 * 48;
            for i in 0..n {
                for c in 0..3 {
                    assert_eq!(nchw[c * n + i], nhwc[i * 3 + c]);
                }
            }
        }
    }

    #[test]
    fn normalisation_matches_the_formula() {
        let img = RgbImage::from_pixel(10, 10, Rgb([0, 127, 255]));
        let input = InputSpec { mean: [127.0 / 255.0; 3], std: [128.0 / 255.0; 3], ..spec(10, Layout::Nhwc, Fit::Pad) };
        let x = prepare(&img, &input);
        assert!((x[0] - (-127.0 / 128.0)).abs() < 1e-6);
        assert!(x[1].abs() < 1e-6);
        assert!((x[2] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn the_needed_side_is_three_inputs_over_the_crops_share() {
        let input = spec(224, Layout::Nchw, Fit::Pad);
        assert_eq!(needed_side(&input, None), 672);
        let crop = Crop { x: 0.1, y: 0.1, width: 0.5, height: 0.25 };
        assert_eq!(needed_side(&input, Some(crop)), 2688);
    }

    #[test]
    fn prepare_bytes_decodes_and_prepares() {
        let input = spec(32, Layout::Nchw, Fit::Pad);
        let x = prepare_bytes(&jpeg(&gradient(64, 48)), &input, &DecodeLimits::default()).unwrap();
        assert_eq!(x.len(), 3 * 32 * 32);
        assert!(x.iter().all(|v| v.is_finite()));
        assert!(matches!(prepare_bytes(b"hello", &input, &DecodeLimits::default()), Err(ImageError::UnsupportedFormat(_))));
    }

    #[test]
    fn greyscale_pixels_are_resized_and_in_range() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(56, 28, |x, _| if x < 28 { Rgb([0, 0, 0]) } else { Rgb([255, 255, 255]) }));
        let g = greyscale_pixels(&img, 28);
        assert_eq!(g.len(), 28 * 28);
        assert!(g.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(g[14 * 28 + 2] < 0.05 && g[14 * 28 + 25] > 0.95, "plain resize, no padding");
        // Transparent pixels count as white.
        let clear = DynamicImage::ImageRgba8(RgbaImage::from_pixel(4, 4, Rgba([0, 0, 0, 0])));
        assert!(greyscale_pixels(&clear, 2).iter().all(|&v| v == 1.0));
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let empty = RgbImage::new(0, 0);
        assert_eq!(prepare(&empty, &spec(8, Layout::Nchw, Fit::Pad)).len(), 3 * 64);
        assert_eq!(prepare(&empty, &spec(8, Layout::Nchw, Fit::CenterCrop)).len(), 3 * 64);
        assert!(prepare(&gradient(4, 4), &spec(0, Layout::Nchw, Fit::Pad)).is_empty());
        // A 1-pixel-high strip still fills one row of the square.
        let strip = RgbImage::from_pixel(1000, 1, Rgb([0, 0, 0]));
        assert_eq!(prepare(&strip, &spec(16, Layout::Nhwc, Fit::Pad)).len(), 3 * 256);
        assert_eq!(prepare(&strip, &spec(16, Layout::Nhwc, Fit::CenterCrop)).len(), 3 * 256);
    }

    #[test]
    fn sample_photos_decode() {
        let Some(home) = std::env::var_os("HOME") else { return };
        let dir = std::path::Path::new(&home).join(".cache/lookalike/samples");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            eprintln!("no samples in {}, skipping", dir.display());
            return;
        };
        let input = spec(224, Layout::Nchw, Fit::Pad);
        let mut decoded = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let bytes = std::fs::read(&path).unwrap();
            let img = match decode(&bytes, &DecodeLimits::default()) {
                Ok(img) => img,
                // multipage_rgb.tif holds 64-bit float samples, which the TIFF decoder does not
                // read: that must be a clean "unsupported", never a panic or a corrupt image.
                Err(ImageError::UnsupportedFormat(what)) if path.extension().is_some_and(|e| e == "tif") => {
                    eprintln!("{}: unsupported: {what}", path.display());
                    continue;
                }
                Err(e) => panic!("{}: {e}", path.display()),
            };
            let x = prepare(&to_rgb_on_white(&img), &input);
            assert_eq!(x.len(), 3 * 224 * 224);
            assert!(x.iter().all(|v| v.is_finite()), "{}", path.display());
            decoded += 1;
        }
        eprintln!("decoded {decoded} sample images");
        if dir.join("chelsea.png").is_file() {
            let chelsea = decode(&std::fs::read(dir.join("chelsea.png")).unwrap(), &DecodeLimits::default()).unwrap();
            assert_eq!((chelsea.width(), chelsea.height()), (451, 300));
        }
    }

    /// `cargo test --lib preprocess::tests::timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn timing_decode_and_prepare_1000x800_jpeg() {
        let photo = RgbImage::from_fn(1000, 800, |x, y| {
            let n = (x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503)) % 32;
            Rgb([((x / 4) as u8).wrapping_add(n as u8), ((y / 4) as u8).wrapping_add(n as u8), ((x + y) / 8) as u8])
        });
        let bytes = jpeg(&photo);
        let input = spec(224, Layout::Nchw, Fit::Pad);
        let mut times = Vec::new();
        let mut split = (Vec::new(), Vec::new());
        for _ in 0..50 {
            let t0 = std::time::Instant::now();
            let img = decode(&bytes, &DecodeLimits::default()).unwrap();
            let t1 = std::time::Instant::now();
            let x = prepare(&to_rgb_on_white(&img), &input);
            let t2 = std::time::Instant::now();
            assert_eq!(x.len(), 3 * 224 * 224);
            times.push(t2 - t0);
            split.0.push(t1 - t0);
            split.1.push(t2 - t1);
        }
        times.sort();
        split.0.sort();
        split.1.sort();
        eprintln!("1000x800 JPEG ({} bytes) -> 224: median {:?} (decode {:?}, rgb+resize+normalise {:?})", bytes.len(), times[25], split.0[25], split.1[25]);
    }

    #[test]
    fn boxes_on_the_padded_input_map_back_to_the_photo() {
        // A 200x100 photo padded to a 200x200 square: its rows sit from 0.25 to 0.75.
        let crop = input_box_to_crop([0.5, 0.25, 0.5, 0.5], 0.0, 200, 100, Fit::Pad).expect("inside");
        assert_eq!((crop.x, crop.y, crop.width, crop.height), (0.5, 0.0, 0.5, 1.0));
        let grown = input_box_to_crop([0.25, 0.25, 0.5, 0.25], 0.05, 200, 100, Fit::Pad).expect("inside");
        assert!((grown.x - 0.2).abs() < 1e-6 && (grown.width - 0.6).abs() < 1e-6, "{grown:?}");
        assert!(input_box_to_crop([0.0, 0.0, 1.0, 0.2], 0.0, 200, 100, Fit::Pad).is_none(), "only padding");
    }

    #[test]
    fn crop_parses_fractions_and_rejects_boxes_outside_the_image() {
        assert_eq!(Crop::parse("0.1, 0.2, 0.5, 0.6"), Ok(Crop { x: 0.1, y: 0.2, width: 0.5, height: 0.6 }));
        let clamped = Crop::parse("0.5,0.5,0.5000001,0.5").expect("rounding is tolerated");
        assert!(clamped.x + clamped.width <= 1.0);
        for bad in ["", "1,2,3", "a,b,c,d", "0.5,0.5,0.9,0.1", "-0.1,0,0.5,0.5", "1,0,0.5,0.5", "0,0,0,0.5", "NaN,0,0.5,0.5"] {
            assert!(Crop::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn crop_cuts_the_requested_part_and_never_an_empty_image() {
        let image = image::DynamicImage::new_rgb8(200, 100);
        let part = Crop::new(0.25, 0.5, 0.5, 0.5).expect("crop").apply(&image);
        assert_eq!((part.width(), part.height()), (100, 50));
        let sliver = Crop::new(0.999, 0.999, 0.001, 0.001).expect("crop").apply(&image);
        assert!(sliver.width() >= 1 && sliver.height() >= 1);
    }
}
