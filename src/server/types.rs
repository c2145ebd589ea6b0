//! The JSON bodies of the API: what handlers accept and answer. One [`ProductBody`] shape
//! serves every answer that shows a product, [`HitBody`] adds rank and score to it, and the
//! command line's `search --json` prints the same.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::likeness::Likeness;
use crate::search::{ItemResults, ListedProduct, ProductPage, RankedProduct, SearchResults, Timings};
use crate::types::{check_column_name, Detection, MetadataPatch, Product};

/// A product and all its metadata.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProductBody {
    pub id: String,
    pub name: String,
    pub category: Option<String>,
    pub colour: Option<String>,
    /// A swatch for `colour` (`#rrggbb`), when it is one of lookalike's named colours.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colour_rgb: Option<String>,
    /// The shop's price, as written in its catalog (`price` column).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<String>,
    /// The product's page in the shop (`url`, `link` or `productUrl` column; `http(s)` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Where to fetch the product's photo.
    pub image_url: String,
    /// A patterned product's (`colour` Multi) main colours in its photo, largest share first
    /// (in search hits and `GET /api/products/{id}`): what its swatch shows.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub colour_mix: Vec<ColourShareBody>,
}

/// One of a photo's main colours.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ColourShareBody {
    pub name: String,
    /// A swatch for `name` (`#rrggbb`).
    pub rgb: String,
    /// Its share of the product's pixels, 0..1.
    pub share: f32,
}

impl ProductBody {
    /// With a patterned product's main colours ([`crate::search::ListedProduct::colour_mix`]).
    pub fn with_colour_mix(mut self, mix: &[(&'static str, f32)]) -> ProductBody {
        self.colour_mix = colour_shares(mix);
        self
    }
}

/// Named colours and their shares as the API shows them (shares to three decimals).
fn colour_shares(mix: &[(&'static str, f32)]) -> Vec<ColourShareBody> {
    mix.iter()
        .filter_map(|&(name, share)| Some(ColourShareBody { name: name.to_string(), rgb: hex_rgb(crate::colour::reference_rgb(name)?), share: (share * 1000.0).round() / 1000.0 }))
        .collect()
}

impl From<&Product> for ProductBody {
    fn from(p: &Product) -> Self {
        ProductBody {
            id: p.id.clone(),
            name: p.name().to_string(),
            category: p.category().map(str::to_string),
            colour: p.colour().map(str::to_string),
            colour_rgb: p.colour().and_then(crate::colour::reference_rgb).map(hex_rgb),
            price: p.price().map(str::to_string),
            link: p.link().map(str::to_string),
            metadata: p.metadata.clone(),
            image_url: image_url(&p.id),
            colour_mix: Vec::new(),
        }
    }
}

impl From<&ListedProduct> for ProductBody {
    fn from(listed: &ListedProduct) -> Self {
        ProductBody::from(&listed.product).with_colour_mix(&listed.colour_mix)
    }
}

/// One product (`GET /api/products/{id}`), with the other listings of its photo.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductDetailBody {
    #[serde(flatten)]
    pub product: ProductBody,
    /// The other products the shop lists with the very same photo (size variants), as a
    /// search hit for this product carries them. Left out when there are none (and for a
    /// product whose Qdrant point an older lookalike wrote, without its photo's hash).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<ProductBody>,
}

impl ProductDetailBody {
    pub fn new(listed: &ListedProduct, variants: &[Product]) -> Self {
        // One photo, one set of colours: the variants show the product's.
        ProductDetailBody { product: ProductBody::from(listed), variants: variants.iter().map(|v| ProductBody::from(v).with_colour_mix(&listed.colour_mix)).collect() }
    }
}

/// One page of the catalog's products (`GET /api/products`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductListBody {
    pub products: Vec<ProductBody>,
    /// Pass as `page` for the next page; `null` after the last.
    pub next_page: Option<String>,
    /// How many products match the filter (all of them without one), on every page.
    pub total: usize,
    /// When the filter matches no product: which part of it no product has, and what there is
    /// instead (`no product has articleType=bag (did you mean articleType=Bag?)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_nothing_matches: Option<String>,
}

impl From<&ProductPage> for ProductListBody {
    fn from(page: &ProductPage) -> Self {
        ProductListBody {
            products: page.products.iter().map(ProductBody::from).collect(),
            next_page: page.next.clone(),
            total: page.total,
            why_nothing_matches: page.why_nothing_matches.clone(),
        }
    }
}

/// One ranked product.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HitBody {
    /// 1-based rank across pages.
    pub rank: usize,
    /// Cosine similarity to the query, -1..1 (higher is more alike).
    pub score: f32,
    /// `score` in a shopper's words: `very_similar` (as alike as a typical product of this
    /// catalog is to its tenth closest look-alike), `similar` (as nine products in ten are to
    /// their fiftieth) or `related`; see `src/likeness.rs`.
    pub likeness: Likeness,
    #[serde(flatten)]
    pub product: ProductBody,
    /// The other products the shop lists with the very same photo (size variants), which this
    /// hit stands for: one result, ranks and pages counting photos. Left out when there are
    /// none (and for Qdrant points an older lookalike wrote, without their photo's hash).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<ProductBody>,
}

impl From<&RankedProduct> for HitBody {
    fn from(hit: &RankedProduct) -> Self {
        HitBody {
            rank: hit.rank,
            score: hit.score,
            likeness: hit.likeness,
            product: ProductBody::from(&hit.product).with_colour_mix(&hit.colour_mix),
            variants: hit.variants.iter().map(|v| ProductBody::from(v).with_colour_mix(&hit.colour_mix)).collect(),
        }
    }
}

/// A product found in the query photo.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DetectionBody {
    /// `[x, y, w, h]`: fractions of the photo's width and height (as `crop` takes them).
    #[serde(rename = "box")]
    pub bounds: [f32; 4],
    /// Its share of the photo's foreground, 0..1.
    pub score: f32,
}

impl From<&Detection> for DetectionBody {
    fn from(d: &Detection) -> Self {
        DetectionBody { bounds: d.bounds, score: d.score }
    }
}

/// One found product's own results (`items=all`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemBody {
    #[serde(flatten)]
    pub detection: DetectionBody,
    /// The item's own colour, which its hits are ranked by under `colour=match`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_colour: Option<QueryColourBody>,
    /// Best first.
    pub hits: Vec<HitBody>,
}

impl From<&ItemResults> for ItemBody {
    fn from(item: &ItemResults) -> Self {
        ItemBody {
            detection: DetectionBody::from(&item.detection),
            query_colour: item.query_colour.as_ref().map(|c| QueryColourBody::new(c, false)),
            hits: item.hits.iter().map(HitBody::from).collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    /// Best first: the products most like the photo (or its `crop`).
    pub hits: Vec<HitBody>,
    /// Photo searches only: the products found in the photo, main first; empty when none
    /// stands out or the photo was cropped with `crop`. Each box can be sent back as `crop`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detections: Option<Vec<DetectionBody>>,
    /// With `items=all`: each found product with its own results (the item cropped out and
    /// encoded on its own), in `detections`' order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<ItemBody>>,
    pub timings: Timings,
    /// How colour ranked the hits: `match`, `any` or a colour name; `any` where colour cannot
    /// apply (a grey catalog; a query by vector, which has no colour).
    pub colour: String,
    /// Whether the kind most of the best matches share came first: `match`, or `any` (asked
    /// for, or the products have no category to agree on).
    pub kind: String,
    /// The query's colour: the photo's main product's (photo searches), or the product's own
    /// ("more like this").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_colour: Option<QueryColourBody>,
    /// The query photo's embedding, only when the request set `include_vector`: lets a client
    /// page or refilter with `{"vector": ...}` without uploading the photo again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_vector: Option<Vec<f32>>,
    /// When a filtered search finds nothing because of its filter: which part of it no product
    /// has, and what there is instead (`no product has articleType=bag (did you mean
    /// articleType=Bag?)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_nothing_matches: Option<String>,
}

impl SearchResponse {
    /// The answer to a search by product or vector.
    pub fn new(results: &SearchResults, query_vector: Option<Vec<f32>>) -> SearchResponse {
        SearchResponse {
            hits: results.hits.iter().map(HitBody::from).collect(),
            detections: None,
            items: None,
            timings: results.timings.clone(),
            colour: results.colour_mode.to_string(),
            kind: results.kind_mode.to_string(),
            query_colour: results.query_colour.as_ref().map(|c| QueryColourBody::new(c, query_vector.is_some())),
            query_vector,
            why_nothing_matches: results.why_nothing_matches.clone(),
        }
    }

    /// The answer to a search by photo: with what was found in it, and each item's results
    /// when they were asked for.
    pub fn for_photo(results: &SearchResults, items: crate::search::Items, query_vector: Option<Vec<f32>>) -> SearchResponse {
        SearchResponse {
            detections: Some(results.detections.iter().map(DetectionBody::from).collect()),
            items: (items == crate::search::Items::All).then(|| results.items.iter().map(ItemBody::from).collect()),
            ..SearchResponse::new(results, query_vector)
        }
    }
}

/// A query's colour, as a shopper sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueryColourBody {
    /// The nearest named colour (`Multi`: no colour dominates).
    pub name: String,
    /// The average colour of the product's pixels of that colour, `#rrggbb`: a swatch.
    pub rgb: String,
    /// The colour descriptor, only when the request set `include_vector`: send it back as
    /// `colour_vector` beside `vector` to page with colour ranked as here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub descriptor: Option<Vec<f32>>,
    /// A patterned photo's (`Multi`) main colours, as a patterned product's `colour_mix`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mix: Vec<ColourShareBody>,
}

impl QueryColourBody {
    /// The photo's colour as found, with its descriptor when `with_descriptor`.
    fn new(colour: &crate::colour::ColourEstimate, with_descriptor: bool) -> QueryColourBody {
        let mix = match colour.name == crate::colour::MULTI {
            true => colour.descriptor.main_colours(),
            false => Vec::new(),
        };
        QueryColourBody { name: colour.name.to_string(), rgb: hex_rgb(colour.rgb), descriptor: with_descriptor.then(|| colour.descriptor.values()), mix: colour_shares(&mix) }
    }
}

fn hex_rgb([r, g, b]: [u8; 3]) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// `/api/products/{id}/image` with the id percent-encoded (ids may hold `/`, spaces, ...).
pub fn image_url(id: &str) -> String {
    format!("/api/products/{}/image", percent_encode(id))
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `POST /api/search` as `multipart/form-data` (documentation only: the fields are read by hand).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct SearchForm {
    /// The photo: JPEG, PNG, WebP, GIF (first frame), BMP or TIFF.
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    /// Results per page (1..=100, default 10).
    k: Option<usize>,
    /// Results to skip (paging).
    offset: Option<usize>,
    /// `column=value`; repeat the field for several (same column: alternatives; different
    /// columns: all must match).
    filter: Option<Vec<String>>,
    /// `x,y,w,h`: search only this part of the photo, fractions 0..1 of its width and height.
    crop: Option<String>,
    /// `true` to get the photo's embedding back as `query_vector`.
    include_vector: Option<bool>,
    /// `main` (default): `hits` for the photo, and `detections`. `all`: also `items`, one
    /// ranked list per product found ("shop the look"), each item encoded on its own.
    items: Option<String>,
    /// `match` (default): rank by shape and colour; `any`: shape only; a colour name (`Red`,
    /// `Navy Blue`, ... any case): only products of that colour.
    colour: Option<String>,
    /// `match` (default): the kind most of the best matches share comes first (a dress's
    /// photo brings back dresses before a look-alike coat); `any`: likeness alone.
    kind: Option<String>,
}

/// `POST /api/search` as JSON: by a catalog product ("more like this") or by an embedding.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchJson {
    /// Search with this product's stored vector; the product itself is left out.
    pub product_id: Option<String>,
    /// Search with this embedding (as returned in `query_vector`).
    pub vector: Option<Vec<f32>>,
    pub k: Option<usize>,
    pub offset: Option<usize>,
    /// Column → accepted values.
    #[serde(default)]
    pub filters: BTreeMap<String, OneOrMany>,
    /// Not allowed here: crops apply to uploaded photos only.
    pub crop: Option<serde_json::Value>,
    /// `match` (default), `any` or a colour name, as for photos. A vector has no colour (so
    /// `match` ranks it by shape) unless `colour_vector` gives it one.
    pub colour: Option<String>,
    /// `match` (default) or `any`, as for photos.
    pub kind: Option<String>,
    /// With `vector`: the photo's colour descriptor (as returned in `query_colour.descriptor`).
    pub colour_vector: Option<Vec<f32>>,
}

/// One filter value or a list of alternatives.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `POST /api/products` as `multipart/form-data` (documentation only).
#[derive(Debug, ToSchema)]
#[allow(dead_code, non_snake_case)]
pub struct NewProductForm {
    /// The shop's product id (replaces the product with this id if there is one).
    id: String,
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    /// A JSON object of strings, e.g. `{"articleType": "Dresses", "baseColour": "Red"}`.
    metadata: Option<String>,
    /// Any other text field becomes a metadata column of that name.
    #[schema(value_type = Option<String>)]
    articleType: Option<String>,
}

/// `PATCH /api/products/{id}`: a JSON merge patch (RFC 7396) of the product's metadata, e.g.
/// `{"metadata": {"price": "39.99", "season": null}}`. Each column given is set (a string; a
/// number or `true`/`false` is kept as its JSON text), a column given as `null` is removed, and
/// columns not given stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductPatchBody {
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl TryFrom<ProductPatchBody> for MetadataPatch {
    type Error = String;

    fn try_from(body: ProductPatchBody) -> Result<MetadataPatch, String> {
        let mut patch = MetadataPatch::default();
        for (column, value) in body.metadata {
            check_column_name(&column).map_err(|e| e.to_string())?;
            let text = match value {
                serde_json::Value::Null => {
                    patch.remove.insert(column);
                    continue;
                }
                serde_json::Value::String(text) => text,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return Err(format!("column {column:?}: a metadata value is a string, a number, true/false, or null to remove the column")),
            };
            patch.set.insert(column, text);
        }
        Ok(patch)
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FacetsResponse {
    /// Products in the catalog.
    pub products: usize,
    pub facets: Vec<Facet>,
}

/// A metadata column a shopper can filter on.
#[derive(Debug, Serialize, ToSchema)]
pub struct Facet {
    pub column: String,
    /// Most common first.
    pub values: Vec<FacetValue>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FacetValue {
    pub value: String,
    pub count: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub status: &'static str,
    pub model: String,
    /// Searchable products.
    pub products: usize,
    pub workers: usize,
    /// A `lookalike index` run still adding products (searches already cover those it added).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indexing: Option<crate::types::IndexingProgress>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_percent_encoded_in_image_urls() {
        assert_eq!(image_url("fmnist-train-00001"), "/api/products/fmnist-train-00001/image");
        assert_eq!(image_url("shoes/red boot.jpg"), "/api/products/shoes%2Fred%20boot.jpg/image");
    }
}
