#!/usr/bin/env python3
"""Writes the Fashion-MNIST test photos an `eval --per-query FILE` run drew as a folder in the
catalog layout, as a shop's held-out photos would be: images/ID.png (28x28 grey, as published)
and styles.csv (id,articleType). `eval --query-photos` on it then measures what the
`--fashion-mnist test` run measured (README, "Measuring quality on your own catalog").

    python3 scripts/fashion-mnist-query-folder.py queries.jsonl heldout/

Standard library only; reads the split from $LOOKALIKE_HOME (default ~/.cache/lookalike)."""
import gzip, json, os, struct, sys, zlib
per_query, out = sys.argv[1], sys.argv[2]
d = os.path.join(os.environ.get("LOOKALIKE_HOME") or os.path.expanduser("~/.cache/lookalike"), "fashion-mnist")
images = gzip.open(os.path.join(d, "t10k-images-idx3-ubyte.gz")).read()[16:]
def png(pixels, w, h):
    raw = b"".join(b"\x00" + pixels[y * w:(y + 1) * w] for y in range(h))
    chunk = lambda t, data: struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
os.makedirs(os.path.join(out, "images"), exist_ok=True)
rows = ["id,articleType"]
for line in open(per_query):
    q = json.loads(line)
    i = int(q["query"].rsplit("-", 1)[1])
    open(os.path.join(out, "images", q["query"] + ".png"), "wb").write(png(images[i * 784:(i + 1) * 784], 28, 28))
    rows.append(f'{q["query"]},{q["label"]}')
open(os.path.join(out, "styles.csv"), "w").write("\n".join(rows) + "\n")
print(len(rows) - 1, "photos")
