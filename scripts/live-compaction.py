#!/usr/bin/env python3
"""Search latency while a running server rebuilds its search graph after mass deletions.

    scripts/live-compaction.py DB [--delete N] [--out docs/bench/live-compaction.md]

Copies DB (a Fashion-MNIST catalog made by `lookalike index --fashion-mnist train`) into a
temporary directory, serves the copy with the graph forced on (`--ann always`), and, while one
client keeps sending "more like this" searches, deletes the first N products (default a
quarter of the catalog plus 500, enough to pass the rebuild threshold) through the API. It
reports search latency before the deletions, during the deletions and the rebuild, and after
the new graph is swapped in, with the rebuild's own time from the server's log. Standard
library only; the server listens on 127.0.0.1 and the copy is deleted afterwards.
"""
import argparse
import datetime
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "live-compaction"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gauge(conn, name):
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


def summary(samples):
    xs = sorted(samples)
    if not xs:
        return "| 0 | - | - |"
    return f"| {len(xs)} | {statistics.median(xs):.2f} | {xs[min(len(xs) - 1, int(len(xs) * 0.99))]:.2f} |"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db")
    ap.add_argument("--delete", type=int, default=0, help="products to delete (default: a quarter of the catalog + 500)")
    ap.add_argument("--out", default=os.path.join(HERE, "docs/bench/live-compaction.md"))
    ap.add_argument("--bin", default=os.environ.get("LOOKALIKE_BIN", os.path.join(HERE, "target/release/lookalike")))
    args = ap.parse_args()
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} not found: run `make build` first")

    work = tempfile.mkdtemp(prefix="live-compaction-")
    db = os.path.join(work, "catalog.db")
    shutil.copy(args.db, db)
    port = free_port()
    log_path = os.path.join(work, "server.log")
    env = dict(os.environ, LOOKALIKE_LOG="info", NO_COLOR="1")
    with open(log_path, "w") as log:
        server = subprocess.Popen([args.bin, "serve", "--db", db, "--addr", f"127.0.0.1:{port}", "--ann", "always", "--admin-token", TOKEN], stdout=log, stderr=log, env=env)
    try:
        deadline = time.time() + 600
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/readyz")
                ready = json.loads(c.getresponse().read())
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    sys.exit(f"the server did not start; see {log_path}")
                time.sleep(0.5)
        products = ready["products"]
        delete = args.delete or products // 4 + 500
        ids = [f"fmnist-train-{i:05d}" for i in range(products)]
        queries = ids[delete:]

        stop = threading.Event()
        latencies = []  # (start time, ms)

        def searcher():
            conn = http.client.HTTPConnection("127.0.0.1", port)
            i = 0
            while not stop.is_set():
                body = json.dumps({"product_id": queries[i % len(queries)], "k": 10})
                t0 = time.time()
                conn.request("POST", "/api/search", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise SystemExit(f"search answered {response.status} during the test")
                latencies.append((t0, (time.time() - t0) * 1000))
                i += 1

        thread = threading.Thread(target=searcher)
        thread.start()
        time.sleep(3)
        conn = http.client.HTTPConnection("127.0.0.1", port)
        t_delete = time.time()
        for product in ids[:delete]:
            conn.request("DELETE", f"/api/products/{product}", headers={"Authorization": f"Bearer {TOKEN}"})
            response = conn.getresponse()
            response.read()
            if response.status != 204:
                sys.exit(f"deleting {product} answered {response.status}")
        t_deleted = time.time()
        # The swap shows as the dead-entry gauge falling below the deletions made.
        while gauge(conn, "lookalike_index_dead_entries") >= delete:
            if time.time() - t_deleted > 600:
                sys.exit("no rebuilt graph within 10 minutes of the deletions")
            time.sleep(0.1)
        t_swapped = time.time()
        time.sleep(3)
        stop.set()
        thread.join()
        dead_after = gauge(conn, "lookalike_index_dead_entries")
    finally:
        server.terminate()
        server.wait()

    log = open(log_path).read()
    stamps = {}
    for line in log.splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        m = re.match(r"(\S+)\s+INFO .*(rebuilding the search graph: (\d+)|search graph rebuilt)", line)
        if m:
            t = datetime.datetime.fromisoformat(m.group(1)).timestamp()
            stamps["end" if "rebuilt" in m.group(2) else "start"] = t
            if m.group(3):
                stamps["dead"] = int(m.group(3))
    shutil.rmtree(work)

    rebuild = f"{stamps['end'] - stamps['start']:.1f} s" if "start" in stamps and "end" in stamps else "not found in the log"
    phase = lambda a, b: [ms for t, ms in latencies if a <= t < b]
    lines = [
        "# Search while the graph is rebuilt",
        "",
        f"`scripts/live-compaction.py {os.path.basename(args.db)}`: {products} products served with `--ann always`; "
        f"one client sends \"more like this\" searches (k = 10) without pause while {delete} products are deleted "
        f"through the API ({t_deleted - t_delete:.1f} s). The rebuild started at {stamps.get('dead', '?')} dead entries "
        f"and took {rebuild} on {os.cpu_count()} cores; {int(dead_after)} deletions made after its copy remain as dead entries.",
        "",
        "| phase | searches | median ms | p99 ms |",
        "|---|---|---|---|",
        "| before the deletions " + summary(phase(0, t_delete)),
        "| deletions and rebuild " + summary(phase(t_delete, t_swapped)),
        "| after the swap " + summary(phase(t_swapped, float("inf"))),
        "",
        "Every search answered 200.",
        "",
    ]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
