//! Catalog import: from a folder of photos, the Fashion Product Images layout or Fashion-MNIST
//! to products with vectors in the catalog.
//!
//! Each source turns its input into [`CatalogItem`]s; [`index_items`] does the rest for all of
//! them: skip what is already indexed with the same content hash, decode and preprocess in
//! parallel, encode in batches (a photo that several products share, once), and commit each
//! batch (products and vectors together) in one transaction, so an interrupted import resumes
//! where it stopped.

pub mod fashion_mnist;
pub mod folder;
pub mod idx;
pub mod kaggle;

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::catalog::{IndexedChange, IndexedImage, SqliteCatalog, StoredVectors};
use crate::colour::{self, ColourEstimate};
use crate::encoder::{Embedding, Encoder};
use crate::preprocess::{self, DecodeLimits};
use crate::types::{names_a_colour, IndexingProgress, Metadata, NewImage, NewProduct, VectorSpace, COMPUTED_COLOUR_COLUMN};

/// A product as a source describes it, before it is encoded.
#[derive(Debug, Clone)]
pub struct CatalogItem {
    /// The shop's product id (unique within the catalog).
    pub id: String,
    pub image: ItemImage,
    pub metadata: Metadata,
}

#[derive(Debug, Clone)]
pub enum ItemImage {
    /// A photo on disk; the catalog keeps the path, not a copy.
    File(PathBuf),
    /// A photo with no file of its own (e.g. a Fashion-MNIST entry); kept inside the catalog.
    Bytes { bytes: Vec<u8>, mime: String },
}

/// Images per inference batch when indexing. Small on purpose: each core runs its own
/// single-threaded model session, and a batch of one or two keeps a CNN's early activations
/// (1.6 MB per image for EfficientNet-Lite0's first layers) in the core's cache. Measured on one
/// core: 209 images/s at batch 1, 188 at 8, 179 at 16; `lookalike bench ingest` end to end:
/// 389-407 images/s at batch 1-2 against 349 at 8 (docs/bench/ingest.md).
pub const DEFAULT_BATCH_SIZE: usize = 2;

/// Inference batches the decoder prepares per parallel step.
const DECODE_BATCHES: usize = 8;

/// Tuning of [`index_items`].
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// Images per inference batch (and per committed transaction).
    pub batch_size: usize,
    /// Show a progress bar on stderr.
    pub progress: bool,
    pub limits: DecodeLimits,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions { batch_size: DEFAULT_BATCH_SIZE, progress: true, limits: DecodeLimits::default() }
    }
}

/// What an import did.
#[derive(Debug, Default, Clone)]
pub struct IndexReport {
    pub seen: usize,
    /// Newly added or re-encoded because the image changed.
    pub embedded: usize,
    /// New or changed products whose photo (the same bytes) another product has, indexed before
    /// or earlier in this import: they took its vectors instead of being encoded again (size
    /// variants sharing one photo; a product listed under a new id).
    pub copied: usize,
    /// Already in the catalog with the same image bytes.
    pub unchanged: usize,
    /// Of those, how many had no colour yet and got it (without re-running the model).
    pub recoloured: usize,
    /// Of those, how many took changed metadata from the source (a CSV row's new price or
    /// name), without re-running the model.
    pub redescribed: usize,
    /// Skipped items: (id, why).
    pub failed: Vec<(String, String)>,
    /// Stopped early by Ctrl-C; re-running resumes.
    pub interrupted: bool,
    pub elapsed: Duration,
}

impl IndexReport {
    /// New or changed products indexed: encoded, or given the vectors of the same photo.
    pub fn indexed(&self) -> usize {
        self.embedded + self.copied
    }

    /// Images encoded per second of wall time.
    pub fn rate(&self) -> f64 {
        self.embedded as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// An item whose image has been read, hashed and turned into the model's input.
struct Prepared {
    item: CatalogItem,
    stored: NewImage,
    hash: String,
    tensor: Vec<f32>,
    colour: Option<ColourEstimate>,
    /// Another product has the same photo (by content hash), indexed before or earlier in this
    /// import: its vectors are copied rather than encoded again.
    shares_photo: bool,
}

/// An item to store, as the committer gets it: the item, its image reference, its photo's
/// content hash and its colour descriptor.
type Described = (CatalogItem, NewImage, String, Option<Vec<f32>>);

/// Where a new or changed item's vectors come from, as a worker hands it to the committer.
enum Vectors {
    /// Encoded by the model.
    Encoded(Embedding),
    /// The same photo's, encoded earlier in the same batch.
    Copied(Embedding),
    /// The photo of a product committed before this batch: the committer copies its vectors,
    /// or encodes this input should that product have changed its photo since.
    SamePhoto(Vec<f32>),
}

/// What an import does with one item.
enum Preparation {
    /// Indexed with the same image bytes and its colour: nothing to do.
    Unchanged,
    /// Indexed with the same image bytes but no colour (a catalog made before colours): store
    /// the colour (and its name, in the metadata given), without re-running the model.
    Recolour { id: String, colour: Vec<f32>, metadata: Metadata },
    /// Indexed with the same image bytes and its colour, but the source describes it
    /// differently now (a new price, name or category): store the metadata given.
    Redescribe { id: String, metadata: Metadata },
    /// New or changed: encode it.
    Encode(Box<Prepared>),
}

/// What the decoding stage hands the encoder workers: one batch of prepared images, and the
/// items of that stretch that failed to decode or are unchanged since the last import.
struct DecodedBatch {
    ready: Vec<Prepared>,
    /// (product id, why) of items that could not be read.
    failed: Vec<(String, String)>,
    unchanged: usize,
    /// Unchanged images whose colour was missing or whose metadata changed.
    refreshed: Vec<IndexedChange>,
}

/// What an encoder worker hands the committing thread: each item (with its image reference and
/// content hash) beside its embedding, and the decoding stage's counts passed along.
struct EncodedBatch {
    described: Vec<Described>,
    vectors: Vec<Vectors>,
    failed: Vec<(String, String)>,
    unchanged: usize,
    refreshed: Vec<IndexedChange>,
}

/// Embeds `items` into `catalog` with `encoder`. Set `stop` (e.g. from a Ctrl-C handler) to
/// finish the batch in flight and return early; nothing half-written is ever committed.
pub fn index_items(catalog: &mut SqliteCatalog, encoder: &dyn Encoder, items: Vec<CatalogItem>, options: &IndexOptions, stop: &AtomicBool) -> Result<IndexReport> {
    let started = Instant::now();
    let spec = encoder.spec().clone();
    catalog.ensure_model(&spec.name)?;
    let known: HashMap<String, IndexedImage> = catalog.indexed_images()?;
    let mut report = IndexReport { seen: items.len(), ..Default::default() };

    // A bar on a terminal; a log line every ten seconds otherwise (CI logs, `nohup`), so a long
    // import always shows it is alive and how fast it goes.
    let on_terminal = std::io::stderr().is_terminal();
    let bar = if options.progress && on_terminal { ProgressBar::new(items.len() as u64) } else { ProgressBar::hidden() };
    let total = items.len();
    let mut last_log = Instant::now();
    bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()));

    // Recorded in the catalog (about once a second), so a server over it can say "indexing
    // 12,000 of 60,000" while it already searches what is committed. A failed write only costs
    // that display.
    let mut last_recorded: Option<Instant> = None;
    let mut record_progress = |catalog: &SqliteCatalog, done: usize, force: bool| {
        if force || last_recorded.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            last_recorded = Some(Instant::now());
            let progress = IndexingProgress { pid: std::process::id(), done, total };
            if let Err(e) = catalog.set_indexing_progress(Some(progress)) {
                tracing::debug!("could not record the progress in the catalog: {e:#}");
            }
        }
    };
    record_progress(catalog, 0, true);

    let batch_size = options.batch_size.max(1);
    let workers = encoder.parallelism().max(1);
    // Three stages joined by small bounded channels, so memory stays flat however large the
    // catalog is: one thread decodes the next batches (in parallel, with rayon), `workers`
    // threads run inference (one per encoder session), and this thread commits each encoded
    // batch to the catalog (SQLite wants one writer).
    //
    // Workers finish batches in whatever order the scheduler gives them, but the committer
    // writes them in the source's order, so product keys follow it and importing the same
    // photos twice gives the same catalog, key for key (keys break ties between equal scores,
    // and the likeness bands sample products by key). Each batch travels with a one-shot slot
    // for its result; the decoder queues the slots in order, and the committer waits on them
    // in that order. The slot queue's bound is what may be in flight.
    type Slot = SyncSender<Result<EncodedBatch>>;
    let (tx, rx) = sync_channel::<(DecodedBatch, Slot)>(workers + 1);
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    let (order_tx, order_rx) = sync_channel::<Receiver<Result<EncodedBatch>>>(4 * workers + 2);
    let indexed = std::thread::scope(|scope| -> Result<()> {
        let limits = &options.limits;
        let known = &known;
        let input = &spec.input;
        scope.spawn(move || {
            let mut items = items.into_iter();
            // Photos (content hashes) indexed, or sent to be encoded by this import: one listed
            // again under another product is encoded once, in the source's first place for it.
            let mut photos: HashSet<String> = known.values().map(|k| k.content_hash.clone()).collect();
            'decode: loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Decode several batches per parallel step: waking the thread pool for one
                // small batch of tiny images costs more than decoding them.
                let chunk: Vec<CatalogItem> = items.by_ref().take(batch_size * DECODE_BATCHES).collect();
                if chunk.is_empty() {
                    break;
                }
                let results: Vec<Result<Preparation, (String, String)>> = chunk.into_par_iter().map(|item| prepare_item(item, known, limits, input)).collect();
                let mut results = results.into_iter();
                loop {
                    let batch: Vec<_> = results.by_ref().take(batch_size).collect();
                    if batch.is_empty() {
                        break;
                    }
                    let (mut ready, mut failed, mut unchanged, mut refreshed) = (Vec::new(), Vec::new(), 0, Vec::new());
                    for r in batch {
                        match r {
                            Ok(Preparation::Encode(mut p)) => {
                                p.shares_photo = !photos.insert(p.hash.clone());
                                ready.push(*p);
                            }
                            Ok(Preparation::Unchanged) => unchanged += 1,
                            Ok(Preparation::Recolour { id, colour, metadata }) => {
                                unchanged += 1;
                                refreshed.push(IndexedChange { id, colour: Some(colour), metadata: Some(metadata) });
                            }
                            Ok(Preparation::Redescribe { id, metadata }) => {
                                unchanged += 1;
                                refreshed.push(IndexedChange { id, colour: None, metadata: Some(metadata) });
                            }
                            Err(f) => failed.push(f),
                        }
                    }
                    let (slot, result) = sync_channel(1);
                    if order_tx.send(result).is_err() || tx.send((DecodedBatch { ready, failed, unchanged, refreshed }, slot)).is_err() {
                        break 'decode;
                    }
                }
            }
        });
        for _ in 0..workers {
            let rx = rx.clone();
            scope.spawn(move || loop {
                let next = match rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => break,
                };
                let Ok((DecodedBatch { ready, failed, unchanged, refreshed }, slot)) = next else { break };
                let (mut tensors, mut same_photo) = (Vec::new(), Vec::new());
                let described: Vec<_> = ready
                    .into_iter()
                    .map(|p| {
                        match p.shares_photo {
                            true => same_photo.push(Some(p.tensor)),
                            false => {
                                tensors.push(p.tensor);
                                same_photo.push(None);
                            }
                        }
                        (p.item, p.stored, p.hash, p.colour.map(|c| c.descriptor.values()))
                    })
                    .collect();
                let encoded = match tensors.is_empty() {
                    true => Ok(Vec::new()),
                    false => encoder.encode(&tensors).context("running the image encoder"),
                }
                .map(|embeddings| {
                    let vectors = with_shared_photos(&described, embeddings, same_photo);
                    EncodedBatch { described, vectors, failed, unchanged, refreshed }
                });
                // The slot holds one result, so this never waits; it fails only when the
                // committer has given up (an error), and then there is nothing more to do.
                if slot.send(encoded).is_err() {
                    break;
                }
            });
        }
        // Only the workers hold the decoded-batch receiver now: when they stop (done, or this
        // thread gave up on an error), the decoder's sends fail and it stops too.
        drop(rx);

        // A product with each photo committed (content hash -> id), where a photo shared with a
        // product committed earlier is copied from.
        let mut photo_owners: HashMap<String, String> = known.iter().map(|(id, k)| (k.content_hash.clone(), id.clone())).collect();
        for result in order_rx {
            let encoded = result.recv().context("an encoder worker stopped before encoding its batch")?;
            let EncodedBatch { described, vectors, failed, unchanged, refreshed } = encoded?;
            report.unchanged += unchanged;
            if !refreshed.is_empty() {
                catalog.refresh_indexed(&refreshed)?;
                report.recoloured += refreshed.iter().filter(|c| c.colour.is_some()).count();
                report.redescribed += refreshed.iter().filter(|c| c.colour.is_none()).count();
            }
            bar.inc((unchanged + failed.len()) as u64);
            for (id, why) in &failed {
                bar.suspend(|| tracing::warn!("skipped {id}: {why}"));
            }
            report.failed.extend(failed);
            if described.is_empty() {
                continue;
            }
            let (embeddings, copied) = copy_shared_photos(catalog, encoder, &photo_owners, &described, vectors)?;
            report.copied += copied;
            report.embedded += described.len() - copied;
            if let Some(first) = embeddings.first() {
                catalog.bind_vector_space(&VectorSpace { model: spec.name.clone(), dim: first.vector.len() })?;
                if !crate::model::is_builtin(&spec.name) && catalog.model_description()?.is_none() {
                    catalog.set_model_description(&serde_json::to_string(&spec)?)?;
                }
            }
            let products: Vec<NewProduct> = described
                .into_iter()
                .zip(embeddings)
                .map(|((item, stored, hash, colour), e)| {
                    photo_owners.insert(hash.clone(), item.id.clone());
                    NewProduct { id: item.id, image: stored, content_hash: hash, metadata: item.metadata, vector: e.vector, max_pooled: e.max_pooled, colour }
                })
                .collect();
            catalog.upsert(&products)?;
            bar.inc(products.len() as u64);
            record_progress(catalog, report.indexed() + report.unchanged + report.failed.len(), false);
            if options.progress && !on_terminal && last_log.elapsed() >= Duration::from_secs(10) {
                last_log = Instant::now();
                let done = report.indexed() + report.unchanged + report.failed.len();
                let rate = report.embedded as f64 / started.elapsed().as_secs_f64().max(1e-9);
                tracing::info!("{done}/{total} products, {rate:.1} images/s");
            }
        }
        Ok(())
    });
    if let Err(e) = catalog.set_indexing_progress(None) {
        tracing::debug!("could not clear the progress record in the catalog: {e:#}");
    }
    indexed?;
    report.interrupted = stop.load(Ordering::Relaxed);
    bar.finish_and_clear();
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Catalog photos an int8 model is calibrated on: every activation's range settles within a
/// couple of hundred photos.
pub const CALIBRATION_PHOTOS: usize = 200;

/// How many inputs [`calibrate_int8`] observes for `items` photos (all readable): every
/// step-th photo, as it is and as a shopper would photograph it.
pub fn calibration_inputs(items: usize) -> usize {
    2 * items.div_ceil(calibration_step(items))
}

fn calibration_step(items: usize) -> usize {
    items.div_ceil(CALIBRATION_PHOTOS).max(1)
}

/// The int8 copy of built-in model `base`, calibrated on up to [`CALIBRATION_PHOTOS`] photos
/// spread evenly over `items` (photos that cannot be read are passed over), each also as a
/// shopper would photograph it ([`crate::perturb`], seeded). Why both: the same model encodes
/// the shoppers' photos, whose coloured backgrounds and light can reach activations a
/// catalog's plain shots never do (Fashion-MNIST's are grey on black); a range that misses them
/// saturates. Measured on Fashion-MNIST, perturbed P@10 was the same either way (0.7093 with
/// catalog shots alone, 0.7088 with both, 2,000 queries): the views cost ~1 s and guard the
/// catalogs that measurement does not cover. Its weights are `weight_bits` wide
/// ([`crate::model::quantise::WEIGHT_BITS`] for a copy other machines will run,
/// [`crate::model::quantise::local_weight_bits`] for one only this machine runs).
pub fn calibrate_int8(assets: &crate::assets::Assets, base: &str, items: &[CatalogItem], threads: usize, weight_bits: u8) -> Result<crate::model::ModelSpec> {
    use rand::SeedableRng;
    let spec = crate::model::resolve(assets, base)?;
    let step = calibration_step(items.len());
    let limits = DecodeLimits::default();
    let photos: Vec<Vec<f32>> = items
        .par_iter()
        .step_by(step)
        .enumerate()
        .filter_map(|(i, item)| {
            let bytes = match &item.image {
                ItemImage::File(path) => std::fs::read(path).ok()?,
                ItemImage::Bytes { bytes, .. } => bytes.clone(),
            };
            let image = preprocess::decode_reduced(&bytes, &limits, preprocess::needed_side(&spec.input, None)).ok()?;
            let shopper = crate::perturb::perturb(&image, &mut rand::rngs::StdRng::seed_from_u64(i as u64));
            Some([preprocess::prepare_image(&image, None, &spec.input), preprocess::prepare_image(&shopper, None, &spec.input)])
        })
        .flatten()
        .collect();
    anyhow::ensure!(!photos.is_empty(), "none of the catalog's photos could be read to calibrate {base}{}", crate::model::INT8_SUFFIX);
    let ranges = crate::encoder::observe_activation_ranges(&assets.onnxruntime_lib()?, &spec, &photos, threads)?;
    crate::model::int8_spec(assets, crate::model::Int8Calibration { base: base.to_string(), photos: photos.len(), ranges, weight_bits })
}

/// Reads, hashes and preprocesses one item, and takes its colour (from the model's input
/// pixels: the photo is resized once for both).
fn prepare_item(mut item: CatalogItem, known: &HashMap<String, IndexedImage>, limits: &DecodeLimits, input: &crate::model::InputSpec) -> Result<Preparation, (String, String)> {
    let fail = |why: String| (item.id.clone(), why);
    // Read a file once; in-memory bytes are only borrowed here (and copied once into the catalog
    // row below).
    let file_bytes;
    let bytes: &[u8] = match &item.image {
        ItemImage::File(path) => {
            file_bytes = std::fs::read(path).map_err(|e| fail(format!("reading {}: {e}", path.display())))?;
            &file_bytes
        }
        ItemImage::Bytes { bytes, .. } => bytes,
    };
    let hash = crate::types::content_hash(bytes);
    let indexed = known.get(&item.id).filter(|k| k.content_hash == hash);
    if let Some((indexed, colour)) = indexed.and_then(|k| Some((k, k.colour.as_deref()?))) {
        // The photo is as indexed; the source's row may not be (a new price, a renamed
        // product). A colour name computed at import is computed again from the stored
        // descriptor (so a catalog takes up a better naming rule too), unless the row now
        // names a colour itself.
        let mut metadata = item.metadata;
        if let (false, Some(computed)) = (names_a_colour(&metadata), indexed.metadata.get(COMPUTED_COLOUR_COLUMN)) {
            let name = colour::ColourDescriptor::from_values(colour).map(|d| d.name().to_string()).unwrap_or_else(|_| computed.clone());
            metadata.insert(COMPUTED_COLOUR_COLUMN.to_string(), name);
        }
        return Ok(match metadata == indexed.metadata {
            true => Preparation::Unchanged,
            false => Preparation::Redescribe { id: item.id, metadata },
        });
    }
    let image = preprocess::decode_reduced(bytes, limits, preprocess::needed_side(input, None)).map_err(|e| fail(format!("{}: {e}", describe(&item.image))))?;
    let pixels = preprocess::input_pixels(&image, None, input);
    let colour = colour::of_product(&pixels);
    if let Some(colour) = &colour {
        colour.name_in(&mut item.metadata);
    }
    if indexed.is_some() {
        return Ok(match colour {
            Some(colour) => Preparation::Recolour { id: item.id, colour: colour.descriptor.values(), metadata: item.metadata },
            None => Preparation::Unchanged,
        });
    }
    let tensor = pixels.tensor(input);
    let stored = match &item.image {
        ItemImage::File(path) => NewImage::File(path.clone()),
        ItemImage::Bytes { bytes, mime } => NewImage::Stored { bytes: bytes.clone(), mime: mime.clone() },
    };
    Ok(Preparation::Encode(Box::new(Prepared { item, stored, hash, tensor, colour, shares_photo: false })))
}

/// A worker's batch in the source's order: each item's embedding; an item sharing its photo
/// with one encoded in the same batch takes that one's; the other items sharing a photo keep
/// their input for the committer ([`copy_shared_photos`]). `same_photo` holds, per item,
/// `Some(input)` for those sharing a photo, `None` for those in `embeddings` (in order).
fn with_shared_photos(described: &[Described], embeddings: Vec<Embedding>, same_photo: Vec<Option<Vec<f32>>>) -> Vec<Vectors> {
    let mut embeddings = embeddings.into_iter();
    let mut encoded_here: HashMap<&str, usize> = HashMap::new();
    let mut vectors: Vec<Vectors> = Vec::with_capacity(described.len());
    for ((_, _, hash, _), input) in described.iter().zip(same_photo) {
        let shared = encoded_here.get(hash.as_str()).and_then(|&first| match &vectors[first] {
            Vectors::Encoded(e) => Some(e.clone()),
            Vectors::Copied(_) | Vectors::SamePhoto(_) => None,
        });
        match (input, shared) {
            (Some(_), Some(e)) => vectors.push(Vectors::Copied(e)),
            (Some(input), None) => vectors.push(Vectors::SamePhoto(input)),
            (None, _) => {
                // An encoder answering fewer embeddings than inputs leaves the batch short,
                // which the committer refuses.
                let Some(e) = embeddings.next() else { break };
                encoded_here.insert(hash, vectors.len());
                vectors.push(Vectors::Encoded(e));
            }
        }
    }
    vectors
}

/// The committer's half of sharing photos: each item's embedding, copying the vectors of a
/// product committed before with the same photo (`photo_owners`: content hash -> the id most
/// likely to have it), and encoding the inputs of those whose photo no product has any more
/// (changed earlier in this import). Returns the embeddings in order and how many were copied.
fn copy_shared_photos(
    catalog: &SqliteCatalog,
    encoder: &dyn Encoder,
    photo_owners: &HashMap<String, String>,
    described: &[Described],
    vectors: Vec<Vectors>,
) -> Result<(Vec<Embedding>, usize)> {
    if vectors.len() != described.len() {
        anyhow::bail!("the image encoder returned {} embeddings for {} photos", vectors.len(), described.len());
    }
    let (mut embeddings, mut to_encode, mut copied) = (Vec::with_capacity(vectors.len()), Vec::new(), 0);
    for (i, (v, (_, _, hash, _))) in vectors.into_iter().zip(described).enumerate() {
        match v {
            Vectors::Encoded(e) => embeddings.push(Some(e)),
            Vectors::Copied(e) => {
                copied += 1;
                embeddings.push(Some(e));
            }
            Vectors::SamePhoto(input) => {
                // A damaged stored vector is not copied: the photo is encoded again instead.
                let stored = catalog.vectors_of_photo(hash, photo_owners.get(hash).map(String::as_str)).unwrap_or_else(|e| {
                    tracing::warn!("not copying the vectors of the same photo ({e:#}): encoding it");
                    None
                });
                match stored {
                    Some(StoredVectors { vector, max_pooled }) => {
                        copied += 1;
                        embeddings.push(Some(Embedding { vector, max_pooled }));
                    }
                    None => {
                        to_encode.push((i, input));
                        embeddings.push(None);
                    }
                }
            }
        }
    }
    if !to_encode.is_empty() {
        let (places, inputs): (Vec<usize>, Vec<Vec<f32>>) = to_encode.into_iter().unzip();
        let encoded = encoder.encode(&inputs).context("running the image encoder")?;
        for (place, e) in places.into_iter().zip(encoded) {
            embeddings[place] = Some(e);
        }
    }
    let embeddings: Option<Vec<Embedding>> = embeddings.into_iter().collect();
    let embeddings = embeddings.context("the image encoder returned fewer embeddings than photos")?;
    Ok((embeddings, copied))
}

fn describe(image: &ItemImage) -> String {
    match image {
        ItemImage::File(path) => path.display().to_string(),
        ItemImage::Bytes { .. } => "stored image".to_string(),
    }
}

/// The Fashion Product Images layout (`images/ID.jpg` + `styles.csv`) as catalog items, with
/// every CSV column kept as metadata, plus the report of rows that had to be skipped.
/// `id_column` names the column of product ids ([`kaggle::read_catalog`]).
pub fn read_kaggle(dir: &std::path::Path, id_column: &str) -> Result<(Vec<CatalogItem>, kaggle::KaggleReport)> {
    let (rows, report) = kaggle::read_catalog(dir, id_column)?;
    let items = rows.into_iter().map(|row| CatalogItem { id: row.id, image: ItemImage::File(row.image), metadata: row.metadata.into_iter().collect() }).collect();
    Ok((items, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_takes_every_step_th_photo_twice() {
        assert_eq!(calibration_inputs(0), 0);
        assert_eq!(calibration_inputs(20), 40, "a small import: every photo");
        assert_eq!(calibration_inputs(300), 300, "every second photo");
        assert_eq!(calibration_inputs(60_000), 2 * CALIBRATION_PHOTOS);
    }
}
