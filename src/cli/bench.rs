//! `lookalike bench search|ingest|e2e`: speed against reference implementations.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use super::args::*;
use lookalike::assets::Assets;
use lookalike::catalog::SqliteCatalog;
use lookalike::import::{self, fashion_mnist::FashionMnist};
use lookalike::search::SearchEngine;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Exact scan (f32/f16/int8, 1 and all threads) and HNSW graph, against FAISS.
    Search(BenchSearchArgs),
    /// Indexing images/s against the Python (PIL + numpy + onnxruntime) reference.
    Ingest(BenchIngestArgs),
    /// POST /api/search latency through the real server, stage by stage.
    E2e(BenchE2eArgs),
}

#[derive(Args)]
pub struct BenchIngestArgs {
    #[command(flatten)]
    pub env: BenchEnvArgs,
    /// Fashion-MNIST training images in the small-image set.
    #[arg(long, default_value_t = 3000)]
    pub fashion_mnist: usize,
    /// JPEG photos (800-1200 px) in the large-image set.
    #[arg(long, default_value_t = 1000)]
    pub photos: usize,
    /// Images per inference batch of lookalike's indexer.
    #[arg(long, default_value_t = lookalike::import::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Timed runs of each side per set, taken in turns (the medians are compared).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value = "ingest")]
    pub name: String,
    /// Model copy lookalike's indexer encodes with, as `index --import-precision` (the
    /// reference always runs the float model).
    #[arg(long, value_enum, default_value_t = ModelPrecision::Fp32, value_name = "PRECISION")]
    pub import_precision: ModelPrecision,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args)]
pub struct BenchE2eArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub env: BenchEnvArgs,
    #[arg(long, default_value_t = 300)]
    pub requests: usize,
    /// Folder of query photos (default: 100 Fashion-MNIST test images and the scikit-image
    /// sample photos, in turn).
    #[arg(long)]
    pub images: Option<PathBuf>,
    #[arg(short, default_value_t = 10)]
    pub k: usize,
    /// The colour control sent with each search (match, any or a colour name; default: the
    /// server's, match), to measure what colour costs.
    #[arg(long, value_name = "match|any|NAME")]
    pub colour: Option<lookalike::colour::ColourMode>,
    /// The kind control sent with each search (match or any; default: the server's, match),
    /// to measure what the kind consensus costs.
    #[arg(long, value_name = "match|any")]
    pub kind: Option<lookalike::kind::KindMode>,
    /// Open a new connection for every request (`Connection: close`) instead of sending them
    /// all on one, as a browser does.
    #[arg(long)]
    pub fresh_connections: bool,
    #[arg(long, default_value = "e2e")]
    pub name: String,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub index: SearchIndexArgs,
}

#[derive(Args)]
pub struct BenchEnvArgs {
    /// Directory for the JSON and markdown reports.
    #[arg(long, default_value = "docs/bench")]
    pub out: PathBuf,
    /// Python with bench/requirements-reference.txt installed (bench/setup-reference.sh prints
    /// it). Without it the reference runs are skipped.
    #[arg(long, env = "LOOKALIKE_BENCH_PYTHON")]
    pub python: Option<PathBuf>,
    /// Directory holding the reference scripts.
    #[arg(long, default_value = "bench")]
    pub scripts: PathBuf,
    /// Scratch directory for generated files (default: a temporary directory).
    #[arg(long)]
    pub work: Option<PathBuf>,
}

impl BenchEnvArgs {
    fn env(&self) -> Result<(lookalike::bench::BenchEnv, Option<tempfile::TempDir>)> {
        let (work, guard) = match &self.work {
            Some(dir) => (dir.clone(), None),
            None => {
                let dir = tempfile::tempdir().context("creating a scratch directory")?;
                (dir.path().to_path_buf(), Some(dir))
            }
        };
        if let Some(python) = &self.python {
            if !python.exists() {
                bail!("--python {} does not exist: run `bench/setup-reference.sh` (it prints the path)", python.display());
            }
        }
        Ok((lookalike::bench::BenchEnv { out_dir: self.out.clone(), python: self.python.clone(), scripts: self.scripts.clone(), work }, guard))
    }
}

#[derive(Args)]
pub struct BenchSearchArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub env: BenchEnvArgs,
    #[arg(long, default_value_t = 1000)]
    pub queries: usize,
    #[arg(short, default_value_t = 10)]
    pub k: usize,
    /// Grow the catalog's vectors to this many (catalog vector + noise) for a scale test.
    #[arg(long)]
    pub synthetic: Option<usize>,
    /// Norm of the noise that makes synthetic vectors and queries.
    #[arg(long, default_value_t = 0.25)]
    pub noise: f32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Graph candidate counts to try (FAISS is swept over the same efSearch values).
    #[arg(long, value_delimiter = ',', default_value = "10,12,14,16,18,20,24,32,40,48,64,128,256")]
    pub candidates: Vec<usize>,
    /// Graphs to build, by the dimensions they walk (0: the vectors' own); the first is
    /// compared with FAISS.
    #[arg(long, value_delimiter = ',', default_values_t = [lookalike::index::ann::DEFAULT_GRAPH_DIM])]
    pub graph_dims: Vec<usize>,
    /// Graph degree (HNSW M), for the graphs and FAISS alike.
    #[arg(long, default_value_t = lookalike::index::AnnOptions::default().connectivity)]
    pub connectivity: usize,
    /// Candidate list while building (efConstruction), for the graphs and FAISS alike.
    #[arg(long, default_value_t = lookalike::index::AnnOptions::default().expansion_add)]
    pub expansion_add: usize,
    /// Rounds of graph (and FAISS HNSW) timings; each setting keeps its fastest round.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Run FAISS only on sets up to this many vectors.
    #[arg(long, default_value_t = 200_000)]
    pub faiss_max: usize,
    /// Report name (default: search-<vectors>).
    #[arg(long)]
    pub name: Option<String>,
}

pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Search(args) => run_search(args),
        BenchCommand::Ingest(args) => run_ingest(args),
        BenchCommand::E2e(args) => run_e2e(args),
    }
}

fn run_search(args: BenchSearchArgs) -> Result<()> {
    if args.queries == 0 || args.k == 0 || args.candidates.contains(&0) || args.connectivity < 2 || args.expansion_add == 0 || args.rounds == 0 {
        bail!("--queries, -k, --candidates, --expansion-add and --rounds must be at least 1, --connectivity at least 2");
    }
    if args.graph_dims.is_empty() {
        bail!("--graph-dims needs at least one value (0: the vectors' own dimensions)");
    }
    let catalog = SqliteCatalog::open_existing(&args.db.db)?;
    let (env, _guard) = args.env.env()?;
    let n = match args.synthetic {
        Some(n) => n,
        None => catalog.vector_count()?,
    };
    let options = lookalike::bench::search::SearchBench {
        queries: args.queries,
        k: args.k,
        synthetic: args.synthetic,
        noise: args.noise,
        seed: args.seed,
        candidates: args.candidates,
        graph_dims: args.graph_dims,
        connectivity: args.connectivity,
        expansion_add: args.expansion_add,
        rounds: args.rounds,
        faiss_max: args.faiss_max,
        name: args.name.unwrap_or_else(|| format!("search-{n}")),
    };
    lookalike::bench::search::run(&catalog, &env, &options)?;
    Ok(())
}

fn run_ingest(args: BenchIngestArgs) -> Result<()> {
    if args.batch_size == 0 || args.rounds == 0 {
        bail!("--batch-size and --rounds must be at least 1");
    }
    let assets = Assets::from_env();
    let (env, _guard) = args.env.env()?;
    let fm = FashionMnist::load(&assets.fashion_mnist_dir()?, "train")?;
    // An int8 copy is calibrated on the benchmark's Fashion-MNIST photos; the reference runs
    // the float model, as a user's own pipeline would.
    let calibration_items = fm.items(Some(args.fashion_mnist), None)?;
    let (spec, reference_model) = match calibrated_int8(&assets, &args.model, &calibration_items)? {
        Some(spec) => {
            let base = spec.int8.as_ref().map(|c| c.base.clone()).context("an int8 model without its calibration")?;
            (spec, lookalike::model::resolve(&assets, &base)?.onnx)
        }
        None => {
            let spec = lookalike::model::for_catalog(&assets, args.model.model.as_deref(), None, None)?;
            let onnx = spec.onnx.clone();
            (import_model(&assets, spec, args.import_precision, &calibration_items, &args.model, None)?, onnx)
        }
    };
    let encoder = load_indexing_encoder(&assets, spec, &args.model)?;
    let samples = sample_photos(&assets)?;
    let options = lookalike::bench::ingest::IngestBench {
        fm_images: args.fashion_mnist,
        photos: args.photos,
        batch: args.batch_size,
        rounds: args.rounds,
        seed: args.seed,
        name: args.name,
        reference_model,
    };
    lookalike::bench::ingest::run(&encoder, &fm, &samples, &env, &options)?;
    Ok(())
}

fn run_e2e(args: BenchE2eArgs) -> Result<()> {
    if args.requests == 0 || args.k == 0 {
        bail!("--requests and -k must be at least 1");
    }
    let assets = Assets::from_env();
    let (env, _guard) = args.env.env()?;
    let images = match &args.images {
        Some(dir) => import::folder::read_folder(dir)?
            .into_iter()
            .filter_map(|item| match item.image {
                import::ItemImage::File(path) => Some(path),
                import::ItemImage::Bytes { .. } => None,
            })
            .collect(),
        None => {
            let dir = env.work.join("e2e-queries");
            std::fs::create_dir_all(&dir)?;
            let fm = FashionMnist::load(&assets.fashion_mnist_dir()?, "test")?;
            let samples = sample_photos(&assets)?;
            let mut images = Vec::new();
            for i in 0..100 {
                let path = dir.join(format!("{}.png", fm.product_id(i)));
                fm.image(i)?.save(&path).with_context(|| format!("writing {}", path.display()))?;
                images.push(path);
                if let Some(sample) = samples.get(i) {
                    images.push(sample.clone());
                }
            }
            images
        }
    };
    let catalog = SqliteCatalog::open_existing(&args.db.db)?;
    let encoder = load_encoder(&assets, &catalog, &args.model)?;
    let engine = Arc::new(SearchEngine::open_with(catalog, Box::new(encoder), &args.index.config(&args.db.db)?)?);
    let options = lookalike::bench::e2e::E2eBench {
        requests: args.requests,
        images,
        k: args.k,
        colour: args.colour,
        kind: args.kind,
        fresh_connections: args.fresh_connections,
        name: args.name,
    };
    lookalike::bench::e2e::run(engine, &env, &options)?;
    Ok(())
}

/// The scikit-image sample photos that `make setup` fetched (real photos of varied sizes).
fn sample_photos(assets: &Assets) -> Result<Vec<PathBuf>> {
    let dir = assets.root().join("samples");
    let mut photos: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {} (run `make setup`)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg")))
        .collect();
    photos.sort();
    Ok(photos)
}
