//! Reliability and security of the real binary: hostile files and requests, crashes in the
//! middle of writes, damaged and full disks, shutdown, timeouts and CORS. Loopback only; every
//! wait is bounded.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn hostile_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hostile"))
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<u64>().ok()).map_or(0, |kb| kb * 1024)
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Every file of tests/hostile/files: valid images answer 200 with results, the rest a 4xx JSON
/// error; the server answers /healthz after each and its memory stays bounded.
#[test]
fn hostile_files_get_the_right_answer_and_the_server_keeps_serving() {
    let manifest: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(hostile_dir().join("manifest.json")).expect("manifest")).expect("manifest JSON");
    assert!(manifest.len() >= 30, "the corpus has {} files", manifest.len());
    let server = Server::start(shared_catalog(), &[], &[]);
    let http = client();
    let mut orientation_vectors: Vec<(String, Vec<f64>)> = Vec::new();
    let (mut answered_ok, mut rejected) = (0, 0);
    for entry in &manifest {
        let name = entry["file"].as_str().expect("file name");
        let bytes = std::fs::read(hostile_dir().join("files").join(name)).expect("corpus file");
        let form = Form::new().part("image", Part::bytes(bytes).file_name(name.to_string())).text("include_vector", "true");
        // Bounded by the client's timeout: a file that hung the server would fail here.
        let response = http.post(server.url("/api/search")).multipart(form).send().unwrap_or_else(|e| panic!("{name}: no answer: {e}"));
        let status = response.status().as_u16();
        let text = response.text().expect("body");
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {status} body is not JSON ({e}): {text}"));
        match entry["expect"].as_str() {
            Some("ok") => {
                assert_eq!(status, 200, "{name} ({}) should be answered: {text}", entry["why"]);
                assert!(!body["hits"].as_array().expect("hits").is_empty(), "{name}: no hits");
                answered_ok += 1;
                if name.starts_with("exif-orientation-") {
                    let v = body["query_vector"].as_array().expect("query_vector").iter().map(|x| x.as_f64().expect("number")).collect();
                    orientation_vectors.push((name.to_string(), v));
                }
            }
            _ => {
                assert!((400..500).contains(&status), "{name} ({}) should get a 4xx, got {status}: {text}", entry["why"]);
                assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}: error without a message: {text}");
                rejected += 1;
            }
        }
        let health = http.get(server.url("/healthz")).send().unwrap_or_else(|e| panic!("server down after {name}: {e}"));
        assert_eq!(health.status().as_u16(), 200, "server unhealthy after {name}");
    }
    // The eight EXIF orientations store one upright photo rotated eight ways: once oriented,
    // they are the same picture, so their embeddings agree.
    assert_eq!(orientation_vectors.len(), 8);
    for (name, v) in &orientation_vectors[1..] {
        let similarity = cosine(&orientation_vectors[0].1, v);
        assert!(similarity > 0.95, "{name} differs from orientation 1 after EXIF rotation: cosine {similarity}");
    }
    let peak = peak_rss(server.child.id());
    eprintln!("hostile corpus: {} files, {answered_ok} answered, {rejected} rejected, 0 crashes; server peak RSS {} MB", manifest.len(), peak / 1_000_000);
    assert!(peak < 2_000_000_000, "server peak RSS {peak} bytes");
}

/// Requests that are hostile in shape rather than content: oversized text fields, a photo over
/// the upload limit, hundreds of fields, a body that never arrives (timeout).
#[test]
fn hostile_requests_are_refused_with_4xx_and_slow_clients_time_out() {
    let server = Server::start(shared_catalog(), &["--max-upload-mb", "2", "--request-timeout-secs", "2"], &[]);
    let http = client();
    let (png, _) = test_photo(0);
    let statuses = [
        ("5 MB k field", Form::new().part("image", Part::bytes(png.clone()).file_name("a.png")).text("k", "9".repeat(5 << 20))),
        ("3 MB photo over a 2 MB limit", Form::new().part("image", Part::bytes(vec![0xFF; 3 << 20]).file_name("big.jpg"))),
        ("10,000 filter fields", (0..10_000).fold(Form::new().part("image", Part::bytes(png.clone()).file_name("a.png")), |f, i| f.text("filter", format!("articleType=x{i}")))),
        ("no image field", Form::new().text("k", "3")),
        ("two image fields", Form::new().part("image", Part::bytes(png.clone()).file_name("a.png")).part("image", Part::bytes(png.clone()).file_name("b.png"))),
    ]
    .map(|(what, form)| {
        let response = http.post(server.url("/api/search")).multipart(form).send();
        (what, response.map(|r| r.status().as_u16()))
    });
    for (what, status) in statuses {
        // A refused upload may also be cut off mid-send (connection reset): also a refusal.
        if let Ok(status) = status {
            assert!((400..500).contains(&status), "{what}: got {status}");
        }
    }
    // Headers promising a body that never comes: answered 408 after the timeout, connection
    // not held forever.
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    // The 20 s read timeout is the bound: a connection held past it leaves `answer` empty.
    stream
        .write_all(format!("POST /api/search HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n--x\r\n").as_bytes())
        .expect("send headers");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "stalled upload got: {answer:?}");
    assert_eq!(http.get(server.url("/healthz")).send().expect("health").status().as_u16(), 200);
}

/// SIGTERM while a request is in flight: the request is answered, then the server exits 0.
#[test]
fn graceful_shutdown_finishes_in_flight_requests() {
    let mut server = Server::start(shared_catalog(), &[], &[]);
    let (png, _) = test_photo(1);
    let boundary = "b0undary";
    let mut body = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.png\"\r\nContent-Type: image/png\r\n\r\n").into_bytes();
    body.extend_from_slice(&png);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    // `Expect: 100-continue`: the server says "100 Continue" once the handler starts reading
    // the body, so the test knows for certain the request is in flight before the signal.
    let head = format!(
        "POST /api/search HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("headers");
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).expect("interim answer");
    assert!(interim.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"), "{:?}", String::from_utf8_lossy(&interim));
    stream.write_all(&body[..body.len() / 2]).expect("half the body");
    let status = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    stream.write_all(&body[body.len() / 2..]).expect("rest of the body after SIGTERM");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "in-flight request after SIGTERM: {}", answer.lines().next().unwrap_or(""));
    // A hang detector, not a speed measure: the drained server exits within a second or so.
    let deadline = Instant::now() + Duration::from_secs(120);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "server still running 120 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "server exit status {exit}");
    // New connections are refused once it is gone.
    assert!(TcpStream::connect(&addr).is_err());
}

/// kill -9 while products are being added over the API: after a restart every acknowledged
/// product is there, and products and vectors pair up exactly.
#[test]
fn kill_during_api_writes_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let token = "s3cret-token-for-tests";
    let mut server = Server::start(&db, &["--admin-token", token], &[]);
    let url = server.url("/api/products");
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (url, acked) = (url.clone(), acked.clone());
            std::thread::spawn(move || {
                let http = client();
                for i in 0..200 {
                    let id = format!("crash-{w}-{i}");
                    let (png, _) = test_photo(100 + (w * 200 + i) % 500);
                    let form = Form::new().text("id", id.clone()).text("name", "Crash test").part("image", Part::bytes(png).file_name("p.png"));
                    match http.post(&url).bearer_auth(token).multipart(form).send() {
                        Ok(r) if r.status().is_success() => acked.lock().expect("lock").push(id),
                        _ => break, // the server is gone
                    }
                }
            })
        })
        .collect();
    // Killed once some writes are acknowledged and others are in flight, however fast they go.
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().expect("lock").len() < 10 {
        assert!(Instant::now() < deadline, "no 10 writes acknowledged in 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.child.kill().expect("kill -9");
    let _ = server.child.wait();
    for w in writers {
        let _ = w.join();
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(!acked.is_empty(), "no write was acknowledged before the kill");

    let check = lookalike(&["check", "--db", db.to_str().expect("utf-8"), "--json"]);
    assert!(check.status.success(), "check after kill -9: {}", String::from_utf8_lossy(&check.stderr));
    let report: Value = serde_json::from_slice(&check.stdout).expect("check JSON");
    assert_eq!(report["products"], report["vectors"], "products and vectors pair up: {report}");
    assert_eq!(report["products_without_vector"], 0);

    let server = Server::start(&db, &[], &[]);
    let http = client();
    for id in &acked {
        let status = http.get(server.url(&format!("/api/products/{id}"))).send().expect("get").status().as_u16();
        assert_eq!(status, 200, "acknowledged product {id} lost");
    }
    eprintln!("kill -9 during POST /api/products: {} acknowledged, 0 lost", acked.len());
}

/// A flipped byte in a stored vector is caught by its checksum with a message naming the fix;
/// `repair` drops the damaged vector and `index` embeds the product again. A damaged page of
/// the SQLite file is salvaged around.
#[test]
fn damaged_catalogs_are_detected_and_repaired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let db_str = db.to_str().expect("utf-8");
    // Damage one vector in the file itself, as a bad disk block would.
    let conn = rusqlite::Connection::open(&db).expect("open");
    let vector: Vec<u8> = conn.query_row("SELECT vector FROM vectors ORDER BY key LIMIT 1 OFFSET 40", [], |r| r.get(0)).expect("vector");
    drop(conn);
    let mut file = std::fs::read(&db).expect("read db");
    let at = file.windows(64).position(|w| w == &vector[..64]).expect("vector bytes in the file");
    file[at + 200] ^= 0x5A;
    std::fs::write(&db, &file).expect("write db");

    let search = lookalike(&["search", "--db", db_str, "--like", "fmnist-train-00001"]);
    assert!(!search.status.success());
    let message = String::from_utf8_lossy(&search.stderr);
    assert!(message.contains("checksum") && message.contains("lookalike repair"), "{message}");
    let check = lookalike(&["check", "--db", db_str]);
    assert!(!check.status.success(), "check must fail on a damaged vector");
    let repair = lookalike(&["repair", "--db", db_str]);
    assert!(repair.status.success(), "{}", String::from_utf8_lossy(&repair.stderr));
    let index = lookalike(&["index", "--db", db_str, "--fashion-mnist", "train", "--limit", "300", "--fashion-mnist-dir", fm_dir().to_str().expect("utf-8")]);
    assert!(index.status.success());
    assert!(String::from_utf8_lossy(&index.stderr).contains("indexed 1 new or changed"), "{}", String::from_utf8_lossy(&index.stderr));
    assert!(lookalike(&["check", "--db", db_str]).status.success());

    // A page of zeros in the middle of the file (a torn write).
    let mut file = std::fs::read(&db).expect("read db");
    let pages = file.len() / 4096;
    let page = pages * 2 / 5;
    file[page * 4096..(page + 1) * 4096].fill(0);
    std::fs::write(&db, &file).expect("write db");
    let search = lookalike(&["search", "--db", db_str, "--like", "fmnist-train-00001"]);
    assert!(!search.status.success());
    // Said with the file's own path, ready to paste.
    assert!(String::from_utf8_lossy(&search.stderr).contains(&format!("lookalike repair --db {db_str}")), "{}", String::from_utf8_lossy(&search.stderr));
    let repair = lookalike(&["repair", "--db", db_str]);
    assert!(repair.status.success(), "{}", String::from_utf8_lossy(&repair.stderr));
    let index = lookalike(&["index", "--db", db_str, "--fashion-mnist", "train", "--limit", "300", "--fashion-mnist-dir", fm_dir().to_str().expect("utf-8")]);
    assert!(index.status.success(), "{}", String::from_utf8_lossy(&index.stderr));
    let check = lookalike(&["check", "--db", db_str, "--json"]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let report: Value = serde_json::from_slice(&check.stdout).expect("check JSON");
    assert_eq!(report["products"], 300, "every product back after salvage + re-index: {report}");
    assert_eq!(report["vectors"], 300);
}

/// The disk fills up during `index`: a clean error, and the catalog still opens with what was
/// committed. Needs a small tmpfs (root); reported as skipped otherwise.
#[test]
fn a_full_disk_during_index_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mount = dir.path().join("small");
    std::fs::create_dir(&mount).expect("mount point");
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"]).arg(&mount).status().is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a small tmpfs here (needs root)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&mount);
    let db = mount.join("full.db");
    let db_str = db.to_str().expect("utf-8");
    let out = lookalike(&["index", "--db", db_str, "--fashion-mnist", "train", "--limit", "2000", "--fashion-mnist-dir", fm_dir().to_str().expect("utf-8")]);
    assert!(!out.status.success(), "3 MB cannot hold 2,000 products");
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(message.contains("full"), "the error says the disk is full: {message}");
    assert!(!message.contains("panicked"), "{message}");
    let check = lookalike(&["check", "--db", db_str, "--json"]);
    assert!(check.status.success(), "the catalog still opens and is sound: {}", String::from_utf8_lossy(&check.stderr));
    let report: Value = serde_json::from_slice(&check.stdout).expect("check JSON");
    assert_eq!(report["products"], report["vectors"]);
    eprintln!("disk full: stopped after {} products, catalog sound", report["products"]);
}

/// Catalog folders that try to escape: ids with `../`, symlinked images, invalid UTF-8, and a
/// CSV with a million columns.
#[test]
fn hostile_catalog_folders_import_only_what_is_inside() {
    let catalogs: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(hostile_dir().join("catalogs.json")).expect("catalogs.json")).expect("JSON");
    for catalog in catalogs.iter().filter(|c| c["generated_at_runtime"] != true) {
        let folder = catalog["folder"].as_str().expect("folder");
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("c.db");
        let source = hostile_dir().join("catalogs").join(folder);
        let out = lookalike(&["index", "--db", db.to_str().expect("utf-8"), "--kaggle", source.to_str().expect("utf-8")]);
        assert!(out.status.success(), "{folder}: {}", String::from_utf8_lossy(&out.stderr));
        let conn = rusqlite::Connection::open(&db).expect("open");
        let mut ids: Vec<String> = conn.prepare("SELECT id FROM products ORDER BY id").expect("query").query_map([], |r| r.get(0)).expect("rows").map(|r| r.expect("id")).collect();
        ids.sort();
        let mut expected: Vec<String> = catalog["imported_ids"].as_array().expect("ids").iter().map(|v| v.as_str().expect("id").to_string()).collect();
        expected.sort();
        assert_eq!(ids, expected, "{folder}: {}", catalog["expect"]);
    }

    // A million columns: refused or imported without the extra columns, in bounded time.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("images")).expect("images");
    let mut csv = String::from("id,productDisplayName");
    for i in 0..1_000_000 {
        csv.push_str(&format!(",c{i}"));
    }
    csv.push_str("\n1,Wide\n");
    std::fs::write(dir.path().join("styles.csv"), csv).expect("csv");
    let started = Instant::now();
    let out = lookalike(&["index", "--db", dir.path().join("w.db").to_str().expect("utf-8"), "--kaggle", dir.path().to_str().expect("utf-8")]);
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(!message.contains("panicked"), "{message}");
    // A hang detector, not a speed measure: quadratic work on a million columns would not end.
    assert!(started.elapsed() < Duration::from_secs(600), "a million columns took {:?}", started.elapsed());
}

/// CORS is off unless an origin is configured, and then only that origin is allowed; the admin
/// token never reaches the logs, even at trace level.
#[test]
fn cors_is_opt_in_and_the_token_is_never_logged() {
    let http = client();
    let server = Server::start(shared_catalog(), &[], &[]);
    let response = http.get(server.url("/api/facets")).header("Origin", "https://evil.example").send().expect("facets");
    assert!(response.headers().get("access-control-allow-origin").is_none(), "CORS must be off by default");
    drop(server);

    let server = Server::start(shared_catalog(), &["--cors-origin", "https://shop.example"], &[]);
    let allowed = http.get(server.url("/api/facets")).header("Origin", "https://shop.example").send().expect("facets");
    assert_eq!(allowed.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some("https://shop.example"));
    let other = http.get(server.url("/api/facets")).header("Origin", "https://evil.example").send().expect("facets");
    assert!(other.headers().get("access-control-allow-origin").is_none());
    drop(server);
    assert!(!lookalike(&["serve", "--db", "x.db", "--cors-origin", "*"]).status.success(), "a wildcard origin is refused");

    // The page shows product photos from the shop's image servers: any http(s) origin unless
    // the shop names its own (`self`: none but this server).
    let image_sources = |flags: &[&str]| {
        let server = Server::start(shared_catalog(), flags, &[]);
        let page = http.get(server.url("/")).send().expect("page");
        let policy = page.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).expect("a policy").to_string();
        policy.split("; ").find_map(|d| d.strip_prefix("img-src ")).expect("img-src").to_string()
    };
    assert_eq!(image_sources(&[]), "'self' blob: data: https: http:");
    assert_eq!(
        image_sources(&["--image-origin", "https://cdn.shop.example", "--image-origin", "http://127.0.0.1:8080"]),
        "'self' blob: data: https://cdn.shop.example http://127.0.0.1:8080"
    );
    assert_eq!(image_sources(&["--image-origin", "self"]), "'self' blob: data:");
    for bad in ["https://cdn.shop.example/photos", "cdn.shop.example", "https://cdn.example; script-src *"] {
        let out = lookalike(&["serve", "--db", "x.db", "--image-origin", bad]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("must be an origin like https://shop.example"), "{bad}: {stderr}");
    }

    // Trace-level logs of requests carrying the token, right and wrong.
    let token = "do-not-log-this-token-7781";
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let (child, base) = serve_with_log(&db, &["--admin-token", token], "trace");
    for auth in [token.to_string(), format!("{token}x")] {
        let _ = http.delete(format!("{base}/api/products/nope")).bearer_auth(&auth).send();
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let output = child.wait_with_output().expect("server output");
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(!logs.is_empty(), "trace logging produced nothing");
    assert!(!logs.contains(token), "the admin token appeared in the logs");
}

/// An image file swapped for a symbolic link after the import is not served: the server reads
/// only regular files the catalog recorded, never what a link points at.
#[test]
fn a_symlink_planted_after_import_is_not_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).expect("photos");
    for i in 0..3 {
        let (png, _) = test_photo(i);
        std::fs::write(photos.join(format!("p{i}.png")), png).expect("photo");
    }
    let db = dir.path().join("c.db");
    let out = lookalike(&["index", "--db", db.to_str().expect("utf-8"), "--images", photos.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let secret = dir.path().join("secret.png");
    std::fs::copy(photos.join("p1.png"), &secret).expect("secret");
    std::fs::remove_file(photos.join("p1.png")).expect("remove");
    std::os::unix::fs::symlink(&secret, photos.join("p1.png")).expect("symlink");
    let server = Server::start(&db, &[], &[]);
    let http = client();
    assert_eq!(http.get(server.url("/api/products/p0.png/image")).send().expect("image").status().as_u16(), 200);
    assert_eq!(http.get(server.url("/api/products/p1.png/image")).send().expect("image").status().as_u16(), 404, "a planted symlink is not followed");
}
