//! Writes the model vectors behind the photo adapter study (docs/localisation-study.md, "The
//! photo adapter"): the catalog's vectors and labels, the vectors of shopper-like photos of
//! catalog products (as `tune --adapt` makes them, seed 7), and of held-out Fashion-MNIST test
//! queries as `eval` picks them (seed 42): clean, perturbed, and perturbed then straightened
//! (each also mirrored), and with EXACT, that many re-photographed catalog products (seed
//! 4242). `bench/adapter_study.py` fits adapters on them and measures P@10;
//! `bench/tune_study.py` trains tuned projections on them (docs/localisation-study.md, "What
//! else was tried for tuned shopper photos").
//!
//!     cargo run --release --example adapter_study -- fm.db OUT_DIR 20000 2000 [EXACT]
use anyhow::{Context, Result};
use lookalike::assets::Assets;
use lookalike::catalog::{SqliteCatalog, VectorKind};
use lookalike::encoder::{Encoder, OrtEncoder};
use lookalike::import::fashion_mnist::FashionMnist;
use std::io::Write;

fn write_f32(path: &str, rows: &[Vec<f32>]) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in rows {
        for x in r {
            f.write_all(&x.to_le_bytes())?;
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: adapter_study CATALOG.db OUT_DIR PHOTOS QUERIES [EXACT]";
    let (db, out) = (args.get(1).context(usage)?, args.get(2).context(usage)?);
    let n_train: usize = args.get(3).context(usage)?.parse().context(usage)?;
    let n_q: usize = args.get(4).context(usage)?.parse().context(usage)?;
    let assets = Assets::from_env();
    let catalog = SqliteCatalog::open_existing(std::path::Path::new(db))?;
    let spec = lookalike::model::for_catalog(&assets, None, catalog.vector_space()?.as_ref(), catalog.model_description()?.as_deref())?;
    let encoder = OrtEncoder::with_sessions(&assets.onnxruntime_lib()?, spec.clone(), 2, 1)?;
    // The catalog's vectors, in key order, with their labels.
    let mut keys = Vec::new();
    let mut rows = Vec::new();
    catalog.for_each_vector(VectorKind::Primary, |k, v| {
        keys.push(k);
        rows.push(v.to_vec());
        Ok(())
    })?;
    write_f32(&format!("{out}/cat.f32"), &rows)?;
    let products = catalog.all_products()?;
    let label_of: std::collections::HashMap<_, _> = products.iter().map(|p| (p.key, p.metadata.get("articleType").cloned().unwrap_or_default())).collect();
    std::fs::write(format!("{out}/cat_labels.txt"), keys.iter().map(|k| label_of[k].clone()).collect::<Vec<_>>().join("\n"))?;
    std::fs::write(format!("{out}/cat_keys.txt"), keys.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join("\n"))?;
    eprintln!("catalog {} rows", rows.len());
    // Shopper-like photos of catalog products.
    let (labelled, classes) = lookalike::tune::labelled_features(&catalog, "articleType")?;
    drop(labelled);
    let t = std::time::Instant::now();
    let pert = lookalike::tune::perturbed_features(&catalog, &encoder, "articleType", &classes, (n_train, 7), &Default::default())?;
    eprintln!("perturbed {} in {:?}", pert.labels.len(), t.elapsed());
    let prow: Vec<Vec<f32>> = pert.features.outer_iter().map(|r| r.to_vec()).collect();
    write_f32(&format!("{out}/pert.f32"), &prow)?;
    std::fs::write(format!("{out}/pert_keys.txt"), pert.keys.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join("\n"))?;
    // Test queries, as `eval` picks and perturbs them (seed 42).
    let split = FashionMnist::load(&assets.fashion_mnist_dir()?, "test")?;
    let labels: Vec<String> = (0..split.len()).map(|i| split.class_name(i).to_string()).collect();
    let picked = lookalike::eval::stratified_sample(&labels, n_q, 42);
    let input = &encoder.spec().input;
    let (mut qc, mut qp, mut qs, mut ql) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut qcf, mut qpf, mut qsf) = (Vec::new(), Vec::new(), Vec::new());
    for (n, &i) in picked.iter().enumerate() {
        let img = split.photo(i, None)?;
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(42u64.wrapping_mul(1_000_003).wrapping_add(n as u64));
        let p = lookalike::perturb::perturb(&img, &mut rng);
        let straight = match lookalike::straighten::tilt(&p) {
            Some(t) => lookalike::straighten::straighten(&p, t),
            None => p.clone(),
        };
        // Each view, then its mirror image (for the flip-averaging rows of the tuning study).
        let views = [img, p, straight];
        let tensors: Vec<Vec<f32>> =
            views.iter().chain(views.iter().map(|v| v.fliph()).collect::<Vec<_>>().iter()).map(|v| lookalike::preprocess::prepare_image(v, None, input)).collect();
        let e = encoder.encode(&tensors)?;
        qc.push(e[0].vector.clone());
        qp.push(e[1].vector.clone());
        qs.push(e[2].vector.clone());
        qcf.push(e[3].vector.clone());
        qpf.push(e[4].vector.clone());
        qsf.push(e[5].vector.clone());
        ql.push(labels[i].clone());
    }
    write_f32(&format!("{out}/qc.f32"), &qc)?;
    write_f32(&format!("{out}/qp.f32"), &qp)?;
    write_f32(&format!("{out}/qs.f32"), &qs)?;
    write_f32(&format!("{out}/qcf.f32"), &qcf)?;
    write_f32(&format!("{out}/qpf.f32"), &qpf)?;
    write_f32(&format!("{out}/qsf.f32"), &qsf)?;
    std::fs::write(format!("{out}/q_labels.txt"), ql.join("\n"))?;
    // Optionally, held-out re-photographed catalog products (another seed than the training
    // photos): what `eval --exact` measures.
    if let Some(n_exact) = args.get(5).map(|s| s.parse::<usize>()).transpose().context(usage)? {
        let exact = lookalike::tune::perturbed_features(&catalog, &encoder, "articleType", &classes, (n_exact, 4242), &Default::default())?;
        write_f32(&format!("{out}/exact.f32"), &exact.features.outer_iter().map(|r| r.to_vec()).collect::<Vec<_>>())?;
        std::fs::write(format!("{out}/exact_keys.txt"), exact.keys.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join("\n"))?;
    }
    Ok(())
}
