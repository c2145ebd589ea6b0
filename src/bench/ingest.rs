//! `lookalike bench ingest`: images per second from a folder of photos to stored vectors, against
//! the Python pipeline a user would write with the same ONNX model (bench/ingest_reference.py:
//! PIL decode and resize, numpy normalisation, onnxruntime; its batch size, threads and decode
//! workers chosen by a sweep, so the baseline is tuned fairly).
//!
//! Two sets, written to disk first so both sides read the same files:
//! - Fashion-MNIST: the first N training images as 28x28 PNG files (small images: inference
//!   dominates);
//! - photos: 1,000 JPEGs of 800-1200 px, made from real images (Fashion-MNIST products scaled up
//!   on a white studio background, and the scikit-image sample photos rescaled), re-encoded at
//!   quality 90 (decoding and resizing matter as much as inference).
//!
//! lookalike's number is end to end: listing, hashing, decoding, preprocessing, inference and
//! the SQLite commits of the products and vectors. The reference only computes embeddings.
//!
//! Each side runs `rounds` times, taking turns (reference, lookalike, reference, ...), and the
//! medians are compared: on a shared 2-core machine one run of either can be 10% off.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result};
use image::{DynamicImage, GenericImageView, ImageFormat, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::{ratio, BenchEnv};
use crate::catalog::SqliteCatalog;
use crate::encoder::Encoder;
use crate::import::fashion_mnist::FashionMnist;
use crate::import::{folder, index_items, IndexOptions};

#[derive(Debug, Clone)]
pub struct IngestBench {
    /// Fashion-MNIST training images in the small set.
    pub fm_images: usize,
    /// Large JPEG photos in the second set.
    pub photos: usize,
    pub batch: usize,
    /// Timed runs of each side, taken in turns.
    pub rounds: usize,
    pub seed: u64,
    pub name: String,
    /// The ONNX file the Python reference runs: the encoder's own, or for an int8 encoder the
    /// float model it copies (what a user's own pipeline would run).
    pub reference_model: PathBuf,
}

/// Writes the first `n` Fashion-MNIST images as PNG files.
fn write_fashion_mnist(fm: &FashionMnist, n: usize, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for i in 0..n.min(fm.len()) {
        let path = dir.join(format!("{}.png", fm.product_id(i)));
        fm.image(i)?.save_with_format(&path, ImageFormat::Png).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Writes `n` JPEG photos of 800-1200 px made from real images.
fn write_photos(fm: &FashionMnist, samples: &[PathBuf], n: usize, seed: u64, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let photos: Vec<DynamicImage> = samples.iter().filter_map(|p| image::open(p).ok()).filter(|im| im.width() >= 64 && im.height() >= 64).collect();
    for i in 0..n {
        let long_side = rng.random_range(800..=1200u32);
        let picture: RgbImage = if i % 3 == 2 && !photos.is_empty() {
            // A real photo, rescaled so its long side is `long_side`.
            let photo = &photos[rng.random_range(0..photos.len())];
            let (w, h) = photo.dimensions();
            let scale = long_side as f32 / w.max(h) as f32;
            let (nw, nh) = (((w as f32 * scale) as u32).max(1), ((h as f32 * scale) as u32).max(1));
            photo.resize_exact(nw, nh, image::imageops::FilterType::Triangle).to_rgb8()
        } else {
            // A product shot: a Fashion-MNIST garment (inverted: dark product on white) scaled
            // up on a white canvas with a margin, at a portrait aspect ratio like catalog photos.
            let item = fm.image(rng.random_range(0..fm.len()))?;
            let (w, h) = ((long_side as f32 * 0.75) as u32, long_side);
            let side = (w as f32 * rng.random_range(0.7..0.9)) as u32;
            let garment = image::imageops::resize(&item, side, side, image::imageops::FilterType::CatmullRom);
            let mut canvas = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
            let (x0, y0) = ((w - side) / 2, (h - side) / 2);
            for (x, y, p) in garment.enumerate_pixels() {
                let v = 255 - p.0[0];
                canvas.put_pixel(x0 + x, y0 + y, Rgb([v, v.saturating_sub(20), v.saturating_sub(40)]));
            }
            canvas
        };
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut Cursor::new(&mut bytes), 90).encode_image(&picture).context("encoding JPEG")?;
        let path = dir.join(format!("photo-{i:04}.jpg"));
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// lookalike's indexer over `dir` into a fresh catalog: (images, seconds).
fn index_folder(encoder: &dyn Encoder, dir: &Path, batch: usize, work: &Path) -> Result<(usize, f64)> {
    let db = work.join(format!("{}.db", dir.file_name().and_then(|n| n.to_str()).unwrap_or("set")));
    let _ = std::fs::remove_file(&db);
    let mut catalog = SqliteCatalog::open(&db)?;
    let stop = AtomicBool::new(false);
    let options = IndexOptions { batch_size: batch, progress: false, ..Default::default() };
    let started = Instant::now();
    let items = folder::read_folder(dir)?;
    let report = index_items(&mut catalog, encoder, items, &options, &stop)?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(report.failed.is_empty(), "{} images failed to index: {:?}", report.failed.len(), report.failed.first());
    Ok((report.embedded, seconds))
}

/// The Python reference's sweep over a subset of `dir`: every batch x threads x decode-workers
/// combination, and the fastest as the arguments for the full runs.
fn reference_sweep(env: &BenchEnv, model: &Path, dir: &Path, subset: usize) -> Result<Option<(Value, Vec<String>)>> {
    let subset = subset.to_string();
    // Two passes per configuration, the faster kept: one pass over a subset is short enough for
    // a hiccup to crown the wrong configuration and handicap the baseline.
    let args = reference_args(model, dir, &["--sweep", "--repeat", "2", "--limit", &subset]);
    let Some(sweep) = env.run_reference("ingest_reference.py", &args)? else {
        return Ok(None);
    };
    let best = &sweep["best"];
    let text = |v: &Value| v.as_u64().map(|n| n.to_string()).context("sweep result without a configuration");
    let config =
        vec!["--batch".to_string(), text(&best["batch"])?, "--threads".to_string(), text(&best["threads"])?, "--decode-workers".to_string(), text(&best["decode_workers"])?];
    Ok(Some((json!({"sweep": sweep["sweep"], "best": best}), config)))
}

fn reference_args(model: &Path, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["--model".into(), model.display().to_string(), "--images".into(), dir.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The median of a side's rounds (NaN when that side did not run).
fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    super::Latency::of_ms(&mut values.to_vec()).median_ms
}

pub fn run(encoder: &dyn Encoder, fm: &FashionMnist, samples: &[PathBuf], env: &BenchEnv, opts: &IngestBench) -> Result<Value> {
    let fm_dir = env.work.join("fashion-mnist-png");
    let photo_dir = env.work.join("photos-jpeg");
    if !fm_dir.is_dir() {
        write_fashion_mnist(fm, opts.fm_images, &fm_dir)?;
    }
    if !photo_dir.is_dir() {
        eprintln!("making {} JPEG photos of 800-1200 px", opts.photos);
        write_photos(fm, samples, opts.photos, opts.seed, &photo_dir)?;
    }
    let model = opts.reference_model.clone();
    let mut sets = Vec::new();
    for (label, dir) in [("Fashion-MNIST 28x28 PNG", &fm_dir), ("photos 800-1200 px JPEG", &photo_dir)] {
        let files = std::fs::read_dir(dir)?.count();
        let sweep = reference_sweep(env, &model, dir, files.min(640))?;
        // The two sides take turns, round after round, so that a slow spell of this shared
        // machine falls on both; each side's median over the rounds is compared.
        let (mut ours, mut theirs, mut images) = (Vec::new(), Vec::new(), 0);
        for round in 0..opts.rounds.max(1) {
            if let Some((_, config)) = &sweep {
                let config: Vec<&str> = config.iter().map(String::as_str).collect();
                let full = env.run_reference("ingest_reference.py", &reference_args(&model, dir, &config))?.context("reference did not run")?;
                theirs.push(full["images_per_s"].as_f64().unwrap_or(f64::NAN));
            }
            let (n, seconds) = index_folder(encoder, dir, opts.batch, &env.work)?;
            images = n;
            ours.push(n as f64 / seconds);
            eprintln!("{label}, round {}: lookalike {:.1} images/s, Python reference {:.1} images/s", round + 1, ours[ours.len() - 1], theirs.last().copied().unwrap_or(f64::NAN));
        }
        let (ours_median, theirs_median) = (median(&ours), median(&theirs));
        sets.push(json!({
            "set": label,
            "images": images,
            "rounds": ours.len(),
            "lookalike": {"images_per_s": ours_median, "runs_images_per_s": ours, "batch": opts.batch, "threads": rayon::current_num_threads()},
            "reference": sweep.as_ref().map(|(s, _)| json!({"sweep": s["sweep"], "best": s["best"], "images_per_s": theirs_median, "runs_images_per_s": theirs})),
            "ratio": if theirs_median.is_finite() { json!(ours_median / theirs_median) } else { Value::Null },
        }));
    }
    let reference_file = model.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let report = json!({"machine": super::machine(), "model": encoder.spec().name, "model_file": encoder.spec().onnx.file_name().and_then(|n| n.to_str()), "reference_model_file": reference_file, "sets": sets});
    let mut md = format!(
        "# Ingest benchmark\n\nMachine: {}. Model: {} ({}; the reference runs {}). lookalike: `lookalike index` pipeline end to end (list, hash, decode, preprocess, encode, SQLite commit), batch {}. Reference: bench/ingest_reference.py (PIL + numpy + onnxruntime), best configuration of a sweep over batch, threads and decode workers. The two sides take turns for {} rounds; each figure is the median of its side's rounds.\n\n| set | images | lookalike images/s | reference images/s (batch, threads, decode workers) | ratio |\n|---|---|---|---|---|\n",
        super::machine(),
        encoder.spec().name,
        encoder.spec().onnx.file_name().and_then(|n| n.to_str()).unwrap_or(""),
        reference_file,
        opts.batch,
        opts.rounds
    );
    for s in report["sets"].as_array().into_iter().flatten() {
        let ours = s["lookalike"]["images_per_s"].as_f64().unwrap_or(f64::NAN);
        let theirs = s["reference"]["images_per_s"].as_f64().unwrap_or(f64::NAN);
        let best = &s["reference"]["best"];
        md.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} ({}, {}, {}) | {} |\n",
            s["set"].as_str().unwrap_or(""),
            s["images"],
            ours,
            theirs,
            best["batch"],
            best["threads"],
            best["decode_workers"],
            ratio(ours, theirs)
        ));
    }
    let (j, m) = env.write(&opts.name, &report, &md)?;
    eprintln!("wrote {} and {}", j.display(), m.display());
    println!("{md}");
    Ok(report)
}
