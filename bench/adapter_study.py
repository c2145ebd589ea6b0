"""The photo adapter study (docs/localisation-study.md, "The photo adapter").

Reads what `cargo run --release --example adapter_study -- fm.db DIR 20000 2000` writes, fits
the adapter (ridge regression from shopper-like photos to their products' vectors, clean
catalog shots mapped to themselves) at several settings, and prints P@10 by label on the clean
and the perturbed test queries (perturbed: the better of the photo as taken and straightened,
by the best catalog match, as search picks). numpy as pinned in bench/requirements.txt.

    python bench/adapter_study.py DIR [RIDGE,IDENTITY_WEIGHT ...]
"""
import sys

import numpy as np

D = 1280


def main():
    d = sys.argv[1].rstrip("/") + "/"
    settings = [tuple(map(float, s.split(","))) for s in sys.argv[2:]] or [(10.0, 3.0)]
    load = lambda name: np.fromfile(d + name, dtype=np.float32).reshape(-1, D)
    text = lambda name: open(d + name).read().split("\n")
    cat, labels = load("cat.f32"), np.array(text("cat_labels.txt"))
    row_of = {k: i for i, k in enumerate(text("cat_keys.txt"))}
    photos, photo_rows = load("pert.f32"), np.array([row_of[k] for k in text("pert_keys.txt")])
    qc, qp, qs, query_labels = load("qc.f32"), load("qp.f32"), load("qs.f32"), np.array(text("q_labels.txt"))

    # The untuned search space: signed square root, minus the catalog mean, L2-normalised.
    power = lambda x: np.sign(x) * np.sqrt(np.abs(x))
    mean = power(cat).mean(0)

    def space(x):
        y = power(x) - mean
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    catalog = space(cat)

    def p10(q):
        top = np.argpartition(-(q @ catalog.T), 10, axis=1)[:, :10]
        return (labels[top] == query_labels[:, None]).mean()

    def pick(a, b):
        best = lambda q: (q @ catalog.T).max(1)
        return np.where((best(b) > best(a))[:, None], b, a)

    clean, taken, straight = space(qc), space(qp), space(qs)
    print(f"no adapter: clean {p10(clean):.4f} perturbed {p10(pick(taken, straight)):.4f}")
    x, y = space(photos), catalog[photo_rows]
    keep = catalog[np.random.default_rng(0).choice(len(catalog), len(x), replace=False)]
    xtx, xty, ktk = x.T @ x, x.T @ y, keep.T @ keep
    eye = np.eye(D)
    for ridge, weight in settings:
        w = np.linalg.solve(xtx + weight * ktk + ridge * eye, xty + weight * ktk + ridge * eye)
        u, s, vt = np.linalg.svd(w - eye)
        for rank in (None, 128):
            m = w if rank is None else eye + (u[:, :rank] * s[:rank]) @ vt[:rank]
            m = m.astype(np.float32)
            adapt = lambda q: (lambda z: z / np.linalg.norm(z, axis=1, keepdims=True))(q @ m)
            kept = "full" if rank is None else f"rank {rank}"
            print(f"ridge {ridge:g}, identity weight {weight:g}, {kept}: clean {p10(adapt(clean)):.4f} perturbed {p10(pick(adapt(taken), adapt(straight))):.4f}", flush=True)


if __name__ == "__main__":
    main()
