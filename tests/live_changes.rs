//! Catalog changes while the engine answers searches, through the library: filtered searches
//! and writes side by side never deadlock, and the search graph is rebuilt without the entries
//! of removed products while both go on, losing no change made during the rebuild.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use lookalike::catalog::SqliteCatalog;
use lookalike::index::{AnnMode, AnnStamp, IndexConfig};
use lookalike::search::{Items, SearchEngine, SearchRequest};
use lookalike::types::{Filter, MetadataPatch, NewImage, NewProduct};

fn open(db: &std::path::Path) -> SearchEngine {
    let config = IndexConfig { ann: AnnMode::Always, ..IndexConfig::default() };
    SearchEngine::open_with(SqliteCatalog::open_existing(db).expect("catalog"), Box::new(encoder()), &config).expect("engine")
}

/// A catalog product as it was imported: id, metadata and model vector.
fn as_new(engine: &SearchEngine, id: &str) -> NewProduct {
    engine
        .with_catalog(|c| {
            let product = c.get_by_id(id)?.expect("product");
            let vector = c.vector(product.key)?.expect("vector");
            Ok(NewProduct {
                id: product.id,
                image: NewImage::Stored { bytes: b"not searched".to_vec(), mime: "application/octet-stream".into() },
                content_hash: format!("re-added {id}"),
                metadata: product.metadata,
                vector,
                max_pooled: None,
                colour: c.colour(product.key)?,
            })
        })
        .expect("read product")
}

fn search_top(engine: &SearchEngine, vector: &[f32], k: usize) -> Vec<String> {
    let results = engine.search_vector(vector, &SearchRequest { k, ..SearchRequest::default() }).expect("search");
    results.hits.into_iter().map(|h| h.product.id).collect()
}

/// 300 products in a graph; 120 removed (40% dead entries, past the rebuild threshold of 25%),
/// then the graph is compacted while two threads search (half of them filtered) and a third
/// removes and re-adds products. Afterwards every product in the catalog finds itself first,
/// no removed product is ever returned, the saved graph carries no dead entries, and a restart
/// loads it and answers the same.
#[test]
fn the_graph_is_compacted_while_searches_and_writes_go_on() {
    let (done_tx, done_rx) = mpsc::channel();
    // Run in a thread, so a deadlock fails the test instead of hanging the suite. The graphs are
    // built with one thread: a parallel build links the graph differently each run, and an HNSW
    // graph can leave an entry unreachable (CI saw one product of 180 miss itself once); the
    // same single-threaded build gives the same graph every time. The searchers still run on
    // their own threads, beside the rebuild.
    let scenario = std::thread::spawn(move || {
        let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("thread pool");
        one_thread.install(|| compaction_scenario(done_tx));
    });
    match done_rx.recv_timeout(Duration::from_secs(120)) {
        Ok(()) => scenario.join().expect("scenario"),
        Err(mpsc::RecvTimeoutError::Disconnected) => scenario.join().expect("the scenario failed"),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("no answer in 120 s: searches and catalog changes deadlocked"),
    }
}

fn compaction_scenario(done_tx: mpsc::Sender<()>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let engine = Arc::new(open(&db));
    let products = engine.with_catalog(|c| c.all_products()).expect("products");
    assert_eq!(products.len(), 300);
    let ids: Vec<String> = products.iter().map(|p| p.id.clone()).collect();
    let saved: Vec<NewProduct> = ids.iter().map(|id| as_new(&engine, id)).collect();

    for id in &ids[..120] {
        assert!(engine.remove_product(id).expect("remove"), "{id} existed");
    }
    let removed: HashSet<String> = ids[..120].iter().cloned().collect();

    let stop = Arc::new(AtomicBool::new(false));
    let searches = Arc::new(AtomicUsize::new(0));
    let searchers: Vec<_> = (0..2)
        .map(|t| {
            let (engine, stop, searches, removed) = (engine.clone(), stop.clone(), searches.clone(), removed.clone());
            let queries: Vec<Vec<f32>> = saved[200..].iter().map(|p| p.vector.clone()).collect();
            std::thread::spawn(move || {
                let filter = Filter::parse(&["articleType=Trouser", "articleType=Bag", "articleType=Sneaker"]).expect("filter");
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let request = SearchRequest { k: 10, offset: 0, filter: if i % 2 == 0 { filter.clone() } else { Filter::default() }, ..SearchRequest::default() };
                    let results = engine.search_vector(&queries[i % queries.len()], &request).expect("search during changes");
                    for hit in &results.hits {
                        assert!(!removed.contains(&hit.product.id), "removed product {} was returned", hit.product.id);
                    }
                    searches.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();

    // Inside the rebuild (the new graph built, not yet swapped in): products 120..160 go and
    // come back once, and the searchers answer at least 50 searches. Both happen in that
    // window for certain, however the threads are scheduled.
    let churn: Vec<NewProduct> = saved[120..160].to_vec();
    let searches_during = AtomicUsize::new(0);
    let dropped = engine
        .compact_graph_with(|| {
            let before = searches.load(Ordering::Relaxed);
            for product in &churn {
                engine.remove_product(&product.id).expect("remove during rebuild");
                engine.add_product(product.clone()).expect("re-add during rebuild");
            }
            while searches.load(Ordering::Relaxed) < before + 50 {
                std::thread::yield_now();
            }
            searches_during.store(searches.load(Ordering::Relaxed) - before, Ordering::Relaxed);
        })
        .expect("compaction")
        .expect("a graph with 40% dead entries is due");
    assert!(dropped >= 120, "dropped {dropped} dead entries, expected at least the 120 removals");
    // The 40 products replaced during the rebuild are its only dead entries: 40 of 180 live
    // ones, under the quarter that makes a rebuild due.
    assert_eq!(engine.index_stats().dead_entries, 40);
    assert_eq!(engine.compact_graph().expect("second compaction"), None, "a fresh graph is not due again");
    stop.store(true, Ordering::Relaxed);
    for searcher in searchers {
        searcher.join().expect("searcher");
    }
    assert!(searches_during.load(Ordering::Relaxed) >= 50, "searches went on during the rebuild");

    // Nothing lost: the 180 products in the catalog are all found, each first for its own
    // vector, and the index holds exactly them.
    assert_eq!(engine.len(), 180);
    for product in &saved[120..] {
        assert_eq!(search_top(&engine, &product.vector, 1), vec![product.id.clone()], "{} finds itself", product.id);
    }

    // The saved graph has no dead entries of the removals, and a restart uses it.
    let (_, stamp_path) = lookalike::catalog::graph_paths(&db);
    let stamp: AnnStamp = serde_json::from_slice(&std::fs::read(&stamp_path).expect("stamp")).expect("stamp JSON");
    assert_eq!(stamp.tombstones, 0, "the saved graph is the compacted one: {stamp:?}");
    let before: Vec<Vec<String>> = saved[200..220].iter().map(|p| search_top(&engine, &p.vector, 10)).collect();
    drop(engine);
    let reopened = open(&db);
    assert_eq!(reopened.len(), 180);
    let after: Vec<Vec<String>> = saved[200..220].iter().map(|p| search_top(&reopened, &p.vector, 10)).collect();
    assert_eq!(before, after, "the reopened catalog answers as before");
    done_tx.send(()).expect("report");
}

/// The server starts the rebuild itself: deleting 100 of 300 products over the API passes the
/// threshold, and a compacted graph is saved (its stamp moves on, with no dead entries) while
/// the server keeps answering.
#[test]
fn the_server_compacts_the_graph_after_deletions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let token = "compaction-test-token";
    let server = Server::start(&db, &["--ann", "always", "--admin-token", token], &[]);
    let (_, stamp_path) = lookalike::catalog::graph_paths(&db);
    let read_stamp = || -> AnnStamp { serde_json::from_slice(&std::fs::read(&stamp_path).expect("stamp")).expect("stamp JSON") };
    let at_start = read_stamp();
    assert_eq!(at_start.len, 300);

    let http = client();
    let products = SqliteCatalog::open_existing(&db).expect("catalog").all_products().expect("products");
    for product in &products[..100] {
        let r = http.delete(server.url(&format!("/api/products/{}", product.id))).bearer_auth(token).send().expect("delete");
        assert_eq!(r.status(), 204);
    }
    let started = Instant::now();
    let compacted = loop {
        let stamp = read_stamp();
        if stamp.generation > at_start.generation {
            break stamp;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "no compacted graph saved within 300 s of the deletions (a watchdog, not a speed measure)");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(compacted.tombstones, 0, "{compacted:?}");
    // It ran once the dead entries passed a quarter of the live ones (the 61st deletion), and
    // holds the products alive at that point only.
    assert!((200..=240).contains(&compacted.len), "the saved graph holds the live products only: {compacted:?}");
    assert_eq!(ok_json(http.get(server.url("/readyz")).send().expect("readyz"))["products"], 200);

    // /metrics shows the swap: only the deletions the rebuild's copy missed are dead entries.
    let gauge = |name: &str| -> f64 {
        let text = http.get(server.url("/metrics")).send().expect("metrics").text().expect("text");
        let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name} in {text}"));
        line[name.len()..].trim().parse().expect("number")
    };
    let expected_dead = (compacted.len - 200) as f64;
    while gauge("lookalike_index_dead_entries") != expected_dead {
        assert!(started.elapsed() < Duration::from_secs(300), "dead entries stay at {} (expected {expected_dead})", gauge("lookalike_index_dead_entries"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gauge("lookalike_index_memory_bytes") > (200 * 1280 * 4) as f64, "the index holds 200 rows of 1280 f32 and a graph");
    let (png, _) = test_photo(0);
    let found = ok_json(search_photo(&server, png, &[("k", "10")]));
    let removed: HashSet<&str> = products[..100].iter().map(|p| p.id.as_str()).collect();
    assert!(ids(&found).iter().all(|id| !removed.contains(id.as_str())), "no removed product is returned");
}

/// What an engine answers for a few test photos: ids and scores, best first.
fn answers(engine: &SearchEngine) -> Vec<Vec<(String, f32)>> {
    (0..6)
        .map(|i| {
            let results = engine.search_image(&test_photo(i).0, None, &SearchRequest { k: 10, ..SearchRequest::default() }, Items::Main).expect("search");
            results.hits.into_iter().map(|h| (h.product.id, h.score)).collect()
        })
        .collect()
}

/// `tune` run beside an engine that answers searches, as beside a running server: a photo
/// adapter learned, a projection learned, then each dropped. Until the engine follows the
/// catalog it answers as before; after one follow it answers exactly as an engine opened
/// afresh on the catalog does, and once everything is dropped, as it did at the start. A photo
/// encoded before a change and searched after it is searched in the new space.
#[test]
fn a_running_engine_takes_up_the_search_space_tune_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let engine = SearchEngine::open(SqliteCatalog::open_existing(&db).expect("catalog"), Box::new(encoder())).expect("engine");
    let fresh = || SearchEngine::open(SqliteCatalog::open_existing(&db).expect("catalog"), Box::new(encoder())).expect("engine");
    let start = answers(&engine);
    let mut previous = start.clone();
    let steps: [&[&str]; 4] =
        [&["--adapt", "--augment", "200"], &["--label", "articleType", "--dim", "64", "--hidden", "128", "--epochs", "8", "--augment", "64"], &["--off"], &["--adapt", "--off"]];
    for step in steps {
        let photo = engine.prepare_query(&test_photo(7).0, None, Items::Main).expect("prepare");
        let encoded = engine.encode_photos(vec![photo]).expect("encode").pop().expect("one photo");

        let mut args = vec!["tune", "--db", path(&db)];
        args.extend_from_slice(step);
        let out = lookalike(&args);
        assert!(out.status.success(), "tune {step:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(answers(&engine), previous, "tune {step:?}: nothing changes before the engine follows the catalog");

        engine.follow_catalog().expect("follow");
        let now = fresh();
        let expected = answers(&now);
        assert_ne!(expected, previous, "tune {step:?} changes what is found");
        assert_same_answers(&answers(&engine), &expected, step);
        let request = SearchRequest { k: 10, ..SearchRequest::default() };
        let searched = engine.search_photo(&encoded, &request, Default::default(), Instant::now()).expect("search the photo encoded before");
        let expected_photo = now.search_image(&test_photo(7).0, None, &request, Items::Main).expect("search");
        let ids = |r: &lookalike::search::SearchResults| r.hits.iter().map(|h| h.product.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&searched), ids(&expected_photo), "tune {step:?}: a photo encoded before the change is searched in the new space");
        previous = expected;
    }
    assert_same_answers(&previous, &start, &["everything dropped"]);
}

fn assert_same_answers(got: &[Vec<(String, f32)>], expected: &[Vec<(String, f32)>], step: &[&str]) {
    assert_eq!(got.len(), expected.len());
    for (got, expected) in got.iter().zip(expected) {
        let ids = |hits: &[(String, f32)]| hits.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(got), ids(expected), "after {step:?}: the same products in the same order");
        for ((_, a), (_, b)) in got.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5, "after {step:?}: scores {a} and {b} differ");
        }
    }
}

/// While a running engine builds its index in the search space `tune` made, it goes on
/// following other processes' changes in the old one (a server's follower is not held up for
/// the length of the build), and the new index has them too once it is in place: it answers as
/// an engine opened afresh on the catalog does.
#[test]
fn changes_are_followed_while_the_index_is_built_in_a_new_space() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let engine = SearchEngine::open(SqliteCatalog::open_existing(&db).expect("catalog"), Box::new(encoder())).expect("engine");
    let ids: Vec<String> = engine.with_catalog(|c| c.all_products()).expect("products").into_iter().map(|p| p.id).collect();
    let (removed, copied) = (ids[0].clone(), ids[1].clone());
    let removed_vector = engine.with_catalog(|c| c.vector(c.get_by_id(&removed)?.expect("product").key)).expect("read").expect("vector");
    let mut copy = as_new(&engine, &copied);
    copy.id = format!("{copied}-copy");
    let copy_vector = copy.vector.clone();

    let out = lookalike(&["tune", "--db", path(&db), "--label", "articleType", "--dim", "64", "--hidden", "128", "--epochs", "8", "--augment", "64"]);
    assert!(out.status.success(), "tune failed: {}", String::from_utf8_lossy(&out.stderr));
    let changes_seen = |engine: &SearchEngine, when: &str| {
        assert!(!search_top(engine, &removed_vector, 10).contains(&removed), "{when}: the removed product is not found");
        let found = search_top(engine, &copy_vector, 10);
        assert!(found.contains(&copy.id) && found.contains(&copied), "{when}: the added copy is found beside its original: {found:?}");
    };
    let mut followed_during_build = 0;
    engine
        .take_up_new_space_with(|| {
            // Another process (a second connection to the file) removes one product and adds one.
            let mut other = SqliteCatalog::open_existing(&db).expect("second connection");
            other.remove(&removed).expect("remove");
            other.upsert(std::slice::from_ref(&copy)).expect("add");
            followed_during_build = engine.follow_catalog().expect("follow while the new index is built");
            changes_seen(&engine, "during the build, in the old space");
        })
        .expect("take up the new space");
    assert_eq!(followed_during_build, 2, "both changes were followed during the build");
    changes_seen(&engine, "in the new space");
    let fresh = SearchEngine::open(SqliteCatalog::open_existing(&db).expect("catalog"), Box::new(encoder())).expect("engine");
    assert_same_answers(&answers(&engine), &answers(&fresh), &["changes during the build"]);
}

/// A server takes up the space `tune` makes on its own, with the build on a thread beside its
/// follower: once it says it searches in the new space, it answers as a server started afresh
/// on the tuned catalog does.
#[test]
fn a_server_takes_up_the_space_tune_makes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let (mut child, base) = serve_with_log(&db, &[], "info");
    let http = client();
    let answers = |base: &str| -> Vec<Vec<String>> {
        let search = |i: usize| ids(&ok_json(http.post(format!("{base}/api/search")).multipart(photo_form(test_photo(i).0, &[("k", "10")])).send().expect("search request")));
        (0..6).map(search).collect()
    };
    let before = answers(&base);

    let out = lookalike(&["tune", "--db", path(&db), "--label", "articleType", "--dim", "64", "--hidden", "128", "--epochs", "8", "--augment", "64"]);
    assert!(out.status.success(), "tune failed: {}", String::from_utf8_lossy(&out.stderr));
    let (_log, said) = wait_until_said(&mut child, "searches now run in the catalog's new search space");
    assert!(said.contains("building the index in it; searches go on in the old one meanwhile"), "{said}");

    let fresh = Server::start(&db, &[], &[]);
    let expected = answers(&fresh.url(""));
    assert_ne!(before, expected, "tune changes what is found");
    assert_eq!(answers(&base), expected, "the running server answers as one started on the tuned catalog");
    let _ = child.kill();
    let _ = child.wait();
}

/// A product's metadata changed through one engine (`PATCH /api/products/{id}`): its searches
/// show the change at once, with the product's vector kept, and another engine following the
/// same catalog (a second server) takes it up on its next round.
#[test]
fn a_metadata_change_reaches_searches_and_followers_without_encoding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let writer = SearchEngine::open(SqliteCatalog::open_existing(&db).expect("catalog"), Box::new(encoder())).expect("engine");
    let follower = SearchEngine::open(SqliteCatalog::open_existing(&db).expect("catalog"), Box::new(encoder())).expect("engine");
    let id = "fmnist-train-00001";
    let (key, vector) = writer
        .with_catalog(|c| {
            let product = c.get_by_id(id)?.expect("product");
            Ok((product.key, c.vector(product.key)?.expect("vector")))
        })
        .expect("read product");
    let found = |engine: &SearchEngine, filter: &[&str]| -> Vec<String> {
        let request = SearchRequest { k: 5, filter: Filter::parse(filter).expect("filter"), ..SearchRequest::default() };
        engine.search_vector(&vector, &request).expect("search").hits.into_iter().map(|h| h.product.id).collect()
    };
    let new_kind = ["articleType=Party dress", "baseColour=Red"];
    assert!(found(&writer, &new_kind).is_empty(), "no product is a red party dress yet");

    let patch = MetadataPatch {
        set: [("articleType", "Party dress"), ("baseColour", "Red"), ("price", "19.99")].map(|(k, v)| (k.to_string(), v.to_string())).into(),
        remove: BTreeSet::new(),
    };
    let patched = writer.patch_product(id, &patch).expect("patch").expect("a known product").product;
    assert_eq!((patched.category(), patched.colour(), patched.price()), (Some("Party dress"), Some("Red"), Some("19.99")));
    assert!(writer.patch_product("no-such-product", &patch).expect("patch").is_none());
    assert_eq!(found(&writer, &new_kind), [id], "the writer's searches filter on the new values at once");
    // Filters read the catalog file, which both share; the follower's own tables (kinds and
    // colours, which rank) take the change up from the change log.
    assert_eq!(found(&follower, &new_kind), [id]);
    assert_eq!(follower.follow_catalog().expect("follow"), 1, "one product changed");
    assert_eq!(follower.product(id).expect("read").map(|p| p.product.metadata), Some(patched.metadata.clone()));
    assert_eq!(writer.follow_catalog().expect("follow"), 0, "the writer's own change is not taken up again");
    assert_eq!(writer.with_catalog(|c| c.vector(key)).expect("read"), Some(vector.clone()), "nothing encoded again");
    assert_eq!(writer.patch_product(id, &patch).expect("patch").map(|p| p.product.metadata), Some(patched.metadata), "the same patch again changes nothing");
}
