#!/usr/bin/env python3
"""Python reference for lookalike's ingest throughput: the same ONNX model on the same images,
written the way a Python user would write it.

Per image: PIL ``Image.open`` + ``ImageOps.exif_transpose``; RGB with any transparency composited
onto white; the longest side scaled to the model's input size with ``Image.BILINEAR`` (Pillow's
resize is a convolution whose kernel widens when downscaling, like lookalike's resizer) and pasted
centred on a white square canvas (resize-then-pad, lookalike's ``Fit::Pad``). Per batch: numpy
normalisation ``(pixel/255 - 127/255) / (128/255)`` = ``(pixel - 127) / 128``, NCHW float32;
onnxruntime (CPUExecutionProvider, ``ORT_ENABLE_ALL``, ``intra_op_num_threads=N``,
``inter_op_num_threads=1``) fetching the ``features`` map ``[N, C, H, W]``; GeM pooling
(p = 3, clamped at 1e-6) per channel, then L2 normalisation.

Timing: the session is created and one warm-up batch (the first ``--batch`` images, the full
decode + inference path) is run before the clock starts; neither is counted. The clock then
covers everything from listing the image files to the last embedding, so ``images_per_s`` is
end-to-end throughput. Images that fail to decode are skipped (and counted in ``failed``), as
lookalike does.

``--decode-workers W`` (W >= 1) decodes the next batch on a thread pool of W threads while the
current batch is inferred, as lookalike's ingest does (Pillow and onnxruntime both release the
GIL); the default 0 is the plain serial loop. ``--sweep`` runs every combination of the
``--sweep-batches`` x ``--sweep-threads`` x ``--sweep-workers`` grids on the (``--limit``ed)
image set and reports the fastest, so that the baseline is tuned rather than handicapped.

Examples:
  PY=$(bench/setup-reference.sh)
  $PY bench/ingest_reference.py --model ~/.cache/lookalike/models/efficientnet-lite0-224px-v1.onnx \\
      --images photos/ --batch 32 --threads 2 --json ingest.json --embeddings emb.npy
  $PY bench/ingest_reference.py --model M.onnx --images photos/ --sweep --limit 512 --json sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import PIL
from PIL import Image, ImageOps

EXTENSIONS = {".png", ".jpg", ".jpeg"}
INPUT_NAME = "image"
OUTPUT_NAME = "features"
GEM_P = 3.0
GEM_EPS = 1e-6
MEAN = 127.0  # (pixel/255 - 127/255) / (128/255) == (pixel - 127) / 128
STD = 128.0


class BenchError(Exception):
    """A problem with the arguments or inputs, reported as one line without a traceback."""


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive), by extension, sorted by relative path."""
    files = [p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def to_rgb_on_white(img: Image.Image) -> Image.Image:
    """8-bit RGB; transparency (alpha channel or palette transparency) composited onto white.

    16-bit greyscale is scaled to 8 bits (Pillow's own ``convert`` would clip it to 255, all
    white), as lookalike's decoder does.
    """
    if img.mode.startswith("I;16"):
        grey = np.asarray(img).astype(np.float32) / 257.0
        img = Image.fromarray(np.rint(grey).astype(np.uint8), "L")
    has_alpha = img.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        img.mode == "P" and "transparency" in img.info
    )
    if not has_alpha:
        return img if img.mode == "RGB" else img.convert("RGB")
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def load(path: Path, size: int) -> np.ndarray:
    """Decodes one image and fits it, padded with white, into a ``size`` square: uint8 HWC."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        rgb = to_rgb_on_white(img)
    w, h = rgb.size
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    if w > 0 and h > 0:
        long = max(w, h)
        nw = min(max(round(w * size / long), 1), size)
        nh = min(max(round(h * size / long), 1), size)
        if (nw, nh) != (w, h):
            rgb = rgb.resize((nw, nh), Image.Resampling.BILINEAR)
        canvas.paste(rgb, ((size - nw) // 2, (size - nh) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def try_load(path: Path, size: int) -> np.ndarray | None:
    try:
        return load(path, size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        print(f"ingest_reference: skipped {path}: {e}", file=sys.stderr)
        return None


def normalise(pixels: list[np.ndarray]) -> np.ndarray:
    """uint8 NHWC images to the model's float32 NCHW input."""
    x = np.stack(pixels).astype(np.float32)
    x -= MEAN
    x /= STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def gem_l2(features: np.ndarray) -> np.ndarray:
    """GeM (p = 3) over H, W of an [N, C, H, W] map, then L2-normalised rows: [N, C] float32."""
    if features.ndim != 4:
        raise BenchError(f"output {OUTPUT_NAME!r} has shape {features.shape}, expected [N, C, H, W]")
    v = np.mean(np.maximum(features, GEM_EPS) ** GEM_P, axis=(2, 3)) ** (1.0 / GEM_P)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v.astype(np.float32, copy=False)


class Model:
    """An onnxruntime session configured like lookalike's encoder."""

    def __init__(self, path: Path, threads: int):
        self.threads = threads
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise BenchError(f"cannot load model {path}: {e}") from e
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
            raise BenchError(
                f"model {path} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
                f"expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}"
            )
        shape = inputs[INPUT_NAME].shape
        if len(shape) != 4 or shape[1] != 3 or not isinstance(shape[2], int) or shape[2] != shape[3]:
            raise BenchError(f"model input {INPUT_NAME!r} has shape {shape}, expected [N, 3, S, S]")
        self.size = shape[2]

    def embed(self, pixels: list[np.ndarray]) -> np.ndarray:
        (features,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: normalise(pixels)})
        return gem_l2(features)


def run_once(model: Model, root: Path, limit: int | None, batch: int, workers: int, keep: bool):
    """One timed pass: list, decode, infer, pool.

    Returns (seconds, images embedded, images failed, embeddings or None, their paths or None).
    """
    start = time.perf_counter()
    paths = list_images(root)[:limit]
    batches = [paths[i : i + batch] for i in range(0, len(paths), batch)]
    vectors: list[np.ndarray] = []
    embedded: list[Path] = []
    done = failed = 0

    def finish(chunk: list[Path], decoded: list[np.ndarray | None]):
        nonlocal done, failed
        ok = [d for d in decoded if d is not None]
        failed += len(decoded) - len(ok)
        if ok:
            v = model.embed(ok)
            done += len(ok)
            if keep:
                vectors.append(v)
                embedded.extend(p for p, d in zip(chunk, decoded) if d is not None)

    if workers <= 0:
        for chunk in batches:
            finish(chunk, [try_load(p, model.size) for p in chunk])
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:

            def submit(chunk: list[Path]):
                return [pool.submit(try_load, p, model.size) for p in chunk]

            pending = submit(batches[0]) if batches else []
            for i, chunk in enumerate(batches):
                decoded = [f.result() for f in pending]
                # Decode the next batch while this one is inferred.
                pending = submit(batches[i + 1]) if i + 1 < len(batches) else []
                finish(chunk, decoded)
    seconds = time.perf_counter() - start
    if not keep:
        return seconds, done, failed, None, None
    return seconds, done, failed, (np.concatenate(vectors) if vectors else None), embedded


def measure(model: Model, root: Path, limit: int | None, batch: int, workers: int, repeat: int, keep: bool):
    """Warm-up, then ``repeat`` timed passes. Returns (result row, embeddings, their paths)."""
    # Warm-up (not timed): the first batch through the whole path, so that lazy initialisation
    # (thread pools, allocator arenas, kernels picked for this batch shape) is not counted.
    warm = [d for d in (try_load(p, model.size) for p in list_images(root)[:limit][:batch]) if d is not None]
    if warm:
        model.embed(warm)
    runs, emb, emb_paths, images, failed = [], None, None, 0, 0
    for r in range(repeat):
        seconds, images, failed, e, ep = run_once(model, root, limit, batch, workers, keep and r == 0)
        runs.append(seconds)
        if r == 0:
            emb, emb_paths = e, ep
    best = min(runs)
    row = {
        "images": images,
        "failed": failed,
        "seconds": best,
        "images_per_s": images / best if best > 0 else 0.0,
        "batch": batch,
        "threads": model.threads,
        "decode_workers": workers,
        "runs_seconds": runs,
    }
    return row, emb, emb_paths


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError("empty list")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Python reference ingest benchmark (PIL + numpy + onnxruntime, GeM pooling).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:" + __doc__.split("Examples:", 1)[1],
    )
    p.add_argument("--model", type=Path, required=True, help="ONNX model with input 'image' and output 'features'")
    p.add_argument("--images", type=Path, required=True, help="folder of *.png/*.jpg/*.jpeg images (recursive)")
    p.add_argument("--batch", type=int, default=32, help="images per inference batch (default 32)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("--decode-workers", type=int, default=0,
                   help="threads decoding the next batch during inference; 0 = serial (default)")
    p.add_argument("--limit", type=int, help="use only the first N images (sorted order)")
    p.add_argument("--repeat", type=int, default=1, help="timed passes per configuration; the fastest is reported")
    p.add_argument("--json", type=Path, required=True, help="where to write the results")
    p.add_argument("--embeddings", type=Path, help="save the [n, C] float32 embeddings (sorted file order) as .npy")
    p.add_argument("--paths", type=Path, help="save the image paths, one a line, in embedding order")
    p.add_argument("--sweep", action="store_true", help="try every batch x threads x workers and report the best")
    p.add_argument("--sweep-batches", type=int_list, default=[1, 2, 4, 8, 16, 32], help="default 1,2,4,8,16,32")
    p.add_argument("--sweep-threads", type=int_list, default=[1, 2], help="default 1,2")
    cores = os.cpu_count() or 1
    p.add_argument("--sweep-workers", type=int_list, default=[0, cores],
                   help=f"default 0,{cores} (serial, and a pool of one thread per core)")
    a = p.parse_args(argv)
    if not a.model.is_file():
        p.error(f"--model {a.model}: no such file")
    if not a.images.is_dir():
        p.error(f"--images {a.images}: not a folder")
    for name in ("batch", "threads", "repeat"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1")
    if a.decode_workers < 0:
        p.error("--decode-workers must be 0 or more")
    if a.limit is not None and a.limit < 1:
        p.error("--limit must be at least 1")
    if a.sweep and (min(a.sweep_batches) < 1 or min(a.sweep_threads) < 1 or min(a.sweep_workers) < 0):
        p.error("sweep batches and threads must be >= 1, workers >= 0")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    n_listed = len(list_images(a.images)[: a.limit])
    if n_listed == 0:
        raise BenchError(f"no *.png/*.jpg/*.jpeg files under {a.images}")
    keep = a.embeddings is not None or a.paths is not None

    sweep = None
    if a.sweep:
        sweep, result, emb, emb_paths = [], None, None, None
        for threads in a.sweep_threads:
            model = Model(a.model, threads)  # one session per thread count, reused across batches
            for batch in a.sweep_batches:
                for workers in a.sweep_workers:
                    row, e, ep = measure(model, a.images, a.limit, batch, workers, a.repeat, keep)
                    print(f"ingest_reference: batch {batch:3d} threads {threads} workers {workers}: "
                          f"{row['images_per_s']:8.1f} images/s", file=sys.stderr)
                    sweep.append(row)
                    if result is None or row["images_per_s"] > result["images_per_s"]:
                        result, emb, emb_paths = dict(row), e, ep
    else:
        model = Model(a.model, a.threads)
        result, emb, emb_paths = measure(model, a.images, a.limit, a.batch, a.decode_workers, a.repeat, keep)

    if result["images"] == 0:
        raise BenchError(f"none of the {n_listed} images under {a.images} could be decoded")
    result.update({
        "model": str(a.model),
        "image_size": model.size,
        "images_dir": str(a.images),
        "limit": a.limit,
        "timing": "end to end (listing files to last embedding) after one untimed warm-up batch; "
                  "session creation not timed; seconds is the fastest of runs_seconds",
        "onnxruntime": ort.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    })
    if emb is not None:
        result["embedding_dim"] = int(emb.shape[1])
    if sweep is not None:
        result["sweep"] = sweep
        result["best"] = {k: result[k] for k in ("batch", "threads", "decode_workers", "images_per_s")}

    if a.embeddings is not None and emb is not None:
        np.save(a.embeddings, emb)
    if a.paths is not None and emb_paths is not None:
        a.paths.write_text("".join(f"{p.relative_to(a.images).as_posix()}\n" for p in emb_paths))
    a.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"ingest_reference: {result['images']} images in {result['seconds']:.3f} s = "
          f"{result['images_per_s']:.1f} images/s (batch {result['batch']}, threads {result['threads']}, "
          f"decode workers {result['decode_workers']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"ingest_reference: error: {e}", file=sys.stderr)
        sys.exit(1)
