//! `lookalike eval`: search quality on labelled queries, beside two baselines.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::args::*;
use lookalike::assets::Assets;
use lookalike::catalog::SqliteCatalog;
use lookalike::encoder::Encoder;
use lookalike::eval::{self, LabelledQuery};
use lookalike::import::fashion_mnist::FashionMnist;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Fashion-MNIST split to draw labelled queries from (test: held out from a train catalog).
    #[arg(long, value_name = "SPLIT")]
    pub fashion_mnist: String,
    #[arg(long, value_name = "DIR")]
    pub fashion_mnist_dir: Option<PathBuf>,
    /// Number of queries, stratified by label.
    #[arg(long, default_value_t = 2000)]
    pub queries: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Metadata column that decides relevance.
    #[arg(long, default_value = "articleType")]
    pub label: String,
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Turn each query into a shopper-like photo first (background, crop, rotation, light,
    /// blur, JPEG), seeded by --seed.
    #[arg(long)]
    pub perturb: bool,
    /// Also compose N photos of 2-3 query products on one background and measure how well the
    /// products are found in them and searched by their boxes.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub scenes: usize,
    /// Also re-photograph N catalog products (stratified by --label) as a shopper would and
    /// measure how often each is found itself: at rank 1 and in the top 10.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub exact: usize,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let assets = Assets::from_env();
    let catalog = SqliteCatalog::open_existing(&args.db.db)?;
    let encoder = load_encoder(&assets, &catalog, &args.model)?;
    let split = FashionMnist::load(&fashion_mnist_dir(&assets, &args.fashion_mnist_dir)?, &args.fashion_mnist)?;
    let labels: Vec<String> = (0..split.len()).map(|i| split.class_name(i).to_string()).collect();
    let picked = eval::stratified_sample(&labels, args.queries.min(split.len()), args.seed);
    let queries = picked
        .into_iter()
        .map(|i| Ok(LabelledQuery { id: split.product_id(i), image: image::DynamicImage::ImageLuma8(split.image(i)?), label: labels[i].clone() }))
        .collect::<Result<Vec<_>>>()?;
    eprintln!("evaluating {} queries against {} products ({})", queries.len(), catalog.len()?, encoder.spec().name);
    let options = eval::EvalOptions { label: args.label.clone(), seed: args.seed, perturb: args.perturb, store: args.store.qdrant(&args.db.db)?, scenes: args.scenes, exact: args.exact };
    let report = eval::evaluate(&catalog, &encoder, &queries, &options)?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(out) = &args.out {
        write_file(out, &json)?;
    }
    if args.json {
        println!("{json}");
    } else {
        println!("{}", report.table());
    }
    Ok(())
}
