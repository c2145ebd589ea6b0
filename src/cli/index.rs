//! `lookalike index`: import products (photos + metadata) into a catalog.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;

use super::args::*;
use lookalike::assets::Assets;
use lookalike::catalog::SqliteCatalog;
use lookalike::import::fashion_mnist::FashionMnist;
use lookalike::import::{self, IndexOptions};
use lookalike::space::SearchSpace;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["kaggle", "images", "fashion_mnist"])))]
pub struct IndexArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// A "Fashion Product Images" folder: images/ID.jpg + styles.csv.
    #[arg(long, value_name = "DIR")]
    pub kaggle: Option<PathBuf>,
    /// The styles.csv column of product ids (any case), which also name the photos
    /// (images/ID.jpg): `sku` or `handle` in a shop's own export.
    #[arg(long, value_name = "COLUMN", default_value = lookalike::import::kaggle::ID_COLUMN)]
    pub id_column: String,
    /// Any folder of photos (recursive; a product's id is its relative path).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// A Fashion-MNIST split: train or test.
    #[arg(long, value_name = "SPLIT")]
    pub fashion_mnist: Option<String>,
    /// Directory with the four Fashion-MNIST IDX .gz files (default: the asset directory's).
    #[arg(long, value_name = "DIR")]
    pub fashion_mnist_dir: Option<PathBuf>,
    /// Import at most this many products.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Fashion-MNIST only: paint each product in a named colour (one in five in two, as
    /// `Multi`), seeded, and label it `baseColour`: the colour benchmark (synthetic; see the
    /// README).
    // `requires` alone is not enough: clap drops a requirement on an argument that conflicts
    // with one given (the source group makes `--images` conflict with `--fashion-mnist`).
    #[arg(long, value_name = "SEED", requires = "fashion_mnist", conflicts_with_all = ["kaggle", "images"])]
    pub colourise: Option<u64>,
    /// Model copy that encodes the photos: `fp32` (the model itself) or `int8` (a built-in
    /// model's int8 copy, calibrated on up to 200 of the photos imported and a shopper-style view
    /// of each; 1.4-1.6x the images/s on CPUs with VNNI). int8-imported vectors are stored as the float
    /// model's and searched with it: float queries on them stay within 0.005 P@10 of an
    /// all-float catalog (docs/bench/int8). An int8 catalog (`--model ...-int8`) always imports
    /// with its own copy.
    #[arg(long, value_enum, default_value_t = ModelPrecision::Fp32, value_name = "PRECISION")]
    pub import_precision: ModelPrecision,
    /// Images per inference batch (per model session; small batches stay in cache).
    #[arg(long, default_value_t = lookalike::import::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(args: IndexArgs) -> Result<()> {
    let assets = Assets::from_env();
    let items = if let Some(dir) = &args.kaggle {
        let (items, report) = import::read_kaggle(dir, &args.id_column)?;
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
        FashionMnist::load(&fashion_mnist_dir(&assets, &args.fashion_mnist_dir)?, split)?.items(args.limit, args.colourise)?
    } else {
        bail!("give one of --kaggle, --images or --fashion-mnist");
    };
    let items = match args.limit {
        Some(n) => items.into_iter().take(n).collect(),
        None => items,
    };

    // A run that fails before adding anything (a bad --model, say) leaves no empty catalog
    // behind for the next command to trip over.
    let created = !args.db.db.exists();
    let result = index_into(&args, &assets, items);
    if result.is_err() && created {
        remove_if_empty(&args.db.db);
    }
    result
}

/// Removes the catalog file at `db` (and SQLite's side files) if it holds no products.
fn remove_if_empty(db: &std::path::Path) {
    let empty = SqliteCatalog::open_existing(db).and_then(|c| c.is_empty()).unwrap_or(false);
    if empty {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(lookalike::catalog::with_suffix(db, suffix));
        }
    }
}

fn index_into(args: &IndexArgs, assets: &Assets, items: Vec<import::CatalogItem>) -> Result<()> {
    let mut catalog = SqliteCatalog::open(&args.db.db)?;
    // Products removed or replaced through servers without the catalog are taken into it before
    // the import, so that the source's own version of one it lists wins (imported anew, or
    // again if changed), as after any removal or upload. Qdrant unreachable: the import goes
    // on; the sync after it says so.
    if let Some(config) = args.store.qdrant(&args.db.db)? {
        let removed = lookalike::store::apply_recorded_removals(&mut catalog, &config).and_then(|removed| take_in_replacements(&catalog, &config).map(|_| removed));
        match removed {
            Ok(0) => {}
            Ok(removed) => eprintln!("{removed} products removed through servers without the catalog were removed from the catalog too"),
            Err(e) => eprintln!("warning: could not take in the changes made through servers without the catalog: {e:#}"),
        }
    }
    // A new catalog of an int8 model: its copy is calibrated on the catalog's own photos. An
    // existing catalog keeps the calibration it was indexed with.
    let calibrated = match catalog.vector_space()? {
        None => calibrated_int8(assets, &args.model, &items)?,
        Some(_) => None,
    };
    let spec = match calibrated {
        Some(spec) => spec,
        None => model_spec(assets, &catalog, &args.model)?,
    };
    let spec = import_model(assets, spec, args.import_precision, &items, &args.model, Some(&catalog))?;
    let encoder = load_indexing_encoder(assets, spec, &args.model)?;

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
    let refreshed: Vec<String> = [(report.recoloured, "given their colour"), (report.redescribed, "with new details from the source")]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} of them {what}"))
        .collect();
    let recoloured = match refreshed.is_empty() {
        true => String::new(),
        false => format!(" ({})", refreshed.join("; ")),
    };
    eprintln!(
        "indexed {} new or changed, {} unchanged{recoloured}, {} skipped, of {} in {:.1}s ({:.1} images/s); catalog now holds {} products",
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
    args.store.sync_after_change(&mut catalog)?;
    // Results say how alike they are in words, by bands measured on the catalog's own products:
    // measured here, once, rather than by the first search of every process.
    SearchSpace::for_catalog(&catalog)?.record_likeness_bands(&catalog, report.embedded > 0)?;
    Ok(())
}
