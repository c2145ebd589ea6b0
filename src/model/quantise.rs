//! int8 copies of a float model in ONNX's QDQ form: `QuantizeLinear`/`DequantizeLinear` pairs
//! around every activation a convolution reads or writes, int8 weights per output channel and
//! int32 biases. ONNX Runtime fuses each `DQ -> Conv -> Q` into an integer convolution (VNNI or
//! AVX-512 kernels where the CPU has them); on the 2-core AVX-512 VNNI machine Lite0 ran 2.0-2.7x
//! faster per image than in float.
//!
//! Weights are 7-bit (-63..63) in the copies made now ([`WEIGHT_BITS`]). Why: without VNNI,
//! ONNX Runtime's x86 kernels (AVX2, AVX-512BW) multiply uint8 activations by int8 weights with
//! `vpmaddubsw`, which adds each pair of products into a saturating int16: 2 x 255 x 127
//! overflows it, 2 x 255 x 63 does not. On a 2-core AVX2 machine without VNNI, 8-bit weights
//! gave Lite0 vectors a median cosine of 0.869 to the float model's (300 Fashion-MNIST photos,
//! `tests/model_int8.rs`), 7-bit ones 0.963. ONNX Runtime's own quantiser offers the same
//! (`reduce_range`). Copies made before keep their 8 bits (recorded with the catalog), so
//! their vectors stay comparable. A copy that only the machine making it runs (an int8
//! import's, `tune`'s) takes 8 bits where the CPU has VNNI ([`local_weight_bits`]): there 7
//! bits cost the int8 import 0.0046 of clean P@10 and 0.0032 of perturbed.
//!
//! The activation ranges come from running the float model on the catalog's own photos
//! ([`quantisation_points`] names the tensors to watch, [`with_outputs`] exposes them; the
//! encoder runs it). The graph rewrite itself ([`to_qdq`]) is plain data in, data out.
//!
//! Scope: the graphs lookalike writes itself (Conv with constant weights and bias, ReLU6 as
//! `Clip(0, 6)`, residual `Add`); anything else in a graph stays in float.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{bail, ensure, Context, Result};

use super::onnx::{AttributeProto, ModelProto, NodeProto, TensorProto, ValueInfoProto, FLOAT};

/// `TensorProto.DataType` values of the quantised tensors.
const UINT8: i32 = 2;
const INT8: i32 = 3;
const INT32: i32 = 6;

/// Bits of the weights of the int8 copies made now that other machines may run (an int8
/// catalog's, which its queries run wherever it is served; see the module's notes); 8 for
/// copies made before this was recorded.
pub const WEIGHT_BITS: u8 = 7;

/// Bits of the weights of an int8 copy that only this machine runs (one importing a float
/// catalog's photos, or encoding `tune`'s training photos): 8 where the CPU has AVX-512 VNNI,
/// whose integer kernels add each product in 32 bits and so lose nothing to full 8-bit
/// weights, [`WEIGHT_BITS`] elsewhere. Measured on a 2-core AMD EPYC with AVX-512 VNNI (60,000
/// products imported by the copy, 10,000 float queries; docs/bench/int8): clean P@10 0.8985
/// with 8-bit weights, 0.8940 with 7-bit, 0.8991 in float; perturbed 0.7983, 0.7951, 0.8019.
/// (AVX-VNNI without AVX-512 is left at 7 bits: not measured.)
pub fn local_weight_bits() -> u8 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512vnni") {
        return 8;
    }
    WEIGHT_BITS
}

/// Observed `[min, max]` of each activation tensor, by name.
pub type ActivationRanges = BTreeMap<String, [f32; 2]>;

/// The activations to quantise: the graph input a convolution reads, each convolution's output
/// (after its ReLU6, which the quantisation's saturation then replaces) and each residual sum.
pub fn quantisation_points(model: &ModelProto) -> Result<Vec<String>> {
    let graph = model.graph.as_ref().context("the model has no graph")?;
    let consumers = consumers(&graph.node);
    let inputs: HashSet<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
    let mut points = Vec::new();
    let mut seen = HashSet::new();
    for node in &graph.node {
        let produced = match node.op_type.as_str() {
            "Conv" => {
                let input = node.input.first().context("a Conv without input")?;
                if inputs.contains(input.as_str()) && seen.insert(input.clone()) {
                    points.push(input.clone());
                }
                let out = node.output.first().context("a Conv without output")?;
                match relu6_after(&graph.node, &consumers, out) {
                    Some(clip) => clip.output[0].clone(),
                    None => out.clone(),
                }
            }
            "Add" => node.output.first().context("an Add without output")?.clone(),
            _ => continue,
        };
        if seen.insert(produced.clone()) {
            points.push(produced);
        }
    }
    ensure!(!points.is_empty(), "the model has no convolutions to quantise");
    Ok(points)
}

/// `model` with each of `names` also a graph output (float), so one run observes them all.
pub fn with_outputs(model: &ModelProto, names: &[String]) -> Result<ModelProto> {
    let mut model = model.clone();
    let graph = model.graph.as_mut().context("the model has no graph")?;
    let existing: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    for name in names.iter().filter(|n| !existing.contains(*n)) {
        graph.output.push(ValueInfoProto::tensor(name, FLOAT, &[]));
    }
    // No shape: ONNX Runtime infers it. An empty dims list would claim a scalar.
    for output in graph.output.iter_mut().filter(|o| !existing.contains(&o.name)) {
        if let Some(t) = output.r#type.as_mut().and_then(|t| t.tensor_type.as_mut()) {
            t.shape = None;
        }
    }
    Ok(model)
}

/// Collects each activation's range batch by batch (a batch: a few calibration photos).
///
/// The range kept is the median over the batches of each batch's minimum and maximum, not the
/// extremes over all photos (the way TensorFlow's moving-average calibration also discounts
/// outliers): one photo with an outlying activation would otherwise widen the range, and so
/// coarsen the 255 steps, for every photo, while saturating that one photo's few outlying values
/// costs little. Measured on 2,000 perturbed Fashion-MNIST queries against 10,000 products
/// (`examples/int8_calibration_study.rs`): the query embeddings' mean cosine to the float
/// model's was 0.9870 with the extremes, 0.9878 with the median (docs/bench/int8).
#[derive(Debug, Default)]
pub struct RangeObserver {
    batches: BTreeMap<String, Vec<[f32; 2]>>,
}

impl RangeObserver {
    /// Records one batch's values of activation `name`.
    pub fn observe(&mut self, name: &str, data: &[f32]) {
        let (lo, hi) = data.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        self.batches.entry(name.to_string()).or_default().push([lo, hi]);
    }

    /// Each activation's median batch minimum and median batch maximum.
    pub fn ranges(&self) -> ActivationRanges {
        let median = |mut values: Vec<f32>| {
            values.sort_by(f32::total_cmp);
            values[values.len() / 2]
        };
        self.batches
            .iter()
            .filter(|(_, seen)| !seen.is_empty())
            .map(|(name, seen)| (name.clone(), [median(seen.iter().map(|r| r[0]).collect()), median(seen.iter().map(|r| r[1]).collect())]))
            .collect()
    }
}

/// uint8 scale and zero point covering `[min, max]` (widened to include 0, so that zero
/// padding is exact).
fn activation_params([min, max]: [f32; 2]) -> (f32, u8) {
    let (lo, hi) = (min.min(0.0), max.max(0.0));
    let scale = if hi - lo > f32::EPSILON { (hi - lo) / 255.0 } else { 1.0 };
    let zero = (-lo / scale).round().clamp(0.0, 255.0) as u8;
    (scale, zero)
}

/// The QDQ int8 copy of `model` for the observed `ranges` (every point of
/// [`quantisation_points`] must have one).
pub fn to_qdq(model: &ModelProto, ranges: &ActivationRanges, weight_bits: u8) -> Result<ModelProto> {
    ensure!((2..=8).contains(&weight_bits), "weights of {weight_bits} bits cannot be stored as int8");
    let weight_max = f32::from((1u8 << (weight_bits - 1)) - 1);
    let points = quantisation_points(model)?;
    for p in &points {
        let range = ranges.get(p).with_context(|| format!("no calibrated range for activation {p:?}"))?;
        ensure!(range.iter().all(|v| v.is_finite()) && range[0] <= range[1], "activation {p:?} has no usable range {range:?}");
    }
    let mut model = model.clone();
    let graph = model.graph.as_mut().context("the model has no graph")?;
    let input_names: HashSet<String> = graph.input.iter().map(|i| i.name.clone()).collect();

    // ReLU6 after a convolution goes: the quantised output saturates at the observed range,
    // which lies inside [0, 6] because it was observed after the Clip.
    let consumers = consumers(&graph.node);
    let mut fold: HashMap<String, String> = HashMap::new(); // conv output -> clip output
    let mut dropped: HashSet<usize> = HashSet::new();
    for node in graph.node.iter().filter(|n| n.op_type == "Conv") {
        if let Some(clip) = relu6_after(&graph.node, &consumers, &node.output[0]) {
            fold.insert(node.output[0].clone(), clip.output[0].clone());
            if let Some(i) = graph.node.iter().position(|n| std::ptr::eq(n, clip)) {
                dropped.insert(i);
            }
        }
    }
    let mut nodes: Vec<NodeProto> = graph.node.iter().enumerate().filter(|(i, _)| !dropped.contains(i)).map(|(_, n)| n.clone()).collect();
    for node in nodes.iter_mut().filter(|n| n.op_type == "Conv") {
        if let Some(out) = fold.get(&node.output[0]) {
            node.output[0] = out.clone();
        }
    }

    let initializers: HashMap<String, TensorProto> = graph.initializer.drain(..).map(|t| (t.name.clone(), t)).collect();
    let mut kept_initializers: Vec<TensorProto> = Vec::new();
    let mut used_initializers: HashSet<String> = HashSet::new();
    let mut out_nodes: Vec<NodeProto> = Vec::new();
    let point_set: HashSet<&String> = points.iter().collect();

    // Activation quantisation: the producer writes `{name}_float`; Q and DQ give `name` back, so
    // every consumer (and a graph output of that name) reads the quantised value. A graph
    // input keeps its name and its consumers read `{name}_dequantised` instead.
    let mut renamed_inputs: HashMap<String, String> = HashMap::new();
    let qdq = |out_nodes: &mut Vec<NodeProto>, kept: &mut Vec<TensorProto>, float: &str, result: &str, name: &str| {
        let (scale, zero) = activation_params(ranges[name]);
        let (s, z) = (format!("{name}_scale"), format!("{name}_zero_point"));
        kept.push(TensorProto::f32(&s, &[], &[scale]));
        kept.push(TensorProto { name: z.clone(), data_type: UINT8, raw_data: vec![zero], ..Default::default() });
        let q = format!("{name}_quantised");
        out_nodes.push(node("QuantizeLinear", &[float, &s, &z], &q, vec![]));
        out_nodes.push(node("DequantizeLinear", &[&q, &s, &z], result, vec![]));
    };
    for input in points.iter().filter(|p| input_names.contains(*p)) {
        let result = format!("{input}_dequantised");
        qdq(&mut out_nodes, &mut kept_initializers, input, &result, input);
        renamed_inputs.insert(input.clone(), result);
    }

    for mut n in nodes {
        for i in n.input.iter_mut() {
            if let Some(r) = renamed_inputs.get(i) {
                *i = r.clone();
            }
        }
        if n.op_type == "Conv" {
            let kept = (&mut kept_initializers, &mut used_initializers, &mut out_nodes);
            quantise_conv_weights(&mut n, &initializers, ranges, weight_max, kept)?;
        }
        let quantised_output = n.output.first().filter(|o| point_set.contains(o)).cloned();
        match quantised_output {
            Some(out) => {
                let float = format!("{out}_float");
                n.output[0] = float.clone();
                out_nodes.push(n);
                qdq(&mut out_nodes, &mut kept_initializers, &float, &out, &out);
            }
            None => out_nodes.push(n),
        }
    }
    // Initializers the rewrite did not replace stay as they were.
    let mut rest: Vec<TensorProto> = initializers.into_values().filter(|t| !used_initializers.contains(&t.name)).collect();
    rest.sort_by(|a, b| a.name.cmp(&b.name));
    graph.initializer = rest;
    graph.initializer.extend(kept_initializers);
    graph.node = out_nodes;
    // ReLU6's bounds went with the Clips.
    let read: HashSet<&String> = graph.node.iter().flat_map(|n| &n.input).collect();
    let unread: HashSet<String> = graph.initializer.iter().filter(|t| !read.contains(&t.name)).map(|t| t.name.clone()).collect();
    graph.initializer.retain(|t| !unread.contains(&t.name));
    graph.input.retain(|i| !unread.contains(&i.name));
    Ok(model)
}

/// Replaces a Conv's float weight and bias initializers with int8 weights (symmetric, per
/// output channel, within +-`weight_max`) and int32 biases (scale: input scale x weight scale),
/// each behind a `DequantizeLinear` along axis 0; the new initializers go to `kept`, the names
/// replaced to `used`, the new nodes to `nodes`.
fn quantise_conv_weights(
    conv: &mut NodeProto,
    initializers: &HashMap<String, TensorProto>,
    ranges: &ActivationRanges,
    weight_max: f32,
    (kept, used, nodes): (&mut Vec<TensorProto>, &mut HashSet<String>, &mut Vec<NodeProto>),
) -> Result<()> {
    let input = conv.input[0].trim_end_matches("_dequantised").to_string();
    let input_range = ranges.get(&input).with_context(|| format!("no range for the input {input:?} of a Conv"))?;
    let (input_scale, _) = activation_params(*input_range);
    let Some(weight) = conv.input.get(1).and_then(|w| initializers.get(w)) else { bail!("Conv {:?} has no constant weight", conv.name) };
    let w = floats(weight)?;
    let out_channels = *weight.dims.first().context("a weight without dimensions")? as usize;
    ensure!(out_channels > 0 && w.len() % out_channels == 0, "weight {:?} does not split into {out_channels} channels", weight.name);
    let per_channel = w.len() / out_channels;
    let mut scales = Vec::with_capacity(out_channels);
    let mut q = Vec::with_capacity(w.len());
    for channel in w.chunks(per_channel) {
        let max = channel.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / weight_max } else { 1.0 };
        scales.push(scale);
        q.extend(channel.iter().map(|v| (v / scale).round().clamp(-weight_max, weight_max) as i8 as u8));
    }
    let name = &weight.name;
    used.insert(name.clone());
    let (wq, ws, wz, wd) = (format!("{name}_quantised"), format!("{name}_scale"), format!("{name}_zero_point"), format!("{name}_dequantised"));
    kept.push(TensorProto { name: wq.clone(), dims: weight.dims.clone(), data_type: INT8, raw_data: q, ..Default::default() });
    kept.push(TensorProto::f32(&ws, &[out_channels], &scales));
    kept.push(TensorProto { name: wz.clone(), dims: vec![out_channels as i64], data_type: INT8, raw_data: vec![0; out_channels], ..Default::default() });
    nodes.push(node("DequantizeLinear", &[&wq, &ws, &wz], &wd, vec![AttributeProto::int("axis", 0)]));
    conv.input[1] = wd;

    if let Some(bias) = conv.input.get(2).and_then(|b| initializers.get(b)) {
        let b = floats(bias)?;
        ensure!(b.len() == out_channels, "bias {:?} has {} values for {out_channels} channels", bias.name, b.len());
        let bias_scales: Vec<f32> = scales.iter().map(|s| s * input_scale).collect();
        let mut raw = Vec::with_capacity(b.len() * 4);
        for (v, s) in b.iter().zip(&bias_scales) {
            raw.extend_from_slice(&((v / s).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32).to_le_bytes());
        }
        let name = &bias.name;
        used.insert(name.clone());
        let (bq, bs, bz, bd) = (format!("{name}_quantised"), format!("{name}_scale"), format!("{name}_zero_point"), format!("{name}_dequantised"));
        kept.push(TensorProto { name: bq.clone(), dims: vec![out_channels as i64], data_type: INT32, raw_data: raw, ..Default::default() });
        kept.push(TensorProto::f32(&bs, &[out_channels], &bias_scales));
        kept.push(TensorProto { name: bz.clone(), dims: vec![out_channels as i64], data_type: INT32, raw_data: vec![0; out_channels * 4], ..Default::default() });
        nodes.push(node("DequantizeLinear", &[&bq, &bs, &bz], &bd, vec![AttributeProto::int("axis", 0)]));
        conv.input[2] = bd;
    }
    Ok(())
}

/// A float initializer's values (raw little-endian or `float_data`).
fn floats(t: &TensorProto) -> Result<Vec<f32>> {
    ensure!(t.data_type == FLOAT, "initializer {:?} is not float32", t.name);
    if !t.raw_data.is_empty() {
        ensure!(t.raw_data.len().is_multiple_of(4), "initializer {:?} has a torn raw_data", t.name);
        return Ok(t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect());
    }
    Ok(t.float_data.clone())
}

fn node(op_type: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: format!("{op_type}_{output}"),
        op_type: op_type.into(),
        attribute,
        ..Default::default()
    }
}

/// Node indices reading each value.
fn consumers(nodes: &[NodeProto]) -> HashMap<&str, Vec<usize>> {
    let mut map: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for input in &n.input {
            map.entry(input.as_str()).or_default().push(i);
        }
    }
    map
}

/// The `Clip` that is the only reader of `value`, if there is one.
fn relu6_after<'a>(nodes: &'a [NodeProto], consumers: &HashMap<&str, Vec<usize>>, value: &str) -> Option<&'a NodeProto> {
    match consumers.get(value).map(Vec::as_slice) {
        Some([only]) if nodes[*only].op_type == "Clip" => Some(&nodes[*only]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::onnx::{Dim, GraphBuilder, OPSET};

    /// input -> Conv -> Clip(0, 6) -> Conv -> Add(with the first conv's output) -> output.
    fn small_model() -> ModelProto {
        let mut g = GraphBuilder::new("t");
        g.input("x", FLOAT, &[Dim::Param("batch".into()), Dim::Fixed(2), Dim::Fixed(4), Dim::Fixed(4)]);
        let (min, max) = (g.initializer_f32("min", &[], &[0.0]), g.initializer_f32("max", &[], &[6.0]));
        let w1 = g.initializer_f32("w1", &[2, 2, 1, 1], &[0.5, -0.25, 1.0, 2.0]);
        let b1 = g.initializer_f32("b1", &[2], &[0.1, -0.2]);
        let c1 = g.node("Conv", &["x", &w1, &b1], vec![]);
        let r1 = g.node("Clip", &[&c1, &min, &max], vec![]);
        let w2 = g.initializer_f32("w2", &[2, 2, 1, 1], &[1.0, 0.0, 0.0, -1.0]);
        let b2 = g.initializer_f32("b2", &[2], &[0.0, 0.0]);
        let c2 = g.node("Conv", &[&r1, &w2, &b2], vec![]);
        g.node_with_outputs("Add", &[&c2, &r1], &["out"], vec![]);
        g.output("out", FLOAT, &[Dim::Param("batch".into()), Dim::Fixed(2), Dim::Fixed(4), Dim::Fixed(4)]);
        g.finish(OPSET, "")
    }

    #[test]
    fn points_are_the_input_activations_and_sums() {
        let model = small_model();
        let points = quantisation_points(&model).unwrap();
        assert_eq!(points.len(), 4, "{points:?}");
        assert_eq!(points[0], "x");
        assert!(points[1].starts_with("clip"), "the first conv is observed after its ReLU6: {points:?}");
        assert_eq!(points[3], "out");
        let observed = with_outputs(&model, &points).unwrap();
        assert_eq!(observed.graph.unwrap().output.len(), 4, "one per point, the existing output not repeated");
    }

    #[test]
    fn the_qdq_copy_quantises_every_conv_and_drops_relu6() {
        let model = small_model();
        let ranges: ActivationRanges = quantisation_points(&model).unwrap().into_iter().map(|p| (p, [-1.0, 4.0])).collect();
        let q = to_qdq(&model, &ranges, 8).unwrap();
        let graph = q.graph.unwrap();
        let count = |op: &str| graph.node.iter().filter(|n| n.op_type == op).count();
        assert_eq!(count("Clip"), 0);
        assert_eq!(count("Conv"), 2);
        assert_eq!(count("QuantizeLinear"), 4);
        assert_eq!(count("DequantizeLinear"), 4 + 2 * 2, "activations, then weight and bias of each conv");
        // Every Conv reads dequantised values only.
        for conv in graph.node.iter().filter(|n| n.op_type == "Conv") {
            assert!(conv.input.iter().all(|i| i.ends_with("_dequantised") || graph.node.iter().any(|n| n.op_type == "DequantizeLinear" && n.output[0] == *i)), "{conv:?}");
        }
        // The graph output keeps its name, now after a Q/DQ pair.
        assert!(graph.node.iter().any(|n| n.op_type == "DequantizeLinear" && n.output[0] == "out"));
        // Weights: symmetric int8 per channel; channel 1 of w1 is [1, 2]: scale 2/127.
        let wq = graph.initializer.iter().find(|t| t.name == "w1_quantised").unwrap();
        assert_eq!(wq.raw_data.iter().map(|&b| b as i8).collect::<Vec<_>>(), vec![127, -64, 64, 127]);
        // No float weight of a conv is left.
        assert!(graph.initializer.iter().all(|t| t.name != "w1" && t.name != "w2"));
        assert!(to_qdq(&model, &ActivationRanges::new(), 8).is_err(), "ranges are required");
        // 7-bit weights (the copies made now): channel 1's scale is 2/63 (the halves, 31.5 in
        // exact arithmetic, come out a hair below it in f32).
        let graph = to_qdq(&model, &ranges, WEIGHT_BITS).unwrap().graph.unwrap();
        let wq = graph.initializer.iter().find(|t| t.name == "w1_quantised").unwrap();
        assert_eq!(wq.raw_data.iter().map(|&b| b as i8).collect::<Vec<_>>(), vec![63, -31, 31, 63]);
        assert!(to_qdq(&model, &ranges, 9).is_err(), "int8 holds at most 8 bits");
    }

    #[test]
    fn ranges_are_the_median_batch_extremes_so_one_outlying_photo_does_not_widen_them() {
        let mut observer = RangeObserver::default();
        observer.observe("a", &[0.0, 2.0, 1.0]);
        observer.observe("a", &[-0.5, 2.5]);
        observer.observe("a", &[0.1, 40.0]);
        observer.observe("b", &[3.0]);
        let ranges = observer.ranges();
        assert_eq!(ranges["a"], [0.0, 2.5]);
        assert_eq!(ranges["b"], [3.0, 3.0]);
        assert_eq!(ranges.len(), 2);
    }

    #[test]
    fn activation_parameters_cover_zero_and_the_range() {
        assert_eq!(activation_params([0.0, 6.0]), (6.0 / 255.0, 0));
        let (scale, zero) = activation_params([-1.0, 3.0]);
        assert!((scale - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(zero, 64);
        assert_eq!(activation_params([0.0, 0.0]), (1.0, 0));
    }
}
