#!/usr/bin/env python3
"""What a metadata change costs through a server without the catalog (a replica), per binary.

    scripts/replica-writes.py DB --store qdrant://HOST:PORT [--collection NAME] [--bin B]... \
        [--rounds N] [--changes N]

Sends DB (a catalog made by `lookalike index`, e.g. `--fashion-mnist train --limit 2000`) to a
collection with `lookalike sync` (the first binary), then for each round serves the collection
with each binary in turn (`serve --no-catalog`, the order alternating round by round) and times
N `PATCH /api/products/{id}` price changes on one kept-open connection, after 20 untimed ones.
Prints each binary's median and 90th percentile over every round: compare binaries measured in
the same run only. Every server writes to the same collection, so run it against a collection
no one else uses (the default name is this script's own). Standard library only.
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time

from livebench import DEFAULT_BIN, free_port

TOKEN = "replica-writes"


def serve(binary, store, collection):
    port = free_port()
    env = dict(os.environ, LOOKALIKE_LOG="warn")
    server = subprocess.Popen(
        [binary, "serve", "--no-catalog", "--store", store, "--collection", collection, "--admin-token", TOKEN, "--addr", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 600
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return server, port
        except OSError:
            pass
        if time.time() > deadline or server.poll() is not None:
            sys.exit(f"{binary} did not start serving collection {collection!r}")
        time.sleep(0.1)


def patches(port, ids, tag):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for i, product in enumerate(ids):
        body = json.dumps({"metadata": {"price": f"{tag}.{i:02d}"}})
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/merge-patch+json"}
        started = time.perf_counter()
        conn.request("PATCH", f"/api/products/{product}", body, headers)
        response = conn.getresponse()
        response.read()
        times.append((time.perf_counter() - started) * 1000)
        if response.status != 200:
            sys.exit(f"PATCH {product}: {response.status}")
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("db")
    p.add_argument("--store", required=True)
    p.add_argument("--collection", default="lookalike-replica-writes")
    p.add_argument("--bin", action="append", dest="bins")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--changes", type=int, default=100)
    args = p.parse_args()
    bins = args.bins or [DEFAULT_BIN]
    subprocess.run([bins[0], "sync", "--db", args.db, "--store", args.store, "--collection", args.collection], check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run([bins[0], "list", "--db", args.db, "--json", "--limit", str(args.changes + 20)], check=True, capture_output=True, text=True).stdout
    ids = [product["id"] for product in json.loads(out)["products"]]
    if len(ids) < args.changes + 20:
        sys.exit(f"{args.db} has {len(ids)} products; --changes {args.changes} needs {args.changes + 20}")
    timed = {b: [] for b in bins}
    for round_ in range(args.rounds):
        for binary in bins if round_ % 2 == 0 else bins[::-1]:
            server, port = serve(binary, args.store, args.collection)
            try:
                patches(port, ids[: 20], 0)
                timed[binary] += patches(port, ids[20:], round_ + 1)
            finally:
                server.terminate()
                server.wait()
    for binary, times in timed.items():
        times.sort()
        print(f"{binary}: {len(times)} PATCHes through a server without the catalog: median {statistics.median(times):.2f} ms, p90 {times[int(0.9 * len(times))]:.2f} ms")


if __name__ == "__main__":
    main()
