//! Which embedding recipe finds the most look-alikes? Runs EfficientNet-Lite once per input
//! variant over a Fashion-MNIST sample and pools the same feature maps several ways, then reports
//! precision@10 and mAP@10 for each recipe (catalog: the first N train images; queries: a
//! stratified sample of the held-out test split).
//!
//!     cargo run --release --example quality_study -- [CATALOG_SIZE] [QUERIES]
//!
//! Writes docs/quality-study-run.md.

use anyhow::{Context, Result};
use image::DynamicImage;
use lookalike::assets::Assets;
use lookalike::encoder::{FeatureMap, OrtEncoder};
use lookalike::eval::{average_precision, stratified_sample, K};
use lookalike::import::fashion_mnist::FashionMnist;
use lookalike::index::{dot, l2_normalize};
use lookalike::model::{self, Fit, Pooling};
use lookalike::preprocess;

/// `v` scaled to unit length.
fn l2_normalised(mut v: Vec<f32>) -> Vec<f32> {
    l2_normalize(&mut v);
    v
}

/// Pooled vectors of one image under each recipe.
struct Recipes(Vec<(String, Vec<f32>)>);

/// A pooling recipe's name with its catalog and query vectors.
type Variant = (String, Vec<Vec<f32>>, Vec<Vec<f32>>);

fn recipes(map: &[f32], flipped: &[f32], channels: usize) -> Recipes {
    let fm = FeatureMap::channel_major(map, channels);
    let ff = FeatureMap::channel_major(flipped, channels);
    let mut out = Vec::new();
    for (name, pooling) in [("avg", Pooling::Avg), ("max", Pooling::Max), ("gem3", Pooling::Gem { p: 3.0 })] {
        let a = l2_normalised(fm.pool(pooling));
        let b = l2_normalised(ff.pool(pooling));
        let both: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        out.push((name.to_string(), a));
        out.push((format!("{name}+flip"), l2_normalised(both)));
    }
    Recipes(out)
}

fn encode_all(encoder: &OrtEncoder, images: &[DynamicImage]) -> Result<Vec<Recipes>> {
    let spec = model::ModelSpec::clone(lookalike::encoder::Encoder::spec(encoder));
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(32) {
        let mut batch = Vec::new();
        for img in chunk {
            let rgb = preprocess::to_rgb_on_white(img);
            batch.push(preprocess::prepare(&rgb, &spec.input));
            batch.push(preprocess::prepare(&image::imageops::flip_horizontal(&rgb), &spec.input));
        }
        let (shape, data) = encoder.feature_maps(&batch)?;
        let per = data.len() / batch.len();
        for pair in data.chunks(per * 2) {
            out.push(recipes(&pair[..per], &pair[per..], shape[1]));
        }
    }
    Ok(out)
}

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let catalog_size = args.first().copied().unwrap_or(10_000);
    let queries = args.get(1).copied().unwrap_or(1_000);
    let assets = Assets::from_env();
    let dir = assets.fashion_mnist_dir()?;
    let train = FashionMnist::load(&dir, "train")?;
    let test = FashionMnist::load(&dir, "test")?;
    let catalog_images: Vec<DynamicImage> = (0..catalog_size.min(train.len())).map(|i| train.image(i).map(DynamicImage::ImageLuma8)).collect::<Result<_>>()?;
    let catalog_labels: Vec<&str> = (0..catalog_images.len()).map(|i| train.class_name(i)).collect();
    let test_labels: Vec<String> = (0..test.len()).map(|i| test.class_name(i).to_string()).collect();
    let picked = stratified_sample(&test_labels, queries, 42);
    let query_images: Vec<DynamicImage> = picked.iter().map(|&i| test.image(i).map(DynamicImage::ImageLuma8)).collect::<Result<_>>()?;
    let query_labels: Vec<&str> = picked.iter().map(|&i| test_labels[i].as_str()).collect();

    let mut rows = Vec::new();
    let configs: Vec<(&str, u32)> = match std::env::var("STUDY_CONFIGS").as_deref() {
        Ok("quick") => vec![("efficientnet-lite0", 224)],
        _ => vec![("efficientnet-lite0", 224), ("efficientnet-lite0", 160), ("efficientnet-lite0", 288), ("efficientnet-lite2", 260)],
    };
    for (variant, size) in configs {
        let mut spec = model::resolve_sized(&assets, variant, size)?;
        spec.input.fit = Fit::Pad;
        let encoder = OrtEncoder::new(&assets.onnxruntime_lib()?, spec, 2)?;
        let started = std::time::Instant::now();
        let cat = encode_all(&encoder, &catalog_images)?;
        let per_image_ms = started.elapsed().as_secs_f64() * 1000.0 / (2 * catalog_images.len()) as f64;
        let qs = encode_all(&encoder, &query_images)?;
        let recipes_n = cat[0].0.len();
        // (recipe name, catalog vectors, query vectors)
        let mut variants: Vec<Variant> = Vec::new();
        for r in 0..recipes_n {
            let name = cat[0].0[r].0.clone();
            let c: Vec<Vec<f32>> = cat.iter().map(|x| x.0[r].1.clone()).collect();
            let q: Vec<Vec<f32>> = qs.iter().map(|x| x.0[r].1.clone()).collect();
            // Centred: subtract the catalog's mean vector (no labels), renormalise.
            let dim = c[0].len();
            let mut mean = vec![0.0f32; dim];
            for v in &c {
                for (m, x) in mean.iter_mut().zip(v) {
                    *m += x / c.len() as f32;
                }
            }
            let centre = |v: &Vec<f32>| l2_normalised(v.iter().zip(&mean).map(|(x, m)| x - m).collect());
            let cc: Vec<Vec<f32>> = c.iter().map(centre).collect();
            let qc: Vec<Vec<f32>> = q.iter().map(centre).collect();
            variants.push((name.clone(), c, q));
            variants.push((format!("{name}, centred"), cc, qc));
        }
        for (name, cat, qs) in &variants {
            let (mut p10, mut map) = (0.0, 0.0);
            for (qv, label) in qs.iter().zip(&query_labels) {
                let mut scored: Vec<(f32, usize)> = cat.iter().enumerate().map(|(i, c)| (dot(qv, c), i)).collect();
                scored.select_nth_unstable_by(K, |a, b| b.0.total_cmp(&a.0));
                scored.truncate(K);
                scored.sort_by(|a, b| b.0.total_cmp(&a.0));
                let rel: Vec<bool> = scored.iter().map(|(_, i)| catalog_labels[*i] == *label).collect();
                p10 += rel.iter().filter(|r| **r).count() as f64 / K as f64;
                let relevant = catalog_labels.iter().filter(|l| **l == *label).count();
                map += average_precision(&rel, relevant);
            }
            let n = qs.len() as f64;
            rows.push(format!("| {variant} | {size} | {name} | {:.3} | {:.3} | {per_image_ms:.1} |", p10 / n, map / n));
            eprintln!("{}", rows.last().context("row")?);
        }
    }
    let table = format!(
        "# Embedding recipe study\n\nCatalog: first {catalog_size} Fashion-MNIST train images; queries: {queries} test images \
         (stratified, seed 42); relevance: same class. Reproduce: `cargo run --release --example quality_study -- {catalog_size} {queries}`.\n\
         Encode time is per image at batch 32 on 2 threads, on the machine that ran the study.\n\n\
         | model | input px | pooling | P@10 | mAP@10 | encode ms/img |\n|---|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    std::fs::create_dir_all("docs")?;
    std::fs::write("docs/quality-study-run.md", &table)?;
    println!("{table}");
    Ok(())
}
