#!/usr/bin/env python3
"""Generates the hostile-input corpus for lookalike's reliability tests.

Run from anywhere (Python 3.11 with Pillow >= 10 and numpy):

    /root/.cache/lookalike/bench-venv/bin/python tests/hostile/make_corpus.py [--samples DIR]

It writes, next to this script:

* ``files/``          -- upload-style inputs: valid images in awkward encodings, damaged
                         images, decompression bombs and things that are not images at all;
* ``manifest.json``   -- one entry per file in ``files/``:
                         ``{"file", "expect": "ok"|"reject", "why", ...}``
                         "ok"     = a valid image: the server must decode it and answer 200 with
                                    results. Such entries also carry ``"size": [w, h]``, the
                                    size after the EXIF orientation is applied (for a GIF, the
                                    first frame / logical screen).
                         "reject" = the server must answer a 4xx JSON error: never a 5xx, never
                                    a hang, never a crash. Such entries also carry an advisory
                                    ``"kind"``: the ``preprocess::ImageError`` variant expected
                                    from reading src/preprocess.rs ("empty",
                                    "unsupported_format", "corrupt", "too_large").
* ``catalogs/``       -- hostile catalogs in the Kaggle "Fashion Product Images" layout
                         (``styles.csv`` + ``images/ID.jpg``), one per sub-folder;
* ``catalogs.json``   -- what the importer must do with each catalog.

Not on disk, on purpose: a catalog whose ``styles.csv`` has a million columns (or one line of
hundreds of MB). Committing it would bloat the repository; the Rust test that needs it writes it
into a temporary directory at run time (see the ``wide`` entry of ``catalogs.json``).

Determinism: every random byte comes from ``numpy.random.default_rng(SEED)`` streams, the
source photos are fixed (scikit-image's sample images), and the hand-built files (PNG bombs,
16-bit PNG, patched JPEGs, fake HEIC/PDF/SVG/HTML) are byte-for-byte reproducible. Files
encoded by Pillow (JPEG, WebP, GIF, ...) are reproducible for a given Pillow / libjpeg /
libwebp build; a different build may change their bytes but not what they are, so the
manifest stays valid.

The script re-creates ``files/`` and ``catalogs/`` from scratch, then verifies its own output
with Pillow: every "ok" file must decode to the stated size, and the reject files must not
decode to a complete image (where Pillow and the `image` crate differ this is noted in the
manifest's "why" and checked accordingly).

The server's decoder, for reference (src/preprocess.rs): the `image` crate 0.25 (zune-jpeg,
png, image-webp, gif, bmp, tiff), format sniffed from the content (never the file name),
header-checked limit of 40,000,000 pixels, 50 MB byte limit, EXIF orientation applied, alpha
composited on white, JPEGs walked to the end-of-image marker so a truncated upload is refused.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, features

SEED = 20240611
HERE = Path(__file__).resolve().parent
FILES = HERE / "files"
CATALOGS = HERE / "catalogs"
DEFAULT_SAMPLES = Path("/root/.cache/lookalike/samples")

MAX_PIXELS = 40_000_000  # the server's DecodeLimits::default().max_pixels



# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def rng(stream: int) -> np.random.Generator:
    """An independent, seeded random stream per use, so adding a file never changes another."""
    return np.random.default_rng([SEED, stream])


def random_bytes(stream: int, n: int) -> bytes:
    return rng(stream).integers(0, 256, size=n, dtype=np.uint8).tobytes()


def photo(samples: Path, name: str, width: int) -> Image.Image:
    """A real photo, downscaled to `width` pixels wide (aspect ratio kept), in RGB or RGBA."""
    im = Image.open(samples / name)
    im.load()
    if im.mode not in ("RGB", "RGBA"):
        im = im.convert("RGB")
    height = max(1, round(im.height * width / im.width))
    return im.resize((width, height), Image.Resampling.LANCZOS)


def cutout(im: Image.Image) -> Image.Image:
    """The photo inside a centred disc with a 2-pixel soft edge; outside it alpha is 0 and the
    colour is black (so dropping alpha instead of compositing on white shows up as black)."""
    w, h = im.size
    y, x = np.mgrid[0:h, 0:w]
    r = np.hypot(x - (w - 1) / 2, y - (h - 1) / 2)
    edge = 0.42 * min(w, h)
    alpha = np.clip((edge - r) / 2.0, 0.0, 1.0)
    rgb = np.asarray(im.convert("RGB"), dtype=np.float64) * (alpha > 0)[..., None]
    a = (alpha * 255).round().astype(np.uint8)
    return Image.fromarray(np.dstack([rgb.astype(np.uint8), a]), mode="RGBA")


def encode(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_by_hand(width: int, height: int, bit_depth: int, color_type: int, rows) -> bytes:
    """A PNG built chunk by chunk. `rows` yields each row's raw bytes (without the filter
    byte); rows are fed to zlib level 9 as they come, so a multi-GB image is never in memory."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    z = zlib.compressobj(9)
    parts = []
    batch = []
    for row in rows:
        batch.append(b"\x00" + row)  # filter type 0 (None)
        if len(batch) >= 512:
            parts.append(z.compress(b"".join(batch)))
            batch = []
    parts.append(z.compress(b"".join(batch)))
    parts.append(z.flush())
    idat = b"".join(parts)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_segments(data: bytes):
    """Yields (marker, offset_of_FF, segment_length) for the header segments of a JPEG, up to
    and including SOS. Only for our own, well-formed JPEGs."""
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    i = 2
    while i < len(data):
        assert data[i] == 0xFF, f"expected a marker at {i}"
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        yield marker, i, length
        if marker == 0xDA:
            return
        i += 2 + length


def jpeg_insert_segment(data: bytes, marker: int, payload: bytes) -> bytes:
    """Inserts an APPn (or other) segment after SOI and the APP0/JFIF segment, if any."""
    assert len(payload) + 2 <= 0xFFFF, "a segment holds at most 65533 bytes of payload"
    at = 2
    for m, off, length in jpeg_segments(data):
        if m == 0xE0:
            at = off + 2 + length
        break
    segment = bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload
    return data[:at] + segment + data[at:]


def jpeg_patch_sof(data: bytes, width: int, height: int) -> bytes:
    """Rewrites the frame size in the SOFn header (leaving the scan data as it is)."""
    for marker, off, _length in jpeg_segments(data):
        if marker in (0xC0, 0xC1, 0xC2):
            out = bytearray(data)
            # FF Cn | length(2) | precision(1) | height(2) | width(2)
            struct.pack_into(">HH", out, off + 5, height, width)
            return bytes(out)
    raise ValueError("no SOF segment")


def exif_with_orientation(n: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = n
    return exif.tobytes()


# EXIF orientation n says how the stored pixels must be transformed for display. To make the
# eight files *look the same* once oriented, each stores the inverse transform of the upright
# photo. (Orientations 2, 3, 4, 5 and 7 are their own inverses; 6 and 8 are each other's.)
DISPLAY_TRANSFORM = {  # as applied by ImageOps.exif_transpose / image::apply_orientation
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,  # 90 degrees clockwise
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,   # 90 degrees counter-clockwise
}
STORE_TRANSFORM = {**DISPLAY_TRANSFORM, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------

class Corpus:
    def __init__(self) -> None:
        self.entries: list[dict] = []

    def add(self, name: str, data: bytes, expect: str, why: str, *, size=None, kind=None) -> None:
        assert expect in ("ok", "reject")
        assert all(e["file"] != name for e in self.entries), name
        (FILES / name).write_bytes(data)
        entry = {"file": name, "expect": expect, "why": why}
        if expect == "ok":
            assert size is not None, name
            entry["size"] = list(size)
        else:
            assert kind in ("empty", "unsupported_format", "corrupt", "too_large"), name
            entry["kind"] = kind
        self.entries.append(entry)


def build_files(samples: Path) -> list[dict]:
    c = Corpus()

    cat = photo(samples, "chelsea.png", 150)      # 150x100 RGB, non-square
    coffee = photo(samples, "coffee.png", 160)    # 160x107
    rocket = photo(samples, "rocket.jpg", 128)

    # --- controls -------------------------------------------------------------------------
    control = encode(cat, "JPEG", quality=90)
    c.add("control.jpg", control, "ok", "plain baseline JPEG of a real photo (control)", size=cat.size)

    # --- empty / tiny / random ------------------------------------------------------------
    c.add("empty.jpg", b"", "reject", "zero bytes", kind="empty")
    c.add("one-byte.jpg", b"\xff", "reject", "a single byte (0xFF), no format can be recognised",
          kind="unsupported_format")
    c.add("jpeg-soi-only.jpg", b"\xff\xd8\xff", "reject",
          "just the 3-byte JPEG magic: recognised as JPEG, then nothing", kind="corrupt")
    c.add("png-signature-only.png", PNG_SIGNATURE, "reject",
          "just the 8-byte PNG signature, no IHDR", kind="corrupt")
    rand = random_bytes(1, 4096)
    c.add("random.jpg", rand, "reject", "4 KiB of random bytes named .jpg", kind="unsupported_format")

    # --- truncated ------------------------------------------------------------------------
    c.add("truncated-50pct.jpg", control[: len(control) // 2], "reject",
          "the control JPEG cut at 50% (inside the scan data; zune-jpeg would decode it leniently "
          "with grey rows, the server walks the markers to EOI and refuses it)", kind="corrupt")
    c.add("truncated-300b.jpg", control[:300], "reject",
          "the control JPEG cut after 300 bytes (inside the Huffman tables)", kind="corrupt")
    png_full = encode(coffee, "PNG", optimize=False)
    c.add("truncated-50pct.png", png_full[: len(png_full) // 2], "reject",
          "a PNG cut at 50% (inside IDAT, no IEND)", kind="corrupt")
    if features.check("webp"):
        webp_full = encode(coffee, "WEBP", quality=80, method=4)
        c.add("truncated-50pct.webp", webp_full[: len(webp_full) // 2], "reject",
              "a lossy WebP cut at 50% (RIFF/VP8 sizes claim more data than present; image-webp "
              "reports reading past the end of the bitstream)", kind="corrupt")

    # --- wrong magic / wrong name ---------------------------------------------------------
    png_as_jpg = encode(rocket, "PNG")
    c.add("png-named-as.jpg", png_as_jpg, "ok",
          "a valid PNG with a .jpg name: the server sniffs the content, not the name", size=rocket.size)
    garbage_head = random_bytes(2, 16) + control[16:]
    c.add("jpeg-garbage-head.jpg", garbage_head, "reject",
          "the control JPEG with its first 16 bytes (SOI + APP0 header) overwritten with random bytes",
          kind="unsupported_format")
    c.add("text-named.png", b"This is not a PNG, it is a text file with a .png name.\n", "reject",
          "plain text named .png", kind="unsupported_format")

    # --- absurd sizes / bombs -------------------------------------------------------------
    small = encode(photo(samples, "coffee.png", 64), "JPEG", quality=85)
    c.add("jpeg-sof-65500x65500.jpg", jpeg_patch_sof(small, 65500, 65500), "reject",
          "a complete 64 px JPEG whose SOF0 header claims 65500x65500 (4.29 Gpx); must be refused "
          "from the header, before any allocation", kind="too_large")

    bomb_w = bomb_h = 30000
    bomb_row = bytes((bomb_w + 7) // 8)
    c.add("bomb-30000x30000.png",
          png_by_hand(bomb_w, bomb_h, 1, 0, (bomb_row for _ in range(bomb_h))), "reject",
          "decompression bomb: 30000x30000 (900 Mpx) 1-bit greyscale, complete all-zero IDAT "
          "(112 MB inflated, 900 MB+ once expanded to 8 bits) in ~110 KB", kind="too_large")

    c.add("png-zero-width.png",
          png_by_hand(0, 16, 8, 0, (b"" for _ in range(16))), "reject",
          "PNG whose IHDR declares width 0", kind="corrupt")

    big = 6000
    white_row = b"\xff" * (big * 3)
    c.add("big-6000x6000-white.png",
          png_by_hand(big, big, 8, 2, (white_row for _ in range(big))), "ok",
          "6000x6000 RGB all-white PNG: 36 Mpx, just under the 40 Mpx limit (108 MB decoded), "
          "tiny thanks to zlib", size=(big, big))

    # --- animation ------------------------------------------------------------------------
    c.add("gif-10000-frames.gif", gif_many_frames(10_000), "ok",
          "animated GIF with 10,000 4x4 frames: the first frame must decode, without reading "
          "(or allocating) all the others", size=(4, 4))

    # --- bit depths, colour types ---------------------------------------------------------
    arr = np.asarray(coffee.convert("RGB"), dtype=np.uint16)
    arr16 = (arr * 257 + rng(3).integers(0, 257, size=arr.shape)).astype(">u2")
    c.add("rgb16.png",
          png_by_hand(coffee.width, coffee.height, 16, 2, (r.tobytes() for r in arr16)), "ok",
          "16-bit-per-channel RGB PNG (hand-built; Pillow reads it as 8-bit RGB)", size=coffee.size)

    grey = np.asarray(cat.convert("L"), dtype=np.uint16) * 257
    grey16 = Image.frombytes("I;16", cat.size, grey.astype("<u2").tobytes())
    c.add("grey16.png", encode(grey16, "PNG"), "ok", "16-bit greyscale PNG", size=cat.size)

    c.add("grey.jpg", encode(cat.convert("L"), "JPEG", quality=90), "ok",
          "single-channel greyscale JPEG", size=cat.size)

    c.add("cmyk.jpg", encode(cat.convert("CMYK"), "JPEG", quality=90), "ok",
          "CMYK JPEG (Adobe APP14, 4 components); the decoder converts it to RGB", size=cat.size)

    c.add("palette.png", encode(coffee.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG"),
          "ok", "palette PNG (colour type 3, 64 colours)", size=coffee.size)

    pal = cat.convert("P", palette=Image.Palette.ADAPTIVE, colors=31)
    pal_arr = np.array(pal) + 1  # indices 1..31: the photo; index 0: reserved for transparency
    pal_arr[:, : cat.width // 3] = 0  # left third = index 0, which tRNS makes transparent
    pal_t = Image.fromarray(pal_arr.astype(np.uint8), mode="P")
    pal_t.putpalette([0, 0, 0] + pal.getpalette()[: 31 * 3])
    c.add("palette-transparent.png", encode(pal_t, "PNG", transparency=0), "ok",
          "palette PNG with a tRNS chunk: index 0 (left third) fully transparent", size=cat.size)

    la = cat.convert("L")
    alpha = Image.linear_gradient("L").resize(cat.size)
    la_img = Image.merge("LA", (la, alpha))
    c.add("grey-alpha.png", encode(la_img, "PNG"), "ok",
          "greyscale + alpha PNG (colour type 4), alpha a vertical gradient", size=cat.size)

    logo = cutout(photo(samples, "astronaut.png", 160))  # 160x160 RGBA, transparent outside a disc
    c.add("rgba-transparent-bg.png", encode(logo, "PNG"), "ok",
          "RGBA cut-out: a photo inside a soft-edged disc, fully transparent background (alpha 0, "
          "colour black underneath) that must be composited on white", size=logo.size)

    c.add("one-pixel.png", encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"), "ok",
          "1x1 pixel PNG", size=(1, 1))

    strip = Image.fromarray(np.tile(np.linspace(0, 255, 3000, dtype=np.uint8)[None, :, None], (2, 1, 3)))
    c.add("strip-3000x2.png", encode(strip, "PNG"), "ok",
          "3000x2 strip (extreme aspect ratio: the short side rounds to 0 when fitted to the model size)",
          size=(3000, 2))
    c.add("strip-2x3000.png", encode(strip.transpose(Image.Transpose.TRANSPOSE), "PNG"), "ok",
          "2x3000 strip (the same, standing up)", size=(2, 3000))

    c.add("progressive.jpg", encode(coffee, "JPEG", quality=85, progressive=True), "ok",
          "progressive JPEG (SOF2, multiple scans)", size=coffee.size)

    trailing = control + b"MotionPhoto_Data" + random_bytes(4, 2048)
    c.add("jpeg-trailing-data.jpg", trailing, "ok",
          "valid JPEG followed by 2 KB after EOI (as phones append motion-photo video)", size=cat.size)

    if features.check("webp"):
        c.add("lossy.webp", encode(coffee, "WEBP", quality=80, method=4), "ok",
              "lossy WebP (VP8)", size=coffee.size)
        c.add("lossless.webp", encode(cat, "WEBP", lossless=True), "ok",
              "lossless WebP (VP8L)", size=cat.size)
        c.add("lossy-alpha.webp", encode(logo, "WEBP", quality=80), "ok",
              "lossy WebP with alpha (VP8X + ALPH + VP8)", size=logo.size)
    else:
        print("warning: this Pillow cannot write WebP; WebP files skipped", file=sys.stderr)

    c.add("image.bmp", encode(cat, "BMP"), "ok", "24-bit BMP", size=cat.size)
    c.add("image.tiff", encode(cat, "TIFF"), "ok", "uncompressed RGB TIFF", size=cat.size)

    # --- EXIF orientation -----------------------------------------------------------------
    upright = photo(samples, "chelsea.png", 120)  # 120x80 upright
    for n in range(1, 9):
        t = STORE_TRANSFORM[n]
        stored = upright if t is None else upright.transpose(t)
        c.add(f"exif-orientation-{n}.jpg",
              encode(stored, "JPEG", quality=92, exif=exif_with_orientation(n)), "ok",
              f"EXIF Orientation={n}; pixels stored so that, once oriented, all eight show the same "
              f"upright {upright.width}x{upright.height} photo", size=upright.size)

    # --- oversized / garbage metadata -----------------------------------------------------
    c.add("jpeg-huge-app1-garbage.jpg", jpeg_insert_segment(control, 0xE1, random_bytes(5, 60_000)),
          "ok", "valid JPEG with a 60 KB APP1 segment of random bytes (valid length, not EXIF)",
          size=cat.size)
    bad_exif = b"Exif\x00\x00II*\x00" + struct.pack("<I", 0xFFFFFFF0) + random_bytes(6, 60_000)
    c.add("jpeg-huge-exif-garbage.jpg", jpeg_insert_segment(control, 0xE1, bad_exif), "ok",
          "valid JPEG with a 60 KB APP1 'Exif' segment: TIFF header whose IFD offset points past "
          "the end, then garbage; orientation falls back to none", size=cat.size)

    # --- not images -----------------------------------------------------------------------
    svg = (b'<?xml version="1.0" encoding="UTF-8"?>\n'
           b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64">\n'
           b'  <rect width="64" height="64" fill="#c33"/>\n'
           b'  <circle cx="32" cy="32" r="20" fill="#fff"/>\n'
           b'</svg>\n')
    c.add("image.svg", svg, "reject", "SVG (vector, text) is not a supported format",
          kind="unsupported_format")
    heic = (struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic"
            + bytes(1000))
    c.add("fake.heic", heic, "reject",
          "ISO-BMFF header with brand 'heic' followed by zeros (HEIC is not supported)",
          kind="unsupported_format")
    pdf = (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
           b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n"
           b"trailer << /Root 1 0 R >>\n%%EOF\n")
    c.add("document.pdf", pdf, "reject", "a minimal PDF", kind="unsupported_format")
    html = (b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
            b"<body><h1>502 Bad Gateway</h1><img src=\"x.jpg\"></body></html>\n")
    c.add("error-page.html", html, "reject", "an HTML error page (what a failed download saves)",
          kind="unsupported_format")

    return c.entries


def lzw_encode(pixels: bytes, min_code_size: int) -> bytes:
    """GIF-flavoured LZW (variable code width, LSB-first bit packing, clear + end codes)."""
    clear, end = 1 << min_code_size, (1 << min_code_size) + 1
    table = {bytes([i]): i for i in range(clear)}
    next_code, width = end + 1, min_code_size + 1
    acc = nbits = 0
    out = bytearray()

    def emit(code: int) -> None:
        nonlocal acc, nbits
        acc |= code << nbits
        nbits += width
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8

    emit(clear)
    w = b""
    for p in pixels:
        wc = w + bytes([p])
        if wc in table:
            w = wc
            continue
        emit(table[w])
        if next_code < 4096:
            table[wc] = next_code
            next_code += 1
            if next_code == (1 << width) + 1 and width < 12:
                width += 1
        w = bytes([p])
    if w:
        emit(table[w])
    emit(end)
    if nbits:
        out.append(acc & 0xFF)
    return bytes(out)


def gif_sub_blocks(data: bytes) -> bytes:
    return b"".join(bytes([len(data[i:i + 255])]) + data[i:i + 255] for i in range(0, len(data), 255)) + b"\x00"


def gif_many_frames(n: int) -> bytes:
    """An n-frame animated GIF89a on a 4x4 logical screen, built by hand: Pillow's writer adds
    about 40 bytes per frame, too many for 10,000 frames in a small file. Frame 0 covers the
    whole screen; every later frame is a 1x1 patch (a Graphic Control Extension with a 20 ms
    delay, an image descriptor and 2 bytes of LZW data: 23 bytes) that moves round the 16
    positions and cycles through the 4 colours, so consecutive frames always differ."""
    palette = bytes([255, 255, 255, 200, 30, 30, 30, 160, 30, 30, 30, 200])  # 4 colours
    out = bytearray(b"GIF89a")
    out += struct.pack("<HHBBB", 4, 4, 0b1000_0001, 0, 0)  # global table of 2^(1+1) colours
    out += palette
    out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever
    for k in range(n):
        if k == 0:
            x, y, w, h = 0, 0, 4, 4
            pixels = bytes((i * 5) % 4 for i in range(16))
        else:
            x, y, w, h = (k % 16) % 4, (k % 16) // 4, 1, 1
            pixels = bytes([1 + (k // 16) % 3])
        out += b"\x21\xf9\x04" + struct.pack("<BHB", 0b0000_0100, 2, 0) + b"\x00"  # disposal 1, 20 ms
        out += b"\x2c" + struct.pack("<HHHHB", x, y, w, h, 0)
        out += b"\x02" + gif_sub_blocks(lzw_encode(pixels, 2))
    out += b"\x3b"
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Catalogs
# --------------------------------------------------------------------------------------------

HEADER = b"id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"


def build_catalogs(samples: Path) -> list[dict]:
    jpg = {
        name: encode(photo(samples, name, 64).convert("RGB"), "JPEG", quality=85)
        for name in ("coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png")
    }
    out = []

    # non-utf8 -------------------------------------------------------------------------------
    d = CATALOGS / "non-utf8"
    (d / "images").mkdir(parents=True)
    rows = [
        HEADER,
        b"1001,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Caf\xe9 Shirt",  # Latin-1 e-acute
        b"1002,Women,Apparel,Topwear,Tops,Cr\xe8me,Fall,2011,Casual,Na\xefve Top \xff\xfe",
        b"1003,Men,Footwear,Shoes,Casual Shoes,Black,Winter,2016,Casual,Nul\x00Byte Shoe",
        b"10\xe904,Men,Apparel,Topwear,Shirts,Red,Summer,2012,Casual,Id With Latin-1 Byte",
    ]
    (d / "styles.csv").write_bytes(b"\n".join(rows) + b"\n")
    for pid, src in (("1001", "coffee.png"), ("1002", "chelsea.png"), ("1003", "astronaut.png")):
        (d / "images" / f"{pid}.jpg").write_bytes(jpg[src])
    out.append({
        "folder": "non-utf8",
        "expect": "imports 3 products (1001, 1002, 1003), replacing invalid UTF-8 with U+FFFD "
                  "(or skipping the row), no crash; the row whose id itself holds a Latin-1 byte "
                  "(line 5, no image) is skipped and reported",
        "imported_ids": ["1001", "1002", "1003"],
        "why": "Latin-1 bytes (0xE9, 0xE8, 0xEF, 0xFF 0xFE) in text fields, a NUL byte in a "
               "product name, an invalid UTF-8 byte inside an id",
    })

    # traversal ------------------------------------------------------------------------------
    d = CATALOGS / "traversal"
    (d / "images").mkdir(parents=True)
    rows = [
        HEADER,
        b"10001,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Normal Shirt",
        b"../../etc/passwd,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Traversal Unix",
        b"..\\..\\x,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Traversal Windows",
        b"/abs/path,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Absolute Path",
        b"a/../../b,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Traversal Inside",
    ]
    (d / "styles.csv").write_bytes(b"\n".join(rows) + b"\n")
    (d / "images" / "10001.jpg").write_bytes(jpg["rocket.jpg"])
    out.append({
        "folder": "traversal",
        "expect": "imports only 10001; the traversal ids are refused/skipped (reported), "
                  "never read outside the catalog folder",
        "imported_ids": ["10001"],
        "why": "ids '../../etc/passwd', '..\\..\\x', '/abs/path', 'a/../../b' would name files "
               "outside images/ if joined into a path",
    })

    # symlink --------------------------------------------------------------------------------
    d = CATALOGS / "symlink"
    (d / "images").mkdir(parents=True)
    rows = [
        HEADER,
        b"20001,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Symlinked Image",
        b"20002,Women,Apparel,Topwear,Tops,Green,Fall,2011,Casual,Real Image",
    ]
    (d / "styles.csv").write_bytes(b"\n".join(rows) + b"\n")
    os.symlink("/etc/hostname", d / "images" / "20001.jpg")
    (d / "images" / "20002.jpg").write_bytes(jpg["chelsea.png"])
    out.append({
        "folder": "symlink",
        "expect": "symlinked image is skipped (reported), 20002 imported",
        "imported_ids": ["20002"],
        "why": "images/20001.jpg is a symlink to /etc/hostname (absolute; may dangle on machines "
               "without that file)",
    })

    # symlink to a real image outside the catalog -----------------------------------------
    d = CATALOGS / "symlink-outside-image"
    (d / "images").mkdir(parents=True)
    rows = [
        HEADER,
        b"30001,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Symlink To Outside Image",
        b"30002,Women,Apparel,Topwear,Tops,Green,Fall,2011,Casual,Real Image",
    ]
    (d / "styles.csv").write_bytes(b"\n".join(rows) + b"\n")
    os.symlink("../../../files/control.jpg", d / "images" / "30001.jpg")
    (d / "images" / "30002.jpg").write_bytes(jpg["motorcycle_left.png"])
    out.append({
        "folder": "symlink-outside-image",
        "expect": "30001 skipped (its image is a symlink leaving the catalog folder), 30002 imported",
        "imported_ids": ["30002"],
        "why": "images/30001.jpg is a relative symlink to tests/hostile/files/control.jpg: a valid "
               "JPEG, so only a symlink check (not a decode failure) keeps it out",
    })

    # wide: generated at run time ----------------------------------------------------------
    out.append({
        "folder": "wide",
        "generated_at_runtime": True,
        "expect": "the import fails with a clear error or skips the row, in bounded memory and "
                  "time; no crash, no hang",
        "why": "a styles.csv with a million columns (or a single multi-hundred-MB line); not "
               "committed, the Rust test writes it into a temporary directory",
    })
    return out


# --------------------------------------------------------------------------------------------
# Self-check with Pillow
# --------------------------------------------------------------------------------------------

def pillow_decode(path: Path):
    with Image.open(path) as im:
        im.load()
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # garbage EXIF: keep as stored, like the server
            pass
        return im.size, im.mode


def verify(entries: list[dict]) -> list[str]:
    problems = []
    for e in entries:
        path = FILES / e["file"]
        if e["expect"] == "ok":
            try:
                size, _mode = pillow_decode(path)
            except Exception as err:
                problems.append(f"{e['file']}: Pillow cannot decode an 'ok' file: {err}")
                continue
            if list(size) != e["size"]:
                problems.append(f"{e['file']}: Pillow size {size} != manifest {e['size']}")
        else:
            if e["file"] == "bomb-30000x30000.png":
                # Read the IHDR by hand: never inflate 900 Mpx (Pillow would refuse it anyway).
                w, h = struct.unpack(">II", path.read_bytes()[16:24])
                if w * h <= MAX_PIXELS:
                    problems.append(f"{e['file']}: header is within the limit")
                continue
            try:
                with Image.open(path) as im:
                    if im.width * im.height > MAX_PIXELS:
                        continue  # refused from the header, as the server does
                    im.load()
                    # Pillow (libjpeg) decodes JPEGs leniently only with LOAD_TRUNCATED_IMAGES;
                    # getting here means Pillow accepted a file the server must refuse.
                    problems.append(f"{e['file']}: Pillow decoded a 'reject' file ({im.size})")
            except Exception:
                pass
    # The animated GIF: every frame must be readable and there must be exactly 10,000.
    with Image.open(FILES / "gif-10000-frames.gif") as im:
        frames = 0
        try:
            while True:
                im.load()
                frames += 1
                im.seek(im.tell() + 1)
        except EOFError:
            pass
    if frames != 10_000:
        problems.append(f"gif-10000-frames.gif: Pillow reads {frames} frames")
    # The eight orientations must show the same picture once oriented.
    ref = None
    for n in range(1, 9):
        with Image.open(FILES / f"exif-orientation-{n}.jpg") as im:
            a = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.int16)
        if ref is None:
            ref = a
        elif a.shape != ref.shape or np.abs(a - ref).mean() > 4.0:
            problems.append(f"exif-orientation-{n}.jpg does not match orientation 1 once oriented")
    return problems


def main() -> int:
    warnings.filterwarnings("ignore", message="Corrupt EXIF data")  # jpeg-huge-exif-garbage.jpg
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES,
                    help="folder with the scikit-image sample photos (default: %(default)s)")
    args = ap.parse_args()

    for d in (FILES, CATALOGS):
        if d.exists():
            shutil.rmtree(d)
    FILES.mkdir(parents=True)
    CATALOGS.mkdir(parents=True)

    entries = build_files(args.samples)
    # One entry per line: easy to read and to diff.
    lines = ",\n".join("  " + json.dumps(e, ensure_ascii=False) for e in entries)
    (HERE / "manifest.json").write_text("[\n" + lines + "\n]\n")
    catalogs = build_catalogs(args.samples)
    (HERE / "catalogs.json").write_text(json.dumps(catalogs, indent=2, ensure_ascii=False) + "\n")

    problems = verify(entries)
    total = 0
    for e in entries:
        n = (FILES / e["file"]).stat().st_size
        total += n
        print(f"{e['expect']:6} {n:>9}  {e['file']}")
    print(f"{len(entries)} files, {total} bytes "
          f"({sum(e['expect'] == 'ok' for e in entries)} ok, "
          f"{sum(e['expect'] == 'reject' for e in entries)} reject)")
    for p in problems:
        print("PROBLEM:", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
