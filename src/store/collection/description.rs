//! The description kept beside a collection (`NAME_lookalike`): the model, the search space,
//! the likeness bands and colour naming a server without the catalog needs to search it, and
//! which collection holds the points after swaps.

use anyhow::{Context, Result};

use crate::catalog::SqliteCatalog;
use crate::index::qdrant::{QdrantConfig, QdrantIndex};
use crate::space::SearchSpace;

/// Servers without the catalog search the collection by its description: kept in step with
/// the catalog's model and search space (written only when it changed).
///
/// The description names the collection `index` holds the points in and the collections
/// swaps `replaced`. `kept` is the description as read when the collection was opened
/// (megabytes when tuned: read once).
pub(super) fn describe_collection(
    catalog: &SqliteCatalog,
    space: &SearchSpace,
    store: &QdrantConfig,
    index: &QdrantIndex,
    kept: Option<&CollectionDescription>,
    replaced: Vec<ReplacedCollection>,
) -> Result<()> {
    if let Some(description) = CollectionDescription::of_catalog(catalog, space, store, index, replaced)? {
        if kept != Some(&description) {
            index.write_description(&serde_json::to_vec(&description)?)?;
        }
    }
    Ok(())
}

/// What a server needs to search a Qdrant collection without the catalog file, kept beside
/// the collection by the catalog's side ([`super::open_qdrant`]): the model that made the vectors
/// and the search space they were mapped into, the likeness bands measured on them, and how
/// the catalog names colours.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CollectionDescription {
    /// The model's name, as the catalog records it.
    pub model: String,
    /// Dimension of the model's vectors (before the search space maps them).
    pub model_dim: usize,
    /// A plug-in model's description JSON, as the catalog keeps it.
    pub model_json: Option<String>,
    pub space: StoredSpace,
    /// The likeness bands as the catalog records them ([`crate::likeness::SETTING`]).
    pub likeness: Option<String>,
    /// Whether the catalog has colour, and the metadata column colours are named in.
    pub has_colour: bool,
    pub colour_column: String,
    /// The columns with a keyword index in the collection: the facets it can count.
    pub facet_columns: Vec<String>,
    /// The learned foreground head (`tune --localise`), base64 of its bytes: where products
    /// are in a photo, which decides the query's colour.
    pub foreground: Option<String>,
    /// The collection that holds the points when it is not the one named: the one `lookalike
    /// sync --swap` filled beside it. Every server looks here to find the points, so one swap
    /// of the description moves them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points: Option<String>,
    /// The collections swaps moved the points from, newest first, kept for servers that have
    /// not yet read this description; a sync deletes each once it has been kept long enough
    /// ([`super::KeepReplaced`]). (Written by a lookalike before 2026-12-06 as one name, without a time.)
    #[serde(default, deserialize_with = "replaced_collections", skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<ReplacedCollection>,
}

impl CollectionDescription {
    /// The description of `catalog`'s collection, its points in `index`'s collection (whose
    /// keyword-indexed columns are the facets); `None` before it has vectors (no model yet).
    fn of_catalog(
        catalog: &SqliteCatalog,
        space: &SearchSpace,
        store: &QdrantConfig,
        index: &QdrantIndex,
        replaced: Vec<ReplacedCollection>,
    ) -> Result<Option<CollectionDescription>> {
        use base64::Engine as _;
        let Some(vector_space) = catalog.vector_space()? else { return Ok(None) };
        let (points, facet_columns) = (index.points(), index.keyword_columns()?);
        let space = StoredSpace::of(space);
        let colours = crate::colour::ColourTable::load(catalog)?;
        Ok(Some(CollectionDescription {
            model: vector_space.model,
            model_dim: vector_space.dim,
            model_json: catalog.model_description()?,
            space,
            likeness: catalog.setting(crate::likeness::SETTING)?,
            has_colour: colours.has_colour(),
            colour_column: colours.column().to_string(),
            facet_columns,
            foreground: catalog.foreground_head()?.map(|head| base64::engine::general_purpose::STANDARD.encode(head.to_bytes())),
            points: (points != store.collection).then(|| points.to_string()),
            replaced,
        }))
    }

    /// The foreground head it carries, if the catalog had one.
    pub fn foreground_head(&self) -> Result<Option<crate::localise::ForegroundHead>> {
        use base64::Engine as _;
        let Some(text) = &self.foreground else { return Ok(None) };
        let bytes = base64::engine::general_purpose::STANDARD.decode(text).context("the foreground head in the collection description is not base64")?;
        crate::localise::ForegroundHead::from_bytes(&bytes).map(Some)
    }

    /// The search space it describes.
    pub fn search_space(&self) -> Result<SearchSpace> {
        self.space.search_space()
    }

    /// The collection that holds the points of the collection named `named`.
    pub fn points<'a>(&'a self, named: &'a str) -> &'a str {
        self.points.as_deref().unwrap_or(named)
    }
}

/// A collection a swap moved the points from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReplacedCollection {
    pub collection: String,
    /// When the swap named the new collection, in seconds since the Unix epoch by the clock of
    /// the machine that ran it; absent when an older lookalike swapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
}

impl ReplacedCollection {
    /// Seconds since the swap replaced it, at time `now`: `None` when an older lookalike
    /// swapped (no time kept), or when the swap's time is ahead of `now` (another machine's
    /// clock).
    pub fn age_secs(&self, now: std::time::SystemTime) -> Option<u64> {
        let now = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        now.checked_sub(self.at?)
    }
}

/// Reads `replaced` as a list, or as the one name older descriptions kept.
fn replaced_collections<'de, D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Vec<ReplacedCollection>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Field {
        Name(String),
        List(Vec<ReplacedCollection>),
    }
    Ok(match <Field as serde::Deserialize>::deserialize(deserializer)? {
        Field::Name(collection) => vec![ReplacedCollection { collection, at: None }],
        Field::List(list) => list,
    })
}

/// A [`SearchSpace`] as the description keeps it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoredSpace {
    Identity,
    Centred {
        mean: Vec<f32>,
        /// The photo adapter (`tune --adapt`), base64 of its bytes: query photos go through it.
        /// (Absent from descriptions written before it was kept.)
        #[serde(default, skip_serializing_if = "Option::is_none")]
        adapter: Option<String>,
    },
    /// The projection's weights as little-endian f32, base64.
    Tuned {
        label: String,
        input_dim: usize,
        hidden: usize,
        output_dim: usize,
        weights: String,
    },
}

impl StoredSpace {
    pub fn of(space: &SearchSpace) -> StoredSpace {
        use base64::Engine as _;
        match space {
            SearchSpace::Identity => StoredSpace::Identity,
            SearchSpace::Centred { mean, adapter } => {
                StoredSpace::Centred { mean: mean.clone(), adapter: adapter.as_ref().map(|a| base64::engine::general_purpose::STANDARD.encode(a.to_bytes())) }
            }
            SearchSpace::Tuned(p) => StoredSpace::Tuned {
                label: p.label.clone(),
                input_dim: p.input_dim,
                hidden: p.hidden,
                output_dim: p.output_dim,
                weights: base64::engine::general_purpose::STANDARD.encode(p.weights_bytes()),
            },
        }
    }

    /// The search space it stands for.
    pub fn search_space(&self) -> Result<SearchSpace> {
        use base64::Engine as _;
        Ok(match self {
            StoredSpace::Identity => SearchSpace::Identity,
            StoredSpace::Centred { mean, adapter } => {
                let adapter = match adapter {
                    Some(text) => {
                        let bytes = base64::engine::general_purpose::STANDARD.decode(text).context("the photo adapter in the collection description is not base64")?;
                        Some(std::sync::Arc::new(crate::adapter::PhotoAdapter::from_bytes(&bytes)?))
                    }
                    None => None,
                };
                SearchSpace::Centred { mean: mean.clone(), adapter }
            }
            StoredSpace::Tuned { label, input_dim, hidden, output_dim, weights } => {
                let bytes = base64::engine::general_purpose::STANDARD.decode(weights).context("the tuned projection in the collection description is not base64")?;
                SearchSpace::Tuned(Box::new(crate::projection::Projection::from_weights(label, *input_dim, *hidden, *output_dim, &bytes)?))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A description without `points` (written before swaps, or never swapped) names the
    /// collection it was given; one after swaps names the collection holding the points and
    /// those replaced, also as the first lookalike with swaps wrote them.
    #[test]
    fn descriptions_name_the_collection_holding_the_points() -> Result<()> {
        let old = r#"{"model":"m","model_dim":4,"model_json":null,"space":{"kind":"identity"},"likeness":null,"has_colour":false,"colour_column":"baseColour","facet_columns":[],"foreground":null}"#;
        let read: CollectionDescription = serde_json::from_str(old)?;
        assert_eq!((read.points("shop"), read.replaced.as_slice()), ("shop", &[][..]));
        let replaced = |collection: &str, at| ReplacedCollection { collection: collection.into(), at };
        let swapped = CollectionDescription { points: Some("shop_v3".into()), replaced: vec![replaced("shop_v2", Some(1_000)), replaced("shop", None)], ..read.clone() };
        let back: CollectionDescription = serde_json::from_slice(&serde_json::to_vec(&swapped)?)?;
        assert_eq!(back, swapped);
        // As the first lookalike with swaps wrote it: one name, no time.
        let one = old.replace(r#""foreground":null"#, r#""foreground":null,"points":"shop_v2","replaced":"shop""#);
        let read_one: CollectionDescription = serde_json::from_str(&one)?;
        assert_eq!((read_one.points("shop"), read_one.replaced.clone()), ("shop_v2", vec![replaced("shop", None)]));
        Ok(())
    }

    /// A server without the catalog maps queries exactly as the catalog's side does: every kind
    /// of search space survives the description's JSON unchanged (same fingerprint, same
    /// mapped vector).
    #[test]
    fn search_spaces_survive_the_collection_description() -> Result<()> {
        let weights: Vec<u8> = (0..(3 * 4 + 3 + 2 * 3 + 2)).flat_map(|i| (i as f32 * 0.37 - 2.0).sin().to_le_bytes()).collect();
        let tuned = SearchSpace::Tuned(Box::new(crate::projection::Projection::from_weights("articleType", 4, 3, 2, &weights)?));
        // A photo adapter of rank 1 on 4-d vectors: dim, rank, then what it reads and writes.
        let adapter: Vec<u8> = [4u32, 1].iter().flat_map(|n| n.to_le_bytes()).chain([0.3f32, -0.1, 0.2, 0.4, 0.0, 0.6, 0.0, 0.8].iter().flat_map(|w| w.to_le_bytes())).collect();
        let adapter = std::sync::Arc::new(crate::adapter::PhotoAdapter::from_bytes(&adapter)?);
        let mean = vec![0.1, -0.2, 0.3, 0.05];
        let adapted = SearchSpace::Centred { mean: mean.clone(), adapter: Some(adapter) };
        for space in [SearchSpace::Identity, SearchSpace::Centred { mean: mean.clone(), adapter: None }, adapted, tuned] {
            let json = serde_json::to_vec(&StoredSpace::of(&space))?;
            let back = serde_json::from_slice::<StoredSpace>(&json)?.search_space()?;
            assert_eq!(back.fingerprint(), space.fingerprint(), "{}", space.describe());
            assert_eq!(back.adapts_photos(), space.adapts_photos(), "{}", space.describe());
            let v = [0.5, 0.1, 0.7, 0.2];
            assert_eq!(back.map(&v)?, space.map(&v)?);
            assert_eq!(back.map_photo(&v)?, space.map_photo(&v)?);
        }
        // A description written before the adapter was kept reads as a space without one.
        let old = serde_json::from_str::<StoredSpace>(r#"{"kind": "centred", "mean": [0.1, -0.2, 0.3, 0.05]}"#)?.search_space()?;
        assert!(!old.adapts_photos());
        Ok(())
    }
}
