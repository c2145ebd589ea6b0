//! `lookalike info`: what a catalog holds.

use anyhow::Result;

use super::args::*;
use lookalike::catalog::SqliteCatalog;

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
    Ok(())
}
