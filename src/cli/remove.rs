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
    let missing = remove_products(&mut catalog, &args.store, &args.db.db, &args.ids, true)?;
    args.store.sync_after_change(&mut catalog)?;
    if !missing.is_empty() {
        bail!("no product with id {}", missing.join(", "));
    }
    Ok(())
}

/// Removes the products `ids` from the catalog (and from the Qdrant collection `store` names,
/// if any), saying each one removed when `each` is set; the ids no product has are returned.
/// The caller syncs the collection afterwards.
pub(super) fn remove_products<'a>(catalog: &mut SqliteCatalog, store: &StoreArgs, db: &std::path::Path, ids: &'a [String], each: bool) -> Result<Vec<&'a str>> {
    // From the collection first, by id: a product added or replaced there through a server
    // without the catalog has a point the sync afterwards would keep (or take into the catalog).
    let in_collection = match store.qdrant(db)? {
        Some(config) => lookalike::store::remove_from_collection(&config, ids)?,
        None => vec![false; ids.len()],
    };
    let mut missing = Vec::new();
    for (id, in_collection) in ids.iter().zip(in_collection) {
        match (catalog.remove(id)?, in_collection) {
            (Some(_), _) if each => eprintln!("removed {id}"),
            (None, true) if each => eprintln!("removed {id} from the collection (added through a server without the catalog)"),
            (None, false) => missing.push(id.as_str()),
            _ => {}
        }
    }
    Ok(missing)
}
