//! Checking a catalog (structure, every vector's checksum and shape, pairing) and recovering a
//! damaged one (`lookalike check`, `lookalike repair`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

use super::changes::log_change;
use super::vectors::{decode_vector, verify_vector};
use super::{graph_paths, has_column, with_suffix, SqliteCatalog};
use crate::types::{Key, Metadata, Product};

impl SqliteCatalog {
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
        let mut stmt = self.conn.prepare("SELECT id, image_path, metadata FROM products WHERE image_path IS NOT NULL ORDER BY key")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let (id, path): (String, String) = (row.get(0)?, row.get(1)?);
            if let Err(why) = super::open_image_file(Path::new(&path)) {
                // Damaged metadata is the structure check's business: here it only means no link.
                let metadata: Metadata = serde_json::from_str(row.get_ref(2)?.as_str().unwrap_or_default()).unwrap_or_default();
                report.unreadable_photos_linked += usize::from(Product::image_link_of(&metadata).is_some());
                report.unreadable_photos.push((id, format!("{why:#}")));
            }
        }
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
    /// Products whose photo file, recorded at import, cannot be read now (a folder moved or
    /// cleaned after the import), with why: no damage to the catalog (`repair` cannot bring
    /// the files back), but the page shows these products without a photo (or the shop's copy
    /// their `image_url` links), and `tune` and `sync` leave their photos out.
    pub unreadable_photos: Vec<(String, String)>,
    /// How many of `unreadable_photos` link the shop's own copy (`image_url`): the page shows
    /// that copy instead, but `tune` and `sync` still leave their photos out.
    pub unreadable_photos_linked: usize,
}

impl CheckReport {
    pub fn is_sound(&self) -> bool {
        self.structure.is_empty() && self.damaged_vectors.is_empty() && self.orphan_vectors.is_empty()
    }
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

/// Whether `err` is SQLite finding the catalog file damaged (a torn write, a bad block), which
/// any read that meets the bad page reports: what `lookalike repair` is for.
pub fn is_damaged(err: &anyhow::Error) -> bool {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    err.chain().any(|cause| matches!(cause.downcast_ref::<rusqlite::Error>().and_then(rusqlite::Error::sqlite_error_code), Some(DatabaseCorrupt | NotADatabase)))
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
