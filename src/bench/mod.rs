//! `lookalike bench`: the performance measurements, each run against its baseline in the same
//! run on the same machine, written as JSON (for tools) and a markdown table (for people) under
//! `docs/`.
//!
//! - [`search`]: exact scan (f32 / f16 / int8, one thread and all) and the HNSW graph against
//!   FAISS on the same vectors, and a million-product scale test.
//! - [`ingest`]: the indexer against the Python pipeline a user would write.
//! - [`e2e`]: `POST /api/search` latency through the real server, stage by stage.

pub mod e2e;
pub mod ingest;
pub mod search;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

/// Median, 99th percentile and mean of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Latency {
    pub median_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    /// Queries per second (1000 / mean).
    pub qps: f64,
}

impl Latency {
    pub fn of(samples: &[Duration]) -> Latency {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        Latency::of_ms(&mut ms)
    }

    pub fn of_ms(ms: &mut [f64]) -> Latency {
        if ms.is_empty() {
            return Latency::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
        let mean = ms.iter().sum::<f64>() / ms.len() as f64;
        Latency { median_ms: at(0.5), p99_ms: at(0.99), mean_ms: mean, qps: if mean > 0.0 { 1000.0 / mean } else { 0.0 } }
    }
}

/// Where reports go and which Python runs the reference scripts.
#[derive(Debug, Clone)]
pub struct BenchEnv {
    /// Directory for `<name>.json` and `<name>.md`.
    pub out_dir: PathBuf,
    /// Python with the reference requirements (bench/setup-reference.sh); `None` skips them.
    pub python: Option<PathBuf>,
    /// The repository's `bench/` directory (the reference scripts).
    pub scripts: PathBuf,
    /// Scratch space for generated files.
    pub work: PathBuf,
}

impl BenchEnv {
    /// Writes `<name>.json` and `<name>.md` and returns their paths.
    pub fn write(&self, name: &str, json: &impl Serialize, markdown: &str) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(&self.out_dir).with_context(|| format!("creating {}", self.out_dir.display()))?;
        let (j, m) = (self.out_dir.join(format!("{name}.json")), self.out_dir.join(format!("{name}.md")));
        std::fs::write(&j, serde_json::to_string_pretty(json)?).with_context(|| format!("writing {}", j.display()))?;
        std::fs::write(&m, markdown).with_context(|| format!("writing {}", m.display()))?;
        Ok((j, m))
    }

    /// Runs a reference script with the bench Python, returning its JSON report; `Ok(None)` when
    /// no Python is configured.
    pub fn run_reference(&self, script: &str, args: &[String]) -> Result<Option<serde_json::Value>> {
        let Some(python) = &self.python else { return Ok(None) };
        let out = self.work.join(format!("{script}.json"));
        let path = self.scripts.join(script);
        eprintln!("running the reference: {} {} {}", python.display(), path.display(), args.join(" "));
        let status = std::process::Command::new(python)
            .arg(&path)
            .args(args)
            .arg("--json")
            .arg(&out)
            .status()
            .with_context(|| format!("starting {} (run `bench/setup-reference.sh`)", python.display()))?;
        anyhow::ensure!(status.success(), "{} {} failed ({status})", python.display(), path.display());
        let text = std::fs::read(&out).with_context(|| format!("reading {}", out.display()))?;
        Ok(Some(serde_json::from_slice(&text).with_context(|| format!("parsing {}", out.display()))?))
    }
}

/// Resident and peak memory of this process, in bytes (Linux; zeros elsewhere).
pub fn memory() -> (u64, u64) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return (0, 0) };
    let field = |name: &str| status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()).map_or(0, |kb| kb * 1024);
    (field("VmRSS:"), field("VmHWM:"))
}

/// Raw little-endian f32 rows, the format the reference scripts read.
pub fn write_f32(path: &Path, rows: impl Iterator<Item = f32>) -> Result<()> {
    use std::io::Write;
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for x in rows {
        w.write_all(&x.to_le_bytes())?;
    }
    w.flush().with_context(|| format!("writing {}", path.display()))
}

/// "1.23x" style ratio, or "n/a".
pub fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 && ours.is_finite() {
        format!("{:.2}x", ours / theirs)
    } else {
        "n/a".into()
    }
}

/// The machine the numbers come from, for the report header: the CPU, the vector extensions
/// that decide which kernels run (inference speed differs up to 5x between CPUs with and
/// without them), the threads, and the commit of the source when run from a git checkout
/// (`-dirty` when the checkout has uncommitted changes, so a report says it was not that commit).
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| cpuinfo.lines().find(|l| l.starts_with(name)).and_then(|l| l.split(':').nth(1)).map(|v| v.trim().to_string());
    let cpu = field("model name").unwrap_or_else(|| "unknown CPU".into());
    let flags = field("flags").unwrap_or_default();
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    let extensions: Vec<&str> = [("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI")]
        .into_iter()
        .filter(|(flag, _)| has(flag))
        .map(|(_, name)| name)
        .collect();
    let extensions = if extensions.is_empty() { "no AVX2".to_string() } else { extensions.join(", ") };
    let commit = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| format!(", commit {}", String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_default();
    format!("{cpu} ({extensions}), {} threads{commit}", std::thread::available_parallelism().map_or(1, |n| n.get()))
}
