//! `lookalike search`: the products most like a photo (or a product), as a table or JSON.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::args::*;
use lookalike::assets::Assets;
use lookalike::catalog::SqliteCatalog;
use lookalike::colour::{ColourEstimate, ColourMode};
use lookalike::kind::KindMode;
use lookalike::preprocess::Crop;
use lookalike::search::{Items, RankedProduct, SearchEngine, SearchRequest, SearchResults};
use lookalike::types::{first_few, Filter, Product};

#[derive(Args)]
pub struct SearchArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The photo to search with.
    #[arg(required_unless_present = "like")]
    pub image: Option<PathBuf>,
    /// Search with a catalog product's stored vector instead of a photo ("more like this").
    #[arg(long, value_name = "PRODUCT_ID", conflicts_with = "image")]
    pub like: Option<String>,
    /// Number of results (at least 1).
    #[arg(short, default_value_t = 10, value_parser = at_least_one)]
    pub k: usize,
    /// Skip this many results (paging).
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Only products whose metadata column equals the value: column=value. Repeat to combine
    /// (different columns must all match; values of the same column are alternatives).
    #[arg(long = "filter", value_name = "COLUMN=VALUE")]
    pub filters: Vec<String>,
    /// Search with part of the photo only: x,y,w,h as fractions (0..1) of its width and height.
    #[arg(long, value_name = "X,Y,W,H", conflicts_with = "like")]
    pub crop: Option<String>,
    /// `main`: the photo's results, and where the products in it are. `all`: also one table per
    /// product found, each searched on its own.
    #[arg(long, value_name = "main|all", default_value = "main", conflicts_with = "like")]
    pub items: Items,
    /// `match`: rank by shape and colour ("this style in this colour"); `any`: shape only; a
    /// colour name (Red, Navy Blue, ...): only products of that colour. A grey catalog ranks
    /// by shape under every choice.
    #[arg(long, value_name = "match|any|NAME", default_value = "match")]
    pub colour: ColourMode,
    /// `match`: the kind most of the best matches share (their category) comes first, so a
    /// dress's photo brings back dresses before a look-alike coat; `any`: likeness alone.
    #[arg(long, value_name = "match|any", default_value = "match")]
    pub kind: KindMode,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub index: SearchIndexArgs,
}

pub fn run(args: SearchArgs) -> Result<()> {
    let assets = Assets::from_env();
    let catalog = SqliteCatalog::open_existing(&args.db.db)?;
    let encoder = load_encoder(&assets, &catalog, &args.model)?;
    let engine = SearchEngine::open_with(catalog, Box::new(encoder), &args.index.config(&args.db.db)?)?;
    let request = SearchRequest { k: args.k, offset: args.offset, filter: Filter::parse(&args.filters)?, colour: args.colour.clone(), kind: args.kind };
    let crop = args.crop.as_deref().map(Crop::parse).transpose().map_err(anyhow::Error::msg)?;
    let (results, by_photo) = match (&args.image, &args.like) {
        (Some(path), _) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            (engine.search_image(&bytes, crop, &request, args.items).with_context(|| format!("searching with {}", path.display()))?, true)
        }
        (None, Some(id)) => (engine.search_like(id, &request)?, false),
        (None, None) => bail!("give a photo or --like PRODUCT_ID"),
    };
    if args.json {
        // The same body as the API's answer (`POST /api/search`).
        use lookalike::server::types::SearchResponse;
        let body = if by_photo { SearchResponse::for_photo(&results, args.items, None) } else { SearchResponse::new(&results, None) };
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        print_results(&results, by_photo, args.items);
    }
    Ok(())
}

pub(super) fn image_label(image: &lookalike::types::ImageRef) -> String {
    match image {
        lookalike::types::ImageRef::File(p) => p.display().to_string(),
        lookalike::types::ImageRef::Stored { mime } => format!("(stored in catalog, {mime})"),
        lookalike::types::ImageRef::Collection => "(in the Qdrant collection)".to_string(),
    }
}

fn print_results(results: &SearchResults, by_photo: bool, items: Items) {
    let why_none = results.why_nothing_matches.as_deref();
    if by_photo {
        let boxes: Vec<String> = results.detections.iter().map(|d| box_label(d.bounds)).collect();
        match boxes.len() {
            0 => println!("no single product stands out in the photo"),
            n => println!("{n} product(s) found in the photo, main first, at {} (search one alone with --crop X,Y,W,H, or all with --items all)", boxes.join("  ")),
        }
    }
    if let Some(c) = &results.query_colour {
        let [r, g, b] = c.rgb;
        println!("colour of the photo: {} (#{r:02x}{g:02x}{b:02x}); ranked with colour={}", photo_colour_label(c, "%"), results.colour_mode);
    }
    print_table(&results.hits, why_none);
    if items == Items::All {
        for (n, item) in results.items.iter().enumerate() {
            let colour = item.query_colour.as_ref().map_or(String::new(), |c| format!(", {}", photo_colour_label(c, "")));
            println!("\nproduct {} of {} at {} (score {:.2}{colour}):", n + 1, results.items.len(), box_label(item.detection.bounds), item.detection.score);
            print_table(&item.hits, why_none);
        }
    }
    let t = &results.timings;
    eprintln!(
        "{:.1} ms (decode {:.1}, preprocess {:.1}, encode {:.1}, search {:.1}, metadata {:.1})",
        t.total_ms, t.decode_ms, t.preprocess_ms, t.encode_ms, t.search_ms, t.metadata_ms
    );
}

/// A box as `--crop` takes it, so a shopper can search that part again.
fn box_label([x, y, w, h]: [f32; 4]) -> String {
    format!("{x:.2},{y:.2},{w:.2},{h:.2}")
}

/// A photo's colour name, with its main colours when it is patterned.
fn photo_colour_label(colour: &ColourEstimate, unit: &str) -> String {
    match colour.name == lookalike::colour::MULTI {
        true => format!("{}{}", colour.name, mix_label(&colour.descriptor.main_colours(), unit)),
        false => colour.name.to_string(),
    }
}

/// A patterned colour's main colours after its name, ` (Red 55 %, Blue 40 %)`; with no
/// `unit`, names only, ` (Red, Blue)`, to fit a table column.
fn mix_label(mix: &[(&str, f32)], unit: &str) -> String {
    if mix.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = match unit.is_empty() {
        true => mix.iter().map(|(name, _)| name.to_string()).collect(),
        false => mix.iter().map(|(name, share)| format!("{name} {:.0} {unit}", share * 100.0)).collect(),
    };
    format!(" ({})", parts.join(", "))
}

/// A product's colour as a table shows it: its name, and a patterned product's main colours.
pub(super) fn colour_cell(product: &Product, mix: &[(&str, f32)]) -> String {
    format!("{}{}", product.colour().unwrap_or("-"), mix_label(mix, ""))
}

/// The colour column's width: as wide as its widest cell, between 10 and 32 characters.
pub(super) fn colour_width(cells: &[String]) -> usize {
    cells.iter().map(|c| c.chars().count()).max().unwrap_or(0).clamp(10, 32)
}

fn print_table(hits: &[RankedProduct], why_none: Option<&str>) {
    // A patterned product's colours are what tells two "Multi" hits apart, so the column
    // widens to hold them (up to a limit) rather than cutting them off.
    let colours: Vec<String> = hits.iter().map(|h| colour_cell(&h.product, &h.colour_mix)).collect();
    let width = colour_width(&colours);
    println!("{:>4}  {:<24}  {:>6}  {:<36}  {:<16}  {:<width$}  image", "rank", "id", "score", "name", "category", "colour");
    for (h, colour) in hits.iter().zip(&colours) {
        let p = &h.product;
        println!(
            "{:>4}  {:<24}  {:>6.3}  {:<36}  {:<16}  {:<width$}  {}",
            h.rank,
            truncate(&p.id, 24),
            h.score,
            truncate(p.name(), 36),
            truncate(p.category().unwrap_or("-"), 16),
            truncate(colour, width),
            image_label(&p.image)
        );
        // Products listed with the very same photo are one result: named under it.
        if !h.variants.is_empty() {
            let ids: Vec<&str> = h.variants.iter().map(|v| v.id.as_str()).collect();
            println!("{:>4}  also listed with this photo: {}", "", first_few(&ids, 8));
        }
    }
    match (hits.is_empty(), why_none) {
        (true, Some(why)) => println!("(no products match: {why})"),
        (true, None) => println!("(no products match)"),
        (false, _) => {}
    }
}

pub(super) fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let cut: String = s.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}
