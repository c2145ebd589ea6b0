//! The original design's model, ResNet-50, through the plug-in path: the README's model
//! description, verbatim, next to a ResNet-50 graph in torchvision's layout (written by
//! `cargo run --release --example resnet50`, which `make test` runs; random weights, since no
//! pretrained ones are reachable). The catalog is made and searched from different working
//! directories, and the stored vectors are the max-pooled, normalised feature maps.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use lookalike::assets::Assets;
use lookalike::catalog::SqliteCatalog;
use lookalike::encoder::OrtEncoder;
use lookalike::model::ModelSpec;

/// The first ```json block after the README's "Bring your own model" heading.
fn readme_description() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README.md");
    let section = readme.split("### Bring your own model").nth(1).expect("the README has a \"Bring your own model\" section");
    let block = section.split("```json").nth(1).expect("a JSON block in it");
    block.split("```").next().expect("the block ends").to_string()
}

fn run_in(dir: &Path, args: &[&str]) -> std::process::Output {
    command(args).current_dir(dir).output().expect("the lookalike binary runs")
}

fn graph() -> Option<PathBuf> {
    let onnx = Assets::from_env().models_dir().join("resnet50-random-v1.onnx");
    onnx.is_file().then_some(onnx)
}

#[test]
fn resnet50_plugs_in_with_the_readme_description() {
    let Some(onnx) = graph() else {
        eprintln!("skipped: no ResNet-50 graph in the model cache; `cargo run --release --example resnet50` writes it (`make test` does)");
        return;
    };
    let model_dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(model_dir.path().join("model.json"), readme_description()).expect("write description");
    std::os::unix::fs::symlink(&onnx, model_dir.path().join("resnet50.onnx")).expect("link the graph");

    // Indexed with a relative --model path from the description's directory...
    let db = model_dir.path().join("shop.db");
    let out = run_in(model_dir.path(), &["index", "--db", "shop.db", "--fashion-mnist", "train", "--limit", "24", "--fashion-mnist-dir", path(&fm_dir()), "--model", "model.json"]);
    assert!(out.status.success(), "index: {}", String::from_utf8_lossy(&out.stderr));

    // ...and searched from elsewhere without --model: the catalog knows its model.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let catalog = SqliteCatalog::open_existing(&db).expect("catalog");
    let product = catalog.get_by_id("fmnist-train-00005").expect("read").expect("product");
    let photo = elsewhere.path().join("photo.png");
    std::fs::write(&photo, catalog.image_bytes(product.key, &product.image).expect("photo")).expect("write photo");
    let out = run_in(elsewhere.path(), &["search", "--db", path(&db), "--json", "-k", "3", "photo.png"]);
    assert!(out.status.success(), "search: {}", String::from_utf8_lossy(&out.stderr));
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(found["hits"][0]["id"], "fmnist-train-00005", "a catalog photo finds itself: {found}");

    // Stored vectors: the 2048-channel map, max-pooled and normalised, as the description says.
    let spec = ModelSpec::from_json_file(&model_dir.path().join("model.json")).expect("description");
    assert_eq!(spec.name, "resnet50-imagenet");
    let encoder = OrtEncoder::new(&Assets::from_env().onnxruntime_lib().expect("runtime"), spec.clone(), 2).expect("encoder");
    for product in catalog.all_products().expect("products").iter().take(4) {
        let image = catalog.decoded_image(product.key, &product.image).expect("decode");
        let (shape, map) = encoder.feature_maps(&[lookalike::preprocess::prepare_image(&image, None, &spec.input)]).expect("run");
        assert_eq!(shape, [1, 2048, 7, 7]);
        let mut pooled: Vec<f32> = map.chunks(49).map(|c| c.iter().copied().fold(f32::NEG_INFINITY, f32::max)).collect();
        let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt();
        pooled.iter_mut().for_each(|v| *v /= norm);
        let stored = catalog.vector(product.key).expect("read").expect("vector");
        assert_eq!(stored.len(), 2048);
        let cosine: f32 = stored.iter().zip(&pooled).map(|(a, b)| a * b).sum();
        assert!(cosine > 0.99999, "{}: stored vector vs max-pooled map, cosine {cosine}", product.id);
    }
}
