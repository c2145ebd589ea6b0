//! From uploaded bytes to the model's input tensor: decode (with limits), orient, flatten alpha
//! onto white, fit to a square, resize, normalise.
//!
//! Everything here treats its input as hostile: uploads are arbitrary bytes from shoppers, and a
//! catalog import runs over tens of thousands of files of varying quality. So decoding never
//! panics (errors are [`ImageError`] values a caller can report next to the file name), and
//! images whose header announces an absurd size are rejected before any pixel buffer is
//! allocated.

use std::borrow::Cow;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::model::{Fit, InputSpec, Layout};

/// Why an image could not be decoded. The messages describe the content only; a caller adds
/// the file name (or "upload").
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the file is empty")]
    Empty,
    /// The bytes are not one of the formats lookalike decodes; the string names what they look
    /// like instead (SVG, HEIC, PDF, text, ...), because "unsupported format" alone leaves a
    /// shopper guessing.
    #[error("unsupported format: {0} (lookalike reads JPEG, PNG, WebP, GIF, BMP and TIFF)")]
    UnsupportedFormat(String),
    /// The header announces more pixels than allowed; nothing was allocated for them.
    #[error("image is {width}x{height} pixels, more than the limit of {limit} pixels")]
    TooLarge { width: u32, height: u32, limit: u64 },
    /// The file itself is bigger than allowed (checked before looking at its content).
    #[error("file is {len} bytes, more than the limit of {limit} bytes")]
    FileTooLarge { len: usize, limit: usize },
    /// The format was recognised but the data is damaged or truncated.
    #[error("corrupt image: {0}")]
    Corrupt(String),
}

/// Upper bounds on what [`decode`] accepts.
///
/// Pixel count, not file size, is what costs memory: a 50 kB PNG can declare 20000x20000 pixels
/// (1.6 GB as RGBA) and a JPEG header can claim 65500x65500. The pixel limit is checked on the
/// header, before the decoder allocates the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted `width * height`.
    pub max_pixels: u64,
    /// Largest accepted encoded size in bytes.
    pub max_bytes: usize,
}

impl Default for DecodeLimits {
    /// 40 megapixels (above any phone camera or catalog shot, ~160 MB as RGBA8) and 50 MB.
    fn default() -> Self {
        DecodeLimits { max_pixels: 40_000_000, max_bytes: 50 * 1024 * 1024 }
    }
}

impl DecodeLimits {
    /// The equivalent limits for the `image` crate. Its width/height limits are per side, so
    /// they only bound the degenerate cases (a side longer than the pixel budget); the area
    /// check is ours, in [`decode`], right after the header is read. `max_alloc` bounds the
    /// decoders' own allocations: the output buffer at up to 16 bytes per pixel (RGBA f32)
    /// plus room for metadata chunks.
    fn to_image_limits(self) -> image::Limits {
        let side = u32::try_from(self.max_pixels).unwrap_or(u32::MAX);
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(side);
        limits.max_image_height = Some(side);
        limits.max_alloc = Some(self.max_pixels.saturating_mul(16).saturating_add(64 << 20));
        limits
    }

    fn check_area(&self, width: u32, height: u32) -> Result<(), ImageError> {
        if u64::from(width) * u64::from(height) > self.max_pixels {
            return Err(ImageError::TooLarge { width, height, limit: self.max_pixels });
        }
        Ok(())
    }
}

/// The formats [`decode`] accepts: what browsers upload and what catalogs ship.
const SUPPORTED: [ImageFormat; 6] = [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP, ImageFormat::Gif, ImageFormat::Bmp, ImageFormat::Tiff];

/// Decodes an image from its encoded bytes.
///
/// The format is recognised from the magic bytes, not from a file name or MIME type (uploads
/// lie about both). EXIF orientation is applied, so a portrait phone photo stored landscape
/// with "rotate 90°" in its metadata comes out portrait, as the shopper saw it. Animated GIFs
/// give their first frame.
///
/// Never panics: the decoders are well tested but run on arbitrary bytes, so a panic inside one
/// is caught and reported as [`ImageError::Corrupt`] rather than taking down a search server or
/// a catalog import.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<DynamicImage, ImageError> {
    decode_reduced(bytes, limits, u32::MAX)
}

/// [`decode`], but no larger than a shorter side of `short_side` pixels needs, where decoding
/// smaller is cheaper: a JPEG at least twice that size is decoded at 1/2, 1/4 or 1/8 of its size
/// inside the inverse DCT, which then computes one pixel per 2x2, 4x4 or 8x8 block instead of
/// every pixel, and the pixels never exist at full size. A phone photo (4032x3024) that every
/// later step reads at the model's 224 px decodes at 1008x756 in a fraction of the time (and
/// resizes from there in a sixteenth). Other formats, and JPEGs the scaling decoder does not
/// read (CMYK, 16-bit, or anything it refuses), decode in full as [`decode`] does.
pub fn decode_reduced(bytes: &[u8], limits: &DecodeLimits, short_side: u32) -> Result<DynamicImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::FileTooLarge { len: bytes.len(), limit: limits.max_bytes });
    }
    let format = sniff(bytes)?;
    match catch_unwind(AssertUnwindSafe(|| decode_as(bytes, format, limits, short_side))) {
        Ok(result) => result,
        Err(payload) => {
            let message =
                payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned()).unwrap_or_else(|| "unknown panic".to_string());
            Err(ImageError::Corrupt(format!("{} decoder failed: {message}", format_name(format))))
        }
    }
}

fn decode_as(bytes: &[u8], format: ImageFormat, limits: &DecodeLimits, short_side: u32) -> Result<DynamicImage, ImageError> {
    if format == ImageFormat::Jpeg {
        check_jpeg_complete(bytes)?;
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits.to_image_limits());
    // `into_decoder` reads only the header: the dimensions are known before any pixel buffer
    // exists, which is where oversized images are turned away.
    let mut decoder = reader.into_decoder().map_err(|e| map_image_error(e, bytes, format, limits))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt(format!("{} header declares {width}x{height} pixels", format_name(format))));
    }
    limits.check_area(width, height)?;
    // A damaged EXIF block should not cost the shopper their search: fall back to "as stored".
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let reduced = match format {
        ImageFormat::Jpeg => jpeg_reduction(width, height, short_side).and_then(|denominator| decode_jpeg_reduced(bytes, width, height, denominator)),
        _ => None,
    };
    let mut image = match reduced {
        Some(image) => image,
        None => DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(e, bytes, format, limits))?,
    };
    image.apply_orientation(orientation);
    Ok(image)
}

/// The largest of JPEG's DCT reductions (1/8, 1/4, 1/2) that keeps the shorter side of a
/// `width` x `height` picture at least `short_side` pixels; `None` when only the full size does.
fn jpeg_reduction(width: u32, height: u32, short_side: u32) -> Option<u32> {
    [8, 4, 2].into_iter().find(|d| width.min(height) / d >= short_side)
}

/// A JPEG decoded at 1/`denominator` of its `width` x `height` by `jpeg-decoder`, whose inverse
/// DCT can scale. `None` (the caller then decodes in full) for pixel formats other than 8-bit
/// grey or RGB, any error, a size other than the one asked for, or a panic in the decoder.
fn decode_jpeg_reduced(bytes: &[u8], width: u32, height: u32, denominator: u32) -> Option<DynamicImage> {
    let (w, h) = (width.div_ceil(denominator), height.div_ceil(denominator));
    let decode = || -> Option<DynamicImage> {
        let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
        let scaled = decoder.scale(u16::try_from(w).ok()?, u16::try_from(h).ok()?).ok()?;
        if (u32::from(scaled.0), u32::from(scaled.1)) != (w, h) {
            return None;
        }
        let pixels = decoder.decode().ok()?;
        match decoder.info()?.pixel_format {
            jpeg_decoder::PixelFormat::RGB24 => RgbImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgb8),
            jpeg_decoder::PixelFormat::L8 => image::GrayImage::from_raw(w, h, pixels).map(DynamicImage::ImageLuma8),
            _ => None,
        }
    };
    catch_unwind(AssertUnwindSafe(decode)).ok().flatten()
}

/// A JPEG cut short (an interrupted upload or copy) still decodes in the lenient mode decoders
/// use, with the missing rows filled with grey; its embedding would be that of a half-grey
/// picture. So the segment structure is walked to the end-of-image marker: headers by their
/// lengths, entropy-coded scans up to the next marker (inside scan data `FF` is always followed
/// by `00` or a restart marker). Whatever follows the end-of-image marker is ignored: phones
/// append data there (motion photos carry a whole video after the JPEG).
fn check_jpeg_complete(bytes: &[u8]) -> Result<(), ImageError> {
    if jpeg_reaches_end_marker(bytes) {
        Ok(())
    } else {
        Err(ImageError::Corrupt("JPEG data is truncated (the image data ends before the end-of-image marker)".to_string()))
    }
}

fn jpeg_reaches_end_marker(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
    loop {
        // Skip anything up to a marker prefix, then fill bytes (a run of FF).
        while i < bytes.len() && bytes[i] != 0xFF {
            i += 1;
        }
        while i < bytes.len() && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else { return false };
        i += 1;
        match marker {
            0xD9 => return true,
            // Markers without a length: TEM, restart markers, and a stuffed zero.
            0x00 | 0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(length) = bytes.get(i..i + 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) else {
            return false;
        };
        i += length;
        if i > bytes.len() {
            return false;
        }
        if marker == 0xDA {
            // Entropy-coded data runs until an FF that starts a marker other than a restart.
            loop {
                match (bytes.get(i), bytes.get(i + 1)) {
                    (Some(0xFF), Some(&next)) if next != 0x00 && next != 0xFF && !(0xD0..=0xD7).contains(&next) => break,
                    (Some(_), Some(_)) => i += 1,
                    _ => return false,
                }
            }
        }
    }
}

fn map_image_error(error: image::ImageError, bytes: &[u8], format: ImageFormat, limits: &DecodeLimits) -> ImageError {
    let name = format_name(format);
    match error {
        image::ImageError::Limits(_) => {
            // The decoder refused from the header; report the size it declared, if it can be read
            // without limits (reading dimensions allocates nothing for pixels).
            let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
            reader.no_limits();
            match catch_unwind(AssertUnwindSafe(|| reader.into_dimensions())) {
                Ok(Ok((width, height))) if u64::from(width) * u64::from(height) > limits.max_pixels => ImageError::TooLarge { width, height, limit: limits.max_pixels },
                _ => ImageError::Corrupt(format!("{name} needs more memory to decode than allowed: {error}")),
            }
        }
        image::ImageError::Unsupported(e) => ImageError::UnsupportedFormat(format!("this kind of {name} ({e})")),
        image::ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => ImageError::Corrupt(format!("{name} data is truncated")),
        other => ImageError::Corrupt(format!("{name}: {other}")),
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        ImageFormat::Avif => "AVIF",
        ImageFormat::Ico => "ICO",
        ImageFormat::Tga => "TGA",
        ImageFormat::Dds => "DDS",
        ImageFormat::Hdr => "Radiance HDR",
        ImageFormat::OpenExr => "OpenEXR",
        ImageFormat::Pnm => "PNM",
        ImageFormat::Farbfeld => "Farbfeld",
        ImageFormat::Qoi => "QOI",
        _ => "image",
    }
}

/// Recognises the format from the magic bytes, naming what was found when it is not one we
/// decode.
fn sniff(bytes: &[u8]) -> Result<ImageFormat, ImageError> {
    match image::guess_format(bytes) {
        Ok(format) if SUPPORTED.contains(&format) => Ok(format),
        Ok(format) => Err(ImageError::UnsupportedFormat(format_name(format).to_string())),
        Err(_) => Err(ImageError::UnsupportedFormat(describe_unknown(bytes))),
    }
}

/// Names common non-image (or not-decodable) uploads: phones send HEIC, designers send SVG and
/// PDF, scripts send HTML error pages.
fn describe_unknown(bytes: &[u8]) -> String {
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        let brand = &bytes[8..12];
        return match brand {
            b"heic" | b"heix" | b"hevc" | b"hevx" | b"heim" | b"heis" | b"mif1" | b"msf1" => "HEIC/HEIF".to_string(),
            b"avif" | b"avis" => "AVIF".to_string(),
            _ => format!("ISO media file (brand {:?}), e.g. a video", String::from_utf8_lossy(brand)),
        };
    }
    if bytes.starts_with(b"%PDF") {
        return "PDF".to_string();
    }
    if bytes.starts_with(&[0xFF, 0x0A]) || bytes.starts_with(b"\0\0\0\x0CJXL \r\n\x87\n") {
        return "JPEG XL".to_string();
    }
    if bytes.starts_with(b"PK\x03\x04") {
        return "ZIP archive".to_string();
    }
    if bytes.starts_with(b"RIFF") {
        return "RIFF file that is not WebP".to_string();
    }
    let head = &bytes[..bytes.len().min(1024)];
    let head = head.strip_prefix(&[0xEF, 0xBB, 0xBF][..]).unwrap_or(head);
    if looks_like_text(head) {
        let lower = String::from_utf8_lossy(head).trim_start().to_ascii_lowercase();
        if lower.contains("<svg") {
            return "SVG".to_string();
        }
        if lower.starts_with("<!doctype html") || lower.starts_with("<html") {
            return "HTML".to_string();
        }
        if lower.starts_with("<?xml") {
            return "XML".to_string();
        }
        return "text".to_string();
    }
    let hex: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("unrecognised data (starts with {})", hex.join(" "))
}

/// UTF-8 without control characters other than whitespace; a multi-byte character cut at the end
/// of the sample still counts as text.
fn looks_like_text(head: &[u8]) -> bool {
    let valid = match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(e) if e.error_len().is_none() => match std::str::from_utf8(&head[..e.valid_up_to()]) {
            Ok(s) => s,
            Err(_) => return false,
        },
        Err(_) => return false,
    };
    !valid.is_empty() && valid.chars().all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t' | '\x0C'))
}

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
    use image::{GrayAlphaImage, ImageBuffer, LumaA, Rgb, Rgba, RgbaImage};

    fn spec(size: u32, layout: Layout, fit: Fit) -> InputSpec {
        InputSpec { name: "input".to_string(), size, layout, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], fit }
    }

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, format).expect("encoding a test image");
        buf.into_inner()
    }

    /// A photo-like test picture: smooth gradients, so JPEG compresses it realistically.
    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, ((x + y) % 256) as u8]))
    }

    fn jpeg(img: &RgbImage) -> Vec<u8> {
        encode(&DynamicImage::ImageRgb8(img.clone()), ImageFormat::Jpeg)
    }

    fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
        chunk.extend_from_slice(kind);
        chunk.extend_from_slice(data);
        chunk.extend_from_slice(&crc.sum().to_be_bytes());
        chunk
    }

    /// A syntactically valid PNG whose header declares `w` x `h` RGB pixels but whose data is
    /// a few bytes: the decompression-bomb shape.
    fn png_claiming(w: u32, h: u32) -> Vec<u8> {
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, RGB, deflate, no filter, no interlace
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(png_chunk(b"IHDR", &ihdr));
        // Zeros for at most a few rows: enough for the small control case to be a valid image.
        let raw = vec![0u8; ((1 + 3 * w as usize) * h as usize).min(4096)];
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut z, &raw).unwrap();
        png.extend(png_chunk(b"IDAT", &z.finish().unwrap()));
        png.extend(png_chunk(b"IEND", &[]));
        png
    }

    /// Inserts an APP1 Exif segment with the given orientation tag right after SOI.
    fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = b"MM\0\x2A\0\0\0\x08".to_vec(); // big-endian TIFF header, IFD at offset 8
        tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes()); // count
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]); // value padding
        tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        let mut payload = b"Exif\0\0".to_vec();
        payload.extend(tiff);
        let mut out = jpeg[..2].to_vec(); // SOI
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        out.extend(payload);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    fn white_value(input: &InputSpec, c: usize) -> f32 {
        (1.0 - input.mean[c]) / input.std[c]
    }

    #[test]
    fn empty_input_is_empty_error() {
        assert!(matches!(decode(&[], &DecodeLimits::default()), Err(ImageError::Empty)));
    }

    #[test]
    fn truncated_jpeg_is_corrupt() {
        let bytes = jpeg(&gradient(320, 240));
        for cut in [bytes.len() / 2, bytes.len() - 2, 3, 100] {
            let result = decode(&bytes[..cut], &DecodeLimits::default());
            assert!(matches!(result, Err(ImageError::Corrupt(_))), "cut at {cut}: {result:?}");
        }
        // The intact file decodes.
        assert_eq!(decode(&bytes, &DecodeLimits::default()).unwrap().width(), 320);
    }

    #[test]
    fn jpeg_with_data_after_the_end_marker_decodes() {
        // Motion photos and some cameras append data after EOI; it may contain any bytes,
        // including what looks like JPEG markers.
        let mut bytes = jpeg(&gradient(64, 48));
        bytes.extend_from_slice(b"\0\0\0\x18ftypmp42\xFF\xDA\x00\x08junk\xFF\xD8\xFF\xDA\x00\x02");
        let img = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!((img.width(), img.height()), (64, 48));
    }

    #[test]
    fn garbage_after_a_valid_header_is_corrupt_not_a_panic() {
        let mut png = encode(&DynamicImage::ImageRgb8(gradient(64, 64)), ImageFormat::Png);
        let n = png.len();
        for b in &mut png[60..n - 20] {
            *b = b.wrapping_mul(31).wrapping_add(7);
        }
        assert!(matches!(decode(&png, &DecodeLimits::default()), Err(ImageError::Corrupt(_))));
    }

    #[test]
    fn non_images_are_named() {
        let cases: [(&[u8], &str); 7] = [
            (b"Size chart: S, M, L\nThanks for shopping!\n", "text"),
            (b"\xEF\xBB\xBF  <?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>", "SVG"),
            (b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n", "PDF"),
            (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic", "HEIC"),
            (b"\0\0\0\x1cftypavif\0\0\0\0avifmif1", "AVIF"),
            (b"<!DOCTYPE html><html><body>404</body></html>", "HTML"),
            (b"\x01\x02\x03\x04\x05\xff\xfe", "unrecognised"),
        ];
        for (bytes, expected) in cases {
            match decode(bytes, &DecodeLimits::default()) {
                Err(ImageError::UnsupportedFormat(what)) => assert!(what.contains(expected), "{what:?} should name {expected}"),
                other => panic!("{expected}: expected UnsupportedFormat, got {other:?}"),
            }
        }
    }

    #[test]
    fn png_claiming_20000_squared_is_rejected_from_the_header() {
        let bytes = png_claiming(20000, 20000);
        assert!(bytes.len() < 200);
        match decode(&bytes, &DecodeLimits::default()) {
            Err(ImageError::TooLarge { width: 20000, height: 20000, limit: 40_000_000 }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // The same construction at a small size is a valid (black) PNG: the check above is the
        // size limit, not a malformed file.
        let small = decode(&png_claiming(1, 1), &DecodeLimits::default()).unwrap();
        assert_eq!((small.width(), small.height()), (1, 1));
    }

    #[test]
    fn png_with_an_absurdly_long_side_is_rejected() {
        // 1 x 2^31 passes no per-side sanity a decoder might have; the area check catches it.
        match decode(&png_claiming(1, 1 << 31), &DecodeLimits::default()) {
            Err(ImageError::TooLarge { width: 1, height: 2147483648, .. }) => {}
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn jpeg_claiming_65500_squared_is_rejected_from_the_header() {
        let mut bytes = jpeg(&gradient(16, 16));
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline JPEG has SOF0");
        // SOF0: marker, length (2), precision (1), height (2), width (2).
        bytes[sof + 5..sof + 7].copy_from_slice(&65500u16.to_be_bytes());
        bytes[sof + 7..sof + 9].copy_from_slice(&65500u16.to_be_bytes());
        let started = std::time::Instant::now();
        match decode(&bytes, &DecodeLimits::default()) {
            Err(ImageError::TooLarge { width: 65500, height: 65500, .. }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(started.elapsed().as_secs() < 2, "rejection must not decode the pixels");
    }

    #[test]
    fn byte_and_pixel_limits_are_configurable() {
        let bytes = jpeg(&gradient(40, 30));
        let tight = DecodeLimits { max_pixels: 1000, max_bytes: 1 << 20 };
        assert!(matches!(decode(&bytes, &tight), Err(ImageError::TooLarge { width: 40, height: 30, limit: 1000 })));
        let small_files = DecodeLimits { max_pixels: 1 << 20, max_bytes: 10 };
        assert!(matches!(decode(&bytes, &small_files), Err(ImageError::FileTooLarge { limit: 10, .. })));
    }

    #[test]
    fn every_supported_format_round_trips() {
        let img = DynamicImage::ImageRgba8(RgbaImage::from_fn(24, 16, |x, _| Rgba([200, (x * 10) as u8, 30, 255])));
        for format in SUPPORTED {
            let source = if format == ImageFormat::Jpeg { DynamicImage::ImageRgb8(img.to_rgb8()) } else { img.clone() };
            let bytes = encode(&source, format);
            let decoded = decode(&bytes, &DecodeLimits::default()).unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!((decoded.width(), decoded.height()), (24, 16), "{format:?}");
            let rgb = to_rgb_on_white(&decoded);
            let p = rgb.get_pixel(5, 5).0;
            assert!(p[0].abs_diff(200) < 12 && p[2].abs_diff(30) < 12, "{format:?}: {p:?}");
        }
    }

    #[test]
    fn sixteen_bit_png_becomes_8_bit_rgb() {
        let img: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_pixel(8, 4, Rgb([65535, 32896, 0]));
        let bytes = encode(&DynamicImage::ImageRgb16(img), ImageFormat::Png);
        let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.color(), image::ColorType::Rgb16);
        assert_eq!(to_rgb_on_white(&decoded).get_pixel(3, 2).0, [255, 128, 0]);
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

    /// A photo-like picture: smooth colour gradients with a dark square in one corner.
    fn scene(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            if x < width / 4 && y < height / 4 {
                return Rgb([20, 30, 40]);
            }
            Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, ((x + y) * 127 / (width + height)) as u8 + 64])
        })
    }

    #[test]
    fn a_large_jpeg_decodes_reduced_to_what_is_needed_and_as_the_full_decode_looks() {
        let stored = scene(1600, 1200);
        let bytes = jpeg(&stored);
        let full = decode(&bytes, &DecodeLimits::default()).unwrap().to_rgb8();
        assert_eq!(full.dimensions(), (1600, 1200));
        // 1200 / 4 = 300 is enough for 300, not for 301 (then 1/2).
        for (side, expected) in [(300, (400, 300)), (301, (800, 600)), (600, (800, 600)), (601, (1600, 1200)), (100, (200, 150))] {
            let reduced = decode_reduced(&bytes, &DecodeLimits::default(), side).unwrap();
            assert_eq!((reduced.width(), reduced.height()), expected, "short side {side}");
        }
        // The reduced pixels are the full decode's, averaged over each 4x4 block.
        let reduced = decode_reduced(&bytes, &DecodeLimits::default(), 300).unwrap().to_rgb8();
        let averaged = image::imageops::resize(&full, 400, 300, image::imageops::FilterType::Triangle);
        let difference: f64 = reduced.as_raw().iter().zip(averaged.as_raw()).map(|(a, b)| f64::from(a.abs_diff(*b))).sum::<f64>() / reduced.as_raw().len() as f64;
        assert!(difference < 3.0, "mean difference {difference:.2} levels");
        assert!(reduced.get_pixel(20, 20).0[0] < 40 && reduced.get_pixel(390, 290).0[0] > 200, "the dark corner stays where it is");
    }

    #[test]
    fn reduced_decoding_keeps_the_orientation_and_leaves_other_formats_whole() {
        let stored = scene(1600, 800);
        let rotated = decode_reduced(&with_exif_orientation(&jpeg(&stored), 6), &DecodeLimits::default(), 200).unwrap();
        assert_eq!((rotated.width(), rotated.height()), (200, 400), "decoded at 1/4, then turned upright");
        let rgb = rotated.to_rgb8();
        assert!(rgb.get_pixel(190, 10).0[0] < 60, "the stored top-left corner is now top-right");
        let png = encode(&DynamicImage::ImageRgb8(stored), ImageFormat::Png);
        let whole = decode_reduced(&png, &DecodeLimits::default(), 200).unwrap();
        assert_eq!((whole.width(), whole.height()), (1600, 800));
        // Grey JPEGs reduce too; a small one stays whole.
        let grey = encode(&DynamicImage::ImageLuma8(image::GrayImage::from_fn(640, 480, |x, _| image::Luma([(x % 256) as u8]))), ImageFormat::Jpeg);
        let reduced = decode_reduced(&grey, &DecodeLimits::default(), 240).unwrap();
        assert_eq!((reduced.width(), reduced.height(), reduced.color()), (320, 240, image::ColorType::L8));
        assert_eq!(decode_reduced(&grey, &DecodeLimits::default(), 241).unwrap().width(), 640);
    }

    #[test]
    fn the_needed_side_is_three_inputs_over_the_crops_share() {
        let input = spec(224, Layout::Nchw, Fit::Pad);
        assert_eq!(needed_side(&input, None), 672);
        let crop = Crop { x: 0.1, y: 0.1, width: 0.5, height: 0.25 };
        assert_eq!(needed_side(&input, Some(crop)), 2688);
    }

    #[test]
    fn exif_orientation_6_rotates_clockwise() {
        // Left half black, right half white, 40x20 as stored. Orientation 6 means "rotate 90°
        // clockwise to display": the stored left column becomes the top row.
        let stored = RgbImage::from_fn(40, 20, |x, _| if x < 20 { Rgb([0, 0, 0]) } else { Rgb([255, 255, 255]) });
        let bytes = with_exif_orientation(&jpeg(&stored), 6);
        let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (20, 40));
        let rgb = to_rgb_on_white(&decoded);
        assert!(rgb.get_pixel(10, 5).0[0] < 40, "top should be black");
        assert!(rgb.get_pixel(10, 35).0[0] > 215, "bottom should be white");
        // Orientation 1 leaves it alone.
        let plain = decode(&with_exif_orientation(&jpeg(&stored), 1), &DecodeLimits::default()).unwrap();
        assert_eq!((plain.width(), plain.height()), (40, 20));
    }

    #[test]
    fn gif_gives_its_first_frame() {
        use image::codecs::gif::GifEncoder;
        use image::{Delay, Frame};
        let frame = |rgba: [u8; 4]| Frame::from_parts(RgbaImage::from_pixel(10, 8, Rgba(rgba)), 0, 0, Delay::from_numer_denom_ms(100, 1));
        let mut bytes = Vec::new();
        {
            let mut encoder = GifEncoder::new(&mut bytes);
            encoder.encode_frames([frame([255, 0, 0, 255]), frame([0, 0, 255, 255])]).unwrap();
        }
        let rgb = to_rgb_on_white(&decode(&bytes, &DecodeLimits::default()).unwrap());
        assert_eq!((rgb.width(), rgb.height()), (10, 8));
        let p = rgb.get_pixel(4, 4).0;
        assert!(p[0] > 200 && p[2] < 50, "first frame is red, got {p:?}");
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
