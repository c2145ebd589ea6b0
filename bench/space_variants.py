# Leave-one-out study of post-processing of stored catalog vectors (no re-encoding):
# centring, power normalisation, PCA and PCA-whitening, on GeM vs max pooling.
#   python3 -m venv .venv && .venv/bin/pip install -r bench/requirements.txt
#   .venv/bin/python bench/space_variants.py CATALOG.db   # catalog indexed with lookalike

import sqlite3, sys, json
import numpy as np
c = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True)
rows = c.execute('select v.key, v.vector, v.max_pooled, p.metadata from vectors v join products p on p.key=v.key order by v.key').fetchall()
G = np.stack([np.frombuffer(r[1], dtype='<f4') for r in rows])
M = np.stack([np.frombuffer(r[2], dtype='<f4') for r in rows])
lab = np.array([json.loads(r[3])['articleType'] for r in rows])
rng = np.random.default_rng(0)
q = rng.choice(len(G), 2000, replace=False)
def norm(X): return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
def p10(X, name):
    S = X[q] @ X.T
    S[np.arange(len(q)), q] = -9  # leave-one-out
    top = np.argpartition(-S, 10, axis=1)[:, :10]
    p = (lab[top] == lab[q][:, None]).mean()
    print(f"{name:40s} P@10 {p:.4f}", flush=True)
p10(G, "gem raw")
p10(M, "max raw (original)")
p10(norm(G - G.mean(0)), "gem centred")
p10(norm(M - M.mean(0)), "max centred")
p10(norm(np.hstack([norm(G - G.mean(0)), norm(M - M.mean(0))])), "concat centred")
p10(norm(np.sqrt(G)), "gem sqrt")
p10(norm(norm(np.sqrt(G)) - norm(np.sqrt(G)).mean(0)), "gem sqrt centred")
for X, nm in [(G, "gem"), (M, "max")]:
    mu = X.mean(0); Xc = X - mu
    C = Xc.T @ Xc / len(X)
    w, V = np.linalg.eigh(C)
    idx = np.argsort(-w); w = w[idx]; V = V[:, idx]
    for d in [128, 256, 512]:
        for eps_frac in [0.0, 0.1, 1.0]:
            eps = eps_frac * w[:d].mean()
            P = V[:, :d] / np.sqrt(w[:d] + eps)
            p10(norm(Xc @ P), f"{nm} pca-whiten d={d} eps={eps_frac}")
        p10(norm(Xc @ V[:, :d]), f"{nm} pca (no whiten) d={d}")
