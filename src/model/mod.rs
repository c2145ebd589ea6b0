//! Image models: what an encoder's ONNX file expects and produces ([`ModelSpec`]), and the
//! conversion of the built-in EfficientNet-Lite weights from legacy PyTorch files to ONNX.
//!
//! Any ONNX image encoder plugs in through a [`ModelSpec`] (a small JSON file for user models):
//! the built-in default is EfficientNet-Lite, but a ResNet-50 export or a CLIP image tower load
//! through the same path.

pub mod efficientnet;
pub mod onnx;
pub mod pth;
pub mod quantise;
pub mod rewrite;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::assets::Assets;

/// Memory layout of the model's image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[batch, 3, height, width]` (PyTorch exports).
    Nchw,
    /// `[batch, height, width, 3]` (TensorFlow/Keras exports).
    Nhwc,
}

/// How a non-square photo becomes the model's square input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fit {
    /// Pad the short side with white, then resize: the whole product stays in view.
    Pad,
    /// Resize the short side, then crop the centre (ImageNet evaluation convention).
    CenterCrop,
}

/// How a `[C, H, W]` feature map becomes one vector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Pooling {
    /// The output is already a vector (e.g. a CLIP image tower).
    None,
    Avg,
    Max,
    /// Generalised mean with exponent `p` (p = 1 is average, p → ∞ is max).
    Gem {
        p: f32,
    },
}

/// What the model wants as input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Name of the input tensor.
    pub name: String,
    /// Square side in pixels.
    pub size: u32,
    pub layout: Layout,
    /// Per-channel mean and standard deviation on the 0..1 scale: `x = (pixel/255 - mean) / std`.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub fit: Fit,
}

/// Everything lookalike needs to know to run an ONNX image encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Stable identifier stored with every vector; vectors of different models never mix.
    pub name: String,
    /// Path of the ONNX file (relative paths in a JSON description are relative to that file).
    pub onnx: PathBuf,
    pub input: InputSpec,
    /// Name of the output holding features: `[N, C, H, W]` maps or `[N, D]` vectors.
    pub output: String,
    /// Pooling of the output into the search vector.
    pub pooling: Pooling,
    /// Optional ImageNet-style classifier output, used by known-answer tests.
    #[serde(default)]
    pub logits: Option<String>,
    /// Set for the int8 copy of a built-in model: how it was calibrated, so that its ONNX file
    /// can be made again wherever the catalog goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<Int8Calibration>,
}

/// Suffix of a built-in model's int8 copy: `efficientnet-lite0-int8`.
pub const INT8_SUFFIX: &str = "-int8";

/// How the int8 copy of a built-in model was made (see [`quantise`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Int8Calibration {
    /// The float built-in model it copies (`efficientnet-lite0`, or `name@size`).
    pub base: String,
    /// Inputs the activation ranges were observed on: catalog photos and a shopper-style view
    /// of each (see `import::calibrate_int8`), so twice the photos used.
    pub photos: usize,
    pub ranges: quantise::ActivationRanges,
    /// Bits of its weights ([`quantise::WEIGHT_BITS`] for copies made now; 8, the default,
    /// for catalogs calibrated before it was recorded, whose copy is made again as it was).
    #[serde(default = "eight_bits")]
    pub weight_bits: u8,
}

fn eight_bits() -> u8 {
    8
}

impl Int8Calibration {
    /// How the copy was made, for `info`; for one with wider weights than copies made now,
    /// what that costs on CPUs without VNNI (see [`quantise`]).
    pub fn summary(&self) -> String {
        let wider = match self.weight_bits > quantise::WEIGHT_BITS {
            true => format!(
                " (made before {}-bit ones: on a CPU without VNNI its vectors drift from the float model's; a catalog imported anew gets {}-bit weights)",
                quantise::WEIGHT_BITS,
                quantise::WEIGHT_BITS
            ),
            false => String::new(),
        };
        format!("int8 copy calibrated on {} inputs (catalog photos and a shopper-style view of each), {}-bit weights{wider}", self.photos, self.weight_bits)
    }
}

/// The float built-in model behind an int8 model name, if `name` is one.
pub fn int8_base(name: &str) -> Option<&str> {
    name.strip_suffix(INT8_SUFFIX).filter(|base| is_builtin(base))
}

/// The int8 copy of a built-in model for `calibration`. Its ONNX file (one per calibration,
/// named by a hash of the ranges and, for other than 8-bit weights, their width) is written
/// into the model cache when it is not there yet.
pub fn int8_spec(assets: &Assets, calibration: Int8Calibration) -> Result<ModelSpec> {
    use sha2::Digest;
    let base = resolve(assets, &calibration.base)?;
    let mut hashed = serde_json::to_vec(&calibration.ranges)?;
    // 8-bit copies keep the names they were made under.
    if calibration.weight_bits != 8 {
        hashed.extend(format!("weights {}", calibration.weight_bits).bytes());
    }
    let fingerprint = hex::encode(&sha2::Sha256::digest(&hashed)[..6]);
    let stem = base.onnx.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| calibration.base.clone());
    let onnx = assets.models_dir().join(format!("{stem}-int8-{fingerprint}.onnx"));
    if !onnx.is_file() {
        let model = onnx::read_model(&base.onnx)?;
        let quantised = quantise::to_qdq(&model, &calibration.ranges, calibration.weight_bits).with_context(|| format!("making the int8 copy of {}", calibration.base))?;
        onnx::write_model(&quantised, &onnx)?;
    }
    Ok(ModelSpec { name: format!("{}{INT8_SUFFIX}", calibration.base), onnx, int8: Some(calibration), ..base })
}

/// The int8 copy of built-in `float` for importing a float catalog's photos (`index
/// --import-precision int8`): the copy's file under the float model's name, so its vectors are
/// stored, and searched, as the float model's. Why they may mix: float queries against a catalog
/// the copy imported scored within the quality rule of the all-float catalog on the full
/// protocol (docs/bench/int8, "int8 import, float queries"), while int8 queries lose more.
pub fn int8_import_copy(float: &ModelSpec, calibrated: ModelSpec) -> Result<ModelSpec> {
    anyhow::ensure!(calibrated.int8.as_ref().is_some_and(|c| c.base == float.name), "{} is not the int8 copy of {}", calibrated.name, float.name);
    Ok(ModelSpec { name: float.name.clone(), int8: None, ..calibrated })
}

/// A model description stored with a catalog; an int8 copy gets its file made if it is missing.
fn stored_model(assets: &Assets, json: &str) -> Result<ModelSpec> {
    let spec: ModelSpec = serde_json::from_str(json).map_err(|e| anyhow::anyhow!("the model description stored with the catalog is damaged: {e}"))?;
    match spec.int8 {
        Some(calibration) => int8_spec(assets, calibration),
        None => Ok(spec),
    }
}

impl ModelSpec {
    /// Reads a user-supplied model description (JSON).
    pub fn from_json_file(path: &Path) -> Result<ModelSpec> {
        // Absolute, so the ONNX path stored with a catalog still points at the file when the
        // catalog is searched from another directory.
        let path = &std::path::absolute(path).with_context(|| format!("resolving model description path {}", path.display()))?;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading model description {}", path.display()))?;
        let mut spec: ModelSpec = serde_json::from_str(&text).with_context(|| format!("parsing model description {}", path.display()))?;
        if spec.onnx.is_relative() {
            if let Some(dir) = path.parent() {
                spec.onnx = dir.join(&spec.onnx);
            }
        }
        Ok(spec)
    }
}

/// Names of the built-in models.
pub const BUILTIN: &[&str] = &["efficientnet-lite0", "efficientnet-lite2"];

/// The default model.
pub const DEFAULT_MODEL: &str = "efficientnet-lite0";

/// Whether `name` is a built-in model (possibly at a non-native size, `name@size`).
/// The model for a catalog: the one asked for (`requested`), else the one its vectors come
/// from (`space`; a user-supplied model by its stored `description` JSON), else the default.
pub fn for_catalog(assets: &Assets, requested: Option<&str>, space: Option<&crate::types::VectorSpace>, description: Option<&str>) -> Result<ModelSpec> {
    match (requested, space, description) {
        // An int8 copy is the catalog's own (calibrated on its photos): asking for it by name
        // means the one stored with the catalog.
        (Some(m), Some(space), Some(json)) if int8_base(m).is_some() && space.model == m => stored_model(assets, json),
        (Some(m), _, _) => resolve(assets, m),
        (None, Some(space), Some(json)) if !is_builtin(&space.model) => stored_model(assets, json),
        (None, Some(space), _) => resolve(assets, &space.model),
        (None, None, _) => resolve(assets, DEFAULT_MODEL),
    }
}

pub fn is_builtin(name: &str) -> bool {
    BUILTIN.contains(&name.split('@').next().unwrap_or(name))
}

/// Resolves a model argument: a built-in name (converted from the PyTorch weights on first use
/// and cached under the asset directory) or the path of a JSON [`ModelSpec`].
pub fn resolve(assets: &Assets, model: &str) -> Result<ModelSpec> {
    match model {
        "efficientnet-lite0" => resolve_sized(assets, model, 224),
        "efficientnet-lite2" => resolve_sized(assets, model, 260),
        sized if is_builtin(sized) && sized.contains('@') => {
            let (name, size) = sized.split_once('@').unwrap_or((sized, ""));
            let size: u32 = size.parse().with_context(|| format!("bad input size in model name {sized:?}"))?;
            resolve_sized(assets, name, size)
        }
        int8 if int8_base(int8).is_some() => anyhow::bail!(
            "{int8} is calibrated on a catalog's own photos: create the catalog with `lookalike index --model {int8} ...`; the catalog's commands then use the copy stored with it"
        ),
        path => {
            ModelSpec::from_json_file(Path::new(path)).with_context(|| format!("{path:?} is neither a built-in model ({}) nor a readable model description", BUILTIN.join(", ")))
        }
    }
}

/// A built-in model converted for a given input size (the graph's padding depends on it). The
/// name gains the size when it is not the model's native one, so catalogs never mix them.
pub fn resolve_sized(assets: &Assets, model: &str, size: u32) -> Result<ModelSpec> {
    let (variant, native) = match model {
        "efficientnet-lite0" => ("lite0", 224),
        "efficientnet-lite2" => ("lite2", 260),
        other => anyhow::bail!("{other:?} is not a built-in model ({})", BUILTIN.join(", ")),
    };
    let mut spec = efficientnet_spec(assets, variant, size)?;
    if size != native {
        spec.name = format!("{model}@{size}");
    }
    Ok(spec)
}

fn efficientnet_spec(assets: &Assets, variant: &str, size: u32) -> Result<ModelSpec> {
    let onnx: PathBuf = assets.models_dir().join(format!("efficientnet-{variant}-{size}px-v{}.onnx", efficientnet::CONVERTER_VERSION));
    if !onnx.is_file() {
        let weights = assets.efficientnet_weights(variant)?;
        std::fs::create_dir_all(assets.models_dir()).with_context(|| format!("creating {}", assets.models_dir().display()))?;
        efficientnet::convert(&weights, size, &onnx).with_context(|| format!("converting {} to ONNX", weights.display()))?;
    }
    Ok(ModelSpec {
        name: format!("efficientnet-{variant}"),
        onnx,
        input: InputSpec {
            name: efficientnet::INPUT.to_string(),
            size,
            layout: Layout::Nchw,
            // EfficientNet-Lite was trained on (pixel - 127) / 128.
            mean: [127.0 / 255.0; 3],
            std: [128.0 / 255.0; 3],
            fit: Fit::Pad,
        },
        output: efficientnet::FEATURES.to_string(),
        // GeM (p = 3) with catalog-mean centring beat average and max pooling in the quality study
        // (docs/quality-study.md).
        pooling: Pooling::Gem { p: 3.0 },
        logits: Some(efficientnet::LOGITS.to_string()),
        int8: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calibration_recorded_before_the_weight_width_was_is_8_bit() {
        let old: Int8Calibration = serde_json::from_str(r#"{"base": "efficientnet-lite0", "photos": 400, "ranges": {"x": [0.0, 1.0]}}"#).expect("an old record");
        assert_eq!(old.weight_bits, 8, "made again as it was, so its catalog's vectors stay comparable");
        let now = Int8Calibration { weight_bits: quantise::WEIGHT_BITS, ..old };
        let again: Int8Calibration = serde_json::from_str(&serde_json::to_string(&now).expect("json")).expect("read back");
        assert_eq!(again.weight_bits, 7);
    }
}
