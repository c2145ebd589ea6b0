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


def precision_at_10(queries, query_label, space, label, classes, consensus=True):
    """P@10 by label: the share of each query's 10 best rows whose class is the query's."""
    return float((label[ranked(queries, space, label, classes, consensus)[:, :10]] == query_label[:, None]).mean())


def scores(space, label, classes, query_label, clean, perturbed, exact, exact_rows):
    """The measures both studies report: P@10 by label of the clean and perturbed queries with
    and without the kind consensus, and recall@1/@10 of the re-photographed products."""
    p10 = lambda v, consensus=True: precision_at_10(v, query_label, space, label, classes, consensus)
    found = ranked(exact, space, label, classes)
    return {
        "clean_p10": p10(clean),
        "clean_p10_any_kind": p10(clean, False),
        "perturbed_p10": p10(perturbed),
        "perturbed_p10_any_kind": p10(perturbed, False),
        "exact_recall_at_1": float((found[:, 0] == exact_rows).mean()),
        "exact_recall_at_10": float((found[:, :10] == exact_rows[:, None]).any(1).mean()),
    }
