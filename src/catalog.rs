//! The product catalog: ids, metadata, images and stored vectors, in one SQLite file.
//!
//! SQLite is the source of truth. A product and its vectors are written in the same transaction,
//! so an import killed at any instant (Ctrl-C, `kill -9`, power loss) leaves every product either
//! complete or absent, and re-running the import resumes where it stopped. Vector indexes
//! ([`crate::index`]) are built from, and kept in step with, the vectors stored here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::Serialize;

use crate::projection::Projection;
use crate::types::{Filter, ImageRef, IndexingProgress, Key, Metadata, NewImage, NewProduct, Product, VectorSpace};

/// An indexed product's image, as an import sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedImage {
    pub content_hash: String,
    /// Its colour descriptor (`None`: catalogs made before them have none, and a damaged one
    /// is made again).
    pub colour: Option<Vec<f32>>,
    /// Its metadata as stored (empty where the stored text does not parse).
    pub metadata: Metadata,
}

/// A change to a product already indexed with the same image ([`SqliteCatalog::refresh_indexed`]).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedChange {
    pub id: String,
    /// Its colour descriptor, where it had none.
    pub colour: Option<Vec<f32>>,
    /// Its metadata, where it changed (or gained its colour's name).
    pub metadata: Option<Metadata>,
}

/// Whether `table` has `column` (`table` is one of the schema's own names, never user input).
fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"))?.exists([column])
}

/// Which stored vector to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorKind {
    /// The model's search vector.
    Primary,
    /// Max-pooled features (the original design's recipe), kept for evaluation.
    MaxPooled,
    /// The photo's colour descriptor ([`crate::colour`]), checksummed like the vector.
    Colour,
}

/// SQLite-backed catalog (the embedded default).
pub struct SqliteCatalog {
    conn: Connection,
    path: PathBuf,
    /// Change-log positions this connection wrote and [`SqliteCatalog::changes_after`] has not
    /// reported yet: a server following the log skips its own changes (already in its index).
    written: BTreeSet<i64>,
}

/// The setting [`SqliteCatalog::foreground_generation`] reads.
const FOREGROUND_GENERATION: &str = "foreground_generation";

/// The setting [`SqliteCatalog::search_space_generation`] reads.
const SEARCH_SPACE_GENERATION: &str = "search_space_generation";

/// Counts one more change of what the setting `name` counts, in the transaction that makes it.
fn bump_generation(tx: &Transaction<'_>, name: &str) -> Result<()> {
    tx.execute("INSERT INTO settings(name, value) VALUES (?1, '1') ON CONFLICT(name) DO UPDATE SET value = CAST(value AS INTEGER) + 1", [name])?;
    Ok(())
}

/// How long a write waits for another process's write transaction (an `index` batch, a
/// server's API change) before giving up with a message naming that process.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What other processes changed in a catalog since a point of its change log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeFeed {
    /// The newest change-log position; pass it as `seen` next time.
    pub latest: i64,
    /// Products whose vectors another connection wrote or removed since `seen`, each once.
    pub keys: Vec<Key>,
    /// False when part of the log after `seen` was trimmed (a saved search graph absorbed it),
    /// so `keys` may miss changes: the reader must reload everything.
    pub complete: bool,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    image_path TEXT,
    image_mime TEXT,
    content_hash TEXT NOT NULL,
    metadata TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    key INTEGER PRIMARY KEY REFERENCES products(key) ON DELETE CASCADE,
    bytes BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS projection (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    label TEXT NOT NULL,
    input_dim INTEGER NOT NULL,
    hidden INTEGER NOT NULL,
    output_dim INTEGER NOT NULL,
    weights BLOB NOT NULL,
    report TEXT NOT NULL
);
-- Where products are in a photo: the foreground head `lookalike tune --localise` learns.
CREATE TABLE IF NOT EXISTS foreground (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    model TEXT NOT NULL,
    head BLOB NOT NULL,
    report TEXT NOT NULL
);
-- How shoppers' photos differ from the catalog's shots: the photo adapter `lookalike tune
-- --adapt` learns (a map in the search space, for query photos only).
CREATE TABLE IF NOT EXISTS adapter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    model TEXT NOT NULL,
    weights BLOB NOT NULL,
    crc INTEGER NOT NULL,
    report TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vectors (
    key INTEGER PRIMARY KEY REFERENCES products(key) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    max_pooled BLOB
);
-- Every write to a product's vector, in order: lets a saved search graph catch up with the
-- catalog (replay the keys changed since it was saved) instead of being rebuilt.
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key INTEGER NOT NULL
);
";

impl SqliteCatalog {
    /// Opens (creating if needed) the catalog at `path`.
    pub fn open(path: &Path) -> Result<SqliteCatalog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))?;
        }
        let conn = Connection::open(path).with_context(|| format!("opening catalog {}", path.display()))?;
        Self::init(conn, path)
    }

    /// Opens an existing catalog, failing if there is none (for read-only commands).
    pub fn open_existing(path: &Path) -> Result<SqliteCatalog> {
        if !path.is_file() {
            bail!("no catalog at {} — create one with `lookalike index --db {} ...`", path.display(), path.display());
        }
        Self::open(path)
    }

    fn init(conn: Connection, path: &Path) -> Result<SqliteCatalog> {
        let context = || format!("initialising catalog {}", path.display());
        // WAL: readers never block the writer, and a crash mid-transaction rolls back cleanly.
        conn.pragma_update(None, "journal_mode", "WAL").with_context(context)?;
        conn.pragma_update(None, "synchronous", "NORMAL").with_context(context)?;
        conn.pragma_update(None, "foreign_keys", "ON").with_context(context)?;
        conn.busy_handler(Some(wait_for_writer)).with_context(context)?;
        let damaged = || format!("{} is not a lookalike catalog or is damaged (try `lookalike repair --db {}`)", path.display(), path.display());
        conn.execute_batch(SCHEMA).with_context(damaged)?;
        // Columns added since the first catalogs: old rows keep NULL. A NULL checksum is not
        // checked; a NULL colour is filled in by the next `index` run, without the model.
        for (column, added) in
            [("crc", "ALTER TABLE vectors ADD COLUMN crc INTEGER"), ("colour", "ALTER TABLE vectors ADD COLUMN colour BLOB; ALTER TABLE vectors ADD COLUMN colour_crc INTEGER")]
        {
            if !has_column(&conn, "vectors", column).with_context(damaged)? {
                conn.execute_batch(added).with_context(damaged)?;
            }
        }
        Ok(SqliteCatalog { conn, path: path.to_path_buf(), written: BTreeSet::new() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts a write transaction that takes the write lock at once (`BEGIN IMMEDIATE`). A
    /// deferred transaction that reads first and writes later cannot wait for another writer:
    /// SQLite answers "database is locked" at once when the other commits in between. This one
    /// waits up to [`BUSY_TIMEOUT`], then fails naming whoever holds the catalog.
    fn write_transaction(&mut self) -> Result<Transaction<'_>> {
        let path = &self.path;
        self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| explain_busy(path, e))
    }

    /// The model this catalog's vectors come from, if any vector has been stored.
    pub fn vector_space(&self) -> Result<Option<VectorSpace>> {
        let model = self.setting("model")?;
        let dim = self.setting("dim")?;
        match (model, dim) {
            (Some(model), Some(dim)) => Ok(Some(VectorSpace { model, dim: dim.parse().context("corrupt 'dim' setting")? })),
            _ => Ok(None),
        }
    }

    /// Refuses a model other than the one this catalog's vectors come from: vectors of two
    /// models never mix, in an import or in a search. The one check of it.
    pub fn ensure_model(&self, model: &str) -> Result<()> {
        match self.vector_space()? {
            // The catalog remembers its model (a built-in one by name, one's own by its JSON
            // description), so the way out is to leave --model off, not to name it.
            Some(existing) if existing.model != model => bail!(
                "catalog {} holds {}-d vectors of model {:?}, not {:?}: leave out --model to use the catalog's own model, or use a new --db",
                self.path.display(),
                existing.dim,
                existing.model,
                model
            ),
            _ => Ok(()),
        }
    }

    /// Records the model on first use; refuses to mix vectors of different models.
    pub fn bind_vector_space(&mut self, space: &VectorSpace) -> Result<()> {
        self.ensure_model(&space.model)?;
        match self.vector_space()? {
            Some(existing) if existing == *space => Ok(()),
            Some(existing) => bail!(
                "catalog {} holds {}-d vectors; it cannot take {}-d vectors of the same model {:?} (a changed model description?). Use a new --db",
                self.path.display(),
                existing.dim,
                space.dim,
                existing.model
            ),
            None => {
                let tx = self.write_transaction()?;
                tx.execute("INSERT OR REPLACE INTO settings(name, value) VALUES ('model', ?1)", [&space.model])?;
                tx.execute("INSERT OR REPLACE INTO settings(name, value) VALUES ('dim', ?1)", [space.dim.to_string()])?;
                tx.commit()?;
                Ok(())
            }
        }
    }

    /// The catalog-tuned projection (see [`crate::tune`]), if `lookalike tune` made one.
    pub fn projection(&self) -> Result<Option<Projection>> {
        let row: Option<(String, i64, i64, i64, Vec<u8>)> = self
            .conn
            .query_row("SELECT label, input_dim, hidden, output_dim, weights FROM projection WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .optional()?;
        row.map(|(label, input, hidden, output, weights)| {
            Projection::from_weights(&label, input as usize, hidden as usize, output as usize, &weights)
                .with_context(|| format!("the tuned projection in {} is damaged; run `lookalike tune` again", self.path.display()))
        })
        .transpose()
    }

    /// Stores `projection` (replacing any earlier one) with its training report (JSON) and
    /// `settings` that go with it (the likeness bands measured in its space), in one
    /// transaction: a server following the catalog sees all of it or none.
    pub fn save_projection(&mut self, projection: &Projection, report: &str, settings: &[(&str, &str)]) -> Result<()> {
        let tx = self.write_transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO projection(id, label, input_dim, hidden, output_dim, weights, report) VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)",
            params![projection.label, projection.input_dim as i64, projection.hidden as i64, projection.output_dim as i64, projection.weights_bytes(), report],
        )?;
        for (name, value) in settings {
            tx.execute("INSERT OR REPLACE INTO settings(name, value) VALUES (?1, ?2)", params![name, value])?;
        }
        bump_generation(&tx, SEARCH_SPACE_GENERATION)?;
        tx.commit()?;
        Ok(())
    }

    /// Drops the tuned projection: search goes back to the model's own features.
    pub fn clear_projection(&mut self) -> Result<bool> {
        let tx = self.write_transaction()?;
        let dropped = tx.execute("DELETE FROM projection", [])? > 0;
        bump_generation(&tx, SEARCH_SPACE_GENERATION)?;
        tx.commit()?;
        Ok(dropped)
    }

    /// How many times the search space was changed by `tune` (a projection or a photo adapter
    /// stored or dropped; 0: never, or before this was counted). A server reads it on every
    /// follow of the catalog and, when it has moved, builds its index in the new space
    /// ([`crate::search::SearchEngine::follow_catalog`]), so `tune` needs no restart.
    pub fn search_space_generation(&self) -> Result<i64> {
        Ok(self.setting(SEARCH_SPACE_GENERATION)?.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// The foreground head `lookalike tune --localise` learned, if any (and if it was learned
    /// for this catalog's model: another model's features mean something else).
    pub fn foreground_head(&self) -> Result<Option<crate::localise::ForegroundHead>> {
        let row: Option<(String, Vec<u8>)> = self.conn.query_row("SELECT model, head FROM foreground WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        let model = self.vector_space()?.map(|s| s.model);
        match row {
            Some((trained_for, bytes)) if Some(&trained_for) == model.as_ref() => Ok(Some(
                crate::localise::ForegroundHead::from_bytes(&bytes)
                    .with_context(|| format!("the foreground head in {} is damaged; run `lookalike tune --localise` again", self.path.display()))?,
            )),
            _ => Ok(None),
        }
    }

    /// The training report (JSON) of the stored foreground head, if any (for any model).
    pub fn foreground_head_report(&self) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT report FROM foreground WHERE id = 1", [], |r| r.get(0)).optional()?)
    }

    /// Stores the foreground head (replacing any earlier one) with its training report (JSON).
    pub fn save_foreground_head(&mut self, model: &str, head: &crate::localise::ForegroundHead, report: &str) -> Result<()> {
        let tx = self.write_transaction()?;
        tx.execute("INSERT OR REPLACE INTO foreground(id, model, head, report) VALUES (1, ?1, ?2, ?3)", params![model, head.to_bytes(), report])?;
        bump_generation(&tx, FOREGROUND_GENERATION)?;
        tx.commit()?;
        Ok(())
    }

    /// How many times the foreground head was stored or dropped (0: never, or before this was
    /// counted). One row: a server reads it on every follow of the catalog and loads the head
    /// again when it has moved, so `tune --localise` takes effect without a restart.
    pub fn foreground_generation(&self) -> Result<i64> {
        Ok(self.setting(FOREGROUND_GENERATION)?.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// The photo adapter `lookalike tune --adapt` learned, if any, for this catalog's model
    /// (another model's vectors mean something else).
    pub fn photo_adapter(&self) -> Result<Option<crate::adapter::PhotoAdapter>> {
        let row: Option<(String, Vec<u8>, i64)> =
            self.conn.query_row("SELECT model, weights, crc FROM adapter WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?;
        let model = self.vector_space()?.map(|s| s.model);
        let damaged = || format!("the photo adapter in {} is damaged; run `lookalike tune --adapt` again (or drop it: `lookalike tune --adapt --off`)", self.path.display());
        match row {
            Some((trained_for, bytes, crc)) if Some(&trained_for) == model.as_ref() => {
                ensure!(i64::from(crc32fast::hash(&bytes)) == crc, "{}", damaged());
                Ok(Some(crate::adapter::PhotoAdapter::from_bytes(&bytes).with_context(damaged)?))
            }
            _ => Ok(None),
        }
    }

    /// The training report (JSON) of the stored photo adapter, if any.
    pub fn photo_adapter_report(&self) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT report FROM adapter WHERE id = 1", [], |r| r.get(0)).optional()?)
    }

    /// Stores the photo adapter (replacing any earlier one), checksummed, with its report.
    pub fn save_photo_adapter(&mut self, model: &str, adapter: &crate::adapter::PhotoAdapter, report: &str) -> Result<()> {
        let bytes = adapter.to_bytes();
        let crc = i64::from(crc32fast::hash(&bytes));
        let tx = self.write_transaction()?;
        tx.execute("INSERT OR REPLACE INTO adapter(id, model, weights, crc, report) VALUES (1, ?1, ?2, ?3, ?4)", params![model, bytes, crc, report])?;
        bump_generation(&tx, SEARCH_SPACE_GENERATION)?;
        tx.commit()?;
        Ok(())
    }

    /// Drops the photo adapter: query photos are searched as encoded again.
    pub fn clear_photo_adapter(&mut self) -> Result<bool> {
        let tx = self.write_transaction()?;
        let dropped = tx.execute("DELETE FROM adapter", [])? > 0;
        bump_generation(&tx, SEARCH_SPACE_GENERATION)?;
        tx.commit()?;
        Ok(dropped)
    }

    /// Drops the foreground head: localisation goes back to the training-free rule.
    pub fn clear_foreground_head(&mut self) -> Result<bool> {
        let tx = self.write_transaction()?;
        let dropped = tx.execute("DELETE FROM foreground", [])? > 0;
        bump_generation(&tx, FOREGROUND_GENERATION)?;
        tx.commit()?;
        Ok(dropped)
    }

    /// The full description of a user-supplied model, kept so the catalog can be searched later
    /// without repeating `--model`.
    pub fn model_description(&self) -> Result<Option<String>> {
        self.setting("model_spec")
    }

    pub fn set_model_description(&mut self, json: &str) -> Result<()> {
        self.conn.execute("INSERT OR REPLACE INTO settings(name, value) VALUES ('model_spec', ?1)", [json])?;
        Ok(())
    }

    /// How the int8 copy that imported this float catalog's photos (`index --import-precision
    /// int8`) was calibrated (JSON), kept so that later imports encode with the same copy
    /// rather than calibrating again.
    pub fn import_calibration(&self) -> Result<Option<String>> {
        self.setting("import_int8_calibration")
    }

    pub fn set_import_calibration(&self, json: &str) -> Result<()> {
        self.set_setting("import_int8_calibration", json)
    }

    pub fn setting(&self, name: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM settings WHERE name = ?1", [name], |r| r.get(0)).optional()?)
    }

    pub fn set_setting(&self, name: &str, value: &str) -> Result<()> {
        self.conn
            .execute("INSERT OR REPLACE INTO settings(name, value) VALUES (?1, ?2)", [name, value])
            .map_err(|e| explain_busy(&self.path, e))
            .with_context(|| format!("writing setting {name:?} to {}", self.path.display()))?;
        Ok(())
    }

    /// The position of the latest vector write in the change log (0 for none).
    pub fn generation(&self) -> Result<i64> {
        Ok(self.conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM changes", [], |r| r.get(0))?)
    }

    /// Keys whose vectors were written or removed after `generation`.
    pub fn changed_since(&self, generation: i64) -> Result<Vec<Key>> {
        let mut stmt = self.conn.prepare("SELECT DISTINCT key FROM changes WHERE seq > ?1")?;
        let rows = stmt.query_map([generation], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets log entries up to `generation` (a saved graph has absorbed them).
    pub fn forget_changes_through(&self, generation: i64) -> Result<()> {
        self.conn.execute("DELETE FROM changes WHERE seq <= ?1", [generation])?;
        Ok(())
    }

    /// Number of stored vectors.
    pub fn vector_count(&self) -> Result<usize> {
        let n: i64 = self.conn.query_row("SELECT COUNT(*) FROM vectors", [], |r| r.get(0))?;
        Ok(n as usize)
    }

    /// Content hashes of all products by id, so an import can skip unchanged images without
    /// one query per file.
    pub fn content_hashes(&self) -> Result<HashMap<String, String>> {
        Ok(self.indexed_images()?.into_iter().map(|(id, image)| (id, image.content_hash)).collect())
    }

    /// What an import needs to know of each indexed product (by id): its image's hash, its
    /// colour descriptor (if stored and intact) and its metadata.
    pub fn indexed_images(&self) -> Result<HashMap<String, IndexedImage>> {
        let mut stmt = self.conn.prepare("SELECT p.id, p.content_hash, v.colour, v.colour_crc, p.metadata FROM products p JOIN vectors v ON v.key = p.key")?;
        let rows = stmt.query_map([], |r| {
            let (blob, crc): (Option<Vec<u8>>, Option<i64>) = (r.get(2)?, r.get(3)?);
            let colour = blob.filter(|b| verify_vector(b, crc).is_ok()).and_then(|b| {
                let mut values = Vec::new();
                decode_vector(&b, &mut values).ok().map(|()| values)
            });
            let metadata: String = r.get(4)?;
            Ok((r.get(0)?, IndexedImage { content_hash: r.get(1)?, colour, metadata: serde_json::from_str(&metadata).unwrap_or_default() }))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every stored colour descriptor (key, values), checked against its checksum.
    pub fn colours(&self) -> Result<Vec<(Key, Vec<f32>)>> {
        let mut out = Vec::new();
        self.for_each_vector(VectorKind::Colour, |key, values| {
            out.push((key, values.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    /// The colour descriptor of one product, if stored.
    pub fn colour(&self, key: Key) -> Result<Option<Vec<f32>>> {
        let row: Option<(Option<Vec<u8>>, Option<i64>)> =
            self.conn.query_row("SELECT colour, colour_crc FROM vectors WHERE key = ?1", [key], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        let Some((Some(blob), crc)) = row else { return Ok(None) };
        verify_vector(&blob, crc).with_context(|| format!("colour of product key {key}: {}", self.damaged_hint()))?;
        let mut values = Vec::new();
        decode_vector(&blob, &mut values)?;
        Ok(Some(values))
    }

    /// Stores, for products already indexed (by id; ids not in the catalog are skipped), their
    /// colour descriptor and their metadata where given, in one transaction: how `index` fills
    /// in colours for a catalog made before them, and takes up a changed CSV row (a new price,
    /// name or category), without re-running the model. Each change is logged, so servers
    /// following the catalog pick it up.
    pub fn refresh_indexed(&mut self, changes: &[IndexedChange]) -> Result<usize> {
        let tx = self.write_transaction()?;
        let mut logged = Vec::new();
        {
            let mut find = tx.prepare_cached("SELECT key FROM products WHERE id = ?1")?;
            let mut put = tx.prepare_cached("UPDATE vectors SET colour = ?2, colour_crc = ?3 WHERE key = ?1")?;
            let mut meta = tx.prepare_cached("UPDATE products SET metadata = ?2 WHERE key = ?1")?;
            for IndexedChange { id, colour, metadata } in changes {
                let Some(key): Option<Key> = find.query_row([id], |r| r.get(0)).optional()? else { continue };
                if let Some(colour) = colour {
                    let blob = encode_vector(colour);
                    put.execute(params![key, blob, i64::from(crc32fast::hash(&blob))])?;
                }
                if let Some(metadata) = metadata {
                    meta.execute(params![key, serde_json::to_string(metadata)?])?;
                }
                logged.push(log_change(&tx, key)?);
            }
        }
        tx.commit().with_context(|| format!("writing to catalog {}", self.path.display()))?;
        let n = logged.len();
        self.written.extend(logged);
        Ok(n)
    }

    /// Streams every stored vector of `kind` (key, vector) to `visit`, in key order.
    pub fn for_each_vector(&self, kind: VectorKind, mut visit: impl FnMut(Key, &[f32]) -> Result<()>) -> Result<()> {
        let sql = match kind {
            VectorKind::Primary => "SELECT key, vector, crc FROM vectors ORDER BY key",
            VectorKind::MaxPooled => "SELECT key, max_pooled, NULL FROM vectors WHERE max_pooled IS NOT NULL ORDER BY key",
            VectorKind::Colour => "SELECT key, colour, colour_crc FROM vectors WHERE colour IS NOT NULL ORDER BY key",
        };
        let mut stmt = self.conn.prepare(sql).with_context(|| self.damaged_hint())?;
        let mut rows = stmt.query([])?;
        let mut buf = Vec::new();
        while let Some(row) = rows.next().with_context(|| self.damaged_hint())? {
            let key: Key = row.get(0)?;
            let blob = row.get_ref(1)?.as_blob()?;
            verify_vector(blob, row.get(2)?).with_context(|| format!("vector of product key {key}: {}", self.damaged_hint()))?;
            decode_vector(blob, &mut buf).with_context(|| format!("vector of product key {key}"))?;
            visit(key, &buf)?;
        }
        Ok(())
    }

    fn damaged_hint(&self) -> String {
        format!("reading {} (if it is damaged, `lookalike check --db {}` tells what, `lookalike repair` recovers)", self.path.display(), self.path.display())
    }

    /// Checks the catalog: SQLite's own structure check, every vector against its checksum and
    /// shape, and products and vectors pairing up. Reads everything; nothing is changed.
    pub fn check(&self) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        let mut stmt = self.conn.prepare("PRAGMA quick_check")?;
        let problems: Vec<String> = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<_>>()?;
        report.structure = problems.into_iter().filter(|p| p != "ok").collect();
        report.products = self.len()?;
        report.vectors = self.vector_count()?;
        let dim = self.vector_space()?.map(|s| s.dim);
        let mut stmt = self.conn.prepare("SELECT v.key, v.vector, v.crc, p.id FROM vectors v LEFT JOIN products p ON p.key = v.key ORDER BY v.key")?;
        let mut rows = stmt.query([])?;
        let mut buf = Vec::new();
        while let Some(row) = rows.next()? {
            let key: Key = row.get(0)?;
            let blob = row.get_ref(1)?.as_blob()?;
            let id: Option<String> = row.get(3)?;
            let Some(id) = id else {
                report.orphan_vectors.push(key);
                continue;
            };
            let fault = verify_vector(blob, row.get(2)?)
                .err()
                .or_else(|| decode_vector(blob, &mut buf).err())
                .or_else(|| (dim.is_some_and(|d| d != buf.len())).then(|| anyhow::anyhow!("has {} dimensions, the catalog's are {dim:?}", buf.len())));
            if let Some(fault) = fault {
                report.damaged_vectors.push((id, fault.to_string()));
            }
        }
        let missing: i64 = self.conn.query_row("SELECT COUNT(*) FROM products p WHERE NOT EXISTS (SELECT 1 FROM vectors v WHERE v.key = p.key)", [], |r| r.get(0))?;
        report.products_without_vector = missing as usize;
        Ok(report)
    }

    /// Removes what [`SqliteCatalog::check`] found damaged in vectors (damaged and orphan
    /// vectors), logging the keys so a saved search graph drops them too. The products stay;
    /// `lookalike index` re-embeds products that have no vector.
    pub fn drop_damaged_vectors(&mut self, report: &CheckReport) -> Result<usize> {
        let tx = self.write_transaction()?;
        let (mut dropped, mut logged) = (0, Vec::new());
        for key in &report.orphan_vectors {
            dropped += tx.execute("DELETE FROM vectors WHERE key = ?1", [key])?;
            logged.push(log_change(&tx, *key)?);
        }
        for (id, _) in &report.damaged_vectors {
            let key: Option<Key> = tx.query_row("SELECT key FROM products WHERE id = ?1", [id], |r| r.get(0)).optional()?;
            if let Some(key) = key {
                dropped += tx.execute("DELETE FROM vectors WHERE key = ?1", [key])?;
                logged.push(log_change(&tx, key)?);
            }
        }
        tx.commit()?;
        self.written.extend(logged);
        Ok(dropped)
    }

    /// The newest position of the change log, including trimmed entries (0 for none).
    pub fn latest_change(&self) -> Result<i64> {
        Ok(self.conn.query_row("SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0)", [], |r| r.get(0))?)
    }

    /// The products other connections (another process, or another connection of this one)
    /// changed after change-log position `seen`. What this connection wrote itself is left out:
    /// its caller has applied it already.
    pub fn changes_after(&mut self, seen: i64) -> Result<ChangeFeed> {
        let latest = self.latest_change()?;
        if latest <= seen {
            return Ok(ChangeFeed { latest: seen, keys: Vec::new(), complete: true });
        }
        let mut stmt = self.conn.prepare_cached("SELECT seq, key FROM changes WHERE seq > ?1 ORDER BY seq")?;
        let rows: Vec<(i64, Key)> = stmt.query_map([seen], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        let complete = rows.len() as i64 == latest - seen;
        let mut keys = Vec::new();
        let mut distinct = std::collections::HashSet::new();
        for (seq, key) in rows {
            if !self.written.contains(&seq) && distinct.insert(key) {
                keys.push(key);
            }
        }
        self.written = self.written.split_off(&(latest + 1));
        Ok(ChangeFeed { latest, keys, complete })
    }

    /// The `index` run in progress on this catalog, if its process is still alive.
    pub fn indexing_progress(&self) -> Result<Option<IndexingProgress>> {
        let Some(text) = self.setting("indexing")? else { return Ok(None) };
        let progress: Option<IndexingProgress> = serde_json::from_str(&text).ok();
        Ok(progress.filter(|p| process_alive(p.pid)))
    }

    /// Records how far this process's `index` run is; `None` when it is over.
    pub fn set_indexing_progress(&self, progress: Option<IndexingProgress>) -> Result<()> {
        match progress {
            Some(p) => self.set_setting("indexing", &serde_json::to_string(&p)?),
            None => {
                self.conn.execute("DELETE FROM settings WHERE name = 'indexing'", []).map_err(|e| explain_busy(&self.path, e))?;
                Ok(())
            }
        }
    }

    /// A product's photo as bytes: kept in the catalog, or the file recorded at import (read by
    /// [`read_image_file`]'s rule).
    pub fn image_bytes(&self, key: Key, image: &ImageRef) -> Result<Vec<u8>> {
        match image {
            ImageRef::File(path) => read_image_file(path),
            ImageRef::Stored { .. } => self.stored_image(key)?.map(|(bytes, _)| bytes).with_context(|| format!("the stored image of product key {key} is missing")),
            ImageRef::Collection => anyhow::bail!("product key {key} is known from a Qdrant collection, not this catalog"),
        }
    }

    /// A product's photo, decoded (with the default limits; EXIF orientation applied).
    pub fn decoded_image(&self, key: Key, image: &ImageRef) -> Result<image::DynamicImage> {
        let bytes = self.image_bytes(key, image)?;
        crate::preprocess::decode(&bytes, &crate::preprocess::DecodeLimits::default()).map_err(|e| anyhow::anyhow!("product key {key}: {e}"))
    }

    /// The stored search vector of one product ("more like this" without re-encoding).
    pub fn vector(&self, key: Key) -> Result<Option<Vec<f32>>> {
        let row: Option<(Vec<u8>, Option<i64>)> = self.conn.query_row("SELECT vector, crc FROM vectors WHERE key = ?1", [key], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        row.map(|(b, crc)| {
            verify_vector(&b, crc).with_context(|| format!("vector of product key {key}: {}", self.damaged_hint()))?;
            let mut v = Vec::new();
            decode_vector(&b, &mut v)?;
            Ok(v)
        })
        .transpose()
    }

    /// Up to `n` stored search vectors spread evenly over the catalog by key: a sample of what
    /// products look like to the index (see `SearchEngine::likeness_bands`).
    pub fn sample_vectors(&self, n: usize) -> Result<Vec<(Key, Vec<f32>)>> {
        let keys: Vec<Key> = self.conn.prepare("SELECT key FROM vectors ORDER BY key")?.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        let step = keys.len().div_ceil(n.max(1)).max(1);
        let mut sample = Vec::with_capacity(n.min(keys.len()));
        for &key in keys.iter().step_by(step) {
            if let Some(vector) = self.vector(key)? {
                sample.push((key, vector));
            }
        }
        Ok(sample)
    }

    /// How many products have each value of each metadata column: (column, value, count),
    /// ordered by column then by descending count. The raw material of search facets.
    pub fn value_counts(&self) -> Result<Vec<(String, String, usize)>> {
        let mut stmt = self.conn.prepare(
            "SELECT m.key, m.value, COUNT(*) AS n FROM products p, json_each(p.metadata) m \
             WHERE m.type = 'text' GROUP BY m.key, m.value ORDER BY m.key, n DESC, m.value",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)? as usize)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// All products (for evaluation and facets).
    pub fn all_products(&self) -> Result<Vec<Product>> {
        let mut stmt = self.conn.prepare(&format!("{SELECT_PRODUCT} ORDER BY key"))?;
        let rows = stmt.query_map([], row_to_product)?;
        rows.map(|r| r.map_err(anyhow::Error::from).and_then(|p| p)).collect()
    }
}

const SELECT_PRODUCT: &str = "SELECT key, id, image_path, image_mime, content_hash, metadata FROM products";

fn row_to_product(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Product>> {
    let key: Key = row.get(0)?;
    let id: String = row.get(1)?;
    let path: Option<String> = row.get(2)?;
    let mime: Option<String> = row.get(3)?;
    let content_hash: String = row.get(4)?;
    let metadata: String = row.get(5)?;
    let image = match (path, mime) {
        (Some(p), _) => ImageRef::File(PathBuf::from(p)),
        (None, Some(mime)) => ImageRef::Stored { mime },
        (None, None) => ImageRef::Stored { mime: "application/octet-stream".into() },
    };
    Ok(serde_json::from_str::<Metadata>(&metadata).with_context(|| format!("metadata of product {id:?} is not a JSON object of strings")).map(|metadata| Product {
        key,
        id,
        image,
        content_hash,
        metadata,
    }))
}

/// Appends `key` to the change log; returns its position.
fn log_change(tx: &Transaction<'_>, key: Key) -> Result<i64> {
    tx.prepare_cached("INSERT INTO changes(key) VALUES (?1)")?.execute([key])?;
    Ok(tx.last_insert_rowid())
}

/// How long [`wait_for_writer`] sleeps between attempts to take the catalog.
const BUSY_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// SQLite's busy handler on every catalog connection: while another process writes, tries
/// again every few milliseconds, for up to [`BUSY_TIMEOUT`]. As SQLite's own `busy_timeout`
/// does, but it says (at debug level) when a wait begins: a wait is normal, between writers
/// taking turns, and the log line is how tests know for certain that a process is waiting.
fn wait_for_writer(attempt: i32) -> bool {
    if attempt == 0 {
        tracing::debug!("waiting for another process's write to the catalog");
    }
    if BUSY_POLL.saturating_mul(attempt.max(0) as u32) >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(BUSY_POLL);
    true
}

/// Turns SQLite's "database is locked" after [`BUSY_TIMEOUT`] into a message that says which
/// other processes have the catalog open, so the user knows what to wait for or stop.
fn explain_busy(path: &Path, err: rusqlite::Error) -> anyhow::Error {
    if err.sqlite_error_code() != Some(rusqlite::ErrorCode::DatabaseBusy) {
        return err.into();
    }
    let others = processes_using(path);
    let who = if others.is_empty() { "another process".to_string() } else { others.iter().map(|(pid, command)| format!("pid {pid}: {command}")).collect::<Vec<_>>().join("; ") };
    anyhow::anyhow!("catalog {} is busy: {who} kept it locked for writing for over {} s. Try again when it has finished", path.display(), BUSY_TIMEOUT.as_secs())
}

/// Other processes that have the catalog file or its write-ahead log open (from /proc; empty
/// where that is not available), with their command lines.
fn processes_using(path: &Path) -> Vec<(u32, String)> {
    let Ok(target) = path.canonicalize() else { return Vec::new() };
    let wal = with_suffix(&target, "-wal");
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        let uses = fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p == target || p == wal));
        if uses {
            let command = std::fs::read(entry.path().join("cmdline")).map(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim().to_string()).unwrap_or_default();
            found.push((pid, command));
        }
    }
    found
}

/// Whether process `pid` exists (always true where /proc is not available).
fn process_alive(pid: u32) -> bool {
    !Path::new("/proc/self").exists() || Path::new(&format!("/proc/{pid}")).exists()
}

/// Vectors are stored as little-endian f32 bytes.
fn encode_vector(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Where a catalog's search graph is saved: beside the catalog file (`shop.db.graph`, and its
/// stamp `shop.db.graph.json`; a graph over a principal subspace adds `shop.db.graph.basis`).
pub fn graph_paths(catalog: &Path) -> (PathBuf, PathBuf) {
    (with_suffix(catalog, ".graph"), with_suffix(catalog, ".graph.json"))
}

/// What [`salvage`] recovered.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SalvageReport {
    /// Rows copied per table.
    pub copied: BTreeMap<String, usize>,
    /// Stretches of rows that could not be read, per table.
    pub unreadable: BTreeMap<String, usize>,
    /// Where the damaged file was moved.
    pub damaged_copy: PathBuf,
}

/// Reads an image file the catalog recorded at import, unless a symbolic link is anywhere on
/// its path now. The importers record real paths, so a link there was put in afterwards and
/// could point anywhere on the machine (a replaced file or a replaced folder alike). The one
/// rule for every reader: the server, evaluation and tuning.
pub fn read_image_file(path: &Path) -> Result<Vec<u8>> {
    let real = path.canonicalize().with_context(|| format!("reading {}", path.display()))?;
    let is_file = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file());
    if real != path || !is_file {
        bail!("not reading {}: a symbolic link is on its path, or it is no regular file (re-run `lookalike index` if the catalog moved)", path.display());
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// `path` with `suffix` appended to its file name (`shop.db` → `shop.db-wal`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Rebuilds a catalog whose SQLite structure is damaged (a torn write, a bad disk block): every
/// row that can still be read is copied into a new file, table by table in key order, stepping
/// past unreadable stretches; then the new file takes the catalog's name and the damaged one is
/// kept beside it as `<name>.damaged`. The change log is not copied (a saved search graph is
/// rebuilt anyway).
pub fn salvage(path: &Path) -> Result<SalvageReport> {
    use rusqlite::types::Value;
    let fresh_path = with_suffix(path, ".salvage");
    for p in [fresh_path.clone(), with_suffix(&fresh_path, "-wal"), with_suffix(&fresh_path, "-shm")] {
        let _ = std::fs::remove_file(p);
    }
    let old = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).with_context(|| format!("opening {} to salvage it", path.display()))?;
    let mut report = SalvageReport::default();
    {
        let fresh = SqliteCatalog::open(&fresh_path)?;
        // Products before the rows that reference them.
        let tables: [(&str, &str, &str); 5] = [
            ("settings", "rowid", "name, value"),
            ("products", "key", "key, id, image_path, image_mime, content_hash, metadata"),
            ("images", "key", "key, bytes"),
            ("projection", "id", "id, label, input_dim, hidden, output_dim, weights, report"),
            ("vectors", "key", "key, vector, max_pooled, crc, colour, colour_crc"),
        ];
        for (table, key, columns) in tables {
            // Only the columns the damaged file has: one made before a column was added (the
            // vectors' checksums, their colours) still gives up the rest.
            let present = |column: &str| has_column(&old, table, column).unwrap_or(true);
            let columns = columns.split(',').map(str::trim).filter(|c| present(c)).collect::<Vec<_>>().join(", ");
            let columns = columns.as_str();
            let width = columns.split(',').count();
            let insert = format!("INSERT OR IGNORE INTO {table}({columns}) VALUES ({})", vec!["?"; width].join(", "));
            let select = format!("SELECT {key}, {columns} FROM {table} WHERE {key} > ?1 ORDER BY {key}");
            let (mut copied, mut unreadable, mut after, mut skip) = (0usize, 0usize, i64::MIN, 1i64);
            'table: while unreadable < 64 {
                let Ok(mut stmt) = old.prepare(&select) else {
                    unreadable += 1;
                    break;
                };
                let Ok(mut rows) = stmt.query([after]) else {
                    unreadable += 1;
                    break;
                };
                loop {
                    match rows.next() {
                        Ok(Some(row)) => {
                            let Ok(k) = row.get::<_, i64>(0) else { continue };
                            after = k;
                            skip = 1;
                            let values: Vec<Value> = (1..=width).filter_map(|i| row.get::<_, Value>(i).ok()).collect();
                            if values.len() == width && fresh.conn.execute(&insert, rusqlite::params_from_iter(values)).is_ok() {
                                copied += 1;
                            }
                        }
                        Ok(None) => break 'table,
                        Err(_) => {
                            // Step past the unreadable stretch, further each time it persists.
                            unreadable += 1;
                            after = after.saturating_add(skip);
                            skip = skip.saturating_mul(4);
                            continue 'table;
                        }
                    }
                }
            }
            report.copied.insert(table.to_string(), copied);
            report.unreadable.insert(table.to_string(), unreadable);
        }
        fresh.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE").ok();
    }
    drop(old);
    let damaged = with_suffix(path, ".damaged");
    std::fs::rename(path, &damaged).with_context(|| format!("moving {} aside", path.display()))?;
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::rename(with_suffix(path, suffix), with_suffix(&damaged, suffix));
    }
    std::fs::rename(&fresh_path, path).with_context(|| format!("moving the salvaged catalog to {}", path.display()))?;
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(with_suffix(&fresh_path, suffix));
    }
    report.damaged_copy = damaged;
    Ok(report)
}

/// What [`repair`] did.
#[derive(Debug)]
pub struct RepairReport {
    /// Set when the file itself was damaged and its readable rows were copied into a new one.
    pub salvaged: Option<SalvageReport>,
    /// Damaged or orphaned vectors dropped (their products are re-embedded by `index`).
    pub dropped_vectors: usize,
    /// The catalog as it is now.
    pub after: CheckReport,
}

/// Recovers a damaged catalog: a file SQLite cannot walk is salvaged row by row first
/// ([`salvage`]); then damaged and orphaned vectors are dropped and the saved search graph is
/// deleted (it is rebuilt from the catalog at the next start). Products that lost their vector
/// are embedded again by running the same `lookalike index`.
pub fn repair(path: &Path) -> Result<RepairReport> {
    if !path.is_file() {
        bail!("no catalog at {}", path.display());
    }
    let structural = match SqliteCatalog::open(path).and_then(|c| c.check()) {
        Ok(report) => !report.structure.is_empty(),
        Err(e) => {
            tracing::warn!("{} cannot be read as is ({e:#}); salvaging its readable rows", path.display());
            true
        }
    };
    let salvaged = if structural {
        let salvaged = salvage(path)?;
        if salvaged.copied.get("products").copied().unwrap_or(0) == 0 {
            bail!("nothing could be salvaged from {} (kept as {}): re-index the shop's photos into a new --db", path.display(), salvaged.damaged_copy.display());
        }
        Some(salvaged)
    } else {
        None
    };
    let mut catalog = SqliteCatalog::open(path)?;
    let report = catalog.check()?;
    let dropped_vectors = catalog.drop_damaged_vectors(&report)?;
    let (graph, stamp) = graph_paths(path);
    // The graph's basis file too (`index::ann::basis_path`: the graph's name + ".basis").
    for file in [with_suffix(path, ".graph.basis"), graph, stamp] {
        if file.exists() {
            std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
        }
    }
    let after = catalog.check()?;
    if !after.is_sound() {
        bail!("{} is still damaged after repair; re-index it into a new --db", path.display());
    }
    Ok(RepairReport { salvaged, dropped_vectors, after })
}

/// Compares a stored vector with its checksum (rows written before checksums have none).
fn verify_vector(blob: &[u8], crc: Option<i64>) -> Result<()> {
    match crc {
        Some(expected) if i64::from(crc32fast::hash(blob)) != expected => bail!("checksum mismatch: the stored vector is damaged"),
        _ => Ok(()),
    }
}

/// What [`SqliteCatalog::check`] found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CheckReport {
    /// SQLite's structural problems (empty when the file is sound).
    pub structure: Vec<String>,
    pub products: usize,
    pub vectors: usize,
    /// Product ids whose vector fails its checksum or shape, with why.
    pub damaged_vectors: Vec<(String, String)>,
    /// Vectors whose product is gone.
    pub orphan_vectors: Vec<Key>,
    /// Products with no vector (an import stopped before encoding them, or a repair dropped it):
    /// `lookalike index` with the same source embeds them again.
    pub products_without_vector: usize,
}

impl CheckReport {
    pub fn is_sound(&self) -> bool {
        self.structure.is_empty() && self.damaged_vectors.is_empty() && self.orphan_vectors.is_empty()
    }
}

fn decode_vector(blob: &[u8], out: &mut Vec<f32>) -> Result<()> {
    if !blob.len().is_multiple_of(4) {
        bail!("stored vector has {} bytes, not a whole number of f32 values", blob.len());
    }
    out.clear();
    out.extend(blob.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
    Ok(())
}

/// Products: read, write, filter.
impl SqliteCatalog {
    /// Number of products.
    pub fn len(&self) -> Result<usize> {
        let n: i64 = self.conn.query_row("SELECT COUNT(*) FROM products", [], |r| r.get(0))?;
        Ok(n as usize)
    }

    pub fn get(&self, key: Key) -> Result<Option<Product>> {
        self.conn.query_row(&format!("{SELECT_PRODUCT} WHERE key = ?1"), [key], row_to_product).optional()?.transpose()
    }

    pub fn get_by_id(&self, id: &str) -> Result<Option<Product>> {
        self.conn.query_row(&format!("{SELECT_PRODUCT} WHERE id = ?1"), [id], row_to_product).optional()?.transpose()
    }

    /// The products for `keys`, in the same order; keys that no longer exist are left out.
    pub fn get_many(&self, keys: &[Key]) -> Result<Vec<Product>> {
        let mut stmt = self.conn.prepare_cached(&format!("{SELECT_PRODUCT} WHERE key = ?1"))?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(p) = stmt.query_row([key], row_to_product).optional()? {
                out.push(p?);
            }
        }
        Ok(out)
    }

    /// Adds products, or replaces those whose id exists, atomically as one batch.
    pub fn upsert(&mut self, products: &[NewProduct]) -> Result<Vec<Key>> {
        let tx = self.write_transaction()?;
        let mut keys = Vec::with_capacity(products.len());
        let mut logged = Vec::with_capacity(products.len());
        {
            let mut find = tx.prepare_cached("SELECT key FROM products WHERE id = ?1")?;
            let mut insert = tx.prepare_cached("INSERT INTO products(id, image_path, image_mime, content_hash, metadata) VALUES (?1, ?2, ?3, ?4, ?5)")?;
            let mut update = tx.prepare_cached("UPDATE products SET image_path = ?2, image_mime = ?3, content_hash = ?4, metadata = ?5 WHERE key = ?1")?;
            let mut put_image = tx.prepare_cached("INSERT OR REPLACE INTO images(key, bytes) VALUES (?1, ?2)")?;
            let mut drop_image = tx.prepare_cached("DELETE FROM images WHERE key = ?1")?;
            let mut put_vector = tx.prepare_cached("INSERT OR REPLACE INTO vectors(key, vector, max_pooled, crc, colour, colour_crc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
            for p in products {
                let (path, mime) = match &p.image {
                    NewImage::File(path) => (Some(path.to_string_lossy().into_owned()), None),
                    NewImage::Stored { mime, .. } => (None, Some(mime.clone())),
                };
                let metadata = serde_json::to_string(&p.metadata)?;
                let existing: Option<Key> = find.query_row([&p.id], |r| r.get(0)).optional()?;
                let key = match existing {
                    Some(key) => {
                        update.execute(params![key, path, mime, p.content_hash, metadata])?;
                        key
                    }
                    None => {
                        insert.execute(params![p.id, path, mime, p.content_hash, metadata])?;
                        tx.last_insert_rowid()
                    }
                };
                match &p.image {
                    NewImage::Stored { bytes, .. } => put_image.execute(params![key, bytes])?,
                    NewImage::File(_) => drop_image.execute([key])?,
                };
                let max = p.max_pooled.as_deref().map(encode_vector);
                let blob = encode_vector(&p.vector);
                let crc = i64::from(crc32fast::hash(&blob));
                let colour = p.colour.as_deref().map(encode_vector);
                let colour_crc = colour.as_deref().map(|c| i64::from(crc32fast::hash(c)));
                put_vector.execute(params![key, blob, max, crc, colour, colour_crc])?;
                logged.push(log_change(&tx, key)?);
                keys.push(key);
            }
        }
        tx.commit().with_context(|| format!("writing to catalog {}", self.path.display()))?;
        self.written.extend(logged);
        Ok(keys)
    }

    /// Removes a product and its vectors; returns its key if it existed.
    pub fn remove(&mut self, id: &str) -> Result<Option<Key>> {
        let tx = self.write_transaction()?;
        let key: Option<Key> = tx.query_row("SELECT key FROM products WHERE id = ?1", [id], |r| r.get(0)).optional()?;
        let mut logged = None;
        if let Some(key) = key {
            tx.execute("DELETE FROM vectors WHERE key = ?1", [key])?;
            tx.execute("DELETE FROM images WHERE key = ?1", [key])?;
            tx.execute("DELETE FROM products WHERE key = ?1", [key])?;
            logged = Some(log_change(&tx, key)?);
        }
        tx.commit()?;
        self.written.extend(logged);
        Ok(key)
    }

    /// Keys of the products matching `filter`.
    pub fn filter_keys(&self, filter: &Filter) -> Result<Vec<Key>> {
        let mut sql = String::from("SELECT key FROM products p WHERE 1");
        let mut args: Vec<String> = Vec::new();
        for (column, values) in filter.conditions() {
            // Column and values are bound parameters compared with json_each's keys, never
            // spliced into the SQL nor parsed as a JSON path: any column name is just text.
            args.push(column.to_string());
            let column_arg = args.len();
            let mut alternatives = Vec::new();
            for value in values {
                args.push(value.clone());
                alternatives.push(format!("?{}", args.len()));
            }
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM json_each(p.metadata) m WHERE m.key = ?{column_arg} AND m.type = 'text' AND m.value IN ({}))",
                alternatives.join(", ")
            ));
        }
        sql.push_str(" ORDER BY key");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The image bytes kept inside the catalog for `key`, if any.
    pub fn stored_image(&self, key: Key) -> Result<Option<(Vec<u8>, String)>> {
        Ok(self
            .conn
            .query_row("SELECT i.bytes, COALESCE(p.image_mime, 'application/octet-stream') FROM images i JOIN products p ON p.key = i.key WHERE i.key = ?1", [key], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(id: &str, meta: &[(&str, &str)], v: Vec<f32>) -> NewProduct {
        NewProduct {
            id: id.into(),
            image: NewImage::Stored { bytes: vec![1, 2, 3], mime: "image/png".into() },
            content_hash: format!("hash-{id}"),
            metadata: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            vector: v,
            max_pooled: None,
            colour: None,
        }
    }

    #[test]
    fn filters_combine_columns_with_and_and_values_with_or() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut cat = SqliteCatalog::open(&dir.path().join("c.db"))?;
        cat.upsert(&[
            product("a", &[("articleType", "Dresses"), ("baseColour", "Red")], vec![1.0, 0.0]),
            product("b", &[("articleType", "Dresses"), ("baseColour", "Blue")], vec![0.0, 1.0]),
            product("c", &[("articleType", "Shirts"), ("baseColour", "Red")], vec![1.0, 1.0]),
            product("d", &[("articleType", "Shirts"), ("base\"Colour", "Odd")], vec![1.0, 1.0]),
        ])?;
        let ids = |f: &[&str]| -> Result<Vec<String>> {
            let keys = cat.filter_keys(&Filter::parse(f)?)?;
            Ok(cat.get_many(&keys)?.into_iter().map(|p| p.id).collect())
        };
        assert_eq!(ids(&["articleType=Dresses"])?, ["a", "b"]);
        assert_eq!(ids(&["articleType=Dresses", "baseColour=Red"])?, ["a"]);
        assert_eq!(ids(&["baseColour=Red", "baseColour=Blue"])?, ["a", "b", "c"]);
        assert_eq!(ids(&["articleType=Nope"])?, Vec::<String>::new());
        assert_eq!(ids(&["base\"Colour=Odd"])?, ["d"]);
        // Names that are no valid JSON path are just names: no match, no error.
        assert_eq!(ids(&["a\\=1"])?, Vec::<String>::new());
        assert_eq!(ids(&["$.x[0]=1"])?, Vec::<String>::new());
        assert!(Filter::parse(&["a\u{0}b=1"]).is_err(), "a NUL is no column name");
        assert_eq!(ids(&[])?.len(), 4);
        let counts = cat.value_counts()?;
        assert!(counts.contains(&("articleType".into(), "Dresses".into(), 2)), "{counts:?}");
        assert!(counts.contains(&("baseColour".into(), "Red".into(), 2)), "{counts:?}");
        assert!(Filter::parse(&["novalue"]).is_err());
        assert!(Filter::parse(&["=x"]).is_err());
        Ok(())
    }

    #[test]
    fn upsert_replaces_by_id_and_remove_deletes_everything() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.db");
        let mut cat = SqliteCatalog::open(&path)?;
        let k1 = cat.upsert(&[product("a", &[("x", "1")], vec![1.0, 0.0])])?[0];
        let k2 = cat.upsert(&[product("a", &[("x", "2")], vec![0.0, 1.0])])?[0];
        assert_eq!(k1, k2, "replacing keeps the key");
        assert_eq!(cat.len()?, 1);
        drop(cat);
        let mut cat = SqliteCatalog::open_existing(&path)?;
        let p = cat.get_by_id("a")?.expect("persisted");
        assert_eq!(p.metadata["x"], "2");
        assert_eq!(cat.vector(k1)?, Some(vec![0.0, 1.0]));
        assert_eq!(cat.stored_image(k1)?, Some((vec![1, 2, 3], "image/png".to_string())));
        assert_eq!(cat.remove("a")?, Some(k1));
        assert_eq!(cat.remove("a")?, None);
        assert_eq!(cat.len()?, 0);
        assert_eq!(cat.vector(k1)?, None);
        assert_eq!(cat.stored_image(k1)?, None);
        Ok(())
    }

    #[test]
    fn refuses_vectors_of_another_model() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut cat = SqliteCatalog::open(&dir.path().join("c.db"))?;
        cat.bind_vector_space(&VectorSpace { model: "m1".into(), dim: 4 })?;
        cat.bind_vector_space(&VectorSpace { model: "m1".into(), dim: 4 })?;
        let err = cat.bind_vector_space(&VectorSpace { model: "m2".into(), dim: 8 }).unwrap_err();
        assert!(err.to_string().contains("m1"), "{err}");
        Ok(())
    }

    #[test]
    fn missing_catalog_is_a_clear_error() {
        let err = SqliteCatalog::open_existing(Path::new("/nonexistent/x.db")).err().expect("error");
        assert!(err.to_string().contains("lookalike index"), "{err}");
    }
}
