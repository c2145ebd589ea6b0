//! Known-answer tests for the built-in EfficientNet-Lite models: the weights converted from the
//! legacy PyTorch files must classify scikit-image's sample photos as ImageNet does, and the
//! pooled features must behave like a similarity embedding.
//!
//! These need the assets of `make setup`; when they are missing the tests FAIL (CI runs
//! `make setup` first, so a silent skip would hide a broken setup).
//!
//! The models are converted into a scratch asset directory (symlinks to the real weights and
//! runtime) so that every run exercises the converter, never a stale cached ONNX file.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use lookalike::assets::Assets;
use lookalike::encoder::{Encoder, OrtEncoder};
use lookalike::model::{self, ModelSpec};

const ESPRESSO: usize = 967;
const CATS: [usize; 3] = [281, 282, 285]; // tabby, tiger cat, Egyptian cat

/// A scratch asset root whose `lib`, `weights` and `samples` point at the real ones and whose
/// `models` directory starts empty.
fn scratch_assets() -> (tempfile::TempDir, Assets) {
    let real = Assets::from_env();
    // Fail loudly, with the "run `make setup`" message, if anything is missing.
    let lib = real.onnxruntime_lib().expect("ONNX Runtime library (run `make setup`)");
    real.efficientnet_weights("lite0").expect("Lite0 weights (run `make setup`)");
    real.efficientnet_weights("lite2").expect("Lite2 weights (run `make setup`)");
    real.sample("coffee.png").expect("sample photos (run `make setup`)");
    real.sample("chelsea.png").expect("sample photos (run `make setup`)");
    let dir = tempfile::tempdir().expect("creating a scratch directory");
    for sub in ["lib", "weights", "samples"] {
        let target = real.root().join(sub);
        std::os::unix::fs::symlink(&target, dir.path().join(sub)).expect("linking assets");
    }
    assert!(lib.is_file());
    let assets = Assets::at(dir.path());
    (dir, assets)
}

/// Decodes a photo, squashes it to `size`x`size` (whole image, Triangle filter) and normalises
/// it as EfficientNet-Lite was trained: (pixel - 127) / 128, NCHW.
fn load(path: &Path, size: u32, flip: bool) -> Result<Vec<f32>> {
    let img = image::open(path).with_context(|| format!("decoding {}", path.display()))?.to_rgb8();
    let mut img = image::imageops::resize(&img, size, size, image::imageops::FilterType::Triangle);
    if flip {
        img = image::imageops::flip_horizontal(&img);
    }
    let plane = (size * size) as usize;
    let mut out = vec![0.0f32; 3 * plane];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px[c] as f32 - 127.0) / 128.0;
        }
    }
    Ok(out)
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

fn softmax_at(v: &[f32], i: usize) -> f32 {
    let max = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = v.iter().map(|x| (x - max).exp()).sum();
    (v[i] - max).exp() / sum
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn encoder(assets: &Assets, model: &str, threads: usize) -> (ModelSpec, OrtEncoder) {
    let spec = model::resolve(assets, model).expect("resolving the built-in model");
    let lib = assets.onnxruntime_lib().expect("ONNX Runtime library (run `make setup`)");
    let enc = OrtEncoder::classifier(&lib, spec.clone(), threads).expect("loading the model");
    (spec, enc)
}

fn check_model(model: &str) {
    let (_dir, assets) = scratch_assets();
    let (spec, enc) = encoder(&assets, model, 2);
    let size = spec.input.size;
    let coffee = load(&assets.sample("coffee.png").unwrap(), size, false).unwrap();
    let chelsea = load(&assets.sample("chelsea.png").unwrap(), size, false).unwrap();
    let flipped = load(&assets.sample("chelsea.png").unwrap(), size, true).unwrap();
    let batch = vec![coffee, chelsea, flipped];

    let logits = enc.logits(&batch).unwrap();
    assert_eq!(logits.len(), 3);
    assert!(logits.iter().all(|l| l.len() == 1000));
    let (top_coffee, top_cat) = (argmax(&logits[0]), argmax(&logits[1]));
    println!(
        "{model}: coffee -> {top_coffee} (p = {:.3}), chelsea -> {top_cat} (p = {:.3}), flipped chelsea -> {}",
        softmax_at(&logits[0], top_coffee),
        softmax_at(&logits[1], top_cat),
        argmax(&logits[2])
    );
    assert_eq!(top_coffee, ESPRESSO, "{model} should see an espresso in coffee.png");
    assert!(CATS.contains(&top_cat), "{model} should see a cat in chelsea.png, saw class {top_cat}");

    let emb = enc.encode(&batch).unwrap();
    assert_eq!(emb.len(), 3);
    for e in &emb {
        assert_eq!(e.vector.len(), 1280);
        let norm: f32 = e.vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        assert_eq!(e.max_pooled.as_ref().map(Vec::len), Some(1280));
    }
    let cat_flip = cosine(&emb[1].vector, &emb[2].vector);
    let cat_coffee = cosine(&emb[1].vector, &emb[0].vector);
    let max_cat_flip = cosine(emb[1].max_pooled.as_ref().unwrap(), emb[2].max_pooled.as_ref().unwrap());
    let max_cat_coffee = cosine(emb[1].max_pooled.as_ref().unwrap(), emb[0].max_pooled.as_ref().unwrap());
    println!("{model}: cosine(cat, flipped cat) = {cat_flip:.3}, cosine(cat, coffee) = {cat_coffee:.3}; max-pooled: {max_cat_flip:.3} / {max_cat_coffee:.3}");
    assert!(cat_flip > 0.9, "{model}: flipped cat should stay close ({cat_flip})");
    assert!(cat_coffee < 0.5, "{model}: cat and coffee should be far apart ({cat_coffee})");

    // Batching must not change results: one image alone gives the same embedding.
    let single = enc.encode(&batch[1..2]).unwrap();
    assert!(cosine(&single[0].vector, &emb[1].vector) > 0.9999);

    // The embedding encoder runs the model without its classifier head (pruned at load): the
    // same vectors, and no logits.
    let lib = assets.onnxruntime_lib().unwrap();
    let features_only = OrtEncoder::new(&lib, spec.clone(), 2).unwrap();
    let pruned = features_only.encode(&batch).unwrap();
    for (a, b) in pruned.iter().zip(&emb) {
        let worst = a.vector.iter().zip(&b.vector).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{model}: pruned model differs by {worst}");
    }
    assert!(features_only.logits(&batch).is_err());

    // A grey picture (three equal planes) runs through the grey specialisation of the model
    // (the stem convolution summed over colour channels): the same vectors as the full model.
    let plane = (size * size) as usize;
    let grey: Vec<Vec<f32>> = [&batch[1], &batch[0]].iter().map(|img| img[..plane].repeat(3)).collect();
    assert!(features_only.has_grey_model(), "{model}: the built-in model should have a grey specialisation");
    let colour_only = OrtEncoder::new(&lib, spec.clone(), 2).unwrap().without_grey_model();
    assert!(!colour_only.has_grey_model());
    let (fast, full) = (features_only.encode(&grey).unwrap(), colour_only.encode(&grey).unwrap());
    for (a, b) in fast.iter().zip(&full) {
        let worst = a.vector.iter().zip(&b.vector).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{model}: grey model differs by {worst}");
    }
    // A mixed batch (grey and colour) runs through the full model and gives the same vectors.
    let mixed = features_only.encode(&[grey[0].clone(), batch[0].clone()]).unwrap();
    assert!(cosine(&mixed[0].vector, &fast[0].vector) > 0.9999 && cosine(&mixed[1].vector, &emb[0].vector) > 0.9999);

    // Malformed input is an error, not a panic.
    assert!(enc.encode(&[vec![0.0; 10]]).is_err());
    assert!(enc.encode(&[]).unwrap().is_empty());
}

#[test]
fn lite0_known_answers() {
    check_model("efficientnet-lite0");
}

#[test]
fn lite2_known_answers() {
    check_model("efficientnet-lite2");
}

/// The converted graph declares what `ModelSpec` promises: a dynamic batch and fixed sizes.
#[test]
fn converted_graph_shapes() {
    let (_dir, assets) = scratch_assets();
    let spec = model::resolve(&assets, "efficientnet-lite2").unwrap();
    let onnx = model::onnx::read_model(&spec.onnx).unwrap();
    assert_eq!(onnx.ir_version, 8);
    let graph = onnx.graph.unwrap();
    let dims = |v: &model::onnx::ValueInfoProto| -> Vec<model::onnx::DimValue> {
        let shape = v.r#type.as_ref().unwrap().tensor_type.as_ref().unwrap().shape.as_ref().unwrap();
        shape.dim.iter().map(|d| d.value.clone().unwrap()).collect()
    };
    use model::onnx::DimValue::{DimParam, DimValue};
    assert_eq!(dims(&graph.input[0]), [DimParam("batch".into()), DimValue(3), DimValue(260), DimValue(260)]);
    assert_eq!(dims(&graph.output[0]), [DimParam("batch".into()), DimValue(1280), DimValue(9), DimValue(9)]);
    assert_eq!(dims(&graph.output[1]), [DimParam("batch".into()), DimValue(1000)]);
}

/// Encode throughput: `cargo test --test model_known_answer -- --ignored --nocapture`.
#[test]
#[ignore]
fn encode_timings() {
    let (_dir, assets) = scratch_assets();
    for model in ["efficientnet-lite0", "efficientnet-lite2"] {
        for threads in [1, 2] {
            let (spec, enc) = encoder(&assets, model, threads);
            let image = load(&assets.sample("chelsea.png").unwrap(), spec.input.size, false).unwrap();
            for batch_size in [1usize, 16] {
                let batch = vec![image.clone(); batch_size];
                enc.encode(&batch).unwrap(); // warm-up
                let runs = if batch_size == 1 { 40 } else { 4 };
                let start = Instant::now();
                for _ in 0..runs {
                    enc.encode(&batch).unwrap();
                }
                let per_image = start.elapsed().as_secs_f64() * 1000.0 / (runs * batch_size) as f64;
                println!("{model} threads={threads} batch={batch_size:>2}: {per_image:6.2} ms/image");
            }
        }
    }
}
