//! From uploaded bytes to the model's input tensor: decode (with limits), orient, flatten alpha
//! onto white, fit to a square, resize, normalise.
//!
//! Everything here treats its input as hostile: uploads are arbitrary bytes from shoppers, and a
//! catalog import runs over tens of thousands of files of varying quality. So decoding never
//! panics (errors are [`ImageError`] values a caller can report next to the file name), and
//! images whose header announces an absurd size are rejected before any pixel buffer is
//! allocated.

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
const SUPPORTED: [ImageFormat; 6] =
    [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP, ImageFormat::Gif, ImageFormat::Bmp, ImageFormat::Tiff];

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
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::FileTooLarge { len: bytes.len(), limit: limits.max_bytes });
    }
    let format = sniff(bytes)?;
    match catch_unwind(AssertUnwindSafe(|| decode_as(bytes, format, limits))) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(ImageError::Corrupt(format!("{} decoder failed: {message}", format_name(format))))
        }
    }
}

fn decode_as(bytes: &[u8], format: ImageFormat, limits: &DecodeLimits) -> Result<DynamicImage, ImageError> {
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
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(e, bytes, format, limits))?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// A JPEG cut short (an interrupted upload or copy) still decodes in the lenient mode decoders
/// use, with the missing rows filled with grey; its embedding would be that of a half-grey
/// picture. JPEG's end-of-image marker `FF D9` cannot occur inside entropy-coded data (a `FF`
/// byte there is always followed by `00` or a restart marker), so its absence after the last
/// start-of-scan marker means the file was truncated.
fn check_jpeg_complete(bytes: &[u8]) -> Result<(), ImageError> {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let complete = match last_sos {
        Some(sos) => bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    };
    if complete {
        Ok(())
    } else {
        Err(ImageError::Corrupt("JPEG data is truncated (no end-of-image marker after the image data)".to_string()))
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
                Ok(Ok((width, height))) if u64::from(width) * u64::from(height) > limits.max_pixels => {
                    ImageError::TooLarge { width, height, limit: limits.max_pixels }
                }
                _ => ImageError::Corrupt(format!("{name} needs more memory to decode than allowed: {error}")),
            }
        }
        image::ImageError::Unsupported(e) => ImageError::UnsupportedFormat(format!("this kind of {name} ({e})")),
        image::ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Corrupt(format!("{name} data is truncated"))
        }
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
    if let DynamicImage::ImageRgb8(rgb) = img {
        return rgb.clone();
    }
    if !img.color().has_alpha() {
        return img.to_rgb8();
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
    out
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
    let square = match input.fit {
        Fit::Pad => pad_resize(img, size),
        Fit::CenterCrop => crop_resize(img, size),
    };
    normalise(&square, size, input)
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
fn resize_u8(
    src: &[u8],
    width: u32,
    height: u32,
    dst_width: u32,
    dst_height: u32,
    pixel_type: PixelType,
    options: Option<ResizeOptions>,
) -> Vec<u8> {
    let src = ImageRef::new(width, height, src, pixel_type).expect("buffer of a well-formed image matches its size");
    let mut dst = Image::new(dst_width, dst_height, pixel_type);
    let options = options.unwrap_or_else(bilinear);
    Resizer::new().resize(&src, &mut dst, &options).expect("source and destination have the same pixel type");
    dst.into_vec()
}

/// Fits the whole image into a `size` square, centred, padding with white.
fn pad_resize(img: &RgbImage, size: u32) -> Vec<u8> {
    let side = size as usize;
    let mut canvas = vec![WHITE; side * side * 3];
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return canvas;
    }
    let long = f64::from(w.max(h));
    let scaled = |d: u32| ((f64::from(d) * f64::from(size) / long).round() as u32).clamp(1, size);
    let (nw, nh) = (scaled(w), scaled(h));
    let resized =
        if (nw, nh) == (w, h) { img.as_raw().clone() } else { resize_u8(img.as_raw(), w, h, nw, nh, PixelType::U8x3, None) };
    let (x0, y0) = (((size - nw) / 2) as usize, ((size - nh) / 2) as usize);
    let row = nw as usize * 3;
    for (y, src_row) in resized.chunks_exact(row).enumerate() {
        let start = ((y0 + y) * side + x0) * 3;
        canvas[start..start + row].copy_from_slice(src_row);
    }
    canvas
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
