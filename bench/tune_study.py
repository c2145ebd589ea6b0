"""What else was tried for tuned shopper photos (docs/localisation-study.md).

Trains the tuned projection the way `lookalike tune` does (two layers, normalised-softmax label
term against one proxy per class, in-batch instance term, AdamW with cosine decay, 60,000
catalog vectors plus 30,000 shopper-like views), on the vectors that
`cargo run --release --example adapter_study -- fm.db DIR 30000 2000 3000` writes, and prints
P@10 by label on the 2,000 clean and perturbed test queries (perturbed: the better of the photo
as taken and straightened by best match, as search picks), with and without the kind consensus
(`src/kind.rs`), the proxy classifier's accuracy, recall@1/@10 of the 3,000 re-photographed
products, and the same with each query averaged with its mirror image (flip averaging).

Several DIRs joined by commas concatenate their vectors row by row (e.g. Lite0's and Lite2's:
the same products, photos and queries in the same order).

    pip install -r bench/requirements-study.txt
    python bench/tune_study.py --dir DIR [--epochs N --instance-weight W --input sqrt ...]
"""
import argparse
import json
import time

import numpy as np
import torch

import study_search

F = torch.nn.functional


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="adapter_study output; several joined by commas")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--instance-weight", type=float, default=2.0)
    ap.add_argument("--scale", type=float, default=16.0)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--input", choices=["raw", "sqrt"], default="raw", help="sqrt: signed square root, L2-normalised")
    ap.add_argument("--views", type=int, default=30000, help="shopper-like views to train on")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(2)

    dirs = [x.rstrip("/") + "/" for x in a.dir.split(",")]
    vectors = lambda name: np.concatenate([np.fromfile(x + name, dtype=np.float32).reshape(-1, 1280) for x in dirs], 1)
    lines = lambda name: open(dirs[0] + name).read().split("\n")
    prepare = lambda x: x if a.input == "raw" else (lambda y: y / np.linalg.norm(y, axis=1, keepdims=True))(np.sign(x) * np.sqrt(np.abs(x)))

    catalog = vectors("cat.f32")
    names = np.array(lines("cat_labels.txt"))
    classes = sorted(set(names))
    label = np.array([classes.index(n) for n in names])
    row_of = {k: i for i, k in enumerate(lines("cat_keys.txt"))}
    views = vectors("pert.f32")[: a.views]
    view_rows = np.array([row_of[k] for k in lines("pert_keys.txt")])[: a.views]
    query_label = np.array([classes.index(n) for n in lines("q_labels.txt")])
    exact_rows = np.array([row_of[k] for k in lines("exact_keys.txt")])

    x = torch.tensor(prepare(np.concatenate([catalog, views])))
    y = torch.tensor(np.concatenate([label, label[view_rows]]))
    pairs = np.stack([len(catalog) + np.arange(len(views)), view_rows], 1)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    d = x.shape[1]
    model = torch.nn.Sequential(torch.nn.Linear(d, a.hidden), torch.nn.ReLU(), torch.nn.Linear(a.hidden, a.dim)) if a.hidden else torch.nn.Linear(d, a.dim)
    proxies = torch.nn.Parameter(torch.randn(len(classes), a.dim) * 0.1)
    opt = torch.optim.AdamW([{"params": model.parameters(), "weight_decay": 1e-4}, {"params": [proxies], "weight_decay": 0.0}], lr=a.lr)
    n, batch = len(x), 256
    steps = (n + batch - 1) // batch * a.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + np.cos(np.pi * min(t, steps) / steps)))
    drop = torch.nn.Dropout(a.dropout)
    started = time.time()
    for _ in range(a.epochs):
        order = torch.tensor(rng.permutation(n))
        pair_order = rng.permutation(len(pairs))
        next_pair = 0
        for b in range(0, n, batch):
            rows = order[b : b + batch]
            z = F.normalize(model(drop(x[rows])), dim=1)
            loss = F.cross_entropy(z @ F.normalize(proxies, dim=1).T * a.scale, y[rows], label_smoothing=a.label_smoothing)
            if a.instance_weight > 0:
                picked = pairs[pair_order[np.arange(next_pair, next_pair + batch) % len(pairs)]]
                next_pair += batch
                zz = F.normalize(model(drop(x[np.concatenate([picked[:, 0], picked[:, 1]])])), dim=1)
                loss = loss + a.instance_weight * F.cross_entropy(zz[:batch] @ zz[batch:].T * a.scale, torch.arange(batch))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    trained = time.time() - started

    model.eval()
    with torch.no_grad():
        embed = lambda v: F.normalize(model(torch.tensor(prepare(v))), dim=1).numpy()
        space = embed(catalog)
        proxy = F.normalize(proxies, dim=1).numpy()
        q = {name: embed(vectors(name + ".f32")) for name in ["qc", "qp", "qs", "qcf", "qpf", "qsf", "exact"]}
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)
    best = lambda v: (v @ space.T).max(1)
    pick = lambda taken, straight: np.where((best(straight) > best(taken))[:, None], straight, taken)

    p10 = lambda v: study_search.precision_at_10(v, query_label, space, label, len(classes))
    perturbed = pick(q["qp"], q["qs"])
    flipped = pick(unit(q["qp"] + q["qpf"]), unit(q["qs"] + q["qsf"]))
    result = {
        **study_search.scores(space, label, len(classes), query_label, q["qc"], perturbed, q["exact"], exact_rows),
        "perturbed_proxy_accuracy": float(((perturbed @ proxy.T).argmax(1) == query_label).mean()),
        "clean_p10_flip_averaged": p10(unit(q["qc"] + q["qcf"])),
        "perturbed_p10_flip_averaged": p10(flipped),
        "training_seconds": round(trained, 1),
    }
    print(json.dumps({"options": vars(a), **{k: round(v, 4) for k, v in result.items()}}))


if __name__ == "__main__":
    main()
