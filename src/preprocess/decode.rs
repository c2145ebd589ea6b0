//! Decoding an image from bytes that are treated as hostile: uploads are arbitrary bytes from
//! shoppers, and a catalog import runs over tens of thousands of files of varying quality. So
//! decoding never panics (errors are [`ImageError`] values a caller can report next to the file
//! name), the format is read from the bytes themselves, and images whose header announces an
//! absurd size are rejected before any pixel buffer is allocated.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use image::{ImageBuffer, Rgb, Rgba, RgbaImage};

    use crate::preprocess::{decode_reduced, to_rgb_on_white};

    pub(in crate::preprocess) fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, format).expect("encoding a test image");
        buf.into_inner()
    }

    /// A photo-like test picture: smooth gradients, so JPEG compresses it realistically.
    pub(in crate::preprocess) fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, ((x + y) % 256) as u8]))
    }

    pub(in crate::preprocess) fn jpeg(img: &RgbImage) -> Vec<u8> {
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
}
