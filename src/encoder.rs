//! Image encoders: a batch of preprocessed images in, one embedding per image out.
//!
//! The [`Encoder`] trait is the only thing the rest of lookalike knows about inference; the
//! ONNX Runtime implementation is [`OrtEncoder`].

use anyhow::Result;

use crate::model::ModelSpec;

/// One image's vectors, each L2-normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// The search vector: the model's feature map pooled as its [`ModelSpec`] says.
    pub vector: Vec<f32>,
    /// Max pooling of the same feature map: the original design's recipe, kept so `eval` can
    /// compare against it on the same catalog. `None` for models that output vectors.
    pub max_pooled: Option<Vec<f32>>,
}

/// Turns preprocessed images into embeddings.
pub trait Encoder: Send + Sync {
    fn spec(&self) -> &ModelSpec;

    /// Encodes a batch. Each input is one image laid out as `spec().input` says, with
    /// `3 * size * size` floats.
    fn encode(&self, batch: &[Vec<f32>]) -> Result<Vec<Embedding>>;
}

// TEMPORARY stand-in (replaced by the model branch).
pub struct OrtEncoder { spec: ModelSpec }
impl OrtEncoder {
    pub fn new(ort_lib: &std::path::Path, spec: ModelSpec, threads: usize) -> Result<OrtEncoder> { let _ = (ort_lib, threads); Ok(OrtEncoder { spec }) }
}
impl Encoder for OrtEncoder {
    fn spec(&self) -> &ModelSpec { &self.spec }
    fn encode(&self, batch: &[Vec<f32>]) -> Result<Vec<Embedding>> { let _ = batch; anyhow::bail!("stub") }
}
