//! `OrtEncoder` on tiny hand-built ONNX graphs: NHWC inputs, feature maps in NHWC, vector
//! outputs, and spec/graph mismatches; and a model of one's own through the command line (a
//! JSON description beside its graph). Needs the ONNX Runtime library of `make setup` (the test
//! fails, naming `make setup`, when it is missing).

mod common;

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
        int8: None,
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

#[test]
fn vector_outputs_refuse_a_pooling_they_cannot_have() {
    let dir = tempfile::tempdir().unwrap();
    let model = nhwc_model(dir.path());
    let enc = OrtEncoder::new(&lib(), spec(model, "vec", Pooling::Max), 1).unwrap();
    let error = format!("{:#}", enc.encode(&[image()]).expect_err("pooling a vector is refused"));
    assert!(error.contains("\"pooling\": {\"kind\": \"none\"}"), "the error says what to write: {error}");
}

/// A model of one's own, described by a JSON file whose `onnx` path is relative to it, given
/// to `index` as a relative `--model` path; the catalog is then searched from another
/// directory, without `--model` (the catalog remembers its model).
#[test]
fn an_own_model_given_by_a_relative_path_works_from_any_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    nhwc_model(&dir.path().join("models"));
    let mut described = spec("nhwc.onnx".into(), "map", Pooling::Avg);
    described.name = "nhwc-own".into();
    std::fs::write(dir.path().join("models/nhwc.json"), serde_json::to_string(&described).unwrap()).unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for (i, colour) in [[200u8, 30, 30], [30, 200, 30], [30, 30, 200]].into_iter().enumerate() {
        image::RgbImage::from_pixel(8, 8, image::Rgb(colour)).save(photos.join(format!("p{i}.png"))).unwrap();
    }
    let run = |cwd: &Path, args: &[&str]| std::process::Command::new(common::BIN).current_dir(cwd).args(args).env("LOOKALIKE_LOG", "warn").output().unwrap();
    let out = run(dir.path(), &["index", "--db", "shop.db", "--images", "photos", "--model", "models/nhwc.json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let elsewhere = tempfile::tempdir().unwrap();
    let db = dir.path().join("shop.db");
    let query = photos.join("p1.png");
    let out = run(elsewhere.path(), &["search", "--db", common::path(&db), common::path(&query), "--json", "-k", "1"]);
    assert!(out.status.success(), "search from another directory: {}", String::from_utf8_lossy(&out.stderr));
    let hits: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hits["hits"][0]["id"], "p1.png", "{hits}");

    // Another model on this catalog: the way out the error gives is one that works.
    let out = run(elsewhere.path(), &["search", "--db", common::path(&db), common::path(&query), "--model", "efficientnet-lite0"]);
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && error.contains("leave out --model"), "{error}");
}

#[test]
fn an_index_that_fails_before_adding_anything_leaves_no_catalog_behind() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.json"), "{ not json").unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).save(photos.join("p.png")).unwrap();
    let db = dir.path().join("new.db");
    let model = dir.path().join("broken.json");
    let out = common::lookalike(&["index", "--db", common::path(&db), "--images", common::path(&photos), "--model", common::path(&model)]);
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && error.contains("parsing model description"), "{error}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).filter(|n| n.to_string_lossy().starts_with("new.db")).collect();
    assert!(left.is_empty(), "no catalog file left behind: {left:?}");
}
