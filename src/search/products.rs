//! Products added, removed and read through the engine (the API's catalog changes), and the
//! catalog's facets.

use anyhow::{Context, Result};

use super::rank::{collection_product, is_patterned, payload_colour};
use super::{map_product, FacetCount, ListedProduct, ProductPage, SearchEngine, SearchError};
use crate::catalog::{IndexedChange, SqliteCatalog, StoredVectors};
use crate::colour::{self, ColourDescriptor};
use crate::index::qdrant::{collection_key, is_point_id, PhotoListings, QdrantIndex, StoredProduct};
use crate::preprocess;
use crate::types::{Filter, ImageRef, Key, MetadataPatch, NewProduct, Product, VectorSpace};

impl SearchEngine {
    /// Adds a product (or replaces the one with the same id) and makes it searchable at once:
    /// the catalog is written first, so a crash between the two steps loses nothing that a
    /// restart (which rebuilds the index from the catalog) would not restore.
    pub fn add_product(&self, mut product: NewProduct) -> Result<Key, SearchError> {
        // A photo stored without its colour (an upload through the API) gets it here, from its
        // own pixels as a catalog shot, as `index` gives it (so searches do not pay for it).
        if product.colour.is_none() {
            if let crate::types::NewImage::Stored { bytes, .. } = &product.image {
                let input = &self.encoder.spec().input;
                let image = preprocess::decode_reduced(bytes, &self.limits, preprocess::needed_side(input, None))?;
                if let Some(colour) = colour::of_product(&preprocess::input_pixels(&image, None, input)) {
                    colour.name_in(&mut product.metadata);
                    product.colour = Some(colour.descriptor.values());
                }
            }
        }
        let colour = product.colour.as_deref().map(ColourDescriptor::from_values).transpose()?;
        // What the point carries where the store is a collection: the photo, or a reduced copy
        // of a large one (made here, before any lock), so that every server can show it and a
        // sync can encode it again. With the catalog, the point is as `sync` writes it (no copy
        // of a large photo the shop links); without, the copy is all there will be.
        let image = match &product.image {
            crate::types::NewImage::Stored { bytes, .. } if self.catalog.is_none() => crate::store::payload_photo(bytes.clone()),
            crate::types::NewImage::Stored { bytes, .. } if self.read_index()?.collection().is_some() && crate::store::carries_photo(bytes.len(), &product.metadata) => {
                crate::store::payload_photo(bytes.clone())
            }
            _ => None,
        };
        let photo = (!product.content_hash.is_empty()).then(|| product.content_hash.clone());
        let stored = StoredProduct { id: product.id.clone(), metadata: product.metadata.clone(), colour: product.colour.clone(), photo, photo_listings: PhotoListings::Own };
        if self.catalog.is_none() {
            // Straight to the collection, where every server finds it on its next search.
            let key = collection_key(&product.id);
            let put = || -> Result<Key, SearchError> {
                let mut index = self.write_index()?;
                let searched = map_product(&index.space, &product.vector)?;
                index.put(key, &searched, stored.clone(), image.as_deref())?;
                forget_removal(&index, &product.id)?;
                Ok(key)
            };
            return write_where_described(|| self.follow_collection_description(), put, |_, again| again);
        }
        let expected = self.encoder.spec().name.clone();
        // Hold the catalog lock across both writes, so concurrent changes to the same id
        // reach the index in the order they reached the catalog.
        let mut catalog = self.lock_catalog()?;
        catalog.bind_vector_space(&VectorSpace { model: expected, dim: product.vector.len() })?;
        // The catalog keeps model vectors; the index holds them mapped into the search space.
        let key = *catalog.upsert(std::slice::from_ref(&product))?.first().context("the catalog stored no product")?;
        // Mapped by the index's own space: it is only replaced under the catalog lock, held here.
        let mut index = self.write_index()?;
        let searched = map_product(&index.space, &product.vector)?;
        index.put(key, &searched, stored, image.as_deref())?;
        forget_removal(&index, &product.id)?;
        drop(index);
        self.write_colours()?.put(key, colour, crate::types::Product::named_colour(&product.metadata));
        self.write_kinds()?.put(key, &product.metadata);
        Ok(key)
    }

    /// Adds a product from its photo as the API's `POST /api/products` does: the photo encoded
    /// whole, its colour read from its own pixels. `photo_hash`: the content hash of the photo
    /// `photo` is a copy of (a point's reduced copy of a large photo keeps its original's, so
    /// that the sizes listed with that photo stay one result); `None`: its own.
    pub fn add_product_photo(&self, id: String, photo: Vec<u8>, metadata: crate::types::Metadata, photo_hash: Option<String>) -> Result<Key, SearchError> {
        let query = self.prepare_query(&photo, None, super::Items::Main)?;
        let encoded = self.encode_photos(vec![query])?.into_iter().next().context("the encoder returned no embedding")?;
        let mime = image::guess_format(&photo).map(|f| f.to_mime_type()).unwrap_or("application/octet-stream").to_string();
        self.add_product(NewProduct {
            id,
            content_hash: photo_hash.unwrap_or_else(|| crate::types::content_hash(&photo)),
            image: crate::types::NewImage::Stored { bytes: photo, mime },
            metadata,
            vector: encoded.whole.vector,
            max_pooled: encoded.whole.max_pooled,
            colour: None,
        })
    }

    /// Removes a product from the catalog, then from the index (from a Qdrant collection by
    /// its id, so also a product another server added there). Returns whether it existed.
    pub fn remove_product(&self, id: &str) -> Result<bool, SearchError> {
        if self.catalog.is_none() {
            let remove = || Ok(self.collection_mut(|c| c.remove_product_without_catalog(id))?);
            return write_where_described(|| self.follow_collection_description(), remove, |existed, again| existed || again);
        }
        let mut catalog = self.lock_catalog()?;
        let Some(key) = catalog.remove(id)? else {
            drop(catalog);
            return Ok(self.read_index()?.collection().is_some() && self.collection_mut(|c| c.remove_product(id))?);
        };
        self.write_index()?.index_mut().remove(key)?;
        self.write_colours()?.remove(key);
        self.write_kinds()?.remove(key);
        Ok(true)
    }

    /// Changes a product's metadata (a new price, name or category) without its photo: nothing
    /// is encoded again, and searches, filters and facets show the change at once. Written to
    /// the catalog, where other servers following it take it up, and to the Qdrant collection
    /// when that is the store (there alone for a product added through a server without the
    /// catalog). Returns the product as it is now, `None` for an unknown id.
    pub fn patch_product(&self, id: &str, patch: &MetadataPatch) -> Result<Option<ListedProduct>, SearchError> {
        // A patch that leaves a product naming no colour names the one its photo has, from the
        // descriptor the copy being patched holds (the collection's may differ from the catalog's).
        let in_collection = |stored: &StoredProduct| patch.naming_a_colour(&stored.metadata, payload_colour(stored).map(|d| d.name()));
        if self.catalog.is_none() {
            let patched = || Ok(self.collection_mut(|c| c.patch_product(id, in_collection, true))?);
            let shown = write_where_described(|| self.follow_collection_description(), patched, |before, again| again.or(before))?;
            return Ok(shown.map(|stored| self.listed_from_collection(stored)).transpose()?);
        }
        let mut catalog = self.lock_catalog()?;
        let Some(mut product) = catalog.get_by_id(id)? else {
            drop(catalog);
            if self.read_index()?.collection().is_none() {
                return Ok(None);
            }
            let shown = self.collection_mut(|c| c.patch_product(id, in_collection, false))?;
            return Ok(shown.map(|stored| self.listed_from_collection(stored)).transpose()?);
        };
        let descriptor = self.read_colours()?.descriptor(product.key).copied();
        let metadata = patch.naming_a_colour(&product.metadata, descriptor.map(|d| d.name())).apply(&product.metadata);
        let changed = metadata != product.metadata;
        // Under the catalog lock, as `add_product` writes: a concurrent change to the same
        // product reaches the collection and the tables in the order it reached the catalog.
        if changed {
            catalog.refresh_indexed(&[IndexedChange { id: id.to_string(), colour: None, metadata: Some(metadata.clone()) }])?;
        }
        // The collection's copy is patched even where the catalog's did not change: a server
        // without the catalog may have changed it there. What it holds then is what searches show.
        let shown = match self.write_index()?.collection_mut() {
            Some(collection) => collection.patch_product(id, in_collection, false)?,
            None => None,
        };
        if changed {
            self.write_colours()?.put(product.key, descriptor, Product::named_colour(&metadata));
            self.write_kinds()?.put(product.key, &metadata);
        }
        product.metadata = shown.as_ref().map_or(metadata, |shown| shown.metadata.clone());
        Ok(Some(self.listed(product, shown.as_ref().and_then(payload_colour))?))
    }

    /// Runs `f` on the Qdrant collection (an error when the store is embedded).
    fn collection_mut<T>(&self, f: impl FnOnce(&mut QdrantIndex) -> Result<T>) -> Result<T> {
        let mut store = self.write_index()?;
        f(store.collection_mut().context("the vector store is not a Qdrant collection")?)
    }

    /// One page of the products this engine searches, those matching `filter`: up to `limit`,
    /// from where the page token `from` (the `next` of the page before; `None` for the first)
    /// says. With a Qdrant collection as the store, the collection's products (every server's
    /// additions included), in its point order; otherwise the catalog's, by catalog key.
    pub fn products_page(&self, filter: &Filter, from: Option<&str>, limit: usize) -> Result<ProductPage, SearchError> {
        if let Some(collection) = self.read_index()?.collection() {
            return collection_page(collection, filter, from, limit);
        }
        catalog_page(&*self.lock_catalog()?, filter, from, limit)
    }

    /// A product by its id, with its colours as search hits carry them. With a Qdrant
    /// collection as the store, the collection says whether it exists and what its metadata
    /// is, as searches show it (any server may have added, changed or removed it there); the
    /// catalog's row is preferred where there is one, for its photo. One read of the point.
    pub fn product(&self, id: &str) -> Result<Option<ListedProduct>> {
        let in_collection = match self.read_index()?.collection() {
            Some(collection) => match collection.product(id)? {
                Some((stored, _)) => Some(stored),
                None => return Ok(None),
            },
            None => None,
        };
        if self.catalog.is_some() {
            if let Some(mut product) = self.with_catalog(|c| c.get_by_id(id))? {
                if let Some(shown) = &in_collection {
                    product.metadata = shown.metadata.clone();
                }
                return self.listed(product, in_collection.as_ref().and_then(payload_colour)).map(Some);
            }
        }
        in_collection.map(|stored| self.listed_from_collection(stored)).transpose()
    }

    /// The other products listed with `product`'s very photo (size variants): what a search
    /// hit for it carries as its variants. With a Qdrant collection as the store, as the
    /// collection lists them (any server's additions included; none for a product whose point
    /// was written before points kept their photo's hash).
    pub fn variants_of(&self, product: &Product) -> Result<Vec<Product>> {
        if product.content_hash.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(collection) = self.read_index()?.collection() {
            let listed = collection.products_with_photos(&[product.content_hash.as_str()], &Filter::default())?;
            return Ok(listed.into_iter().filter(|other| other.id != product.id).map(collection_product).collect());
        }
        if self.catalog.is_none() {
            return Ok(Vec::new());
        }
        self.with_catalog(|c| {
            let keys = c.keys_with_photos(&[product.content_hash.as_str()])?.remove(&product.content_hash).unwrap_or_default();
            c.get_many(&keys.into_iter().filter(|&key| key != product.key).collect::<Vec<_>>())
        })
    }

    /// The stored model vectors of a product whose photo's content hash is `content_hash`: a
    /// product added with a photo the catalog already has (another size of one listing) takes
    /// them instead of being encoded again, as `index` copies them. `None` without a catalog,
    /// when no product has the photo, or when its stored vector is damaged (then the photo is
    /// encoded: a warning says why).
    pub fn vectors_of_photo(&self, content_hash: &str) -> Result<Option<StoredVectors>> {
        if self.catalog.is_none() {
            return Ok(None);
        }
        Ok(self.with_catalog(|c| c.vectors_of_photo(content_hash, None)).unwrap_or_else(|e| {
            tracing::warn!("not copying the vectors of the same photo ({e:#}): encoding it");
            None
        }))
    }

    /// A product known from a collection's payload, with its colours.
    fn listed_from_collection(&self, stored: StoredProduct) -> Result<ListedProduct> {
        let payload = payload_colour(&stored);
        self.listed(collection_product(stored), payload)
    }

    /// `product` with its colours: from the catalog's colour table, else the descriptor its
    /// point's payload carries (`payload`, where it was read).
    fn listed(&self, product: Product, payload: Option<ColourDescriptor>) -> Result<ListedProduct> {
        let colour_mix = patterned_mix(&product, || {
            let in_table = match self.catalog.is_some() {
                true => self.read_colours()?.descriptor(product.key).copied(),
                false => None,
            };
            Ok(in_table.or(payload))
        })?;
        Ok(ListedProduct { product, colour_mix })
    }

    /// A product's photo: stored in the catalog, the file recorded at import, or (for a
    /// product known only from a Qdrant collection) the photo its payload carries. `None`
    /// when it is gone.
    pub fn product_image(&self, product: &Product) -> Result<Option<Vec<u8>>> {
        match &product.image {
            ImageRef::Stored { .. } => self.with_catalog(|c| c.stored_image(product.key)).map(|found| found.map(|(bytes, _)| bytes)),
            // Only the path the catalog recorded at import is ever read; nothing from the request.
            ImageRef::File(path) => Ok(crate::catalog::read_image_file(path).map_err(|e| tracing::warn!("{e:#}")).ok()),
            ImageRef::Collection => match self.read_index()?.collection() {
                Some(collection) => collection.product_image(&product.id),
                None => Ok(None),
            },
        }
    }

    /// Every (column, value, products) count for the page's filters, and the number of
    /// products: from the catalog, or counted by Qdrant over the collection's indexed columns.
    pub fn facets(&self) -> Result<(Vec<FacetCount>, usize)> {
        match self.description()? {
            None => self.with_catalog(|c| Ok((c.value_counts()?, c.len()?))),
            Some(described) => {
                let store = self.read_index()?;
                let collection = store.collection().context("a server without a catalog searches a Qdrant collection")?;
                Ok((collection.facets(&described.facet_columns, 100)?, collection.count_now()?))
            }
        }
    }

    /// Why `filter` matches none of the products this engine searches (a Qdrant collection's,
    /// with every server's changes, where that is the store; else the catalog's): the part of
    /// it no product has, and what there is instead. `None` when the filter is not to blame.
    pub fn why_nothing_matches(&self, filter: &Filter) -> Result<Option<String>> {
        if let Some(collection) = self.read_index()?.collection() {
            return why_nothing_matches_in_collection(collection, filter);
        }
        self.with_catalog(|c| why_nothing_matches_in_catalog(c, filter))
    }

    /// Products searchable now: the catalog's, or the Qdrant collection's as it counts them
    /// (with every server's changes).
    pub fn product_count(&self) -> Result<usize> {
        match self.catalog {
            Some(_) => self.with_catalog(|c| c.len()),
            None => self.read_index()?.collection().context("a server without a catalog searches a Qdrant collection")?.count_now(),
        }
    }
}

/// One page of a catalog's products matching `filter`, by catalog key: up to `limit`, after the
/// page token `from` (the `next` of the page before; `None` for the first).
pub fn catalog_page(catalog: &SqliteCatalog, filter: &Filter, from: Option<&str>, limit: usize) -> Result<ProductPage, SearchError> {
    let after = from.map(|token| token.parse::<Key>().map_err(|_| bad_page_token(token))).transpose()?;
    // One more than asked: whether there is a next page.
    let mut products = catalog.products_page(filter, after, limit.saturating_add(1))?;
    let next = match products.len() > limit {
        true => {
            products.truncate(limit);
            products.last().map(|p| p.key.to_string())
        }
        false => None,
    };
    // A patterned product's colours from its stored descriptor: one read for each of those.
    let mut listed = Vec::with_capacity(products.len());
    for product in products {
        let colour_mix = patterned_mix(&product, || Ok(catalog.colour(product.key)?.and_then(|values| ColourDescriptor::from_values(&values).ok())))?;
        listed.push(ListedProduct { product, colour_mix });
    }
    let total = catalog.count_matching(filter)?;
    let why_nothing_matches = match total == 0 && !filter.is_empty() {
        true => why_nothing_matches_in_catalog(catalog, filter)?,
        false => None,
    };
    Ok(ProductPage { products: listed, next, total, why_nothing_matches })
}

/// One page of a Qdrant collection's products matching `filter` (those every server added
/// included), in the collection's point order: up to `limit`, from the page token `from`.
pub fn collection_page(collection: &QdrantIndex, filter: &Filter, from: Option<&str>, limit: usize) -> Result<ProductPage, SearchError> {
    if let Some(token) = from.filter(|token| !is_point_id(token)) {
        return Err(bad_page_token(token));
    }
    let (products, next) = collection.products_page(filter, from, limit)?;
    let mut listed = Vec::with_capacity(products.len());
    for stored in products {
        let payload = payload_colour(&stored);
        let product = collection_product(stored);
        listed.push(ListedProduct { colour_mix: patterned_mix(&product, || Ok(payload))?, product });
    }
    let total = collection.count_matching(filter)?;
    let why_nothing_matches = match total == 0 && !filter.is_empty() {
        true => why_nothing_matches_in_collection(collection, filter)?,
        false => None,
    };
    Ok(ProductPage { products: listed, next, total, why_nothing_matches })
}

/// A patterned product's (named colour [`colour::MULTI`]) main colours in its photo, largest
/// share first, as search hits carry them, from its colour descriptor (read only for those);
/// empty for the rest.
fn patterned_mix(product: &Product, descriptor: impl FnOnce() -> Result<Option<ColourDescriptor>>) -> Result<Vec<(&'static str, f32)>> {
    match is_patterned(product) {
        true => Ok(descriptor()?.map(|d| d.main_colours()).unwrap_or_default()),
        false => Ok(Vec::new()),
    }
}

fn bad_page_token(token: &str) -> SearchError {
    SearchError::BadRequest(format!("{token:?} is not a page token a listing gave (start again without one)"))
}

/// A write by a server without the catalog (`write`: a put, a patch or a removal by id, each
/// the same when made twice), made in the collection its description names. The description
/// is followed before the write: after a `sync --swap` it names another collection, which this
/// server would otherwise read only on its next check (up to 5 s), writing meanwhile to the one
/// the swap replaced, where no other server looks and a later sync deletes it. And after: a
/// swap that moved the points while the write was in flight may have read the collection it
/// replaced before the write landed there, so the write is made again where the points are
/// now. `merge` makes one answer of the two (a removal removed if either did).
fn write_where_described<T>(mut follow: impl FnMut() -> Result<bool>, mut write: impl FnMut() -> Result<T, SearchError>, merge: impl Fn(T, T) -> T) -> Result<T, SearchError> {
    follow()?;
    let mut written = write()?;
    while follow()? {
        written = merge(written, write()?);
    }
    Ok(written)
}

/// A product added through the API after a server without the catalog removed it: the removal
/// recorded for the next `sync` is forgotten, so that sync does not remove it from the catalog.
fn forget_removal(index: &crate::store::Store, id: &str) -> Result<()> {
    match index.collection() {
        Some(collection) => collection.forget_removals(&[id.to_string()]),
        None => Ok(()),
    }
}

/// Why `filter` matches none of a catalog's products (`None` when it matches some, or when
/// no condition alone is to blame): from its value counts, which list every column and value.
pub fn why_nothing_matches_in_catalog(catalog: &SqliteCatalog, filter: &Filter) -> Result<Option<String>> {
    Ok(why_nothing_matches(filter, &catalog.value_counts()?, |_| true))
}

/// As [`why_nothing_matches_in_catalog`], for a Qdrant collection's products. Qdrant counts
/// values only of the columns it indexes (`--filter-columns`), and at most so many of each: a
/// condition on another column, or on a column with more values than that, is not judged,
/// since a value missing from its counts may still be some product's.
pub fn why_nothing_matches_in_collection(collection: &QdrantIndex, filter: &Filter) -> Result<Option<String>> {
    const MOST_VALUES: u64 = 1000;
    let columns = collection.keyword_columns()?;
    let facets = collection.facets(&columns, MOST_VALUES)?;
    let counted_in_full = |column: &str| columns.iter().any(|c| c == column) && (facets.iter().filter(|(c, _, _)| c == column).count() as u64) < MOST_VALUES;
    Ok(why_nothing_matches(filter, &facets, counted_in_full))
}

/// Why `filter` matches no product, in words a shop engineer can act on: a column no product
/// has, or a value no product has in its column, with what there is instead (`facets`: the
/// (column, value, products) counts, by column, most products first). Only the conditions on
/// columns that `counted_in_full` says `facets` lists every value of are judged. `None` when
/// each judged condition alone matches some product.
fn why_nothing_matches(filter: &Filter, facets: &[FacetCount], counted_in_full: impl Fn(&str) -> bool) -> Option<String> {
    let listed = |items: Vec<&str>| crate::types::first_few(&items, 12);
    let mut reasons = Vec::new();
    let mut judged_all = true;
    for (column, values) in filter.conditions() {
        if !counted_in_full(column) {
            judged_all = false;
            continue;
        }
        let in_column: Vec<&str> = facets.iter().filter(|(c, _, _)| c == column).map(|(_, v, _)| v.as_str()).collect();
        if in_column.is_empty() {
            let mut columns: Vec<&str> = facets.iter().map(|(c, _, _)| c.as_str()).collect();
            columns.dedup();
            reasons.push(match columns.iter().find(|c| c.eq_ignore_ascii_case(column)) {
                Some(close) => format!("no product has a column {column:?} (did you mean {close:?}?)"),
                None => format!("no product has a column {column:?} (the columns: {})", listed(columns)),
            });
        } else if !values.iter().any(|v| in_column.contains(&v.as_str())) {
            let asked = values.join(" or ");
            reasons.push(match values.iter().find_map(|v| in_column.iter().find(|have| have.eq_ignore_ascii_case(v))) {
                Some(close) => format!("no product has {column}={asked} (did you mean {column}={close}?)"),
                None => format!("no product has {column}={asked} ({column} has: {})", listed(in_column)),
            });
        }
    }
    match (reasons.is_empty(), judged_all && filter.conditions().count() >= 2) {
        (false, _) => Some(reasons.join("; ")),
        (true, true) => Some("each condition matches some products, but none matches all of them".to_string()),
        (true, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collections by number, the one the description names, the one this server last read it
    /// naming, and the collections each write landed in; `swaps_during`: the writes (1, 2, ...)
    /// during which a swap moves the points to the next collection.
    fn writes_landed(moved_before: bool, swaps_during: &[usize]) -> (Vec<usize>, Vec<usize>) {
        use std::cell::{Cell, RefCell};
        let (described, seen) = (Cell::new(usize::from(moved_before)), Cell::new(0));
        let (writes, landed) = (Cell::new(0), RefCell::new(Vec::new()));
        let follow = || -> Result<bool> { Ok(seen.replace(described.get()) != described.get()) };
        let write = || -> Result<Vec<usize>, SearchError> {
            landed.borrow_mut().push(seen.get());
            writes.set(writes.get() + 1);
            if swaps_during.contains(&writes.get()) {
                described.set(described.get() + 1);
            }
            Ok(vec![seen.get()])
        };
        let answer = write_where_described(follow, write, |mut a, b| {
            a.extend(b);
            a
        })
        .expect("written");
        (answer, landed.into_inner())
    }

    #[test]
    fn a_write_lands_where_the_description_names_even_when_a_swap_overtakes_it() {
        assert_eq!(writes_landed(false, &[]), (vec![0], vec![0]), "nothing moved: written once");
        assert_eq!(writes_landed(true, &[]), (vec![1], vec![1]), "a swap before the write: written in the new collection only");
        assert_eq!(writes_landed(false, &[1]), (vec![0, 1], vec![0, 1]), "a swap during the write: written again where the points are now");
        assert_eq!(writes_landed(false, &[1, 2]), (vec![0, 1, 2], vec![0, 1, 2]), "and again after a second swap during the second write");
    }

    fn facets() -> Vec<FacetCount> {
        [("articleType", "Bag", 3), ("articleType", "Shirt", 2), ("baseColour", "Red", 5)].iter().map(|&(c, v, n)| (c.to_string(), v.to_string(), n)).collect()
    }

    #[test]
    fn says_which_condition_no_product_has() {
        let why = |items: &[&str]| why_nothing_matches(&Filter::parse(items).expect("filter"), &facets(), |_| true);
        assert_eq!(why(&["articleType=bag"]).as_deref(), Some("no product has articleType=bag (did you mean articleType=Bag?)"));
        assert_eq!(why(&["articletype=Bag"]).as_deref(), Some("no product has a column \"articletype\" (did you mean \"articleType\"?)"));
        assert_eq!(why(&["size=M"]).as_deref(), Some("no product has a column \"size\" (the columns: articleType, baseColour)"));
        assert_eq!(why(&["articleType=Dress", "articleType=Skirt"]).as_deref(), Some("no product has articleType=Dress or Skirt (articleType has: Bag, Shirt)"));
        assert_eq!(why(&["articleType=Bag", "baseColour=Red"]).as_deref(), Some("each condition matches some products, but none matches all of them"));
        assert_eq!(why(&["articleType=Bag"]), None, "a condition some product meets is not to blame");
    }

    #[test]
    fn judges_only_the_columns_counted_in_full() {
        // A collection counts only the columns it indexes: `size` may be some product's column.
        let indexed = |column: &str| column != "size";
        let why = |items: &[&str]| why_nothing_matches(&Filter::parse(items).expect("filter"), &facets(), indexed);
        assert_eq!(why(&["size=M"]), None);
        assert_eq!(why(&["size=M", "articleType=Bag"]), None, "the unjudged condition may be the one to blame");
        assert_eq!(why(&["size=M", "articleType=Hat"]).as_deref(), Some("no product has articleType=Hat (articleType has: Bag, Shirt)"));
    }
}
