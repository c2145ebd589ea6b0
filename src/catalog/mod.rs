//! The product catalog: ids, metadata, images and stored vectors, in one SQLite file.
//!
//! SQLite is the source of truth. A product and its vectors are written in the same transaction,
//! so an import killed at any instant (Ctrl-C, `kill -9`, power loss) leaves every product either
//! complete or absent, and re-running the import resumes where it stopped. Vector indexes
//! ([`crate::index`]) are built from, and kept in step with, the vectors stored here.
//!
//! One file per part of the catalog: `products.rs` (rows, photos, filters), `vectors.rs` (the
//! stored vectors and colour descriptors, checksummed), `changes.rs` (the change log other
//! processes follow), `learned.rs` (what `tune` stores: projection, foreground head, photo
//! adapter) and `repair.rs` (checking and salvaging a damaged file). This file opens the
//! catalog, keeps its settings, and waits for other processes' writes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::types::{IndexingProgress, VectorSpace};

mod changes;
mod learned;
mod products;
mod repair;
mod vectors;

pub use changes::ChangeFeed;
pub use products::{open_image_file, read_image_file};
pub use repair::{is_damaged, repair, salvage, CheckReport, RepairReport, SalvageReport};
pub use vectors::{IndexedChange, IndexedImage, StoredVectors, VectorKind};

/// Whether `table` has `column` (`table` is one of the schema's own names, never user input).
fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"))?.exists([column])
}

/// SQLite-backed catalog (the embedded default).
pub struct SqliteCatalog {
    conn: Connection,
    path: PathBuf,
    /// Change-log positions this connection wrote and [`SqliteCatalog::changes_after`] has not
    /// reported yet: a server following the log skips its own changes (already in its index).
    written: BTreeSet<i64>,
}

/// How long a write waits for another process's write transaction (an `index` batch, a
/// server's API change) before giving up with a message naming that process.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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
-- Products listed with the very same photo (size variants) are found together: search shows
-- them as one result, an import copies their vectors.
CREATE INDEX IF NOT EXISTS products_by_photo ON products(content_hash);
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

/// Where a catalog's search graph is saved: beside the catalog file (`shop.db.graph`, and its
/// stamp `shop.db.graph.json`; a graph over a principal subspace adds `shop.db.graph.basis`).
pub fn graph_paths(catalog: &Path) -> (PathBuf, PathBuf) {
    (with_suffix(catalog, ".graph"), with_suffix(catalog, ".graph.json"))
}

/// `path` with `suffix` appended to its file name (`shop.db` → `shop.db-wal`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Filter, Key, NewImage, NewProduct};

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

    /// A page of hits is read in one statement, in the ranking's order, without the keys
    /// removed since.
    #[test]
    fn products_come_back_in_the_order_of_their_keys() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut cat = SqliteCatalog::open(&dir.path().join("c.db"))?;
        cat.upsert(&[product("a", &[], vec![1.0, 0.0]), product("b", &[], vec![0.0, 1.0]), product("c", &[("size", "M")], vec![1.0, 1.0])])?;
        let key = |id: &str| -> Result<Key> { Ok(cat.get_by_id(id)?.context("product")?.key) };
        let (a, b, c) = (key("a")?, key("b")?, key("c")?);
        let ids = |keys: &[Key]| -> Result<Vec<String>> { Ok(cat.get_many(keys)?.into_iter().map(|p| p.id).collect()) };
        assert_eq!(ids(&[c, a, b])?, ["c", "a", "b"]);
        assert_eq!(ids(&[b, c + a + b + 100, a])?, ["b", "a"], "a key no product has is left out");
        assert_eq!(ids(&[a, b, a])?, ["a", "b"], "a key given twice gives its product once");
        assert_eq!(ids(&[])?, Vec::<String>::new());
        assert_eq!(cat.get_many(&[c])?[0].metadata.get("size").map(String::as_str), Some("M"));
        Ok(())
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
        // Pages of a filtered listing go on from the last key, in key order.
        let red = Filter::parse(&["baseColour=Red", "baseColour=Blue"])?;
        let first = cat.products_page(&red, None, 2)?;
        assert_eq!(first.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let rest = cat.products_page(&red, first.last().map(|p| p.key), 2)?;
        assert_eq!(rest.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["c"]);
        assert!(cat.products_page(&red, rest.last().map(|p| p.key), 2)?.is_empty());
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

    /// The changes since a position of the log, or `None` once part of them is trimmed (a
    /// saved search graph absorbed them): a swap's catch-up must not miss one silently.
    #[test]
    fn changes_since_a_position_are_whole_or_none() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut cat = SqliteCatalog::open(&dir.path().join("c.db"))?;
        let a = cat.upsert(&[product("a", &[], vec![1.0, 0.0])])?[0];
        let since = cat.generation()?;
        let b = cat.upsert(&[product("b", &[], vec![0.0, 1.0])])?[0];
        cat.remove("a")?;
        let mut changed = cat.changed_since_whole(since)?.expect("whole");
        changed.sort();
        assert_eq!(changed, vec![a.min(b), a.max(b)]);
        cat.forget_changes_through(since + 1)?;
        assert_eq!(cat.changed_since_whole(since)?, None, "one change after `since` was trimmed");
        assert_eq!(cat.changed_since_whole(cat.generation()?)?, Some(vec![]));
        Ok(())
    }

    #[test]
    fn missing_catalog_is_a_clear_error() {
        let err = SqliteCatalog::open_existing(Path::new("/nonexistent/x.db")).err().expect("error");
        assert!(err.to_string().contains("lookalike index"), "{err}");
    }
}
