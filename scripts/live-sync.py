#!/usr/bin/env python3
"""What a search replica answers while `lookalike sync` sends a tuned catalog to its collection.

    scripts/live-sync.py UNTUNED_DB TUNED_DB --store qdrant://127.0.0.1:6334 [--mode swap|recreate|both]

UNTUNED_DB is a catalog made by `lookalike index`; TUNED_DB a copy of it after `lookalike tune`
changed its search space (say `--dim 64`: another dimension than the collection holds). For
each mode: `sync` fills a new collection from UNTUNED_DB, a server without the catalog
(`serve --no-catalog`) starts on it, one client searches it without pause with a catalog photo
(k = 10), then `sync --swap` (or `--recreate`) sends TUNED_DB's vectors to the collection, and
the client goes on until the server has taken up the new description. Every answer is counted
as the old space's page (the first page before the sync), the new space's (the first page
after), another page (a mix), or an error, by phase. The collections are deleted afterwards.
Standard library only; the server listens on 127.0.0.1.
"""
import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import uuid

from livebench import DEFAULT_BIN, HERE, free_port, log_times, write_report

PHOTO_PRODUCT = "fmnist-train-00000"


class Client:
    """One client searching without pause on a thread of its own: (start time, status, page)."""

    def __init__(self, port, body, headers):
        self.port, self.body, self.headers, self.answers = port, body, headers, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            t0 = time.time()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("POST", "/api/search", self.body, self.headers)
                response = conn.getresponse()
                data = response.read()
                page = tuple(h["id"] for h in json.loads(data)["hits"]) if response.status == 200 else None
                self.answers.append((t0, response.status, page))
            except (OSError, ValueError, KeyError) as e:
                self.answers.append((t0, f"{type(e).__name__}", None))

    def finish(self):
        self.stop.set()
        self.thread.join()


def run_mode(args, mode):
    collection = f"live-sync-{mode}-{os.getpid()}"
    sync = lambda db, *extra: subprocess.run([args.bin, "sync", "--db", db, "--store", args.store, "--collection", collection, *extra], capture_output=True, text=True)
    out = sync(args.untuned)
    if out.returncode != 0:
        sys.exit(f"sync failed: {out.stderr}")
    port = free_port()
    log_path = f"/tmp/live-sync-{mode}-{os.getpid()}.log"
    report = {}
    env = dict(os.environ, LOOKALIKE_LOG="info", NO_COLOR="1")
    with open(log_path, "w") as log:
        server = subprocess.Popen([args.bin, "serve", "--no-catalog", "--store", args.store, "--collection", collection, "--addr", f"127.0.0.1:{port}"], stdout=log, stderr=log, env=env)
    try:
        deadline = time.time() + 300
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", f"/api/products/{PHOTO_PRODUCT}/image")
                response = c.getresponse()
                photo = response.read()
                if response.status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                sys.exit(f"the replica did not start; see {log_path}")
            time.sleep(0.5)
        boundary = uuid.uuid4().hex
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
            + photo
            + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n10\r\n--{boundary}--\r\n'.encode()
        )
        client = Client(port, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        time.sleep(3)
        t_sync = time.time()
        out = sync(args.tuned, f"--{mode}")
        t_synced = time.time()
        if out.returncode != 0:
            client.finish()
            sys.exit(f"sync --{mode} failed: {out.stderr}")
        report = json.loads(out.stdout)
        followed = "the collection's description changed"
        while not log_times(log_path, followed):
            if time.time() > deadline + 600:
                client.finish()
                sys.exit(f"the replica did not take up the new description; see {log_path}")
            time.sleep(0.1)
        t_followed = log_times(log_path, followed)[0][0]
        time.sleep(3)
        client.finish()
    finally:
        server.terminate()
        server.wait()
        for name in [collection, f"{collection}_v2", f"{collection}_lookalike"]:
            subprocess.run(["curl", "-s", "-X", "DELETE", f"{args.http}/collections/{name}"], capture_output=True)

    old = next(page for t, status, page in client.answers if t < t_sync and status == 200)
    new = next(page for t, status, page in reversed(client.answers) if status == 200)
    rows = []
    for name, start, end in [("before the sync", 0, t_sync), (f"`sync --{mode}` running", t_sync, t_synced), ("sync done, replica not yet moved", t_synced, t_followed), ("after the replica moved", t_followed, float("inf"))]:
        answers = [(status, page) for t, status, page in client.answers if start <= t < end]
        count = lambda test: sum(1 for status, page in answers if test(status, page))
        rows.append(
            f"| {name} | {len(answers)} | {count(lambda s, p: p == old)} | {count(lambda s, p: p == new and p != old)} | "
            f"{count(lambda s, p: s == 200 and p not in (old, new))} | {count(lambda s, p: s != 200)} |"
        )
    return {
        "mode": mode,
        "seconds": t_synced - t_sync,
        "moved_after": t_followed - t_synced,
        "report": report,
        "rows": rows,
        "errors": sorted({str(status) for t, status, page in client.answers if status != 200}),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("untuned")
    ap.add_argument("tuned")
    ap.add_argument("--store", default="qdrant://127.0.0.1:6334")
    ap.add_argument("--http", default="http://127.0.0.1:6333", help="the same Qdrant's REST address, to delete the collections afterwards")
    ap.add_argument("--mode", default="both", choices=["swap", "recreate", "both"])
    ap.add_argument("--out", default=os.path.join(HERE, "docs/bench/live-sync.md"))
    ap.add_argument("--bin", default=DEFAULT_BIN)
    args = ap.parse_args()
    results = [run_mode(args, mode) for mode in (["recreate", "swap"] if args.mode == "both" else [args.mode])]
    lines = [
        "# What a replica answers while `sync` sends a tuned catalog to its collection",
        "",
        f"`scripts/live-sync.py {os.path.basename(args.untuned)} {os.path.basename(args.tuned)} --mode {args.mode}`: "
        "one server without the catalog on the collection, one client uploading a catalog photo (k = 10) without pause, "
        f"on {os.cpu_count()} cores. Each answer is the old space's first page, the new space's, another (a mix) or an error.",
        "",
    ]
    for r in results:
        lines += [
            f"## `sync --{r['mode']}`: {r['report']['in_catalog']} products, {r['seconds']:.1f} s; the replica moved {r['moved_after']:.1f} s after it ended",
            "",
            "| phase | answers | old space's page | new space's page | other page | errors |",
            "|---|---|---|---|---|---|",
            *r["rows"],
            "",
            f"Errors: {', '.join(r['errors']) or 'none'}. Report: `{json.dumps(r['report'])}`",
            "",
        ]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
