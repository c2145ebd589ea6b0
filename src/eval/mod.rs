//! Search-quality evaluation on labelled queries against an indexed catalog.
//!
//! A hit is relevant when its label (a metadata column, `articleType` by default) equals the
//! query's. Three methods run on the same queries and catalog so their numbers sit side by side:
//!
//! - `lookalike`: exactly what search uses — GeM-pooled features centred on the catalog mean, or
//!   the catalog-tuned projection when `lookalike tune` has made one (the untuned space is then
//!   reported too, as `lookalike_untuned`);
//! - `original_recipe`: the design lookalike replaces — max pooling of the last feature map,
//!   L2-normalised, Euclidean distance (on unit vectors Euclidean ranks exactly as cosine does);
//! - `raw_pixels`: cosine on the flattened greyscale image at the catalog's image size, the
//!   floor any learned method must clear.
//!
//! This file runs the queries and keeps the tallies; `methods.rs` holds every row and how it
//! ranks a photo, `exact.rs` and `scenes.rs` the re-photographed products (`--exact`) and the
//! photos of several products (`--scenes`), `naming.rs` how well colours are named, `queries.rs`
//! a shop's own labelled photos as queries (`--query-photos`) and its photos of catalog
//! products taken anew (`--product-photos`).

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use crate::catalog::{SqliteCatalog, VectorKind};
use crate::colour::{ColourMode, ColourTable};
use crate::encoder::Encoder;
use crate::index::{l2_normalize, ExactIndex, Precision, VectorIndex};
use crate::kind::{KindMode, KindTable};
use crate::preprocess;
use crate::space::SearchSpace;
use crate::types::{ImageRef, Key};

mod exact;
mod methods;
mod naming;
mod queries;
mod scenes;

use exact::{evaluate_exact, evaluate_product_photos};
use methods::Methods;
use naming::{colour_naming, NamingTally};
use scenes::evaluate_scenes;

pub use exact::{ExactRecall, ExactReport, ProductPhotoReport};
pub use methods::{MethodSet, METHODS};
pub use naming::ColourNamingReport;
pub use queries::{read_product_photos, read_query_folder, ProductPhoto, ProductPhotos, QueryFolder};
pub use scenes::{iou, SceneReport, UnmatchedProducts};

/// Cut-off of every ranked metric.
pub const K: usize = 10;

/// Joins the values of several label columns (`--label articleType,baseColour`) into one
/// label: a hit is relevant when every listed column equals the query's.
pub const LABEL_SEPARATOR: &str = " / ";

/// The label `columns` give a product or a photo, their values joined by [`LABEL_SEPARATOR`];
/// `None` when `value` has none for one of them.
pub(crate) fn joined_label<'a>(columns: &[&str], value: impl Fn(&str) -> Option<&'a str>) -> Option<String> {
    let values: Option<Vec<&str>> = columns.iter().map(|c| value(c)).collect();
    values.map(|v| v.join(LABEL_SEPARATOR))
}

/// A query image with its ground-truth label (several columns' values joined by
/// [`LABEL_SEPARATOR`]).
#[derive(Debug)]
pub struct LabelledQuery {
    pub id: String,
    pub image: image::DynamicImage,
    pub label: String,
}

/// Metrics of one method.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MethodReport {
    pub precision_at_1: f64,
    pub precision_at_5: f64,
    pub precision_at_10: f64,
    pub map_at_10: f64,
    pub knn_accuracy: f64,
    pub latency_ms_median: f64,
    pub latency_ms_p95: f64,
    /// With several label columns: P@10 judged by each column alone.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub precision_at_10_by_column: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub catalog_size: usize,
    pub queries: usize,
    /// Where the queries came from ([`EvalOptions::queries_from`]).
    pub queries_from: String,
    pub seed: u64,
    pub label: String,
    /// Whether queries were perturbed into shopper-like photos (see [`crate::perturb`]).
    pub perturbed: bool,
    /// How the lookalike rows treated colour (`match`, `any` or a colour name; `any` on a
    /// grey catalog). With a mode other than `any`, `lookalike_any` is the same search by
    /// shape only.
    pub colour: String,
    /// The weight of colour against shape under `match`.
    pub colour_weight: f32,
    /// The kind consensus's weight under `kind: match`.
    pub kind_weight: f32,
    /// Whether the lookalike rows put the kind most of the best matches share first
    /// (`match`; then `lookalike_any_kind` is the same search without it) or not (`any`, also
    /// when products have no category).
    pub kind: String,
    /// The label column the catalog's projection was tuned on, if it has one.
    pub tuned_on: Option<String>,
    pub methods: BTreeMap<String, MethodReport>,
    /// Several products in one photo (`--scenes N`), when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scenes: Option<SceneReport>,
    /// Catalog products re-photographed (`--exact N`), when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<ExactReport>,
    /// Photos of catalog products the shop took anew (`--product-photos DIR`), when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_photos: Option<ProductPhotoReport>,
    /// How often the colour named from a product's photo at import is its `baseColour`, when
    /// the catalog has that column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colour_naming: Option<ColourNamingReport>,
    /// How often the colour search reads from a query photo (what it matches colours with) is
    /// the query's `baseColour`, when that is one of the `--label` columns (counts are queries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_colour_naming: Option<ColourNamingReport>,
}

/// One query's outcome, for finding which queries fail and what they find instead
/// (`lookalike eval --per-query FILE` writes one a line).
#[derive(Debug, Serialize)]
pub struct QueryOutcome<'a> {
    /// The query's id (`fmnist-test-00042`).
    pub query: &'a str,
    /// Its label (several columns joined by " / ").
    pub label: &'a str,
    /// The colour read from the photo, where the catalog has colour.
    pub query_colour: Option<&'static str>,
    /// Per row: its precision@10 for this query and its first page.
    pub methods: BTreeMap<&'static str, RankedOutcome>,
}

/// One photo of a catalog product's outcome (`--product-photos`, `--exact`): which product
/// it shows, and where each row ranked it (`lookalike eval --per-query FILE` writes one a
/// line, after the labelled queries').
#[derive(Debug, Serialize)]
pub struct ProductPhotoOutcome<'a> {
    /// The photo's name in the `--product-photos` folder (`123.jpg`, `123/worn.jpg`); absent
    /// for a product `--exact` re-photographed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub photo: Option<&'a str>,
    /// The id of the product it shows.
    pub product: &'a str,
    /// Per row: the product's rank on its first page (`None`: not on it), and that page.
    pub methods: BTreeMap<&'static str, FoundOutcome>,
}

/// Where one row ranked a photo's own product, and what it ranked ([`ProductPhotoOutcome`]).
#[derive(Debug, Serialize)]
pub struct FoundOutcome {
    pub rank: Option<usize>,
    /// The top [`K`], best first.
    pub hits: Vec<HitOutcome>,
}

/// What `lookalike eval --per-query` writes a line of: a labelled query's outcome, or a photo
/// of a catalog product's (the one has `query`, the other `product`).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Outcome<'a> {
    Query(QueryOutcome<'a>),
    ProductPhoto(ProductPhotoOutcome<'a>),
}

/// One row's answer to one query ([`QueryOutcome`]).
#[derive(Debug, Serialize)]
pub struct RankedOutcome {
    pub precision_at_10: f64,
    /// The top [`K`], best first.
    pub hits: Vec<HitOutcome>,
}

/// One product a row found ([`RankedOutcome`]).
#[derive(Debug, Serialize)]
pub struct HitOutcome {
    pub id: String,
    /// Its label ("" for a product without the label's columns).
    pub label: String,
    pub score: f32,
}

/// How to run an evaluation.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Metadata column deciding relevance.
    pub label: String,
    /// Where the queries came from, as the report says it (`Fashion-MNIST test`, a folder).
    pub queries_from: String,
    pub seed: u64,
    /// Perturb every query (seeded by `seed` and the query's position).
    pub perturb: bool,
    /// Search `lookalike` in this Qdrant collection instead of the embedded exact index (the
    /// baselines stay embedded).
    pub store: Option<crate::index::qdrant::QdrantConfig>,
    /// Also compose this many scenes of 2-3 query products each and measure detection on them
    /// (see [`SceneReport`]).
    pub scenes: usize,
    /// Also re-photograph this many catalog products and measure whether each is found itself
    /// (see [`ExactReport`]).
    pub exact: usize,
    /// Also search these photos of catalog products taken anew and measure whether each finds
    /// its product (see [`ProductPhotoReport`]; read with [`read_product_photos`]).
    pub product_photos: Option<std::path::PathBuf>,
    /// How the lookalike rows treat colour, as search's `colour` does.
    pub colour: ColourMode,
    /// Weight of colour against shape under [`ColourMode::Match`] (search uses
    /// [`crate::colour::MATCH_WEIGHT`]).
    pub colour_weight: f32,
    /// Whether the lookalike rows put the kind the best matches share first, as search's
    /// `kind` does.
    pub kind: KindMode,
    /// The consensus's weight (search uses [`crate::kind::WEIGHT`]).
    pub kind_weight: f32,
    /// The rows to compute (rows that do not apply to the catalog are left out anyway).
    pub methods: MethodSet,
}

/// Picks `n` of `labels`' indices, the same number from each label (the first labels in sorted
/// order take the remainder), shuffled with `seed`, so results are reproducible and no class
/// dominates. A label with fewer members than its share gives them all, and the labels with
/// more make up the rest in the same order, so that `n` are picked whenever there are `n` (a
/// shop's photos are rarely balanced; a balanced set is drawn as before).
pub fn stratified_sample(labels: &[String], n: usize, seed: u64) -> Vec<usize> {
    let mut by_label: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, l) in labels.iter().enumerate() {
        by_label.entry(l).or_default().push(i);
    }
    let classes = by_label.len().max(1);
    let sizes: Vec<usize> = by_label.values().map(Vec::len).collect();
    let mut quotas: Vec<usize> = sizes.iter().enumerate().map(|(c, &size)| (n / classes + usize::from(c < n % classes)).min(size)).collect();
    let mut short = n.min(labels.len()) - quotas.iter().sum::<usize>();
    while short > 0 {
        for (quota, &size) in quotas.iter_mut().zip(&sizes) {
            if short > 0 && *quota < size {
                *quota += 1;
                short -= 1;
            }
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut picked = Vec::with_capacity(n);
    for ((_, mut members), quota) in by_label.into_iter().zip(quotas) {
        members.shuffle(&mut rng);
        picked.extend(members.into_iter().take(quota));
    }
    picked.shuffle(&mut rng);
    picked
}

/// Per-query accumulation of one method's metrics.
#[derive(Default)]
struct Tally {
    p1: f64,
    p5: f64,
    p10: f64,
    ap: f64,
    knn: f64,
    latencies: Vec<f64>,
    /// P@10 sums judged by each label column alone (several columns only).
    p10_by_column: Vec<f64>,
}

impl Tally {
    /// Adds one query's ranking; returns its precision@[`K`].
    fn add(&mut self, ranked_labels: &[&str], query_label: &str, relevant_in_catalog: usize, latency_ms: f64) -> f64 {
        let rel: Vec<bool> = ranked_labels.iter().map(|l| *l == query_label).collect();
        let precision = |k: usize| rel.iter().take(k).filter(|r| **r).count() as f64 / k as f64;
        let query_parts: Vec<&str> = query_label.split(LABEL_SEPARATOR).collect();
        if query_parts.len() > 1 {
            self.p10_by_column.resize(query_parts.len(), 0.0);
            for (c, wanted) in query_parts.iter().enumerate() {
                let hits = ranked_labels.iter().take(K).filter(|l| l.split(LABEL_SEPARATOR).nth(c) == Some(*wanted)).count();
                self.p10_by_column[c] += hits as f64 / K as f64;
            }
        }
        self.p1 += precision(1);
        self.p5 += precision(5);
        self.p10 += precision(K);
        self.ap += average_precision(&rel, relevant_in_catalog);
        self.knn += f64::from(u8::from(majority_label(ranked_labels) == Some(query_label)));
        self.latencies.push(latency_ms);
        precision(K)
    }

    fn report(mut self, columns: &[&str]) -> MethodReport {
        let n = self.latencies.len().max(1) as f64;
        let precision_at_10_by_column = match columns.len() {
            0 | 1 => BTreeMap::new(),
            _ => columns.iter().zip(&self.p10_by_column).map(|(c, p)| (c.to_string(), p / n)).collect(),
        };
        self.latencies.sort_by(f64::total_cmp);
        MethodReport {
            precision_at_1: self.p1 / n,
            precision_at_5: self.p5 / n,
            precision_at_10: self.p10 / n,
            map_at_10: self.ap / n,
            knn_accuracy: self.knn / n,
            latency_ms_median: percentile(&self.latencies, 0.5),
            latency_ms_p95: percentile(&self.latencies, 0.95),
            precision_at_10_by_column,
        }
    }
}

/// AP@K: the mean of precision@i over the ranks i ≤ K holding a relevant hit, divided by
/// min(K, relevant items in the catalog) so a ranking that misses findable items is penalised.
pub fn average_precision(relevant: &[bool], relevant_in_catalog: usize) -> f64 {
    let denominator = relevant_in_catalog.min(K);
    if denominator == 0 {
        return 0.0;
    }
    let (mut hits, mut sum) = (0usize, 0.0);
    for (i, r) in relevant.iter().take(K).enumerate() {
        if *r {
            hits += 1;
            sum += hits as f64 / (i + 1) as f64;
        }
    }
    sum / denominator as f64
}

/// The most frequent label; ties go to the label ranked highest.
pub fn majority_label<'a>(ranked: &[&'a str]) -> Option<&'a str> {
    let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
    for (rank, label) in ranked.iter().enumerate() {
        counts.entry(label).or_insert((0, rank)).0 += 1;
    }
    counts.into_iter().max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.cmp(&a.1 .1))).map(|(l, _)| l)
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Side of the raw-pixel baseline: the catalog's own image size (its first image's shorter side,
/// at most 64 so the baseline stays cheap on photo catalogs).
fn raw_pixel_side(catalog: &SqliteCatalog, first: Key, image_ref: &ImageRef) -> Result<u32> {
    let image = catalog.decoded_image(first, image_ref)?;
    Ok(image.width().min(image.height()).clamp(8, 64))
}

/// Runs every query through the three methods and reports their metrics.
pub fn evaluate(catalog: &SqliteCatalog, encoder: &dyn Encoder, queries: &[LabelledQuery], options: &EvalOptions) -> Result<EvalReport> {
    evaluate_each(catalog, encoder, queries, options, &mut |_| Ok(()))
}

/// [`evaluate`], telling `each_query` every query's outcome as it is measured, and then every
/// photo's of a catalog product (`--product-photos`, then `--exact`).
pub fn evaluate_each(
    catalog: &SqliteCatalog,
    encoder: &dyn Encoder,
    queries: &[LabelledQuery],
    options: &EvalOptions,
    each_query: &mut dyn FnMut(&Outcome<'_>) -> Result<()>,
) -> Result<EvalReport> {
    let label = options.label.as_str();
    // Without labelled queries, `--exact` or `--product-photos` alone still measures whether
    // photos of catalog products find them: that needs no label.
    if queries.is_empty() && options.exact == 0 && options.product_photos.is_none() {
        bail!("no queries to evaluate");
    }
    if queries.is_empty() && options.scenes > 0 {
        bail!("--scenes composes photos of the queries' products: give labelled queries (--fashion-mnist or --query-photos)");
    }
    let columns: Vec<&str> = label.split(',').map(str::trim).collect();
    if columns.iter().any(|c| c.is_empty()) {
        bail!("--label {label:?} names an empty column: give columns separated by commas, e.g. articleType,baseColour");
    }
    let products = catalog.all_products()?;
    let labels: HashMap<Key, String> = products.iter().filter_map(|p| Some((p.key, joined_label(&columns, |c| p.metadata.get(c).map(String::as_str))?))).collect();
    if labels.is_empty() && !queries.is_empty() {
        bail!(
            "no product in {} has a {label:?} column to judge relevance by (its columns: {}; choose with --label)",
            catalog.path().display(),
            crate::types::columns_of(&products).join(", ")
        );
    }
    let ids: HashMap<Key, &str> = products.iter().map(|p| (p.key, p.id.as_str())).collect();
    // Read before the vectors are loaded: a folder that gives nothing to measure fails at once.
    let product_photos = match &options.product_photos {
        Some(dir) => Some(read_product_photos(dir, catalog, &products, &encoder.spec().input)?),
        None => None,
    };
    // A query that is a catalog product (the shop's own folder given as queries) finds itself
    // first: its numbers say little about a photo the catalog does not hold.
    let product_ids: std::collections::HashSet<&str> = ids.values().copied().collect();
    let in_catalog = queries.iter().filter(|q| product_ids.contains(q.id.as_str())).count();
    if in_catalog > 0 {
        tracing::warn!(
            "{in_catalog} of {} queries are catalog products themselves (the same id): each can find itself first, so the numbers are higher than for photos the catalog does not hold; hold them out of the catalog to measure",
            queries.len()
        );
    }
    // Size variants listed with one photo are one result (as search shows them) and one
    // product found: rankings, and the relevant products a label has, count photos.
    let same_photos = crate::types::SamePhotos::of(&products);
    let mut per_label: HashMap<&str, usize> = HashMap::new();
    let mut photos_counted: std::collections::HashSet<(&str, &str)> = std::collections::HashSet::new();
    for (&key, l) in &labels {
        if same_photos.shared_photo(key).is_some_and(|photo| !photos_counted.insert((l.as_str(), photo))) {
            continue;
        }
        *per_label.entry(l.as_str()).or_default() += 1;
    }
    // A query labelled with a value no product has (a typo, another naming) can find nothing
    // relevant: its zeros are in every number below, so the run says so first.
    let mut strangers: Vec<&str> = queries.iter().map(|q| q.label.as_str()).filter(|l| !per_label.contains_key(l)).collect();
    if !strangers.is_empty() {
        let count = strangers.len();
        strangers.sort_unstable();
        strangers.dedup();
        tracing::warn!(
            "{count} of {} queries have a label no catalog product has ({}{}): nothing can be relevant to them",
            queries.len(),
            strangers.iter().take(5).map(|l| format!("{l:?}")).collect::<Vec<_>>().join(", "),
            if strangers.len() > 5 { ", ..." } else { "" }
        );
    }

    tracing::info!("loading vectors of {} products", products.len());
    // `lookalike` is what search uses: the tuned space when the catalog has a projection; the
    // model's own space is then reported as `lookalike_untuned` beside it.
    let space = SearchSpace::for_catalog(catalog)?;
    let lookalike: Box<dyn VectorIndex> = match &options.store {
        Some(store) => Box::new(crate::store::open_qdrant(catalog, &space, store)?),
        None => Box::new(space.build_index(catalog, VectorKind::Primary, Precision::F32)?),
    };
    let untuned_space = SearchSpace::centred(catalog, VectorKind::Primary)?;
    let wanted = &options.methods;
    let untuned = match space.tuned_on() {
        Some(_) if wanted.has("lookalike_untuned") => Some(untuned_space.build_index(catalog, VectorKind::Primary, Precision::F32)?),
        _ => None,
    };
    let original = match wanted.has("original_recipe") {
        true => SearchSpace::Identity.build_index(catalog, VectorKind::MaxPooled, Precision::F32)?,
        false => ExactIndex::new(1),
    };

    let first = products.first().context("the catalog is empty")?;
    let side = raw_pixel_side(catalog, first.key, &first.image)?;
    let mut raw = ExactIndex::new((side * side) as usize);
    if wanted.has("raw_pixels") {
        tracing::info!("raw-pixel baseline at {side}x{side}");
        for p in &products {
            let mut v = preprocess::greyscale_pixels(&catalog.decoded_image(p.key, &p.image)?, side);
            l2_normalize(&mut v);
            raw.upsert(p.key, &v)?;
        }
    }

    // Where the product is in a query: the catalog's learned head, else training-free.
    let head = catalog.foreground_head()?;
    let colours = ColourTable::load(catalog)?;
    let colour_mode = match colours.has_colour() {
        true => options.colour.clone(),
        false => ColourMode::Any,
    };
    let kinds = KindTable::load(catalog)?;
    let kinds = (options.kind == KindMode::Match && kinds.has_kinds()).then_some(kinds);
    let methods = Methods {
        encoder,
        space: &space,
        lookalike: lookalike.as_ref(),
        very_similar: space.likeness_bands(catalog, lookalike.as_ref())?.map(|b| b.very_similar),
        untuned: match &untuned {
            Some(u) => Some((u, &untuned_space, untuned_space.likeness_bands(catalog, u)?.map(|b| b.very_similar))),
            None => None,
        },
        original: &original,
        raw: &raw,
        side,
        head: head.as_ref(),
        colours: &colours,
        colour: colour_mode.clone(),
        colour_weight: options.colour_weight,
        kinds: kinds.as_ref(),
        kind_weight: options.kind_weight,
        wanted,
        same_photos: &same_photos,
        depth: K * same_photos.most_listings_of_a_photo(),
    };
    let applies = |method: &str| match method {
        "lookalike_any_kind" => methods.kinds.is_some(),
        "lookalike_unadapted" => space.adapts_photos(),
        "lookalike_any" => methods.colour != ColourMode::Any,
        "lookalike_untuned" => methods.untuned.is_some(),
        "original_recipe" => !original.is_empty(),
        _ => true,
    };
    if !wanted.0.iter().any(|m| applies(m)) {
        bail!(
            "none of the rows asked for applies to this catalog ({}): lookalike_untuned needs a tuned catalog, lookalike_unadapted one with a photo adapter (tune --adapt), lookalike_any a colour catalog and --colour other than any, lookalike_any_kind categories and --kind match",
            wanted.0.join(", ")
        );
    }
    let mut tallies: BTreeMap<&str, Tally> = BTreeMap::new();
    // The query's own colour, when relevance includes it: to measure how well it is read.
    let colour_column = columns.iter().position(|c| *c == "baseColour");
    let mut query_naming = NamingTally::default();
    for (n, q) in queries.iter().enumerate() {
        let relevant = per_label.get(q.label.as_str()).copied().unwrap_or(0);
        let perturbed;
        let query_image = if options.perturb {
            let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed.wrapping_mul(1_000_003).wrapping_add(n as u64));
            perturbed = crate::perturb::perturb(&q.image, &mut rng);
            &perturbed
        } else {
            &q.image
        };
        let (ranked_by_method, query_colour) = methods.rank(query_image)?;
        if let (Some(column), Some(named)) = (colour_column, query_colour) {
            if let Some(truth) = q.label.split(LABEL_SEPARATOR).nth(column) {
                query_naming.add(truth, named);
            }
        }
        let mut outcome = QueryOutcome { query: &q.id, label: &q.label, query_colour, methods: BTreeMap::new() };
        for (method, hits, latency) in ranked_by_method {
            let ranked: Vec<&str> = hits.iter().map(|h| labels.get(&h.key).map_or("", String::as_str)).collect();
            let precision_at_10 = tallies.entry(method).or_default().add(&ranked, &q.label, relevant, latency);
            let first_page = hits.iter().zip(&ranked).take(K);
            outcome.methods.insert(
                method,
                RankedOutcome {
                    precision_at_10,
                    hits: first_page
                        .map(|(h, label)| HitOutcome { id: ids.get(&h.key).map_or_else(String::new, |id| id.to_string()), label: label.to_string(), score: h.score })
                        .collect(),
                },
            );
        }
        each_query(&Outcome::Query(outcome))?;
    }
    let hit_outcome = |h: &crate::index::Hit| HitOutcome {
        id: ids.get(&h.key).map_or_else(String::new, |id| id.to_string()),
        label: labels.get(&h.key).cloned().unwrap_or_default(),
        score: h.score,
    };
    // Size variants listed with one photo: finding any of them is finding the product.
    let mut each_photo = |found: exact::FoundPhoto<'_>| {
        let methods = found
            .rankings
            .iter()
            .map(|(method, hits, _)| {
                let hits: Vec<&crate::index::Hit> = hits.iter().take(K).collect();
                let rank = hits.iter().position(|h| same_photos.is_product(h.key, found.product)).map(|i| i + 1);
                (*method, FoundOutcome { rank, hits: hits.into_iter().map(hit_outcome).collect() })
            })
            .collect();
        let product = ids.get(&found.product).copied().unwrap_or_default();
        each_query(&Outcome::ProductPhoto(ProductPhotoOutcome { photo: found.photo, product, methods }))
    };
    let product_photos = product_photos.map(|read| evaluate_product_photos(&methods, read, &same_photos, &mut each_photo)).transpose()?;
    let exact = match options.exact {
        0 => None,
        n => Some(evaluate_exact(catalog, &methods, &products, &same_photos, &columns, (n, options.seed), &mut each_photo)?),
    };

    Ok(EvalReport {
        catalog_size: products.len(),
        queries: queries.len(),
        queries_from: options.queries_from.clone(),
        seed: options.seed,
        label: label.to_string(),
        perturbed: options.perturb,
        colour: colour_mode.to_string(),
        colour_weight: options.colour_weight,
        kind_weight: options.kind_weight,
        kind: match kinds {
            Some(_) => KindMode::Match.to_string(),
            None => KindMode::Any.to_string(),
        },
        tuned_on: space.tuned_on().map(str::to_string),
        methods: tallies.into_iter().map(|(m, t)| (m.to_string(), t.report(&columns))).collect(),
        scenes: match options.scenes {
            0 => None,
            n => Some(evaluate_scenes(
                lookalike.as_ref(),
                &space,
                kinds.as_ref().map(|k| (k, options.kind_weight)),
                encoder,
                head.as_ref(),
                queries,
                n,
                options.seed,
                &labels,
                &same_photos,
            )?),
        },
        exact,
        product_photos,
        colour_naming: colour_naming(&products, &colours),
        query_colour_naming: query_naming.report(),
    })
}

impl EvalReport {
    /// A markdown table, one row per method.
    pub fn table(&self) -> String {
        let mut out = format!(
            "catalog: {} products, queries: {}{} from {}, label: {}, seed: {}, tuned on: {}\n",
            self.catalog_size,
            self.queries,
            if self.perturbed { " (perturbed)" } else { "" },
            self.queries_from,
            self.label,
            self.seed,
            self.tuned_on.as_deref().unwrap_or("-")
        );
        if !self.methods.is_empty() {
            out.push_str("\n| method | P@1 | P@5 | P@10 | mAP@10 | kNN acc | latency median ms | p95 ms |\n|---|---|---|---|---|---|---|---|\n");
        }
        for (name, m) in &self.methods {
            out.push_str(&format!(
                "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} |\n",
                m.precision_at_1, m.precision_at_5, m.precision_at_10, m.map_at_10, m.knn_accuracy, m.latency_ms_median, m.latency_ms_p95
            ));
        }
        out.push_str(&format!("\ncolour: {} (weight {})\n", self.colour, self.colour_weight));
        let by_column: Vec<String> = self
            .methods
            .iter()
            .filter(|(_, m)| !m.precision_at_10_by_column.is_empty())
            .map(|(name, m)| format!("{name}: {}", m.precision_at_10_by_column.iter().map(|(c, p)| format!("{c} {p:.3}")).collect::<Vec<_>>().join(", ")))
            .collect();
        if !by_column.is_empty() {
            out.push_str(&format!("P@10 by each label column alone: {}\n", by_column.join("; ")));
        }
        if let Some(c) = &self.colour_naming {
            out.push_str(&format!(
                "colour named at import: {:.3} of {} one-colour products, {:.3} of {} Multi\n",
                c.solid_correct, c.solid_products, c.multi_correct, c.multi_products
            ));
        }
        if let Some(c) = &self.query_colour_naming {
            out.push_str(&format!(
                "colour read from the queries: {:.3} of {} one-colour queries, {:.3} of {} Multi\n",
                c.solid_correct, c.solid_products, c.multi_correct, c.multi_products
            ));
        }
        if let Some(s) = &self.scenes {
            out.push_str(&format!(
                "\nscenes: {} photos, {} products; detection recall {:.3}, precision {:.3}; P@10 with the detected box {:.3} (pooled over the item {:.3}), with the whole photo {:.3}\nproducts no box matched: {:.3} merged with a neighbour, {:.3} loosely boxed (IoU 0.2-0.5), {:.3} missed\n",
                s.scenes, s.products, s.detection_recall, s.detection_precision, s.scene_precision_at_10, s.scene_pooled_precision_at_10, s.whole_photo_precision_at_10,
                s.unmatched.merged, s.unmatched.loose, s.unmatched.missed
            ));
        }
        if let Some(e) = &self.exact {
            out.push_str(&format!("\nexact: {} catalog products re-photographed\n\n| method | found at rank 1 | in the top 10 |\n|---|---|---|\n", e.products));
            for (name, m) in &e.methods {
                out.push_str(&format!("| {name} | {:.3} | {:.3} |\n", m.exact_recall_at_1, m.exact_recall_at_10));
            }
        }
        if let Some(p) = &self.product_photos {
            out.push_str(&format!("\nproduct photos: {} photos of {} catalog products\n\n| method | found at rank 1 | in the top 10 |\n|---|---|---|\n", p.photos, p.products));
            for (name, m) in &p.methods {
                out.push_str(&format!("| {name} | {:.3} | {:.3} |\n", m.exact_recall_at_1, m.exact_recall_at_10));
            }
            for (what, left_out) in [("name no catalog product", &p.unknown), ("are the catalog's own photos", &p.catalog_photos), ("could not be read", &p.unreadable)] {
                if !left_out.is_empty() {
                    out.push_str(&format!("left out, {} {what}: {}\n", left_out.len(), crate::types::first_few(left_out, 5)));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_sets_parse_names_once_each_and_refuse_unknown_ones() {
        assert_eq!("all".parse::<MethodSet>(), Ok(MethodSet::all()));
        let some: MethodSet = " lookalike_any ,lookalike,lookalike_any".parse().expect("known names");
        assert_eq!(some.0, ["lookalike_any", "lookalike"]);
        assert!(some.has("lookalike") && !some.has("raw_pixels"));
        for bad in ["", "lookalike,", "Lookalike", "lookalike,faiss"] {
            let error = bad.parse::<MethodSet>().expect_err(bad);
            assert!(error.contains("raw_pixels") && error.contains("unknown method"), "{bad}: {error}");
        }
    }

    #[test]
    fn average_precision_rewards_early_hits() {
        let all = [true; 10];
        assert!((average_precision(&all, 100) - 1.0).abs() < 1e-12);
        let mut late_miss = [true; 10];
        late_miss[9] = false;
        assert!((average_precision(&late_miss, 100) - 0.9).abs() < 1e-12);
        let mut early_miss = [true; 10];
        early_miss[0] = false;
        assert!(average_precision(&early_miss, 100) < 0.72);
        // Only two relevant items exist and both are found first: perfect.
        let mut two = [false; 10];
        two[0] = true;
        two[1] = true;
        assert!((average_precision(&two, 2) - 1.0).abs() < 1e-12);
        assert_eq!(average_precision(&all, 0), 0.0);
    }

    #[test]
    fn majority_vote_breaks_ties_by_rank() {
        assert_eq!(majority_label(&["a", "b", "b", "a", "c"]), Some("a"));
        assert_eq!(majority_label(&["c", "b", "b"]), Some("b"));
        assert_eq!(majority_label(&[]), None);
    }

    #[test]
    fn stratified_sample_is_balanced_and_reproducible() {
        let labels: Vec<String> = (0..1000).map(|i| format!("c{}", i % 4)).collect();
        let a = stratified_sample(&labels, 10, 7);
        let b = stratified_sample(&labels, 10, 7);
        assert_eq!(a, b);
        assert_eq!(a.len(), 10);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for i in &a {
            *counts.entry(&labels[*i]).or_default() += 1;
        }
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), [3, 3, 2, 2]);
        assert_ne!(stratified_sample(&labels, 10, 8), a);

        // Unbalanced: the rare label gives all it has, the others make up the rest.
        let labels: Vec<String> = ["a"; 1].iter().chain(&["b"; 5]).chain(&["c"; 20]).map(|l| l.to_string()).collect();
        let count = |picked: &[usize], label: &str| picked.iter().filter(|&&i| labels[i] == label).count();
        let nine = stratified_sample(&labels, 9, 7);
        assert_eq!((nine.len(), count(&nine, "a"), count(&nine, "b"), count(&nine, "c")), (9, 1, 4, 4));
        let twelve = stratified_sample(&labels, 12, 7);
        assert_eq!((twelve.len(), count(&twelve, "a"), count(&twelve, "b"), count(&twelve, "c")), (12, 1, 5, 6));
        let mut all = stratified_sample(&labels, 100, 7);
        all.sort_unstable();
        assert_eq!(all, (0..labels.len()).collect::<Vec<_>>(), "more asked for than there are: all of them");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.95), 95.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
