//! Helpers shared by the HTTP-level test suites: a small real catalog, a running server, a
//! client and assertions on the JSON error shape. (Each test binary uses a different subset.)
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use lookalike::assets::Assets;
use lookalike::import::fashion_mnist::FashionMnist;
use serde_json::Value;

pub mod http;
pub use self::http::{client, Form, Part, Response};

pub const BIN: &str = env!("CARGO_BIN_EXE_lookalike");

/// The `lookalike` binary with `args`, logging warnings only; callers may add to it (a
/// working directory, an asset home).
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).env("LOOKALIKE_LOG", "warn");
    command
}

/// Runs the `lookalike` binary to completion (logging warnings only).
pub fn lookalike(args: &[&str]) -> std::process::Output {
    command(args).output().expect("the lookalike binary runs")
}

pub fn fm_dir() -> PathBuf {
    Assets::from_env().fashion_mnist_dir().expect("Fashion-MNIST assets (run `make setup`)")
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// The default model's encoder, for tests that drive the library directly.
pub fn encoder() -> lookalike::encoder::OrtEncoder {
    let assets = Assets::from_env();
    let spec = lookalike::model::resolve(&assets, lookalike::model::DEFAULT_MODEL).expect("model (run `make setup`)");
    lookalike::encoder::OrtEncoder::new(&assets.onnxruntime_lib().expect("onnxruntime"), spec, 2).expect("encoder")
}

/// 300 Fashion-MNIST training images indexed with the CLI, once per test run.
pub fn shared_catalog() -> &'static Path {
    static DB: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, db) = DB.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("fm.db");
        let out = lookalike(&["index", "--db", path(&db), "--fashion-mnist", "train", "--limit", "300", "--fashion-mnist-dir", path(&fm_dir())]);
        assert!(out.status.success(), "index failed: {}", String::from_utf8_lossy(&out.stderr));
        (dir, db)
    });
    db
}

/// A private copy of the shared catalog for tests that change it.
pub fn copy_catalog(dir: &Path) -> PathBuf {
    let db = dir.join("copy.db");
    std::fs::copy(shared_catalog(), &db).expect("copy catalog");
    db
}

/// Fashion-MNIST test image `i` (not in the catalog) as PNG bytes, and its class.
pub fn test_photo(i: usize) -> (Vec<u8>, String) {
    static SPLIT: OnceLock<FashionMnist> = OnceLock::new();
    let fm = SPLIT.get_or_init(|| FashionMnist::load(&fm_dir(), "test").expect("test split"));
    let mut png = Vec::new();
    fm.image(i).expect("image").write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("png");
    (png, fm.class_name(i).to_string())
}

/// A grey Fashion-MNIST garment (light on black) painted in red and blue stripes, shaded by
/// its grey levels, on its black background: a patterned product with two main colours.
pub fn striped(grey: &image::DynamicImage) -> image::DynamicImage {
    let luma = grey.to_luma8();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(luma.width(), luma.height(), |x, y| {
        let v = f32::from(luma.get_pixel(x, y)[0]) / 255.0;
        let alpha = (v * 3.0).min(1.0);
        let stripe: [f32; 3] = if (y / 14) % 2 == 0 { [215.0, 30.0, 40.0] } else { [40.0, 105.0, 215.0] };
        image::Rgb(stripe.map(|c| (alpha * c * (0.85 + 0.15 * v)) as u8))
    }))
}

/// A running `lookalike serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    pub fn start(db: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_with(&[&["--db", path(db)], args].concat(), env)
    }

    /// `lookalike serve ARGS` (with no catalog given unless `args` name one).
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .env("LOOKALIKE_LOG", "warn")
            .env_remove("LOOKALIKE_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start lookalike serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {} // Keep draining so the server never blocks on a full pipe.
        });
        // A hang detector: a server that fails to start closes stdout, which ends the wait at once.
        let line = match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("lookalike serve printed no address within 300 s");
            }
        };
        let url = line.strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line: {line}")).to_string();
        Server { child, url }
    }

    pub fn url(&self, route: &str) -> String {
        format!("{}{route}", self.url)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `lookalike serve` with its log captured (stderr piped, at `log_level`), for tests that read
/// what the server logs; returns the process and its base URL. Stop it and read the log with
/// `child.wait_with_output()` after a kill or SIGTERM.
pub fn serve_with_log(db: &Path, args: &[&str], log_level: &str) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--db", path(db), "--addr", "127.0.0.1:0"])
        .args(args)
        .env("LOOKALIKE_LOG", log_level)
        .env_remove("LOOKALIKE_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lookalike serve");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("the address line");
    let base = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line: {line}")).to_string();
    (child, base)
}

pub fn photo_form(png: Vec<u8>, fields: &[(&str, &str)]) -> Form {
    let mut form = Form::new().part("image", Part::bytes(png).file_name("photo.png"));
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    form
}

pub fn search_photo(server: &Server, png: Vec<u8>, fields: &[(&str, &str)]) -> Response {
    client().post(server.url("/api/search")).multipart(photo_form(png, fields)).send().expect("search request")
}

pub fn search_json(server: &Server, body: Value) -> Response {
    client().post(server.url("/api/search")).json(&body).send().expect("search request")
}

pub fn ok_json(response: Response) -> Value {
    let status = response.status();
    let text = response.text().expect("body");
    assert!(status.is_success(), "expected success, got {status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts an error status and the `{"error": {"code", "message"}}` body; returns the message.
pub fn expect_error(response: Response, status: u16, code: &str) -> String {
    let got = response.status().as_u16();
    let text = response.text().expect("body");
    assert_eq!(got, status, "expected {status} {code}, got {got}: {text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    assert_eq!(body["error"]["code"], code, "{text}");
    let message = body["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(!message.is_empty(), "error without a message: {text}");
    message
}

pub fn ids(result: &Value) -> Vec<String> {
    result["hits"].as_array().expect("hits").iter().map(|h| h["id"].as_str().expect("id").to_string()).collect()
}

/// Reads `child`'s piped stderr until it says `what` (the state a test waits for, rather than
/// sleeping and hoping it was reached); fails if the process closes stderr (ends) first.
/// Returns the reader, to read the rest, and everything read so far.
pub fn wait_until_said(child: &mut Child, what: &str) -> (BufReader<std::process::ChildStderr>, String) {
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
    let mut said = String::new();
    while !said.contains(what) {
        let mut line = String::new();
        let read = stderr.read_line(&mut line).expect("read stderr");
        assert!(read > 0, "the process ended without saying {what:?}: {said}");
        said.push_str(&line);
    }
    (stderr, said)
}
