//! Load-time rewrites of an ONNX model that make ONNX Runtime compute less for the same
//! results. The file on disk is never changed; the encoder hands the rewritten bytes to ONNX
//! Runtime.
//!
//! The model is decoded once ([`decode_whole`]) and each rewrite changes it in place. Both work
//! only on models these message types describe completely: a model is rewritten only if it
//! survives a decode/encode round trip byte for byte, because re-encoding a model with fields
//! [`crate::model::onnx`] does not declare would silently drop them. Anything else runs as it
//! is.

use std::collections::HashSet;

use anyhow::Result;
use prost::Message;

use super::onnx::{DimValue, ModelProto, FLOAT};

/// The model, if lookalike's message types cover every byte of it (`None`: run the file as it is).
pub fn decode_whole(bytes: &[u8]) -> Result<Option<ModelProto>> {
    let model = ModelProto::decode(bytes).map_err(|e| anyhow::anyhow!("decoding the ONNX model: {e}"))?;
    Ok((model.encode_to_vec() == bytes).then_some(model))
}

/// Removes every node, initializer and graph output that the outputs `keep` do not depend on.
/// Returns whether anything was removed.
///
/// Why: ONNX Runtime runs every node of a graph whatever outputs a call fetches, so a model that
/// also carries a classifier head (the built-in EfficientNets keep theirs for the known-answer
/// tests) pays for it on every image: on one core the head is 3-6% of an EfficientNet-Lite0
/// inference, its 5 MB of weights streamed through the cache for each batch.
///
/// An output in `keep` that the graph does not have is an error, and leaves the model as it was.
pub fn prune_to_outputs(model: &mut ModelProto, keep: &[&str]) -> Result<bool> {
    let Some(graph) = model.graph.as_mut() else { return Ok(false) };
    for name in keep {
        anyhow::ensure!(graph.output.iter().any(|o| o.name == *name), "the model has no output named {name:?}");
    }
    // ONNX graphs are topologically sorted, so one backward pass finds everything `keep` needs.
    let mut needed: HashSet<String> = keep.iter().map(|s| s.to_string()).collect();
    let mut wanted = vec![false; graph.node.len()];
    for (i, node) in graph.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            wanted[i] = true;
            needed.extend(node.input.iter().filter(|n| !n.is_empty()).cloned());
        }
    }
    if wanted.iter().all(|&w| w) && graph.output.len() == keep.len() {
        return Ok(false);
    }
    let mut wanted = wanted.into_iter();
    graph.node.retain(|_| wanted.next().unwrap_or(true));
    let dropped_initializers: HashSet<String> = graph.initializer.iter().filter(|t| !needed.contains(&t.name)).map(|t| t.name.clone()).collect();
    graph.initializer.retain(|t| needed.contains(&t.name));
    // Real inputs stay (the model's interface does not change); inputs that only named a dropped
    // initializer (IR < 4 style) go with it.
    graph.input.retain(|i| !dropped_initializers.contains(&i.name));
    graph.value_info.retain(|v| needed.contains(&v.name));
    graph.output.retain(|o| keep.contains(&o.name.as_str()));
    Ok(true)
}

/// Specialises a model for greyscale pictures, whose three colour planes are equal.
///
/// When the image input feeds exactly one convolution, convolving three equal planes with the
/// kernel's three input-channel slices equals convolving one plane with their sum (zero
/// padding included). The rewritten model takes `[N, 1, H, W]` and does a third of the first
/// layer's work, and the input it is handed is a third of the size; every later layer is
/// untouched. Results agree with the original to float rounding (about 1e-5 on activations of
/// magnitude 6). The caller must only use it for inputs whose three planes are equal after
/// normalisation, i.e. when the model normalises the channels alike.
///
/// Returns whether the model was rewritten; it is left as it was when it is not of that shape:
/// the input is not `[N, 3, H, W]`, or it feeds something other than a single ungrouped `Conv`
/// whose float weights are an initializer of their own.
pub fn fold_grey_input(model: &mut ModelProto, input: &str) -> bool {
    let Some(graph) = model.graph.as_mut() else { return false };
    let consumers: Vec<usize> = (0..graph.node.len()).filter(|&i| graph.node[i].input.iter().any(|n| n == input)).collect();
    let [stem] = consumers[..] else { return false };
    let conv = &graph.node[stem];
    let grouped = conv.attribute.iter().any(|a| a.name == "group" && a.i != 1);
    if conv.op_type != "Conv" || !conv.domain.is_empty() || grouped || conv.input.first().map(String::as_str) != Some(input) {
        return false;
    }
    let weight_name = match conv.input.get(1) {
        Some(w) if conv.input.iter().filter(|n| *n == input).count() == 1 => w.clone(),
        _ => return false,
    };
    let shared = graph.node.iter().flat_map(|n| &n.input).filter(|n| **n == weight_name).count() > 1 || graph.input.iter().chain(&graph.output).any(|v| v.name == weight_name);
    if shared {
        return false;
    }
    let Some(weight) = graph.initializer.iter_mut().find(|t| t.name == weight_name) else { return false };
    let &[filters, 3, kh, kw] = &weight.dims[..] else { return false };
    if weight.data_type != FLOAT || filters < 1 || kh < 1 || kw < 1 {
        return false;
    }
    let taps = (kh * kw) as usize;
    let count = filters as usize * 3 * taps;
    let values: Vec<f32> = if weight.raw_data.len() == count * 4 {
        weight.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    } else if weight.float_data.len() == count {
        weight.float_data.clone()
    } else {
        return false;
    };

    // The input must be [N, 3, H, W]; it becomes [N, 1, H, W].
    let Some(dims) =
        graph.input.iter_mut().find(|v| v.name == input).and_then(|v| v.r#type.as_mut()).and_then(|t| t.tensor_type.as_mut()).and_then(|t| t.shape.as_mut()).map(|s| &mut s.dim)
    else {
        return false;
    };
    if dims.len() != 4 || dims[1].value != Some(DimValue::DimValue(3)) {
        return false;
    }
    dims[1].value = Some(DimValue::DimValue(1));

    let mut folded = Vec::with_capacity(filters as usize * taps * 4);
    for filter in values.chunks_exact(3 * taps) {
        let (r, rest) = filter.split_at(taps);
        let (g, b) = rest.split_at(taps);
        for ((r, g), b) in r.iter().zip(g).zip(b) {
            folded.extend_from_slice(&(r + g + b).to_le_bytes());
        }
    }
    weight.dims[1] = 1;
    weight.raw_data = folded;
    weight.float_data.clear();
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::onnx::{AttributeProto, Dim, GraphBuilder, OPSET};

    /// x -> Relu -> features; features -> MatMul(w) -> logits.
    fn two_headed() -> ModelProto {
        let mut g = GraphBuilder::new("t");
        g.input("x", FLOAT, &[Dim::Fixed(1), Dim::Fixed(4)]);
        g.node_with_outputs("Relu", &["x"], &["features"], vec![]);
        let w = g.initializer_f32("w", &[4, 2], &[0.5; 8]);
        g.node_with_outputs("MatMul", &["features", &w], &["logits"], vec![]);
        g.output("features", FLOAT, &[Dim::Fixed(1), Dim::Fixed(4)]);
        g.output("logits", FLOAT, &[Dim::Fixed(1), Dim::Fixed(2)]);
        g.finish(OPSET, "test")
    }

    #[test]
    fn pruning_keeps_only_what_the_outputs_need() {
        let mut pruned = two_headed();
        assert!(prune_to_outputs(&mut pruned, &["features"]).unwrap());
        let graph = pruned.graph.unwrap();
        assert_eq!(graph.node.iter().map(|n| n.op_type.as_str()).collect::<Vec<_>>(), ["Relu"]);
        assert!(graph.initializer.is_empty());
        assert_eq!(graph.output.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["features"]);
        assert_eq!(graph.input.len(), 1);
        // Keeping everything changes nothing; an unknown output is an error and changes nothing.
        let mut whole = two_headed();
        assert!(!prune_to_outputs(&mut whole, &["features", "logits"]).unwrap());
        assert!(prune_to_outputs(&mut whole, &["features", "nope"]).is_err());
        assert_eq!(whole, two_headed());
    }

    #[test]
    fn models_with_undeclared_fields_are_not_rewritten() {
        let mut bytes = two_headed().encode_to_vec();
        assert_eq!(decode_whole(&bytes).unwrap(), Some(two_headed()));
        // ModelProto.metadata_props (field 14), which these types do not declare: a decode and
        // re-encode would lose it, so the model must be run as it is.
        let prop = [0x0a, 1, b'k', 0x12, 1, b'v'];
        bytes.extend_from_slice(&[0x72, prop.len() as u8]);
        bytes.extend_from_slice(&prop);
        assert_eq!(decode_whole(&bytes).unwrap(), None);
    }

    /// image [N, 3, 4, 4] -> Conv(w: 2 filters, 3x3) -> features.
    fn stem(group: i64) -> ModelProto {
        let mut g = GraphBuilder::new("t");
        g.input("image", FLOAT, &[Dim::Param("batch".into()), Dim::Fixed(3), Dim::Fixed(4), Dim::Fixed(4)]);
        let weights: Vec<f32> = (0..54).map(|i| i as f32 / 10.0).collect();
        let w = g.initializer_f32("w", &[2, 3, 3, 3], &weights);
        g.node_with_outputs("Conv", &["image", &w], &["features"], vec![AttributeProto::int("group", group), AttributeProto::ints("pads", &[1, 1, 1, 1])]);
        g.output("features", FLOAT, &[Dim::Param("batch".into()), Dim::Fixed(2), Dim::Fixed(4), Dim::Fixed(4)]);
        g.finish(OPSET, "test")
    }

    #[test]
    fn grey_folding_sums_the_stem_over_colour_channels() {
        let mut folded = stem(1);
        assert!(fold_grey_input(&mut folded, "image"));
        let graph = folded.graph.unwrap();
        let w = &graph.initializer[0];
        assert_eq!(w.dims, [2, 1, 3, 3]);
        let values: Vec<f32> = w.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        // Filter 0, tap 0: weights 0.0 + 0.9 + 1.8; filter 1, tap 8: 3.5 + 4.4 + 5.3.
        assert!((values[0] - 2.7).abs() < 1e-5 && (values[17] - 13.2).abs() < 1e-5, "{values:?}");
        let dims = &graph.input[0].r#type.as_ref().unwrap().tensor_type.as_ref().unwrap().shape.as_ref().unwrap().dim;
        assert_eq!(dims[1].value, Some(DimValue::DimValue(1)));
        assert_eq!(dims[0].value, Some(DimValue::DimParam("batch".into())));
    }

    #[test]
    fn grey_folding_leaves_other_shapes_alone() {
        // A grouped stem, an input that feeds two nodes, an input name the graph lacks.
        let mut twice = stem(1);
        let graph = twice.graph.as_mut().unwrap();
        graph.node.push(crate::model::onnx::NodeProto { op_type: "Relu".into(), input: vec!["image".into()], output: vec!["r".into()], ..Default::default() });
        for (mut model, input) in [(stem(3), "image"), (twice, "image"), (stem(1), "pixels")] {
            let before = model.clone();
            assert!(!fold_grey_input(&mut model, input));
            assert_eq!(model, before, "left as it was");
        }
    }
}
