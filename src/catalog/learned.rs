//! What `lookalike tune` learns and stores in the catalog: the tuned projection, the foreground
//! head and the photo adapter. Each change bumps a generation that running servers read on
//! every follow of the catalog, so they take it up without a restart.

use anyhow::{ensure, Context, Result};
use rusqlite::{params, OptionalExtension, Transaction};

use super::SqliteCatalog;
use crate::projection::Projection;

/// The setting [`SqliteCatalog::foreground_generation`] reads.
const FOREGROUND_GENERATION: &str = "foreground_generation";

/// The setting [`SqliteCatalog::search_space_generation`] reads.
const SEARCH_SPACE_GENERATION: &str = "search_space_generation";

/// Counts one more change of what the setting `name` counts, in the transaction that makes it.
fn bump_generation(tx: &Transaction<'_>, name: &str) -> Result<()> {
    tx.execute("INSERT INTO settings(name, value) VALUES (?1, '1') ON CONFLICT(name) DO UPDATE SET value = CAST(value AS INTEGER) + 1", [name])?;
    Ok(())
}

impl SqliteCatalog {
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

    /// The training record (JSON) of the tuned projection, if any: options, report, classes,
    /// and what it gained on products held out of training.
    pub fn projection_report(&self) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT report FROM projection WHERE id = 1", [], |r| r.get(0)).optional()?)
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
        self.drop_learned("DELETE FROM projection", SEARCH_SPACE_GENERATION)
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
        self.drop_learned("DELETE FROM adapter", SEARCH_SPACE_GENERATION)
    }

    /// Drops the foreground head: localisation goes back to the training-free rule.
    pub fn clear_foreground_head(&mut self) -> Result<bool> {
        self.drop_learned("DELETE FROM foreground", FOREGROUND_GENERATION)
    }

    /// Runs `delete` (one of the statements above, never user input) and counts one more change
    /// of `generation` in the same transaction; whether a row was dropped.
    fn drop_learned(&mut self, delete: &str, generation: &str) -> Result<bool> {
        let tx = self.write_transaction()?;
        let dropped = tx.execute(delete, [])? > 0;
        bump_generation(&tx, generation)?;
        tx.commit()?;
        Ok(dropped)
    }
}
