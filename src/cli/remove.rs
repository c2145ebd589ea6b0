//! `lookalike remove`: delete products by id.

use anyhow::{bail, Result};
use clap::Args;

use super::args::*;
use lookalike::catalog::SqliteCatalog;

#[derive(Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Product ids to remove.
    #[arg(required = true)]
    pub ids: Vec<String>,
}

pub fn run(args: RemoveArgs) -> Result<()> {
    let mut catalog = SqliteCatalog::open_existing(&args.db.db)?;
    // From the collection first, by id: a product added or replaced there through a server
    // without the catalog has a point the sync below would keep (or take into the catalog).
    let in_collection = match args.store.qdrant(&args.db.db)? {
        Some(config) => lookalike::store::remove_from_collection(&config, &args.ids)?,
        None => vec![false; args.ids.len()],
    };
    let mut missing = Vec::new();
    for (id, in_collection) in args.ids.iter().zip(in_collection) {
        match (catalog.remove(id)?, in_collection) {
            (Some(_), _) => eprintln!("removed {id}"),
            (None, true) => eprintln!("removed {id} from the collection (added through a server without the catalog)"),
            (None, false) => missing.push(id.as_str()),
        }
    }
    args.store.sync_after_change(&mut catalog)?;
    if !missing.is_empty() {
        bail!("no product with id {}", missing.join(", "));
    }
    Ok(())
}
