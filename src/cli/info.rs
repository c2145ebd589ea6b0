//! `lookalike info`: what a catalog holds.

use anyhow::Result;
use clap::Args;

use super::args::*;
use lookalike::catalog::SqliteCatalog;
use lookalike::index::qdrant::QdrantConfig;
use lookalike::index::IndexConfig;
use lookalike::likeness::{RecordedBands, SETTING};
use lookalike::store::CollectionStatus;

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// With `--store qdrant://...`: also where the catalog's collection stands.
    #[command(flatten)]
    pub store: StoreConnectionArgs,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let catalog = SqliteCatalog::open_existing(&args.db.db)?;
    println!("catalog: {}", catalog.path().display());
    println!("products: {}", catalog.len()?);
    if let Some(column) = catalog.setting(super::index::ID_COLUMN_SETTING)? {
        println!("product ids: the styles.csv column {column:?} (index --kaggle reads them from it)");
    }
    match catalog.vector_space()? {
        Some(space) => println!("model: {} ({}-d vectors)", space.model, space.dim),
        None => println!("model: none yet"),
    }
    match catalog.projection()? {
        Some(p) => {
            println!("tuned on: {} ({} -> {} dims)", p.label, p.input_dim, p.output_dim);
            let record: serde_json::Value = catalog.projection_report()?.and_then(|r| serde_json::from_str(&r).ok()).unwrap_or_default();
            if let Ok(held_out) = serde_json::from_value::<lookalike::tune::HeldOutReport>(record["held_out"].clone()) {
                println!("tuning measured {}", held_out.summary(&p.label));
            }
            if let Some(note) = super::tune::unlearned_values_note(&catalog)? {
                println!("tuning: {note}");
            }
        }
        None => println!("tuned on: - (run `lookalike tune` to tune on a label column)"),
    }
    let tuned = catalog.projection()?.is_some();
    match (catalog.photo_adapter(), catalog.photo_adapter_report()?) {
        (Ok(Some(_)), Some(report)) => {
            let learned: serde_json::Value = serde_json::from_str(&report).unwrap_or_default();
            let photos = learned["photos"].as_u64().unwrap_or(0);
            let unused = if tuned { "; not used while the catalog is tuned" } else { "" };
            println!("photo adapter: learned from {photos} shopper-like photos{unused} (drop: lookalike tune --adapt --off)");
        }
        (Ok(_), Some(_)) => println!("photo adapter: learned for another model, not used (run `lookalike tune --adapt` again)"),
        (Ok(_), None) => println!("photo adapter: - (run `lookalike tune --adapt` to learn how shoppers' photos differ from catalog shots)"),
        (Err(e), _) => println!("photo adapter: not used: {e:#}"),
    }
    // Where search looks for the products in a photo (and reads its colour from).
    match (catalog.foreground_head(), catalog.foreground_head_report()?) {
        (Ok(Some(_)), Some(report)) => {
            let learned: serde_json::Value = serde_json::from_str(&report).unwrap_or_default();
            let scenes = learned["scenes"].as_u64().unwrap_or(0);
            let accuracy = learned["balanced_accuracy"].as_f64().unwrap_or(f64::NAN);
            println!("foreground head: learned from {scenes} composed photos, balanced accuracy {accuracy:.3} (drop: lookalike tune --localise --off)");
        }
        (Ok(_), Some(_)) => println!("foreground head: learned for another model, not used (run `lookalike tune --localise` again)"),
        (Ok(_), None) => println!("foreground head: - (products in photos are found training-free; run `lookalike tune --localise` to learn where they are)"),
        (Err(e), _) => println!("foreground head: not used: {e:#}"),
    }
    // With the default index options, as `search` and `serve` use them.
    println!("search index: {}", lookalike::store::describe_index(&catalog, &IndexConfig::default())?);
    if let Some(recorded) = catalog.setting(SETTING)?.as_deref().and_then(RecordedBands::from_setting) {
        println!("likeness: very similar from score {:.3}, similar from {:.3} (measured on {} products)", recorded.bands.very_similar, recorded.bands.similar, recorded.products);
    }
    if let Some(config) = args.store.qdrant(&args.db.db)? {
        // What the catalog holds is said above whether or not the cluster answers.
        match lookalike::store::collection_status(&catalog, &config) {
            Ok(status) => print_collection(&catalog, &config, &status)?,
            Err(e) => println!("qdrant collection {:?}: not reachable: {e:#}", config.collection),
        }
    }
    Ok(())
}

/// The collection's lines: where its points are, how many, how it is made, and whether it is
/// in step with the catalog (with the command that puts it in step when not).
fn print_collection(catalog: &SqliteCatalog, config: &QdrantConfig, status: &CollectionStatus) -> Result<()> {
    let sync = format!("lookalike sync --db {} --store {} --collection {}", catalog.path().display(), config.url, config.collection);
    let held_in = match status.points == config.collection {
        true => String::new(),
        false => format!(", its points in {:?} (filled by `sync --swap`)", status.points),
    };
    println!("qdrant collection: {:?} at {}{held_in}", config.collection, config.url);
    let Some((count, layout)) = &status.held else {
        println!("qdrant points: none yet (run `{sync}`)");
        return Ok(());
    };
    let in_catalog = catalog.vector_count()?;
    let count_note = if *count == in_catalog { String::new() } else { format!(" (run `{sync}`; products added through servers without the catalog count too)") };
    println!("qdrant points: {count}, catalog {in_catalog}{count_note}");
    let copies = match layout.replicas.unwrap_or(1) {
        1 => "1 copy".to_string(),
        n => format!("{n} copies"),
    };
    let quantised = if layout.quantized { ", int8 copies of the vectors in RAM" } else { "" };
    println!("qdrant layout: {} shards x {copies}{quantised}; keyword indexes (facets): {}", layout.shards, layout.keyword_columns.join(", "));
    match status.in_catalog_space {
        Some(true) => println!("qdrant search space: the catalog's"),
        Some(false) => println!("qdrant search space: from before the catalog's last `tune`: run `{sync} --swap` to send the new one"),
        None => println!("qdrant search space: never synced from this catalog (run `{sync}`)"),
    }
    if !status.described {
        println!("qdrant description: none (servers without the catalog need it: run `{sync}`)");
    }
    if status.removals_to_apply > 0 {
        println!(
            "qdrant removals: {} catalog products were removed through servers without the catalog; the next `{sync}` removes them from the catalog too",
            status.removals_to_apply
        );
    }
    let now = std::time::SystemTime::now();
    for replaced in &status.replaced {
        let when = match (replaced.at, replaced.age_secs(now)) {
            (None, _) => "by an older lookalike".to_string(),
            (Some(_), age) => format!("{} s ago", age.unwrap_or(0)),
        };
        println!("qdrant kept after a swap: {:?}, replaced {when} (the first sync once it has been kept --keep-replaced seconds deletes it)", replaced.collection);
    }
    Ok(())
}
