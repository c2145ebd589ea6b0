//! The plain data every layer speaks: products, their metadata and images, filters on the
//! metadata, and which model's vectors a catalog holds. Nothing here imports the rest of
//! lookalike; everything else may import it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// A product's metadata: column name → value, e.g. `articleType` → `Dresses`.
pub type Metadata = BTreeMap<String, String>;

/// The catalog's internal key for a product; stable for the product's lifetime and used by the
/// vector indexes. The shop's own identifier is [`Product::id`].
pub type Key = i64;

/// Where a product's photo lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// A file the catalog was imported from (absolute path).
    File(PathBuf),
    /// Bytes kept inside the catalog (datasets without files, e.g. Fashion-MNIST; API uploads).
    Stored { mime: String },
    /// A product known from a Qdrant collection's payload, not from the catalog: its photo is
    /// in that payload when small enough, else only at the shop's own image URL.
    Collection,
}

/// One product as the catalog stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    pub key: Key,
    pub id: String,
    pub image: ImageRef,
    /// SHA-256 of the image bytes: re-imports skip products whose image has not changed.
    pub content_hash: String,
    pub metadata: Metadata,
}

/// Whether `text` is an `http(s)://` address (any case), the only links handed to a browser.
fn is_web_address(text: &str) -> bool {
    let lower = text.trim_start().to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

/// Columns that hold a product's display name, the first one present wins.
pub const NAME_COLUMNS: [&str; 3] = ["productDisplayName", "name", "title"];

/// The metadata columns that may link a product's photo on the shop's own image server or CDN
/// ([`Product::image_link`]), in the order they are read.
pub const IMAGE_LINK_COLUMNS: [&str; 3] = ["image_url", "imageUrl", "image_link"];

impl Product {
    /// A human-readable name: the catalog's display-name column if it has one.
    pub fn name(&self) -> &str {
        self.first_of(&NAME_COLUMNS).unwrap_or(&self.id)
    }

    /// The most specific category the metadata has.
    pub fn category(&self) -> Option<&str> {
        Product::category_of(&self.metadata)
    }

    /// The category `metadata` gives (see [`Product::category`]).
    pub fn category_of(metadata: &Metadata) -> Option<&str> {
        CATEGORY_COLUMNS.iter().find_map(|c| metadata.get(*c)).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The product's named colour: the shop's own column, else the one computed at import.
    pub fn colour(&self) -> Option<&str> {
        Product::named_colour(&self.metadata)
    }

    /// The named colour `metadata` gives (see [`Product::colour`]).
    pub fn named_colour(metadata: &Metadata) -> Option<&str> {
        COLOUR_COLUMNS.iter().find_map(|c| metadata.get(*c)).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The product's price as the shop wrote it (`price` column), shown as is: the catalog does
    /// not know currencies or formats, the shop does.
    pub fn price(&self) -> Option<&str> {
        self.first_of(&["price", "Price"])
    }

    /// The product's own page in the shop (`url`, `link` or `productUrl` column), only when it
    /// is an `http(s)://` address: anything else (a `javascript:` link in a CSV) is never
    /// handed to a shopper's browser.
    pub fn link(&self) -> Option<&str> {
        first_in(&self.metadata, &["url", "link", "productUrl"], is_web_address)
    }

    /// The product's photo on the shop's own image server or CDN (`image_url`, `imageUrl` or
    /// `image_link` column), only when it is an `http(s)://` address: where a server that knows
    /// the product from a Qdrant collection sends a shopper for its photo at full size.
    pub fn image_link(&self) -> Option<&str> {
        Product::image_link_of(&self.metadata)
    }

    /// The photo link `metadata` gives (see [`Product::image_link`]).
    pub fn image_link_of(metadata: &Metadata) -> Option<&str> {
        first_in(metadata, &IMAGE_LINK_COLUMNS, is_web_address)
    }

    fn first_of(&self, columns: &[&str]) -> Option<&str> {
        first_in(&self.metadata, columns, |v| !v.is_empty())
    }
}

/// The first value of `columns` in `metadata` that `accept`s: an empty `url` column beside a
/// filled `link` one (two exports merged into one CSV) gives the link.
fn first_in<'m>(metadata: &'m Metadata, columns: &[&str], accept: fn(&str) -> bool) -> Option<&'m str> {
    columns.iter().filter_map(|c| metadata.get(*c)).map(String::as_str).find(|v| accept(v))
}

/// A product found in a shopper's photo: its box, `[x, y, w, h]` as fractions of the photo's
/// width and height, and its share of the photo's foreground (0..1; the items of one photo add
/// up to at most 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Detection {
    pub bounds: [f32; 4],
    pub score: f32,
}

/// A product to add or replace, with its vectors.
#[derive(Debug, Clone)]
pub struct NewProduct {
    pub id: String,
    pub image: NewImage,
    pub content_hash: String,
    pub metadata: Metadata,
    pub vector: Vec<f32>,
    pub max_pooled: Option<Vec<f32>>,
    /// The photo's colour descriptor (`crate::colour::ColourDescriptor`'s values), when it was
    /// computed.
    pub colour: Option<Vec<f32>>,
}

/// Metadata columns that name a product's category, most specific first (the Fashion Product
/// Images layout's, then a generic one).
pub const CATEGORY_COLUMNS: [&str; 4] = ["articleType", "subCategory", "masterCategory", "category"];

/// Metadata columns a shop names a product's colour in, most specific first: a catalog's own
/// column always wins over the colour lookalike computes (stored as [`COMPUTED_COLOUR_COLUMN`]).
pub const COLOUR_COLUMNS: [&str; 3] = ["baseColour", "colour", "color"];

/// Where lookalike stores the named colour it computed from a product's photo, for products
/// whose metadata names none.
pub const COMPUTED_COLOUR_COLUMN: &str = "colour";

/// A photo's content hash as a catalog records it (`Product::content_hash`): hex SHA-256 of its
/// bytes. An import encodes a product again only when this changes.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Which products show the very same photo (equal content hashes): the one rule by which size
/// variants listed with one photo are one product to a shopper. A search shows them as one
/// result; measuring whether a search finds "the very product" counts any of them.
#[derive(Debug, Clone, Default)]
pub struct SamePhotos {
    /// The content hash of each product whose photo another product has too (the rest need
    /// no entry: most catalogs have none).
    shared: HashMap<Key, String>,
}

impl SamePhotos {
    pub fn of(products: &[Product]) -> SamePhotos {
        SamePhotos::among(products.iter().map(|p| (p.key, p.content_hash.as_str())))
    }

    /// Of `listings` (each a key and its photo's content hash), those whose photo another of
    /// them has.
    pub fn among<'a>(listings: impl Iterator<Item = (Key, &'a str)> + Clone) -> SamePhotos {
        let mut count: HashMap<&str, usize> = HashMap::new();
        for (_, photo) in listings.clone() {
            *count.entry(photo).or_default() += 1;
        }
        let shared = listings.filter(|(_, photo)| count.get(photo).is_some_and(|&n| n > 1)).map(|(key, photo)| (key, photo.to_string())).collect();
        SamePhotos { shared }
    }

    /// From the content hashes of products known to share their photo with another product
    /// (as the catalog finds them among a ranking's hits).
    pub fn from_shared(shared: HashMap<Key, String>) -> SamePhotos {
        SamePhotos { shared }
    }

    /// Takes in what `more` knows (the catalog's answer for further hits of a ranking).
    pub fn extend(&mut self, more: SamePhotos) {
        self.shared.extend(more.shared);
    }

    /// The content hash of `key`'s photo, when another product has that photo too.
    pub fn shared_photo(&self, key: Key) -> Option<&str> {
        self.shared.get(&key).map(String::as_str)
    }

    /// Whether `found` is `product`, or another product with its photo.
    pub fn is_product(&self, found: Key, product: Key) -> bool {
        found == product || matches!((self.shared_photo(found), self.shared_photo(product)), (Some(a), Some(b)) if a == b)
    }

    /// Every product listed with the photo of one of `keys`, `keys` included: what leaving a
    /// product out of training must leave out with it (its size variants are it).
    pub fn with_twins(&self, keys: &HashSet<Key>) -> HashSet<Key> {
        let photos: HashSet<&str> = keys.iter().filter_map(|&key| self.shared_photo(key)).collect();
        let twins = self.shared.iter().filter(|(_, photo)| photos.contains(photo.as_str())).map(|(&key, _)| key);
        keys.iter().copied().chain(twins).collect()
    }

    /// The listings of each shared photo after its first (by key): where one listing is to stand
    /// for its photo, the ones to leave out.
    pub fn later_listings(&self) -> HashSet<Key> {
        let mut first: HashMap<&str, Key> = HashMap::new();
        for (&key, photo) in &self.shared {
            let earliest = first.entry(photo.as_str()).or_insert(key);
            *earliest = (*earliest).min(key);
        }
        // Each listing against its photo's first: one lookup, not a pass over every photo.
        self.shared.iter().filter(|&(key, photo)| first.get(photo.as_str()) != Some(key)).map(|(&key, _)| key).collect()
    }

    /// The most products any one photo is listed for (1 when none is shared): how much deeper
    /// than a page a ranking must go to fill the page with photos.
    pub fn most_listings_of_a_photo(&self) -> usize {
        let mut count: HashMap<&str, usize> = HashMap::new();
        for photo in self.shared.values() {
            *count.entry(photo.as_str()).or_default() += 1;
        }
        count.into_values().max().unwrap_or(1)
    }

    /// The first `wanted` of a ranking whose photos differ, in rank order: an item whose photo
    /// an earlier one has is left out (a variant of it, which the earlier one stands for). Any
    /// product not known to share its photo stands alone. What a search shows and `eval`
    /// measures: ranks and pages count photos, not listings.
    pub fn one_per_photo<T>(&self, ranking: impl IntoIterator<Item = T>, key_of: impl Fn(&T) -> Key, wanted: usize) -> Vec<T> {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut kept = Vec::new();
        for item in ranking {
            if kept.len() == wanted {
                break;
            }
            if let Some(photo) = self.shared_photo(key_of(&item)) {
                if !seen.insert(photo) {
                    continue;
                }
            }
            kept.push(item);
        }
        kept
    }
}

/// The first `n` of `items`, comma-separated, "..." after them when there are more: how a
/// message names what it left out, or what there is.
pub fn first_few<S: AsRef<str>>(items: &[S], n: usize) -> String {
    let more = if items.len() > n { ", ..." } else { "" };
    format!("{}{more}", items.iter().take(n).map(AsRef::as_ref).collect::<Vec<_>>().join(", "))
}

/// The metadata columns any of `products` has, sorted (what a label or filter can name).
pub fn columns_of(products: &[Product]) -> Vec<&str> {
    let columns: BTreeSet<&str> = products.iter().flat_map(|p| p.metadata.keys().map(String::as_str)).collect();
    columns.into_iter().collect()
}

/// Whether the shop's own metadata names a colour (one of [`COLOUR_COLUMNS`], not blank): then
/// it wins, and no computed name is stored.
pub fn names_a_colour(metadata: &Metadata) -> bool {
    COLOUR_COLUMNS.iter().any(|c| metadata.get(*c).is_some_and(|v| !v.trim().is_empty()))
}

/// Metadata column names starting with this are lookalike's own fields beside a product's
/// metadata (in a Qdrant point's payload): a shop's column may not take one.
pub const RESERVED_COLUMN_PREFIX: &str = "_lookalike_";

/// Whether `name` can be a metadata column a shop sets: not empty, at most 256 bytes, no
/// control characters, and not one of lookalike's own fields ([`RESERVED_COLUMN_PREFIX`]).
pub fn check_column_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        bail!("a metadata column needs a name of 1 to 256 bytes without control characters, not {name:?}");
    }
    if name.starts_with(RESERVED_COLUMN_PREFIX) {
        bail!("column {name:?}: names starting with {RESERVED_COLUMN_PREFIX:?} are lookalike's own");
    }
    Ok(())
}

/// A change to a product's metadata alone (a new price, name or category), its photo and
/// vectors kept: columns to set and columns to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataPatch {
    pub set: Metadata,
    pub remove: BTreeSet<String>,
}

impl MetadataPatch {
    /// `metadata` with the patch applied.
    pub fn apply(&self, metadata: &Metadata) -> Metadata {
        let mut patched: Metadata = metadata.iter().filter(|(column, _)| !self.remove.contains(*column)).map(|(k, v)| (k.clone(), v.clone())).collect();
        patched.extend(self.set.iter().map(|(k, v)| (k.clone(), v.clone())));
        patched
    }

    /// The patch, completed so that a product whose metadata names a colour before it and
    /// none after it takes `computed` (the colour lookalike names from its photo), as `index`
    /// names one wherever the shop names none: removing a shop's `baseColour` leaves the
    /// product in the colour facet under the colour its photo has, not without any.
    pub fn naming_a_colour(&self, before: &Metadata, computed: Option<&str>) -> MetadataPatch {
        let mut patch = self.clone();
        if let (true, false, Some(name)) = (names_a_colour(before), names_a_colour(&self.apply(before)), computed) {
            patch.remove.remove(COMPUTED_COLOUR_COLUMN);
            patch.set.insert(COMPUTED_COLOUR_COLUMN.to_string(), name.to_string());
        }
        patch
    }
}

#[derive(Debug, Clone)]
pub enum NewImage {
    File(PathBuf),
    Stored { bytes: Vec<u8>, mime: String },
}

/// Equality filters on metadata columns. Values given for the same column are alternatives
/// (`colour=Red` or `colour=Blue`); different columns must all match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    conditions: BTreeMap<String, Vec<String>>,
}

impl Filter {
    /// Parses `column=value` strings as given on the command line or in a query string.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Filter> {
        let mut filter = Filter::default();
        for item in items {
            let item = item.as_ref();
            let Some((column, value)) = item.split_once('=') else {
                bail!("filter {item:?} is not of the form column=value (e.g. articleType=Dresses)");
            };
            filter.add(column.trim(), value.trim()).map_err(anyhow::Error::msg)?;
        }
        if filter.value_count() > Filter::MAX_VALUES {
            bail!("at most {} filter values in one search, not {}", Filter::MAX_VALUES, filter.value_count());
        }
        Ok(filter)
    }

    /// A bound on one search's filter: each value is a bound SQL parameter, and a shopper's
    /// facets never need more.
    pub const MAX_VALUES: usize = 256;

    /// Longest column name a filter may name (CSV headers are short; this bounds the work).
    pub const MAX_COLUMN_BYTES: usize = 256;

    /// Adds `column = value` as an alternative. Refuses a column name that no catalog can have
    /// (empty, over [`Filter::MAX_COLUMN_BYTES`], or with control characters such as NUL).
    pub fn add(&mut self, column: &str, value: &str) -> Result<(), String> {
        if column.is_empty() {
            return Err(format!("the filter on {value:?} has an empty column name (write column=value, e.g. articleType=Dresses)"));
        }
        if column.len() > Filter::MAX_COLUMN_BYTES || column.chars().any(char::is_control) {
            return Err(format!("{column:?} is not a column name: at most {} bytes, without control characters", Filter::MAX_COLUMN_BYTES));
        }
        let values = self.conditions.entry(column.to_string()).or_default();
        if !values.iter().any(|v| v == value) {
            values.push(value.to_string());
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// Number of values across all columns.
    pub fn value_count(&self) -> usize {
        self.conditions.values().map(Vec::len).sum()
    }

    pub fn conditions(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.conditions.iter().map(|(c, v)| (c.as_str(), v.as_slice()))
    }

    pub fn matches(&self, metadata: &Metadata) -> bool {
        self.conditions.iter().all(|(column, values)| metadata.get(column).is_some_and(|v| values.contains(v)))
    }
}

/// Name and dimension of the model whose vectors a catalog holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorSpace {
    pub model: String,
    pub dim: usize,
}

/// An `index` run in progress, as it records itself in the catalog (`settings.indexing`), so a
/// server over the same catalog can say how far it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IndexingProgress {
    /// The indexing process (its record is ignored once it is gone).
    pub pid: u32,
    /// Products handled so far (embedded, unchanged or skipped).
    pub done: usize,
    /// Products in the import.
    pub total: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(metadata: &[(&str, &str)]) -> Product {
        Product {
            key: 1,
            id: "p1".into(),
            image: ImageRef::Stored { mime: "image/png".into() },
            content_hash: String::new(),
            metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    /// Products 1, 2 and 3 share photo "a"; 5 shares "b" with 4; the rest (6: removed since)
    /// have their own.
    fn shirts_in_sizes() -> SamePhotos {
        SamePhotos::from_shared([(1, "a"), (2, "a"), (3, "a"), (4, "b"), (5, "b")].into_iter().map(|(k, h)| (k, h.to_string())).collect())
    }

    #[test]
    fn the_best_ranked_listing_of_a_photo_stands_for_the_others() {
        let same = shirts_in_sizes();
        let ranking = [(2, 1.0), (7, 0.99), (1, 0.98), (3, 0.97), (5, 0.96), (8, 0.95), (4, 0.94), (9, 0.93)];
        // Items keep what they carry (here a score).
        assert_eq!(same.one_per_photo(ranking, |&(key, _)| key, 10), [(2, 1.0), (7, 0.99), (5, 0.96), (8, 0.95), (9, 0.93)]);
        // Stops at the number wanted, counting photos, not listings.
        assert_eq!(same.one_per_photo([1, 2, 3, 7, 4, 5, 8], |&k| k, 3), [1, 7, 4]);
        // A product not known to share its photo stands alone, even twice.
        assert_eq!(same.one_per_photo([6, 6, 1], |&k| k, 10), [6, 6, 1]);
        // A catalog where every product has its own photo folds nothing.
        assert_eq!(SamePhotos::default().one_per_photo([1, 2, 3], |&k| k, 10), [1, 2, 3]);
        assert_eq!((same.most_listings_of_a_photo(), SamePhotos::default().most_listings_of_a_photo()), (3, 1));
    }

    #[test]
    fn twins_go_with_a_product_and_one_listing_stands_for_its_photo() {
        let same = shirts_in_sizes();
        assert_eq!(same.with_twins(&HashSet::from([2, 9])), HashSet::from([1, 2, 3, 9]));
        assert_eq!(same.with_twins(&HashSet::new()), HashSet::new());
        assert_eq!(same.later_listings(), HashSet::from([2, 3, 5]));
        assert!(SamePhotos::default().later_listings().is_empty());
    }

    #[test]
    fn products_with_the_same_photo_count_as_one() {
        let with_photo = |key: Key, hash: &str| Product { key, content_hash: hash.into(), ..product(&[]) };
        let same = SamePhotos::of(&[with_photo(1, "shirt"), with_photo(2, "shoe"), with_photo(3, "shirt"), with_photo(4, "shirt")]);
        assert_eq!(same.shared.len(), 3, "the shoe's photo is its own: no entry");
        assert!(same.is_product(3, 1) && same.is_product(1, 4) && same.is_product(2, 2));
        assert!(!same.is_product(2, 1) && !same.is_product(1, 2) && !same.is_product(5, 6));
    }

    #[test]
    fn price_and_link_come_from_the_shop_columns_and_only_web_links_are_links() {
        let p = product(&[("price", "€49.99"), ("link", "https://shop.example/p/1")]);
        assert_eq!((p.price(), p.link()), (Some("€49.99"), Some("https://shop.example/p/1")));
        assert_eq!(product(&[("url", "HTTP://shop.example/p/1")]).link(), Some("HTTP://shop.example/p/1"));
        for unsafe_link in ["javascript:alert(1)", "data:text/html,hi", "/p/1", ""] {
            assert_eq!(product(&[("url", unsafe_link)]).link(), None, "{unsafe_link}");
        }
        assert_eq!(product(&[]).price(), None);
        // An empty or unsafe value in one column does not hide a good one in the next.
        let merged = product(&[("url", ""), ("link", "https://shop.example/p/2"), ("image_url", "photos/2.jpg"), ("imageUrl", "https://cdn.example/2.jpg")]);
        assert_eq!((merged.link(), merged.image_link()), (Some("https://shop.example/p/2"), Some("https://cdn.example/2.jpg")));
    }

    #[test]
    fn a_metadata_patch_sets_and_removes_columns_and_keeps_the_rest() {
        let before = product(&[("price", "49.99"), ("season", "Summer"), ("articleType", "Dress")]).metadata;
        let patch = MetadataPatch {
            set: [("price".to_string(), "39.99".to_string()), ("usage".to_string(), "Party".to_string())].into(),
            remove: ["season".to_string(), "nothing".to_string()].into(),
        };
        let after = patch.apply(&before);
        let expected = product(&[("price", "39.99"), ("usage", "Party"), ("articleType", "Dress")]).metadata;
        assert_eq!(after, expected);
        assert_eq!(MetadataPatch::default().apply(&before), before, "an empty patch changes nothing");
    }

    #[test]
    fn a_patch_that_removes_the_shop_colour_names_the_computed_one() {
        let shop = product(&[("baseColour", "Navy Blue"), ("price", "10")]).metadata;
        let removing = |column: &str| MetadataPatch { remove: [column.to_string()].into(), ..MetadataPatch::default() };
        let after = removing("baseColour").naming_a_colour(&shop, Some("Blue")).apply(&shop);
        assert_eq!(after, product(&[("colour", "Blue"), ("price", "10")]).metadata);
        // Removing the computed name itself brings it back, as the next `index` would.
        let computed = product(&[("colour", "Red")]).metadata;
        let patch = removing("colour").naming_a_colour(&computed, Some("Red"));
        assert!(patch.remove.is_empty(), "not set and then removed (Qdrant applies the removal last): {patch:?}");
        assert_eq!(patch.apply(&computed), computed);
        // A product that named no colour, a patch that keeps one, or no photo colour: as given.
        let grey = product(&[("price", "10")]).metadata;
        let price = MetadataPatch { set: [("price".to_string(), "9".to_string())].into(), ..MetadataPatch::default() };
        assert_eq!(price.naming_a_colour(&grey, Some("Grey")), price);
        assert_eq!(price.naming_a_colour(&shop, Some("Blue")), price);
        assert_eq!(removing("baseColour").naming_a_colour(&shop, None), removing("baseColour"));
        let renaming = MetadataPatch { set: [("baseColour".to_string(), "Red".to_string())].into(), ..MetadataPatch::default() };
        assert_eq!(renaming.naming_a_colour(&shop, Some("Blue")), renaming);
    }

    #[test]
    fn lookalike_s_own_fields_and_blank_names_are_no_shop_columns() {
        assert!(check_column_name("price").is_ok());
        for bad in ["", "  ", "_lookalike_id", "a\nb"] {
            assert!(check_column_name(bad).is_err(), "{bad:?}");
        }
    }
}
