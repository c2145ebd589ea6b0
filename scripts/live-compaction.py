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
import http.client
import json
import os
import sys
import time

from livebench import DEFAULT_BIN, HERE, Searcher, log_times, phase_table, served_copy, write_report

TOKEN = "live-compaction"


def gauge(conn, name):
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db")
    ap.add_argument("--delete", type=int, default=0, help="products to delete (default: a quarter of the catalog + 500)")
    ap.add_argument("--out", default=os.path.join(HERE, "docs/bench/live-compaction.md"))
    ap.add_argument("--bin", default=DEFAULT_BIN)
    args = ap.parse_args()

    with served_copy(args.bin, args.db, ["--ann", "always", "--admin-token", TOKEN], "live-compaction-") as (_, port, log_path, ready):
        products = ready["products"]
        delete = args.delete or products // 4 + 500
        ids = [f"fmnist-train-{i:05d}" for i in range(products)]
        queries = ids[delete:]
        searcher = Searcher(port, lambda i: ("POST", "/api/search", json.dumps({"product_id": queries[i % len(queries)], "k": 10}), {"Content-Type": "application/json"}))
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
        searcher.finish()
        dead_after = gauge(conn, "lookalike_index_dead_entries")
        stamps = {}
        for t, m in log_times(log_path, r"rebuilding the search graph: (\d+)|search graph rebuilt"):
            stamps["end" if "rebuilt" in m.group(2) else "start"] = t
            if m.group(3):
                stamps["dead"] = int(m.group(3))

    rebuild = f"{stamps['end'] - stamps['start']:.1f} s" if "start" in stamps and "end" in stamps else "not found in the log"
    write_report(
        [
            "# Search while the graph is rebuilt",
            "",
            f"`scripts/live-compaction.py {os.path.basename(args.db)}`: {products} products served with `--ann always`; "
            f"one client sends \"more like this\" searches (k = 10) without pause while {delete} products are deleted "
            f"through the API ({t_deleted - t_delete:.1f} s). The rebuild started at {stamps.get('dead', '?')} dead entries "
            f"and took {rebuild} on {os.cpu_count()} cores; {int(dead_after)} deletions made after its copy remain as dead entries.",
            "",
            *phase_table(searcher, [("before the deletions", 0, t_delete), ("deletions and rebuild", t_delete, t_swapped), ("after the swap", t_swapped, float("inf"))]),
            "",
            "Every search answered 200.",
            "",
        ],
        args.out,
    )


if __name__ == "__main__":
    main()
