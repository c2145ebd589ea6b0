//! Ranking a query vector: the index's nearest products, re-ranked by colour and by the kind
//! the best matches share, joined with their metadata; "more like this"; the likeness bands
//! that name how alike a score is.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use super::{ms, poisoned, MeasuredBands, Query, QueryVector, RankedProduct, SearchEngine, SearchError, SearchRequest, SearchResults, Timings};
use crate::catalog::SqliteCatalog;
use crate::colour::{self, ColourDescriptor, ColourMode, ColourTable};
use crate::index::qdrant::{collection_key, PhotoListings, StoredProduct};
use crate::index::{Allowed, Hit};
use crate::kind::{self, KindMode, KindTable};
use crate::likeness::{self, Likeness, LikenessBands, RecordedBands};
use crate::types::{Filter, ImageRef, Key, Product, SamePhotos};

/// How much deeper than the page a ranking may be taken to fill the page once products listed
/// with the same photo are folded: a bound for a catalog with hundreds of listings a photo,
/// whose last page may then come up short rather than rank the whole catalog.
const MAX_DEPTH_FACTOR: usize = 16;

impl SearchEngine {
    /// "More like this": products most similar to a catalog product, from its stored vector
    /// (a Qdrant collection's, where that is the store: any server's product, in any server).
    /// The product itself is left out of the results.
    pub fn search_like(&self, id: &str, request: &SearchRequest) -> Result<SearchResults, SearchError> {
        let from_collection = {
            let store = self.read_index()?;
            match store.collection() {
                Some(collection) => Some(collection.product(id)?),
                None => None,
            }
        };
        let model_vector: Vec<f32>;
        let (query, colour) = match from_collection {
            Some(found) => {
                let (stored, vector) = found.ok_or_else(|| SearchError::UnknownProduct(id.to_string()))?;
                (Query::new(QueryVector::InSpace(vector)), stored.colour.as_deref().map(ColourDescriptor::from_values).transpose()?)
            }
            None => {
                let (key, vector) = self
                    .with_catalog(|c| {
                        let Some(product) = c.get_by_id(id)? else { return Ok(None) };
                        Ok(c.vector(product.key)?.map(|v| (product.key, v)))
                    })?
                    .ok_or_else(|| SearchError::UnknownProduct(id.to_string()))?;
                model_vector = vector;
                (Query::new(QueryVector::Product(&model_vector)), self.read_colours()?.descriptor(key).copied())
            }
        };
        // Rank from the top with one extra hit, drop the product itself, then cut the page, so
        // pages line up whether or not the product falls inside the filter.
        let widened = SearchRequest { k: request.offset + request.k + 1, offset: 0, ..request.clone() };
        let mut results = self.search_in_space(query, colour.as_ref(), &widened)?;
        // Nor is it shown as another product's variant: one with its photo stands for it.
        results.hits.retain(|h| h.product.id != id && !h.variants.iter().any(|v| v.id == id));
        results.hits = results.hits.into_iter().skip(request.offset).take(request.k).collect();
        for (i, hit) in results.hits.iter_mut().enumerate() {
            hit.rank = request.offset + i + 1;
        }
        Ok(results)
    }

    /// Products most similar to a model embedding (as the encoder produces it, before any
    /// tuned projection), taken as a photo's: the photo adapter applies, so that a search by a
    /// photo's returned `query_vector` finds what the photo found. A vector has no colour:
    /// `colour=match` ranks by shape alone.
    pub fn search_vector(&self, model_vector: &[f32], request: &SearchRequest) -> Result<SearchResults, SearchError> {
        self.search_vector_with_colour(model_vector, None, request)
    }

    /// Products most similar to a model embedding whose photo has `colour` (a
    /// [`ColourDescriptor`], as a photo search returns it), with colour treated as
    /// `request.colour` says.
    pub fn search_vector_with_colour(&self, model_vector: &[f32], colour: Option<&ColourDescriptor>, request: &SearchRequest) -> Result<SearchResults, SearchError> {
        self.search_in_space(Query::new(QueryVector::Photo(model_vector)), colour, request)
    }

    /// Whether the catalog has colour, and the column it names colours in.
    fn colour_facts(&self) -> Result<(bool, String)> {
        Ok(match self.description()? {
            Some(described) => (described.has_colour, described.colour_column.clone()),
            None => {
                let colours = self.read_colours()?;
                (colours.has_colour(), colours.column().to_string())
            }
        })
    }

    /// [`SearchEngine::search_vector_with_colour`] for any query.
    pub(super) fn search_in_space(&self, query: Query<'_>, colour: Option<&ColourDescriptor>, request: &SearchRequest) -> Result<SearchResults, SearchError> {
        let started = Instant::now();
        let mut timings = Timings::default();

        let t = Instant::now();
        let wanted = request.offset.saturating_add(request.k);
        // Colour applies only where the catalog has colour (a grey catalog ranks by shape
        // under every mode) and, for `match`, where the query has a colour. (The colour table
        // is locked only for a moment each time: it is written after the catalog and the
        // index, so it must never be held while waiting for either.)
        let (has_colour, colour_column) = self.colour_facts()?;
        let mode = match (&request.colour, colour) {
            _ if !has_colour => ColourMode::Any,
            (ColourMode::Match, None) => ColourMode::Any,
            (mode, _) => mode.clone(),
        };
        // A Qdrant collection answers with each product's payload, which is shown instead of
        // the catalog's rows: it holds what every server added, and a hit's key is only known
        // to the catalog that wrote it.
        let from_collection = self.read_index()?.collection().is_some();
        // An embedded store takes the keys the filter admits, read from the catalog before the
        // index lock is taken: writers hold the catalog lock while they wait for the index
        // lock, so a search holding both the other way round could deadlock.
        let mut filter = request.filter.clone();
        let mut allowed: Option<Allowed> = match request.filter.is_empty() || from_collection {
            true => None,
            false => Some(self.with_catalog(|c| c.filter_keys(&request.filter))?.into_iter().collect()),
        };
        if let ColourMode::Named(name) = &mode {
            if from_collection {
                // Qdrant filters its payloads: on the column the shop's colours are named in.
                filter.add(&colour_column, name).map_err(SearchError::BadRequest)?;
            } else {
                let named = self.read_colours()?.keys_named(name);
                allowed = Some(match allowed {
                    Some(allowed) => allowed.intersection(&named).copied().collect(),
                    None => named,
                });
            }
        }
        let mut query = query;
        {
            // A vector of the wrong size is the caller's mistake, said before anything is searched.
            let store = self.read_index()?;
            let vector = query.in_space(&store.space)?;
            let index = store.index();
            if vector.len() != index.dim() && !index.is_empty() {
                return Err(SearchError::BadRequest(format!("vector has {} dimensions; this catalog's are {}", vector.len(), index.dim())));
            }
        }
        // The products a collection's answers described, by their hits' keys.
        let found: std::cell::RefCell<HashMap<Key, StoredProduct>> = Default::default();
        let query = std::cell::RefCell::new(query);
        let by_shape = |n: usize| -> Result<Vec<Hit>> {
            let store = self.read_index()?;
            let mut query = query.borrow_mut();
            let vector = query.in_space(&store.space)?;
            let Some(collection) = store.collection() else { return store.search(vector, n, &filter, allowed.as_ref()) };
            let mut found = found.borrow_mut();
            Ok(collection
                .search_products(vector, n, &filter)?
                .into_iter()
                .map(|(score, product)| {
                    let key = collection_key(&product.id);
                    found.insert(key, product);
                    Hit { key, score }
                })
                .collect())
        };
        // The kind consensus re-ranks a deeper pool than the page (a collection's products
        // carry their categories in their payloads; a catalog's are in the kind table).
        let by_kind = request.kind == KindMode::Match && (from_collection || self.read_kinds()?.has_kinds());
        // Products listed with the very same photo (size variants a shop lists as rows of their
        // own) are one result to a shopper: their vectors are identical, so unfolded they fill a
        // page with copies of one card. The best-ranked stands for the others, which it carries
        // as its variants; ranks and pages count photos ([`SamePhotos::one_per_photo`]). Where
        // folding leaves the page short while the index has more, the ranking is taken again
        // deeper. (A collection's payloads carry the photo hash: its hits are folded by the
        // hashes they were found with.)
        let mut depth = wanted;
        let (ranked, kind_mode, same_photos) = loop {
            // The kind is voted on by the shape ranking, before colour blends in: the best
            // matches by shape say best what the photo shows; the colour-matched ones are the
            // right colour, of whatever kind comes closest in it.
            let mut voters: Vec<Hit> = Vec::new();
            let mut by_shape = |n: usize| -> Result<Vec<Hit>> {
                let hits = by_shape(n)?;
                kind::keep_voters(&mut voters, &hits);
                Ok(hits)
            };
            let pool = match by_kind {
                true => depth.max(kind::CANDIDATES),
                false => depth,
            };
            let hits: Vec<Hit> = match (&mode, colour) {
                // The index's lock and the colour table's are taken one at a time.
                (ColourMode::Match, Some(query)) => colour::search_matching(colour::MATCH_WEIGHT, depth, by_shape, |hits, weight| match from_collection {
                    true => Ok(payload_colours(&found.borrow())?.rerank(hits, query, weight)),
                    false => Ok(self.read_colours()?.rerank(hits, query, weight)),
                })?,
                _ => by_shape(pool)?,
            };
            let (hits, kind_mode) = match (by_kind, from_collection) {
                (false, _) => (hits, KindMode::Any),
                (true, false) => (self.read_kinds()?.rerank_by_voters(hits, &voters, kind::WEIGHT), KindMode::Match),
                (true, true) => {
                    let kinds = payload_kinds(&found.borrow());
                    match kinds.has_kinds() {
                        true => (kinds.rerank_by_voters(hits, &voters, kind::WEIGHT), KindMode::Match),
                        false => (hits, KindMode::Any),
                    }
                }
            };
            let ranked_rows = hits.len();
            let (ranked, same_photos) = match from_collection {
                true => {
                    let same_photos = payload_same_photos(&found.borrow(), &hits);
                    (same_photos.one_per_photo(hits, |hit| hit.key, wanted), same_photos)
                }
                false => self.with_catalog(|c| one_per_photo(c, hits, wanted))?,
            };
            let index_exhausted = ranked_rows < depth;
            if ranked.len() >= wanted || index_exhausted || depth >= wanted.max(kind::CANDIDATES) * MAX_DEPTH_FACTOR {
                break (ranked, kind_mode, same_photos);
            }
            depth *= 2;
        };
        timings.search_ms = ms(t);

        let t = Instant::now();
        let page: Vec<Hit> = ranked.into_iter().skip(request.offset).take(request.k).collect();
        let (products, mut variants): (Vec<Product>, HashMap<Key, Vec<Product>>) = match from_collection {
            true => {
                let found = found.borrow();
                let products: Vec<Product> = page.iter().filter_map(|h| found.get(&h.key).cloned().map(collection_product)).collect();
                // A hit's variants are the other products with its photo that the filter
                // admits. The payloads say which hits' photos other products have and how
                // many (marked, or folded here): where this search found them all, they are
                // among its own answers; for the rest the collection is asked, in one request
                // (none in most collections, and for size variants only where a filter or the
                // ranking's depth left some out).
                // (A hit neither marked nor folded here has its photo to itself.)
                let page_photos = page
                    .iter()
                    .filter_map(|h| Some((h.key, found.get(&h.key)?)))
                    .filter(|(key, p)| p.photo_listings != PhotoListings::Own || same_photos.shared_photo(*key).is_some())
                    .filter_map(|(_, p)| Some((p.photo.as_deref()?, p.photo_listings)));
                let (complete, to_ask) = photos_found_whole(page_photos, &found);
                let mut listed = match to_ask.is_empty() {
                    true => Vec::new(),
                    false => self.read_index()?.collection().map(|c| c.products_with_photos(&to_ask, &filter)).transpose()?.unwrap_or_default(),
                };
                if !complete.is_empty() {
                    listed.extend(found.values().filter(|p| p.photo.as_deref().is_some_and(|photo| complete.contains(photo))).cloned());
                }
                let mut variants: HashMap<Key, Vec<Product>> = HashMap::new();
                for product in &products {
                    let others = listed.iter().filter(|other| other.photo.as_deref() == Some(product.content_hash.as_str()) && other.id != product.id);
                    let mut others: Vec<Product> = others.cloned().map(collection_product).collect();
                    // In one order whichever way they were found (the search's answers come
                    // in no particular one).
                    others.sort_by(|a, b| a.id.cmp(&b.id));
                    if !others.is_empty() {
                        variants.insert(product.key, others);
                    }
                }
                (products, variants)
            }
            false => {
                let keys: Vec<_> = page.iter().map(|h| h.key).collect();
                // Only hits known to share their photo have variants: none in most catalogs.
                let shared: Vec<(Key, &str)> = page.iter().filter_map(|h| Some((h.key, same_photos.shared_photo(h.key)?))).collect();
                self.with_catalog(|c| {
                    // A hit's variants are the other products with its photo that the filter admits.
                    let mut siblings = c.keys_with_photos(&shared.iter().map(|&(_, photo)| photo).collect::<Vec<_>>())?;
                    let others_of: Vec<(Key, Vec<Key>)> = shared
                        .iter()
                        .map(|&(key, photo)| {
                            let others =
                                siblings.remove(photo).unwrap_or_default().into_iter().filter(|&other| other != key && allowed.as_ref().is_none_or(|a| a.contains(&other)));
                            (key, others.collect())
                        })
                        .collect();
                    // The page and its variants in one read.
                    let all: Vec<Key> = keys.iter().copied().chain(others_of.iter().flat_map(|(_, others)| others.iter().copied())).collect();
                    let mut read: HashMap<Key, Product> = c.get_many(&all)?.into_iter().map(|p| (p.key, p)).collect();
                    let variants: HashMap<Key, Vec<Product>> = others_of
                        .into_iter()
                        .map(|(key, others)| (key, others.iter().filter_map(|other| read.get(other).cloned()).collect::<Vec<_>>()))
                        .filter(|(_, others)| !others.is_empty())
                        .collect();
                    Ok((keys.iter().filter_map(|key| read.remove(key)).collect(), variants))
                })?
            }
        };
        // A patterned product's swatch shows its main colours: from the colour table, or the
        // payload a collection answered with.
        let patterned = products.iter().filter(|p| is_patterned(p));
        let mixes: HashMap<Key, Vec<(&'static str, f32)>> = match from_collection {
            true => {
                let found = found.borrow();
                patterned.filter_map(|p| Some((p.key, payload_colour(found.get(&p.key)?)?.main_colours()))).collect()
            }
            false => {
                let colours = self.read_colours()?;
                patterned.filter_map(|p| Some((p.key, colours.descriptor(p.key)?.main_colours()))).collect()
            }
        };
        let bands = self.likeness_bands()?;
        let likeness = |score: f32| bands.map_or(Likeness::Related, |b| b.band(score));
        let hits: Vec<RankedProduct> = page
            .iter()
            .zip(0..)
            .filter_map(|(hit, i)| {
                // A colour blend not re-ranked by kind may pass 1 (`ColourTable::rerank`).
                let score = hit.score.clamp(-1.0, 1.0);
                products.iter().find(|p| p.key == hit.key).map(|p| RankedProduct {
                    rank: request.offset + i + 1,
                    score,
                    likeness: likeness(score),
                    product: p.clone(),
                    colour_mix: mixes.get(&p.key).cloned().unwrap_or_default(),
                    variants: variants.remove(&p.key).unwrap_or_default(),
                })
            })
            .collect();
        timings.metadata_ms = ms(t);
        // A filter that matches nothing is most often a typo: say which part no product has.
        let why_nothing_matches = match hits.is_empty() && request.offset == 0 && !request.filter.is_empty() {
            true => self.why_nothing_matches(&request.filter)?,
            false => None,
        };
        timings.total_ms = ms(started);
        Ok(SearchResults { hits, timings, colour_mode: mode, kind_mode, why_nothing_matches, ..SearchResults::default() })
    }

    /// The score bands of "Very similar", "Similar" and "Related" ([`crate::likeness`]),
    /// measured on a sample of the catalog's own products against the index, and measured again
    /// when the search space changes or the catalog has grown or shrunk by a fifth.
    /// `None` for a catalog too small to compare its products.
    pub fn likeness_bands(&self) -> Result<Option<LikenessBands>> {
        let mut measured = self.likeness.lock().map_err(|_| poisoned("likeness bands"))?;
        let space = self.current_space()?;
        let products = self.len();
        let fresh = |m: &MeasuredBands| Arc::ptr_eq(&m.space, &space) && likeness::still_fits(m.products, products);
        if let Some(m) = measured.as_ref().filter(|m| fresh(m)) {
            return Ok(m.bands);
        }
        // As `index` or `tune` recorded them for this space, or measured now (not written back:
        // a search never writes to the catalog).
        let fingerprint = space.fingerprint();
        let recorded = match self.description()? {
            Some(described) => described.likeness.as_deref().and_then(RecordedBands::from_setting),
            None => self.with_catalog(|c| Ok(c.setting(likeness::SETTING)?.as_deref().and_then(RecordedBands::from_setting)))?,
        };
        let bands = match recorded {
            Some(recorded) if recorded.fits(&fingerprint, products) => Some(recorded.bands),
            // Without the catalog there are no model vectors to sample: as described, or none.
            recorded if self.described.is_some() => recorded.map(|r| r.bands),
            _ => {
                let (sample, same_photos) = self.with_catalog(|c| Ok((c.sample_vectors(likeness::SAMPLE)?, c.shared_photos()?)))?;
                let sample: Vec<(Key, Vec<f32>)> = sample.into_iter().filter_map(|(key, v)| space.map(&v).ok().map(|v| (key, v))).collect();
                let moved = std::cell::Cell::new(false);
                let bands = likeness::measure(&sample, &same_photos, |v, n| {
                    let index = self.read_index()?;
                    if !Arc::ptr_eq(&index.space, &space) {
                        moved.set(true);
                        return Ok(Vec::new());
                    }
                    Ok(index.search(v, n, &Filter::default(), None)?.into_iter().map(|h| (h.key, h.score)).collect())
                })?;
                if moved.get() {
                    // The space was replaced while measuring (`tune` ran): measured in the new one.
                    drop(measured);
                    return self.likeness_bands();
                }
                bands
            }
        };
        *measured = Some(MeasuredBands { space: space.clone(), products, bands });
        Ok(bands)
    }
}

/// Whether `product` is named [`colour::MULTI`]: no one colour (stripes, prints, two-tone).
pub(super) fn is_patterned(product: &Product) -> bool {
    product.colour().is_some_and(|name| name.eq_ignore_ascii_case(colour::MULTI))
}

/// The colour descriptor a collection's payload carries, if any (and intact).
pub(super) fn payload_colour(stored: &StoredProduct) -> Option<ColourDescriptor> {
    ColourDescriptor::from_values(stored.colour.as_deref()?).ok()
}

/// The first `wanted` of `hits` whose photos differ ([`SamePhotos::one_per_photo`]), and what
/// the catalog said of the hits it was asked about. Only as many hits as the page still needs
/// are looked up at a time: a colour or kind re-ranking hands over up to 300, and a catalog
/// where every product has its own photo needs just the page's.
fn one_per_photo(catalog: &SqliteCatalog, hits: Vec<Hit>, wanted: usize) -> Result<(Vec<Hit>, SamePhotos)> {
    let mut same_photos = SamePhotos::default();
    let (mut asked, mut kept) = (0, 0);
    while kept < wanted && asked < hits.len() {
        let next = (asked + wanted - kept).min(hits.len());
        let keys: Vec<Key> = hits[asked..next].iter().map(|hit| hit.key).collect();
        same_photos.extend(catalog.shared_photos_among(&keys)?);
        asked = next;
        kept = same_photos.one_per_photo(&hits[..asked], |hit| hit.key, wanted).len();
    }
    let hits = hits.into_iter().take(asked);
    Ok((same_photos.one_per_photo(hits, |hit| hit.key, wanted), same_photos))
}

/// A product as a Qdrant collection's payload describes it (its photo, if it has one there,
/// is read by [`SearchEngine::product_image`]).
pub(super) fn collection_product(stored: StoredProduct) -> Product {
    Product { key: collection_key(&stored.id), id: stored.id, image: ImageRef::Collection, content_hash: stored.photo.unwrap_or_default(), metadata: stored.metadata }
}

/// The hits of a collection's answer that share their photo with another hit, by the photo
/// hashes their payloads carry ([`SamePhotos::one_per_photo`] folds them).
fn payload_same_photos(found: &HashMap<Key, StoredProduct>, hits: &[Hit]) -> SamePhotos {
    SamePhotos::among(hits.iter().filter_map(|hit| Some((hit.key, found.get(&hit.key)?.photo.as_deref()?))))
}

/// Of the photos of a page's hits (each with what its point's mark says), those whose other
/// listings the search found all of among `found` (its answers), and those the collection must
/// be asked for.
fn photos_found_whole<'a>(page_photos: impl Iterator<Item = (&'a str, PhotoListings)>, found: &HashMap<Key, StoredProduct>) -> (HashSet<&'a str>, Vec<&'a str>) {
    let page_photos: Vec<(&str, PhotoListings)> = page_photos.collect();
    let (mut complete, mut to_ask) = (HashSet::new(), Vec::new());
    if page_photos.is_empty() {
        return (complete, to_ask);
    }
    let mut listings: HashMap<&str, usize> = page_photos.iter().map(|&(photo, _)| (photo, 0)).collect();
    for photo in found.values().filter_map(|p| p.photo.as_deref()) {
        if let Some(n) = listings.get_mut(photo) {
            *n += 1;
        }
    }
    for (photo, marked) in page_photos {
        let answered = listings.get(photo).copied().unwrap_or(0);
        if marked.more_than(answered) {
            to_ask.push(photo);
        } else if answered > 1 {
            complete.insert(photo);
        }
    }
    (complete, to_ask)
}

/// The categories of products a collection's answer described, to agree on.
fn payload_kinds(found: &HashMap<Key, StoredProduct>) -> KindTable {
    let mut table = KindTable::default();
    for (key, product) in found {
        table.put(*key, &product.metadata);
    }
    table
}

/// The colours of products a collection's answer described, to re-rank them by.
fn payload_colours(found: &HashMap<Key, StoredProduct>) -> Result<ColourTable> {
    let mut table = ColourTable::default();
    for (key, product) in found {
        let descriptor = product.colour.as_deref().map(ColourDescriptor::from_values).transpose()?;
        table.put(*key, descriptor, Product::named_colour(&product.metadata));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(id: &str, photo: &str, photo_listings: PhotoListings) -> (Key, StoredProduct) {
        (collection_key(id), StoredProduct { id: id.to_string(), photo: Some(photo.to_string()), photo_listings, ..StoredProduct::default() })
    }

    /// A search asks the collection for a page hit's other listings only where its mark says
    /// there are more than the search itself found.
    #[test]
    fn only_photos_with_listings_the_search_did_not_find_are_asked_for() {
        let three = PhotoListings::Counted(3);
        let found: HashMap<Key, StoredProduct> = [
            // Every size of the shirt was found: nothing to ask.
            listing("shirt-s", "shirt", three),
            listing("shirt-m", "shirt", three),
            listing("shirt-l", "shirt", three),
            // One of the dress's three sizes was left out (a filter, or the depth).
            listing("dress-s", "dress", three),
            listing("dress-m", "dress", three),
            // The shoe's photo is its own.
            listing("shoe", "shoe", PhotoListings::Own),
            // Marked by a lookalike that did not count: always asked.
            listing("bag", "bag", PhotoListings::Uncounted),
            // Unmarked, yet found twice (a write that failed before its mark): asked.
            listing("hat-1", "hat", PhotoListings::Own),
            listing("hat-2", "hat", PhotoListings::Own),
        ]
        .into_iter()
        .collect();
        let page = ["shirt-m", "dress-s", "shoe", "bag", "hat-1"].map(|id| &found[&collection_key(id)]);
        let (complete, mut to_ask) = photos_found_whole(page.iter().filter_map(|p| Some((p.photo.as_deref()?, p.photo_listings))), &found);
        to_ask.sort();
        assert_eq!(complete, HashSet::from(["shirt"]));
        assert_eq!(to_ask, ["bag", "dress", "hat"]);
    }
}
