//! `lookalike check`: verify a catalog.

use anyhow::{bail, Context, Result};
use clap::Args;

use super::args::*;
use lookalike::catalog::SqliteCatalog;

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[arg(long)]
    pub json: bool,
}

pub fn print_check(report: &lookalike::catalog::CheckReport) {
    eprintln!("products: {}, vectors: {}", report.products, report.vectors);
    for problem in &report.structure {
        eprintln!("  file structure: {problem}");
    }
    for (id, why) in report.damaged_vectors.iter().take(20) {
        eprintln!("  product {id}: vector {why}");
    }
    if report.damaged_vectors.len() > 20 {
        eprintln!("  ... and {} more damaged vectors", report.damaged_vectors.len() - 20);
    }
    if !report.orphan_vectors.is_empty() {
        eprintln!("  {} vectors belong to no product", report.orphan_vectors.len());
    }
    if report.products_without_vector > 0 {
        eprintln!("  {} products have no vector yet: run `lookalike index` with the same source to embed them", report.products_without_vector);
    }
    if !report.unreadable_photos.is_empty() {
        let n = report.unreadable_photos.len();
        let page = match report.unreadable_photos_linked {
            0 => "the page shows them without a photo".to_string(),
            linked if linked == n => "the page shows the shop's copies their image_url links".to_string(),
            linked => format!("the page shows them without a photo ({linked} of them: the shop's copy their image_url links)"),
        };
        eprintln!("  {n} products' photo files cannot be read: {page}, and `tune` and `sync` leave their photos out");
        for (id, why) in report.unreadable_photos.iter().take(5) {
            eprintln!("    product {id}: {why}");
        }
        if n > 5 {
            eprintln!("    ... and {} more", n - 5);
        }
        eprintln!("  put the files back where they were imported from, or run `lookalike index` again from where they are now");
    }
}

pub fn run(args: CheckArgs) -> Result<()> {
    let catalog = SqliteCatalog::open_existing(&args.db.db)?;
    let report = catalog.check().with_context(|| format!("checking {} (run `lookalike repair --db {}`)", args.db.db.display(), args.db.db.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    print_check(&report);
    if !report.is_sound() {
        bail!("{} is damaged: run `lookalike repair --db {}`", args.db.db.display(), args.db.db.display());
    }
    match report.unreadable_photos.len() {
        0 => eprintln!("{} is sound", args.db.db.display()),
        n => eprintln!("{} is sound, but {n} photo files are missing (above)", args.db.db.display()),
    }
    Ok(())
}
