//! `lookalike info`: what a catalog holds.

use anyhow::Result;

use super::args::*;
use lookalike::catalog::SqliteCatalog;
use lookalike::index::IndexConfig;
use lookalike::likeness::{RecordedBands, SETTING};

pub fn run(args: DbArgs) -> Result<()> {
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
    Ok(())
}
