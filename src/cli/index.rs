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
use lookalike::types::first_few;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["kaggle", "images", "fashion_mnist"])))]
pub struct IndexArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// A "Fashion Product Images" folder: images/ID.jpg + styles.csv.
    #[arg(long, value_name = "DIR")]
    pub kaggle: Option<PathBuf>,
    /// The styles.csv column of product ids (any case), which also name the photos
    /// (images/ID.jpg): `sku` or `handle` in a shop's own export. Kept in the catalog, so
    /// later imports use it without being told [default: id].
    #[arg(long, value_name = "COLUMN")]
    pub id_column: Option<String>,
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
    /// Also remove the catalog's products that the source no longer lists (discontinued, and
    /// any added through the API), once the import completes: the catalog then mirrors the
    /// source. Refused, changing nothing, when the source lists no product, when styles.csv
    /// has rows whose id cannot be read, or when it would remove more than half the catalog.
    #[arg(long, conflicts_with = "limit")]
    pub remove_unlisted: bool,
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
    // Products the source lists but gives nothing to import (a row whose photo is missing):
    // `--remove-unlisted` keeps them.
    let mut listed_without_photo = Vec::new();
    let mut id_column = None;
    let items = if let Some(dir) = &args.kaggle {
        let column = id_column_for(&args.db.db, args.id_column.as_deref())?;
        let (items, report) = import::read_kaggle(dir, &column)?;
        id_column = Some(column);
        for id in &report.missing_images {
            tracing::warn!("product {id}: image file missing, skipped");
        }
        for (line, why) in &report.malformed {
            tracing::warn!("styles.csv line {line}: {why}, skipped");
        }
        if args.remove_unlisted && !report.unidentified.is_empty() {
            bail!(
                "styles.csv has {} row(s) whose product id cannot be read (line {}): --remove-unlisted would remove the products they list; fix them first (nothing was changed)",
                report.unidentified.len(),
                first_few(&report.unidentified.iter().map(u64::to_string).collect::<Vec<_>>(), 10)
            );
        }
        listed_without_photo = report.missing_images;
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

    let unlisted = match args.remove_unlisted {
        true => unlisted_products(&args.db.db, &items, &listed_without_photo)?,
        false => Vec::new(),
    };

    // A run that fails before adding anything (a bad --model, say) leaves no empty catalog
    // behind for the next command to trip over.
    let created = !args.db.db.exists();
    let result = index_into(&args, &assets, items, &unlisted, id_column.as_deref());
    if result.is_err() && created {
        remove_if_empty(&args.db.db);
    }
    result
}

/// The ids of the catalog's products that the source lists neither among `items` nor in
/// `listed_without_photo`, for `--remove-unlisted`. Refused when the source lists nothing, or
/// when they are more than half the catalog: most likely the wrong folder, not a season's
/// discontinued products.
fn unlisted_products(db: &std::path::Path, items: &[import::CatalogItem], listed_without_photo: &[String]) -> Result<Vec<String>> {
    if items.is_empty() && listed_without_photo.is_empty() {
        bail!("the source lists no products: --remove-unlisted would empty the catalog (nothing was changed)");
    }
    if !db.exists() {
        return Ok(Vec::new());
    }
    let listed: std::collections::HashSet<&str> = items.iter().map(|item| item.id.as_str()).chain(listed_without_photo.iter().map(String::as_str)).collect();
    let ids = SqliteCatalog::open_existing(db)?.ids()?;
    let unlisted: Vec<String> = ids.iter().filter(|id| !listed.contains(id.as_str())).cloned().collect();
    if unlisted.len() * 2 > ids.len() {
        bail!(
            "--remove-unlisted would remove {} of the catalog's {} products, more than half: is this the catalog's source? Nothing was changed (to start afresh, index into a new catalog file; to remove them all the same, `lookalike remove` them)",
            unlisted.len(),
            ids.len()
        );
    }
    Ok(unlisted)
}

/// The catalog setting that keeps the styles.csv column its products' ids come from.
pub const ID_COLUMN_SETTING: &str = "import_id_column";

/// The styles.csv column of product ids for an import into `db`: the one given, else the one
/// the catalog's earlier imports used, else `id`. One given that differs from the catalog's is
/// refused: every product would be imported again under another id (a nightly import that
/// forgot `--id-column` would have doubled a catalog whose export has both columns).
fn id_column_for(db: &std::path::Path, given: Option<&str>) -> Result<String> {
    let kept = match db.exists() {
        true => SqliteCatalog::open_existing(db)?.setting(ID_COLUMN_SETTING)?,
        false => None,
    };
    match (given, kept) {
        (Some(given), Some(kept)) if !given.eq_ignore_ascii_case(&kept) => bail!(
            "{} names its products by the styles.csv column {kept:?} (kept from its first import): --id-column {given} would import every product again under another id; leave --id-column out, or import into a new catalog file",
            db.display()
        ),
        (Some(given), _) => Ok(given.to_string()),
        (None, Some(kept)) => Ok(kept),
        (None, None) => Ok(import::kaggle::ID_COLUMN.to_string()),
    }
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

fn index_into(args: &IndexArgs, assets: &Assets, items: Vec<import::CatalogItem>, unlisted: &[String], id_column: Option<&str>) -> Result<()> {
    let mut catalog = SqliteCatalog::open(&args.db.db)?;
    if let Some(column) = id_column {
        if catalog.setting(ID_COLUMN_SETTING)?.is_none() {
            catalog.set_setting(ID_COLUMN_SETTING, column)?;
        }
    }
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
    // Photos encoded per second: none encoded, no rate.
    let rate = match report.embedded {
        0 => String::new(),
        _ => format!(" ({:.1} images/s)", report.rate()),
    };
    let copied = match report.copied {
        0 => String::new(),
        n => format!(" ({n} of them with another product's photo, whose vectors they took: not encoded again)"),
    };
    eprintln!(
        "indexed {} new or changed{copied}, {} unchanged{recoloured}, {} skipped, of {} in {:.1}s{rate}; catalog now holds {} products",
        report.indexed(),
        report.unchanged,
        report.failed.len(),
        report.seen,
        report.elapsed.as_secs_f64(),
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
    // Only once the import is complete: an interrupted one removes nothing.
    if !unlisted.is_empty() {
        let gone_already = super::remove::remove_products(&mut catalog, &args.store, &args.db.db, unlisted, false)?;
        let removed: Vec<&str> = unlisted.iter().map(String::as_str).filter(|id| !gone_already.contains(id)).collect();
        let products = if removed.len() == 1 { "product" } else { "products" };
        eprintln!("removed {} {products} the source no longer lists: {}; catalog now holds {} products", removed.len(), first_few(&removed, 10), catalog.len()?);
    }
    args.store.sync_after_change(&mut catalog)?;
    if let (true, Some(projection)) = (report.indexed() > 0 || report.redescribed > 0, catalog.projection()?) {
        let unlearned = lookalike::tune::values_not_learned(&catalog)?;
        if let Some(note) = super::tune::unlearned_values_note(&catalog, &projection.label, &unlearned) {
            eprintln!("note: {note}");
        }
    }
    // Results say how alike they are in words, by bands measured on the catalog's own products:
    // measured here, once, rather than by the first search of every process.
    SearchSpace::for_catalog(&catalog)?.record_likeness_bands(&catalog, report.indexed() > 0 || !unlisted.is_empty())?;
    Ok(())
}
