//! `lookalike info`: what a catalog holds.

use anyhow::Result;
use clap::Args;
use serde_json::{json, Value};

use super::args::*;
use lookalike::catalog::SqliteCatalog;
use lookalike::index::qdrant::QdrantConfig;
use lookalike::index::IndexConfig;
use lookalike::likeness::{RecordedBands, SETTING};
use lookalike::model::ModelSpec;
use lookalike::store::CollectionStatus;

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// With `--store qdrant://...`: also where the catalog's collection stands.
    #[command(flatten)]
    pub store: StoreConnectionArgs,
    /// One JSON object instead of lines: every fact under its own key (for scripts and
    /// monitoring; a missing part is `null`).
    #[arg(long)]
    pub json: bool,
}

/// What `info` says: each line as it prints, and each fact under a key of `--json`'s object.
#[derive(Default)]
struct Said {
    lines: Vec<String>,
    json: serde_json::Map<String, Value>,
}

impl Said {
    fn say(&mut self, key: &str, value: Value, line: String) {
        self.json.insert(key.to_string(), value);
        self.lines.push(line);
    }
}

pub fn run(args: InfoArgs) -> Result<()> {
    let catalog = SqliteCatalog::open_existing(&args.db.db)?;
    let mut said = Said::default();
    said.say("catalog", json!(catalog.path()), format!("catalog: {}", catalog.path().display()));
    let products = catalog.len()?;
    said.say("products", json!(products), format!("products: {products}"));
    if let Some(column) = catalog.setting(super::index::ID_COLUMN_SETTING)? {
        let line = format!("product ids: the styles.csv column {column:?} (index --kaggle reads them from it)");
        said.say("id_column", json!(column), line);
    }
    match catalog.vector_space()? {
        Some(space) => {
            // An int8 catalog's copy: how it was made (its weights' width matters on CPUs
            // without VNNI).
            let int8 = catalog.model_description()?.and_then(|json| serde_json::from_str::<ModelSpec>(&json).ok()).and_then(|spec| spec.int8);
            let made = int8.as_ref().map(|c| format!("; {}", c.summary())).unwrap_or_default();
            let copy = int8.map(|c| json!({"calibration_inputs": c.photos, "weight_bits": c.weight_bits}));
            said.say("model", json!({"name": space.model, "dim": space.dim, "int8": copy}), format!("model: {} ({}-d vectors){made}", space.model, space.dim))
        }
        None => said.say("model", Value::Null, "model: none yet".into()),
    }
    let tuned = catalog.projection()?;
    match &tuned {
        Some(p) => {
            said.lines.push(format!("tuned on: {} ({} -> {} dims)", p.label, p.input_dim, p.output_dim));
            let record: Value = catalog.projection_report()?.and_then(|r| serde_json::from_str(&r).ok()).unwrap_or_default();
            let held_out = serde_json::from_value::<lookalike::tune::HeldOutReport>(record["held_out"].clone()).ok();
            if let Some(held_out) = &held_out {
                said.lines.push(format!("tuning measured {}", held_out.summary(&p.label)));
            }
            let unlearned = lookalike::tune::values_not_learned(&catalog)?;
            if let Some(note) = super::tune::unlearned_values_note(&catalog, &p.label, &unlearned) {
                said.lines.push(format!("tuning: {note}"));
            }
            let unlearned: Vec<Value> = unlearned.into_iter().map(|(value, products)| json!({"value": value, "products": products})).collect();
            let tuning = json!({"label": p.label, "input_dim": p.input_dim, "output_dim": p.output_dim, "held_out": held_out, "values_not_learned": unlearned});
            said.json.insert("tuned".into(), tuning);
        }
        None => said.say("tuned", Value::Null, "tuned on: - (run `lookalike tune` to tune on a label column)".into()),
    }
    let (adapter, line) = match (catalog.photo_adapter(), catalog.photo_adapter_report()?) {
        (Ok(Some(_)), Some(report)) => {
            let learned: Value = serde_json::from_str(&report).unwrap_or_default();
            let photos = learned["photos"].as_u64().unwrap_or(0);
            let unused = if tuned.is_some() { "; not used while the catalog is tuned" } else { "" };
            let held_out = serde_json::from_value::<lookalike::tune::AdapterHeldOut>(learned["held_out"].clone()).ok();
            let measured = held_out.as_ref().map(|h| format!("\nphoto adapter measured {}", h.summary())).unwrap_or_default();
            let line = format!("photo adapter: learned from {photos} shopper-like photos{unused} (drop: lookalike tune --adapt --off){measured}");
            (json!({"state": "learned", "used": tuned.is_none(), "photos": photos, "held_out": held_out}), line)
        }
        (Ok(_), Some(_)) => (json!({"state": "other_model", "used": false}), "photo adapter: learned for another model, not used (run `lookalike tune --adapt` again)".into()),
        (Ok(_), None) => (Value::Null, "photo adapter: - (run `lookalike tune --adapt` to learn how shoppers' photos differ from catalog shots)".into()),
        (Err(e), _) => (json!({"state": "unusable", "used": false, "error": format!("{e:#}")}), format!("photo adapter: not used: {e:#}")),
    };
    said.say("photo_adapter", adapter, line);
    // Where search looks for the products in a photo (and reads its colour from).
    let (head, line) = match (catalog.foreground_head(), catalog.foreground_head_report()?) {
        (Ok(Some(_)), Some(report)) => {
            let learned: Value = serde_json::from_str(&report).unwrap_or_default();
            let scenes = learned["scenes"].as_u64().unwrap_or(0);
            let accuracy = learned["balanced_accuracy"].as_f64().unwrap_or(f64::NAN);
            let line = format!("foreground head: learned from {scenes} composed photos, balanced accuracy {accuracy:.3} (drop: lookalike tune --localise --off)");
            (json!({"state": "learned", "used": true, "scenes": scenes, "balanced_accuracy": learned["balanced_accuracy"]}), line)
        }
        (Ok(_), Some(_)) => (json!({"state": "other_model", "used": false}), "foreground head: learned for another model, not used (run `lookalike tune --localise` again)".into()),
        (Ok(_), None) => (Value::Null, "foreground head: - (products in photos are found training-free; run `lookalike tune --localise` to learn where they are)".into()),
        (Err(e), _) => (json!({"state": "unusable", "used": false, "error": format!("{e:#}")}), format!("foreground head: not used: {e:#}")),
    };
    said.say("foreground_head", head, line);
    // With the default index options, as `search` and `serve` use them.
    let index = lookalike::store::describe_index(&catalog, &IndexConfig::default())?;
    said.say("search_index", json!(index), format!("search index: {index}"));
    if let Some(recorded) = catalog.setting(SETTING)?.as_deref().and_then(RecordedBands::from_setting) {
        let (bands, measured_on) = (recorded.bands, recorded.products);
        let line = format!("likeness: very similar from score {:.3}, similar from {:.3} (measured on {measured_on} products)", bands.very_similar, bands.similar);
        said.say("likeness", json!({"very_similar": bands.very_similar, "similar": bands.similar, "measured_on": measured_on}), line);
    }
    if let Some(config) = args.store.qdrant(&args.db.db)? {
        // What the catalog holds is said above whether or not the cluster answers.
        match lookalike::store::collection_status(&catalog, &config) {
            Ok(status) => say_collection(&mut said, &catalog, &config, &status)?,
            Err(e) => {
                let line = format!("qdrant collection {:?}: not reachable: {e:#}", config.collection);
                said.say("qdrant", json!({"collection": config.collection, "url": config.url, "reachable": false, "error": format!("{e:#}")}), line);
            }
        }
    }
    match args.json {
        true => println!("{}", serde_json::to_string_pretty(&Value::Object(said.json))?),
        false => said.lines.iter().for_each(|line| println!("{line}")),
    }
    Ok(())
}

/// The collection's lines: where its points are, how many, how it is made, and whether it is
/// in step with the catalog (with the command that puts it in step when not).
fn say_collection(said: &mut Said, catalog: &SqliteCatalog, config: &QdrantConfig, status: &CollectionStatus) -> Result<()> {
    let sync = format!("lookalike sync --db {} --store {} --collection {}", catalog.path().display(), config.store_flag(), config.collection);
    let held_in = match status.points == config.collection {
        true => String::new(),
        false => format!(", its points in {:?} (filled by `sync --swap`)", status.points),
    };
    let lines = &mut said.lines;
    lines.push(format!("qdrant collection: {:?} at {}{held_in}", config.collection, config.store_flag()));
    let in_catalog = catalog.vector_count()?;
    let mut collection = json!({
        "collection": config.collection, "url": config.url, "reachable": true, "points_collection": status.points, "catalog_vectors": in_catalog,
        "points": null, "layout": null, "search_space": null, "described": status.described, "removals_to_apply": status.removals_to_apply,
        "replaced": status.replaced.iter().map(|r| json!({"collection": r.collection, "at": r.at})).collect::<Vec<_>>(),
    });
    let Some((count, layout)) = &status.held else {
        lines.push(format!("qdrant points: none yet (run `{sync}`)"));
        said.json.insert("qdrant".into(), collection);
        return Ok(());
    };
    let count_note = if *count == in_catalog { String::new() } else { format!(" (run `{sync}`; products added through servers without the catalog count too)") };
    lines.push(format!("qdrant points: {count}, catalog {in_catalog}{count_note}"));
    let copies = match layout.replicas.unwrap_or(1) {
        1 => "1 copy".to_string(),
        n => format!("{n} copies"),
    };
    let quantised = if layout.quantized { ", int8 copies of the vectors in RAM" } else { "" };
    lines.push(format!("qdrant layout: {} shards x {copies}{quantised}; keyword indexes (facets): {}", layout.shards, layout.keyword_columns.join(", ")));
    let space = match status.in_catalog_space {
        Some(true) => {
            lines.push("qdrant search space: the catalog's".into());
            "catalog"
        }
        Some(false) => {
            lines.push(format!("qdrant search space: from before the catalog's last `tune`: run `{sync} --swap` to send the new one"));
            "before_last_tune"
        }
        None => {
            lines.push(format!("qdrant search space: never synced from this catalog (run `{sync}`)"));
            "never_synced"
        }
    };
    if !status.described {
        lines.push(format!("qdrant description: none (servers without the catalog need it: run `{sync}`)"));
    }
    if status.without_photo_hash > 0 {
        lines.push(format!(
            "qdrant points without their photo's hash: {} (written by an older lookalike: a photo listed in several sizes shows as several results until `{sync}` sends them again)",
            status.without_photo_hash
        ));
    }
    if status.without_photo > 0 {
        lines.push(format!(
            "qdrant points without their photo: {} (written by an older lookalike, which kept no photo over 64 KiB: servers without the catalog show none until `{sync}` sends them again with a reduced copy)",
            status.without_photo
        ));
    }
    if status.photo_files_gone > 0 {
        lines.push(format!(
            "qdrant points without their photo: {} whose photo files are gone from where the catalog recorded them (`lookalike check` names them): servers without the catalog show none",
            status.photo_files_gone
        ));
    }
    if status.removals_to_apply > 0 {
        lines.push(format!(
            "qdrant removals: {} catalog products were removed through servers without the catalog; the next `{sync}` removes them from the catalog too",
            status.removals_to_apply
        ));
    }
    let now = std::time::SystemTime::now();
    for replaced in &status.replaced {
        let when = match (replaced.at, replaced.age_secs(now)) {
            (None, _) => "by an older lookalike".to_string(),
            (Some(_), age) => format!("{} s ago", age.unwrap_or(0)),
        };
        lines.push(format!("qdrant kept after a swap: {:?}, replaced {when} (the first sync once it has been kept --keep-replaced seconds deletes it)", replaced.collection));
    }
    collection["points"] = json!(count);
    collection["layout"] = json!({"shards": layout.shards, "copies": layout.replicas.unwrap_or(1), "quantised": layout.quantized, "keyword_columns": layout.keyword_columns});
    collection["search_space"] = json!(space);
    collection["without_photo_hash"] = json!(status.without_photo_hash);
    collection["without_photo"] = json!(status.without_photo);
    collection["photo_files_gone"] = json!(status.photo_files_gone);
    said.json.insert("qdrant".into(), collection);
    Ok(())
}
