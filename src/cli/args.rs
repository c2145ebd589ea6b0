//! Option groups several commands share (catalog, model, store, index), and the objects they
//! configure: the second stage of argument handling, after clap's plain values.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use lookalike::assets::Assets;
use lookalike::catalog::SqliteCatalog;
use lookalike::encoder::OrtEncoder;
use lookalike::index::qdrant::{ProductWithoutCatalog, QdrantConfig};
use lookalike::index::{AnnMode, AnnOptions, IndexConfig, Precision};
use lookalike::model;

#[derive(Args)]
pub struct DbArgs {
    /// The catalog file (SQLite), created by `index`.
    #[arg(long, env = "LOOKALIKE_DB")]
    pub db: PathBuf,
}

#[derive(Args)]
pub struct ModelArgs {
    /// Built-in model (efficientnet-lite0, efficientnet-lite2, or their int8 copies
    /// efficientnet-lite0-int8, efficientnet-lite2-int8, calibrated on a new catalog's photos)
    /// or a model description JSON. Defaults to the model the catalog was indexed with, else
    /// efficientnet-lite0.
    #[arg(long)]
    pub model: Option<String>,
    /// Inference threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Which Qdrant collection, and how to reach it: all a command that only reads one needs.
#[derive(Args)]
pub struct StoreConnectionArgs {
    /// `embedded` (vectors in the catalog file, searched in this process) or `qdrant://HOST:PORT`
    /// (a Qdrant server or cluster, gRPC port; `qdrants://` for TLS).
    #[arg(long, env = "LOOKALIKE_STORE", default_value = "embedded")]
    pub store: String,
    /// Qdrant collection (default: the catalog file's name without extension).
    #[arg(long)]
    pub collection: Option<String>,
    #[arg(long, env = "QDRANT_API_KEY", hide_env_values = true)]
    pub qdrant_api_key: Option<String>,
    /// Timeout of each Qdrant call.
    #[arg(long, default_value_t = 30)]
    pub qdrant_timeout_secs: u64,
}

impl StoreConnectionArgs {
    /// The Qdrant set-up to read a collection with (how a new one would be made left at its
    /// defaults), or `None` for the embedded store.
    pub fn qdrant(&self, db: &Path) -> Result<Option<QdrantConfig>> {
        if self.store == "embedded" {
            return Ok(None);
        }
        let collection = self.collection.clone().unwrap_or_else(|| QdrantConfig::default_collection(db));
        let timeout = std::time::Duration::from_secs(self.qdrant_timeout_secs.max(1));
        Ok(Some(QdrantConfig::connecting(&self.store, self.qdrant_api_key.clone(), collection, timeout)?))
    }
}

/// Where vectors are kept and searched, and how a collection lookalike makes is made.
#[derive(Args)]
pub struct StoreArgs {
    #[command(flatten)]
    pub connection: StoreConnectionArgs,
    /// Shards of a collection lookalike creates.
    #[arg(long)]
    pub shards: Option<u32>,
    /// Copies of each shard in a collection lookalike creates.
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Copies of a shard that must acknowledge each write, in a collection lookalike creates
    /// (Qdrant's write_consistency_factor; at most --replicas).
    #[arg(long, value_name = "N")]
    pub write_consistency: Option<u32>,
    /// Keep int8 copies of the vectors in Qdrant's RAM (scalar quantisation), in a collection
    /// lookalike makes (one made in place of another, by `sync --swap` or `--recreate`, does
    /// as that one did unless this or --no-quantize says).
    #[arg(long, conflicts_with = "no_quantize")]
    pub quantize: bool,
    /// Full-precision vectors only, in a collection made in place of a quantised one.
    #[arg(long)]
    pub no_quantize: bool,
    /// Write ordering across replicas: weak, medium or strong.
    #[arg(long, default_value = "weak")]
    pub write_ordering: String,
    /// Exact (brute-force) search in Qdrant instead of its HNSW index (parity checks).
    #[arg(long)]
    pub qdrant_exact: bool,
    /// Metadata columns given a keyword index for filters, in a new collection.
    #[arg(long, value_delimiter = ',', default_value = "articleType,gender,masterCategory,subCategory,baseColour,season,usage,folder")]
    pub filter_columns: Vec<String>,
}

impl StoreArgs {
    /// The Qdrant set-up, or `None` for the embedded store.
    pub fn qdrant(&self, db: &Path) -> Result<Option<QdrantConfig>> {
        let Some(connection) = self.connection.qdrant(db)? else { return Ok(None) };
        let config = QdrantConfig {
            shards: self.shards,
            replicas: self.replicas,
            write_consistency: self.write_consistency,
            quantize: self.quantize.then_some(true).or(self.no_quantize.then_some(false)),
            write_ordering: QdrantConfig::parse_write_ordering(&self.write_ordering)?,
            filter_columns: self.filter_columns.clone(),
            exact: self.qdrant_exact,
            ..connection
        };
        config.validate()?;
        Ok(Some(config))
    }
    /// After a catalog change: bring the Qdrant collection in line (a no-op for embedded).
    pub fn sync_after_change(&self, catalog: &mut SqliteCatalog) -> Result<()> {
        if let Some(config) = self.qdrant(catalog.path())? {
            if catalog.vector_space()?.is_none() {
                eprintln!("the catalog holds no products yet: nothing sent to Qdrant");
                return Ok(());
            }
            take_in_replacements(catalog, &config)?;
            let keep = lookalike::store::KeepReplaced::from_now(lookalike::store::KeepReplaced::DEFAULT);
            let report = lookalike::store::sync_qdrant(catalog, &config, lookalike::store::SyncMode::InPlace, keep)?;
            let encoded = encode_again(catalog, &config, &report.to_encode)?;
            eprintln!(
                "Qdrant collection {:?}: {} added, {} sent again, {} deleted, {} removed through servers without the catalog removed from the catalog too, {encoded} added without the catalog encoded again ({:.1}s)",
                report.collection, report.added, report.resent, report.deleted, report.removed_without_catalog, report.seconds
            );
            report_replaced_collections(&report);
        }
        Ok(())
    }
}

/// How the catalog's vectors are indexed for search.
#[derive(Args)]
pub struct SearchIndexArgs {
    /// Row storage of the exact index: f32 (exact), f16 (half the memory) or i8 (a quarter).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    pub precision: PrecisionArg,
    /// Approximate (HNSW graph) index: auto uses it above --ann-above products when it
    /// measures --ann-recall on the catalog's own products.
    #[arg(long, value_enum, default_value_t = AnnModeArg::Auto)]
    pub ann: AnnModeArg,
    /// Catalogs up to this size are scanned exactly (default: where a scan is as fast as the
    /// graph, 5,000,000 / dimensions: 3,906 products at 1280-d).
    #[arg(long)]
    pub ann_above: Option<usize>,
    /// Recall@10 the graph must measure on the catalog's own products to be used (auto).
    #[arg(long, default_value_t = lookalike::index::DEFAULT_ANN_RECALL)]
    pub ann_recall: f32,
    /// Graph candidates re-ranked exactly per query (more: higher recall, slower).
    #[arg(long, default_value_t = AnnOptions::default().candidates)]
    pub ann_candidates: usize,
    #[command(flatten)]
    pub store: StoreArgs,
}

impl SearchIndexArgs {
    pub fn config(&self, db: &Path) -> Result<IndexConfig> {
        if self.ann_candidates == 0 {
            bail!("--ann-candidates must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.ann_recall) {
            bail!("--ann-recall must be between 0 and 1, not {}", self.ann_recall);
        }
        let ann_options = AnnOptions { candidates: self.ann_candidates, ..AnnOptions::default() };
        Ok(IndexConfig {
            precision: self.precision.into(),
            ann: self.ann.into(),
            ann_above: self.ann_above,
            ann_recall: self.ann_recall,
            ann_options,
            store: self.store.qdrant(db)?,
        })
    }
}

/// The encoder for a catalog: the model asked for, else the one the catalog was built with.
pub fn load_encoder(assets: &Assets, catalog: &SqliteCatalog, args: &ModelArgs) -> Result<OrtEncoder> {
    let threads = args.threads.unwrap_or_else(cores);
    OrtEncoder::new(&assets.onnxruntime_lib()?, model_spec(assets, catalog, args)?, threads)
}

/// The encoder for a Qdrant collection served without its catalog: the model its description
/// names (or the one asked for, which must be the same).
pub fn load_collection_encoder(assets: &Assets, described: &lookalike::store::CollectionDescription, args: &ModelArgs) -> Result<OrtEncoder> {
    let threads = args.threads.unwrap_or_else(cores);
    let space = lookalike::types::VectorSpace { model: described.model.clone(), dim: described.model_dim };
    let spec = model::for_catalog(assets, args.model.as_deref(), Some(&space), described.model_json.as_deref()).context("choosing the model the collection's description names")?;
    OrtEncoder::new(&assets.onnxruntime_lib()?, spec, threads)
}

/// The encoder for bulk indexing: one single-threaded session per core (higher throughput on a
/// stream of batches than one session using every core), unless `--threads` asks for one
/// session of that many threads.
pub fn load_indexing_encoder(assets: &Assets, spec: model::ModelSpec, args: &ModelArgs) -> Result<OrtEncoder> {
    let (sessions, threads) = match args.threads {
        Some(threads) => (1, threads),
        None => (cores(), 1),
    };
    OrtEncoder::with_sessions(&assets.onnxruntime_lib()?, spec, sessions, threads)
}

/// The int8 copy that `args.model` names (`efficientnet-lite0-int8`), calibrated on `items`;
/// `None` when it names no int8 model. `index` (a new catalog) and `bench ingest` make int8
/// copies only here.
pub fn calibrated_int8(assets: &Assets, args: &ModelArgs, items: &[lookalike::import::CatalogItem]) -> Result<Option<model::ModelSpec>> {
    let Some((name, base)) = args.model.as_deref().and_then(|name| Some((name, model::int8_base(name)?))) else {
        return Ok(None);
    };
    eprintln!("calibrating {name} on up to {} photos", lookalike::import::CALIBRATION_PHOTOS);
    // Its queries run the copy on whatever machine serves the catalog: the width every CPU runs.
    lookalike::import::calibrate_int8(assets, base, items, args.threads.unwrap_or_else(cores), model::quantise::WEIGHT_BITS).map(Some)
}

/// The model that encodes the photos `index` imports: `spec` itself, or with
/// `--import-precision int8` the int8 copy of its built-in float model, calibrated on `items`
/// (up to [`lookalike::import::CALIBRATION_PHOTOS`] of them) and storing its vectors as the
/// float model's ([`model::int8_import_copy`]). An int8 catalog imports with its own copy either
/// way; a plug-in model has no int8 copy.
///
/// `catalog` (the one imported into) keeps the calibration: a later int8 import into it uses
/// the same copy, so re-running `index` calibrates nothing (11 s of every run over 3,000 photos
/// on 2 cores) and its vectors come from one model, unless this import has over twice the
/// photos to calibrate on that the first had.
pub fn import_model(
    assets: &Assets,
    spec: model::ModelSpec,
    precision: ModelPrecision,
    items: &[lookalike::import::CatalogItem],
    args: &ModelArgs,
    catalog: Option<&SqliteCatalog>,
) -> Result<model::ModelSpec> {
    if precision == ModelPrecision::Fp32 || spec.int8.is_some() || items.is_empty() {
        return Ok(spec);
    }
    if !model::is_builtin(&spec.name) {
        bail!("--import-precision int8 needs a built-in model ({}); {:?} is a plug-in model: leave the option out", model::BUILTIN.join(", "), spec.name);
    }
    // Calibrated again only where this import has far more photos to calibrate on (a first
    // import of 20 photos, then the whole catalog).
    let would_see = lookalike::import::calibration_inputs(items.len());
    let kept = match catalog {
        Some(catalog) => kept_import_calibration(catalog)?.filter(|c| c.base == spec.name && c.photos.saturating_mul(2) >= would_see),
        None => None,
    };
    // Only this machine runs the copy (the vectors are stored as the float model's): its weights
    // are as wide as this CPU's integer kernels allow, whatever width an import elsewhere chose.
    let bits = model::quantise::local_weight_bits();
    let width = match bits {
        8 => "8-bit weights: this CPU has VNNI",
        _ => "7-bit weights: this CPU has no VNNI",
    };
    if let Some(calibration) = kept {
        eprintln!("importing with the int8 copy of {} this catalog was first imported with (calibrated on {} inputs; {width})", spec.name, calibration.photos);
        return model::int8_import_copy(&spec, model::int8_spec(assets, model::Int8Calibration { weight_bits: bits, ..calibration })?);
    }
    eprintln!("calibrating the int8 copy of {} on up to {} of the photos to import ({width})", spec.name, lookalike::import::CALIBRATION_PHOTOS);
    let calibrated = lookalike::import::calibrate_int8(assets, &spec.name, items, args.threads.unwrap_or_else(cores), bits)?;
    if let (Some(catalog), Some(calibration)) = (catalog, &calibrated.int8) {
        catalog.set_import_calibration(&serde_json::to_string(calibration)?)?;
    }
    model::int8_import_copy(&spec, calibrated)
}

/// The calibration a catalog's earlier int8 import kept; a damaged one is said and calibrated
/// again.
fn kept_import_calibration(catalog: &SqliteCatalog) -> Result<Option<model::Int8Calibration>> {
    let Some(json) = catalog.import_calibration()? else { return Ok(None) };
    match serde_json::from_str(&json) {
        Ok(calibration) => Ok(Some(calibration)),
        Err(e) => {
            tracing::warn!("the int8 calibration kept with the catalog is damaged ({e}): calibrating again");
            Ok(None)
        }
    }
}

/// Parses a count that must be at least 1 (`search -k`): zero results is no search.
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

pub fn model_spec(assets: &Assets, catalog: &SqliteCatalog, args: &ModelArgs) -> Result<model::ModelSpec> {
    let description = catalog.model_description()?;
    model::for_catalog(assets, args.model.as_deref(), catalog.vector_space()?.as_ref(), description.as_deref())
        .with_context(|| format!("choosing the model for {}", catalog.path().display()))
}

pub fn fashion_mnist_dir(assets: &Assets, dir: &Option<PathBuf>) -> Result<PathBuf> {
    match dir {
        Some(d) => Ok(d.clone()),
        None => assets.fashion_mnist_dir(),
    }
}

/// A new temporary file in `path`'s directory (made if needed), to be renamed to `path` once
/// it is complete (`NamedTempFile::persist`); dropped, it is removed.
pub fn create_temporary_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    // Checked now: the rename over a folder would fail only once the work is done.
    if path.is_dir() {
        bail!("{} is a folder; give a file name (e.g. {})", path.display(), path.join("out.jsonl").display());
    }
    create_parent(path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    // A temporary file is made readable by its owner alone (0600); this one becomes the user's
    // own file, so it is made as any other file they write: 0666 less their umask.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    builder.tempfile_in(dir).with_context(|| format!("creating a file in {} to write {}", dir.display(), path.display()))
}

fn create_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

// The command line's names for library enums: clap stays in the CLI layer.

/// `--precision`: row storage of the exact index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    F32,
    F16,
    I8,
}

impl From<PrecisionArg> for Precision {
    fn from(arg: PrecisionArg) -> Precision {
        match arg {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::F16 => Precision::F16,
            PrecisionArg::I8 => Precision::I8,
        }
    }
}

/// `--import-precision`, `--augment-precision`: which copy of a built-in model encodes photos,
/// the float model itself or its int8 copy (calibrated on the catalog's own photos).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelPrecision {
    Int8,
    Fp32,
}

/// `--ann`: when the search graph is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AnnModeArg {
    Auto,
    Always,
    Never,
}

impl From<AnnModeArg> for AnnMode {
    fn from(arg: AnnModeArg) -> AnnMode {
        match arg {
            AnnModeArg::Auto => AnnMode::Auto,
            AnnModeArg::Always => AnnMode::Always,
            AnnModeArg::Never => AnnMode::Never,
        }
    }
}

/// Says which collections earlier swaps replaced a sync deleted, and which it keeps.
pub fn report_replaced_collections(report: &lookalike::index::qdrant::SyncReport) {
    for deleted in &report.deleted_collections {
        eprintln!("deleted collection {deleted:?}, which a swap had replaced (servers have had time to move off it)");
    }
    let older: Vec<&String> = report.kept_collections.iter().filter(|c| Some(*c) != report.replaced.as_ref()).collect();
    if !older.is_empty() {
        eprintln!("kept collections {older:?}, which swaps replaced moments ago: servers may still search them; a later sync deletes them");
    }
}

/// Catalog products that servers without the catalog replaced (added again under the same id;
/// [`lookalike::store::replaced_without_catalog`]), taken into the catalog from the photos
/// their points carry, as a server with the catalog takes an upload: encoded again, colour
/// read, the point then keyed to the catalog's row. A sync after this keeps them instead of
/// sending the catalog's older versions back. How many were; those whose points carry no photo
/// (written before points carried a reduced copy of a photo over 64 KiB) are named, and keep
/// the catalog's versions.
pub fn take_in_replacements(catalog: &SqliteCatalog, config: &QdrantConfig) -> Result<usize> {
    let (with_photo, without): (Vec<_>, Vec<_>) = lookalike::store::replaced_without_catalog(catalog, config)?.into_iter().partition(|p| p.image.is_some());
    if !without.is_empty() {
        let ids: Vec<&str> = without.iter().map(|p| p.product.id.as_str()).collect();
        eprintln!(
            "warning: {} catalog products were replaced through servers without the catalog, whose points carry no photo (written before points carried copies of photos over 64 KiB); the catalog's versions are sent back: replace them again: {}",
            ids.len(),
            ids.join(", ")
        );
    }
    if with_photo.is_empty() {
        return Ok(0);
    }
    let encoder = load_encoder(&Assets::from_env(), catalog, &ModelArgs { model: None, threads: None })?;
    let index = IndexConfig { store: Some(config.clone()), ..IndexConfig::default() };
    let engine = lookalike::search::SearchEngine::open_with(SqliteCatalog::open_existing(catalog.path())?, Box::new(encoder), &index)?;
    for product in &with_photo {
        let (id, photo) = (product.product.id.clone(), product.image.clone().unwrap_or_default());
        engine
            .add_product_photo(id.clone(), photo, product.product.metadata.clone(), product.product.photo.clone())
            .with_context(|| format!("taking product {id:?} into the catalog"))?;
    }
    eprintln!("{} catalog products replaced through servers without the catalog were taken into the catalog", with_photo.len());
    Ok(with_photo.len())
}

/// Products that servers without the catalog added, whose vectors are in the search space
/// before `tune`: encoded again from the photos their points carry, and written as such a
/// server writes them (it reads the new description: model, space, head). How many were.
pub fn encode_again(catalog: &SqliteCatalog, config: &QdrantConfig, products: &[ProductWithoutCatalog]) -> Result<usize> {
    if products.iter().all(|p| p.image.is_none()) {
        return Ok(0);
    }
    let encoder = load_encoder(&Assets::from_env(), catalog, &ModelArgs { model: None, threads: None })?;
    let engine = lookalike::search::SearchEngine::open_collection(config, Box::new(encoder))?;
    let mut encoded = 0;
    for product in products {
        let Some(photo) = &product.image else { continue };
        let id = product.product.id.clone();
        engine
            .add_product_photo(id.clone(), photo.clone(), product.product.metadata.clone(), product.product.photo.clone())
            .with_context(|| format!("encoding product {id:?} again"))?;
        encoded += 1;
    }
    Ok(encoded)
}
