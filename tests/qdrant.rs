//! Qdrant as the vector store, against a real server. These tests need one: they are
//! `#[ignore]`d (reported as skipped) unless run with `-- --ignored`, which `make test` does when
//! `LOOKALIKE_QDRANT_URL` names a server's gRPC address (e.g. `qdrant://127.0.0.1:6334`).

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;

use common::*;
use lookalike::catalog::{SqliteCatalog, VectorKind};
use lookalike::colour::ColourMode;
use lookalike::index::qdrant::QdrantConfig;
use lookalike::index::{IndexConfig, Precision};
use lookalike::kind::KindMode;
use lookalike::search::{Items, SearchEngine, SearchRequest};
use lookalike::store::{KeepReplaced, SyncMode, SyncStep};
use lookalike::types::Filter;
use rand::{Rng, SeedableRng};

/// The node-down test stops a node that the other tests' collections may live on (make test
/// points `LOOKALIKE_QDRANT_URL` at a node of the same cluster). It holds this lock for
/// writing, the others for reading, so it runs alone, before or after them, whatever order and
/// timing the test threads take.
static CLUSTER: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn qdrant_url() -> String {
    std::env::var("LOOKALIKE_QDRANT_URL").expect("LOOKALIKE_QDRANT_URL (run with a Qdrant server)")
}

/// What a test on a collection of its own starts from: the cluster held for reading (see
/// [`CLUSTER`]) until its collections are deleted, a private copy of the shared catalog, and a
/// collection name no other test or run uses.
/// Bind every field (`_cluster` and `_dir` included: an unbound field is dropped at once).
struct OwnCollection {
    _cluster: ClusterLease,
    _dir: tempfile::TempDir,
    db: PathBuf,
    collection: String,
}

fn own_collection(kind: &str) -> OwnCollection {
    let lock = CLUSTER.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    let collection = format!("lookalike-{kind}-{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    OwnCollection { _cluster: ClusterLease { _collections: DeletedOnDrop(collection.clone()), _lock: lock }, _dir: dir, db, collection }
}

/// A test's read hold on the cluster, released after its collections are deleted (fields drop
/// in order).
struct ClusterLease {
    _collections: DeletedOnDrop,
    _lock: std::sync::RwLockReadGuard<'static, ()>,
}

/// Deletes collection `NAME` and every `NAME_...` beside it (swaps' `NAME_v2`, descriptions'
/// `NAME_lookalike`) when dropped, also when the test fails on the way: runs against a
/// long-lived cluster leave nothing behind.
struct DeletedOnDrop(String);

impl Drop for DeletedOnDrop {
    fn drop(&mut self) {
        let name = &self.0;
        let deleted = lookalike::index::qdrant::QdrantIndex::connect_cluster(store(name, true)).and_then(|cluster| {
            let ours: Vec<String> = cluster.collection_names()?.into_iter().filter(|n| n == name || n.starts_with(&format!("{name}_"))).collect();
            ours.into_iter().try_for_each(|n| cluster.delete_collection(&n).map(|_| ()))
        });
        if let Err(e) = deleted {
            eprintln!("the test's collections {name} and {name}_* are left in the cluster: {e:#}");
        }
    }
}

/// Fashion-MNIST test photo `i` as a 700 px PNG with a little noise: a photo over the 64 KiB a
/// point's payload carries as it is.
fn large_photo(i: usize) -> Vec<u8> {
    let small = image::load_from_memory(&test_photo(i).0).expect("photo").to_rgb8();
    let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
    let large = image::RgbImage::from_fn(700, 700, |x, y| {
        let image::Rgb(px) = *small.get_pixel(x * small.width() / 700, y * small.height() / 700);
        image::Rgb(px.map(|v| v.saturating_add(rng.random_range(0..6))))
    });
    let mut png = Vec::new();
    large.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("png");
    assert!(png.len() > lookalike::index::qdrant::MAX_PAYLOAD_IMAGE, "{} bytes", png.len());
    png
}

fn store(collection: &str, exact: bool) -> QdrantConfig {
    store_at(&qdrant_url(), collection, exact)
}

fn store_at(url: &str, collection: &str, exact: bool) -> QdrantConfig {
    let connection = QdrantConfig::connecting(url, std::env::var("QDRANT_API_KEY").ok(), collection.to_string(), std::time::Duration::from_secs(30)).expect("url");
    QdrantConfig { filter_columns: vec!["articleType".into()], exact, ..connection }
}

/// A cluster node stopped by `LOOKALIKE_QDRANT_STOP` and started again by
/// `LOOKALIKE_QDRANT_START` when this is dropped, also when the test fails on the way, so
/// that the next test finds the whole cluster.
struct NodeDown {
    up: bool,
}

impl NodeDown {
    fn stop() -> NodeDown {
        shell("LOOKALIKE_QDRANT_STOP");
        NodeDown { up: false }
    }

    fn start(mut self) {
        self.up = true;
        shell("LOOKALIKE_QDRANT_START");
    }
}

impl Drop for NodeDown {
    fn drop(&mut self) {
        // No assertion here: this may run while a failed test unwinds.
        if let (false, Ok(command)) = (self.up, std::env::var("LOOKALIKE_QDRANT_START")) {
            let _ = Command::new("sh").args(["-c", &command]).status();
        }
    }
}

/// The three nodes' gRPC addresses (`LOOKALIKE_QDRANT_CLUSTER`, comma-separated).
fn cluster_nodes() -> Vec<String> {
    let nodes: Vec<String> = std::env::var("LOOKALIKE_QDRANT_CLUSTER").expect("LOOKALIKE_QDRANT_CLUSTER").split(',').map(str::to_string).collect();
    assert_eq!(nodes.len(), 3, "three node addresses");
    nodes
}

fn shell(var: &str) {
    let command = std::env::var(var).unwrap_or_else(|_| panic!("{var}"));
    let status = Command::new("sh").args(["-c", &command]).status().expect("shell");
    assert!(status.success(), "{var} failed");
}

/// Every product's model vector, in the catalog's order.
fn model_vectors_of(catalog: &SqliteCatalog) -> Vec<Vec<f32>> {
    let mut vectors = Vec::new();
    catalog
        .for_each_vector(VectorKind::Primary, |_, v| {
            vectors.push(v.to_vec());
            Ok(())
        })
        .expect("vectors");
    vectors
}

fn ids(results: &lookalike::search::SearchResults) -> Vec<String> {
    results.hits.iter().map(|h| h.product.id.clone()).collect()
}

/// `lookalike sync` of the catalog at `db` to `collection`, with `extra` flags.
fn sync_cli(db: &std::path::Path, collection: &str, extra: &[&str]) -> std::process::Output {
    Command::new(BIN).args(["sync", "--db", db.to_str().expect("utf-8"), "--store", &qdrant_url(), "--collection", collection]).args(extra).output().expect("sync")
}

/// What `lookalike info --store` says about the catalog at `db` and its collection.
fn info_cli(db: &std::path::Path, collection: &str) -> String {
    let out = Command::new(BIN).args(["info", "--db", db.to_str().expect("utf-8"), "--store", &qdrant_url(), "--collection", collection]).output().expect("info");
    assert!(out.status.success(), "info: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The JSON report `lookalike sync` printed.
fn sync_report(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("sync JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)))
}

/// How long syncs called as functions keep collections swaps replaced: the default, from now.
fn keep_replaced() -> KeepReplaced {
    KeepReplaced::from_now(KeepReplaced::DEFAULT)
}

/// `lookalike tune` of the catalog at `db`, which must succeed.
fn tune_cli(db: &std::path::Path, args: &[&str]) {
    let out = Command::new(BIN).args(["tune", "--db", db.to_str().expect("utf-8")]).args(args).output().expect("tune");
    assert!(out.status.success(), "tune {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The first page's product ids for each photo.
fn first_pages(engine: &SearchEngine, photos: &[Vec<u8>]) -> Vec<Vec<String>> {
    let request = SearchRequest { k: 10, ..SearchRequest::default() };
    photos.iter().map(|p| ids(&engine.search_image(p, None, &request, Items::Main).expect("search"))).collect()
}

/// The same catalog searched exactly in the embedded store and in Qdrant gives the same top 10
/// (overlap ≥ 0.99 over 500 queries), filters mean the same, and changes reach Qdrant.
#[test]
#[ignore = "needs a Qdrant server: LOOKALIKE_QDRANT_URL"]
fn qdrant_matches_the_embedded_store_and_follows_changes() {
    let OwnCollection { _cluster, _dir: dir, db, collection } = own_collection("test");
    let config = store(&collection, true);

    let mut catalog = SqliteCatalog::open(&db).expect("catalog");
    let report = lookalike::store::sync_qdrant(&mut catalog, &config, SyncMode::InPlace, keep_replaced()).expect("sync");
    assert_eq!((report.in_catalog, report.added, report.deleted), (300, 300, 0), "{report:?}");
    let again = lookalike::store::sync_qdrant(&mut catalog, &config, SyncMode::InPlace, keep_replaced()).expect("sync again");
    assert_eq!((again.added, again.deleted), (0, 0), "a second sync changes nothing");

    // 500 queries: catalog vectors with noise, so none is identical to a stored one.
    let model_vectors = model_vectors_of(&catalog);
    drop(catalog);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let queries: Vec<Vec<f32>> = (0..500)
        .map(|i| {
            let mut q: Vec<f32> = model_vectors[i % model_vectors.len()].iter().map(|x| x + rng.random_range(-0.02..0.02)).collect();
            lookalike::index::l2_normalize(&mut q);
            q
        })
        .collect();

    let embedded = SearchEngine::open_with(SqliteCatalog::open(&db).expect("catalog"), Box::new(encoder()), &IndexConfig::default()).expect("embedded");
    let remote_config = IndexConfig { store: Some(config.clone()), precision: Precision::F32, ..IndexConfig::default() };
    let remote = SearchEngine::open_with(SqliteCatalog::open(&db).expect("catalog"), Box::new(encoder()), &remote_config).expect("qdrant");
    // A server without the catalog: everything from the collection and its description.
    let without_catalog = SearchEngine::open_collection(&config, Box::new(encoder())).expect("collection alone");
    let request = SearchRequest { k: 10, ..SearchRequest::default() };
    for (name, engine) in [("qdrant", &remote), ("qdrant without the catalog", &without_catalog)] {
        let (mut same, mut total) = (0usize, 0usize);
        for q in &queries {
            let expected = embedded.search_vector(q, &request).expect("embedded search");
            let found = engine.search_vector(q, &request).expect("qdrant search");
            let b: HashSet<String> = ids(&found).into_iter().collect();
            same += expected.hits.iter().filter(|h| b.contains(&h.product.id)).count();
            total += expected.hits.len();
            // The same metadata for every product both found.
            for hit in &found.hits {
                if let Some(e) = expected.hits.iter().find(|e| e.product.id == hit.product.id) {
                    assert_eq!(e.product.metadata, hit.product.metadata, "{name}: metadata of {}", hit.product.id);
                    assert!((e.score - hit.score).abs() < 1e-4, "{name}: score of {}: {} against {}", hit.product.id, hit.score, e.score);
                }
            }
        }
        let overlap = same as f64 / total as f64;
        eprintln!("parity ({name}): top-10 overlap {overlap:.4} over {} queries", queries.len());
        assert!(overlap >= 0.99, "{name}: top-10 overlap {overlap}");
    }
    drop(without_catalog);

    // Filters: the same products, inside Qdrant.
    let filtered = SearchRequest { k: 10, offset: 0, filter: Filter::parse(&["articleType=Bag", "articleType=Sandal"]).expect("filter"), ..SearchRequest::default() };
    for q in queries.iter().take(20) {
        let a = ids(&embedded.search_vector(q, &filtered).expect("embedded"));
        let b = ids(&remote.search_vector(q, &filtered).expect("qdrant"));
        assert_eq!(a, b, "filtered results differ");
    }

    // Changes through the engine reach Qdrant at once.
    let gone = ids(&remote.search_vector(&queries[0], &request).expect("search"))[0].clone();
    assert!(remote.remove_product(&gone).expect("remove"));
    assert!(!ids(&remote.search_vector(&queries[0], &request).expect("search")).contains(&gone));

    // A collection whose dimension does not fit is refused with a clear message.
    let wrong = SqliteCatalog::open(&dir.path().join("other.db")).expect("catalog");
    drop(wrong);
    let err = lookalike::index::qdrant::QdrantIndex::connect(config.clone(), 7).err().expect("dimension mismatch refused");
    assert!(err.to_string().contains("1280-d") || err.to_string().contains("holds"), "{err}");

    // The CLI: `remove --store` deletes the point, `sync` reports agreement.
    let out = Command::new(BIN)
        .args(["remove", "--db", db.to_str().expect("utf-8"), "--store", &qdrant_url(), "--collection", &collection, "fmnist-train-00003"])
        .output()
        .expect("remove");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(BIN).args(["sync", "--db", db.to_str().expect("utf-8"), "--store", &qdrant_url(), "--collection", &collection]).output().expect("sync");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sync JSON");
    assert_eq!((report["added"].as_u64(), report["deleted"].as_u64()), (Some(0), Some(0)), "{report}");
    assert_eq!(report["in_catalog"], 298);
}

/// `lookalike tune` changes the search space's dimension (1280-d to 64-d here), and a
/// collection's vector size is fixed when it is made: `sync` refuses the old collection and
/// names `--recreate`, `sync --recreate` fills it afresh in the tuned space (and leaves a
/// collection that fits as it is), and an engine on the tuned catalog then answers from Qdrant
/// as from its own store; tuned again at the same dimension, a plain `sync` sends every
/// point again. A running engine on the collection takes up a photo adapter (`tune
/// --adapt` maps query photos only) at once, and a space that changes the vectors once `sync`
/// has sent them in it (before that, it keeps answering in the space the collection holds); a
/// running engine without the catalog takes each up from the collection's description.
#[test]
#[ignore = "needs a Qdrant server: LOOKALIKE_QDRANT_URL"]
fn sync_recreate_fills_a_collection_afresh_in_the_space_tune_makes() {
    let OwnCollection { _cluster, _dir, db, collection } = own_collection("tuned");
    let sync = |extra: &[&str]| sync_cli(&db, &collection, extra);
    let report = sync_report;
    let tune = |args: &[&str]| tune_cli(&db, args);

    let out = sync(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A server on the collection takes up a photo adapter at once (query photos are mapped
    // anew; the collection's vectors stay), and keeps answering in its space when `tune`
    // changes the vectors' dimension.
    let remote_config = IndexConfig { store: Some(store(&collection, true)), precision: Precision::F32, ..IndexConfig::default() };
    let open_remote = || SearchEngine::open_with(SqliteCatalog::open_existing(&db).expect("catalog"), Box::new(encoder()), &remote_config).expect("qdrant");
    let photos: Vec<Vec<u8>> = (0..5).map(|i| test_photo(i).0).collect();
    let answers = |engine: &SearchEngine| first_pages(engine, &photos);
    let server = open_remote();
    // A server without the catalog follows the collection's description instead.
    let replica = SearchEngine::open_collection(&store(&collection, true), Box::new(encoder())).expect("replica");
    let before = answers(&server);
    assert_eq!(answers(&replica), before);
    assert!(!replica.follow_collection_description().expect("follow the description"), "nothing new to take up");
    tune(&["--adapt", "--augment", "200"]);
    server.follow_catalog().expect("follow");
    let adapted = answers(&open_remote());
    assert_ne!(adapted, before, "the adapter changes what the photos find");
    assert_eq!(answers(&server), adapted, "the running server searches with the adapter");
    // The replica takes the adapter up from the collection's description (which a server with
    // the catalog writes when it opens the collection).
    assert!(replica.follow_collection_description().expect("follow the description"));
    assert_eq!(answers(&replica), adapted, "a server without the catalog searches with the adapter");
    tune(&["--label", "articleType", "--dim", "64", "--hidden", "128", "--epochs", "8", "--augment", "64"]);

    server.follow_catalog().expect("follow");
    assert_eq!(answers(&server), adapted, "the running server answers in the space its collection was filled in");
    // So does one started now, from the space the collection's description keeps (the
    // catalog's is 64-d, and the collection's points 1280-d).
    assert_eq!(answers(&open_remote()), adapted, "a server started before the sync answers in the collection's space");
    assert!(!replica.follow_collection_description().expect("follow the description"), "the description waits for the sync");
    assert_eq!(answers(&replica), adapted);

    let refused = sync(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("1280-d dot") && stderr.contains("64-d") && stderr.contains("sync --swap") && stderr.contains("--recreate"), "{stderr}");
    let out = sync(&["--recreate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("deleted and filled afresh"), "{stderr}");
    let filled = report(&out);
    assert_eq!((filled["in_collection_before"].as_u64(), filled["added"].as_u64(), filled["recreated"].as_bool()), (Some(0), Some(300), Some(true)), "{filled}");
    let out = sync(&["--recreate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("filled afresh"), "a collection that fits is kept: {stderr}");
    let again = report(&out);
    assert_eq!((again["added"].as_u64(), again["deleted"].as_u64(), again["recreated"].as_bool()), (Some(0), Some(0), Some(false)), "{again}");
    // Once sync has filled the collection in the new space, the running server searches in it.
    server.follow_catalog().expect("follow");
    let tuned = answers(&open_remote());
    assert_ne!(tuned, adapted, "the tuned space finds other products");
    assert_eq!(answers(&server), tuned, "the running server takes up the space the collection was filled in");
    assert!(replica.follow_collection_description().expect("follow the description"));
    assert_eq!(answers(&replica), tuned, "so does a server without the catalog, from the description");

    // The tuned catalog answers from Qdrant as from its own store: same products, same scores.
    let same_answers = |when: &str| {
        let catalog = SqliteCatalog::open(&db).expect("catalog");
        let model_vectors = model_vectors_of(&catalog);
        let embedded = SearchEngine::open_with(catalog, Box::new(encoder()), &IndexConfig::default()).expect("embedded");
        let remote = open_remote();
        let request = SearchRequest { k: 10, ..SearchRequest::default() };
        for query in model_vectors.iter().step_by(30) {
            let expected = embedded.search_vector(query, &request).expect("embedded search");
            let found = remote.search_vector(query, &request).expect("qdrant search");
            assert_eq!(ids(&found), ids(&expected), "{when}: the same products");
            for (a, b) in found.hits.iter().zip(&expected.hits) {
                assert!((a.score - b.score).abs() < 1e-4, "{when}: score of {}: {} against {}", a.product.id, a.score, b.score);
            }
        }
    };
    same_answers("tuned");

    // Tuned again at the same dimension: the collection fits, but its vectors are the old
    // projection's; a plain `sync` finds that out and sends every point again.
    tune(&["--label", "articleType", "--dim", "64", "--hidden", "96", "--epochs", "6", "--augment", "64"]);
    server.follow_catalog().expect("follow");
    assert_eq!(answers(&server), tuned, "the running server waits for the sync");
    // A server with the catalog started before the sync answers in the collection's space too,
    // and leaves the description as it is.
    let restarted = open_remote();
    assert_eq!(answers(&restarted), tuned, "a server started before the sync answers in the collection's space");
    assert!(!replica.follow_collection_description().expect("follow the description"), "the description waits for the sync");
    let out = sync(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    server.follow_catalog().expect("follow");
    let retuned = answers(&open_remote());
    assert_ne!(retuned, tuned, "the second tune finds other products");
    assert_eq!(answers(&server), retuned, "the running server takes up the space the collection was sent again in");
    restarted.follow_catalog().expect("follow");
    assert_eq!(answers(&restarted), retuned, "and so does the one started before the sync");
    assert!(replica.follow_collection_description().expect("follow the description"));
    assert_eq!(answers(&replica), retuned, "and so does the replica");
    let resent = report(&out);
    assert_eq!((resent["added"].as_u64(), resent["resent"].as_u64(), resent["deleted"].as_u64()), (Some(0), Some(300), Some(0)), "{resent}");
    same_answers("tuned again");
    let again = report(&sync(&[]));
    assert_eq!((again["added"].as_u64(), again["resent"].as_u64()), (Some(0), Some(0)), "nothing to send again: {again}");
}

/// `sync --swap` sends a `tune` to a collection being searched with no window: the points in
/// the new space (64-d here, from 1280-d) fill a new collection beside the old one, and servers
/// with and without the catalog answer from the old one, whole and in its own space, until they
/// follow (the catalog records the swap; the description names the new collection), then from
/// the new one. A second swap (same space) soon after keeps both collections the swaps
/// replaced (a server may not have moved off the first yet); a plain `sync` once they have been
/// kept long enough (`--keep-replaced`, 0 here) deletes them and syncs the collection that holds
/// the points.
#[test]
#[ignore = "needs a Qdrant server: LOOKALIKE_QDRANT_URL"]
fn sync_swap_moves_every_server_to_a_new_collection_at_once() {
    let OwnCollection { _cluster, _dir, db, collection } = own_collection("swap");
    // `NAME_v2` is taken by a collection of its own (with its own description, as the
    // deployment guide once suggested for a roll-out): swaps pass it by and leave it alone.
    let (taken, second, third) = (format!("{collection}_v2"), format!("{collection}_v3"), format!("{collection}_v4"));
    let cluster = lookalike::index::qdrant::QdrantIndex::connect_cluster(store(&collection, true)).expect("cluster");
    let exists = |name: &str| cluster.collection_exists(name).expect("collection exists");
    // Made replicated, with a keyword index `sync`'s default --filter-columns lack: the
    // collections the swaps make in its place are made the same way.
    for (name, made) in [(&collection, &["--shards", "2", "--replicas", "2", "--filter-columns", "articleType,colourName"][..]), (&taken, &[])] {
        let out = sync_cli(&db, name, made);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    let remote_config = IndexConfig { store: Some(store(&collection, true)), precision: Precision::F32, ..IndexConfig::default() };
    let open_remote = || SearchEngine::open_with(SqliteCatalog::open_existing(&db).expect("catalog"), Box::new(encoder()), &remote_config).expect("qdrant");
    let photos: Vec<Vec<u8>> = (0..5).map(|i| test_photo(i).0).collect();
    let server = open_remote();
    let replica = SearchEngine::open_collection(&store(&collection, true), Box::new(encoder())).expect("replica");
    // A product only the collection knows, added through the replica: every swap keeps it.
    let (added_photo, _) = test_photo(7);
    replica.add_product_photo("added-by-replica".into(), added_photo.clone(), Default::default(), None).expect("add through the replica");
    let finds = |engine: &SearchEngine, photo: &Vec<u8>, id: &str, when: &str| {
        let first = first_pages(engine, std::slice::from_ref(photo))[0].first().cloned();
        assert_eq!(first.as_deref(), Some(id), "{when}: the product added through the replica is found by its photo");
    };
    let finds_added = |engine: &SearchEngine, when: &str| finds(engine, &added_photo, "added-by-replica", when);
    let before = first_pages(&server, &photos);
    assert_eq!(first_pages(&replica, &photos), before);

    tune_cli(&db, &["--label", "articleType", "--dim", "64", "--hidden", "128", "--epochs", "8", "--augment", "64"]);
    let info = info_cli(&db, &collection);
    assert!(info.contains("qdrant search space: from before the catalog's last `tune`") && info.contains("--swap"), "info says to send the tune: {info}");
    assert!(info.contains("2 shards x 2 copies") && info.contains("qdrant points: 301, catalog 300"), "{info}");
    server.follow_catalog().expect("follow");
    let out = sync_cli(&db, &collection, &["--swap"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("in place of"), "{stderr}");
    let swapped = sync_report(&out);
    assert_eq!(swapped["collection"], second.as_str(), "{swapped}");
    assert_eq!(swapped["replaced"], collection.as_str(), "{swapped}");
    assert_eq!(swapped["kept_collections"], serde_json::json!([collection]), "kept for servers that have not moved: {swapped}");
    assert_eq!((swapped["in_collection_before"].as_u64(), swapped["added"].as_u64()), (Some(0), Some(300)), "a new collection, filled: {swapped}");
    // Its vector was in the old space: encoded again from the photo its point carries.
    assert_eq!((swapped["without_catalog_in_old_space"].as_u64(), swapped["encoded_again"].as_u64()), (Some(1), Some(1)), "{swapped}");
    assert!(exists(&collection) && exists(&second));
    let info = info_cli(&db, &collection);
    let lines = [format!("its points in {second:?}"), "qdrant search space: the catalog's".into(), format!("qdrant kept after a swap: {collection:?}")];
    assert!(lines.iter().all(|line| info.contains(line.as_str())), "info after the swap: {info}");
    let layout = cluster.layout_of(&second).expect("layout");
    assert_eq!((layout.shards, layout.replicas), (2, Some(2)), "made as the collection it replaces: {layout:?}");
    assert!(["articleType", "colourName", "gender"].iter().all(|c| layout.keyword_columns.iter().any(|k| k == c)), "its indexes and this run's: {layout:?}");
    // Not yet followed: both answer as before, from the old collection in its space.
    assert_eq!(first_pages(&replica, &photos), before, "the replica answers from the old collection until it reads the description");
    assert_eq!(first_pages(&server, &photos), before, "the server answers from the old collection until it follows");
    server.follow_catalog().expect("follow");
    let tuned = first_pages(&open_remote(), &photos);
    assert_ne!(tuned, before, "the tuned space finds other products");
    assert_eq!(first_pages(&server, &photos), tuned, "the server with the catalog searches the new collection");
    assert!(replica.follow_collection_description().expect("follow the description"));
    assert_eq!(first_pages(&replica, &photos), tuned, "so does the replica, from the description");
    finds_added(&replica, "after the first swap");
    finds_added(&server, "after the first swap");

    // Swapped again in the same space, at once (a day's keep: this test never takes that
    // long): both earlier collections stay for servers that have not moved yet, and both
    // servers move to the third.
    let again = sync_report(&sync_cli(&db, &collection, &["--swap", "--keep-replaced", "86400"]));
    assert_eq!((again["collection"].as_str(), again["replaced"].as_str()), (Some(third.as_str()), Some(second.as_str())), "{again}");
    assert_eq!((again["deleted_collections"].clone(), again["kept_collections"].clone()), (serde_json::json!([]), serde_json::json!([second, collection])), "{again}");
    assert!(exists(&collection) && exists(&second) && exists(&third) && exists(&taken));
    assert_eq!((again["carried_without_catalog"].as_u64(), again["encoded_again"].as_u64()), (Some(1), Some(0)), "same space: copied as it was: {again}");
    assert_eq!(first_pages(&replica, &photos), tuned, "the replica still answers from the second collection");
    // A product added through the replica before its next check goes where the description
    // points now, not to the collection the swap replaced: the write reads the description.
    let (late_photo, _) = test_photo(8);
    replica.add_product_photo("added-after-the-swap".into(), late_photo.clone(), Default::default(), None).expect("add through the replica");
    assert!(!replica.follow_collection_description().expect("follow the description"), "the replica's write took up the description naming the third collection");
    server.follow_catalog().expect("follow");
    // The server, opening the third collection with other --filter-columns than `sync` (the
    // description's facet columns are the collection's own keyword indexes), left it as it was.
    assert!(!replica.follow_collection_description().expect("follow the description"), "the description is unchanged");
    // Kept long enough (0 s here): a plain sync deletes both and syncs the third.
    let plain = sync_report(&sync_cli(&db, &collection, &["--keep-replaced", "0"]));
    assert_eq!((plain["collection"].as_str(), plain["added"].as_u64(), plain["resent"].as_u64()), (Some(third.as_str()), Some(0), Some(0)), "{plain}");
    assert_eq!((plain["deleted_collections"].clone(), plain["kept_collections"].clone()), (serde_json::json!([second, collection]), serde_json::json!([])), "{plain}");
    assert!(!exists(&collection) && !exists(&second) && exists(&third));
    assert_eq!(first_pages(&server, &photos), tuned, "the server searches the third collection");
    assert_eq!(first_pages(&replica, &photos), tuned, "and so does the replica");
    assert_eq!(first_pages(&open_remote(), &photos), tuned, "a server started now opens the collection the description names");
    finds_added(&replica, "after the second swap");
    finds(&server, &late_photo, "added-after-the-swap", "added through the replica after the second swap");
    let quiet = sync_report(&sync_cli(&db, &collection, &[]));
    assert_eq!((quiet["collection"].as_str(), quiet["deleted_collections"].clone()), (Some(third.as_str()), serde_json::json!([])), "{quiet}");
}

/// Catalog changes made while a swap fills its new collection (a server with the catalog writes
/// them to the collection it still searches, the old one) are sent to the new one before the
/// description names it: a product added meanwhile is there, one removed meanwhile is not.
#[test]
#[ignore = "needs a Qdrant server: LOOKALIKE_QDRANT_URL"]
fn a_swap_sends_the_catalog_changes_made_while_it_filled() {
    let OwnCollection { _cluster, _dir, db, collection } = own_collection("swap-changes");
    let config = store(&collection, true);
    let mut catalog = SqliteCatalog::open_existing(&db).expect("catalog");
    lookalike::store::sync_qdrant(&mut catalog, &config, SyncMode::InPlace, keep_replaced()).expect("sync");
    let products = catalog.all_products().expect("products");
    let (copied, gone) = (products[0].clone(), products[1].clone());
    let vector = catalog.vector(copied.key).expect("vector").expect("a vector");
    let mut filled = Vec::new();
    let report = lookalike::store::sync_qdrant_observed(&mut catalog, &config, SyncMode::Swap, keep_replaced(), &mut |step, points| {
        if step != SyncStep::Filled {
            return Ok(());
        }
        // Another connection, as a server with the catalog has.
        let mut other = SqliteCatalog::open_existing(&db)?;
        let image = lookalike::types::NewImage::Stored { bytes: test_photo(9).0, mime: "image/png".into() };
        let added = lookalike::types::NewProduct {
            id: "added-while-filling".into(),
            image,
            content_hash: "added-while-filling".into(),
            metadata: copied.metadata.clone(),
            vector: vector.clone(),
            max_pooled: None,
            colour: None,
        };
        other.upsert(&[added])?;
        other.remove(&gone.id)?;
        filled.push(points.to_string());
        Ok(())
    })
    .expect("swap");
    let swapped =
        lookalike::index::qdrant::QdrantIndex::connect_cluster(config.clone()).expect("cluster").open_existing_points(report.collection.clone()).expect("the new collection");
    assert!(swapped.product("added-while-filling").expect("read").is_some(), "the product added while it filled is in the new collection");
    assert!(swapped.product(&gone.id).expect("read").is_none(), "the product removed while it filled is not");
    assert_eq!((filled, report.caught_up), (vec![report.collection.clone()], 2), "{report:?}");
}

/// What servers write while a swap runs, after the swap has sent the catalog's changes, reaches
/// the new collection all the same. A server with the catalog writes to the collection it
/// searches (the old one) until it follows the swap, and then sends the new one the catalog's
/// changes since the swap's; a server without it writes to the collection the description
/// names (the old one) until the swap rewrites it, and the swap reads what those added or
/// removed again after the rewrite. Twice: in the same space (the server moves to the new
/// collection), and after a `tune` (it takes up the new space with it, and the products the
/// replica added in the old space are left to encode again). The first swap's collection keeps
/// the int8 copies of the one it replaces; the second, told `--no-quantize`, has none.
#[test]
#[ignore = "needs a Qdrant server: LOOKALIKE_QDRANT_URL"]
fn writes_made_while_a_swap_runs_reach_the_new_collection() {
    let OwnCollection { _cluster, _dir, db, collection } = own_collection("swap-writes");
    let config = store(&collection, true);
    let mut catalog = SqliteCatalog::open_existing(&db).expect("catalog");
    // Made with int8 copies: the first swap's collection too, the second's not (--no-quantize).
    let quantized = |quantize| QdrantConfig { quantize: Some(quantize), ..config.clone() };
    lookalike::store::sync_qdrant(&mut catalog, &quantized(true), SyncMode::InPlace, keep_replaced()).expect("sync");
    let remote_config = IndexConfig { store: Some(config.clone()), precision: Precision::F32, ..IndexConfig::default() };
    let server = SearchEngine::open_with(SqliteCatalog::open_existing(&db).expect("catalog"), Box::new(encoder()), &remote_config).expect("server");
    let replica = SearchEngine::open_collection(&config, Box::new(encoder())).expect("replica");
    let removed: Vec<String> = catalog.all_products().expect("products").iter().take(2).map(|p| p.id.clone()).collect();
    let cluster = lookalike::index::qdrant::QdrantIndex::connect_cluster(config.clone()).expect("cluster");
    for (round, removed) in removed.iter().enumerate() {
        if round == 1 {
            tune_cli(&db, &["--label", "articleType", "--dim", "64", "--hidden", "128", "--epochs", "8", "--augment", "64"]);
            // The server sees the new space and goes on in the old one until the sync.
            server.follow_catalog().expect("follow");
        }
        let (by_server, by_replica) = (format!("by-server-{round}"), format!("by-replica-{round}"));
        let (server_photo, replica_photo) = (test_photo(20 + round).0, test_photo(30 + round).0);
        let swap_config = if round == 0 { config.clone() } else { quantized(false) };
        let report = lookalike::store::sync_qdrant_observed(&mut catalog, &swap_config, SyncMode::Swap, keep_replaced(), &mut |step, _| {
            if step == SyncStep::CaughtUp {
                server.add_product_photo(by_server.clone(), server_photo.clone(), Default::default(), None)?;
                assert!(server.remove_product(removed)?, "removed through the server");
                replica.add_product_photo(by_replica.clone(), replica_photo.clone(), Default::default(), None)?;
            }
            Ok(())
        })
        .expect("swap");
        assert_eq!(cluster.layout_of(&report.collection).expect("layout").quantized, round == 0, "round {round}: int8 copies as the replaced collection, unless told");
        let swapped =
            lookalike::index::qdrant::QdrantIndex::connect_cluster(config.clone()).and_then(|c| c.open_existing_points(report.collection.clone())).expect("the new collection");
        let encode_again: Vec<&str> = report.to_encode.iter().map(|p| p.product.id.as_str()).collect();
        match round {
            0 => {
                assert_eq!(report.carried_without_catalog, 1, "the replica's product, read again after the rewrite: {report:?}");
                assert!(swapped.product(&by_replica).expect("read").is_some(), "the replica's product is in the new collection");
            }
            _ => assert_eq!(encode_again, ["by-replica-0", "by-replica-1"], "both of the replica's products, in the old space: {report:?}"),
        }
        assert!(swapped.product(&by_server).expect("read").is_none(), "the server wrote to the collection it searched");
        server.follow_catalog().expect("the server follows the swap");
        assert!(swapped.product(&by_server).expect("read").is_some(), "round {round}: the server sent its product to the new collection when it moved");
        assert!(swapped.product(removed).expect("read").is_none(), "round {round}: and the removal");
        assert_eq!(first_pages(&server, std::slice::from_ref(&server_photo))[0].first(), Some(&by_server), "round {round}: found by its photo, in the new space");
        assert!(replica.follow_collection_description().expect("follow the description"));
        assert_eq!(first_pages(&replica, std::slice::from_ref(&server_photo))[0].first(), Some(&by_server), "round {round}: the replica finds it too");
    }
}

/// A catalog product removed through a server without the catalog stays removed: the removal is
/// recorded beside the description and the next sync removes the product from the catalog too,
/// instead of sending it back, also when the removal lands while a swap fills. One replaced
/// there (added again under its id, with a new photo and details) is taken into the catalog by
/// `lookalike sync`, not replaced by the catalog's older version.
#[test]
#[ignore = "needs a Qdrant server: LOOKALIKE_QDRANT_URL"]
fn writes_through_a_server_without_the_catalog_outlast_syncs() {
    let OwnCollection { _cluster, _dir, db, collection } = own_collection("removals");
    let config = store(&collection, true);
    let mut catalog = SqliteCatalog::open_existing(&db).expect("catalog");
    lookalike::store::sync_qdrant(&mut catalog, &config, SyncMode::InPlace, keep_replaced()).expect("sync");
    let replica = SearchEngine::open_collection(&config, Box::new(encoder())).expect("replica");
    let ids: Vec<String> = catalog.all_products().expect("products").iter().take(5).map(|p| p.id.clone()).collect();
    let in_catalog = |id: &str| SqliteCatalog::open_existing(&db).expect("catalog").get_by_id(id).expect("read").is_some();
    let sync = || {
        let out = sync_cli(&db, &collection, &[]);
        assert!(out.status.success(), "sync: {}", String::from_utf8_lossy(&out.stderr));
        sync_report(&out)
    };

    // Removed through the replica: `info` says the next sync removes it from the catalog; that
    // sync does, and sends nothing back.
    assert!(replica.remove_product(&ids[0]).expect("remove"));
    let info = info_cli(&db, &collection);
    assert!(info.contains("qdrant removals: 1 catalog products"), "{info}");
    let report = sync();
    assert_eq!(report["removed_without_catalog"], 1, "{report}");
    assert_eq!(report["added"], 0, "{report}");
    assert!(!in_catalog(&ids[0]), "removed from the catalog too");
    assert!(replica.product(&ids[0]).expect("read").is_none(), "not sent back");
    // Applied once: the record is gone.
    let report = sync();
    assert_eq!(report["removed_without_catalog"], 0, "{report}");
    assert_eq!(report["added"], 0, "{report}");
    assert!(!info_cli(&db, &collection).contains("qdrant removals"));

    // `index --store` takes removals in before it imports: a product its source still lists is
    // imported anew and sent again (the source's version wins, as after any removal), not
    // removed by the sync after the import.
    assert!(replica.remove_product(&ids[4]).expect("remove"));
    let out = Command::new(BIN)
        .args(["index", "--db", path(&db), "--fashion-mnist", "train", "--limit", "300", "--fashion-mnist-dir", path(&fm_dir())])
        .args(["--store", &qdrant_url(), "--collection", &collection])
        .output()
        .expect("index");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("1 products removed through servers without the catalog"), "index: {stderr}");
    assert!(in_catalog(&ids[4]) && replica.product(&ids[4]).expect("read").is_some(), "imported anew: {stderr}");

    // Removed, then added again through the API with a new photo and details: the addition
    // wins, and the catalog takes it in.
    assert!(replica.remove_product(&ids[1]).expect("remove"));
    let (new_photo, _) = test_photo(40);
    let details = lookalike::types::Metadata::from([("articleType".to_string(), "Replaced".to_string())]);
    replica.add_product_photo(ids[1].clone(), new_photo.clone(), details, None).expect("add again");
    let report = sync();
    assert_eq!(report["removed_without_catalog"], 0, "{report}");
    assert_eq!(report["replaced_without_catalog"], 1, "{report}");
    assert_eq!(report["resent"], 0, "taken in before the sync reads vectors back: {report}");
    let taken_in = SqliteCatalog::open_existing(&db).expect("catalog").get_by_id(&ids[1]).expect("read").expect("in the catalog");
    assert_eq!(taken_in.metadata.get("articleType").map(String::as_str), Some("Replaced"), "the replica's details in the catalog");
    let shown = replica.product(&ids[1]).expect("read").expect("in the collection");
    assert_eq!(shown.product.metadata.get("articleType").map(String::as_str), Some("Replaced"), "and in the collection");
    assert_eq!(first_pages(&replica, std::slice::from_ref(&new_photo))[0].first(), Some(&ids[1]), "found first by its new photo");
    let report = sync();
    assert_eq!(report["replaced_without_catalog"], 0, "the point is the catalog's row now: {report}");
    assert_eq!(report["added"], 0, "{report}");
    // Replaced with a photo too large for the payload: taken in from the reduced copy its
    // point carries, listed under the original's content hash (so the sizes listed with that
    // photo stay one result), and found by the original.
    let big = large_photo(44);
    replica.add_product_photo(ids[1].clone(), big.clone(), Default::default(), None).expect("replace with a large photo");
    let report = sync();
    assert_eq!(report["replaced_without_catalog"], 1, "{report}");
    let taken_in = SqliteCatalog::open_existing(&db).expect("catalog").get_by_id(&ids[1]).expect("read").expect("in the catalog");
    assert_eq!(taken_in.content_hash, lookalike::types::content_hash(&big));
    assert_eq!(first_pages(&replica, &[big])[0].first(), Some(&ids[1]), "found first by the original photo");
    // A replacement not taken in (`sync_qdrant` holds no model) gets the catalog's version
    // back, alone: the replica's vector is no sign of another search space (it is among those
    // read back).
    replica.add_product_photo(ids[1].clone(), test_photo(41).0, Default::default(), None).expect("replace again");
    let report = lookalike::store::sync_qdrant(&mut catalog, &config, SyncMode::InPlace, keep_replaced()).expect("sync");
    assert_eq!((report.added, report.resent), (1, 0), "{report:?}");

    // Removed and changed while a swap fills: through the old collection, which the description
    // still names, after the catalog's rows went to the new one (and after the catalog's
    // changes were sent there too). The swap removes the one there, and from the catalog, and
    // takes the others' new details into both before it ends.
    let price = |value: &str| lookalike::types::MetadataPatch { set: [("price".to_string(), value.to_string())].into(), ..Default::default() };
    let report = lookalike::store::sync_qdrant_observed(&mut catalog, &config, SyncMode::Swap, keep_replaced(), &mut |step, _| {
        match step {
            SyncStep::Filled => {
                assert!(replica.remove_product(&ids[2])?, "removed through the replica");
                assert!(replica.patch_product(&ids[3], &price("12.50"))?.is_some(), "changed through the replica");
            }
            SyncStep::CaughtUp => assert!(replica.patch_product(&ids[4], &price("7.00"))?.is_some(), "changed through the replica"),
        }
        Ok(())
    })
    .expect("swap");
    assert_eq!(report.removed_without_catalog, 1, "{report:?}");
    assert_eq!(report.patched_without_catalog, 2, "{report:?}");
    assert!(!in_catalog(&ids[2]), "removed from the catalog by the swap");
    let swapped = lookalike::index::qdrant::QdrantIndex::connect_cluster(config.clone()).and_then(|c| c.open_existing_points(report.collection.clone())).expect("swapped");
    assert!(swapped.product(&ids[2]).expect("read").is_none(), "not in the new collection");
    for (id, value) in [(&ids[3], "12.50"), (&ids[4], "7.00")] {
        let in_collection = swapped.product(id).expect("read").expect("in the new collection").0;
        assert_eq!(in_collection.metadata.get("price").map(String::as_str), Some(value), "the new collection has the change");
        let taken_in = SqliteCatalog::open_existing(&db).expect("catalog").get_by_id(id).expect("read").expect("in the catalog");
        assert_eq!(taken_in.metadata.get("price").map(String::as_str), Some(value), "the catalog has the change");
    }
    assert!(swapped.patched_without_catalog().expect("marks").is_empty(), "the new collection's points are the catalog's");
    assert!(replica.follow_collection_description().expect("follow"));
    assert!(replica.product(&ids[2]).expect("read").is_none());
    assert!(replica.product(&ids[3]).expect("read").is_some(), "the others are");

    // `lookalike remove --store` removes from the collection too, whoever added the product:
    // one a replica added, and a catalog product a replica replaced (points without a catalog
    // key, which a sync keeps).
    replica.add_product_photo("added-on-replica".to_string(), test_photo(42).0, Default::default(), None).expect("add");
    replica.add_product_photo(ids[3].clone(), test_photo(43).0, Default::default(), None).expect("replace");
    let out = Command::new(BIN)
        .args(["remove", "--db", db.to_str().expect("utf-8"), "--store", &qdrant_url(), "--collection", &collection, "added-on-replica", &ids[3]])
        .output()
        .expect("remove");
    assert!(out.status.success(), "remove: {}", String::from_utf8_lossy(&out.stderr));
    assert!(replica.product("added-on-replica").expect("read").is_none(), "the replica's product removed");
    assert!(replica.product(&ids[3]).expect("read").is_none(), "the replaced product removed, not taken in");
    assert!(!in_catalog(&ids[3]));
}

/// Two servers on one collection, one with the catalog file and one without (`--no-catalog`:
/// everything from the collection's payloads and description). They return the same
/// products, scores and metadata for the same searches; a product added through either is
/// found through the other on its next search, and one removed through either is gone from
/// both. The server without the catalog shows the small photos the payloads carry and counts
/// facets in Qdrant.
#[test]
#[ignore = "needs a Qdrant server: LOOKALIKE_QDRANT_URL"]
fn replicas_with_and_without_the_catalog_share_one_collection() {
    let OwnCollection { _cluster, _dir, db, collection } = own_collection("replicas");
    let report = lookalike::store::sync_qdrant(&mut SqliteCatalog::open(&db).expect("catalog"), &store(&collection, true), SyncMode::InPlace, keep_replaced()).expect("sync");
    assert_eq!(report.added, 300);

    let token = "replica-test";
    let shared = ["--store", &qdrant_url(), "--collection", &collection, "--qdrant-exact", "--admin-token", token];
    let owner = Server::start(&db, &shared, &[]);
    let replica = Server::start_with(&[&["--no-catalog"], &shared[..]].concat(), &[]);

    // The same answers: "more like this" and photo searches, hit by hit.
    let hits = |result: &serde_json::Value| result["hits"].clone();
    for i in 0..10 {
        let id = format!("fmnist-train-{:05}", i * 29);
        let body = serde_json::json!({"product_id": id, "k": 10});
        let (a, b) = (ok_json(search_json(&owner, body.clone())), ok_json(search_json(&replica, body)));
        assert_eq!(hits(&a).as_array().map(Vec::len), Some(10));
        assert_eq!(hits(&a), hits(&b), "more like {id}");
        let (photo, _) = test_photo(i);
        let (a, b) = (ok_json(search_photo(&owner, photo.clone(), &[])), ok_json(search_photo(&replica, photo, &[])));
        assert_eq!(hits(&a), hits(&b), "photo {i}");
    }
    let product = |server: &Server, id: &str| client().get(server.url(&format!("/api/products/{id}"))).send().expect("GET product");
    assert_eq!(ok_json(product(&owner, "fmnist-train-00042")), ok_json(product(&replica, "fmnist-train-00042")));
    let image = |server: &Server, id: &str| client().get(server.url(&format!("/api/products/{id}/image"))).send().expect("GET image").bytes().expect("bytes");
    let photo = image(&replica, "fmnist-train-00042");
    assert!(!photo.is_empty() && photo == image(&owner, "fmnist-train-00042"), "the replica shows the photo the payload carries");
    let facets = |server: &Server| ok_json(client().get(server.url("/api/facets")).send().expect("facets"));
    let column = |f: &serde_json::Value| f["facets"].as_array().expect("facets").iter().find(|c| c["column"] == "articleType").cloned();
    let mut counts = [facets(&owner), facets(&replica)].map(|f| {
        let mut values: Vec<(String, u64)> = column(&f).expect("articleType facet")["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|v| (v["value"].as_str().expect("value").to_string(), v["count"].as_u64().expect("count")))
            .collect();
        values.sort();
        values
    });
    assert_eq!(counts[0], counts[1], "facet counts");
    counts[0].clear();

    // Writes through either server reach the other.
    let add = |server: &Server, id: &str, photo: Vec<u8>| {
        let form = photo_form(photo, &[("id", id), ("articleType", "Test")]);
        let r = client().post(server.url("/api/products")).bearer_auth(token).multipart(form).send().expect("POST");
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().unwrap_or_default());
    };
    let remove = |server: &Server, id: &str| client().delete(server.url(&format!("/api/products/{id}"))).bearer_auth(token).send().expect("DELETE").status().as_u16();
    let top = |server: &Server, photo: Vec<u8>| common::ids(&ok_json(search_photo(server, photo, &[])));
    for (a, b, id) in [(&replica, &owner, "added-on-replica"), (&owner, &replica, "added-on-owner")] {
        let (photo, _) = test_photo(500);
        add(a, id, photo.clone());
        assert_eq!(top(b, photo.clone()).first().map(String::as_str), Some(id), "{id} found through the other server");
        let shown = ok_json(product(b, id));
        assert_eq!(shown["metadata"]["articleType"], "Test", "{shown}");
        assert!(!image(b, id).is_empty(), "{id}'s photo shown through the other server");
        // Its metadata changed through the other server: both show the change, and Qdrant
        // filters on it.
        let change = serde_json::json!({"metadata": {"articleType": "Patched", "price": "9.99"}});
        let r = client().patch(b.url(&format!("/api/products/{id}"))).bearer_auth(token).json(&change).send().expect("PATCH");
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap_or_default());
        for server in [a, b] {
            let shown = ok_json(product(server, id));
            assert_eq!((&shown["metadata"]["articleType"], &shown["price"]), (&change["metadata"]["articleType"], &change["metadata"]["price"]), "{shown}");
            let filtered = ok_json(search_photo(server, photo.clone(), &[("filter", "articleType=Patched")]));
            assert_eq!(common::ids(&filtered), [id.to_string()], "{filtered}");
        }
        assert_eq!(remove(b, id), 204, "{id} removed through the other server");
        assert!(!top(a, photo).contains(&id.to_string()), "{id} gone from the server it was added through");
        assert_eq!(product(a, id).status().as_u16(), 404);
    }

    // A catalog product changed through the replica: the owner shows the collection's metadata,
    // as its searches do.
    let change = serde_json::json!({"metadata": {"price": "1.99"}});
    let r = client().patch(replica.url("/api/products/fmnist-train-00042")).bearer_auth(token).json(&change).send().expect("PATCH");
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap_or_default());
    assert_eq!(ok_json(product(&owner, "fmnist-train-00042"))["price"], "1.99");
    // The next sync takes the change into the catalog (once), so that a sync sending the
    // catalog's products again keeps it.
    let in_catalog = || SqliteCatalog::open(&db).expect("catalog").get_by_id("fmnist-train-00042").expect("read").expect("product").metadata.get("price").cloned();
    assert_eq!(in_catalog(), None);
    for taken_in in [1, 0] {
        let report = lookalike::store::sync_qdrant(&mut SqliteCatalog::open(&db).expect("catalog"), &store(&collection, true), SyncMode::InPlace, keep_replaced()).expect("sync");
        assert_eq!(report.patched_without_catalog, taken_in);
        assert_eq!(in_catalog().as_deref(), Some("1.99"));
    }
    let r = client().patch(owner.url("/api/products/fmnist-train-00042")).bearer_auth(token).json(&serde_json::json!({"metadata": {"price": null}})).send().expect("PATCH");
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap_or_default());
    assert!(ok_json(product(&replica, "fmnist-train-00042"))["price"].is_null(), "the owner's change reaches the replica");
    assert_eq!(in_catalog(), None, "and its catalog");

    // Both list the collection's products, a page at a time: the catalog's and one added through
    // the replica, the same on both; a filter runs in Qdrant.
    let (photo, _) = test_photo(501);
    add(&replica, "listed-on-both", photo);
    let list = |server: &Server, query: &str| {
        let (mut ids, mut next) = (HashSet::new(), None::<String>);
        loop {
            let page = match &next {
                Some(token) => ok_json(client().get(server.url(&format!("/api/products?limit=128&{query}page={token}"))).send().expect("list")),
                None => ok_json(client().get(server.url(&format!("/api/products?limit=128&{query}"))).send().expect("list")),
            };
            ids.extend(page["products"].as_array().expect("products").iter().map(|p| p["id"].as_str().expect("id").to_string()));
            match page["next_page"].as_str() {
                Some(token) => next = Some(token.to_string()),
                None => return ids,
            }
        }
    };
    let everything = list(&replica, "");
    assert!(everything.len() == 301 && everything.contains("listed-on-both"), "{} listed", everything.len());
    assert_eq!(list(&owner, ""), everything, "the server with the catalog lists the collection's products too");
    assert_eq!(list(&replica, "filter=articleType%3DTest&"), HashSet::from(["listed-on-both".to_string()]));
    for (server, query, total) in [(&replica, "", 301), (&owner, "", 301), (&replica, "&filter=articleType%3DTest", 1)] {
        let page = ok_json(client().get(server.url(&format!("/api/products?limit=5{query}"))).send().expect("list"));
        assert_eq!(page["total"], total, "Qdrant counts what matches: {query}");
    }
    // So does `lookalike list --store`, without a server.
    let list_cli = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["list", "--db", db.to_str().expect("utf-8"), "--store", &qdrant_url(), "--collection", &collection, "--json"])
            .args(extra)
            .output()
            .expect("list");
        assert!(out.status.success(), "list: {}", String::from_utf8_lossy(&out.stderr));
        let page: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        page["products"].as_array().expect("products").iter().map(|p| p["id"].as_str().expect("id").to_string()).collect::<HashSet<String>>()
    };
    assert_eq!(list_cli(&["--limit", "500"]), everything);
    assert_eq!(list_cli(&["--filter", "articleType=Test"]), HashSet::from(["listed-on-both".to_string()]));
    // A filter no product meets says which part, from Qdrant's counts of a column it indexes;
    // a column it does not index is not judged (some product may have it all the same).
    let typo = serde_json::json!("no product has articleType=test (did you mean articleType=Test?)");
    for server in [&replica, &owner] {
        let none = ok_json(client().get(server.url("/api/products?filter=articleType%3Dtest")).send().expect("list"));
        assert_eq!((&none["total"], &none["why_nothing_matches"]), (&serde_json::json!(0), &typo));
        let found = ok_json(search_photo(server, test_photo(503).0, &[("filter", "articleType=test")]));
        assert_eq!((&found["hits"], &found["why_nothing_matches"]), (&serde_json::json!([]), &typo));
    }
    let unjudged = ok_json(client().get(replica.url("/api/products?filter=season%3DNever")).send().expect("list"));
    assert!(unjudged["total"] == 0 && unjudged.get("why_nothing_matches").is_none(), "{unjudged}");
    let bad = client().get(replica.url("/api/products?page=12")).send().expect("list");
    assert_eq!(bad.status().as_u16(), 422, "a page token that is no point id");
    assert_eq!(remove(&owner, "listed-on-both"), 204);

    // A patterned product added through the replica: both servers name its main colours, from
    // the colour descriptor its payload carries, in its own answer and in search hits.
    let grey = image::load_from_memory(&test_photo(502).0).expect("photo").resize(112, 112, image::imageops::FilterType::Triangle);
    let mut png = Vec::new();
    common::striped(&grey).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("png");
    let form = photo_form(png.clone(), &[("id", "striped"), ("baseColour", "Multi")]);
    let r = client().post(replica.url("/api/products")).bearer_auth(token).multipart(form).send().expect("POST");
    assert_eq!(r.status().as_u16(), 201);
    let added = ok_json(r);
    for server in [&replica, &owner] {
        let own = ok_json(product(server, "striped"));
        assert_eq!(own["colour_mix"], added["colour_mix"], "the POST's answer names its colours too");
        let mix = own["colour_mix"].as_array().cloned().unwrap_or_default();
        assert!(mix.len() >= 2 && mix.iter().all(|c| ["Red", "Blue", "Maroon", "Navy Blue"].contains(&c["name"].as_str().unwrap_or_default())), "{own}");
        let found = ok_json(search_photo(server, png.clone(), &[("k", "1")]));
        assert_eq!((&found["hits"][0]["id"], &found["hits"][0]["colour_mix"]), (&serde_json::json!("striped"), &own["colour_mix"]), "{found}");
        let listed = ok_json(client().get(server.url("/api/products?filter=baseColour%3DMulti")).send().expect("list"));
        let listed = listed["products"].as_array().and_then(|p| p.iter().find(|p| p["id"] == "striped")).cloned();
        assert_eq!(listed.map(|p| p["colour_mix"].clone()), Some(own["colour_mix"].clone()), "the listing shows its colours too");
    }
    // Its shop colour removed through the replica: named from the payload's descriptor, as
    // `index` names a product whose row names none.
    let change = serde_json::json!({"metadata": {"baseColour": null}});
    let r = client().patch(replica.url("/api/products/striped")).bearer_auth(token).json(&change).send().expect("PATCH");
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap_or_default());
    for server in [&replica, &owner] {
        let own = ok_json(product(server, "striped"));
        assert!(own["metadata"].get("baseColour").is_none() && own["colour"] == "Multi" && own["metadata"]["colour"] == "Multi", "{own}");
    }
    assert_eq!(remove(&replica, "striped"), 204);

    // A photo too large for the payload travels as a reduced JPEG copy, which every server
    // shows where the product links no copy of the shop's own (its image_url); where it does,
    // a server without the photo in its catalog sends the shopper there, for the full size.
    let big = large_photo(5);
    let form = photo_form(big.clone(), &[("id", "large-photo"), ("image_url", "https://cdn.example/large-photo.png")]);
    let r = client().post(replica.url("/api/products")).bearer_auth(token).multipart(form).send().expect("POST");
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().unwrap_or_default());
    for server in [&replica, &owner] {
        let r = client().get(server.url("/api/products/large-photo/image")).send().expect("GET image");
        assert_eq!((r.status().as_u16(), r.header("location")), (307, Some("https://cdn.example/large-photo.png")));
    }
    assert_eq!(remove(&replica, "large-photo"), 204);
    let reduced_copy = |server: &Server, id: &str| {
        let r = client().get(server.url(&format!("/api/products/{id}/image"))).send().expect("GET image");
        assert_eq!((r.status().as_u16(), r.header("content-type")), (200, Some("image/jpeg")), "{id}");
        let bytes = r.bytes().expect("bytes");
        assert!(bytes.len() <= lookalike::index::qdrant::MAX_PAYLOAD_IMAGE, "{id}: {} bytes", bytes.len());
        let copy = image::load_from_memory(&bytes).expect("the copy decodes");
        assert_eq!((copy.width(), copy.height()), (640, 640), "{id}: 700 px reduced to 640");
        bytes
    };
    // Added through the replica, through the server with the catalog (which keeps the
    // original), and sent by a sync from the catalog: each point carries the copy.
    for (server, id) in [(&replica, "large-by-replica"), (&owner, "large-by-owner")] {
        let r = client().post(server.url("/api/products")).bearer_auth(token).multipart(photo_form(big.clone(), &[("id", id)])).send().expect("POST");
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().unwrap_or_default());
        let copy = reduced_copy(&replica, id);
        if server.url("/") == replica.url("/") {
            assert_eq!(reduced_copy(&owner, id), copy, "the same copy on every server");
        }
    }
    let r = client().get(owner.url("/api/products/large-by-owner/image")).send().expect("GET image");
    assert_eq!(r.bytes().expect("bytes").to_vec(), big, "the catalog's server shows the original");
    // A sync makes the copy of a catalog product's large photo, but not where the product
    // links the shop's own: every server sends shoppers there.
    let form = photo_form(big.clone(), &[("id", "large-linked"), ("image_url", "https://cdn.example/large-linked.jpg")]);
    assert_eq!(client().post(owner.url("/api/products")).bearer_auth(token).multipart(form).send().expect("POST").status().as_u16(), 201);
    let points = lookalike::index::qdrant::QdrantIndex::connect_cluster(store(&collection, true)).and_then(|c| c.open_existing_points(collection.clone())).expect("points");
    assert_eq!(points.product_image("large-linked").expect("read"), None, "the server with the catalog writes the point as a sync does: no copy of a linked photo");
    // A path in the link column is no link a browser is sent to: that product gets its copy.
    let form = photo_form(big.clone(), &[("id", "large-path"), ("image_url", "photos/large-path.jpg")]);
    assert_eq!(client().post(owner.url("/api/products")).bearer_auth(token).multipart(form).send().expect("POST").status().as_u16(), 201);
    let ids = ["large-by-owner", "large-linked", "large-path"].map(String::from);
    assert_eq!(lookalike::store::remove_from_collection(&store(&collection, true), &ids).expect("remove the points"), [true, true, true]);
    let report = lookalike::store::sync_qdrant(&mut SqliteCatalog::open(&db).expect("catalog"), &store(&collection, true), SyncMode::InPlace, keep_replaced()).expect("sync");
    assert_eq!((report.added, report.photos_added), (3, 0), "{report:?}");
    reduced_copy(&replica, "large-by-owner");
    let mut points = lookalike::index::qdrant::QdrantIndex::connect_cluster(store(&collection, true)).and_then(|c| c.open_existing_points(collection.clone())).expect("points");
    assert_eq!(points.product_image("large-linked").expect("read"), None, "no copy of a linked photo");
    reduced_copy(&replica, "large-path");
    // Points written without their photo (by a lookalike before copies): the next sync sends
    // them again with the copy, and only them.
    for id in ["large-by-owner", "large-path"] {
        let (stored, vector) = points.product(id).expect("read").expect("the point");
        let key = SqliteCatalog::open_existing(&db).expect("catalog").get_by_id(id).expect("read").expect("in the catalog").key;
        points.put_product(key, stored, &vector, None).expect("write it without its photo");
        assert_eq!(points.product_image(id).expect("read"), None);
    }
    let without: std::collections::HashSet<String> = ["large-by-owner", "large-path"].map(String::from).into();
    assert_eq!(points.ids_without_photo().expect("list"), without, "the linked one is not listed");
    let info = info_cli(&db, &collection);
    assert!(info.contains("qdrant points without their photo: 2 "), "{info}");
    let report = lookalike::store::sync_qdrant(&mut SqliteCatalog::open(&db).expect("catalog"), &store(&collection, true), SyncMode::InPlace, keep_replaced()).expect("sync");
    assert_eq!((report.added, report.resent, report.photos_added), (0, 0, 2), "{report:?}");
    assert!(points.ids_without_photo().expect("list").is_empty());
    reduced_copy(&replica, "large-by-owner");
    reduced_copy(&replica, "large-path");
    let r = client().get(replica.url("/api/products/large-linked/image")).send().expect("GET image");
    assert_eq!((r.status().as_u16(), r.header("location")), (307, Some("https://cdn.example/large-linked.jpg")));
    for id in ["large-by-replica", "large-by-owner", "large-linked", "large-path"] {
        assert_eq!(remove(&replica, id), 204);
    }
    // A catalog product whose photo file is gone: its point, written without the photo, is
    // left as it is and reported by every sync, not sent again each time.
    let gone = _dir.path().join("moved-away.png");
    let conn = rusqlite::Connection::open(&db).expect("open the catalog");
    conn.execute("UPDATE products SET image_path = ?1 WHERE id = 'fmnist-train-00007'", [gone.to_str().expect("utf-8")]).expect("point at a file that is gone");
    let (stored, vector) = points.product("fmnist-train-00007").expect("read").expect("the point");
    let key = SqliteCatalog::open_existing(&db).expect("catalog").get_by_id("fmnist-train-00007").expect("read").expect("in the catalog").key;
    points.put_product(key, stored, &vector, None).expect("write it without its photo");
    for _ in 0..2 {
        let report = lookalike::store::sync_qdrant(&mut SqliteCatalog::open(&db).expect("catalog"), &store(&collection, true), SyncMode::InPlace, keep_replaced()).expect("sync");
        assert_eq!((report.added, report.resent, report.photos_added, report.photos_unreadable), (0, 0, 0, 1), "{report:?}");
    }
    // info says so, rather than counting it among the points the next sync sends.
    let info = info_cli(&db, &collection);
    assert!(info.contains("qdrant points without their photo: 1 whose photo files are gone") && !info.contains("without their photo: 1 (written"), "{info}");

    // No description to follow: none, in one request (Qdrant's "not found"), not an error.
    let nowhere = lookalike::index::qdrant::QdrantIndex::connect_cluster(store("lookalike-never-made", true)).expect("cluster");
    assert_eq!(nowhere.description_digest().expect("digest of a missing description"), None);
    // A collection that does not exist: a clear message, not a server without products.
    let out = Command::new(BIN).args(["serve", "--no-catalog", "--store", &qdrant_url(), "--collection", "lookalike-never-made", "--addr", "127.0.0.1:0"]).output().expect("serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no collection") && stderr.contains("lookalike sync"), "{stderr}");
}

/// The deployment example's balancer: Debian's nginx on loopback (`scripts/nginx-replicas.conf`)
/// in front of two replicas without the catalog. Searches through it are all answered, by both
/// replicas; with one replica stopped, every search is still answered, by the other.
#[test]
#[ignore = "needs a Qdrant server (LOOKALIKE_QDRANT_URL) and nginx (Debian's nginx-light)"]
fn a_load_balancer_spreads_searches_over_replicas_and_skips_a_stopped_one() {
    let OwnCollection { _cluster, _dir: dir, db, collection } = own_collection("balanced");
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| std::path::Path::new(p).exists()).expect("nginx (apt-get install nginx-light)");
    lookalike::store::sync_qdrant(&mut SqliteCatalog::open(&db).expect("catalog"), &store(&collection, true), SyncMode::InPlace, keep_replaced()).expect("sync");
    let args = ["--no-catalog", "--store", &qdrant_url(), "--collection", &collection, "--qdrant-exact"];
    let mut replicas = vec![Server::start_with(&args, &[]), Server::start_with(&args, &[])];
    let upstream = |server: &Server| server.url("").trim_start_matches("http://").to_string();
    let upstreams: Vec<String> = replicas.iter().map(upstream).collect();

    // A free loopback port for the balancer: bound, then given to nginx.
    let listen = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("address").to_string();
    let work = dir.path().join("nginx");
    std::fs::create_dir_all(&work).expect("nginx dir");
    let template = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/nginx-replicas.conf")).expect("template");
    let servers: String = upstreams.iter().map(|u| format!("server {u}; ")).collect();
    let conf = template.replace("@WORK@", common::path(&work)).replace("@LISTEN@", &listen).replace("@UPSTREAMS@", &servers);
    std::fs::write(work.join("nginx.conf"), conf).expect("write conf");
    let status = Command::new(nginx).args(["-c", common::path(&work.join("nginx.conf")), "-e", common::path(&work.join("nginx-error.log"))]).status().expect("nginx");
    assert!(status.success(), "nginx did not start: {}", std::fs::read_to_string(work.join("nginx-error.log")).unwrap_or_default());
    struct Stop(PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            if let Ok(pid) = std::fs::read_to_string(&self.0) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
    let _stop = Stop(work.join("nginx.pid"));
    let balancer = format!("http://{listen}");
    // nginx daemonises once it listens; until its pid file is there, it may not yet.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while client().get(format!("{balancer}/readyz")).send().map_or(true, |r| r.status().as_u16() != 200) {
        assert!(std::time::Instant::now() < deadline, "the balancer did not answer");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let answered_by = |count: usize| -> Vec<String> {
        let log = work.join("access.log");
        std::fs::write(&log, "").expect("reset access log");
        for i in 0..count {
            let (photo, _) = test_photo(i);
            let r = client().post(format!("{balancer}/api/search")).multipart(photo_form(photo, &[])).send().expect("search through the balancer");
            assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap_or_default());
        }
        // One line per request: the replica(s) tried, the status, the route. nginx writes a line
        // once the answer is sent, so the last may land a moment after the client has it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let lines: Vec<String> = std::fs::read_to_string(&log).expect("access log").lines().filter_map(|l| l.strip_suffix(" /api/search")).map(str::to_string).collect();
            if lines.len() >= count || std::time::Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let lines = answered_by(20);
    assert_eq!(lines.len(), 20, "{lines:?}");
    for u in &upstreams {
        assert!(lines.iter().any(|l| l.starts_with(&format!("{u} 200"))), "{u} answered none of 20 searches: {lines:?}");
    }

    // One replica stopped: the balancer sends everything to the other.
    drop(replicas.remove(0));
    let lines = answered_by(10);
    assert_eq!(lines.len(), 10, "{lines:?}");
    assert!(lines.iter().all(|l| l.ends_with(&format!("{} 200", upstreams[1]))), "{lines:?}");
}

/// A three-node cluster (`LOOKALIKE_QDRANT_CLUSTER`: three comma-separated gRPC addresses),
/// a collection of 3 shards with 2 replicas each. With one node stopped
/// (`LOOKALIKE_QDRANT_STOP`: a shell command stopping the third node) searches still answer
/// completely and writes are acknowledged; after `LOOKALIKE_QDRANT_START` brings it back, every
/// acknowledged point is there, also when asking the restarted node.
#[test]
#[ignore = "needs a 3-node Qdrant cluster: LOOKALIKE_QDRANT_CLUSTER, LOOKALIKE_QDRANT_STOP, LOOKALIKE_QDRANT_START"]
fn cluster_keeps_answering_with_a_node_down() {
    let _alone = CLUSTER.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    use lookalike::index::qdrant::QdrantIndex;
    use lookalike::index::VectorIndex;
    let nodes = cluster_nodes();
    let collection = format!("lookalike-cluster-{}", std::process::id());
    let _collections = DeletedOnDrop(collection.clone());
    let on = |node: &str| QdrantConfig { shards: Some(3), replicas: Some(2), write_consistency: Some(1), ..store_at(node, &collection, true) };

    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let mut catalog = SqliteCatalog::open(&db).expect("catalog");
    let report = lookalike::store::sync_qdrant(&mut catalog, &on(&nodes[0]), SyncMode::InPlace, keep_replaced()).expect("sync to the cluster");
    assert_eq!(report.added, 300);
    let vectors = model_vectors_of(&catalog);
    let config = IndexConfig { store: Some(on(&nodes[0])), ..IndexConfig::default() };
    let engine = SearchEngine::open_with(SqliteCatalog::open(&db).expect("catalog"), Box::new(encoder()), &config).expect("engine");
    let request = SearchRequest { k: 10, ..SearchRequest::default() };
    let before: Vec<Vec<String>> = vectors.iter().take(50).map(|q| ids(&engine.search_vector(q, &request).expect("search"))).collect();

    let node = NodeDown::stop();
    let started = std::time::Instant::now();
    let during: Vec<Vec<String>> = vectors.iter().take(50).map(|q| ids(&engine.search_vector(q, &request).expect("search with a node down"))).collect();
    assert_eq!(before, during, "every shard still has a live replica: complete answers");
    // Writes while the node is down, acknowledged by the live replicas.
    let space = lookalike::space::SearchSpace::for_catalog(&catalog).expect("space");
    let mut index = QdrantIndex::connect(on(&nodes[0]), 1280).expect("connect");
    for i in 0..20i64 {
        let key = 100_000 + i;
        index.describe(key, lookalike::index::qdrant::StoredProduct { id: format!("added-while-down-{i}"), ..Default::default() });
        let v = space.map(&vectors[i as usize]).expect("map");
        index.upsert(key, &v).expect("acknowledged write with a node down");
    }
    eprintln!("node down: 50 searches complete and identical, 20 writes acknowledged ({:.1}s)", started.elapsed().as_secs_f64());

    node.start();
    // The restarted node catches up; ask it directly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let counted = QdrantIndex::connect(on(&nodes[2]), 1280).map(|i| i.len());
        if counted.as_ref().is_ok_and(|&n| n == 320) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "restarted node sees {counted:?} points, expected 320");
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    eprintln!("node back: 320 points visible through it, nothing acknowledged lost");
}

/// A replica whose Qdrant does not answer says so and recovers by itself: `lookalike serve`
/// talks to the third node only (the collection has a replica on every node); with that node
/// killed (`LOOKALIKE_QDRANT_STOP`) a search answers 503 with Retry-After, never a wrong or
/// empty list, and `/readyz` answers 503 so a load balancer stops sending it searches; after
/// `LOOKALIKE_QDRANT_START` the same search gives the same products, with no restart.
#[test]
#[ignore = "needs a 3-node Qdrant cluster: LOOKALIKE_QDRANT_CLUSTER, LOOKALIKE_QDRANT_STOP, LOOKALIKE_QDRANT_START"]
fn cluster_replica_answers_503_while_its_qdrant_is_down_and_recovers() {
    let _alone = CLUSTER.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    let nodes = cluster_nodes();
    let collection = format!("lookalike-down-{}", std::process::id());
    let _collections = DeletedOnDrop(collection.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let everywhere = QdrantConfig { shards: Some(1), replicas: Some(3), ..store_at(&nodes[0], &collection, true) };
    let report = lookalike::store::sync_qdrant(&mut SqliteCatalog::open(&db).expect("catalog"), &everywhere, SyncMode::InPlace, keep_replaced()).expect("sync to the cluster");
    assert_eq!(report.added, 300);

    // One replica with the catalog file, one without: both behave the same.
    let args = ["--store", &nodes[2], "--collection", &collection, "--qdrant-exact"];
    let servers = [Server::start(&db, &args, &[]), Server::start_with(&[&["--no-catalog"], &args[..]].concat(), &[])];
    let like = |server: &Server, id: &str| search_json(server, serde_json::json!({"product_id": id, "k": 10}));
    let readyz = |server: &Server| client().get(server.url("/readyz")).send().expect("readyz");
    let before = common::ids(&ok_json(like(&servers[0], "fmnist-train-00007")));
    assert_eq!(before.len(), 10);
    for server in &servers {
        assert_eq!(common::ids(&ok_json(like(server, "fmnist-train-00007"))), before);
        assert_eq!(readyz(server).status().as_u16(), 200);
    }

    let node = NodeDown::stop();
    for server in &servers {
        let down = like(server, "fmnist-train-00007");
        let retry_after = down.header("retry-after").map(str::to_string);
        let message = expect_error(down, 503, "store_unavailable");
        assert!(retry_after.is_some(), "a 503 says when to try again: {message}");
        let probe = readyz(server);
        assert!(probe.header("retry-after").is_some());
        expect_error(probe, 503, "store_unavailable");
    }

    node.start();
    // The node is back when the script returns (it waits for Qdrant's own readiness); the
    // replicas need no restart: their next request reconnects.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    for server in &servers {
        while readyz(server).status().as_u16() != 200 {
            assert!(std::time::Instant::now() < deadline, "the replica did not become ready again");
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        assert_eq!(common::ids(&ok_json(like(server, "fmnist-train-00007"))), before, "the same products as before the node went down");
    }
}

/// A catalog that holds no product yet (its export's photos all missing) makes no collection:
/// it has no vectors to give one its dimension. `index --store` says so and succeeds; `sync`
/// refuses with what to do, not Qdrant's "size 0 invalid".
#[test]
#[ignore = "needs a Qdrant server: LOOKALIKE_QDRANT_URL"]
fn an_empty_catalog_makes_no_collection() {
    let OwnCollection { _cluster, _dir, db, collection } = own_collection("empty");
    let empty = db.with_file_name("empty.db");
    let shop = db.with_file_name("shop");
    std::fs::create_dir_all(shop.join("images")).expect("mkdir");
    std::fs::write(shop.join("styles.csv"), "id,articleType\n1,Shirts\n").expect("csv");
    let index = Command::new(BIN)
        .args(["index", "--db", empty.to_str().expect("utf-8"), "--kaggle", shop.to_str().expect("utf-8"), "--store", &qdrant_url(), "--collection", &collection])
        .output()
        .expect("index");
    let stderr = String::from_utf8_lossy(&index.stderr);
    assert!(index.status.success() && stderr.contains("the catalog holds no products yet: nothing sent to Qdrant"), "{stderr}");
    let out = sync_cli(&empty, &collection, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("holds no products yet: import some with `lookalike index`"), "{stderr}");
}

/// Products listed with the very same photo (size variants) are one result in a collection as
/// in the embedded store, on servers with and without the catalog: the photo's hash travels in
/// the payload. `sync` sends again a point whose photo changed in the catalog, and a server
/// without the catalog folds the sizes it adds itself.
#[test]
#[ignore = "needs a Qdrant server: LOOKALIKE_QDRANT_URL"]
fn a_photo_listed_in_several_sizes_is_one_result_in_a_collection() {
    let OwnCollection { _cluster, _dir: dir, db: _, collection } = own_collection("sizes");
    let shop = dir.path().join("shop");
    std::fs::create_dir_all(shop.join("images")).expect("mkdir");
    let (shirt, shoe, bag) = (test_photo(1).0, test_photo(0).0, test_photo(3).0);
    for (id, photo) in [("1001", &shirt), ("1002", &shoe), ("1003", &shirt), ("1004", &shirt)] {
        std::fs::write(shop.join("images").join(format!("{id}.png")), photo).expect("photo");
    }
    std::fs::write(shop.join("styles.csv"), "id,articleType,size\n1001,Shirts,S\n1002,Shoes,42\n1003,Shirts,M\n1004,Shirts,L\n").expect("csv");
    let db = dir.path().join("shop.db");
    let index = |db: &std::path::Path| {
        let out = Command::new(BIN).args(["index", "--db", db.to_str().expect("utf-8"), "--kaggle", shop.to_str().expect("utf-8")]).output().expect("index");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    index(&db);
    let report = sync_report(&sync_cli(&db, &collection, &[]));
    assert_eq!(report["added"], 4, "{report}");
    // `info --json` says where the collection stands; lookalike's own keyword indexes (the
    // product id, the photo hash) are no facets.
    let out = Command::new(BIN).args(["info", "--db", db.to_str().expect("utf-8"), "--store", &qdrant_url(), "--collection", &collection, "--json"]).output().expect("info");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("info JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    let qdrant = &info["qdrant"];
    assert_eq!((&qdrant["reachable"], &qdrant["points"], &qdrant["catalog_vectors"]), (&serde_json::json!(true), &serde_json::json!(4), &serde_json::json!(4)), "{info}");
    assert_eq!(
        (&qdrant["search_space"], &qdrant["described"], &qdrant["points_collection"]),
        (&serde_json::json!("catalog"), &serde_json::json!(true), &serde_json::json!(collection)),
        "{info}"
    );
    let facets: Vec<&str> = qdrant["layout"]["keyword_columns"].as_array().expect("keyword columns").iter().filter_map(|c| c.as_str()).collect();
    assert!(facets.contains(&"articleType") && !facets.iter().any(|c| c.starts_with("_lookalike_")), "{info}");
    assert_eq!((&qdrant["without_photo_hash"], &qdrant["without_photo"]), (&serde_json::json!(0), &serde_json::json!(0)), "{info}");
    // The shirt's three points are marked with the number of points that share their photo
    // (a search asks for the other listings of a marked hit only when it found fewer), the
    // shoe's is not marked.
    let config = store(&collection, true);
    let grpc = qdrant_client::Qdrant::from_url(&config.url).api_key(std::env::var("QDRANT_API_KEY").ok()).skip_compatibility_check().build().expect("client");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let marked = qdrant_client::qdrant::CountPointsBuilder::new(collection.clone())
        .filter(qdrant_client::qdrant::Filter::must([qdrant_client::qdrant::Condition::matches("_lookalike_photo_listings", 3i64)]))
        .exact(true);
    let count_marked = || runtime.block_on(grpc.count(marked.clone())).expect("count").result.map_or(0, |r| r.count);
    assert_eq!(count_marked(), 3);
    let any_mark = qdrant_client::qdrant::CountPointsBuilder::new(collection.clone())
        .filter(qdrant_client::qdrant::Filter::must([qdrant_client::qdrant::Condition::is_empty("_lookalike_photo_listings")]))
        .exact(true);
    assert_eq!(runtime.block_on(grpc.count(any_mark)).expect("count").result.map_or(0, |r| r.count), 1, "the shoe alone unmarked");

    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };
    let request = SearchRequest { k: 3, ..SearchRequest::default() };
    let check = |engine: &SearchEngine, name: &str| {
        // The shirt's three listings are one result, standing for the others; ranks count photos.
        let found = engine.search_image(&shirt, None, &request, Items::Main).expect("search");
        assert_eq!(found.hits.len(), 2, "{name}: {:?}", ids(&found));
        let first = &found.hits[0];
        let listings = sorted([vec![first.product.id.clone()], first.variants.iter().map(|v| v.id.clone()).collect()].concat());
        assert_eq!(listings, ["1001", "1003", "1004"], "{name}");
        assert_eq!((found.hits[1].product.id.as_str(), found.hits[1].rank, found.hits[1].variants.len()), ("1002", 2, 0), "{name}");
        // A page of one, by shape alone (colour and kind re-rank deeper pools): the search
        // found one listing of the three, and asks for the others.
        let one = SearchRequest { k: 1, colour: ColourMode::Any, kind: KindMode::Any, ..request.clone() };
        let found = engine.search_image(&shirt, None, &one, Items::Main).expect("search");
        assert_eq!(found.hits[0].variants.len(), 2, "{name}: {:?}", found.hits[0].variants);
        // A filter admits listings, not photos: size M alone, without its siblings.
        let medium = SearchRequest { filter: Filter::parse(&["size=M"]).expect("filter"), ..request.clone() };
        let found = engine.search_image(&shirt, None, &medium, Items::Main).expect("search");
        assert_eq!((ids(&found), found.hits[0].variants.len()), (vec!["1003".to_string()], 0), "{name}");
        // Two of the three sizes: the one found first stands for the other, which the search
        // found itself or asked for (the mark counts three).
        let two = SearchRequest { filter: Filter::parse(&["size=S", "size=L"]).expect("filter"), ..request.clone() };
        let found = engine.search_image(&shirt, None, &two, Items::Main).expect("search");
        let listings = sorted([vec![found.hits[0].product.id.clone()], found.hits[0].variants.iter().map(|v| v.id.clone()).collect()].concat());
        assert_eq!((found.hits.len(), listings), (1, vec!["1001".to_string(), "1004".to_string()]), "{name}");
        // "More like" a listing leaves out its photo's other listings too.
        assert_eq!(ids(&engine.search_like("1003", &request).expect("like")), ["1002"], "{name}");
        // A product's other sizes, as its details list them.
        let product = engine.product("1003").expect("product").expect("1003").product;
        assert_eq!(sorted(engine.variants_of(&product).expect("variants").into_iter().map(|v| v.id).collect()), ["1001", "1004"], "{name}");
    };
    let with_catalog = SearchEngine::open_with(
        SqliteCatalog::open(&db).expect("catalog"),
        Box::new(encoder()),
        &IndexConfig { store: Some(config.clone()), precision: Precision::F32, ..IndexConfig::default() },
    )
    .expect("qdrant");
    check(&with_catalog, "with the catalog");
    drop(with_catalog);
    let without_catalog = SearchEngine::open_collection(&config, Box::new(encoder())).expect("collection alone");
    check(&without_catalog, "without the catalog");

    // Points an older lookalike marked as sharing their photo, without the count: their
    // searches ask for the other listings, as they did then.
    let uncount = qdrant_client::qdrant::DeletePayloadPointsBuilder::new(collection.clone(), vec!["_lookalike_photo_listings".to_string()])
        .points_selector(qdrant_client::qdrant::Filter::default())
        .wait(true);
    runtime.block_on(grpc.delete_payload(uncount)).expect("payload deleted");
    let flag = qdrant_client::qdrant::SetPayloadPointsBuilder::new(collection.clone(), std::collections::HashMap::from([("_lookalike_photo_shared".to_string(), true.into())]))
        .points_selector(qdrant_client::qdrant::Filter::must([qdrant_client::qdrant::Condition::matches("size", vec!["S".to_string(), "M".to_string(), "L".to_string()])]))
        .wait(true);
    runtime.block_on(grpc.set_payload(flag)).expect("payload set");
    check(&without_catalog, "marked without a count");

    // Points written before lookalike kept the photo's hash (it is taken off here, as an older
    // lookalike wrote them) are each a result, until the next sync sends them again.
    let strip = qdrant_client::qdrant::DeletePayloadPointsBuilder::new(collection.clone(), vec!["_lookalike_photo".to_string()])
        .points_selector(qdrant_client::qdrant::Filter::default())
        .wait(true);
    runtime.block_on(grpc.delete_payload(strip)).expect("payload deleted");
    let found = without_catalog.search_image(&shirt, None, &SearchRequest { k: 4, ..request.clone() }, Items::Main).expect("search");
    assert_eq!(sorted(ids(&found)[..3].to_vec()), ["1001", "1003", "1004"], "unfolded: {:?}", ids(&found));
    let said = info_cli(&db, &collection);
    assert!(said.contains("qdrant points without their photo's hash: 4 (written by an older lookalike"), "{said}");
    let report = sync_report(&sync_cli(&db, &collection, &[]));
    assert_eq!((&report["added"], &report["resent"], &report["deleted"]), (&serde_json::json!(0), &serde_json::json!(4), &serde_json::json!(0)), "{report}");
    check(&without_catalog, "without the catalog, after a sync");
    assert!(!info_cli(&db, &collection).contains("without their photo's hash"));
    let report = sync_report(&sync_cli(&db, &collection, &[]));
    assert_eq!((&report["added"], &report["resent"]), (&serde_json::json!(0), &serde_json::json!(0)), "then nothing to send: {report}");

    // The S shirt gets a new photo in the catalog: after the next sync it is a result of its own.
    std::fs::write(shop.join("images/1001.png"), &bag).expect("photo");
    index(&db);
    sync_report(&sync_cli(&db, &collection, &[]));
    let found = without_catalog.search_image(&shirt, None, &request, Items::Main).expect("search");
    let listings = sorted([vec![found.hits[0].product.id.clone()], found.hits[0].variants.iter().map(|v| v.id.clone()).collect()].concat());
    assert_eq!(listings, ["1003", "1004"], "{:?}", ids(&found));
    assert_eq!(ids(&without_catalog.search_image(&bag, None, &request, Items::Main).expect("search"))[0], "1001");
    drop(without_catalog);

    // A size added through a server without the catalog, with the shirt's photo: folded too,
    // and listed among the others' sizes.
    let token = "sizes-test";
    let replica = Server::start_with(&["--no-catalog", "--store", &qdrant_url(), "--collection", &collection, "--qdrant-exact", "--admin-token", token], &[]);
    let form = photo_form(shirt.clone(), &[("id", "1005"), ("articleType", "Shirts"), ("size", "XL")]);
    let r = client().post(replica.url("/api/products")).bearer_auth(token).multipart(form).send().expect("POST");
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().unwrap_or_default());
    assert_eq!(count_marked(), 3, "the shirt's listings now: M, L and XL");
    let found = ok_json(search_photo(&replica, shirt.clone(), &[("k", "3")]));
    assert_eq!(sorted(common::ids(&found)[1..].to_vec()), ["1001", "1002"], "the bag and the shoe after the shirt: {found}");
    let mut listings: Vec<String> =
        std::iter::once(&found["hits"][0]).chain(found["hits"][0]["variants"].as_array().expect("variants")).filter_map(|h| h["id"].as_str().map(str::to_string)).collect();
    listings.sort();
    assert_eq!(listings, ["1003", "1004", "1005"], "{found}");
    let details = ok_json(client().get(replica.url("/api/products/1004")).send().expect("GET product"));
    let mut sizes: Vec<&str> = details["variants"].as_array().expect("variants").iter().filter_map(|v| v["id"].as_str()).collect();
    sizes.sort();
    assert_eq!(sizes, ["1003", "1005"], "{details}");
}
