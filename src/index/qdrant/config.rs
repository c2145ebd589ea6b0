//! Where a collection lives and how it is made: the `--store` URL, `--collection`, shards,
//! copies, quantisation, write ordering and keyword indexes, and how a collection made in place
//! of another takes what the run leaves open from the one it replaces.

use std::time::Duration;

use anyhow::{bail, Result};
use qdrant_client::qdrant::WriteOrderingType;

/// Where the collection lives and how it is set up.
#[derive(Debug, Clone)]
pub struct QdrantConfig {
    /// gRPC address, e.g. `http://127.0.0.1:6334` (`qdrant://host:port` is accepted too;
    /// `qdrants://` means TLS).
    pub url: String,
    pub api_key: Option<String>,
    pub collection: String,
    pub shards: Option<u32>,
    pub replicas: Option<u32>,
    /// Replicas of a shard that must acknowledge a write before it succeeds (Qdrant's
    /// `write_consistency_factor`; its default is 1).
    pub write_consistency: Option<u32>,
    /// Store int8 copies of the vectors in RAM (Qdrant's scalar quantisation) in a collection
    /// lookalike makes, or not; `None`: not, or as the collection it replaces.
    pub quantize: Option<bool>,
    /// Write ordering across replicas: weak, medium or strong.
    pub write_ordering: WriteOrderingType,
    pub timeout: Duration,
    /// Metadata columns to index for filtering.
    pub filter_columns: Vec<String>,
    /// Search exactly (no HNSW) — for parity checks.
    pub exact: bool,
}

/// How a collection was made: a collection made in its place (`sync --swap`, `--recreate`) is
/// made the same way where this run's settings leave it open ([`super::QdrantIndex::inheriting`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectionLayout {
    pub shards: u32,
    pub replicas: Option<u32>,
    pub write_consistency: Option<u32>,
    pub quantized: bool,
    /// Payload fields with a keyword index, lookalike's own id field aside, by name.
    pub keyword_columns: Vec<String>,
}

impl QdrantConfig {
    /// The set-up that reaches collection `collection` at `url` (parsed as `--store` takes it),
    /// with how a new collection would be made left at the defaults: enough to read one.
    pub fn connecting(url: &str, api_key: Option<String>, collection: String, timeout: Duration) -> Result<QdrantConfig> {
        Ok(QdrantConfig {
            url: QdrantConfig::parse_url(url)?,
            api_key: api_key.filter(|k| !k.is_empty()),
            collection,
            shards: None,
            replicas: None,
            write_consistency: None,
            quantize: None,
            write_ordering: WriteOrderingType::Weak,
            timeout,
            filter_columns: Vec::new(),
            exact: false,
        })
    }

    /// These settings, with what they leave open taken from `layout`: shards, replicas and
    /// write consistency when not given, quantisation when the old collection had it, and
    /// keyword indexes on its columns as well as these.
    pub(super) fn inheriting(mut self, layout: &CollectionLayout) -> QdrantConfig {
        self.shards = self.shards.or((layout.shards > 0).then_some(layout.shards));
        self.replicas = self.replicas.or(layout.replicas);
        self.write_consistency = self.write_consistency.or(layout.write_consistency);
        self.quantize = self.quantize.or(layout.quantized.then_some(true));
        for column in &layout.keyword_columns {
            if !self.filter_columns.contains(column) {
                self.filter_columns.push(column.clone());
            }
        }
        self
    }

    /// The collection of the catalog at `db` when none is named: the file's name without its
    /// extension (`shop.db` → `shop`).
    pub fn default_collection(db: &std::path::Path) -> String {
        db.file_stem().and_then(|s| s.to_str()).unwrap_or("lookalike").to_string()
    }

    /// Parses `weak`, `medium` or `strong`.
    pub fn parse_write_ordering(text: &str) -> Result<WriteOrderingType> {
        Ok(match text {
            "weak" => WriteOrderingType::Weak,
            "medium" => WriteOrderingType::Medium,
            "strong" => WriteOrderingType::Strong,
            other => bail!("--write-ordering {other:?}: expected weak, medium or strong"),
        })
    }

    /// Refuses settings Qdrant would refuse later, or worse, accept with another meaning: a
    /// collection name outside letters, digits, `-` and `_`, and a write consistency above the
    /// replica count.
    pub fn validate(&self) -> Result<()> {
        if let Some(factor) = self.write_consistency {
            let replicas = self.replicas.unwrap_or(1);
            if factor == 0 || factor > replicas {
                bail!("--write-consistency {factor}: must be between 1 and the number of --replicas ({replicas})");
            }
        }
        let collection = &self.collection;
        if collection.is_empty() || !collection.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')) {
            bail!("collection name {collection:?}: use letters, digits, - and _ (--collection)");
        }
        Ok(())
    }

    /// Parses `qdrant://host:port`, `qdrants://host:port` or an `http(s)://` URL.
    pub fn parse_url(store: &str) -> Result<String> {
        let url = if let Some(rest) = store.strip_prefix("qdrant://") {
            format!("http://{rest}")
        } else if let Some(rest) = store.strip_prefix("qdrants://") {
            format!("https://{rest}")
        } else if store.starts_with("http://") || store.starts_with("https://") {
            store.to_string()
        } else {
            bail!("--store {store:?}: expected qdrant://HOST:PORT (gRPC port, usually 6334), qdrants://HOST:PORT for TLS, or `embedded`");
        };
        Ok(url.trim_end_matches('/').to_string())
    }

    /// The `--store` value naming this Qdrant as users type it (`qdrant://HOST:PORT`,
    /// `qdrants://` for TLS): [`QdrantConfig::parse_url`] read backwards, for the commands
    /// lookalike tells them to run.
    pub fn store_flag(&self) -> String {
        if let Some(rest) = self.url.strip_prefix("http://") {
            format!("qdrant://{rest}")
        } else if let Some(rest) = self.url.strip_prefix("https://") {
            format!("qdrants://{rest}")
        } else {
            self.url.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `info` tells users to run names the store as they typed it.
    #[test]
    fn the_store_flag_reads_back_as_the_url_it_was_parsed_into() {
        for flag in ["qdrant://127.0.0.1:6334", "qdrants://qdrant.example:6334"] {
            let config = QdrantConfig::connecting(flag, None, "shop".into(), Duration::from_secs(30)).expect("parses");
            assert_eq!(config.store_flag(), flag);
            assert_eq!(QdrantConfig::parse_url(&config.store_flag()).expect("parses again"), config.url);
        }
    }

    /// A collection made in place of another (a swap's) is made as that one was where this
    /// run's settings leave it open: a `sync --swap` without `--shards 3 --replicas 2` keeps a
    /// replicated collection replicated; what the run gives wins; indexes add up.
    #[test]
    fn a_collection_made_in_place_of_another_inherits_what_the_run_leaves_open() {
        let run = |shards, quantize| QdrantConfig {
            url: "http://127.0.0.1:6334".into(),
            api_key: None,
            collection: "shop".into(),
            shards,
            replicas: None,
            write_consistency: None,
            quantize,
            write_ordering: WriteOrderingType::Weak,
            timeout: Duration::from_secs(30),
            filter_columns: vec!["articleType".into(), "gender".into()],
            exact: false,
        };
        let old = CollectionLayout { shards: 3, replicas: Some(2), write_consistency: Some(2), quantized: true, keyword_columns: vec!["gender".into(), "season".into()] };
        let made = run(None, None).inheriting(&old);
        assert_eq!((made.shards, made.replicas, made.write_consistency, made.quantize), (Some(3), Some(2), Some(2), Some(true)));
        assert_eq!(made.filter_columns, ["articleType", "gender", "season"]);
        let given = run(Some(6), Some(false)).inheriting(&old);
        assert_eq!((given.shards, given.replicas, given.quantize), (Some(6), Some(2), Some(false)), "--shards and --no-quantize given win");
        let unknown = run(None, None).inheriting(&CollectionLayout::default());
        assert_eq!((unknown.shards, unknown.replicas, unknown.quantize), (None, None, None), "nothing read, nothing taken");
    }
}
