//! Products: their rows, photos and metadata; adding, replacing, removing and filtering them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rusqlite::{params, OptionalExtension};

use super::changes::log_change;
use super::vectors::encode_vector;
use super::SqliteCatalog;
use crate::types::{Filter, ImageRef, Key, Metadata, NewImage, NewProduct, Product, SamePhotos};

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

impl SqliteCatalog {
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

/// Products: read, write, filter.
impl SqliteCatalog {
    /// Number of products.
    pub fn len(&self) -> Result<usize> {
        let n: i64 = self.conn.query_row("SELECT COUNT(*) FROM products", [], |r| r.get(0))?;
        Ok(n as usize)
    }

    /// Every product's id, by key.
    pub fn ids(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("SELECT id FROM products ORDER BY key")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn get(&self, key: Key) -> Result<Option<Product>> {
        self.conn.query_row(&format!("{SELECT_PRODUCT} WHERE key = ?1"), [key], row_to_product).optional()?.transpose()
    }

    pub fn get_by_id(&self, id: &str) -> Result<Option<Product>> {
        self.conn.query_row(&format!("{SELECT_PRODUCT} WHERE id = ?1"), [id], row_to_product).optional()?.transpose()
    }

    /// The products for `keys`, in the same order; keys that no longer exist are left out, and
    /// a key given twice gives its product once.
    pub fn get_many(&self, keys: &[Key]) -> Result<Vec<Product>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // One statement for a page of hits, not one a key.
        let mut stmt = self.conn.prepare_cached(&format!("{SELECT_PRODUCT} WHERE key IN (SELECT value FROM json_each(?1))"))?;
        let mut found: HashMap<Key, Product> = HashMap::with_capacity(keys.len());
        for product in stmt.query_map([serde_json::to_string(keys)?], row_to_product)? {
            let product = product??;
            found.insert(product.key, product);
        }
        Ok(keys.iter().filter_map(|key| found.remove(key)).collect())
    }

    /// Which of `keys` share their photo with another product (size variants listed with one
    /// photo), with the photo's content hash: one statement, whatever the number of keys, and
    /// an empty answer in a catalog where every product has its own photo. Keys that no longer
    /// exist are left out.
    pub fn shared_photos_among(&self, keys: &[Key]) -> Result<SamePhotos> {
        if keys.is_empty() {
            return Ok(SamePhotos::default());
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT p.key, p.content_hash FROM products p WHERE p.key IN (SELECT value FROM json_each(?1)) \
             AND EXISTS (SELECT 1 FROM products q WHERE q.content_hash = p.content_hash AND q.key != p.key)",
        )?;
        let rows = stmt.query_map([serde_json::to_string(keys)?], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(SamePhotos::from_shared(rows.collect::<rusqlite::Result<_>>()?))
    }

    /// Every product that shares its photo with another (one indexed pass over the photos):
    /// what measuring the whole catalog folds by.
    pub fn shared_photos(&self) -> Result<SamePhotos> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, content_hash FROM products WHERE content_hash IN (SELECT content_hash FROM products GROUP BY content_hash HAVING COUNT(*) > 1)")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(SamePhotos::from_shared(rows.collect::<rusqlite::Result<_>>()?))
    }

    /// The keys of every product whose photo's content hash is one of `content_hashes`, by
    /// hash, each in key order (one indexed statement).
    pub fn keys_with_photos(&self, content_hashes: &[&str]) -> Result<HashMap<String, Vec<Key>>> {
        let mut found: HashMap<String, Vec<Key>> = HashMap::new();
        if content_hashes.is_empty() {
            return Ok(found);
        }
        let mut stmt = self.conn.prepare_cached("SELECT content_hash, key FROM products WHERE content_hash IN (SELECT value FROM json_each(?1)) ORDER BY key")?;
        let mut rows = stmt.query([serde_json::to_string(content_hashes)?])?;
        while let Some(row) = rows.next()? {
            found.entry(row.get(0)?).or_default().push(row.get(1)?);
        }
        Ok(found)
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
        self.filtered_keys(filter, None, None)
    }

    /// Up to `limit` products matching `filter` with keys above `after`, by key: one page of a
    /// listing that goes on from the last key it returned.
    pub fn products_page(&self, filter: &Filter, after: Option<Key>, limit: usize) -> Result<Vec<Product>> {
        let keys = self.filtered_keys(filter, after, Some(limit))?;
        self.get_many(&keys)
    }

    /// How many products match `filter`.
    pub fn count_matching(&self, filter: &Filter) -> Result<usize> {
        let (condition, args) = filter_condition(filter, None);
        let n: i64 = self.conn.query_row(&format!("SELECT COUNT(*) FROM products p WHERE {condition}"), rusqlite::params_from_iter(args.iter()), |r| r.get(0))?;
        Ok(n as usize)
    }

    fn filtered_keys(&self, filter: &Filter, after: Option<Key>, limit: Option<usize>) -> Result<Vec<Key>> {
        let (condition, args) = filter_condition(filter, after);
        let mut sql = format!("SELECT key FROM products p WHERE {condition} ORDER BY key");
        if let Some(limit) = limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
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

/// The SQL condition on `products p` that `filter` (and keys above `after`) make, with its
/// bound arguments.
fn filter_condition(filter: &Filter, after: Option<Key>) -> (String, Vec<String>) {
    let mut sql = String::from("key > ?1");
    let mut args: Vec<String> = vec![after.unwrap_or(Key::MIN).to_string()];
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
        sql.push_str(&format!(" AND EXISTS (SELECT 1 FROM json_each(p.metadata) m WHERE m.key = ?{column_arg} AND m.type = 'text' AND m.value IN ({}))", alternatives.join(", ")));
    }
    (sql, args)
}

/// Reads an image file the catalog recorded at import, unless a symbolic link is anywhere on
/// its path now. The importers record real paths, so a link there was put in afterwards and
/// could point anywhere on the machine (a replaced file or a replaced folder alike). The one
/// rule for every reader: the server, evaluation and tuning.
pub fn read_image_file(path: &Path) -> Result<Vec<u8>> {
    let mut file = open_image_file(path)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes)
}

/// Opens an image file the catalog recorded at import, under [`read_image_file`]'s rule: what
/// `lookalike check` tries for every such product.
pub fn open_image_file(path: &Path) -> Result<std::fs::File> {
    let real = path.canonicalize().with_context(|| format!("reading {}", path.display()))?;
    let is_file = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file());
    if real != path || !is_file {
        bail!("not reading {}: a symbolic link is on its path, or it is no regular file (re-run `lookalike index` if the catalog moved)", path.display());
    }
    std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))
}
