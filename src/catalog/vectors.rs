//! The stored vectors: each product's search vector, its max-pooled features and its colour
//! descriptor, each written with a CRC-32 and checked on every read.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use rusqlite::{params, OptionalExtension};

use super::changes::log_change;
use super::SqliteCatalog;
use crate::types::{Key, Metadata};

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

/// A product's stored model vectors ([`SqliteCatalog::vectors_of_photo`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredVectors {
    pub vector: Vec<f32>,
    /// Max-pooled features, where the model gives them.
    pub max_pooled: Option<Vec<f32>>,
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

impl SqliteCatalog {
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

    /// The stored search vector and max-pooled features of a product whose photo's content hash
    /// is `content_hash`, looked up first under `likely_id`, then among all products with that
    /// photo (for when that one has changed its photo since): what an import copies
    /// to a product with the same photo instead of encoding it again. `None` when no product
    /// has that photo.
    pub fn vectors_of_photo(&self, content_hash: &str, likely_id: Option<&str>) -> Result<Option<StoredVectors>> {
        const SELECT: &str = "SELECT v.key, v.vector, v.crc, v.max_pooled FROM products p JOIN vectors v ON v.key = p.key";
        // key, vector, its checksum, max-pooled features
        type Row = (Key, Vec<u8>, Option<i64>, Option<Vec<u8>>);
        let read = |r: &rusqlite::Row| -> rusqlite::Result<Row> { Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)) };
        let mut row = match likely_id {
            Some(id) => self.conn.query_row(&format!("{SELECT} WHERE p.id = ?1 AND p.content_hash = ?2"), params![id, content_hash], read).optional()?,
            None => None,
        };
        if row.is_none() {
            row = self.conn.query_row(&format!("{SELECT} WHERE p.content_hash = ?1 ORDER BY p.key LIMIT 1"), [content_hash], read).optional()?;
        }
        let Some((key, blob, crc, max_pooled)) = row else { return Ok(None) };
        verify_vector(&blob, crc).with_context(|| format!("vector of product key {key}: {}", self.damaged_hint()))?;
        let mut vector = Vec::new();
        decode_vector(&blob, &mut vector)?;
        let max_pooled = max_pooled
            .map(|blob| {
                let mut values = Vec::new();
                decode_vector(&blob, &mut values).map(|()| values)
            })
            .transpose()?;
        Ok(Some(StoredVectors { vector, max_pooled }))
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
}

/// Vectors are stored as little-endian f32 bytes.
pub(super) fn encode_vector(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Compares a stored vector with its checksum (rows written before checksums have none).
pub(super) fn verify_vector(blob: &[u8], crc: Option<i64>) -> Result<()> {
    match crc {
        Some(expected) if i64::from(crc32fast::hash(blob)) != expected => bail!("checksum mismatch: the stored vector is damaged"),
        _ => Ok(()),
    }
}

pub(super) fn decode_vector(blob: &[u8], out: &mut Vec<f32>) -> Result<()> {
    if !blob.len().is_multiple_of(4) {
        bail!("stored vector has {} bytes, not a whole number of f32 values", blob.len());
    }
    out.clear();
    out.extend(blob.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
    Ok(())
}
