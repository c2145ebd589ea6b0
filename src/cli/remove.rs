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
    let mut missing = Vec::new();
    for id in &args.ids {
        match catalog.remove(id)? {
            Some(_) => eprintln!("removed {id}"),
            None => missing.push(id.as_str()),
        }
    }
    args.store.sync_after_change(&mut catalog)?;
    if !missing.is_empty() {
        bail!("no product with id {}", missing.join(", "));
    }
    Ok(())
}
