//! Regression tests for what an attacker's pass over the server found, each against the real
//! binary on 127.0.0.1: slow headers, concurrent writers, changes made by other processes, bad
//! filter columns, non-finite vectors, admin-token whitespace, symlinked folders, and a JSON
//! body on every error. No test here depends on timing: waits are for states, with a generous
//! watchdog that only fires when something is broken.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use lookalike::import::fashion_mnist::FashionMnist;
use serde_json::{json, Value};

/// Polls `check` until it holds; fails after five minutes (a hang detector: the server's
/// follow round comes within seconds even on a loaded 2-core machine).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !check() {
        assert!(Instant::now() < deadline, "still not true after 300 s: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn gauge(server: &Server, name: &str) -> f64 {
    let text = client().get(server.url("/metrics")).send().expect("metrics").text().expect("text");
    let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name} in {text}"));
    line[name.len()..].trim().parse().expect("number")
}

fn readyz(server: &Server) -> Value {
    ok_json(client().get(server.url("/readyz")).send().expect("readyz"))
}

/// Clients that never finish their headers are dropped after --header-timeout-secs, and while
/// more of them than --max-connections are open, other clients wait instead of the server
/// running out of file descriptors: /healthz is answered throughout.
#[test]
fn slow_headers_are_dropped_and_the_server_keeps_accepting() {
    let server = Server::start(shared_catalog(), &["--max-connections", "8", "--header-timeout-secs", "2"], &[]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut stream = TcpStream::connect(&addr).expect("connect");
            stream.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ").as_bytes()).expect("partial headers");
            stream
        })
        .collect();
    assert_eq!(client().get(server.url("/healthz")).send().expect("healthz").status(), 200, "answered despite 20 stalled clients");
    for mut stream in slow {
        stream.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
        let mut rest = Vec::new();
        match stream.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "a stalled client is closed, not kept: {e}"),
        }
        assert!(!String::from_utf8_lossy(&rest).contains("200 OK"), "an unfinished request is never answered");
    }
}

/// A write waits for another process's write instead of failing with "database is locked":
/// `remove` while the test holds the write lock, and two `index` runs at once.
#[test]
fn concurrent_writers_wait_for_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let db_str = path(&db).to_string();

    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch("BEGIN IMMEDIATE; INSERT INTO settings(name, value) VALUES ('held-by-test', '1');").expect("take the write lock");
    let mut remove =
        Command::new(BIN).args(["remove", "--db", &db_str, "fmnist-train-00005"]).env("LOOKALIKE_LOG", "lookalike=debug,warn").stderr(Stdio::piped()).spawn().expect("remove");
    // Let go once the other process says it waits for the lock (with a deferred transaction,
    // a commit at that point made its write fail at once), and not before.
    let (mut stderr, mut said) = wait_until_said(&mut remove, "waiting for another process's write to the catalog");
    conn.execute_batch("COMMIT").expect("commit");
    stderr.read_to_string(&mut said).expect("stderr");
    let status = remove.wait().expect("remove exits");
    assert!(status.success(), "remove waited for the lock and succeeded: {said}");
    let count: i64 = conn.query_row("SELECT COUNT(*) FROM products WHERE id = 'fmnist-train-00005'", [], |r| r.get(0)).expect("count");
    assert_eq!(count, 0);
    drop(conn);

    let fm = fm_dir();
    let index = |limit: &str| {
        Command::new(BIN)
            .args(["index", "--db", &db_str, "--fashion-mnist", "train", "--limit", limit, "--fashion-mnist-dir", path(&fm)])
            .env("LOOKALIKE_LOG", "warn")
            .stderr(Stdio::piped())
            .spawn()
            .expect("index")
    };
    let runs = [index("500"), index("450")];
    for run in runs {
        let out = run.wait_with_output().expect("index exits");
        assert!(out.status.success(), "two index runs at once both finish: {}", String::from_utf8_lossy(&out.stderr));
    }
    let check = lookalike(&["check", "--db", &db_str, "--json"]);
    let report: Value = serde_json::from_slice(&check.stdout).expect("check JSON");
    assert_eq!((report["products"].as_u64(), report["vectors"].as_u64()), (Some(500), Some(500)), "{report}");
}

/// Products removed by `lookalike remove` and added by `lookalike index` while a server runs
/// disappear from and appear in its answers, and every count agrees; an `index` run in
/// progress is reported by /readyz.
#[test]
fn a_running_server_follows_changes_made_by_other_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let token = "follow-test-token";
    let server = Server::start(&db, &["--admin-token", token], &[]);
    let http = client();

    let out = lookalike(&["remove", "--db", path(&db), "fmnist-train-00003"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("the removed product is gone", || http.get(server.url("/api/products/fmnist-train-00003")).send().expect("get").status() == 404);
    eventually("the index forgot it", || gauge(&server, "lookalike_catalog_products") == 299.0);
    assert_eq!(readyz(&server)["products"], 299);
    let like = ok_json(search_json(&server, json!({"product_id": "fmnist-train-00004", "k": 100})));
    assert!(!ids(&like).contains(&"fmnist-train-00003".to_string()), "a removed product is never returned");
    let r = http.delete(server.url("/api/products/fmnist-train-00003")).bearer_auth(token).send().expect("delete");
    expect_error(r, 404, "not_found");

    let out = lookalike(&["index", "--db", path(&db), "--fashion-mnist", "train", "--limit", "310", "--fashion-mnist-dir", path(&fm_dir())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("the added products are searchable", || gauge(&server, "lookalike_catalog_products") == 310.0);
    assert_eq!(readyz(&server)["products"], 310);
    let train = FashionMnist::load(&fm_dir(), "train").expect("train split");
    let mut png = Vec::new();
    train.image(305).expect("image").write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("png");
    let found = ok_json(search_photo(&server, png, &[("k", "1")]));
    assert_eq!(ids(&found), ["fmnist-train-00305"], "a product added by another process is found by its own photo");

    // An index run in progress (here: this test process, alive) is reported; a dead one is not.
    let conn = rusqlite::Connection::open(&db).expect("open");
    let progress = json!({"pid": std::process::id(), "done": 12000, "total": 60000}).to_string();
    conn.execute("INSERT OR REPLACE INTO settings(name, value) VALUES ('indexing', ?1)", [&progress]).expect("progress");
    eventually("readyz reports the run", || readyz(&server)["indexing"]["done"] == 12000);
    assert_eq!(readyz(&server)["indexing"]["total"], 60000);
    let dead = json!({"pid": u32::MAX - 1, "done": 5, "total": 9}).to_string();
    conn.execute("INSERT OR REPLACE INTO settings(name, value) VALUES ('indexing', ?1)", [&dead]).expect("progress");
    eventually("a dead run is not reported", || readyz(&server)["indexing"].is_null());
}

/// Requests an attacker sent that got a 500, a text body or a silent misreading now get a 4xx
/// with a JSON body naming the problem.
#[test]
fn malformed_requests_get_a_4xx_with_a_json_body() {
    let server = Server::start(shared_catalog(), &["--admin-token", "  spaced-token  "], &[]);
    let http = client();
    let (png, _) = test_photo(0);

    // Filter column names: any text is a name (no match, no error); control characters are not.
    let r = ok_json(search_photo(&server, png.clone(), &[("filter", "a\\=1")]));
    assert_eq!(r["hits"].as_array().map(Vec::len), Some(0));
    let r = ok_json(search_json(&server, json!({"product_id": "fmnist-train-00000", "filters": {"a\\": "1"}})));
    assert_eq!(r["hits"].as_array().map(Vec::len), Some(0));
    expect_error(search_json(&server, json!({"product_id": "fmnist-train-00000", "filters": {"a\u{0}b": "1"}})), 422, "bad_parameters");
    expect_error(search_photo(&server, png.clone(), &[("filter", "a\u{1}=1")]), 422, "bad_parameters");
    // An empty list of values is not "no filter".
    expect_error(search_json(&server, json!({"product_id": "fmnist-train-00000", "filters": {"articleType": []}})), 422, "bad_parameters");

    // Non-finite vectors.
    let mut vector = vec![json!(0.0); 1280];
    vector[0] = json!(1e39);
    let message = expect_error(search_json(&server, json!({"vector": vector})), 422, "bad_parameters");
    assert!(message.contains("vector[0]"), "{message}");

    // Repeated fields.
    let twice = Form::new().part("image", Part::bytes(png.clone()).file_name("a.png")).text("k", "3").text("k", "5");
    expect_error(http.post(server.url("/api/search")).multipart(twice).send().expect("post"), 422, "bad_parameters");
    let two_ids = Form::new().text("id", "a").text("id", "b").part("image", Part::bytes(png.clone()).file_name("a.png"));
    expect_error(http.post(server.url("/api/products")).bearer_auth("spaced-token").multipart(two_ids).send().expect("post"), 422, "bad_parameters");

    // Bodies of the wrong kind: JSON to the product upload (415), a broken multipart body (400).
    let r = http.post(server.url("/api/products")).bearer_auth("spaced-token").json(&json!({"id": "x"})).send().expect("post");
    expect_error(r, 415, "unsupported_type");
    let r = http.post(server.url("/api/search")).header("content-type", "multipart/form-data").body("no boundary").send().expect("post");
    expect_error(r, 400, "bad_request");

    // Errors axum writes itself: wrong method, unknown route, a path that is not UTF-8.
    let r = http.get(server.url("/api/search")).send().expect("get");
    assert_eq!(r.header("allow"), Some("POST"));
    expect_error(r, 405, "method_not_allowed");
    expect_error(http.get(server.url("/api/nothing-here")).send().expect("get"), 404, "not_found");
    expect_error(http.get(server.url("/api/products/%FF%FE")).send().expect("get"), 400, "bad_request");

    // The token: configured with spaces around it, usable without them; the scheme in any case.
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = http.delete(server.url("/api/products/no-such-product")).header("authorization", format!("{scheme} spaced-token")).send().expect("delete");
        expect_error(r, 404, "not_found");
    }
    let r = http.delete(server.url("/api/products/no-such-product")).header("authorization", "Basic spaced-token").send().expect("delete");
    expect_error(r, 401, "unauthorized");
}

/// An empty admin token is no token: changes are off and the start-up warning says so.
#[test]
fn an_empty_admin_token_switches_changes_off_with_the_warning() {
    let (mut child, base) = serve_with_log(shared_catalog(), &["--admin-token", " "], "warn");
    let r = client().delete(format!("{base}/api/products/fmnist-train-00000")).header("authorization", "Bearer ").send().expect("delete");
    expect_error(r, 403, "forbidden");
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    assert!(String::from_utf8_lossy(&out.stderr).contains("catalog changes over the API are off"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A folder on an image's path replaced by a symbolic link after the import (here `sub/`,
/// pointing at another folder with files of the same names) is not followed.
#[test]
fn a_symlinked_folder_on_an_image_path_is_not_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("photos").join("sub");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&sub).expect("photos/sub");
    std::fs::create_dir_all(&elsewhere).expect("elsewhere");
    for i in 0..2 {
        let (png, _) = test_photo(i);
        std::fs::write(sub.join(format!("p{i}.png")), &png).expect("photo");
        std::fs::write(elsewhere.join(format!("p{i}.png")), &png).expect("other file");
    }
    let db = dir.path().join("c.db");
    let out = lookalike(&["index", "--db", path(&db), "--images", path(&dir.path().join("photos"))]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = Server::start(&db, &[], &[]);
    let http = client();
    let image = |id: &str| http.get(server.url(&format!("/api/products/{}/image", id.replace('/', "%2F")))).send().expect("image").status();
    assert_eq!(image("sub/p0.png"), 200);
    std::fs::rename(&sub, dir.path().join("moved")).expect("move the folder away");
    std::os::unix::fs::symlink(&elsewhere, &sub).expect("plant a link");
    assert_eq!(image("sub/p0.png"), 404, "a link on the path is not followed");
    assert_eq!(image("sub/p1.png"), 404);
    let _ = Path::new(&sub);
}

/// A server started on a small catalog that `lookalike index` then fills (as `make demo` does)
/// centres its search space on the grown catalog's mean, as a restart would: it answers exactly
/// as a server started afterwards.
#[test]
fn a_server_recentres_its_search_space_as_the_catalog_grows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("growing.db");
    let fm = fm_dir();
    let index = |limit: &str| {
        let out = lookalike(&["index", "--db", path(&db), "--fashion-mnist", "train", "--limit", limit, "--fashion-mnist-dir", path(&fm)]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    index("20");
    let growing = Server::start(&db, &[], &[]);
    index("300");
    eventually("the server holds all 300 products", || gauge(&growing, "lookalike_catalog_products") == 300.0);
    let kept_count = || -> u64 {
        let conn = rusqlite::Connection::open(&db).expect("open");
        let text: String = conn.query_row("SELECT value FROM settings WHERE name = 'centring_mean'", [], |r| r.get(0)).expect("kept mean");
        serde_json::from_str::<Value>(&text).expect("JSON")["count"].as_u64().expect("count")
    };
    // Chosen with at least 150 products, the space is due again only below 75 or from 300 on:
    // the last re-centring of the import has happened (or is being swapped in).
    eventually("the space is centred on the grown catalog", || kept_count() >= 150);
    let restarted = Server::start(&db, &[], &[]);
    let photos: Vec<Vec<u8>> = (0..8).map(|i| test_photo(i).0).collect();
    let answers = |server: &Server| -> Vec<Vec<String>> { photos.iter().map(|png| ids(&ok_json(search_photo(server, png.clone(), &[("k", "10")])))).collect() };
    let expected = answers(&restarted);
    eventually("the followed server answers as a restarted one", || answers(&growing) == expected);
}
