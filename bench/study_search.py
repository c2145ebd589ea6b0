"""Search as lookalike ranks, for the PyTorch studies (tune_study.py, tail_study.py)."""
import numpy as np


def ranked(queries, space, label, classes, consensus=True, k=100):
    """Each query's k best catalog rows (cosine on unit vectors), best first; with `consensus`,
    re-ranked by the kind consensus of src/kind.rs: the 10 best vote on the kind, weighted
    exp((score - best) / 0.05); each candidate gains 0.2 x (its kind's share - the candidates'
    mean share). `label` is each catalog row's class index, `classes` how many there are."""
    s = queries @ space.T
    top = np.argpartition(-s, k, axis=1)[:, :k]
    score = np.take_along_axis(s, top, 1)
    order = np.argsort(-score, 1)
    top, score = np.take_along_axis(top, order, 1), np.take_along_axis(score, order, 1)
    if not consensus:
        return top
    kinds = label[top]
    vote = np.exp((score[:, :10] - score[:, :1]) / 0.05)
    share = np.stack([(vote * (kinds[:, :10] == c)).sum(1) / vote.sum(1) for c in range(classes)], 1)
    lift = np.take_along_axis(share, kinds, 1)
    lifted = score + 0.2 * (lift - lift.mean(1, keepdims=True))
    return np.take_along_axis(top, np.argsort(-lifted, 1), 1)
