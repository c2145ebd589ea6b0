//! `lookalike tune`: learn a catalog-tuned projection from a metadata column.

use anyhow::{bail, Result};
use clap::Args;
use std::collections::HashSet;

use super::args::*;
use lookalike::assets::Assets;
use lookalike::catalog::{SqliteCatalog, VectorKind};
use lookalike::encoder::Encoder;
use lookalike::import::{CatalogItem, ItemImage};
use lookalike::index::{Precision, VectorIndex};
use lookalike::model::{self, ModelSpec};
use lookalike::space::SearchSpace;
use lookalike::tune;
use lookalike::types::Key;

#[derive(Args)]
pub struct TuneArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Metadata column whose values say which products belong together (with --adapt: only
    /// what the held-out photos' P@10 counts by).
    #[arg(long, default_value = "articleType", conflicts_with = "off")]
    pub label: String,
    /// Dimension of the tuned vectors.
    #[arg(long, default_value_t = 256)]
    pub dim: usize,
    /// Hidden layer width (0: a linear projection).
    #[arg(long, default_value_t = 1024)]
    pub hidden: usize,
    #[arg(long, default_value_t = 12)]
    pub epochs: usize,
    /// Fraction of input features dropped in each training step.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f32,
    /// Scale of the cosine logits.
    #[arg(long, default_value_t = 16.0)]
    pub scale: f32,
    /// Also train on this many shopper-like (perturbed) versions of catalog photos, encoded
    /// now with the catalog's model: makes the tuned space robust to street photos (default:
    /// half the labelled catalog, at most 30,000; 0 turns it off).
    #[arg(long)]
    pub augment: Option<usize>,
    /// Model copy that encodes the perturbed photos: `int8` (the built-in model's int8 copy,
    /// calibrated on 200 of the catalog's photos; the catalog's own vectors stay as they are)
    /// or `fp32` (the catalog's model itself). The projection trains on both kinds of rows
    /// either way; plug-in models and int8 catalogs always use their own model.
    #[arg(long, value_enum, default_value_t = ModelPrecision::Int8, value_name = "PRECISION")]
    pub augment_precision: ModelPrecision,
    /// Weight of the instance term: each perturbed photo is also pulled to its own product
    /// (not only to its label), so a re-photographed product finds itself. 0 turns it off.
    #[arg(long, default_value_t = 2.0, value_name = "W")]
    pub instance_weight: f32,
    /// Train on the catalog features' top N principal directions, folded back into the
    /// projection afterwards (0: on every feature). Most of training's arithmetic is the first
    /// layer, which this shrinks.
    #[arg(long, default_value_t = tune::TuneOptions::default().subspace, value_name = "N")]
    pub subspace: usize,
    /// Products held out of training (at most a tenth of the labelled ones, and of each
    /// value's), to measure what tuning (or, with --adapt, the photo adapter) gains on a
    /// shopper-like photo of each: P@10 by the label and whether the very product comes first,
    /// before and after. 0: train on every product, measure nothing.
    #[arg(long, default_value_t = 500, value_name = "N")]
    pub hold_out: usize,
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Drop the tuned projection and search the model's own features again (with
    /// --localise: drop the foreground head).
    #[arg(long)]
    pub off: bool,
    /// Learn where products are in a photo instead (the foreground head used to find the items
    /// in shoppers' photos), from catalog products composed onto backgrounds.
    #[arg(long)]
    pub localise: bool,
    /// With --localise: composed photos to learn from (3,000 found more of the products in
    /// composed scenes than 1,000, for three times the training: docs/localisation-study.md).
    #[arg(long, default_value_t = 3000, value_name = "N")]
    pub scenes: usize,
    /// Learn the photo adapter instead (no labels needed): how shoppers' photos of a product
    /// differ from its catalog shot, from shopper-like photos of the catalog's own products
    /// (--augment of them, default 4 per product, at most 20,000). Query photos are then
    /// mapped towards the catalog shots they show; the catalog's vectors stay as they are.
    /// With --off: drop it.
    #[arg(long, conflicts_with = "localise")]
    pub adapt: bool,
}

pub fn run(args: TuneArgs) -> Result<()> {
    // Ctrl-C stops training at once: what it learned is stored in one transaction at the end,
    // so nothing is half-written. Set explicitly because a shell starts background commands
    // (as `make demo` starts `tune --localise`) with Ctrl-C ignored.
    if let Err(e) = ctrlc::set_handler(|| std::process::exit(130)) {
        tracing::warn!("cannot install the Ctrl-C handler: {e}");
    }
    let mut catalog = SqliteCatalog::open_existing(&args.db.db)?;
    if args.localise {
        return run_localise(&mut catalog, &args);
    }
    if args.adapt {
        return run_adapt(&mut catalog, &args);
    }
    if args.off {
        let had = catalog.clear_projection()?;
        eprintln!("{}", if had { "tuned projection removed" } else { "no tuned projection to remove" });
        SearchSpace::for_catalog(&catalog)?.record_likeness_bands(&catalog, had)?;
        return Ok(());
    }
    if !(0.0..1.0).contains(&args.dropout) {
        bail!("--dropout must be at least 0 and below 1, not {}", args.dropout);
    }
    if !(args.instance_weight >= 0.0 && args.instance_weight.is_finite()) {
        bail!("--instance-weight must be 0 or more, not {}", args.instance_weight);
    }
    let (labelled, classes) = tune::labelled_features(&catalog, &args.label)?;
    // Held out of every training row, clean or perturbed: what tuning gains on them is what
    // it gains on products it never saw, as a shopper's photo is. Size variants listed with
    // one photo go with them, and train as one product.
    let tune::HeldOut { measured: held_out, left_out } = tune::hold_out(labelled.products(), &catalog.shared_photos()?, args.hold_out, args.seed);
    // Half as many shopper-like photos as the catalog lists products outside the measured ones
    // by default: a photo listed in three sizes gets three listings' worth of views.
    let listings = labelled.labels.len() - held_out.len();
    let mut rows = if left_out.is_empty() { labelled } else { labelled.without(&left_out) };
    let measured = match (held_out.len(), args.hold_out) {
        (0, 0) => String::new(),
        (0, _) => format!(" (too few to hold some out and measure what tuning gains: that takes {} labelled products)", tune::MIN_HELD_OUT * 10),
        (n, _) => format!(" ({n} more held out to measure what tuning gains)"),
    };
    // Listings of a photo another trained listing has, and those of the measured photos.
    let folded = match listings - rows.labels.len() {
        0 => String::new(),
        n => format!("; {n} more listed with the photo of one of these or of a held-out product (size variants) train as that one"),
    };
    eprintln!("tuning on {} products, {} distinct {} values{measured}{folded}", rows.labels.len(), classes.len(), args.label);
    let augment = args.augment.unwrap_or((listings / 2).min(30_000));
    let mut augment_model = None;
    if augment > 0 {
        // A stream of batches: one single-threaded session per core is faster than one session
        // on every core (as for indexing).
        let assets = Assets::from_env();
        let spec = augmentation_model(&assets, &catalog, model_spec(&assets, &catalog, &args.model)?, args.augment_precision)?;
        let encoder = load_indexing_encoder(&assets, spec, &args.model)?;
        eprintln!("encoding {augment} perturbed catalog photos with {}", encoder.spec().name);
        augment_model = Some(encoder.spec().name.clone());
        rows.append(tune::perturbed_features(&catalog, &encoder, &args.label, &classes, (augment, args.seed), &left_out)?)?;
    }
    let pairs = rows.same_product_pairs();
    let options = tune::TuneOptions {
        output_dim: args.dim,
        hidden: args.hidden,
        epochs: args.epochs,
        dropout: args.dropout,
        instance_weight: args.instance_weight,
        subspace: args.subspace,
        scale: args.scale,
        seed: args.seed,
        ..Default::default()
    };
    let (projection, report) = tune::train(rows.features.view(), &rows.labels, classes.len(), &args.label, &pairs, &options)?;
    // The catalog in the tuned space, searched by the held-out photos and for the likeness bands.
    let tuned = SearchSpace::Tuned(Box::new(projection.clone()));
    let tuned_index = tuned.build_index(&catalog, VectorKind::Primary, Precision::F32)?;
    let held_out = match held_out.is_empty() {
        true => None,
        false => Some(measure_held_out(&catalog, (&tuned, &tuned_index), &held_out, &args)?),
    };
    let record = serde_json::json!({ "options": options, "report": report, "classes": classes, "augmented_with": augment_model, "held_out": held_out });
    // Scores in the tuned space run differently: the likeness bands are measured in it, and
    // stored with it, so a running server takes up both at once.
    let bands = tuned.measured_likeness_bands(&catalog, &tuned_index)?.map(|b| b.to_setting());
    let settings: Vec<(&str, &str)> = bands.iter().map(|b| (lookalike::likeness::SETTING, b.as_str())).collect();
    catalog.save_projection(&projection, &record.to_string(), &settings)?;
    eprintln!(
        "tuned in {:.1}s: final loss {:.3}, train accuracy {:.3}; search, eval and running servers now use it (a Qdrant collection after `lookalike sync --swap`; undo: lookalike tune --off)",
        report.seconds,
        report.loss.last().copied().unwrap_or(f32::NAN),
        report.accuracy.last().copied().unwrap_or(f32::NAN)
    );
    // Train accuracy is measured on the products it learned from: what shoppers get is
    // measured on photos it did not see.
    let db = args.db.db.display();
    if let Some(held_out) = &held_out {
        eprintln!("{}", held_out.summary(&args.label));
        if held_out.tuning_hurt() {
            eprintln!(
                "warning: tuning ranked fewer products of the same {} first for photos of products it did not learn from; search the untuned space again with `lookalike tune --db {db} --off`, or tune on another column",
                args.label
            );
        }
    }
    eprintln!(
        "measure it on the shop's own photos: lookalike eval --db {db} --query-photos DIR (labelled photos of products outside the catalog) or --product-photos DIR (new photos of catalog products); each reports lookalike_untuned beside it"
    );
    Ok(())
}

/// [`tune::HeldOutReport`] of the `tuned` space (and the catalog indexed in it): one
/// shopper-like photo of each held-out product, encoded by the catalog's own model (as query
/// photos are, whatever `--augment-precision` encoded the training photos with), searched in
/// the untuned and the tuned space.
fn measure_held_out(catalog: &SqliteCatalog, tuned: (&SearchSpace, &dyn VectorIndex), held_out: &HashSet<Key>, args: &TuneArgs) -> Result<tune::HeldOutReport> {
    let encoder = load_encoder(&Assets::from_env(), catalog, &args.model)?;
    eprintln!("measuring on {} products held out of training", held_out.len());
    let (photos, keys) = tune::held_out_photos(catalog, &encoder, held_out, args.seed)?;
    let untuned = SearchSpace::centred(catalog, VectorKind::Primary)?;
    tune::measure_held_out(catalog, &untuned, tuned, &photos, &keys, &args.label)
}

/// What `index` and `info` say when the catalog holds products of values of its tuned `label`
/// that tuning never learned (`unlearned`, from [`tune::values_not_learned`]), with the
/// command that learns them.
pub fn unlearned_values_note(catalog: &SqliteCatalog, label: &str, unlearned: &[(String, usize)]) -> Option<String> {
    if unlearned.is_empty() {
        return None;
    }
    let products: usize = unlearned.iter().map(|(_, n)| n).sum();
    let values: Vec<String> = unlearned.iter().map(|(value, n)| format!("{value} {n}")).collect();
    Some(format!(
        "{products} product(s) have {label} values the tuned space never learned ({}): they are placed by looks alone; learn them with `lookalike tune --db {} --label {label}`",
        lookalike::types::first_few(&values, 8),
        catalog.path().display(),
    ))
}

/// The model that encodes `tune`'s perturbed photos: with `int8`, the int8 copy of the
/// catalog's built-in model, calibrated on up to [`lookalike::import::CALIBRATION_PHOTOS`]
/// catalog photos spread over the catalog. Why a copy may encode them: those rows are only
/// training data, never stored or searched, and the copy encodes about 1.4x faster on CPUs
/// with VNNI, while the projection, trained on float catalog rows beside them, is what
/// queries meet (`eval` measures the result: docs/bench/tune/).
fn augmentation_model(assets: &Assets, catalog: &SqliteCatalog, spec: ModelSpec, precision: ModelPrecision) -> Result<ModelSpec> {
    if precision == ModelPrecision::Fp32 || spec.int8.is_some() || !model::is_builtin(&spec.name) {
        return Ok(spec);
    }
    let products = catalog.all_products()?;
    let step = products.len().div_ceil(lookalike::import::CALIBRATION_PHOTOS).max(1);
    let items: Vec<CatalogItem> = products
        .iter()
        .step_by(step)
        .filter_map(|p| {
            let bytes = catalog.image_bytes(p.key, &p.image).ok()?;
            Some(CatalogItem { id: p.id.clone(), image: ItemImage::Bytes { bytes, mime: String::new() }, metadata: Default::default() })
        })
        .collect();
    eprintln!("calibrating the int8 copy of {} on {} catalog photos", spec.name, items.len());
    // Only this run uses the copy (its vectors are training rows): as wide as this CPU allows.
    lookalike::import::calibrate_int8(assets, &spec.name, &items, cores(), lookalike::model::quantise::local_weight_bits())
}

/// `tune --localise`: learn (or, with --off, drop) the catalog's foreground head.
fn run_localise(catalog: &mut SqliteCatalog, args: &TuneArgs) -> Result<()> {
    if args.off {
        let had = catalog.clear_foreground_head()?;
        eprintln!("{}", if had { "foreground head removed: products are found in photos training-free again" } else { "no foreground head to remove" });
        return Ok(());
    }
    if args.scenes == 0 {
        bail!("--scenes must be at least 1");
    }
    let encoder = load_encoder(&Assets::from_env(), catalog, &args.model)?;
    eprintln!("composing and encoding {} photos of catalog products", args.scenes);
    let (head, report) = tune::train_foreground(catalog, &encoder, args.scenes, args.seed)?;
    let model = encoder.spec().name.clone();
    catalog.save_foreground_head(&model, &head, &serde_json::to_string(&report)?)?;
    eprintln!(
        "foreground head learned in {:.1}s from {} grid cells ({:.0} % on a product): balanced accuracy {:.3}, box edges off by {:.3} of the view on held-out cells (undo: lookalike tune --localise --off)",
        report.seconds,
        report.cells,
        report.foreground_share * 100.0,
        report.balanced_accuracy,
        report.extent_error
    );
    Ok(())
}

/// `tune --adapt`: learn (or, with --off, drop) the catalog's photo adapter.
fn run_adapt(catalog: &mut SqliteCatalog, args: &TuneArgs) -> Result<()> {
    if args.off {
        let had = catalog.clear_photo_adapter()?;
        eprintln!("{}", if had { "photo adapter removed: query photos are searched as encoded" } else { "no photo adapter to remove" });
        return Ok(());
    }
    let products = catalog.len()?;
    if products == 0 {
        bail!("{} has no products to learn from; import some with `lookalike index` first", catalog.path().display());
    }
    let photos = args.augment.unwrap_or((products * 4).min(20_000));
    if photos == 0 {
        bail!("--augment must be at least 1 to learn the photo adapter");
    }
    // The catalog's own model, never the int8 copy `--augment-precision` offers: the adapter
    // learns the exact vectors that query photos will have.
    let assets = Assets::from_env();
    let encoder = load_indexing_encoder(&assets, model_spec(&assets, catalog, &args.model)?, &args.model)?;
    eprintln!("encoding {photos} shopper-like photos of catalog products with {}", encoder.spec().name);
    let options = tune::AdapterOptions { photos, hold_out: args.hold_out, label: &args.label, seed: args.seed };
    let (adapter, report) = tune::train_photo_adapter(catalog, &encoder, &options)?;
    let model = encoder.spec().name.clone();
    catalog.save_photo_adapter(&model, &adapter, &serde_json::to_string(&report)?)?;
    eprintln!(
        "photo adapter learned in {:.1}s from {} photos and {} catalog shots: mean cosine of a training photo to its product {:.3} -> {:.3} (undo: lookalike tune --adapt --off)",
        report.seconds, report.photos, report.clean, report.cosine_before, report.cosine_after
    );
    match &report.held_out {
        Some(held_out) => {
            eprintln!("{}", held_out.summary());
            if held_out.adapter_hurt() {
                eprintln!(
                    "warning: the adapter found fewer of the held-out photos' own products in the top 10; drop it with `lookalike tune --db {} --adapt --off`",
                    args.db.db.display()
                );
            }
        }
        None if args.hold_out > 0 => eprintln!("(too few products to hold some out and measure what the adapter gains: that takes {})", tune::MIN_HELD_OUT * 10),
        None => {}
    }
    if catalog.projection()?.is_some() {
        eprintln!("note: this catalog searches its tuned space, which learned shoppers' photos itself; the adapter is used when tuning is off (lookalike tune --off)");
    }
    Ok(())
}
