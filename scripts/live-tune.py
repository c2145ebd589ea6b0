#!/usr/bin/env python3
"""Search latency while `lookalike tune` runs beside a server and the server takes up its result.

    scripts/live-tune.py DB [--tune "--label articleType --augment 5000"] [--out docs/bench/live-tune.md]

Copies DB (a catalog made by `lookalike index`, untuned) into a temporary directory and serves
the copy. While one client keeps searching with a catalog photo (the first product's, sent as
an upload, k = 10), it runs `lookalike tune --db COPY` with the given arguments; the server
then builds its index in the new search space and swaps it in. It reports search latency
before `tune`, while `tune` trains, while the server builds the new index (times from its log)
and after the swap, and whether the results changed space. While the server builds, another
process (`lookalike index --images`) adds the searched photo again as a new product, and the
report says how soon the server's answers had it: the build must not hold up following the
catalog.
Standard library only; the server listens on 127.0.0.1 and the copy is deleted afterwards.
"""
import argparse
import http.client
import json
import os
import shlex
import subprocess
import sys
import time
import uuid

from livebench import DEFAULT_BIN, HERE, Searcher, log_times, phase_table, served_copy, write_report


# The catalog product whose photo the client searches with, and the id that photo is added
# under, as a new product, while the server builds.
PHOTO_PRODUCT = "fmnist-train-00000"
ADDED_PRODUCT = "added-during-build.png"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db")
    ap.add_argument("--tune", default="--label articleType --augment 5000", help="arguments for `lookalike tune` (quoted as one)")
    ap.add_argument("--out", default=os.path.join(HERE, "docs/bench/live-tune.md"))
    ap.add_argument("--bin", default=DEFAULT_BIN)
    args = ap.parse_args()

    with served_copy(args.bin, args.db, [], "live-tune-") as (db, port, log_path, ready):
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", f"/api/products/{PHOTO_PRODUCT}/image")
        response = conn.getresponse()
        photo = response.read()
        if response.status != 200:
            sys.exit(f"the first product's photo answered {response.status}")
        boundary = uuid.uuid4().hex
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
            + photo
            + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n10\r\n--{boundary}--\r\n'.encode()
        )
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

        def hits():
            c = http.client.HTTPConnection("127.0.0.1", port)
            c.request("POST", "/api/search", body, headers)
            return json.loads(c.getresponse().read())["hits"]

        def scores():
            return [round(h["score"], 4) for h in hits()]

        before = scores()
        searcher = Searcher(port, lambda i: ("POST", "/api/search", body, headers))
        time.sleep(5)
        t_tune = time.time()
        tuned = subprocess.run([args.bin, "tune", "--db", db, *shlex.split(args.tune)], capture_output=True, text=True)
        t_tuned = time.time()
        if tuned.returncode != 0:
            searcher.finish()
            sys.exit(f"tune failed: {tuned.stderr}")
        deadline = time.time() + 600
        building, swapped = r"the catalog's search space changed \(.*\): building", "searches now run in the catalog's new search space"
        while not log_times(log_path, building) and not log_times(log_path, swapped):
            if time.time() > deadline:
                sys.exit("the server did not take up the new space within 10 minutes")
            time.sleep(0.05)
        addition = None
        if not log_times(log_path, swapped):
            # Another process adds the photo again, as a new product, during the build.
            folder = os.path.join(os.path.dirname(db), "added")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, ADDED_PRODUCT), "wb") as f:
                f.write(photo)
            t_started = time.time()
            # Searched for while `index` runs: it commits the product, then measures the
            # catalog's likeness bands again (seconds at 60,000 products).
            adding = subprocess.Popen([args.bin, "index", "--db", db, "--images", folder], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            while ADDED_PRODUCT not in [h["id"] for h in hits()]:
                if time.time() > deadline or adding.poll() not in (None, 0):
                    searcher.finish()
                    sys.exit(f"the added product was not found (index: {adding.poll()}, {adding.stderr.read() if adding.poll() else ''})")
                time.sleep(0.02)
            t_found = time.time()
            if adding.wait() != 0:
                searcher.finish()
                sys.exit(f"index failed: {adding.stderr.read()}")
            addition = (t_started, t_found)
        while not log_times(log_path, swapped):
            if time.time() > deadline:
                sys.exit("the server did not take up the new space within 10 minutes")
            time.sleep(0.2)
        time.sleep(5)
        searcher.finish()
        after_hits = hits()
        after = [round(h["score"], 4) for h in after_hits]
        if addition and ADDED_PRODUCT not in [h["id"] for h in after_hits]:
            sys.exit(f"the product added during the build is missing from the new index's answers: {after_hits}")
        started = log_times(log_path, r"the catalog's search space changed \((.*)\)(: building| but not)")
        swapped = log_times(log_path, swapped)

    t_build, t_swap = started[0][0], swapped[0][0]
    space, rebuilt = started[0][1].group(3), started[0][1].group(4) == ": building"
    taken_up = (
        f"began building its index in the new space ({space}), and swapped it in {t_swap - t_build:.1f} s later"
        if rebuilt
        else f"took up the new space ({space}) without building anything: its indexed vectors are the same"
    )
    write_report(
        [
            "# Search while `tune` runs beside the server, and the server takes up its result",
            "",
            f"`scripts/live-tune.py {os.path.basename(args.db)} --tune \"{args.tune}\"`: {ready['products']} products; one "
            f"client uploads a catalog photo (k = 10) without pause. `tune` ran {t_tuned - t_tune:.1f} s; "
            f"{'as it finished' if t_build - t_tuned < 0.5 else f'{t_build - t_tuned:.1f} s after it finished'} the server "
            f"{taken_up}, on {os.cpu_count()} cores.",
            "",
            *phase_table(
                searcher,
                [
                    ("before `tune`", 0, t_tune),
                    ("`tune` training (same cores)", t_tune, t_build),
                    ("the server building the new index", t_build, t_swap),
                    ("after the swap", t_swap, float("inf")),
                ],
            ),
            "",
            f"Every search answered 200. The photo's top-10 scores before: {before}; after: {after}.",
            "",
            *(
                [
                    f"`lookalike index --images` of one photo (the searched photo again, as `{ADDED_PRODUCT}`) started "
                    f"{addition[0] - t_build:.1f} s into the build; the server's answers had it {addition[1] - addition[0]:.2f} s after "
                    f"it started, {'before' if addition[1] < t_swap else 'after'} the swap ({t_swap - addition[0]:.1f} s after it started), "
                    "and after the swap too (the build replayed it into the new index).",
                    "",
                ]
                if addition
                else []
            ),
        ],
        args.out,
    )


if __name__ == "__main__":
    main()
