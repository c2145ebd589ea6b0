//! `lookalike bench search`: how fast the index answers, and how exactly.
//!
//! Vectors are the catalog's own, in its search space. With `--synthetic N` the catalog is
//! grown to N vectors: vector i is catalog vector `i mod n` plus Gaussian noise of norm about
//! `--noise` (then re-normalised), so the set keeps the real embeddings' structure (clusters of
//! product types, their spread) at a size no real catalog here has. Queries are stored vectors
//! plus noise of the same size, so no query is identical to a stored one.
//!
//! Each run measures, one query at a time: the exact scan in f32, f16 and int8, on one thread and
//! on all; the HNSW graph at several candidate counts (recall@k against the exact f32 answer);
//! memory; and, when a Python with `faiss-cpu` is configured, FAISS `IndexFlatIP` and
//! `IndexHNSWFlat` on the same vectors and queries, in the same run.

use std::time::Instant;

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

use super::{memory, ratio, write_f32, BenchEnv, Latency};
use crate::catalog::{SqliteCatalog, VectorKind};
use crate::types::Key;
use crate::index::{l2_normalize, AnnIndex, AnnOptions, ExactIndex, Hit, Precision, VectorIndex};
use crate::space::SearchSpace;

#[derive(Debug, Clone)]
pub struct SearchBench {
    pub queries: usize,
    pub k: usize,
    /// Grow the catalog to this many vectors.
    pub synthetic: Option<usize>,
    /// Norm of the noise added to make synthetic vectors and queries.
    pub noise: f32,
    pub seed: u64,
    /// Graph candidate counts to try.
    pub candidates: Vec<usize>,
    /// Compare with FAISS only up to this many vectors (its HNSW build is slow on 2 cores).
    pub faiss_max: usize,
    /// Report name under the output directory.
    pub name: String,
}

#[derive(Debug, Serialize)]
struct ExactRun {
    precision: Precision,
    threads: usize,
    queries: usize,
    latency: Latency,
    recall: f64,
    bytes: usize,
}

#[derive(Debug, Serialize)]
struct GraphRun {
    candidates: usize,
    latency: Latency,
    recall: f64,
}

/// A Gaussian vector of norm about `norm` (Box-Muller).
fn noise(rng: &mut impl Rng, dim: usize, norm: f32) -> Vec<f32> {
    let sigma = norm / (dim as f32).sqrt();
    (0..dim)
        .map(|_| {
            let (u, v): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random_range(0.0..1.0));
            sigma * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        })
        .collect()
}

fn perturbed(v: &[f32], rng: &mut impl Rng, norm: f32) -> Vec<f32> {
    let mut out: Vec<f32> = v.iter().zip(noise(rng, v.len(), norm)).map(|(a, b)| a + b).collect();
    l2_normalize(&mut out);
    out
}

fn recall(truth: &[Vec<Key>], got: &[Vec<Hit>]) -> f64 {
    let (mut found, mut total) = (0usize, 0usize);
    for (t, g) in truth.iter().zip(got) {
        found += g.iter().filter(|h| t.contains(&h.key)).count();
        total += t.len();
    }
    if total == 0 {
        1.0
    } else {
        found as f64 / total as f64
    }
}

/// Runs every query once, timing each.
fn timed(index: &dyn VectorIndex, queries: &[Vec<f32>], k: usize) -> Result<(Latency, Vec<Vec<Hit>>)> {
    // Warm caches and lazy initialisation outside the clock.
    for q in queries.iter().take(5) {
        index.search(q, k, None)?;
    }
    let mut times = Vec::with_capacity(queries.len());
    let mut hits = Vec::with_capacity(queries.len());
    for q in queries {
        let t = Instant::now();
        hits.push(index.search(q, k, None)?);
        times.push(t.elapsed());
    }
    Ok((Latency::of(&times), hits))
}

pub fn run(catalog: &SqliteCatalog, env: &BenchEnv, opts: &SearchBench) -> Result<Value> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let space = SearchSpace::for_catalog(catalog)?;
    let base = space.build_index(catalog, VectorKind::Primary, Precision::F32)?;
    anyhow::ensure!(!base.is_empty(), "catalog {} has no vectors to benchmark", catalog.path().display());
    let dim = base.dim();

    // The data set: the catalog's vectors, or that many grown to `synthetic`.
    let started = Instant::now();
    let mut data = match opts.synthetic {
        None => base,
        Some(n) => {
            let keys = base.keys().to_vec();
            let mut grown = ExactIndex::new(dim);
            grown.reserve(n);
            for i in 0..n {
                let source = base.vector(keys[i % keys.len()]).context("catalog vector")?;
                grown.upsert(i as Key, &perturbed(&source, &mut rng, opts.noise))?;
            }
            grown
        }
    };
    let n = data.len();
    let raw_bytes = n * dim * 4;
    eprintln!("data set: {n} x {dim}-d ({:.1} GB raw f32), made in {:.1}s", raw_bytes as f64 / 1e9, started.elapsed().as_secs_f64());

    let keys = data.keys().to_vec();
    let queries: Vec<Vec<f32>> = (0..opts.queries)
        .map(|_| {
            let key = keys[rng.random_range(0..keys.len())];
            let v = data.vector(key).context("stored vector")?;
            Ok(perturbed(&v, &mut rng, opts.noise))
        })
        .collect::<Result<_>>()?;
    // The exact scan reads every vector per query: at a million products keep its query count
    // small so the run stays in minutes.
    let exact_queries = if raw_bytes > 1 << 30 { opts.queries.min(100) } else { opts.queries };

    let t = Instant::now();
    let truth: Vec<Vec<Key>> =
        queries.iter().map(|q| Ok(data.search(q, opts.k, None)?.iter().map(|h| h.key).collect())).collect::<Result<_>>()?;
    eprintln!("exact answers for {} queries in {:.1}s", queries.len(), t.elapsed().as_secs_f64());

    // FAISS on the same rows and queries (row order = our key order; truth as row positions).
    let mut faiss = Value::Null;
    if env.python.is_some() && n <= opts.faiss_max {
        std::fs::create_dir_all(&env.work).with_context(|| format!("creating {}", env.work.display()))?;
        let base_path = env.work.join("base.f32");
        let query_path = env.work.join("queries.f32");
        write_f32(&base_path, keys.iter().flat_map(|&k| data.vector(k).unwrap_or_default()))?;
        write_f32(&query_path, queries.iter().flatten().copied())?;
        let position: std::collections::HashMap<Key, i64> = keys.iter().enumerate().map(|(i, &k)| (k, i as i64)).collect();
        let truth_path = env.work.join("truth.i64");
        let mut bytes = Vec::with_capacity(truth.len() * opts.k * 8);
        for t in &truth {
            for key in t {
                bytes.extend_from_slice(&position[key].to_le_bytes());
            }
        }
        std::fs::write(&truth_path, bytes).with_context(|| format!("writing {}", truth_path.display()))?;
        let args = vec![
            "--base".into(),
            base_path.display().to_string(),
            "--queries".into(),
            query_path.display().to_string(),
            "--truth".into(),
            truth_path.display().to_string(),
            "--dim".into(),
            dim.to_string(),
            "--k".into(),
            opts.k.to_string(),
            "--threads".into(),
            "1".into(),
            "--hnsw-m".into(),
            "16".into(),
            "--ef-construction".into(),
            AnnOptions::default().expansion_add.to_string(),
            "--ef-search".into(),
            "16,32,64,128,256,512".into(),
            "--target-recall".into(),
            "0.95".into(),
        ];
        faiss = env.run_reference("faiss_reference.py", &args)?.unwrap_or(Value::Null);
        let _ = std::fs::remove_file(&base_path);
    }

    // Exact scans: compressed copies first (made and dropped one at a time), then f32.
    let mut exact_runs = Vec::new();
    let threads = rayon::current_num_threads();
    let mut measure = |index: &mut ExactIndex| -> Result<()> {
        for parallel in [false, true] {
            index.set_parallel(parallel);
            let (latency, hits) = timed(index, &queries[..exact_queries], opts.k)?;
            let run = ExactRun {
                precision: index.precision(),
                threads: if parallel { threads } else { 1 },
                queries: exact_queries,
                latency,
                recall: recall(&truth[..exact_queries], &hits),
                bytes: index.row_bytes(),
            };
            eprintln!("exact {:?} {} thread(s): median {:.2} ms, recall {:.4}", run.precision, run.threads, run.latency.median_ms, run.recall);
            exact_runs.push(run);
        }
        index.set_parallel(true);
        Ok(())
    };
    for precision in [Precision::F16, Precision::I8] {
        let mut copy = ExactIndex::with_precision(dim, precision);
        copy.reserve(n);
        for &k in &keys {
            copy.upsert(k, &data.vector(k).context("stored vector")?)?;
        }
        measure(&mut copy)?;
    }
    measure(&mut data)?;

    // The graph, built from the f32 rows (moved, not copied).
    let t = Instant::now();
    let mut graph = AnnIndex::build(data, AnnOptions::default())?;
    let build_s = t.elapsed().as_secs_f64();
    let (rss, peak) = memory();
    eprintln!("graph built in {build_s:.1}s; RSS {:.2} GB ({:.2}x raw)", rss as f64 / 1e9, rss as f64 / raw_bytes as f64);
    let mut graph_runs = Vec::new();
    for &candidates in &opts.candidates {
        graph.set_candidates(candidates);
        let (latency, hits) = timed(&graph, &queries, opts.k)?;
        let run = GraphRun { candidates, latency, recall: recall(&truth, &hits) };
        eprintln!("graph candidates {candidates}: median {:.3} ms p99 {:.3} ms, recall {:.4}", run.latency.median_ms, run.latency.p99_ms, run.recall);
        graph_runs.push(run);
    }

    let report = json!({
        "machine": super::machine(),
        "vectors": n,
        "dim": dim,
        "space": space.describe(),
        "synthetic": opts.synthetic.map(|_| json!({"from_catalog": keys.len().min(n), "noise_norm": opts.noise})),
        "queries": opts.queries,
        "k": opts.k,
        "seed": opts.seed,
        "threads": threads,
        "raw_f32_bytes": raw_bytes,
        "exact": exact_runs,
        "graph": {
            "options": AnnOptions::default(),
            "build_seconds": build_s,
            "graph_bytes": graph.graph_bytes(),
            "runs": graph_runs,
        },
        "memory": {"rss_bytes": rss, "peak_bytes": peak, "rss_over_raw": rss as f64 / raw_bytes as f64},
        "faiss": faiss,
    });
    let markdown = markdown(&report, opts);
    let (j, m) = env.write(&opts.name, &report, &markdown)?;
    eprintln!("wrote {} and {}", j.display(), m.display());
    println!("{markdown}");
    Ok(report)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn markdown(r: &Value, opts: &SearchBench) -> String {
    let mut out = format!(
        "# Search benchmark: {} vectors x {}-d\n\nMachine: {}. Space: {}. {} queries, k = {}, one query at a time{}.\n\n",
        r["vectors"],
        r["dim"],
        r["machine"].as_str().unwrap_or(""),
        r["space"].as_str().unwrap_or(""),
        r["queries"],
        r["k"],
        if opts.synthetic.is_some() {
            format!("; vectors = catalog vectors + Gaussian noise of norm {} (re-normalised)", opts.noise)
        } else {
            String::new()
        }
    );
    out.push_str("## Exact scan\n\n| storage | threads | queries | median ms | p99 ms | QPS | recall@k | MB |\n|---|---|---|---|---|---|---|---|\n");
    for e in r["exact"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.1} | {:.4} | {:.0} |\n",
            e["precision"].as_str().unwrap_or(""),
            e["threads"],
            e["queries"],
            f(&e["latency"]["median_ms"]),
            f(&e["latency"]["p99_ms"]),
            f(&e["latency"]["qps"]),
            f(&e["recall"]),
            f(&e["bytes"]) / 1e6
        ));
    }
    let g = &r["graph"];
    out.push_str(&format!(
        "\n## HNSW graph (usearch, int8 graph + exact f32 re-rank, 1 thread per query)\n\nBuild: {:.1} s on {} threads; graph {:.0} MB. Process RSS {:.0} MB = {:.2}x the raw f32 vectors (peak {:.0} MB).\n\n| candidates | median ms | p99 ms | QPS | recall@k |\n|---|---|---|---|---|\n",
        f(&g["build_seconds"]),
        r["threads"],
        f(&g["graph_bytes"]) / 1e6,
        f(&r["memory"]["rss_bytes"]) / 1e6,
        f(&r["memory"]["rss_over_raw"]),
        f(&r["memory"]["peak_bytes"]) / 1e6
    ));
    for run in g["runs"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "| {} | {:.3} | {:.3} | {:.0} | {:.4} |\n",
            run["candidates"],
            f(&run["latency"]["median_ms"]),
            f(&run["latency"]["p99_ms"]),
            f(&run["latency"]["qps"]),
            f(&run["recall"])
        ));
    }
    let faiss = &r["faiss"];
    if faiss.is_null() {
        out.push_str("\nFAISS: not run (no reference Python configured, or the set is above --faiss-max).\n");
        return out;
    }
    let our_exact = r["exact"].as_array().and_then(|a| a.iter().find(|e| e["precision"] == "f32" && e["threads"] == 1)).map_or(f64::NAN, |e| f(&e["latency"]["qps"]));
    let flat_qps = f(&faiss["flat"]["single"]["qps"]);
    let ours95 = g["runs"].as_array().and_then(|runs| runs.iter().find(|run| f(&run["recall"]) >= 0.95));
    let theirs95 = faiss["hnsw"]["runs"].as_array().and_then(|runs| runs.iter().find(|run| f(&run["recall_at_k"]) >= 0.95));
    out.push_str(&format!(
        "\n## Against FAISS {} (same vectors and queries, 1 thread, one query at a time)\n\n| | lookalike | FAISS | ratio |\n|---|---|---|---|\n| exact f32 QPS | {:.1} | {:.1} (IndexFlatIP) | {} |\n",
        faiss["faiss"].as_str().unwrap_or(""),
        our_exact,
        flat_qps,
        ratio(our_exact, flat_qps)
    ));
    match (ours95, theirs95) {
        (Some(o), Some(t)) => out.push_str(&format!(
            "| HNSW QPS at recall@k >= 0.95 | {:.0} (candidates {}, recall {:.4}) | {:.0} (IndexHNSWFlat M=16, efSearch {}, recall {:.4}) | {} |\n| HNSW build s | {:.1} | {:.1} | |\n",
            f(&o["latency"]["qps"]),
            o["candidates"],
            f(&o["recall"]),
            f(&t["single"]["qps"]),
            t["ef_search"],
            f(&t["recall_at_k"]),
            ratio(f(&o["latency"]["qps"]), f(&t["single"]["qps"])),
            f(&g["build_seconds"]),
            f(&faiss["hnsw"]["build_seconds"])
        )),
        _ => out.push_str("| HNSW at recall@k >= 0.95 | see tables | not reached by one side | |\n"),
    }
    out
}

