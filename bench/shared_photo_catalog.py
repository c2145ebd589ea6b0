#!/usr/bin/env python3
"""A catalog folder in the Fashion Product Images layout whose products share photos, as a
shop's export lists size variants as rows of their own: the first N Fashion-MNIST training
images, each written once per variant under its own id (`images/I-V.png` + `styles.csv`, with
the image's class as `articleType` and the variant as `size`, so `tune` and `eval --label` can
use it). Standard library only.

    python3 bench/shared_photo_catalog.py /tmp/variants --photos 1000 --variants 3
    lookalike index --db variants.db --kaggle /tmp/variants   # "2000 of them with another product's photo"
    python3 bench/shared_photo_catalog.py /tmp/rekeyed --photos 1000 --variants 1 --prefix SKU-
    lookalike index --db variants.db --kaggle /tmp/rekeyed    # the same photos under new ids: none encoded
"""
import argparse
import gzip
import os
import struct
import zlib


CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def png(pixels: bytes, width: int, height: int) -> bytes:
    """An 8-bit greyscale PNG of `pixels` (row-major)."""
    raw = b"".join(b"\x00" + pixels[y * width:(y + 1) * width] for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="folder to write (images/ and styles.csv)")
    parser.add_argument("--photos", type=int, default=1000, help="distinct photos (the first N training images)")
    parser.add_argument("--variants", type=int, default=3, help="products listed with each photo")
    parser.add_argument("--prefix", default="", help="put before every id (the same photos under new ids)")
    default_dir = os.path.join(os.environ.get("LOOKALIKE_HOME", os.path.expanduser("~/.cache/lookalike")), "fashion-mnist")
    parser.add_argument("--fashion-mnist-dir", default=default_dir, help="where `make setup` put Fashion-MNIST")
    args = parser.parse_args()

    with gzip.open(os.path.join(args.fashion_mnist_dir, "train-images-idx3-ubyte.gz"), "rb") as f:
        data = f.read()
    _, count, height, width = struct.unpack(">IIII", data[:16])
    with gzip.open(os.path.join(args.fashion_mnist_dir, "train-labels-idx1-ubyte.gz"), "rb") as f:
        labels = f.read()[8:]
    if args.photos > count:
        parser.error(f"--photos {args.photos}: the training set has {count} images")
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    size = height * width
    rows = ["id,articleType,size"]
    for i in range(args.photos):
        photo = png(data[16 + i * size:16 + (i + 1) * size], width, height)
        for v in range(args.variants):
            product = f"{args.prefix}{i}-{v}"
            with open(os.path.join(args.out, "images", f"{product}.png"), "wb") as f:
                f.write(photo)
            rows.append(f"{product},{CLASSES[labels[i]]},{v}")
    with open(os.path.join(args.out, "styles.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    print(f"{args.photos * args.variants} products over {args.photos} photos in {args.out}")


if __name__ == "__main__":
    main()
