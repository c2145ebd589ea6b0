#!/usr/bin/env python3
"""What a metadata change costs through the API: PATCH against sending the product again.

    scripts/catalog-writes.py DB [--rounds N] [--out docs/bench/catalog-writes.md]

Serves a copy of DB (a catalog made by `lookalike index`, e.g. `--fashion-mnist train`) with an
admin token and, for N products (default 100), changes each one's price twice, alternating the
two ways a shop can: `PATCH /api/products/{id}` with `{"metadata": {"price": ...}}`, and
`POST /api/products` with the product's own photo (read back from the server first, not timed)
and its metadata with the new price (a photo the catalog has: its stored vectors are taken,
nothing is encoded; before session 51 the photo was encoded again). Reports the medians and
90th percentiles of both, measured in the same run on one kept-open connection. Standard
library only; the server listens on 127.0.0.1 and the copy is deleted afterwards.
"""
import argparse
import http.client
import json
import os
import statistics
import sys
import time
import uuid

from livebench import DEFAULT_BIN, HERE, served_copy, write_report

TOKEN = "catalog-writes"


def timed(conn, method, path, body, headers, expected):
    started = time.perf_counter()
    conn.request(method, path, body=body, headers={"Authorization": f"Bearer {TOKEN}", **headers})
    response = conn.getresponse()
    text = response.read()
    ms = (time.perf_counter() - started) * 1000
    if response.status != expected:
        sys.exit(f"{method} {path} answered {response.status}: {text[:300]!r}")
    return ms, json.loads(text)


def multipart(fields, photo):
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode() for name, value in fields]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode() + photo + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def percentile(samples, q):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--out", default=os.path.join(HERE, "docs/bench/catalog-writes.md"))
    ap.add_argument("--bin", default=DEFAULT_BIN)
    args = ap.parse_args()

    with served_copy(args.bin, args.db, ["--admin-token", TOKEN], "catalog-writes-") as (_, port, _, ready):
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", f"/api/products?limit={args.rounds}")
        products = json.loads(conn.getresponse().read())["products"]
        patch_ms, post_ms = [], []
        for i, product in enumerate(products):
            conn.request("GET", product["image_url"])
            photo = conn.getresponse().read()
            for way in (("patch", "post") if i % 2 == 0 else ("post", "patch")):
                price = f"{10 + len(patch_ms) + len(post_ms)}.99"
                if way == "patch":
                    body = json.dumps({"metadata": {"price": price}})
                    ms, shown = timed(conn, "PATCH", f"/api/products/{product['id']}", body, {"Content-Type": "application/merge-patch+json"}, 200)
                    patch_ms.append(ms)
                else:
                    metadata = dict(product["metadata"], price=price)
                    body, headers = multipart([("id", product["id"]), ("metadata", json.dumps(metadata))], photo)
                    ms, shown = timed(conn, "POST", "/api/products", body, headers, 201)
                    post_ms.append(ms)
                if shown["price"] != price:
                    sys.exit(f"{way} of {product['id']} shows price {shown['price']!r}, not {price!r}")

    patch_median, post_median = statistics.median(patch_ms), statistics.median(post_ms)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "unknown CPU")
    lines = [
        "# A metadata change through the API: PATCH against sending the product again",
        "",
        f"`scripts/catalog-writes.py DB --rounds {args.rounds}`: {ready['products']} products, model {ready['model']}; "
        f"each of {len(products)} products' price changed once each way, alternating which goes first, one kept-open connection; "
        f"{cpu}, {os.cpu_count()} cores.",
        "",
        "| way | median | p90 | changes |",
        "|---|---|---|---|",
        f"| `PATCH /api/products/{{id}}` (metadata alone) | {patch_median:.2f} ms | {percentile(patch_ms, 0.9):.2f} ms | {len(patch_ms)} |",
        f"| `POST /api/products` (photo and metadata; the photo the catalog has, its vectors taken) | {post_median:.2f} ms | {percentile(post_ms, 0.9):.2f} ms | {len(post_ms)} |",
        "",
        f"PATCH is {post_median / patch_median:.1f}x faster at the median, and needs no photo at hand.",
    ]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
