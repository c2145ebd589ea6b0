//! `lookalike eval`: search quality on labelled queries, beside two baselines.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::args::*;
use lookalike::assets::Assets;
use lookalike::catalog::SqliteCatalog;
use lookalike::colour::ColourMode;
use lookalike::encoder::Encoder;
use lookalike::eval::{self, LabelledQuery};
use lookalike::import::fashion_mnist::FashionMnist;
use lookalike::kind::KindMode;
use lookalike::types::first_few;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Fashion-MNIST split to draw labelled queries from (test: held out from a train catalog).
    #[arg(long, value_name = "SPLIT", conflicts_with = "query_photos")]
    pub fashion_mnist: Option<String>,
    #[arg(long, value_name = "DIR")]
    pub fashion_mnist_dir: Option<PathBuf>,
    /// Or draw them from the shop's own labelled photos (shopper photos, or catalog shots held
    /// out of the catalog): a folder in the catalog layout (`styles.csv` + `images/ID.jpg`, as
    /// `index --kaggle` reads), each photo labelled by its row's --label columns, or photos in
    /// sub-folders named after their label (`Tshirts/a.jpg`).
    #[arg(long, value_name = "DIR")]
    pub query_photos: Option<PathBuf>,
    /// The column of --query-photos' styles.csv that holds the photos' ids, as `index
    /// --id-column` reads a catalog's.
    #[arg(long, value_name = "COLUMN", default_value = lookalike::import::kaggle::ID_COLUMN)]
    pub id_column: String,
    /// Number of queries, stratified by label.
    #[arg(long, default_value_t = 2000)]
    pub queries: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Metadata column that decides relevance; several, comma-separated
    /// (`articleType,baseColour`), must all be equal (each is also reported alone).
    #[arg(long, default_value = "articleType")]
    pub label: String,
    /// Paint each query in a named colour with this seed, as `index --colourise` paints the
    /// catalog (the colour benchmark; combinable with --perturb).
    // (`requires` alone is not enough: clap drops a requirement on an argument that conflicts
    // with one given.)
    #[arg(long, value_name = "SEED", requires = "fashion_mnist", conflicts_with = "query_photos")]
    pub colourise: Option<u64>,
    /// How the lookalike rows treat colour, as search's --colour: match, any or a colour
    /// name. With match or a name, `lookalike_any` reports the same search by shape only.
    #[arg(long, value_name = "match|any|NAME", default_value = "match")]
    pub colour: ColourMode,
    /// Weight of colour against shape under --colour match, relative to how much each varies
    /// among the candidates (to choose search's weight).
    #[arg(long, value_name = "W", default_value_t = lookalike::colour::MATCH_WEIGHT)]
    pub colour_weight: f32,
    /// How the lookalike rows treat the kind the best matches share, as search's --kind: with
    /// match, `lookalike_any_kind` reports the same search without it.
    #[arg(long, value_name = "match|any", default_value = "match")]
    pub kind: KindMode,
    /// Weight of the kind consensus under --kind match (to choose search's weight): the score
    /// a candidate gains when every vote is for its kind.
    #[arg(long, value_name = "W", default_value_t = lookalike::kind::WEIGHT)]
    pub kind_weight: f32,
    /// The rows to compute: `all`, or names separated by commas (lookalike, lookalike_any_kind,
    /// lookalike_as_taken, lookalike_unadapted, lookalike_any, lookalike_item,
    /// lookalike_item_crop, lookalike_untuned, original_recipe, raw_pixels). Fewer rows, a
    /// shorter run: `--methods lookalike,lookalike_any` for the colour benchmark.
    #[arg(long, value_name = "all|NAME,...", default_value = "all")]
    pub methods: eval::MethodSet,
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Also write every query's outcome to this file, one JSON object a line: the query's id,
    /// label and the colour read from it, and per row its precision@10 and its first page (id,
    /// label, score), to see which queries fail and what they find instead. Then one a photo
    /// of --product-photos and --exact: the photo, its product, and per row the product's rank
    /// on the first page (null: not on it) and that page.
    #[arg(long, value_name = "FILE")]
    pub per_query: Option<PathBuf>,
    /// Turn each query into a shopper-like photo first (background, crop, rotation, light,
    /// blur, JPEG), seeded by --seed.
    #[arg(long)]
    pub perturb: bool,
    /// Also compose N photos of 2-3 query products on one background and measure how well the
    /// products are found in them and searched by their boxes.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub scenes: usize,
    /// Also re-photograph N catalog products (stratified by --label) as a shopper would and
    /// measure how often each is found itself: at rank 1 and in the top 10. Alone (without
    /// --fashion-mnist or --query-photos) it needs no label at all.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub exact: usize,
    /// Also search photos of catalog products the shop took anew (on a table, worn, hung up)
    /// and measure how often each finds its product: at rank 1 and in the top 10. Each photo
    /// is named after the product it shows (`ID.jpg`, or several in a sub-folder `ID/`); no
    /// label needed, and not perturbed. Alone (without --fashion-mnist or --query-photos) too.
    #[arg(long, value_name = "DIR")]
    pub product_photos: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(args: EvalArgs) -> Result<()> {
    // Written beside its final name and renamed over it at the end: a path that cannot be
    // written fails now, not after the run, and a run that fails leaves an earlier file whole.
    let mut per_query = match &args.per_query {
        Some(path) => Some((std::io::BufWriter::new(create_temporary_beside(path)?), path)),
        None => None,
    };
    let out = match &args.out {
        Some(path) => Some((create_temporary_beside(path)?, path)),
        None => None,
    };
    let assets = Assets::from_env();
    let catalog = SqliteCatalog::open_existing(&args.db.db)?;
    let encoder = load_encoder(&assets, &catalog, &args.model)?;
    let queries = match (&args.fashion_mnist, &args.query_photos) {
        (_, Some(dir)) => photo_folder_queries(&args, dir, &encoder.spec().input)?,
        (Some(split), None) => fashion_mnist_queries(&args, &assets, split)?,
        // Photos of catalog products alone: how often a shopper's photo of one is found.
        (None, None) if args.exact > 0 || args.product_photos.is_some() => Vec::new(),
        (None, None) => bail!(
            "give the queries: --fashion-mnist SPLIT, --query-photos DIR (the shop's own labelled photos), --product-photos DIR (its photos of catalog products, named by product id) or --exact N alone (N catalog products re-photographed; these two need no labels)"
        ),
    };
    if !(0.0..=100.0).contains(&args.colour_weight) {
        bail!("--colour-weight must be between 0 and 100, not {}", args.colour_weight);
    }
    match queries.len() {
        0 if args.exact == 0 => eprintln!(
            "searching photos of products in {} ({} products, {})",
            args.product_photos.as_deref().unwrap_or(std::path::Path::new("-")).display(),
            catalog.len()?,
            encoder.spec().name
        ),
        0 => eprintln!("re-photographing up to {} of {} products ({})", args.exact, catalog.len()?, encoder.spec().name),
        n => eprintln!("evaluating {n} queries against {} products ({})", catalog.len()?, encoder.spec().name),
    }
    let options = eval::EvalOptions {
        label: args.label.clone(),
        queries_from: match (&args.query_photos, &args.fashion_mnist) {
            (Some(dir), _) => dir.display().to_string(),
            (None, Some(split)) => format!("Fashion-MNIST {split}"),
            (None, None) => "none (products' photos alone)".to_string(),
        },
        seed: args.seed,
        perturb: args.perturb,
        store: args.store.qdrant(&args.db.db)?,
        scenes: args.scenes,
        exact: args.exact,
        product_photos: args.product_photos.clone(),
        colour: args.colour.clone(),
        colour_weight: args.colour_weight,
        kind: args.kind,
        kind_weight: args.kind_weight,
        methods: args.methods.clone(),
    };
    let report = eval::evaluate_each(&catalog, &encoder, &queries, &options, &mut |outcome| {
        let Some((out, path)) = per_query.as_mut() else { return Ok(()) };
        serde_json::to_writer(&mut *out, outcome).and_then(|()| writeln!(out).map_err(serde_json::Error::io)).with_context(|| format!("writing {}", path.display()))
    })?;
    if let Some((out, path)) = per_query {
        let file = out.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {}", path.display()))?;
        file.persist(path).map_err(|e| e.error).with_context(|| format!("writing {}", path.display()))?;
    }
    let json = serde_json::to_string_pretty(&report)?;
    if let Some((mut file, path)) = out {
        file.write_all(json.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        file.persist(path).map_err(|e| e.error).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        println!("{}", report.table());
    }
    Ok(())
}

/// A stratified sample of a Fashion-MNIST split, labelled by the columns of --label that
/// Fashion-MNIST knows.
fn fashion_mnist_queries(args: &EvalArgs, assets: &Assets, split: &str) -> Result<Vec<LabelledQuery>> {
    let split = FashionMnist::load(&fashion_mnist_dir(assets, &args.fashion_mnist_dir)?, split)?;
    let labels: Vec<String> = (0..split.len()).map(|i| split.class_name(i).to_string()).collect();
    let picked = eval::stratified_sample(&labels, args.queries.min(split.len()), args.seed);
    let columns: Vec<&str> = args.label.split(',').map(str::trim).collect();
    let label_of = |i: usize| -> Result<String> {
        let values = columns
            .iter()
            .map(|column| match *column {
                "articleType" => Ok(labels[i].clone()),
                "baseColour" => match args.colourise {
                    Some(seed) => Ok(split.colourised(i, seed)?.1.to_string()),
                    None => bail!("--label baseColour needs --colourise SEED: Fashion-MNIST queries have no colour of their own"),
                },
                other => bail!("Fashion-MNIST queries have no {other:?} column: label by articleType (and baseColour with --colourise)"),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(values.join(eval::LABEL_SEPARATOR))
    };
    picked.into_iter().map(|i| Ok(LabelledQuery { id: split.product_id(i), image: split.photo(i, args.colourise)?, label: label_of(i)? })).collect()
}

/// A stratified sample of the shop's own labelled photos; what the folder left out is said,
/// as `index` says what it skipped.
fn photo_folder_queries(args: &EvalArgs, dir: &std::path::Path, input: &lookalike::model::InputSpec) -> Result<Vec<LabelledQuery>> {
    let folder = eval::read_query_folder(dir, &args.label, args.queries, args.seed, input, &args.id_column)?;
    let rows = &folder.rows;
    if !rows.missing_images.is_empty() {
        eprintln!("{} rows of styles.csv have no photo in images/: {}", rows.missing_images.len(), first_few(&rows.missing_images, 5));
    }
    if !rows.malformed.is_empty() {
        let lines: Vec<String> = rows.malformed.iter().map(|(line, why)| format!("line {line}: {why}")).collect();
        eprintln!("{} rows of styles.csv are malformed: {}", lines.len(), first_few(&lines, 5));
    }
    if !folder.unlabelled.is_empty() {
        eprintln!("{} photos have no {} to judge them by, left out: {}", folder.unlabelled.len(), args.label, first_few(&folder.unlabelled, 5));
    }
    if !folder.unreadable.is_empty() {
        let why: Vec<String> = folder.unreadable.iter().map(|(id, reason)| format!("{id} ({reason})")).collect();
        eprintln!("{} photos could not be read, left out: {}", why.len(), first_few(&why, 5));
    }
    Ok(folder.queries)
}
