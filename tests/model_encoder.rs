//! `OrtEncoder` on tiny hand-built ONNX graphs: NHWC inputs, feature maps in NHWC, vector
//! outputs, and spec/graph mismatches. Needs the ONNX Runtime library of `make setup` (the test
//! fails, naming `make setup`, when it is missing).

use std::path::{Path, PathBuf};

use lookalike::assets::Assets;
use lookalike::encoder::{Encoder, OrtEncoder};
use lookalike::model::onnx::{self, AttributeProto, Dim, GraphBuilder};
use lookalike::model::{Fit, InputSpec, Layout, ModelSpec, Pooling};

const SIZE: usize = 4;

/// Writes a model with input `x` [batch, 4, 4, 3] (NHWC), output `map` = x (an NHWC feature
/// map) and output `vec` = mean of x over height and width ([batch, 3]).
fn nhwc_model(dir: &Path) -> PathBuf {
    let mut g = GraphBuilder::new("nhwc");
    let batch = Dim::Param("batch".into());
    g.input("x", onnx::FLOAT, &[batch.clone(), Dim::Fixed(SIZE), Dim::Fixed(SIZE), Dim::Fixed(3)]);
    g.node_with_outputs("Identity", &["x"], &["map"], vec![]);
    g.node_with_outputs("ReduceMean", &["x"], &["vec"], vec![AttributeProto::ints("axes", &[1, 2]), AttributeProto::int("keepdims", 0)]);
    g.output("map", onnx::FLOAT, &[batch.clone(), Dim::Fixed(SIZE), Dim::Fixed(SIZE), Dim::Fixed(3)]);
    g.output("vec", onnx::FLOAT, &[batch, Dim::Fixed(3)]);
    let path = dir.join("nhwc.onnx");
    onnx::write_model(&g.finish(onnx::OPSET, "test"), &path).unwrap();
    path
}

fn spec(onnx: PathBuf, output: &str, pooling: Pooling) -> ModelSpec {
    ModelSpec {
        name: "nhwc-test".into(),
        onnx,
        input: InputSpec { name: "x".into(), size: SIZE as u32, layout: Layout::Nhwc, mean: [0.0; 3], std: [1.0; 3], fit: Fit::Pad },
        output: output.into(),
        pooling,
        logits: None,
    }
}

/// Channel c is c + 1 everywhere, except channel 0 at the first pixel, which is 17.
fn image() -> Vec<f32> {
    let mut v: Vec<f32> = (0..SIZE * SIZE).flat_map(|_| [1.0, 2.0, 3.0]).collect();
    v[0] = 17.0;
    v
}

fn unit(v: [f32; 3]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
}

fn lib() -> PathBuf {
    Assets::from_env().onnxruntime_lib().expect("ONNX Runtime library (run `make setup`)")
}

#[test]
fn nhwc_feature_maps_are_pooled_per_channel() {
    let dir = tempfile::tempdir().unwrap();
    let model = nhwc_model(dir.path());
    let enc = OrtEncoder::new(&lib(), spec(model, "map", Pooling::Avg), 1).unwrap();
    let out = enc.encode(&[image(), image()]).unwrap();
    assert_eq!(out.len(), 2);
    // Channel 0 averages (17 + 15) / 16 = 2; max is 17.
    assert!(close(&out[0].vector, &unit([2.0, 2.0, 3.0])), "{:?}", out[0].vector);
    assert!(close(out[0].max_pooled.as_ref().unwrap(), &unit([17.0, 2.0, 3.0])));
    assert_eq!(out[0], out[1]);
}

#[test]
fn vector_outputs_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let model = nhwc_model(dir.path());
    let enc = OrtEncoder::new(&lib(), spec(model, "vec", Pooling::None), 2).unwrap();
    let out = enc.encode(&[image()]).unwrap();
    assert!(close(&out[0].vector, &unit([2.0, 2.0, 3.0])));
    assert_eq!(out[0].max_pooled, None);
    // This model has no classifier output.
    assert!(enc.logits(&[image()]).is_err());
}

#[test]
fn mismatched_specs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = nhwc_model(dir.path());
    assert!(OrtEncoder::new(&lib(), spec(model.clone(), "nope", Pooling::Avg), 1).is_err());
    let mut wrong_input = spec(model.clone(), "map", Pooling::Avg);
    wrong_input.input.name = "image".into();
    assert!(OrtEncoder::new(&lib(), wrong_input, 1).is_err());
    // A feature map with pooling "none" cannot become one vector.
    let enc = OrtEncoder::new(&lib(), spec(model.clone(), "map", Pooling::None), 1).unwrap();
    assert!(enc.encode(&[image()]).is_err());
    assert!(OrtEncoder::new(&lib(), spec(dir.path().join("missing.onnx"), "map", Pooling::Avg), 1).is_err());
}
