//! EfficientNet-Lite as an ONNX graph, built from the legacy PyTorch state dict.

use std::path::Path;

use anyhow::Result;

/// Input tensor name: `[batch, 3, size, size]`, float32, already normalised.
pub const INPUT: &str = "image";
/// Output: the last feature map after the head conv, `[batch, 1280, h, w]`.
pub const FEATURES: &str = "features";
/// Output: ImageNet-1k logits, `[batch, 1000]`.
pub const LOGITS: &str = "logits";

/// Reads `weights` (legacy torch.save) and writes an ONNX model for `size`x`size` inputs to `out`.
pub fn convert(weights: &Path, size: u32, out: &Path) -> Result<()> {
    let _ = (weights, size, out);
    anyhow::bail!("EfficientNet conversion is not written yet")
}
