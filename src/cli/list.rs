//! `lookalike list`: the products a catalog holds (or its Qdrant collection), a page at a time,
//! as a table or JSON: what `GET /api/products` answers, without starting a server.

use anyhow::Result;
use clap::Args;

use super::args::*;
use super::search::{colour_cell, colour_width, image_label, truncate};
use lookalike::catalog::SqliteCatalog;
use lookalike::search::{catalog_page, collection_page, ProductPage};
use lookalike::types::Filter;

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// With `--store qdrant://...`: the collection's products instead, those added through any
    /// server included, filtered in Qdrant.
    #[command(flatten)]
    pub store: StoreConnectionArgs,
    /// Only products whose metadata column equals the value: column=value. Repeat to combine
    /// (different columns must all match; values of the same column are alternatives).
    #[arg(long = "filter", value_name = "COLUMN=VALUE")]
    pub filters: Vec<String>,
    /// Products on the page.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Where the page starts: the token the page before ended with (none: the first page).
    #[arg(long, value_name = "TOKEN")]
    pub page: Option<String>,
    /// Print JSON (the body of `GET /api/products`) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ListArgs) -> Result<()> {
    let filter = Filter::parse(&args.filters)?;
    let (from, limit) = (args.page.as_deref(), args.limit as usize);
    let page = match args.store.qdrant(&args.db.db)? {
        Some(config) => collection_page(&lookalike::store::open_collection(&config)?.0, &filter, from, limit)?,
        None => catalog_page(&SqliteCatalog::open_existing(&args.db.db)?, &filter, from, limit)?,
    };
    if args.json {
        let body = lookalike::server::types::ProductListBody::from(&page);
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        print_page(&page);
    }
    Ok(())
}

fn print_page(page: &ProductPage) {
    let colours: Vec<String> = page.products.iter().map(|listed| colour_cell(&listed.product, &listed.colour_mix)).collect();
    let width = colour_width(&colours);
    println!("{:<24}  {:<36}  {:<16}  {:<width$}  {:>9}  image", "id", "name", "category", "colour", "price");
    for (listed, colour) in page.products.iter().zip(&colours) {
        let p = &listed.product;
        println!(
            "{:<24}  {:<36}  {:<16}  {:<width$}  {:>9}  {}",
            truncate(&p.id, 24),
            truncate(p.name(), 36),
            truncate(p.category().unwrap_or("-"), 16),
            truncate(colour, width),
            truncate(p.price().unwrap_or("-"), 9),
            image_label(&p.image)
        );
    }
    let total = match page.total {
        1 => "1 product".to_string(),
        n => format!("{n} products"),
    };
    match (&page.next, page.products.is_empty()) {
        (Some(token), _) => println!("({total} in all; the next page with --page {token})"),
        (None, true) => println!("(no products match{})", page.why_nothing_matches.as_deref().map(|why| format!(": {why}")).unwrap_or_default()),
        (None, false) => println!("({total} in all)"),
    }
}
