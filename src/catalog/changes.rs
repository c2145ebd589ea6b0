//! The change log: every write to a product's vector, in order, so that a saved search graph
//! catches up with the catalog and a server follows what other processes change.

use anyhow::Result;
use rusqlite::Transaction;

use super::SqliteCatalog;
use crate::types::Key;

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

impl SqliteCatalog {
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

    /// [`SqliteCatalog::changed_since`], or `None` when part of the log after `generation` is
    /// gone (a saved search graph absorbed it), so that keys may be missing.
    pub fn changed_since_whole(&self, generation: i64) -> Result<Option<Vec<Key>>> {
        let logged: i64 = self.conn.query_row("SELECT COUNT(*) FROM changes WHERE seq > ?1", [generation], |r| r.get(0))?;
        if logged != self.latest_change()? - generation {
            return Ok(None);
        }
        self.changed_since(generation).map(Some)
    }

    /// Forgets log entries up to `generation` (a saved graph has absorbed them).
    pub fn forget_changes_through(&self, generation: i64) -> Result<()> {
        self.conn.execute("DELETE FROM changes WHERE seq <= ?1", [generation])?;
        Ok(())
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
}

/// Appends `key` to the change log; returns its position.
pub(super) fn log_change(tx: &Transaction<'_>, key: Key) -> Result<i64> {
    tx.prepare_cached("INSERT INTO changes(key) VALUES (?1)")?.execute([key])?;
    Ok(tx.last_insert_rowid())
}
