"""Does training the model's last layer lift tuned shopper photos? (docs/localisation-study.md,
"Training the model's last layer").

`tune` trains a projection on frozen model vectors; session 22 found that no change to that
training moves perturbed P@10 (bench/tune_study.py). This asks the next question: with the
head convolution (EfficientNet-Lite0's last layer: 1x1, 320 -> 1280, then ReLU6 and GeM)
trained too, on shopper-like photos of catalog products, how far does it go?

Stage A trains `tune`'s projection (two layers, normalised-softmax label term against one proxy
per class, in-batch instance term, AdamW with cosine decay) on the frozen vectors of the 60,000
catalog photos and 30,000 shopper-like views. Stage B starts from A and trains the head
convolution with it, on the views and their catalog photos (label term on both, instance term
between them); the catalog is then re-encoded with the trained head. Both stages print P@10 by
label on 2,000 clean and perturbed test queries (perturbed: the better of the photo as taken and
straightened, as search picks) with and without the kind consensus (src/kind.rs), and
recall@1/@10 of 2,000 re-photographed catalog products.

    cargo run --release --example tail_study -- fm.db DIR 30000 2000 2000
    pip install -r bench/requirements-study.txt
    python bench/tail_study.py --dir DIR [--epochs-b 3 --lr-head 1e-3 ...]
    LAYERS=block cargo run --release --example tail_study -- fm.db DIR2 30000 2000 2000
    python bench/tail_study.py --dir DIR2 --lr-head 1e-3     # the last MBConv block trained too
"""
import argparse
import json
import time

import numpy as np
import torch

import study_search

F = torch.nn.functional
SIDE = 7


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="tail_study output")
    ap.add_argument("--epochs-a", type=int, default=12)
    ap.add_argument("--epochs-b", type=int, default=3)
    ap.add_argument("--lr-head", type=float, default=1e-4)
    ap.add_argument("--lr-b", type=float, default=2e-4, help="projection's learning rate in stage B")
    ap.add_argument("--instance-weight", type=float, default=2.0)
    ap.add_argument("--scale", type=float, default=16.0)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    d = a.dir.rstrip("/") + "/"
    layers = json.load(open(d + "convs.json"))
    channels = layers[0]["dims"][1] * layers[0]["group"]
    maps = lambda name: torch.from_numpy(np.fromfile(d + name, dtype=np.float32).reshape(-1, channels, SIDE, SIDE))
    lines = lambda name: open(d + name).read().split("\n")

    cat = maps("cat.f32")
    names = np.array(lines("cat_labels.txt"))
    classes = sorted(set(names))
    label = np.array([classes.index(n) for n in names])
    row_of = {k: i for i, k in enumerate(lines("cat_keys.txt"))}
    views = maps("pert.f32")
    view_rows = np.array([row_of[k] for k in lines("pert_keys.txt")])
    queries = {n: maps(n + ".f32") for n in ["qc", "qp", "qs", "exact"]}
    query_label = np.array([classes.index(n) for n in lines("q_labels.txt")])
    exact_rows = np.array([row_of[k] for k in lines("exact_keys.txt")])

    param = lambda file, dims: torch.nn.Parameter(torch.from_numpy(np.fromfile(d + file, dtype=np.float32).reshape(dims)))
    convs = [(param(f"conv{i}_weight.f32", l["dims"]), param(f"conv{i}_bias.f32", l["dims"][:1]), l) for i, l in enumerate(layers)]
    trained = [p for w, b, _ in convs for p in (w, b)]

    def head(m):
        # What the model does from the dumped map on (each convolution, ReLU6 where it has one),
        # then lookalike's pooling: GeM(3), L2.
        for w, b, l in convs:
            m = F.conv2d(m, w, b, padding=l["dims"][2] // 2, groups=l["group"])
            if l["relu6"]:
                m = torch.clamp(m, 0.0, 6.0)
        return F.normalize(m.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1.0 / 3.0), dim=1)

    def pooled(m):
        with torch.no_grad():
            return torch.cat([head(m[i : i + 2048]) for i in range(0, len(m), 2048)])

    projection = torch.nn.Sequential(torch.nn.Linear(1280, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 256))
    proxies = torch.nn.Parameter(torch.randn(len(classes), 256) * 0.1)
    y_cat = torch.tensor(label)

    def losses(z, y, za, zb):
        loss = F.cross_entropy(z @ F.normalize(proxies, dim=1).T * a.scale, y)
        if a.instance_weight > 0:
            loss = loss + a.instance_weight * F.cross_entropy(za @ zb.T * a.scale, torch.arange(len(za)))
        return loss

    def evaluate(stage, seconds):
        with torch.no_grad():
            embed = lambda v: F.normalize(projection(v), dim=1).numpy()
            space = embed(pooled(cat))
            q = {n: embed(pooled(m)) for n, m in queries.items()}
        best = lambda v: (v @ space.T).max(1)
        perturbed = np.where((best(q["qs"]) > best(q["qp"]))[:, None], q["qs"], q["qp"])

        result = {
            **study_search.scores(space, label, len(classes), query_label, q["qc"], perturbed, q["exact"], exact_rows),
            "training_seconds": round(seconds, 1),
        }
        print(json.dumps({"stage": stage, "options": vars(a), **{k: round(v, 4) for k, v in result.items()}}), flush=True)

    # Stage A: tune's projection on the frozen vectors.
    started = time.time()
    x = torch.cat([pooled(cat), pooled(views)])
    y = torch.cat([y_cat, y_cat[view_rows]])
    pairs = np.stack([len(cat) + np.arange(len(views)), view_rows], 1)
    opt = torch.optim.AdamW([{"params": projection.parameters(), "weight_decay": 1e-4}, {"params": [proxies], "weight_decay": 0.0}], lr=2e-3)
    n, batch = len(x), 256
    steps = (n + batch - 1) // batch * a.epochs_a
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + np.cos(np.pi * min(t, steps) / steps)))
    for _ in range(a.epochs_a):
        order = torch.tensor(rng.permutation(n))
        pair_order = rng.permutation(len(pairs))
        for i, b in enumerate(range(0, n, batch)):
            rows = order[b : b + batch]
            picked = pairs[pair_order[np.arange(i * batch, (i + 1) * batch) % len(pairs)]]
            zz = F.normalize(projection(x[np.concatenate([picked[:, 0], picked[:, 1]])]), dim=1)
            loss = losses(F.normalize(projection(x[rows]), dim=1), y[rows], zz[:batch], zz[batch:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    evaluate("A: projection on frozen vectors", time.time() - started)
    del x

    # Stage B: the head convolution trained with the projection, from stage A.
    started = time.time()
    opt = torch.optim.AdamW(
        [
            {"params": trained, "lr": a.lr_head, "weight_decay": 0.0},
            {"params": projection.parameters(), "lr": a.lr_b, "weight_decay": 1e-4},
            {"params": [proxies], "lr": a.lr_b, "weight_decay": 0.0},
        ]
    )
    half = 128
    steps = (len(views) + half - 1) // half * a.epochs_b
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + np.cos(np.pi * min(t, steps) / steps)))
    for _ in range(a.epochs_b):
        order = rng.permutation(len(views))
        for b in range(0, len(views), half):
            v = order[b : b + half]
            originals = view_rows[v]
            z = F.normalize(projection(head(torch.cat([views[v], cat[originals]]))), dim=1)
            yy = torch.cat([y_cat[originals], y_cat[originals]])
            loss = losses(z, yy, z[: len(v)], z[len(v) :])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    evaluate("B: head convolution trained too", time.time() - started)


if __name__ == "__main__":
    main()
