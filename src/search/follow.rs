//! Keeping a running engine in step with its catalog file, which other processes change
//! (`lookalike index`, `remove`, `tune`, other servers): following the change log, taking up a
//! new foreground head or search space, re-centring a catalog that grew, and rebuilding the
//! search graph without dead entries. Each rebuild happens beside the index searches use, and
//! replaces it in one step under the catalog lock, so searches and writes go on meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

use super::{poisoned, IndexInSpace, SearchEngine};
use crate::catalog::{graph_paths, SqliteCatalog};
use crate::colour::{ColourDescriptor, ColourTable};
use crate::host::available_memory_bytes;
use crate::index::qdrant::{QdrantIndex, StoredProduct};
use crate::index::VectorIndex;
use crate::kind::KindTable;
use crate::space::SearchSpace;
use crate::store::{
    collection_points, collection_sent_through, collection_synced_space, graph_turn, open_index, open_qdrant, payload_images, read_collection_description, send_changes_since,
    write_graph, Store,
};
use crate::types::IndexingProgress;

impl SearchEngine {
    /// Brings the index in step with the catalog file: products that other processes
    /// (`lookalike index`, `remove`, another server) added, replaced or removed since the last
    /// call become searchable or disappear. Its own changes are in the index already and are
    /// skipped. Returns how many products changed. It reads a few rows when nothing changed: a
    /// server follows a few times a second ([`SearchEngine::follow_catalog_in_background`]).
    ///
    /// It also takes up what `tune` changed: a new foreground head at once, and a new search
    /// space (a projection learned or dropped, a photo adapter learned or dropped), by building
    /// the index in it while searches go on in the old one where the indexed vectors change
    /// ([`SearchEngine::take_up_new_space_with`]).
    pub fn follow_catalog(&self) -> Result<usize> {
        let (changed, space_moved) = self.follow_changes()?;
        if space_moved {
            self.take_up_new_space_with(|| {}).context(TAKE_UP_FAILED)?;
        }
        Ok(changed)
    }

    /// [`SearchEngine::follow_catalog`] as a server runs it: a new search space is built on a
    /// thread of its own (as [`SearchEngine::compact_graph_in_background`] rebuilds the graph),
    /// so that this returns at once and the next calls go on applying other processes' changes
    /// to the index searches use while the new one is built (a minute or more at a million
    /// products); the build then replays them into the new index too.
    pub fn follow_catalog_in_background(self: &Arc<Self>) -> Result<usize> {
        let (changed, space_moved) = self.follow_changes()?;
        // A take-up or compaction already running: the next call looks again.
        if space_moved && !self.compacting.load(Ordering::Acquire) {
            let engine = Arc::clone(self);
            let started = std::thread::Builder::new().name("space-take-up".into()).spawn(move || {
                if let Err(e) = engine.take_up_new_space_with(|| {}) {
                    tracing::warn!("{TAKE_UP_FAILED}: {e:#}");
                }
            });
            if let Err(e) = started {
                tracing::warn!("could not start building the index in the catalog's new search space (retrying): {e}");
            }
        }
        Ok(changed)
    }

    /// The part of following that is quick: the indexing progress, the foreground head and the
    /// change log. Returns how many products changed and whether the search space moved.
    fn follow_changes(&self) -> Result<(usize, bool)> {
        if self.catalog.is_none() {
            // Every server writes to the collection itself: only its description (search
            // space, photo adapter, head) changes behind this server's back.
            let due =
                self.described.as_ref().map(|d| d.read().map(|d| d.checked.elapsed() >= DESCRIPTION_CHECK_INTERVAL)).transpose().map_err(|_| poisoned("collection description"))?;
            if due == Some(true) {
                self.follow_collection_description().context("following the collection's description")?;
            }
            return Ok((0, false));
        }
        let mut catalog = self.lock_catalog()?;
        let indexing = catalog.indexing_progress()?;
        *self.indexing.lock().map_err(|_| poisoned("indexing progress"))? = indexing;
        self.follow_foreground_head(&catalog)?;
        let space_moved = catalog.search_space_generation()? != self.space_generation.load(Ordering::Acquire) || self.collection_synced(&catalog)?;
        if !space_moved {
            self.follow_points_collection(&catalog)?;
        }
        Ok((self.catch_up(&mut catalog)?, space_moved))
    }

    /// A server with the catalog on a Qdrant collection: searches the collection `lookalike
    /// sync --swap` filled once the sync has recorded it in the catalog (one settings row read
    /// a round). A swap that also changed the search space is taken up with it instead
    /// ([`SearchEngine::take_up_new_space_with`] opens the collection the description names).
    fn follow_points_collection(&self, catalog: &SqliteCatalog) -> Result<()> {
        let Some(store) = &self.config.store else { return Ok(()) };
        let Some(points) = collection_points(catalog, store)? else { return Ok(()) };
        if self.space_awaiting_sync.lock().map_err(|_| poisoned("space awaiting sync"))?.is_some() {
            return Ok(());
        }
        let mut seen = self.points_seen.lock().map_err(|_| poisoned("points collection seen"))?;
        if seen.as_deref() == Some(points.as_str()) {
            return Ok(());
        }
        // Taken as seen first: a failure below is said once, and the collection is not opened
        // again each round should the description name another (a second catalog's sync).
        *seen = Some(points.clone());
        if self.read_index()?.collection().is_none_or(|collection| collection.points() == points) {
            return Ok(());
        }
        let space = self.current_space()?;
        let mut collection = open_qdrant(catalog, &space, store)?;
        // This server wrote its changes to the old collection until now; `sync` sent the new
        // one the catalog's changes up to this position (under the catalog lock, so nothing of
        // this server's slips between the two).
        if let Some(since) = collection_sent_through(catalog, store)? {
            send_changes_since(catalog, &space, &mut collection, since)?;
        }
        tracing::info!("collection {:?} now holds the points (`lookalike sync --swap`): searching it", collection.points());
        self.write_index()?.store = Store::Qdrant(collection);
        Ok(())
    }

    /// Whether `lookalike sync` has filled the Qdrant collection in the search space this
    /// engine waits to take up (one settings row read while it waits; nothing otherwise).
    fn collection_synced(&self, catalog: &SqliteCatalog) -> Result<bool> {
        let (Some(store), Some(awaited)) = (&self.config.store, self.space_awaiting_sync.lock().map_err(|_| poisoned("space awaiting sync"))?.clone()) else {
            return Ok(false);
        };
        Ok(collection_synced_space(catalog, store)?.as_deref() == Some(awaited.as_str()))
    }

    /// Builds the index in the search space the catalog has now and puts both in place of the
    /// old ones in one step. The build reads the catalog through a connection of its own and
    /// holds no lock, so searches and changes go on meanwhile (in the old space); the changes
    /// made during the build are then replayed into the new index under the catalog lock, as
    /// [`SearchEngine::compact_graph`] does. When the new space maps catalog vectors as the old
    /// one did (only the photo adapter changed), the space alone is replaced and nothing built.
    ///
    /// A Qdrant collection holds vectors in the space they were sent in: an engine on one takes
    /// up a space that changes the vectors once `lookalike sync` has sent them again in it
    /// (the catalog records that, [`collection_synced_space`]), and until then searches in the
    /// old one, which is what the collection holds.
    ///
    /// `while_building` runs once the new index is built and before the changes made meanwhile
    /// are replayed into it, with no lock held: tests use it to follow changes inside that
    /// window for certain, as [`SearchEngine::compact_graph_with`]'s do.
    ///
    /// The build holds a second index beside the one searches use. When the machine has not
    /// the memory for it (with a quarter to spare), the old space stays until a restart, which
    /// builds only the new one, rather than risk the server being killed for memory.
    pub fn take_up_new_space_with(&self, while_building: impl FnOnce()) -> Result<()> {
        // Not beside a graph compaction: each replays the change log from its own start, which
        // the other's saved graph may trim. The follower tries again on its next round.
        if self.compacting.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let _done = ClearOnDrop(&self.compacting);
        let (space, since, catalog_path, needed) = self.with_catalog(|c| {
            // Taken as seen first, so that a failure below is said once, not on every follow,
            // and a `tune` finishing after this read is taken up next time.
            self.space_generation.store(c.search_space_generation()?, Ordering::Release);
            let space = SearchSpace::for_catalog(c)?;
            let dim = space.output_dim(c.vector_space()?.map_or(0, |s| s.dim));
            Ok((space, c.generation()?, c.path().to_path_buf(), index_bytes_estimate(c.vector_count()?, dim)))
        })?;
        let space = Arc::new(space);
        let index_unchanged = self.with_catalog(|_| {
            // Under the catalog lock, as every replacement of the space: nothing re-centres
            // between the comparison and the swap.
            let mut index = self.write_index()?;
            let same_vectors = space.fingerprint() == index.space.fingerprint();
            if same_vectors {
                index.space = space.clone();
            }
            Ok(same_vectors)
        })?;
        if index_unchanged {
            // Only how query photos are mapped changed (a photo adapter learned or dropped):
            // the indexed vectors are the same, so nothing is built.
            tracing::info!("the catalog's search space changed ({}) but not its indexed vectors: searches now run in the catalog's new search space", space.describe());
            return Ok(());
        }
        if let Some(store) = &self.config.store {
            // A Qdrant collection keeps the vectors it was sent, in the space they were sent in.
            let fingerprint = space.fingerprint();
            let synced = self.with_catalog(|c| collection_synced_space(c, store))?;
            let mut awaited = self.space_awaiting_sync.lock().map_err(|_| poisoned("space awaiting sync"))?;
            if synced.as_ref() != Some(&fingerprint) {
                if awaited.as_ref() != Some(&fingerprint) {
                    tracing::warn!(
                        "the catalog's search space changed ({}): run `lookalike sync --swap` to send the collection its vectors in it; searches go on in the old space until it has",
                        space.describe()
                    );
                }
                *awaited = Some(fingerprint);
                return Ok(());
            }
            // Taken as done first, so that a failure below is said once (as above).
            *awaited = None;
            tracing::info!("the collection holds its vectors in the catalog's new search space ({}): searching in it", space.describe());
        } else {
            if let Some(available) = available_memory_bytes().filter(|&available| !fits_in_memory(needed, available)) {
                tracing::warn!(
                    "the catalog's search space changed ({}), but building the index in it beside the one searches use needs about {} MB and {} MB are available: searches go on in the old space; restart the server to search in the new one",
                    space.describe(),
                    needed >> 20,
                    available >> 20
                );
                return Ok(());
            }
            tracing::info!("the catalog's search space changed ({}): building the index in it; searches go on in the old one meanwhile", space.describe());
        }
        let reader = SqliteCatalog::open_existing(&catalog_path)?;
        let mut fresh = open_index(&reader, &space, &self.config)?;
        drop(reader);
        while_building();
        let catalog = self.lock_catalog()?;
        match (fresh.collection_mut(), &self.config.store) {
            (Some(collection), Some(store)) => {
                // The collection was filled by `sync`, which sent the catalog's changes up to
                // its position; this server wrote its own since to the old collection, or in
                // the old space, until now. Whole products: some are new to the collection.
                let sent = collection_sent_through(&catalog, store)?.map_or(since, |sent| sent.min(since));
                send_changes_since(&catalog, &space, collection, sent)?;
            }
            _ => replay_changes(&catalog, since, &space, fresh.index_mut())?,
        }
        let products = fresh.index().len();
        let old = std::mem::replace(&mut *self.write_index()?, IndexInSpace { space, store: fresh });
        self.space_chosen_at.store(products, Ordering::Release);
        // Freed with no lock held: giving back a large index takes a moment.
        drop(catalog);
        drop(old);
        tracing::info!("searches now run in the catalog's new search space");
        Ok(())
    }

    /// Loads the catalog's foreground head again when `tune --localise` (or `--localise
    /// --off`) has changed it since this engine loaded it: products in photos are then found
    /// as the new head finds them, without a restart. The head only finds products in a
    /// query photo, so searches in flight and the index are unaffected.
    fn follow_foreground_head(&self, catalog: &SqliteCatalog) -> Result<()> {
        let generation = catalog.foreground_generation()?;
        if generation == self.foreground_generation.load(Ordering::Acquire) {
            return Ok(());
        }
        let head = catalog.foreground_head()?;
        tracing::info!("the catalog's foreground head changed: products in photos are now found {}", if head.is_some() { "by the learned head" } else { "training-free" });
        *self.foreground.write().map_err(|_| poisoned("foreground head"))? = head.map(Arc::new);
        self.foreground_generation.store(generation, Ordering::Release);
        Ok(())
    }

    /// A server without the catalog: takes up a new description of its collection, which
    /// `lookalike sync` (or a server with the catalog, at its start) writes after `tune`
    /// changed the search space, photo adapter or foreground head, as a server with the
    /// catalog takes those up from the catalog. One small read (the description's digest) when
    /// nothing changed; the server's follower asks every `DESCRIPTION_CHECK_INTERVAL`.
    /// Whether a new description was taken up.
    pub fn follow_collection_description(&self) -> Result<bool> {
        let (Some(described), Some(store)) = (&self.described, &self.config.store) else { return Ok(false) };
        let current = {
            let mut described = described.write().map_err(|_| poisoned("collection description"))?;
            described.checked = std::time::Instant::now();
            described.digest.clone()
        };
        let (fresh, digest) = {
            let index = self.read_index()?;
            let collection = index.collection().context("a server without a catalog searches a Qdrant collection")?;
            if collection.description_digest()?.is_none_or(|digest| digest == current) {
                return Ok(false);
            }
            read_collection_description(collection, store)?
        };
        if fresh.model != self.model_name() {
            // Taken as seen, so that this is said once.
            described.write().map_err(|_| poisoned("collection description"))?.digest = digest;
            tracing::warn!("collection {:?} now holds vectors of model {:?}: restart this server with --model {}", store.collection, fresh.model, fresh.model);
            return Ok(false);
        }
        let space = Arc::new(fresh.search_space()?);
        let foreground = fresh.foreground_head()?.map(Arc::new);
        // Vectors in another space may differ in size too: the collection is opened again, as
        // it is when the points moved to another collection (`sync --swap`).
        let points = fresh.points(&store.collection).to_string();
        let same_points = self.read_index()?.collection().is_some_and(|collection| collection.points() == points);
        let reopened = match same_points && space.fingerprint() == self.current_space()?.fingerprint() {
            true => None,
            false => Some(QdrantIndex::connect_cluster(store.clone())?.open_existing_points(points.clone())?),
        };
        {
            let mut index = self.write_index()?;
            index.space = space.clone();
            if let Some(collection) = reopened {
                index.store = Store::Qdrant(collection);
            }
        }
        *self.foreground.write().map_err(|_| poisoned("foreground head"))? = foreground;
        let mut described = described.write().map_err(|_| poisoned("collection description"))?;
        described.description = Arc::new(fresh);
        described.digest = digest;
        tracing::info!("the collection's description changed: searching collection {points:?} in its search space ({})", space.describe());
        Ok(true)
    }

    /// The `index` run adding products to this catalog, as the follower last saw it.
    pub fn indexing(&self) -> Option<IndexingProgress> {
        self.indexing.lock().ok().and_then(|p| *p)
    }

    /// [`SearchEngine::follow_catalog`]'s work, with the catalog lock held by the caller (so
    /// no change of this process's own can slip between reading the log and the index write).
    fn catch_up(&self, catalog: &mut SqliteCatalog) -> Result<usize> {
        let feed = catalog.changes_after(self.followed.load(Ordering::Acquire))?;
        if !feed.complete {
            // Part of the log was trimmed before this process read it (another process saved a
            // search graph that absorbed it): the changes cannot be told apart, so reload all.
            tracing::info!("reloading the index: other processes changed the catalog faster than its change log could be followed");
            let fresh = open_index(catalog, &*self.current_space()?, &self.config)?;
            let colours = ColourTable::load(catalog)?;
            let kinds = KindTable::load(catalog)?;
            self.write_index()?.store = fresh;
            *self.write_colours()? = colours;
            *self.write_kinds()? = kinds;
            self.followed.store(feed.latest, Ordering::Release);
            return catalog.vector_count();
        }
        let space = self.current_space()?;
        let mut changes = Vec::with_capacity(feed.keys.len());
        for &key in &feed.keys {
            let vector = catalog.vector(key)?.map(|v| space.map(&v)).transpose()?;
            let product = if vector.is_some() { catalog.get(key)? } else { None };
            let colour = if vector.is_some() { catalog.colour(key)?.map(|c| ColourDescriptor::from_values(&c)).transpose()? } else { None };
            changes.push((key, vector, product, colour));
        }
        if !changes.is_empty() {
            // The photos points carry, before any lock: a large one's copy is made here.
            let images = match self.read_index()?.collection().is_some() {
                true => payload_images(catalog, &changes.iter().map(|(_, _, product, _)| product.as_ref()).collect::<Vec<_>>()),
                false => vec![None; changes.len()],
            };
            let mut index = self.write_index()?;
            let mut colours = self.write_colours()?;
            let mut kinds = self.write_kinds()?;
            for ((key, vector, product, colour), image) in changes.iter().zip(images) {
                match (vector, product) {
                    (Some(vector), Some(product)) => {
                        let stored = StoredProduct::of(product.clone(), colour.map(|c| c.values()));
                        index.put(*key, vector, stored, image.as_deref())?;
                        colours.put(*key, *colour, product.colour());
                        kinds.put(*key, &product.metadata);
                    }
                    _ => {
                        index.index_mut().remove(*key)?;
                        colours.remove(*key);
                        kinds.remove(*key);
                    }
                }
            }
            tracing::debug!("followed {} catalog changes made by other processes", changes.len());
        }
        self.followed.store(feed.latest, Ordering::Release);
        if !changes.is_empty() {
            self.recentre_if_grown(catalog)?;
        }
        Ok(changes.len())
    }

    /// An untuned catalog searches vectors centred on its mean, chosen when the engine opened.
    /// Once other processes have doubled or halved the catalog (a server started on an empty
    /// catalog that `index` is filling, say), that mean no longer fits: the space is chosen
    /// again and the index rebuilt in it, as a restart would. A Qdrant collection keeps the
    /// vectors it was sent (`lookalike sync` re-sends them), so it is left as it is.
    fn recentre_if_grown(&self, catalog: &SqliteCatalog) -> Result<()> {
        if self.config.store.is_some() || matches!(*self.current_space()?, SearchSpace::Tuned(_)) {
            return Ok(());
        }
        // The index holds exactly the catalog's vectors now that the changes are applied.
        let (now, then) = (self.read_index()?.index().len(), self.space_chosen_at.load(Ordering::Acquire));
        // The same "similar size" rule as `SearchSpace::for_catalog`'s kept mean, so that when
        // this re-centres, that recomputes (and keeps) the mean rather than reusing the old one.
        if now == 0 || (then > 0 && now <= then.saturating_mul(2) && now.saturating_mul(2) >= then) {
            return Ok(());
        }
        tracing::info!("the catalog went from {then} to {now} products: centring the search space on its mean again");
        let space = Arc::new(SearchSpace::for_catalog(catalog)?);
        let fresh = open_index(catalog, &space, &self.config)?;
        // In one write: a search sees the old space with the old vectors, or the new with the
        // new. (Writers hold the catalog lock, as the caller does.)
        *self.write_index()? = IndexInSpace { space, store: fresh };
        self.space_chosen_at.store(now, Ordering::Release);
        Ok(())
    }

    /// Rebuilds the search graph without the dead entries that removed and replaced products
    /// leave in it, once they reach a quarter of the live ones ([`crate::index::ann::AnnIndex::needs_compaction`]);
    /// the rebuilt graph is saved for the next start. Returns how many dead entries were
    /// dropped, or `None` when nothing was due (an exact index, a graph still lean enough, or a
    /// compaction already running).
    ///
    /// Searches and catalog changes go on meanwhile: the graph is built from a copy of the rows
    /// (so, while it runs, the vectors and the graph are held twice), the changes made during
    /// the build are replayed into it, and it replaces the old graph in one step.
    pub fn compact_graph(&self) -> Result<Option<usize>> {
        self.compact_graph_with(|| {})
    }

    /// [`SearchEngine::compact_graph`], running `while_rebuilding` once the new graph is built
    /// from the copied rows and before the changes made meanwhile are replayed into it. No lock
    /// is held then: tests use it to make searches and changes happen inside that window
    /// for certain, rather than hoping a thread is scheduled there.
    pub fn compact_graph_with(&self, while_rebuilding: impl FnOnce()) -> Result<Option<usize>> {
        if self.catalog.is_none() || self.compacting.swap(true, Ordering::AcqRel) {
            return Ok(None);
        }
        let _done = ClearOnDrop(&self.compacting);

        // Writers hold the catalog lock until their index write is done, so every change up to
        // `since` is in the index when the rows are copied; later ones are replayed below.
        // Other processes' changes are caught up with first: the log up to `since` is trimmed
        // once the new graph is saved, so none of it may still be unread.
        let (since, catalog_path) = self.with_catalog(|c| {
            self.catch_up(c)?;
            Ok((c.generation()?, c.path().to_path_buf()))
        })?;
        let (space, compaction) = {
            let index = self.read_index()?;
            (index.space.clone(), index.compaction())
        };
        let Some(compaction) = compaction else {
            return Ok(None);
        };
        let dropped = compaction.tombstones;
        tracing::info!("rebuilding the search graph: {dropped} of its entries are removed or replaced products");
        let mut fresh = compaction.build()?;
        while_rebuilding();
        // Saved as of `since`: the graph holds every change up to it (and perhaps a few later
        // ones, which a load replays again harmlessly).
        let (graph_path, stamp_path) = graph_paths(&catalog_path);
        let saved = match Arc::ptr_eq(&space, &self.current_space()?) {
            true => {
                let _turn = graph_turn(&graph_path);
                write_graph(&fresh, &space.fingerprint(), since, &graph_path, &stamp_path)
            }
            // Re-centred meanwhile: the graph saved for the new space stays.
            false => Err(anyhow::anyhow!("the search space changed while the graph was rebuilt")),
        };
        if let Err(e) = &saved {
            tracing::warn!("could not save the rebuilt search graph (it is rebuilt again at the next start): {e:#}");
        }

        let catalog = self.lock_catalog()?;
        if saved.is_ok() {
            catalog.forget_changes_through(since)?;
        }
        replay_changes(&catalog, since, &space, &mut fresh)?;
        let mut index = self.write_index()?;
        if !Arc::ptr_eq(&space, &index.space) {
            // The catalog grew enough meanwhile for the space to be chosen again, and the index
            // was rebuilt in it: this graph, in the old space, is not needed.
            return Ok(None);
        }
        let old = std::mem::replace(&mut index.store, Store::Graph(fresh));
        drop(index);
        // Freed with no lock held: giving back gigabytes takes a moment.
        drop(catalog);
        drop(old);
        tracing::info!("search graph rebuilt without {dropped} dead entries");
        Ok(Some(dropped))
    }

    /// Starts [`SearchEngine::compact_graph`] on a thread of its own when it is due, so that a
    /// catalog change does not wait for a rebuild. A server calls this after each change; the
    /// command line need not, as a graph is compacted when it is opened.
    ///
    /// The rebuild holds a second copy of the index while it runs. When the machine has not
    /// that much memory available (with a quarter to spare), it is left to the next start, whose
    /// rebuild copies nothing ([`crate::index::ann::AnnIndex::compacted`]), rather than risk the server being
    /// killed for memory.
    pub fn compact_graph_in_background(self: &Arc<Self>) {
        if self.compacting.load(Ordering::Acquire) {
            return;
        }
        let Some(needed) = self.index.read().ok().and_then(|index| index.compaction_due()) else {
            return;
        };
        if let Some(available) = available_memory_bytes() {
            if !fits_in_memory(needed, available) {
                if !self.compaction_put_off.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "the search graph is due for a rebuild without its dead entries, but that needs about {} MB and {} MB are available: it is rebuilt at the next start",
                        needed >> 20,
                        available >> 20
                    );
                }
                return;
            }
        }
        let engine = Arc::clone(self);
        let started = std::thread::Builder::new().name("graph-compaction".into()).spawn(move || {
            if let Err(e) = engine.compact_graph() {
                tracing::warn!("rebuilding the search graph failed (searches go on with the old one): {e:#}");
            }
        });
        if let Err(e) = started {
            tracing::warn!("could not start rebuilding the search graph: {e}");
        }
    }
}

/// Replays into `index` (in `space`) the catalog's changes after log position `since`: what
/// was written while a fresh index was built from rows read as of `since`, before it replaces
/// the one searches use. The caller holds the catalog lock, so nothing more changes meanwhile.
fn replay_changes(catalog: &SqliteCatalog, since: i64, space: &SearchSpace, index: &mut dyn VectorIndex) -> Result<()> {
    for key in catalog.changed_since(since)? {
        match catalog.vector(key)? {
            Some(vector) => index.upsert(key, &space.map(&vector)?)?,
            None => index.remove(key)?,
        }
    }
    Ok(())
}

/// How often a server without the catalog asks its collection whether the description
/// changed ([`SearchEngine::follow_collection_description`]).
const DESCRIPTION_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// What [`SearchEngine::follow_catalog`] says when a new search space could not be taken up.
const TAKE_UP_FAILED: &str = "taking up the catalog's new search space (searches go on in the old one until the next `tune` or a restart)";

/// Whether a second copy of an index of `needed` bytes can be built beside the first in
/// `available` bytes, with a quarter to spare (the allocator, the build's own working memory).
fn fits_in_memory(needed: usize, available: usize) -> bool {
    needed.saturating_add(needed / 4) <= available
}

/// About how many bytes an embedded index of `products` vectors of `dim` dimensions takes: the
/// f32 rows, the graph's int8 copy of them and its links. (An estimate for the memory check: a
/// catalog small enough for the exact scan holds less.)
fn index_bytes_estimate(products: usize, dim: usize) -> usize {
    const LINK_BYTES: usize = 512;
    products.saturating_mul(dim.saturating_mul(5).saturating_add(LINK_BYTES))
}

/// Clears a flag when dropped: "this is running" for as long as a scope runs, however it ends.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
