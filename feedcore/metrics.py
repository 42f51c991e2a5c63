"""Offline metrics, as pure functions over arrays: ranking (HR@K, NDCG@K), classification (AUC,
GAUC, weighted AUC for bootstraps) and calibration (reliability bins, ECE, log loss).

Retrieval metrics use *full ranking*: the held-out item is ranked against every item in the
catalogue (no sampled negatives), the protocol of SASRec / gSASRec / HSTU-style benchmarks. With one
held-out item per user, HR@K equals Recall@K.
"""

from __future__ import annotations

import numpy as np


def rank_of_target(scores: np.ndarray, target: np.ndarray, exclude: list[np.ndarray] | None = None) -> np.ndarray:
    """0-based rank of each row's target among all columns (ties count against the target).

    Args:
        scores: (B, N) scores over the whole catalogue.
        target: (B,) column of the held-out item.
        exclude: per row, columns to remove before ranking (e.g. the user's training items and the
            padding column 0); the target itself is never excluded.
    """
    scores = scores.astype(np.float64, copy=True)
    rows = np.arange(len(target))
    target_score = scores[rows, target].copy()
    if exclude is not None:
        for r, cols in enumerate(exclude):
            scores[r, cols] = -np.inf
    scores[rows, target] = target_score
    return (scores > target_score[:, None]).sum(axis=1) + (
        (scores == target_score[:, None]).sum(axis=1) - 1
    )


def hit_rate_at_k(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(ranks < k)) if len(ranks) else 0.0


def ndcg_gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """(B,) per-row NDCG@K with one relevant item: 1/log2(rank+2) when rank < K, else 0."""
    ranks = np.asarray(ranks)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """NDCG@K with one relevant item: the mean of `ndcg_gains`."""
    return float(np.mean(ndcg_gains(ranks, k))) if len(ranks) else 0.0


def grouped_ndcg(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """NDCG@K of each group's rows (a user's candidates) ordered by score, with 0/1 `labels` as
    gains, averaged over the groups with a positive.

    Example:
        >>> grouped_ndcg(np.array([1, 1, 2, 2]), np.array([0, 1, 1, 0]), np.array([0.9, 0.1, 0.8, 0.2]), 10)
        0.8154648767857288
    """
    groups, labels, scores = np.asarray(groups), np.asarray(labels, np.float64), np.asarray(scores)
    if len(groups) == 0:
        return float("nan")

    def dcg(order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = groups[order]
        starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
        position = np.arange(len(g)) - np.repeat(starts, np.diff(np.r_[starts, len(g)]))
        gains = np.where(position < k, labels[order] / np.log2(position + 2.0), 0.0)
        return np.add.reduceat(gains, starts), starts

    actual, _ = dcg(np.lexsort((-scores, groups)))
    ideal, _ = dcg(np.lexsort((-labels, groups)))
    live = ideal > 0
    return float((actual[live] / ideal[live]).mean()) if live.any() else float("nan")


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged); NaN when one class is absent."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores), np.float64)
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def group_aucs(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray]:
    """Per group (e.g. user): the group ids, their AUC (NaN without both classes) and their sizes."""
    groups, labels, scores = np.asarray(groups), np.asarray(labels), np.asarray(scores)
    ids = np.unique(groups)
    values = np.array([auc(labels[groups == g], scores[groups == g]) for g in ids], np.float64)
    sizes = np.array([(groups == g).sum() for g in ids], np.float64)
    return ids, values, sizes


def gauc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Group AUC: per-group AUC weighted by group size, over groups with both classes."""
    _, values, sizes = group_aucs(groups, labels, scores)
    live = ~np.isnan(values)
    return float((values[live] * sizes[live]).sum() / sizes[live].sum()) if live.any() else float("nan")


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC with example weights (ties count one half), for R weight vectors at once.

    Args:
        labels: (n,) 0/1. scores: (n,). weights: (n,) or (R, n), e.g. bootstrap multiplicities.

    Returns:
        (R,) AUCs (a scalar array for 1-D weights); NaN where a class has no weight.

    Example:
        >>> y, s = np.array([0, 1, 0, 1]), np.array([0.1, 0.4, 0.35, 0.8])
        >>> float(weighted_auc(y, s, np.ones(4))) == auc(y, s)
        True
    """
    labels = np.asarray(labels).astype(bool)
    w = np.atleast_2d(np.asarray(weights, np.float64))
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # tie groups
    pos = np.add.reduceat(w[:, order] * labels[order], starts, axis=1)  # (R, G)
    neg = np.add.reduceat(w[:, order] * ~labels[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each tie group
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (pos * (below + 0.5 * neg)).sum(axis=1) / (total_pos * total_neg)
    out = np.where((total_pos > 0) & (total_neg > 0), out, np.nan)
    return out if np.ndim(weights) == 2 else out[0]


def calibration_bins(labels: np.ndarray, scores: np.ndarray, bins: int = 10,
                     weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability diagram data over `bins` equal-width bins of the predicted probability:
    per bin, the weight, the mean prediction and the observed rate (NaN for empty bins)."""
    scores = np.clip(np.asarray(scores, np.float64), 0.0, 1.0)
    labels = np.asarray(labels, np.float64)
    w = np.ones(len(scores)) if weights is None else np.asarray(weights, np.float64)
    index = np.minimum((scores * bins).astype(np.int64), bins - 1)
    weight = np.bincount(index, w, bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(index, w * scores, bins) / weight
        observed = np.bincount(index, w * labels, bins) / weight
    return weight, mean_pred, observed


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = 10,
                               weights: np.ndarray | None = None) -> float:
    """ECE: Σ_bins (bin weight / total) · |mean prediction − observed rate|.

    Example:
        >>> expected_calibration_error(np.array([0, 0, 1, 1]), np.array([0.05, 0.05, 0.95, 0.95]))
        0.05
    """
    weight, mean_pred, observed = calibration_bins(labels, scores, bins, weights)
    live = weight > 0
    if not live.any():  # no rows (say, a task no validation row carries): undefined, not 0
        return float("nan")
    return float(round((weight[live] * np.abs(mean_pred[live] - observed[live])).sum() / weight.sum(), 12))


def log_loss(labels: np.ndarray, scores: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities `scores` against 0/1 `labels`."""
    p = np.clip(np.asarray(scores, np.float64), eps, 1 - eps)
    y = np.asarray(labels, np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if len(y) else float("nan")


def full_ranking_metrics(
    scores: np.ndarray,
    target: np.ndarray,
    exclude: list[np.ndarray],
    ks: tuple[int, ...] = (10, 50, 200),
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """HR@K for each K and NDCG@10 of each row's target among all items, `exclude` removed.

    With `groups` (e.g. the content type of each row's target), the same metrics per group too,
    keyed ``"<group>/hr@10"`` and so on.
    """
    return metrics_from_ranks(rank_of_target(scores, target, exclude), ks, groups)


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = (10, 50, 200),
                       groups: np.ndarray | None = None) -> dict[str, float]:
    """HR@K for each K, NDCG@10 and the row count of 0-based target ranks; with `groups`, the
    same per group too, keyed ``"<group>/hr@10"`` and so on."""

    def summary(r: np.ndarray) -> dict[str, float]:
        out = {f"hr@{k}": hit_rate_at_k(r, k) for k in ks}
        out["ndcg@10"] = ndcg_at_k(r, 10)
        out["users"] = float(len(r))
        return out

    metrics = summary(ranks)
    if groups is not None:
        for g in np.unique(groups):
            metrics.update({f"{g}/{k}": v for k, v in summary(ranks[groups == g]).items()})
    return metrics
