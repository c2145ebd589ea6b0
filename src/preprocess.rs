//! From uploaded bytes to the model's input tensor: decode (with limits), orient, flatten alpha
//! onto white, fit to a square, resize, normalise.
// TEMPORARY stand-ins (replaced by the prep branch).
use crate::model::InputSpec;
#[derive(Debug, thiserror::Error)]
pub enum ImageError { #[error("corrupt: {0}")] Corrupt(String) }
#[derive(Debug, Clone, Default)]
pub struct DecodeLimits { pub max_pixels: u64, pub max_bytes: usize }
pub fn decode(bytes: &[u8], _l: &DecodeLimits) -> Result<image::DynamicImage, ImageError> { image::load_from_memory(bytes).map_err(|e| ImageError::Corrupt(e.to_string())) }
pub fn to_rgb_on_white(img: &image::DynamicImage) -> image::RgbImage { img.to_rgb8() }
pub fn prepare(img: &image::RgbImage, input: &InputSpec) -> Vec<f32> { let _ = (img, input); vec![] }
pub fn greyscale_pixels(img: &image::DynamicImage, side: u32) -> Vec<f32> { let _ = (img, side); vec![] }
