#!/usr/bin/env python3
"""FAISS reference for lookalike's vector search: the same vectors in faiss-cpu's exact
``IndexFlatIP`` and graph ``IndexHNSWFlat`` (inner product), timed the way an online search is used.

Inputs are raw little-endian float32, row-major ``n x dim`` (``--base``, ``--queries``), rows
L2-normalised, so inner product is cosine similarity. ``--truth`` (optional) is raw little-endian
int64 ``nq x K`` (K >= k) of the exact neighbours' base row ids; without it the Flat index's
results are the ground truth.

Measured, with ``faiss.omp_set_num_threads(--threads)``:
- Flat: build (add) time; single-query search, one ``index.search(q[i:i+1], k)`` call per query
  as an online service does (median, p99 and mean latency, QPS = queries / total loop time);
  batch search, all queries in one call (seconds, QPS, amortised ms per query); recall@k.
- HNSW (``IndexHNSWFlat(dim, M, METRIC_INNER_PRODUCT)``, ``efConstruction``, one graph per M of
  ``--hnsw-m``): build time, then for each ``efSearch`` the same single-query and batch
  measurements and recall@k against the truth, ``--rounds`` times, keeping the fastest round.
  ``--target-recall R`` also reports the smallest efSearch reaching recall R ("matched recall").

Each mode first runs a few untimed warm-up queries. Latency uses ``time.perf_counter_ns`` around
each Python ``search`` call, so it includes the Python/SWIG call overhead (a few microseconds) a
Python service would pay.

Example:
  PY=$(bench/setup-reference.sh)
  $PY bench/faiss_reference.py --base base.f32 --queries queries.f32 --dim 1280 --k 10 \\
      --threads 1 --json faiss.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

WARMUP_QUERIES = 20


class BenchError(Exception):
    """A problem with the arguments or inputs, reported as one line without a traceback."""


def read_matrix(path: Path, dtype: str, cols: int, what: str) -> np.ndarray:
    """A raw row-major matrix of ``cols`` columns."""
    if not path.is_file():
        raise BenchError(f"{what} {path}: no such file")
    data = np.fromfile(path, dtype=dtype)
    if data.size == 0:
        raise BenchError(f"{what} {path} is empty")
    if data.size % cols:
        itemsize = np.dtype(dtype).itemsize
        raise BenchError(
            f"{what} {path}: {path.stat().st_size} bytes is not a whole number of rows of "
            f"{cols} x {itemsize}-byte values"
        )
    return data.reshape(-1, cols)


def read_vectors(path: Path, dim: int, what: str) -> np.ndarray:
    x = np.ascontiguousarray(read_matrix(path, "<f4", dim, what), dtype=np.float32)
    if not np.isfinite(x).all():
        raise BenchError(f"{what} {path} holds NaN or infinite values")
    norms = np.linalg.norm(x, axis=1)
    if np.abs(norms - 1).max() > 1e-3:
        print(f"faiss_reference: warning: {what} rows are not L2-normalised "
              f"(norms {norms.min():.4f}..{norms.max():.4f}); inner product is not cosine", file=sys.stderr)
    return x


def read_truth(path: Path, nq: int, k: int, n: int) -> np.ndarray:
    if not path.is_file():
        raise BenchError(f"--truth {path}: no such file")
    raw = np.fromfile(path, dtype="<i8")
    if raw.size % nq:
        raise BenchError(f"--truth {path}: {raw.size} ids is not a multiple of {nq} queries")
    truth = raw.reshape(nq, -1)
    if truth.shape[1] < k:
        raise BenchError(f"--truth {path} has {truth.shape[1]} neighbours per query, fewer than k = {k}")
    truth = truth[:, :k]
    if truth.min() < 0 or truth.max() >= n:
        raise BenchError(f"--truth {path} holds row ids outside 0..{n - 1}")
    return truth


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / k (set overlap of the top-k lists; the -1 faiss
    returns for a missing result never matches)."""
    k = truth.shape[1]
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found[:, :k], truth))
    return hits / (truth.shape[0] * k)


def single_query(index, queries: np.ndarray, k: int) -> tuple[dict, np.ndarray]:
    """One search call per query, as an online service makes them."""
    for i in range(min(WARMUP_QUERIES, len(queries))):
        index.search(queries[i : i + 1], k)
    found = np.empty((len(queries), k), dtype=np.int64)
    lat = np.empty(len(queries), dtype=np.int64)
    start = time.perf_counter_ns()
    for i in range(len(queries)):
        t0 = time.perf_counter_ns()
        _, ids = index.search(queries[i : i + 1], k)
        lat[i] = time.perf_counter_ns() - t0
        found[i] = ids[0]
    total = (time.perf_counter_ns() - start) / 1e9
    ms = lat / 1e6
    return {
        "median_ms": float(np.median(ms)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
        "qps": len(queries) / total,
        "seconds": total,
    }, found


def batch_query(index, queries: np.ndarray, k: int) -> tuple[dict, np.ndarray]:
    """All queries in one search call (faiss parallelises over queries with OpenMP)."""
    index.search(queries[: min(WARMUP_QUERIES, len(queries))], k)
    start = time.perf_counter()
    _, found = index.search(queries, k)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "qps": len(queries) / seconds, "ms_per_query": seconds * 1e3 / len(queries)}, found


def timed_build(index, base: np.ndarray) -> float:
    start = time.perf_counter()
    index.add(base)
    return time.perf_counter() - start


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="FAISS (faiss-cpu) reference: exact IndexFlatIP and IndexHNSWFlat on the same vectors.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example:" + __doc__.split("Example:", 1)[1],
    )
    p.add_argument("--base", type=Path, required=True, help="raw float32 n x dim catalog vectors")
    p.add_argument("--queries", type=Path, required=True, help="raw float32 nq x dim query vectors")
    p.add_argument("--dim", type=int, required=True, help="vector dimension")
    p.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    p.add_argument("--json", type=Path, required=True, help="where to write the results")
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads for faiss (default 1)")
    p.add_argument("--hnsw-m", type=int_list, default=[32],
                   help="HNSW links per node, M; several (16,32) build one graph each (default 32)")
    p.add_argument("--ef-construction", type=int, default=200, help="HNSW efConstruction (default 200)")
    p.add_argument("--ef-search", type=int_list, default=[16, 32, 64, 128, 256],
                   help="HNSW efSearch values to try (default 16,32,64,128,256)")
    p.add_argument("--rounds", type=int, default=1,
                   help="times each efSearch is measured, round after round; the fastest round is kept (default 1)")
    p.add_argument("--truth", type=Path, help="raw int64 nq x K exact neighbour ids (default: Flat's results)")
    p.add_argument("--target-recall", type=float,
                   help="also report the smallest efSearch whose recall@k reaches this value")
    p.add_argument("--no-hnsw", action="store_true", help="measure the Flat index only")
    a = p.parse_args(argv)
    for name in ("dim", "k", "threads", "ef_construction", "rounds"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not a.hnsw_m or min(a.hnsw_m) < 2:
        p.error("--hnsw-m values must be at least 2")
    if a.target_recall is not None and not 0 < a.target_recall <= 1:
        p.error("--target-recall must be in (0, 1]")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    base = read_vectors(a.base, a.dim, "--base")
    queries = read_vectors(a.queries, a.dim, "--queries")
    n, nq, k = len(base), len(queries), a.k
    if k > n:
        raise BenchError(f"k = {k} is larger than the {n} base vectors")
    faiss.omp_set_num_threads(a.threads)
    log = lambda msg: print(f"faiss_reference: {msg}", file=sys.stderr, flush=True)  # noqa: E731

    # Exact search.
    flat = faiss.IndexFlatIP(a.dim)
    flat_build = timed_build(flat, base)
    flat_single, flat_found = single_query(flat, queries, k)
    flat_batch, flat_batch_found = batch_query(flat, queries, k)
    if a.truth is not None:
        truth, truth_source = read_truth(a.truth, nq, k, n), str(a.truth)
    else:
        truth, truth_source = flat_batch_found, "IndexFlatIP batch search"
    flat_result = {
        "build_seconds": flat_build,
        "single": flat_single,
        "batch": flat_batch,
        "recall_at_k": recall_at_k(flat_found, truth),
    }
    log(f"Flat: single {flat_single['median_ms']:.3f} ms median, {flat_single['p99_ms']:.3f} ms p99, "
        f"{flat_single['qps']:.0f} QPS; batch {flat_batch['qps']:.0f} QPS; "
        f"recall@{k} {flat_result['recall_at_k']:.4f}")

    result = {
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "n": n,
        "nq": nq,
        "dim": a.dim,
        "k": k,
        "threads": a.threads,
        "truth": truth_source,
        "timing": f"{WARMUP_QUERIES} untimed warm-up queries per mode; single = one search call per "
                  "query (perf_counter_ns around each call, Python overhead included); batch = one "
                  "call with all queries",
        "flat": flat_result,
    }

    if not a.no_hnsw:
        runs, build_seconds = [], {}
        for m in a.hnsw_m:
            hnsw = faiss.IndexHNSWFlat(a.dim, m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = a.ef_construction
            build_seconds[str(m)] = timed_build(hnsw, base)
            log(f"HNSW M={m} efConstruction={a.ef_construction}: built in {build_seconds[str(m)]:.2f} s")
            best: dict[int, dict] = {}
            # Round after round over every efSearch; each keeps its fastest single and batch round.
            for _ in range(a.rounds):
                for ef in sorted(set(a.ef_search)):
                    hnsw.hnsw.efSearch = ef
                    single, found = single_query(hnsw, queries, k)
                    batch, _ = batch_query(hnsw, queries, k)
                    row = best.setdefault(ef, {"m": m, "ef_search": ef, "single": single, "batch": batch,
                                               "recall_at_k": recall_at_k(found, truth)})
                    if single["qps"] > row["single"]["qps"]:
                        row["single"] = single
                    if batch["qps"] > row["batch"]["qps"]:
                        row["batch"] = batch
            for ef in sorted(best):
                row = best[ef]
                single, batch = row["single"], row["batch"]
                log(f"HNSW M={m} efSearch={ef}: single {single['median_ms']:.3f} ms median, {single['p99_ms']:.3f} ms p99, "
                    f"{single['qps']:.0f} QPS; batch {batch['qps']:.0f} QPS; recall@{k} {row['recall_at_k']:.4f}")
                runs.append(row)
            del hnsw
        result["hnsw"] = {
            "m": a.hnsw_m,
            "ef_construction": a.ef_construction,
            "build_seconds": build_seconds,
            "runs": runs,
        }
        if a.target_recall is not None:
            matched = next((r for r in runs if r["recall_at_k"] >= a.target_recall), None)
            result["hnsw"]["target_recall"] = a.target_recall
            result["hnsw"]["matched"] = matched
            if matched is None:
                log(f"no efSearch in {sorted(set(a.ef_search))} reaches recall@{k} {a.target_recall}")

    a.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"faiss_reference: error: {e}", file=sys.stderr)
        sys.exit(1)
