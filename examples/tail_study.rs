//! Writes what `bench/tail_study.py` needs to ask whether training the model's last layer
//! (EfficientNet-Lite0's 1x1 head convolution, 320 -> 1280 channels, before ReLU6 and GeM) on
//! shopper-like photos lifts tuned perturbed P@10 past what a projection on the frozen vectors
//! reaches (docs/localisation-study.md, "Training the model's last layer"):
//! the 320 x 7 x 7 map that convolution reads, for every catalog photo (key order, with labels
//! and keys), for shopper-like photos of catalog products (as `tune` makes them, seed 7), for
//! held-out Fashion-MNIST test queries as `eval` picks them (seed 42: clean, perturbed, and
//! perturbed then straightened) and for re-photographed catalog products (seed 4242, as
//! `eval --exact`); and the convolution's weight and bias. With `LAYERS=block`, the same one
//! block earlier: the 192 x 7 x 7 map the last MBConv block reads, and that block's three
//! convolutions besides the head's (`convs.json` describes them in order).
//!
//!     [LAYERS=block] cargo run --release --example tail_study -- fm.db OUT_DIR VIEWS QUERIES EXACT
use anyhow::{Context, Result};
use lookalike::assets::Assets;
use lookalike::catalog::SqliteCatalog;
use lookalike::encoder::{Embedding, Encoder, OrtEncoder};
use lookalike::import::fashion_mnist::FashionMnist;
use lookalike::model::{self, ModelSpec};
use rayon::prelude::*;
use std::io::Write;

/// An encoder whose "vector" is the whole feature map it was built to output, so that `tune`'s
/// own photo makers can be reused unchanged.
struct MapEncoder(OrtEncoder);

impl Encoder for MapEncoder {
    fn spec(&self) -> &ModelSpec {
        self.0.spec()
    }
    fn encode(&self, batch: &[Vec<f32>]) -> Result<Vec<Embedding>> {
        let (_, data) = self.0.feature_maps(batch)?;
        let per = data.len() / batch.len().max(1);
        Ok(data.chunks(per).map(|m| Embedding { vector: m.to_vec(), max_pooled: None }).collect())
    }
    fn parallelism(&self) -> usize {
        2
    }
}

fn write_f32(path: &str, rows: impl IntoIterator<Item = impl AsRef<[f32]>>) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in rows {
        for x in r.as_ref() {
            f.write_all(&x.to_le_bytes())?;
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: tail_study CATALOG.db OUT_DIR VIEWS QUERIES EXACT";
    let (db, out) = (args.get(1).context(usage)?, args.get(2).context(usage)?);
    let number = |i: usize| -> Result<usize> { args.get(i).context(usage)?.parse().context(usage) };
    let (n_views, n_q, n_exact) = (number(3)?, number(4)?, number(5)?);
    std::fs::create_dir_all(out).with_context(|| format!("creating {out}"))?;
    let assets = Assets::from_env();
    let catalog = SqliteCatalog::open_existing(std::path::Path::new(db))?;
    let spec = model::resolve(&assets, "efficientnet-lite0")?;

    // The convolutions trained: the head (the Conv whose ReLU6 gives the model's features) and,
    // with LAYERS = block, the last MBConv block before it (1x1 expand, ReLU6, depthwise,
    // ReLU6, 1x1 project). Walking back from the features, each Conv reads the one before it,
    // through a ReLU6 or directly.
    let onnx = model::onnx::read_model(&spec.onnx)?;
    let graph = onnx.graph.as_ref().context("no graph")?;
    let producer = |value: &str| graph.node.iter().find(|n| n.output.iter().any(|o| o == value));
    let conv_before = |value: &str| -> Option<&lookalike::model::onnx::NodeProto> {
        let node = producer(value)?;
        match node.op_type.as_str() {
            "Conv" => Some(node),
            "Clip" => producer(&node.input[0]).filter(|n| n.op_type == "Conv"),
            _ => None,
        }
    };
    let layers = std::env::var("LAYERS").unwrap_or_else(|_| "head".into());
    let mut convs = vec![conv_before(&spec.output).context("no head conv")?];
    if layers == "block" {
        for _ in 0..3 {
            let next = conv_before(&convs.last().context("no conv")?.input[0]).context("no block conv")?;
            convs.push(next);
        }
    }
    convs.reverse();
    let block = convs[0].input[0].clone();
    let mut described = Vec::new();
    for (i, conv) in convs.iter().enumerate() {
        for (part, name) in [("weight", &conv.input[1]), ("bias", &conv.input[2])] {
            let t = graph.initializer.iter().find(|t| &t.name == name).context("no initializer")?;
            std::fs::write(format!("{out}/conv{i}_{part}.f32"), &t.raw_data)?;
            if part == "weight" {
                let group = conv.attribute.iter().find(|a| a.name == "group").map_or(1, |a| a.i);
                described.push(format!(
                    "{{\"dims\": {:?}, \"group\": {group}, \"relu6\": {}}}",
                    t.dims,
                    graph.node.iter().any(|n| n.op_type == "Clip" && n.input[0] == conv.output[0])
                ));
            }
        }
    }
    std::fs::write(format!("{out}/convs.json"), format!("[{}]", described.join(", ")))?;
    eprintln!("convs: [{}], reading {block}", described.join(", "));
    let tail = model::quantise::with_outputs(&onnx, std::slice::from_ref(&block))?;
    let path = std::env::temp_dir().join("lookalike-tail-study.onnx");
    model::onnx::write_model(&tail, &path)?;
    let map_spec = ModelSpec { onnx: path, output: block, ..spec.clone() };
    let encoder = MapEncoder(OrtEncoder::with_sessions(&assets.onnxruntime_lib()?, map_spec, 2, 1)?);
    let input = spec.input.clone();

    // Catalog photos, in key order.
    let products = catalog.all_products()?;
    let started = std::time::Instant::now();
    let mut f = std::io::BufWriter::new(std::fs::File::create(format!("{out}/cat.f32"))?);
    for chunk in products.chunks(256) {
        let tensors: Vec<Vec<f32>> = chunk
            .iter()
            .map(|p| catalog.image_bytes(p.key, &p.image))
            .collect::<Result<Vec<_>>>()?
            .into_par_iter()
            .map(|bytes| Ok(lookalike::preprocess::prepare_image(&lookalike::preprocess::decode(&bytes, &Default::default())?, None, &input)))
            .collect::<Result<_>>()?;
        let encoded: Vec<Vec<Embedding>> = tensors.par_chunks(128).map(|c| encoder.encode(c)).collect::<Result<_>>()?;
        for e in encoded.iter().flatten() {
            for x in &e.vector {
                f.write_all(&x.to_le_bytes())?;
            }
        }
    }
    f.flush()?;
    let label = |p: &lookalike::types::Product| p.metadata.get("articleType").cloned().unwrap_or_default();
    std::fs::write(format!("{out}/cat_labels.txt"), products.iter().map(label).collect::<Vec<_>>().join("\n"))?;
    std::fs::write(format!("{out}/cat_keys.txt"), products.iter().map(|p| format!("{:?}", p.key)).collect::<Vec<_>>().join("\n"))?;
    eprintln!("catalog {} maps in {:?}", products.len(), started.elapsed());

    let (labelled, classes) = lookalike::tune::labelled_features(&catalog, "articleType")?;
    drop(labelled);
    for (name, count, seed) in [("pert", n_views, 7), ("exact", n_exact, 4242)] {
        let views = lookalike::tune::perturbed_features(&catalog, &encoder, "articleType", &classes, (count, seed), &Default::default())?;
        write_f32(&format!("{out}/{name}.f32"), views.features.outer_iter().map(|r| r.to_vec()))?;
        std::fs::write(format!("{out}/{name}_keys.txt"), views.keys.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join("\n"))?;
        eprintln!("{name}: {} maps", views.keys.len());
    }

    // Test queries, as `eval` picks and perturbs them (seed 42).
    let split = FashionMnist::load(&assets.fashion_mnist_dir()?, "test")?;
    let labels: Vec<String> = (0..split.len()).map(|i| split.class_name(i).to_string()).collect();
    let picked = lookalike::eval::stratified_sample(&labels, n_q, 42);
    let (mut qc, mut qp, mut qs, mut ql) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (n, &i) in picked.iter().enumerate() {
        let img = split.photo(i, None)?;
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(42u64.wrapping_mul(1_000_003).wrapping_add(n as u64));
        let p = lookalike::perturb::perturb(&img, &mut rng);
        let straight = match lookalike::straighten::tilt(&p) {
            Some(t) => lookalike::straighten::straighten(&p, t),
            None => p.clone(),
        };
        let tensors: Vec<Vec<f32>> = [img, p, straight].iter().map(|v| lookalike::preprocess::prepare_image(v, None, &input)).collect();
        let e = encoder.encode(&tensors)?;
        qc.push(e[0].vector.clone());
        qp.push(e[1].vector.clone());
        qs.push(e[2].vector.clone());
        ql.push(labels[i].clone());
    }
    write_f32(&format!("{out}/qc.f32"), &qc)?;
    write_f32(&format!("{out}/qp.f32"), &qp)?;
    write_f32(&format!("{out}/qs.f32"), &qs)?;
    std::fs::write(format!("{out}/q_labels.txt"), ql.join("\n"))?;
    eprintln!("done in {:?}", started.elapsed());
    Ok(())
}
