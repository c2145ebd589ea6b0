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
use crate::index::{l2_normalize, AnnIndex, AnnOptions, ExactIndex, Hit, Precision, VectorIndex};
use crate::space::SearchSpace;
use crate::types::Key;

#[derive(Debug, Clone)]
pub struct SearchBench {
    pub queries: usize,
    pub k: usize,
    /// Grow the catalog to this many vectors.
    pub synthetic: Option<usize>,
    /// Norm of the noise added to make synthetic vectors and queries.
    pub noise: f32,
    pub seed: u64,
    /// Graph candidate counts to try (and FAISS efSearch values, so both sides are swept alike).
    pub candidates: Vec<usize>,
    /// Graph variants to build, by the dimensions they walk ([`AnnOptions::graph_dim`]; 0: the
    /// vectors' own). The first is the one compared with FAISS.
    pub graph_dims: Vec<usize>,
    /// Graph degree and build-time candidate list ([`AnnOptions::connectivity`] and
    /// [`AnnOptions::expansion_add`]; FAISS gets the same).
    pub connectivity: usize,
    pub expansion_add: usize,
    /// Times every graph setting (and FAISS's) is measured, round after round; each keeps its
    /// fastest round, so a stretch of a busy machine hurts neither side.
    pub rounds: usize,
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
    let truth: Vec<Vec<Key>> = queries.iter().map(|q| Ok(data.search(q, opts.k, None)?.iter().map(|h| h.key).collect())).collect::<Result<_>>()?;
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
            // FAISS at its usual M and at lookalike's (more links cost FAISS more per hop on
            // full f32 vectors than they cost lookalike's smaller graph vectors): it competes
            // with the better of the two at every recall.
            "--hnsw-m".into(),
            if opts.connectivity == 16 { "16".into() } else { format!("16,{}", opts.connectivity) },
            "--ef-construction".into(),
            opts.expansion_add.to_string(),
            "--ef-search".into(),
            opts.candidates.iter().map(usize::to_string).collect::<Vec<_>>().join(","),
            "--target-recall".into(),
            "0.95".into(),
            "--rounds".into(),
            opts.rounds.to_string(),
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

    // The graphs, each built from the f32 rows (moved in, not copied, and taken back).
    let mut graphs = Vec::new();
    for &graph_dim in &opts.graph_dims {
        let options = AnnOptions { graph_dim, connectivity: opts.connectivity, expansion_add: opts.expansion_add, ..AnnOptions::default() };
        let t = Instant::now();
        let mut graph = AnnIndex::build(data, options)?;
        let build_s = t.elapsed().as_secs_f64();
        let (rss, peak) = memory();
        eprintln!("graph walking {}-d built in {build_s:.1}s; RSS {:.2} GB ({:.2}x raw)", graph.graph_dim(), rss as f64 / 1e9, rss as f64 / raw_bytes as f64);
        let mut runs: Vec<GraphRun> = Vec::new();
        for _ in 0..opts.rounds.max(1) {
            for (i, &candidates) in opts.candidates.iter().enumerate() {
                graph.set_candidates(candidates);
                let (latency, hits) = timed(&graph, &queries, opts.k)?;
                let run = GraphRun { candidates, latency, recall: recall(&truth, &hits) };
                match runs.get_mut(i) {
                    Some(best) if best.latency.qps >= run.latency.qps => {}
                    Some(best) => *best = run,
                    None => runs.push(run),
                }
            }
        }
        for run in &runs {
            eprintln!(
                "graph {}-d candidates {}: median {:.3} ms p99 {:.3} ms, recall {:.4}",
                graph.graph_dim(),
                run.candidates,
                run.latency.median_ms,
                run.latency.p99_ms,
                run.recall
            );
        }
        graphs.push(json!({
            "options": options,
            "graph_dim": graph.graph_dim(),
            "build_seconds": build_s,
            "graph_bytes": graph.graph_bytes(),
            "memory": {"rss_bytes": rss, "peak_bytes": peak, "rss_over_raw": rss as f64 / raw_bytes as f64},
            "runs": runs,
        }));
        data = graph.into_exact();
    }

    let report = json!({
        "machine": super::machine(),
        "vectors": n,
        "dim": dim,
        "space": space.describe(),
        "synthetic": opts.synthetic.map(|_| json!({"from_catalog": keys.len().min(n), "noise_norm": opts.noise})),
        "queries": opts.queries,
        "k": opts.k,
        "rounds": opts.rounds,
        "seed": opts.seed,
        "threads": threads,
        "raw_f32_bytes": raw_bytes,
        "exact": exact_runs,
        "graphs": graphs,
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
        if opts.synthetic.is_some() { format!("; vectors = catalog vectors + Gaussian noise of norm {} (re-normalised)", opts.noise) } else { String::new() }
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
    for g in r["graphs"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n## HNSW graph walking {}-d (usearch, int8 graph + exact f32 re-rank, 1 thread per query)\n\nBuild: {:.1} s on {} threads; graph {:.0} MB. Process RSS {:.0} MB = {:.2}x the raw f32 vectors (peak {:.0} MB).\n\n| candidates | median ms | p99 ms | QPS | recall@k |\n|---|---|---|---|---|\n",
            g["graph_dim"],
            f(&g["build_seconds"]),
            r["threads"],
            f(&g["graph_bytes"]) / 1e6,
            f(&g["memory"]["rss_bytes"]) / 1e6,
            f(&g["memory"]["rss_over_raw"]),
            f(&g["memory"]["peak_bytes"]) / 1e6
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
    }
    let faiss = &r["faiss"];
    if faiss.is_null() {
        out.push_str("\nFAISS: not run (no reference Python configured, or the set is above --faiss-max).\n");
        return out;
    }
    let our_exact = r["exact"].as_array().and_then(|a| a.iter().find(|e| e["precision"] == "f32" && e["threads"] == 1)).map_or(f64::NAN, |e| f(&e["latency"]["qps"]));
    let flat_qps = f(&faiss["flat"]["single"]["qps"]);
    out.push_str(&format!(
        "\n## Against FAISS {} (same vectors and queries, 1 thread, one query at a time)\n\nEach side at the setting with the most QPS that reaches the recall (efSearch swept over the same values as candidates; each setting's fastest of {} rounds). FAISS's QPS is the faster of one call per query and one call for all queries on its one thread, which has no Python call overhead.\n\n| | lookalike | FAISS | ratio |\n|---|---|---|---|\n| exact f32 QPS | {:.1} | {:.1} (IndexFlatIP) | {} |\n",
        faiss["faiss"].as_str().unwrap_or(""),
        r["rounds"],
        our_exact,
        flat_qps,
        ratio(our_exact, flat_qps)
    ));
    let graph = &r["graphs"][0];
    for target in [0.95, 0.99] {
        let fastest = |runs: &Value, recall_key: &str, qps: fn(&Value) -> f64| {
            runs.as_array().into_iter().flatten().filter(|run| f(&run[recall_key]) >= target).max_by(|a, b| qps(a).total_cmp(&qps(b))).cloned()
        };
        let ours = fastest(&graph["runs"], "recall", |run| f(&run["latency"]["qps"]));
        // FAISS's faster of one call per query (Python's call overhead included) and one call
        // for all queries on its one thread (none): the comparison never favours lookalike.
        let faiss_qps = |run: &Value| f(&run["single"]["qps"]).max(f(&run["batch"]["qps"]));
        let theirs = fastest(&faiss["hnsw"]["runs"], "recall_at_k", faiss_qps);
        match (ours, theirs) {
            (Some(o), Some(t)) => out.push_str(&format!(
                "| HNSW QPS at recall@k >= {target} | {:.0} ({}-d graph, candidates {}, recall {:.4}) | {:.0} (IndexHNSWFlat M={}, efSearch {}, recall {:.4}) | {} |\n",
                f(&o["latency"]["qps"]),
                graph["graph_dim"],
                o["candidates"],
                f(&o["recall"]),
                faiss_qps(&t),
                t["m"],
                t["ef_search"],
                f(&t["recall_at_k"]),
                ratio(f(&o["latency"]["qps"]), faiss_qps(&t))
            )),
            _ => out.push_str(&format!("| HNSW at recall@k >= {target} | see tables | not reached by one side | |\n")),
        }
    }
    let faiss_build = faiss["hnsw"]["build_seconds"].as_object().into_iter().flatten().map(|(m, s)| format!("{:.1} (M={m})", f(s))).collect::<Vec<_>>().join(", ");
    out.push_str(&format!("| HNSW build s | {:.1} (M={}) | {faiss_build} | |\n", f(&graph["build_seconds"]), graph["options"]["connectivity"]));
    out
}
