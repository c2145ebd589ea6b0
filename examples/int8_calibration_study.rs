//! How should an int8 copy's activation ranges be calibrated? Encodes a Fashion-MNIST sample
//! (catalog: the first N train images; queries: a stratified sample of the test split, each
//! perturbed as `eval --perturb` does) with the float model and with int8 copies whose ranges
//! come from the same calibration photos as `import::calibrate_int8` takes, aggregated over the
//! batches three ways: the extremes (`max`), the median batch extremes (`median`, what lookalike
//! uses) and their mean (`mean`). Reports each copy's P@10, the mean cosine of its query
//! embeddings to the float model's, and P@10 with the two models mixed (int8 queries against
//! the float catalog, float queries against the int8 catalog).
//!
//!     cargo run --release --example int8_calibration_study -- [CATALOG_SIZE] [QUERIES]
use anyhow::Result;
use lookalike::assets::Assets;
use lookalike::encoder::{Encoder, OrtEncoder};
use lookalike::eval::stratified_sample;
use lookalike::import::fashion_mnist::FashionMnist;
use lookalike::index::dot;
use lookalike::model;
use lookalike::preprocess;
use rand::SeedableRng;

fn encode(enc: &OrtEncoder, batch: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::new();
    for c in batch.chunks(32) {
        out.extend(enc.encode(c)?.into_iter().map(|e| e.vector));
    }
    Ok(out)
}

fn p10(cat: &[Vec<f32>], cl: &[&str], qs: &[Vec<f32>], ql: &[&str]) -> f64 {
    let mut total = 0.0;
    for (q, l) in qs.iter().zip(ql) {
        let mut s: Vec<(f32, usize)> = cat.iter().enumerate().map(|(i, c)| (dot(q, c), i)).collect();
        s.select_nth_unstable_by(10, |a, b| b.0.total_cmp(&a.0));
        total += s[..10].iter().filter(|(_, i)| cl[*i] == *l).count() as f64 / 10.0;
    }
    total / qs.len() as f64
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n_cat: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let n_q: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let assets = Assets::from_env();
    let dir = assets.fashion_mnist_dir()?;
    let train = FashionMnist::load(&dir, "train")?;
    let test = FashionMnist::load(&dir, "test")?;
    let spec = model::resolve(&assets, "efficientnet-lite0")?;
    let ort = assets.onnxruntime_lib()?;
    let cat_imgs: Vec<image::DynamicImage> = (0..n_cat).map(|i| train.photo(i, None)).collect::<Result<_>>()?;
    let cl: Vec<&str> = (0..n_cat).map(|i| train.class_name(i)).collect();
    let tl: Vec<String> = (0..test.len()).map(|i| test.class_name(i).to_string()).collect();
    let picked = stratified_sample(&tl, n_q, 42);
    let ql: Vec<&str> = picked.iter().map(|&i| tl[i].as_str()).collect();
    let q_imgs: Vec<image::DynamicImage> = picked
        .iter()
        .enumerate()
        .map(|(n, &i)| {
            let img = test.photo(i, None)?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(42u64.wrapping_mul(1_000_003).wrapping_add(n as u64));
            Ok(lookalike::perturb::perturb(&img, &mut rng))
        })
        .collect::<Result<_>>()?;
    let cat_t: Vec<Vec<f32>> = cat_imgs.iter().map(|i| preprocess::prepare_image(i, None, &spec.input)).collect();
    let q_t: Vec<Vec<f32>> = q_imgs.iter().map(|i| preprocess::prepare_image(i, None, &spec.input)).collect();
    let fp = OrtEncoder::with_sessions(&ort, spec.clone(), 2, 1)?;
    let t = std::time::Instant::now();
    let cat_f = encode(&fp, &cat_t)?;
    let q_f = encode(&fp, &q_t)?;
    eprintln!("fp32 encoded in {:?}", t.elapsed());
    println!("fp32 P@10 perturbed {:.4}", p10(&cat_f, &cl, &q_f, &ql));
    // calibration like import::calibrate_int8
    let step = n_cat.div_ceil(200);
    let mut calib = Vec::new();
    for (i, img) in cat_imgs.iter().step_by(step).enumerate() {
        let shopper = lookalike::perturb::perturb(img, &mut rand::rngs::StdRng::seed_from_u64(i as u64));
        calib.push(preprocess::prepare_image(img, None, &spec.input));
        calib.push(preprocess::prepare_image(&shopper, None, &spec.input));
    }
    let per_batch: Vec<model::quantise::ActivationRanges> = calib.chunks(8).map(|c| lookalike::encoder::observe_activation_ranges(&ort, &spec, c, 2)).collect::<Result<_>>()?;
    let aggregate = |how: &str| -> model::quantise::ActivationRanges {
        let mut out = model::quantise::ActivationRanges::new();
        for name in per_batch[0].keys() {
            let mut lo: Vec<f32> = per_batch.iter().map(|r| r[name][0]).collect();
            let mut hi: Vec<f32> = per_batch.iter().map(|r| r[name][1]).collect();
            lo.sort_by(f32::total_cmp);
            hi.sort_by(f32::total_cmp);
            let n = lo.len();
            let v = match how {
                "mean" => [lo.iter().sum::<f32>() / n as f32, hi.iter().sum::<f32>() / n as f32],
                "median" => [lo[n / 2], hi[n / 2]],
                _ => [lo[0], hi[n - 1]],
            };
            out.insert(name.clone(), v);
        }
        out
    };
    let base = model::onnx::read_model(&spec.onnx)?;
    for variant in ["max", "median", "mean"] {
        let ranges = aggregate(variant);
        let q = model::quantise::to_qdq(&base, &ranges, model::quantise::WEIGHT_BITS)?;
        let path = std::path::PathBuf::from(format!("{}/lookalike-int8-study-{variant}.onnx", std::env::temp_dir().display()));
        model::onnx::write_model(&q, &path)?;
        let s = model::ModelSpec { onnx: path, ..spec.clone() };
        let enc = OrtEncoder::with_sessions(&ort, s, 2, 1)?;
        let t = std::time::Instant::now();
        let cat_i = encode(&enc, &cat_t)?;
        let q_i = encode(&enc, &q_t)?;
        let el = t.elapsed();
        let cos: Vec<f32> = q_f.iter().zip(&q_i).map(|(a, b)| dot(a, b)).collect();
        let mean = cos.iter().sum::<f32>() / cos.len() as f32;
        let min = cos.iter().cloned().fold(1.0f32, f32::min);
        println!(
            "{variant}: P@10 perturbed {:.4}  cos mean {mean:.5} min {min:.4}  int8 queries on the float catalog {:.4}  float queries on the int8 catalog {:.4}  encoded in {el:?}",
            p10(&cat_i, &cl, &q_i, &ql),
            p10(&cat_f, &cl, &q_i, &ql),
            p10(&cat_i, &cl, &q_f, &ql)
        );
    }
    Ok(())
}
