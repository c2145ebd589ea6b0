//! The `lookalike` command: import a catalog, search it, measure it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};

use lookalike::assets::Assets;
use lookalike::catalog::{Catalog, Filter, SqliteCatalog};
use lookalike::config;
use lookalike::encoder::{Encoder, OrtEncoder};
use lookalike::eval::{self, LabelledQuery};
use lookalike::import::fashion_mnist::FashionMnist;
use lookalike::import::{self, IndexOptions};
use lookalike::index::{AnnMode, AnnOptions, IndexConfig, Precision};
use lookalike::model;
use lookalike::search::{Crop, SearchEngine, SearchRequest, SearchResults};
use lookalike::server::{self, batcher::BatcherConfig, ServerConfig};
use lookalike::tune;

fn run_bench(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Search(args) => {
            if args.queries == 0 || args.k == 0 || args.candidates.contains(&0) {
                bail!("--queries, -k and --candidates must be at least 1");
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
                faiss_max: args.faiss_max,
                name: args.name.unwrap_or_else(|| format!("search-{n}")),
            };
            lookalike::bench::search::run(&catalog, &env, &options)?;
            Ok(())
        }
        BenchCommand::Ingest(args) => {
            if args.batch_size == 0 || args.rounds == 0 {
                bail!("--batch-size and --rounds must be at least 1");
            }
            let assets = Assets::from_env();
            let (env, _guard) = args.env.env()?;
            let scratch = tempfile::tempdir()?;
            let encoder = load_indexing_encoder(&assets, &SqliteCatalog::open(&scratch.path().join("none.db"))?, &args.model)?;
            let fm = FashionMnist::load(&assets.fashion_mnist_dir()?, "train")?;
            let samples = sample_photos(&assets)?;
            let options = lookalike::bench::ingest::IngestBench {
                fm_images: args.fashion_mnist,
                photos: args.photos,
                batch: args.batch_size,
                rounds: args.rounds,
                seed: args.seed,
                name: args.name,
            };
            lookalike::bench::ingest::run(&encoder, &fm, &samples, &env, &options)?;
            Ok(())
        }
        BenchCommand::E2e(args) => {
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
            let options = lookalike::bench::e2e::E2eBench { requests: args.requests, images, k: args.k, name: args.name };
            lookalike::bench::e2e::run(engine, &env, &options)?;
            Ok(())
        }
    }
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

#[derive(Parser)]
#[command(name = "lookalike", version, about = "Reverse image search for fashion catalogs")]
struct Cli {
    /// Settings file (TOML): defaults for any option, keyed by its long name, with a table per
    /// command (`[serve]`). Default: ./lookalike.toml if it exists.
    #[arg(long, global = true, env = "LOOKALIKE_CONFIG", value_name = "FILE")]
    #[allow(dead_code)] // read by config::locate before clap parses; declared for --help
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Import products (photos + metadata) into a catalog, embedding only new or changed images.
    Index(IndexArgs),
    /// Find the catalog products that look most like a photo.
    Search(SearchArgs),
    /// Measure search quality on labelled queries, against two baselines.
    Eval(EvalArgs),
    /// Serve the search page and the JSON API over a catalog.
    Serve(ServeArgs),
    /// Learn a catalog-tuned projection from a metadata column (e.g. articleType).
    Tune(TuneArgs),
    /// Remove products from a catalog by id.
    Remove(RemoveArgs),
    /// Verify a catalog: file structure, vector checksums, products and vectors pairing up.
    Check(CheckArgs),
    /// Recover a damaged catalog: salvage readable rows, drop damaged vectors, reset the
    /// search graph. Products that lose their vector are re-embedded by `index`.
    Repair(DbArgs),
    /// Make a Qdrant collection agree with the catalog: add what is missing, delete what is gone.
    Sync(SyncArgs),
    /// Show what a catalog holds.
    Info(DbArgs),
    /// Prepare the built-in models (convert the PyTorch weights to ONNX) and list them.
    Models,
    /// Measure speed against reference implementations; reports go to docs/ (JSON + markdown).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Exact scan (f32/f16/int8, 1 and all threads) and HNSW graph, against FAISS.
    Search(BenchSearchArgs),
    /// Indexing images/s against the Python (PIL + numpy + onnxruntime) reference.
    Ingest(BenchIngestArgs),
    /// POST /api/search latency through the real server, stage by stage.
    E2e(BenchE2eArgs),
}

#[derive(Args)]
struct BenchIngestArgs {
    #[command(flatten)]
    env: BenchEnvArgs,
    /// Fashion-MNIST training images in the small-image set.
    #[arg(long, default_value_t = 3000)]
    fashion_mnist: usize,
    /// JPEG photos (800-1200 px) in the large-image set.
    #[arg(long, default_value_t = 1000)]
    photos: usize,
    /// Images per inference batch of lookalike's indexer.
    #[arg(long, default_value_t = lookalike::import::DEFAULT_BATCH_SIZE)]
    batch_size: usize,
    /// Timed runs of each side per set, taken in turns (the medians are compared).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value = "ingest")]
    name: String,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Args)]
struct BenchE2eArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    env: BenchEnvArgs,
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Folder of query photos (default: 100 Fashion-MNIST test images and the scikit-image
    /// sample photos, in turn).
    #[arg(long)]
    images: Option<PathBuf>,
    #[arg(short, default_value_t = 10)]
    k: usize,
    #[arg(long, default_value = "e2e")]
    name: String,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    index: SearchIndexArgs,
}

#[derive(Args)]
struct BenchEnvArgs {
    /// Directory for the JSON and markdown reports.
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
    /// Python with bench/requirements-reference.txt installed (bench/setup-reference.sh prints
    /// it). Without it the reference runs are skipped.
    #[arg(long, env = "LOOKALIKE_BENCH_PYTHON")]
    python: Option<PathBuf>,
    /// Directory holding the reference scripts.
    #[arg(long, default_value = "bench")]
    scripts: PathBuf,
    /// Scratch directory for generated files (default: a temporary directory).
    #[arg(long)]
    work: Option<PathBuf>,
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
struct BenchSearchArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    env: BenchEnvArgs,
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    #[arg(short, default_value_t = 10)]
    k: usize,
    /// Grow the catalog's vectors to this many (catalog vector + noise) for a scale test.
    #[arg(long)]
    synthetic: Option<usize>,
    /// Norm of the noise that makes synthetic vectors and queries.
    #[arg(long, default_value_t = 0.25)]
    noise: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Graph candidate counts to try.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,256")]
    candidates: Vec<usize>,
    /// Run FAISS only on sets up to this many vectors.
    #[arg(long, default_value_t = 200_000)]
    faiss_max: usize,
    /// Report name (default: search-<vectors>).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Args)]
struct DbArgs {
    /// The catalog file (SQLite), created by `index`.
    #[arg(long, env = "LOOKALIKE_DB")]
    db: PathBuf,
}

#[derive(Args)]
struct ModelArgs {
    /// Built-in model (efficientnet-lite0, efficientnet-lite2) or a model description JSON.
    /// Defaults to the model the catalog was indexed with, else efficientnet-lite0.
    #[arg(long)]
    model: Option<String>,
    /// Inference threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// Where vectors are kept and searched.
#[derive(Args)]
struct StoreArgs {
    /// `embedded` (vectors in the catalog file, searched in this process) or `qdrant://HOST:PORT`
    /// (a Qdrant server or cluster, gRPC port; `qdrants://` for TLS).
    #[arg(long, env = "LOOKALIKE_STORE", default_value = "embedded")]
    store: String,
    /// Qdrant collection (default: the catalog file's name without extension).
    #[arg(long)]
    collection: Option<String>,
    #[arg(long, env = "QDRANT_API_KEY", hide_env_values = true)]
    qdrant_api_key: Option<String>,
    /// Shards of a collection lookalike creates.
    #[arg(long)]
    shards: Option<u32>,
    /// Copies of each shard in a collection lookalike creates.
    #[arg(long)]
    replicas: Option<u32>,
    /// Copies of a shard that must acknowledge each write, in a collection lookalike creates
    /// (Qdrant's write_consistency_factor; at most --replicas).
    #[arg(long, value_name = "N")]
    write_consistency: Option<u32>,
    /// Keep int8 copies of the vectors in Qdrant's RAM (scalar quantisation), new collections.
    #[arg(long)]
    quantize: bool,
    /// Write ordering across replicas: weak, medium or strong.
    #[arg(long, default_value = "weak")]
    write_ordering: String,
    /// Timeout of each Qdrant call.
    #[arg(long, default_value_t = 30)]
    qdrant_timeout_secs: u64,
    /// Exact (brute-force) search in Qdrant instead of its HNSW index (parity checks).
    #[arg(long)]
    qdrant_exact: bool,
    /// Metadata columns given a keyword index for filters, in a new collection.
    #[arg(long, value_delimiter = ',', default_value = "articleType,gender,masterCategory,subCategory,baseColour,season,usage,folder")]
    filter_columns: Vec<String>,
}

impl StoreArgs {
    /// The Qdrant set-up, or `None` for the embedded store.
    fn qdrant(&self, db: &Path) -> Result<Option<lookalike::index::qdrant::QdrantConfig>> {
        if self.store == "embedded" {
            return Ok(None);
        }
        use lookalike::index::qdrant::QdrantConfig;
        use qdrant_client::qdrant::WriteOrderingType;
        let write_ordering = match self.write_ordering.as_str() {
            "weak" => WriteOrderingType::Weak,
            "medium" => WriteOrderingType::Medium,
            "strong" => WriteOrderingType::Strong,
            other => bail!("--write-ordering {other:?}: expected weak, medium or strong"),
        };
        if let Some(factor) = self.write_consistency {
            let replicas = self.replicas.unwrap_or(1);
            if factor == 0 || factor > replicas {
                bail!("--write-consistency {factor}: must be between 1 and the number of --replicas ({replicas})");
            }
        }
        let collection = match &self.collection {
            Some(c) => c.clone(),
            None => db.file_stem().and_then(|s| s.to_str()).unwrap_or("lookalike").to_string(),
        };
        if collection.is_empty() || !collection.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')) {
            bail!("collection name {collection:?}: use letters, digits, - and _ (--collection)");
        }
        Ok(Some(QdrantConfig {
            url: QdrantConfig::parse_url(&self.store)?,
            api_key: self.qdrant_api_key.clone().filter(|k| !k.is_empty()),
            collection,
            shards: self.shards,
            replicas: self.replicas,
            write_consistency: self.write_consistency,
            quantize: self.quantize,
            write_ordering,
            timeout: std::time::Duration::from_secs(self.qdrant_timeout_secs.max(1)),
            filter_columns: self.filter_columns.clone(),
            exact: self.qdrant_exact,
        }))
    }

    /// After a catalog change: bring the Qdrant collection in line (a no-op for embedded).
    fn sync_after_change(&self, catalog: &SqliteCatalog) -> Result<()> {
        if let Some(config) = self.qdrant(catalog.path())? {
            let report = lookalike::search::sync_qdrant(catalog, &config)?;
            eprintln!("Qdrant collection {:?}: {} added, {} deleted ({:.1}s)", config.collection, report.added, report.deleted, report.seconds);
        }
        Ok(())
    }
}

/// How the catalog's vectors are indexed for search.
#[derive(Args)]
struct SearchIndexArgs {
    /// Row storage of the exact index: f32 (exact), f16 (half the memory) or i8 (a quarter).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    /// Approximate (HNSW graph) index: auto uses it above --ann-above products.
    #[arg(long, value_enum, default_value_t = AnnMode::Auto)]
    ann: AnnMode,
    #[arg(long, default_value_t = IndexConfig::default().ann_above)]
    ann_above: usize,
    /// Graph candidates re-ranked exactly per query (more: higher recall, slower).
    #[arg(long, default_value_t = AnnOptions::default().candidates)]
    ann_candidates: usize,
    #[command(flatten)]
    store: StoreArgs,
}

impl SearchIndexArgs {
    fn config(&self, db: &Path) -> Result<IndexConfig> {
        if self.ann_candidates == 0 {
            bail!("--ann-candidates must be at least 1");
        }
        let ann_options = AnnOptions { candidates: self.ann_candidates, ..AnnOptions::default() };
        Ok(IndexConfig { precision: self.precision, ann: self.ann, ann_above: self.ann_above, ann_options, store: self.store.qdrant(db)? })
    }
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["kaggle", "images", "fashion_mnist"])))]
struct IndexArgs {
    #[command(flatten)]
    db: DbArgs,
    /// A "Fashion Product Images" folder: images/ID.jpg + styles.csv.
    #[arg(long, value_name = "DIR")]
    kaggle: Option<PathBuf>,
    /// Any folder of photos (recursive; a product's id is its relative path).
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
    /// A Fashion-MNIST split: train or test.
    #[arg(long, value_name = "SPLIT")]
    fashion_mnist: Option<String>,
    /// Directory with the four Fashion-MNIST IDX .gz files (default: the asset directory's).
    #[arg(long, value_name = "DIR")]
    fashion_mnist_dir: Option<PathBuf>,
    /// Import at most this many products.
    #[arg(long)]
    limit: Option<usize>,
    /// Images per inference batch (per model session; small batches stay in cache).
    #[arg(long, default_value_t = lookalike::import::DEFAULT_BATCH_SIZE)]
    batch_size: usize,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
struct SearchArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The photo to search with.
    #[arg(required_unless_present = "like")]
    image: Option<PathBuf>,
    /// Search with a catalog product's stored vector instead of a photo ("more like this").
    #[arg(long, value_name = "PRODUCT_ID", conflicts_with = "image")]
    like: Option<String>,
    /// Number of results.
    #[arg(short, default_value_t = 10)]
    k: usize,
    /// Skip this many results (paging).
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Only products whose metadata column equals the value: column=value. Repeat to combine
    /// (different columns must all match; values of the same column are alternatives).
    #[arg(long = "filter", value_name = "COLUMN=VALUE")]
    filters: Vec<String>,
    /// Search with part of the photo only: x,y,w,h as fractions (0..1) of its width and height.
    #[arg(long, value_name = "X,Y,W,H", conflicts_with = "like")]
    crop: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    index: SearchIndexArgs,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Fashion-MNIST split to draw labelled queries from (test: held out from a train catalog).
    #[arg(long, value_name = "SPLIT")]
    fashion_mnist: String,
    #[arg(long, value_name = "DIR")]
    fashion_mnist_dir: Option<PathBuf>,
    /// Number of queries, stratified by label.
    #[arg(long, default_value_t = 2000)]
    queries: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Metadata column that decides relevance.
    #[arg(long, default_value = "articleType")]
    label: String,
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Turn each query into a shopper-like photo first (background, crop, rotation, light,
    /// blur, JPEG), seeded by --seed.
    #[arg(long)]
    perturb: bool,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Address to listen on. The default is reachable from this machine only; use
    /// 0.0.0.0:8080 to serve the network (behind a TLS-terminating proxy). Port 0 picks a free
    /// port; the bound address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// Bearer token that allows catalog changes (POST/DELETE /api/products). Without one,
    /// those routes answer 403.
    #[arg(long, env = "LOOKALIKE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Largest accepted photo upload, in megabytes.
    #[arg(long, default_value_t = 20)]
    max_upload_mb: usize,
    /// Encoder worker threads (each decodes, preprocesses and runs the model on its batch).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Photos that may wait for a worker; past that, requests get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Most photos encoded in one model call.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Longest a request may take (upload included) before it is answered 408.
    #[arg(long, default_value_t = 30)]
    request_timeout_secs: u64,
    /// Longest a client may take to send its request headers before the connection is closed.
    #[arg(long, default_value_t = 10)]
    header_timeout_secs: u64,
    /// Most connections open at once; more wait until one closes. Keep it below the process's
    /// open-file limit (`ulimit -n`).
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// How often to look for products that other processes (`lookalike index`, `remove`,
    /// another server) added to or removed from the catalog, in milliseconds.
    #[arg(long, default_value_t = 250)]
    follow_interval_ms: u64,
    /// On Ctrl-C / SIGTERM, how long to let in-flight requests finish.
    #[arg(long, default_value_t = 10)]
    shutdown_grace_secs: u64,
    /// Let browser pages from this origin (e.g. https://shop.example) call the API; repeat for
    /// several. Without it no CORS headers are sent.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    index: SearchIndexArgs,
}

#[derive(Args)]
struct TuneArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Metadata column whose values say which products belong together.
    #[arg(long, default_value = "articleType", conflicts_with = "off")]
    label: String,
    /// Dimension of the tuned vectors.
    #[arg(long, default_value_t = 256)]
    dim: usize,
    /// Hidden layer width (0: a linear projection).
    #[arg(long, default_value_t = 1024)]
    hidden: usize,
    #[arg(long, default_value_t = 12)]
    epochs: usize,
    /// Fraction of input features dropped in each training step.
    #[arg(long, default_value_t = 0.0)]
    dropout: f32,
    /// Scale of the cosine logits.
    #[arg(long, default_value_t = 16.0)]
    scale: f32,
    /// Also train on this many shopper-like (perturbed) versions of catalog photos, encoded
    /// now with the catalog's model: makes the tuned space robust to street photos (default:
    /// half the labelled catalog, at most 30,000; 0 turns it off).
    #[arg(long)]
    augment: Option<usize>,
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Drop the tuned projection and search the model's own features again.
    #[arg(long)]
    off: bool,
}

#[derive(Args)]
struct RemoveArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// Product ids to remove.
    #[arg(required = true)]
    ids: Vec<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LOOKALIKE_LOG").unwrap_or_else(|_| "lookalike=info,warn".into()))
        .with_writer(std::io::stderr)
        .init();
    // The settings file becomes command-line options before clap sees them (src/config.rs).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let args = match config::locate(&args) {
        Some(file) => match config::apply_file(&Cli::command(), args, &file) {
            Ok(args) => args,
            Err(err) => {
                eprintln!("error: {err:#}");
                return ExitCode::from(2);
            }
        },
        None => args,
    };
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Index(args) => run_index(args),
        Command::Search(args) => run_search(args),
        Command::Eval(args) => run_eval(args),
        Command::Serve(args) => run_serve(args),
        Command::Tune(args) => run_tune(args),
        Command::Remove(args) => run_remove(args),
        Command::Info(args) => run_info(args),
        Command::Check(args) => run_check(args),
        Command::Sync(args) => run_sync(args),
        Command::Repair(args) => run_repair(args),
        Command::Models => run_models(),
        Command::Bench(command) => run_bench(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The encoder for a catalog: the model asked for, else the one the catalog was built with.
fn load_encoder(assets: &Assets, catalog: &SqliteCatalog, args: &ModelArgs) -> Result<OrtEncoder> {
    let threads = args.threads.unwrap_or_else(cores);
    OrtEncoder::new(&assets.onnxruntime_lib()?, model_spec(assets, catalog, args)?, threads)
}

/// The encoder for bulk indexing: one single-threaded session per core (higher throughput on a
/// stream of batches than one session using every core), unless `--threads` asks for one
/// session of that many threads.
fn load_indexing_encoder(assets: &Assets, catalog: &SqliteCatalog, args: &ModelArgs) -> Result<OrtEncoder> {
    let (sessions, threads) = match args.threads {
        Some(threads) => (1, threads),
        None => (cores(), 1),
    };
    OrtEncoder::with_sessions(&assets.onnxruntime_lib()?, model_spec(assets, catalog, args)?, sessions, threads)
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn model_spec(assets: &Assets, catalog: &SqliteCatalog, args: &ModelArgs) -> Result<model::ModelSpec> {
    match (&args.model, catalog.vector_space()?, catalog.model_description()?) {
        (Some(m), _, _) => model::resolve(assets, m),
        (None, Some(space), Some(json)) if !model::is_builtin(&space.model) => {
            serde_json::from_str(&json).with_context(|| format!("the model description stored in {} is damaged", catalog.path().display()))
        }
        (None, Some(space), _) => model::resolve(assets, &space.model),
        (None, None, _) => model::resolve(assets, model::DEFAULT_MODEL),
    }
}

fn fashion_mnist_dir(assets: &Assets, dir: &Option<PathBuf>) -> Result<PathBuf> {
    match dir {
        Some(d) => Ok(d.clone()),
        None => assets.fashion_mnist_dir(),
    }
}

fn run_index(args: IndexArgs) -> Result<()> {
    let assets = Assets::from_env();
    let items = if let Some(dir) = &args.kaggle {
        let (items, report) = import::read_kaggle(dir)?;
        for id in &report.missing_images {
            tracing::warn!("product {id}: image file missing, skipped");
        }
        for (line, why) in &report.malformed {
            tracing::warn!("styles.csv line {line}: {why}, skipped");
        }
        items
    } else if let Some(dir) = &args.images {
        import::folder::read_folder(dir)?
    } else if let Some(split) = &args.fashion_mnist {
        FashionMnist::load(&fashion_mnist_dir(&assets, &args.fashion_mnist_dir)?, split)?.items(args.limit)?
    } else {
        bail!("give one of --kaggle, --images or --fashion-mnist");
    };
    let items = match args.limit {
        Some(n) => items.into_iter().take(n).collect(),
        None => items,
    };

    let mut catalog = SqliteCatalog::open(&args.db.db)?;
    let encoder = load_indexing_encoder(&assets, &catalog, &args.model)?;

    // Ctrl-C finishes the batch in flight, commits it and stops; re-running resumes.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: finishing the current batch (Ctrl-C again to quit at once)");
    }) {
        tracing::warn!("cannot install the Ctrl-C handler: {e}");
    }

    let options = IndexOptions { batch_size: args.batch_size, progress: true, ..Default::default() };
    let report = import::index_items(&mut catalog, &encoder, items, &options, &stop)?;
    eprintln!(
        "indexed {} new or changed, {} unchanged, {} skipped, of {} in {:.1}s ({:.1} images/s); catalog now holds {} products",
        report.embedded,
        report.unchanged,
        report.failed.len(),
        report.seen,
        report.elapsed.as_secs_f64(),
        report.rate(),
        catalog.len()?
    );
    for (id, why) in report.failed.iter().take(20) {
        eprintln!("  skipped {id}: {why}");
    }
    if report.failed.len() > 20 {
        eprintln!("  ... and {} more", report.failed.len() - 20);
    }
    if report.interrupted {
        bail!("interrupted; run the same command again to resume");
    }
    args.store.sync_after_change(&catalog)?;
    Ok(())
}

fn run_search(args: SearchArgs) -> Result<()> {
    let assets = Assets::from_env();
    let catalog = SqliteCatalog::open_existing(&args.db.db)?;
    let encoder = load_encoder(&assets, &catalog, &args.model)?;
    let engine = SearchEngine::open_with(catalog, Box::new(encoder), &args.index.config(&args.db.db)?)?;
    let request = SearchRequest { k: args.k, offset: args.offset, filter: Filter::parse(&args.filters)? };
    let crop = args.crop.as_deref().map(Crop::parse).transpose().map_err(anyhow::Error::msg)?;
    let results = match (&args.image, &args.like) {
        (Some(path), _) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            engine.search_image(&bytes, crop, &request).with_context(|| format!("searching with {}", path.display()))?
        }
        (None, Some(id)) => engine.search_like(id, &request)?,
        (None, None) => bail!("give a photo or --like PRODUCT_ID"),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results_json(&results))?);
    } else {
        print_table(&results);
    }
    Ok(())
}

fn results_json(results: &SearchResults) -> serde_json::Value {
    let hits: Vec<_> = results
        .hits
        .iter()
        .map(|h| {
            serde_json::json!({
                "rank": h.rank,
                "id": h.product.id,
                "score": h.score,
                "name": h.product.name(),
                "category": h.product.category(),
                "colour": h.product.colour(),
                "image": image_label(&h.product.image),
                "metadata": h.product.metadata,
            })
        })
        .collect();
    serde_json::json!({ "hits": hits, "timings": results.timings })
}

fn image_label(image: &lookalike::catalog::ImageRef) -> String {
    match image {
        lookalike::catalog::ImageRef::File(p) => p.display().to_string(),
        lookalike::catalog::ImageRef::Stored { mime } => format!("(stored in catalog, {mime})"),
    }
}

fn print_table(results: &SearchResults) {
    println!("{:>4}  {:<24}  {:>6}  {:<36}  {:<16}  {:<10}  image", "rank", "id", "score", "name", "category", "colour");
    for h in &results.hits {
        let p = &h.product;
        println!(
            "{:>4}  {:<24}  {:>6.3}  {:<36}  {:<16}  {:<10}  {}",
            h.rank,
            truncate(&p.id, 24),
            h.score,
            truncate(p.name(), 36),
            truncate(p.category().unwrap_or("-"), 16),
            truncate(p.colour().unwrap_or("-"), 10),
            image_label(&p.image)
        );
    }
    if results.hits.is_empty() {
        println!("(no products match)");
    }
    let t = &results.timings;
    eprintln!(
        "{:.1} ms (decode {:.1}, preprocess {:.1}, encode {:.1}, search {:.1}, metadata {:.1})",
        t.total_ms, t.decode_ms, t.preprocess_ms, t.encode_ms, t.search_ms, t.metadata_ms
    );
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let cut: String = s.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

fn run_eval(args: EvalArgs) -> Result<()> {
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
    let options = eval::EvalOptions { label: args.label.clone(), seed: args.seed, perturb: args.perturb, store: args.store.qdrant(&args.db.db)? };
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

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn run_serve(args: ServeArgs) -> Result<()> {
    if args.max_upload_mb == 0 {
        bail!("--max-upload-mb must be at least 1");
    }
    if args.workers == 0 || args.queue == 0 || args.max_batch == 0 || args.request_timeout_secs == 0 {
        bail!("--workers, --queue, --max-batch and --request-timeout-secs must be at least 1");
    }
    if args.header_timeout_secs == 0 || args.max_connections == 0 || args.follow_interval_ms == 0 {
        bail!("--header-timeout-secs, --max-connections and --follow-interval-ms must be at least 1");
    }
    let cors_origins = args
        .cors_origins
        .iter()
        .map(|o| {
            let ok = (o.starts_with("http://") || o.starts_with("https://")) && !o.ends_with('/');
            anyhow::ensure!(ok, "--cors-origin {o:?} must be an origin like https://shop.example (scheme and host, no path)");
            axum::http::HeaderValue::from_str(o).with_context(|| format!("--cors-origin {o:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let assets = Assets::from_env();
    let catalog = SqliteCatalog::open_existing(&args.db.db)?;
    let encoder = load_encoder(&assets, &catalog, &args.model)?;
    let engine = Arc::new(SearchEngine::open_with(catalog, Box::new(encoder), &args.index.config(&args.db.db)?)?);
    let config = ServerConfig {
        addr: args.addr,
        admin_token: server::normalise_admin_token(args.admin_token.as_deref()),
        max_upload_bytes: args.max_upload_mb.saturating_mul(1024 * 1024),
        batcher: BatcherConfig { workers: args.workers, queue: args.queue, max_batch: args.max_batch },
        request_timeout: std::time::Duration::from_secs(args.request_timeout_secs),
        shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace_secs),
        cors_origins,
        header_timeout: std::time::Duration::from_secs(args.header_timeout_secs),
        max_connections: args.max_connections,
        follow_interval: std::time::Duration::from_millis(args.follow_interval_ms),
    };
    if config.admin_token.is_none() {
        eprintln!("catalog changes over the API are off: pass --admin-token or set LOOKALIKE_ADMIN_TOKEN to allow them");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(server::serve(engine, config))
}

fn run_tune(args: TuneArgs) -> Result<()> {
    let mut catalog = SqliteCatalog::open_existing(&args.db.db)?;
    if args.off {
        let had = catalog.clear_projection()?;
        eprintln!("{}", if had { "tuned projection removed" } else { "no tuned projection to remove" });
        return Ok(());
    }
    if !(0.0..1.0).contains(&args.dropout) {
        bail!("--dropout must be at least 0 and below 1, not {}", args.dropout);
    }
    let (mut features, mut labels, classes) = tune::labelled_features(&catalog, &args.label)?;
    eprintln!("tuning on {} products, {} distinct {} values", labels.len(), classes.len(), args.label);
    let augment = args.augment.unwrap_or((labels.len() / 2).min(30_000));
    if augment > 0 {
        let encoder = load_encoder(&Assets::from_env(), &catalog, &args.model)?;
        eprintln!("encoding {augment} perturbed catalog photos");
        let (extra, extra_labels) = tune::perturbed_features(&catalog, &encoder, &args.label, &classes, augment, args.seed)?;
        features = ndarray::concatenate(ndarray::Axis(0), &[features.view(), extra.view()]).context("joining clean and perturbed features")?;
        labels.extend(extra_labels);
    }
    let options = tune::TuneOptions {
        output_dim: args.dim,
        hidden: args.hidden,
        epochs: args.epochs,
        dropout: args.dropout,
        scale: args.scale,
        seed: args.seed,
        ..Default::default()
    };
    let (projection, report) = tune::train(features.view(), &labels, classes.len(), &args.label, &options)?;
    let record = serde_json::json!({ "options": options, "report": report, "classes": classes });
    catalog.save_projection(&projection, &record.to_string())?;
    eprintln!(
        "tuned in {:.1}s: final loss {:.3}, train accuracy {:.3}; search, the API and eval now use it (undo: lookalike tune --off)",
        report.seconds,
        report.loss.last().copied().unwrap_or(f32::NAN),
        report.accuracy.last().copied().unwrap_or(f32::NAN)
    );
    Ok(())
}

fn run_remove(args: RemoveArgs) -> Result<()> {
    let mut catalog = SqliteCatalog::open_existing(&args.db.db)?;
    let mut missing = Vec::new();
    for id in &args.ids {
        match catalog.remove(id)? {
            Some(_) => eprintln!("removed {id}"),
            None => missing.push(id.as_str()),
        }
    }
    args.store.sync_after_change(&catalog)?;
    if !missing.is_empty() {
        bail!("no product with id {}", missing.join(", "));
    }
    Ok(())
}

#[derive(Args)]
struct SyncArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    store: StoreArgs,
}

fn run_sync(args: SyncArgs) -> Result<()> {
    let catalog = SqliteCatalog::open_existing(&args.db.db)?;
    let Some(config) = args.store.qdrant(&args.db.db)? else {
        bail!("sync needs --store qdrant://HOST:PORT (or LOOKALIKE_STORE)");
    };
    let report = lookalike::search::sync_qdrant(&catalog, &config)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!(
        "Qdrant collection {:?}: {} products in the catalog, {} points before; {} added, {} deleted in {:.1}s",
        config.collection, report.in_catalog, report.in_collection_before, report.added, report.deleted, report.seconds
    );
    Ok(())
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    db: DbArgs,
    #[arg(long)]
    json: bool,
}

fn print_check(report: &lookalike::catalog::CheckReport) {
    eprintln!("products: {}, vectors: {}", report.products, report.vectors);
    for problem in &report.structure {
        eprintln!("  file structure: {problem}");
    }
    for (id, why) in report.damaged_vectors.iter().take(20) {
        eprintln!("  product {id}: vector {why}");
    }
    if report.damaged_vectors.len() > 20 {
        eprintln!("  ... and {} more damaged vectors", report.damaged_vectors.len() - 20);
    }
    if !report.orphan_vectors.is_empty() {
        eprintln!("  {} vectors belong to no product", report.orphan_vectors.len());
    }
    if report.products_without_vector > 0 {
        eprintln!("  {} products have no vector yet: run `lookalike index` with the same source to embed them", report.products_without_vector);
    }
}

fn run_check(args: CheckArgs) -> Result<()> {
    let catalog = SqliteCatalog::open_existing(&args.db.db)?;
    let report = catalog.check().with_context(|| format!("checking {} (run `lookalike repair --db {}`)", args.db.db.display(), args.db.db.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    print_check(&report);
    if !report.is_sound() {
        bail!("{} is damaged: run `lookalike repair --db {}`", args.db.db.display(), args.db.db.display());
    }
    eprintln!("{} is sound", args.db.db.display());
    Ok(())
}

fn run_repair(args: DbArgs) -> Result<()> {
    let path = &args.db;
    if !path.is_file() {
        bail!("no catalog at {}", path.display());
    }
    // A catalog SQLite cannot even open or walk is salvaged row by row first.
    let structural = match SqliteCatalog::open(path).and_then(|c| c.check()) {
        Ok(report) => !report.structure.is_empty(),
        Err(e) => {
            eprintln!("{} cannot be read as is ({e:#}); salvaging its readable rows", path.display());
            true
        }
    };
    if structural {
        let salvaged = lookalike::catalog::salvage(path)?;
        if salvaged.copied.get("products").copied().unwrap_or(0) == 0 {
            bail!(
                "nothing could be salvaged from {} (kept as {}): re-index the shop's photos into a new --db",
                path.display(),
                salvaged.damaged_copy.display()
            );
        }
        eprintln!("salvaged rows {:?}; unreadable stretches {:?}; the damaged file is kept as {}", salvaged.copied, salvaged.unreadable, salvaged.damaged_copy.display());
    }
    let mut catalog = SqliteCatalog::open(path)?;
    let report = catalog.check()?;
    let dropped = catalog.drop_damaged_vectors(&report)?;
    if dropped > 0 {
        eprintln!("dropped {dropped} damaged or orphaned vectors");
    }
    let (graph, stamp) = lookalike::search::graph_paths(path);
    for file in [graph, stamp] {
        if file.exists() {
            std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
        }
    }
    let after = catalog.check()?;
    print_check(&after);
    if !after.is_sound() {
        bail!("{} is still damaged after repair; re-index it into a new --db", path.display());
    }
    eprintln!("{} repaired", path.display());
    Ok(())
}

fn run_info(args: DbArgs) -> Result<()> {
    let catalog = SqliteCatalog::open_existing(&args.db)?;
    println!("catalog: {}", catalog.path().display());
    println!("products: {}", catalog.len()?);
    match catalog.vector_space()? {
        Some(space) => println!("model: {} ({}-d vectors)", space.model, space.dim),
        None => println!("model: none yet"),
    }
    match catalog.projection()? {
        Some(p) => println!("tuned on: {} ({} -> {} dims)", p.label, p.input_dim, p.output_dim),
        None => println!("tuned on: - (run `lookalike tune` to tune on a label column)"),
    }
    Ok(())
}

fn run_models() -> Result<()> {
    let assets = Assets::from_env();
    for name in model::BUILTIN {
        let spec = model::resolve(&assets, name)?;
        let marker = if *name == model::DEFAULT_MODEL { " (default)" } else { "" };
        println!("{name}{marker}: {}x{} input, {:?} pooling, {}", spec.input.size, spec.input.size, spec.pooling, spec.onnx.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    /// Clap's own consistency checks (duplicate flags across flattened groups, bad defaults),
    /// which it otherwise runs only in debug builds.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    /// The README's example settings file names real options, and they parse.
    #[test]
    fn the_readme_settings_example_is_valid() {
        let readme = include_str!("../README.md");
        let example = readme.split("```toml\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a toml example in the README");
        let table: toml::Table = example.parse().expect("the example is TOML");
        let args = ["lookalike", "serve"].map(std::ffi::OsString::from).to_vec();
        let args = super::config::apply(&super::Cli::command(), args, &table, std::path::Path::new("/srv")).expect("the example is valid");
        let cli = super::Cli::try_parse_from(args).expect("clap accepts the options it gives");
        assert!(matches!(cli.command, super::Command::Serve(_)));
    }
}
