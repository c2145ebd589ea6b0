//! Image encoders: a batch of preprocessed images in, one embedding per image out.
//!
//! The [`Encoder`] trait is the only thing the rest of lookalike knows about inference; the
//! ONNX Runtime implementation is [`OrtEncoder`].

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, bail, ensure, Context, Result};
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use prost::Message;

use crate::index::l2_normalize;
use crate::model::quantise::{self, ActivationRanges};
use crate::model::{rewrite, InputSpec, Layout, ModelSpec, Pooling};

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

    /// How many `encode` calls can usefully run at once (the indexer runs that many batches in
    /// parallel).
    fn parallelism(&self) -> usize {
        1
    }

    /// Encodes shoppers' photos: each embedding, and the model's feature grid to find the
    /// products on ([`crate::localise`]) when the model gives one. The default gives none.
    fn encode_queries(&self, batch: &[Vec<f32>]) -> Result<Vec<QueryEmbedding>> {
        Ok(self.encode(batch)?.into_iter().map(|embedding| QueryEmbedding { embedding, grid: None }).collect())
    }
}

/// A query photo's embedding and its feature grid.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryEmbedding {
    /// The whole photo, exactly as a catalog photo is encoded.
    pub embedding: Embedding,
    /// The feature at each cell of the model's output grid; `None` for models that output
    /// vectors.
    pub grid: Option<GridFeatures>,
}

/// One image's feature map as a grid of cells, each a `channels`-long feature (cell-major,
/// row-major cells): what the products are found on, and pooled over where they are.
#[derive(Debug, Clone, PartialEq)]
pub struct GridFeatures {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    /// `width * height` features of `channels` values, cell after cell.
    pub data: Vec<f32>,
    /// How the model's features are pooled into its search vector.
    pub pooling: Pooling,
}

impl GridFeatures {
    /// The feature at `cell` (row-major position).
    pub fn cell(&self, cell: usize) -> &[f32] {
        &self.data[cell * self.channels..(cell + 1) * self.channels]
    }

    fn map(&self) -> FeatureMap<'_> {
        FeatureMap { data: &self.data, channels: self.channels, positions: self.width * self.height, channel_stride: 1, position_stride: self.channels }
    }

    /// Each cell's activation energy: the sum of its channels.
    pub fn energy(&self) -> Vec<f32> {
        self.map().energy()
    }

    /// The search vector pooled over `cells` only (as the model pools, L2-normalised).
    pub fn pool_over(&self, cells: &[usize]) -> Vec<f32> {
        l2_normalised(self.map().pool_over(self.pooling, cells))
    }
}

/// The process-wide ONNX Runtime environment.
///
/// ONNX Runtime allows one environment per process, and `ort` loads the shared library only
/// once, so the first successful initialisation wins; later calls with another library path
/// reuse it. A failure is not cached, so a caller can fix the path and retry.
static ORT_ENV: OnceLock<(Environment, PathBuf)> = OnceLock::new();
static ORT_INIT: Mutex<()> = Mutex::new(());

fn ort_environment(ort_lib: &Path) -> Result<&'static Environment> {
    if let Some((env, _)) = ORT_ENV.get() {
        return Ok(env);
    }
    // Serialise initialisation: two threads must not both try to build an environment.
    let _guard = ORT_INIT.lock().map_err(|_| anyhow!("ONNX Runtime initialisation panicked in another thread"))?;
    if let Some((env, _)) = ORT_ENV.get() {
        return Ok(env);
    }
    if !ort_lib.is_file() {
        bail!("ONNX Runtime library not found at {} — run `make setup`", ort_lib.display());
    }
    let env = ort::init_from(ort_lib)
        .with_context(|| format!("loading ONNX Runtime from {} (run `make setup` to fetch it)", ort_lib.display()))?
        .with_name("lookalike")
        .build()
        .context("creating the ONNX Runtime environment")?;
    Ok(&ORT_ENV.get_or_init(|| (env, ort_lib.to_path_buf())).0)
}

/// An [`Encoder`] running an ONNX model on the CPU with ONNX Runtime.
pub struct OrtEncoder {
    spec: ModelSpec,
    /// `ort`'s `Session::run` takes `&mut self` (it keeps per-run state such as output
    /// allocations), while [`Encoder`] is shared across threads through `&self`, so each session
    /// sits behind a mutex and a call takes whichever is free. One session with all threads
    /// gives the lowest latency for one photo (search); several single-threaded sessions give
    /// the highest throughput for a stream of batches (indexing), because a small CNN's layers
    /// do not split evenly across threads and the threads wait on each other at every layer.
    sessions: Vec<Mutex<Session>>,
    /// The model specialised for greyscale pictures, when it can be made.
    grey: Option<GreyModel>,
    env: &'static Environment,
    threads: usize,
    /// Whether the sessions compute `spec.logits` (see [`OrtEncoder::classifier`]).
    logits: bool,
}

/// [`rewrite::fold_grey_input`]'s model and its sessions (as many as the full model's).
struct GreyModel {
    model: Vec<u8>,
    sessions: OnceLock<Option<Vec<Mutex<Session>>>>,
}

impl std::fmt::Debug for OrtEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtEncoder").field("spec", &self.spec).field("threads", &self.threads).finish_non_exhaustive()
    }
}

impl OrtEncoder {
    /// Loads `spec.onnx` with the ONNX Runtime library at `ort_lib`, using `threads` intra-op
    /// threads (set explicitly: ONNX Runtime's default of one per core oversubscribes a machine
    /// that also decodes images or serves requests).
    pub fn new(ort_lib: &Path, spec: ModelSpec, threads: usize) -> Result<OrtEncoder> {
        OrtEncoder::with_sessions(ort_lib, spec, 1, threads)
    }

    /// `sessions` independent sessions of `threads` intra-op threads each.
    pub fn with_sessions(ort_lib: &Path, spec: ModelSpec, sessions: usize, threads: usize) -> Result<OrtEncoder> {
        OrtEncoder::build(ort_lib, spec, sessions, threads, false)
    }

    /// Like [`OrtEncoder::new`], but the sessions also compute the classifier output
    /// (`spec.logits`), for [`OrtEncoder::logits`]. Embedding encoders leave the classifier out:
    /// it costs inference time and no search uses it.
    pub fn classifier(ort_lib: &Path, spec: ModelSpec, threads: usize) -> Result<OrtEncoder> {
        OrtEncoder::build(ort_lib, spec, 1, threads, true)
    }

    fn build(ort_lib: &Path, spec: ModelSpec, sessions: usize, threads: usize, with_logits: bool) -> Result<OrtEncoder> {
        ensure!(threads >= 1, "an encoder needs at least one thread");
        ensure!(sessions >= 1, "an encoder needs at least one session");
        let env = ort_environment(ort_lib)?;
        if !spec.onnx.is_file() {
            bail!("model file {} of {:?} not found", spec.onnx.display(), spec.name);
        }
        let file = std::fs::read(&spec.onnx).with_context(|| format!("reading ONNX model {}", spec.onnx.display()))?;
        let mut outputs = vec![spec.output.as_str()];
        outputs.extend(spec.logits.as_deref().filter(|_| with_logits));
        // A model the rewrites cannot read is loaded as it is, and ONNX Runtime reports whatever
        // is wrong with it.
        let (mut pruned, mut grey) = (None, None);
        if let Ok(Some(mut model)) = rewrite::decode_whole(&file) {
            match rewrite::prune_to_outputs(&mut model, &outputs) {
                Ok(true) => pruned = Some(model.encode_to_vec()),
                Ok(false) => {}
                Err(e) => tracing::debug!("running {} unpruned: {e:#}", spec.onnx.display()),
            }
            if OrtEncoder::channels_normalised_alike(&spec) && rewrite::fold_grey_input(&mut model, &spec.input.name) {
                grey = Some(model.encode_to_vec());
            }
        }
        let sessions = (0..sessions).map(|_| OrtEncoder::session(env, &spec, pruned.as_deref(), threads).map(Mutex::new)).collect::<Result<_>>()?;
        let logits = with_logits || pruned.is_none();
        let grey = grey.map(|model| GreyModel { model, sessions: OnceLock::new() });
        Ok(OrtEncoder { spec, env, sessions, grey, threads, logits })
    }

    /// Whether a grey picture gives three equal input planes, so that the grey specialisation
    /// of the model ([`rewrite::fold_grey_input`]) computes the same thing.
    fn channels_normalised_alike(spec: &ModelSpec) -> bool {
        let InputSpec { mean, std, layout, .. } = &spec.input;
        *layout == Layout::Nchw && mean.iter().all(|m| *m == mean[0]) && std.iter().all(|s| *s == std[0])
    }

    /// Whether grey pictures run through a model specialised for them.
    pub fn has_grey_model(&self) -> bool {
        self.grey.is_some()
    }

    /// Runs every batch through the full-colour model, also grey ones (for comparisons).
    pub fn without_grey_model(mut self) -> OrtEncoder {
        self.grey = None;
        self
    }

    /// The sessions of the grey model, made on the first grey batch (a catalog of colour photos
    /// never pays for them). `None` if there is no grey model or it failed to load, in which
    /// case grey batches run through the full-colour model.
    fn grey_sessions(&self) -> Option<&[Mutex<Session>]> {
        let grey = self.grey.as_ref()?;
        grey.sessions
            .get_or_init(|| {
                let made = (0..self.sessions.len()).map(|_| OrtEncoder::session(self.env, &self.spec, Some(&grey.model), self.threads).map(Mutex::new)).collect::<Result<Vec<_>>>();
                made.map_err(|e| tracing::warn!("the greyscale model did not load; grey pictures use the full model: {e:#}")).ok()
            })
            .as_deref()
    }

    fn session(env: &Environment, spec: &ModelSpec, pruned: Option<&[u8]>, threads: usize) -> Result<Session> {
        let session = Session::builder(env)
            .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::Level3).map_err(Into::into))
            .and_then(|b| b.with_intra_threads(threads).map_err(Into::into))
            .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
            // Activations that decay towards zero become denormal floats, which x86 handles in
            // microcode at a fraction of the speed; flushing them to zero changes no result that
            // matters (they are below 1e-38) and saves inference time.
            .and_then(|b| b.with_flush_to_zero().map_err(Into::into))
            // ONNX Runtime's pool threads spin for a while after each run, waiting for the next
            // one. In the server that steals a core from the catalog scan that follows each
            // encode: `lookalike bench e2e` measured the search stage at 8.7-10.0 ms with
            // spinning and 6.5-6.9 ms without, for 0.5 ms more encoding (client median 12.9-15.2
            // ms against 11.1-11.9 ms, p99 halved). Single-threaded sessions have no pool.
            .and_then(|b| b.with_intra_op_spinning(false).map_err(Into::into))
            .and_then(|mut b| match pruned {
                Some(bytes) => b.commit_from_memory(bytes),
                None => b.commit_from_file(&spec.onnx),
            })
            .with_context(|| format!("loading ONNX model {}", spec.onnx.display()))?;

        let has_input = session.inputs().iter().any(|i| i.name() == spec.input.name);
        ensure!(has_input, "{} has no input named {:?}", spec.onnx.display(), spec.input.name);
        for wanted in std::iter::once(&spec.output).chain(spec.logits.as_ref().filter(|_| pruned.is_none())) {
            let found = session.outputs().iter().any(|o| o.name() == wanted);
            ensure!(found, "{} has no output named {wanted:?}", spec.onnx.display());
        }
        Ok(session)
    }

    /// Runs the model and returns the ImageNet logits (`spec.logits`), one row per image.
    pub fn logits(&self, batch: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        let name = self.spec.logits.as_deref().ok_or_else(|| anyhow!("model {:?} has no logits output", self.spec.name))?;
        ensure!(self.logits, "this encoder computes features only; load it with OrtEncoder::classifier to read logits");
        let out = self.run(batch, name)?;
        ensure!(out.shape.len() == 2, "logits output {name:?} has shape {:?}, expected [N, classes]", out.shape);
        Ok(out.data.chunks(out.shape[1].max(1)).map(<[f32]>::to_vec).collect())
    }

    /// The raw `[N, C, H, W]` (or `[N, D]`) output of the features tensor for a batch: shape and
    /// data. For studies of pooling choices (`examples/quality_study.rs`) that must pool one
    /// model run several ways.
    pub fn feature_maps(&self, batch: &[Vec<f32>]) -> Result<(Vec<usize>, Vec<f32>)> {
        let out = self.run(batch, &self.spec.output)?;
        Ok((out.shape, out.data))
    }

    /// Runs one batched inference and copies output `name` out of the session. A batch of grey
    /// pictures runs through the grey model, on one plane per picture.
    fn run(&self, batch: &[Vec<f32>], name: &str) -> Result<Output> {
        let mut outputs = self.run_outputs(batch, &[name])?;
        outputs.pop().ok_or_else(|| anyhow!("model output {name:?} is missing"))
    }

    /// [`OrtEncoder::run`] for several outputs of one inference, in the order of `names`.
    fn run_outputs(&self, batch: &[Vec<f32>], names: &[&str]) -> Result<Vec<Output>> {
        let size = self.spec.input.size as usize;
        let plane = size * size;
        let per_image = 3 * plane;
        for (i, image) in batch.iter().enumerate() {
            ensure!(image.len() == per_image, "image {i} has {} floats, the model wants 3x{size}x{size} = {per_image}", image.len());
        }
        let is_grey = |image: &Vec<f32>| image[..plane] == image[plane..2 * plane] && image[plane..2 * plane] == image[2 * plane..];
        let grey = match self.grey {
            Some(_) if names == [self.spec.output.as_str()] && batch.iter().all(is_grey) => self.grey_sessions(),
            _ => None,
        };
        let (sessions, channels) = match grey {
            Some(sessions) => (sessions, 1),
            None => (&self.sessions[..], 3),
        };
        let mut data = Vec::with_capacity(batch.len() * channels * plane);
        for image in batch {
            data.extend_from_slice(&image[..channels * plane]);
        }
        let shape = match self.spec.input.layout {
            Layout::Nchw => [batch.len(), channels, size, size],
            Layout::Nhwc => [batch.len(), size, size, channels],
        };
        let input = TensorRef::from_array_view((shape, data.as_slice())).context("wrapping the input batch")?;
        // A free session if there is one, else wait for the first.
        let free = sessions.iter().find_map(|s| s.try_lock().ok());
        let mut session = match free {
            Some(session) => session,
            None => sessions[0].lock().map_err(|_| anyhow!("the ONNX Runtime session panicked in another thread"))?,
        };
        let outputs = session.run(ort::inputs![self.spec.input.name.as_str() => input]).with_context(|| format!("running {} on a batch of {}", self.spec.name, batch.len()))?;
        let copy = |name: &&str| {
            let value = outputs.get(*name).ok_or_else(|| anyhow!("model output {name:?} is missing"))?;
            let (shape, data) = value.try_extract_tensor::<f32>().with_context(|| format!("reading output {name:?} as f32"))?;
            let shape: Vec<usize> = shape.iter().map(|&d| usize::try_from(d)).collect::<Result<_, _>>().context("negative output dimension")?;
            ensure!(shape.first() == Some(&batch.len()), "output {name:?} has shape {shape:?} for a batch of {}", batch.len());
            Ok(Output { shape, data: data.to_vec() })
        };
        names.iter().map(copy).collect()
    }
}

/// An output tensor copied out of ONNX Runtime's memory.
struct Output {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Encoder for OrtEncoder {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn parallelism(&self) -> usize {
        self.sessions.len()
    }

    fn encode(&self, batch: &[Vec<f32>]) -> Result<Vec<Embedding>> {
        Ok(self.encode_maps(batch, false)?.into_iter().map(|q| q.embedding).collect())
    }

    fn encode_queries(&self, batch: &[Vec<f32>]) -> Result<Vec<QueryEmbedding>> {
        self.encode_maps(batch, true)
    }
}

impl OrtEncoder {
    /// Runs the model and pools its output; with `localise`, also finds the main item on each
    /// feature map and pools over it.
    fn encode_maps(&self, batch: &[Vec<f32>], localise: bool) -> Result<Vec<QueryEmbedding>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.run(batch, &self.spec.output)?;
        let n = batch.len();
        let per_image = out.data.len() / n;
        let embeddings = match out.shape.len() {
            2 if self.spec.pooling != Pooling::None => bail!(
                "output {:?} is already one vector per image {:?}, but the model description asks to pool it ({:?}): set \"pooling\": {{\"kind\": \"none\"}}, or name a [N, C, H, W] feature map as \"output\"",
                self.spec.output,
                out.shape,
                self.spec.pooling
            ),
            2 => out
                .data
                .chunks(per_image)
                .map(|v| QueryEmbedding { embedding: Embedding { vector: l2_normalised(v.to_vec()), max_pooled: None }, grid: None })
                .collect(),
            4 => {
                ensure!(self.spec.pooling != Pooling::None, "output {:?} is a feature map {:?} but the spec says pooling none", self.spec.output, out.shape);
                // Feature maps follow the input layout: [N, C, H, W] or [N, H, W, C].
                let (channels, height, width, channel_stride, position_stride) = match self.spec.input.layout {
                    Layout::Nchw => (out.shape[1], out.shape[2], out.shape[3], out.shape[2] * out.shape[3], 1),
                    Layout::Nhwc => (out.shape[3], out.shape[1], out.shape[2], 1, out.shape[3]),
                };
                let positions = height * width;
                out.data
                    .chunks(per_image)
                    .map(|map| {
                        let fm = FeatureMap { data: map, channels, positions, channel_stride, position_stride };
                        let embedding = Embedding {
                            vector: l2_normalised(fm.pool(self.spec.pooling)),
                            max_pooled: Some(l2_normalised(fm.pool(Pooling::Max))),
                        };
                        let grid = localise.then(|| GridFeatures { width, height, channels, data: fm.cell_major(), pooling: self.spec.pooling });
                        QueryEmbedding { embedding, grid }
                    })
                    .collect()
            }
            _ => bail!("output {:?} has shape {:?}: expected [N, D] vectors or [N, C, H, W] maps", self.spec.output, out.shape),
        };
        Ok(embeddings)
    }
}

/// Runs the float model of `spec` on `images` (preprocessed for it) and records the range of
/// each activation [`quantise::quantisation_points`] names: the calibration of an int8 copy.
/// The model runs as an [`OrtEncoder`] whose graph also outputs those activations.
pub fn observe_activation_ranges(ort_lib: &Path, spec: &ModelSpec, images: &[Vec<f32>], threads: usize) -> Result<ActivationRanges> {
    ensure!(!images.is_empty(), "calibrating an int8 model needs at least one photo");
    let model = crate::model::onnx::read_model(&spec.onnx)?;
    let points = quantise::quantisation_points(&model)?;
    let observed = quantise::with_outputs(&model, &points)?.encode_to_vec();
    let env = ort_environment(ort_lib)?;
    let threads = threads.max(1);
    let session = OrtEncoder::session(env, spec, Some(&observed), threads).context("loading the model to calibrate")?;
    let encoder = OrtEncoder { spec: spec.clone(), env, sessions: vec![Mutex::new(session)], grey: None, threads, logits: false };
    let names: Vec<&str> = points.iter().map(String::as_str).collect();
    let mut observer = quantise::RangeObserver::default();
    for batch in images.chunks(8) {
        for (name, output) in names.iter().zip(encoder.run_outputs(batch, &names)?) {
            observer.observe(name, &output.data);
        }
    }
    Ok(observer.ranges())
}

/// One image's feature map, addressed as `data[c * channel_stride + p * position_stride]`.
pub struct FeatureMap<'a> {
    data: &'a [f32],
    channels: usize,
    positions: usize,
    channel_stride: usize,
    position_stride: usize,
}

impl<'a> FeatureMap<'a> {
    /// A `[C, H*W]` (channel-major, NCHW) map of one image.
    pub fn channel_major(data: &'a [f32], channels: usize) -> FeatureMap<'a> {
        let positions = data.len() / channels.max(1);
        FeatureMap { data, channels, positions, channel_stride: positions, position_stride: 1 }
    }

    /// Each position's activation energy: the sum of its channels (what [`crate::localise`]
    /// finds the product by).
    pub fn energy(&self) -> Vec<f32> {
        let mut energy = vec![0.0f32; self.positions];
        for c in 0..self.channels {
            for (p, e) in energy.iter_mut().enumerate() {
                *e += self.data[c * self.channel_stride + p * self.position_stride].max(0.0);
            }
        }
        energy
    }

    /// The map copied cell after cell (each cell's channels together).
    pub fn cell_major(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.channels * self.positions);
        for p in 0..self.positions {
            out.extend((0..self.channels).map(|c| self.data[c * self.channel_stride + p * self.position_stride]));
        }
        out
    }

    /// Pools every channel over the given positions only (not normalised).
    pub fn pool_over(&self, pooling: Pooling, positions: &[usize]) -> Vec<f32> {
        let mut gathered = Vec::with_capacity(self.channels * positions.len());
        for c in 0..self.channels {
            gathered.extend(positions.iter().map(|&p| self.data[c * self.channel_stride + p * self.position_stride]));
        }
        FeatureMap::channel_major(&gathered, self.channels).pool(pooling)
    }

    /// Pools every channel over all positions (not normalised).
    pub fn pool(&self, pooling: Pooling) -> Vec<f32> {
        let n = self.positions.max(1) as f32;
        // GeM with an integral exponent (the default p = 3) is a few multiplications per
        // activation; `powf`, or even `powi` (a libgcc call per value), costs several percent of
        // an image's whole inference time at ingest.
        let power = match pooling {
            Pooling::Gem { p } if p.fract() == 0.0 && (1.0..=16.0).contains(&p) => Some(p as u32),
            _ => None,
        };
        let mut column = Vec::new();
        let mut pooled = Vec::with_capacity(self.channels);
        for c in 0..self.channels {
            // One channel's activations as a slice: borrowed in channel-major maps, gathered for
            // channel-last ones.
            let values: &[f32] = if self.position_stride == 1 {
                &self.data[c * self.channel_stride..c * self.channel_stride + self.positions]
            } else {
                column.clear();
                column.extend((0..self.positions).map(|p| self.data[c * self.channel_stride + p * self.position_stride]));
                &column
            };
            pooled.push(match pooling {
                Pooling::None | Pooling::Avg => values.iter().sum::<f32>() / n,
                Pooling::Max => values.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                // Clamp to a small positive floor: GeM is defined on non-negative activations
                // and x^p of a negative x is undefined for fractional p.
                Pooling::Gem { p } => {
                    let mean = match power {
                        Some(k) => values.iter().map(|&x| integral_power(x.max(1e-6), k)).sum::<f32>() / n,
                        None => values.iter().map(|&x| x.max(1e-6).powf(p)).sum::<f32>() / n,
                    };
                    mean.powf(1.0 / p)
                }
            });
        }
        pooled
    }
}

/// `x^k` by repeated multiplication, inlined (k is small: 1..=16).
#[inline(always)]
fn integral_power(x: f32, k: u32) -> f32 {
    let mut y = x;
    for _ in 1..k {
        y *= x;
    }
    y
}

/// `v` scaled to unit length (see [`l2_normalize`]).
fn l2_normalised(mut v: Vec<f32>) -> Vec<f32> {
    l2_normalize(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_over_both_layouts() {
        // Two channels, three positions: channel 0 = [1, 2, 3], channel 1 = [4, 0, 8].
        let nchw = [1.0, 2.0, 3.0, 4.0, 0.0, 8.0];
        let nhwc = [1.0, 4.0, 2.0, 0.0, 3.0, 8.0];
        for (data, cs, ps) in [(&nchw, 3, 1), (&nhwc, 1, 2)] {
            let fm = FeatureMap { data, channels: 2, positions: 3, channel_stride: cs, position_stride: ps };
            assert_eq!(fm.pool(Pooling::Avg), [2.0, 4.0]);
            assert_eq!(fm.pool(Pooling::Max), [3.0, 8.0]);
            let gem1 = fm.pool(Pooling::Gem { p: 1.0 });
            assert!((gem1[0] - 2.0).abs() < 1e-4 && (gem1[1] - 4.0).abs() < 1e-4);
            // ((1 + 8 + 27) / 3)^(1/3) and ((64 + 0 + 512) / 3)^(1/3): the multiplication path
            // for integral exponents agrees with powf.
            let gem = fm.pool(Pooling::Gem { p: 3.0 });
            assert!((gem[0] - 12f32.cbrt()).abs() < 1e-5 && (gem[1] - 192f32.cbrt()).abs() < 1e-4, "{gem:?}");
            let fractional = fm.pool(Pooling::Gem { p: 2.5 });
            let want = ((1f32 + 2f32.powf(2.5) + 3f32.powf(2.5)) / 3.0).powf(0.4);
            assert!((fractional[0] - want).abs() < 1e-5, "{fractional:?}");
        }
    }

    #[test]
    fn normalisation() {
        assert_eq!(l2_normalised(vec![3.0, 4.0]), [0.6, 0.8]);
        assert_eq!(l2_normalised(vec![0.0, 0.0]), [0.0, 0.0]);
    }

    #[test]
    fn missing_library_says_run_make_setup() {
        // Only meaningful before any environment exists in this process; afterwards the
        // environment is reused and the path is not consulted.
        if ORT_ENV.get().is_some() {
            return;
        }
        let spec = crate::model::ModelSpec {
            name: "x".into(),
            onnx: "/nonexistent.onnx".into(),
            input: crate::model::InputSpec { name: "image".into(), size: 8, layout: Layout::Nchw, mean: [0.0; 3], std: [1.0; 3], fit: crate::model::Fit::Pad },
            output: "features".into(),
            pooling: Pooling::Avg,
            logits: None,
            int8: None,
        };
        let err = OrtEncoder::new(Path::new("/nonexistent/libonnxruntime.so"), spec, 1).unwrap_err();
        assert!(format!("{err:#}").contains("make setup"), "{err:#}");
    }
}
