//! `lookalike sync`: make a Qdrant collection agree with the catalog.

use anyhow::{bail, Result};
use clap::Args;

use super::args::*;
use lookalike::catalog::SqliteCatalog;
use lookalike::store::Misfit;

#[derive(Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Delete the collection first if its vectors no longer fit the catalog's search space
    /// (`lookalike tune` changed their dimension), and fill it afresh. Servers searching it
    /// answer errors until it is filled; a collection that fits is synced as usual.
    #[arg(long)]
    pub recreate: bool,
}

pub fn run(args: SyncArgs) -> Result<()> {
    let catalog = SqliteCatalog::open_existing(&args.db.db)?;
    let Some(config) = args.store.qdrant(&args.db.db)? else {
        bail!("sync needs --store qdrant://HOST:PORT (or LOOKALIKE_STORE)");
    };
    let misfit = if args.recreate { Misfit::Recreate } else { Misfit::Refuse };
    let report = lookalike::store::sync_qdrant(&catalog, &config, misfit)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if report.recreated {
        eprintln!("Qdrant collection {:?} held vectors of another search space: deleted and filled afresh", config.collection);
    }
    eprintln!(
        "Qdrant collection {:?}: {} products in the catalog, {} points before; {} added, {} sent again (they were in another search space), {} deleted in {:.1}s",
        config.collection, report.in_catalog, report.in_collection_before, report.added, report.resent, report.deleted, report.seconds
    );
    Ok(())
}
