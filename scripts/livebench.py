"""What the live-* scripts share: a served copy of a catalog, one client searching without pause
on a thread of its own, and the latency table by phase. Standard library only; the server
listens on 127.0.0.1 and the copy is deleted afterwards."""
import contextlib
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
DEFAULT_BIN = os.environ.get("LOOKALIKE_BIN", os.path.join(HERE, "target/release/lookalike"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served_copy(binary, source_db, serve_args, prefix):
    """Serves a copy of `source_db`; yields (copy's path, port, log path, /readyz answer)."""
    if not os.path.exists(binary):
        sys.exit(f"{binary} not found: run `make build` first")
    work = tempfile.mkdtemp(prefix=prefix)
    db = os.path.join(work, "catalog.db")
    shutil.copy(source_db, db)
    port = free_port()
    log_path = os.path.join(work, "server.log")
    env = dict(os.environ, LOOKALIKE_LOG="info", NO_COLOR="1")
    with open(log_path, "w") as log:
        server = subprocess.Popen([binary, "serve", "--db", db, "--addr", f"127.0.0.1:{port}", *serve_args], stdout=log, stderr=log, env=env)
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
        yield db, port, log_path, ready
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


class Searcher:
    """One client on its own thread sending `request()`'s searches without pause; every answer
    must be a 200. `latencies` holds (start time, ms) per search."""

    def __init__(self, port, request):
        self.port, self.request, self.latencies = port, request, []
        self.stop, self.failure = threading.Event(), None
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port)
        i = 0
        while not self.stop.is_set():
            method, path, body, headers = self.request(i)
            t0 = time.time()
            conn.request(method, path, body, headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                self.failure = f"search answered {response.status} during the test"
                return
            self.latencies.append((t0, (time.time() - t0) * 1000))
            i += 1

    def finish(self):
        self.stop.set()
        self.thread.join()
        if self.failure:
            sys.exit(self.failure)

    def phase(self, start, end):
        return [ms for t, ms in self.latencies if start <= t < end]


def summary(samples):
    """A table row's last three cells: searches, median ms, p99 ms."""
    xs = sorted(samples)
    if not xs:
        return "| 0 | - | - |"
    return f"| {len(xs)} | {statistics.median(xs):.2f} | {xs[min(len(xs) - 1, int(len(xs) * 0.99))]:.2f} |"


def phase_table(searcher, phases):
    """The report's table: one row per (name, start, end) phase of the searcher's latencies."""
    rows = [f"| {name} " + summary(searcher.phase(start, end)) for name, start, end in phases]
    return ["| phase | searches | median ms | p99 ms |", "|---|---|---|---|", *rows]


def log_times(log_path, pattern):
    """(time, match) of each INFO line of the server's log matching `pattern`."""
    found = []
    for line in open(log_path).read().splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        m = re.match(r"(\S+)\s+INFO .*?(" + pattern + ")", line)
        if m:
            found.append((datetime.datetime.fromisoformat(m.group(1)).timestamp(), m))
    return found


def write_report(lines, out):
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
