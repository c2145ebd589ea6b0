//! `lookalike sync`: make a Qdrant collection agree with the catalog.

use anyhow::{bail, Result};
use clap::Args;

use super::args::*;
use lookalike::catalog::SqliteCatalog;
use lookalike::store::{KeepReplaced, SyncMode};

#[derive(Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Fill a new collection (NAME_v2, NAME_v3, ...) beside the one that holds the points, then
    /// move every server to it at once (the collection's description names it; servers read it
    /// within 5 s). Servers answer from the old collection, in its own search space, until
    /// then: the way to send a `tune` to a collection that is being searched. The collection
    /// replaced is kept (see --keep-replaced).
    #[arg(long, conflicts_with = "recreate")]
    pub swap: bool,
    /// Seconds a collection a swap replaced is kept for servers that have not moved off it
    /// yet; any later sync (or `index --store`) deletes it after that.
    #[arg(long, value_name = "SECONDS", default_value_t = KeepReplaced::DEFAULT.as_secs())]
    pub keep_replaced: u64,
    /// Delete the collection first if its vectors no longer fit the catalog's search space
    /// (`lookalike tune` changed their dimension), and fill it afresh. Servers searching it
    /// answer errors until it is filled (`--swap` has no such window, for twice the disk
    /// while it runs); a collection that fits is synced as usual.
    #[arg(long)]
    pub recreate: bool,
}

pub fn run(args: SyncArgs) -> Result<()> {
    let mut catalog = SqliteCatalog::open_existing(&args.db.db)?;
    let Some(config) = args.store.qdrant(&args.db.db)? else {
        bail!("sync needs --store qdrant://HOST:PORT (or LOOKALIKE_STORE)");
    };
    let mode = match (args.swap, args.recreate) {
        (true, _) => SyncMode::Swap,
        (_, true) => SyncMode::Recreate,
        _ => SyncMode::InPlace,
    };
    let keep = KeepReplaced::from_now(std::time::Duration::from_secs(args.keep_replaced));
    let taken_in = take_in_replacements(&catalog, &config)?;
    let mut report = lookalike::store::sync_qdrant(&mut catalog, &config, mode, keep)?;
    let to_encode = std::mem::take(&mut report.to_encode);
    let encoded_again = encode_again(&catalog, &config, &to_encode)?;
    let mut json = serde_json::to_value(&report)?;
    json["encoded_again"] = encoded_again.into();
    json["replaced_without_catalog"] = taken_in.into();
    println!("{}", serde_json::to_string_pretty(&json)?);
    if report.recreated {
        eprintln!("Qdrant collection {:?} held vectors of another search space: deleted and filled afresh", report.collection);
    }
    if let Some(replaced) = &report.replaced {
        eprintln!(
            "filled collection {:?} in place of {replaced:?} and named it in {:?}'s description: servers move to it within seconds; {replaced:?} is kept for {} s, then a later sync deletes it",
            report.collection, config.collection, args.keep_replaced
        );
    }
    report_replaced_collections(&report);
    if report.removed_without_catalog > 0 {
        eprintln!("{} products removed through servers without the catalog were removed from the catalog too", report.removed_without_catalog);
    }
    if report.patched_without_catalog > 0 {
        eprintln!("{} catalog products whose details were changed through servers without the catalog took those details into the catalog", report.patched_without_catalog);
    }
    if report.carried_without_catalog > 0 {
        eprintln!("{} products added through servers without the catalog were copied to {:?}", report.carried_without_catalog, report.collection);
    }
    if !to_encode.is_empty() {
        eprintln!(
            "{} products added through servers without the catalog held vectors of the search space before `tune`: {encoded_again} encoded again from their photos",
            to_encode.len()
        );
        let missing: Vec<&str> = to_encode.iter().filter(|p| p.image.is_none()).map(|p| p.product.id.as_str()).collect();
        if !missing.is_empty() {
            eprintln!(
                "warning: {} of them have no photo in the collection (written before points carried copies of photos over 64 KiB) and cannot be encoded again: add them again (POST /api/products): {}",
                missing.len(),
                missing.join(", ")
            );
        }
    }
    if report.photos_added > 0 {
        eprintln!("{} points written without their photo (over 64 KiB, by an earlier lookalike) were sent again with a reduced copy of it", report.photos_added);
    }
    if report.photos_unreadable > 0 {
        eprintln!(
            "warning: {} points stay without their photo: the catalog cannot read it (`lookalike check --db {}` lists the files)",
            report.photos_unreadable,
            args.db.db.display()
        );
    }
    eprintln!(
        "Qdrant collection {:?}: {} products in the catalog, {} points before; {} added, {} sent again (they were in another search space), {} deleted in {:.1}s",
        report.collection, report.in_catalog, report.in_collection_before, report.added, report.resent, report.deleted, report.seconds
    );
    Ok(())
}
