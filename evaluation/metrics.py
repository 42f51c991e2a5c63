"""Offline metrics, as pure functions over arrays.

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


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """NDCG@K with one relevant item: 1/log2(rank+2) when rank < K."""
    if not len(ranks):
        return 0.0
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(np.mean(gains))


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


def gauc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Group AUC: per-group AUC weighted by group size, over groups with both classes."""
    total, weight = 0.0, 0
    for g in np.unique(groups):
        mask = groups == g
        value = auc(labels[mask], scores[mask])
        if not np.isnan(value):
            total += value * mask.sum()
            weight += int(mask.sum())
    return total / weight if weight else float("nan")


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
    ranks = rank_of_target(scores, target, exclude)

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
