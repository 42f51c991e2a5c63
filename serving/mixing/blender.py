"""The blender: value-scored candidates → the order of the feed.

The value model (`serving.mixing.value_model`) gives every candidate one score; the blender turns
scores into a feed a person wants to scroll. Greedily, position by position, it picks:

1. the content type that is furthest below its target share so far (`type_shares`; types without a
   share split what the listed shares leave, a type that runs out leaves its room to the others,
   and generated posts get their room the same way);
2. within it, the item with the best MMR score, (1 − λ)·value − λ·(max cosine similarity to the
   items already placed), with value min-max scaled to [0, 1] and λ = `diversity` (Carbonell &
   Goldstein, 1998);
3. skipping items whose creator would then have more than `creator_cap` items in some
   `creator_window` consecutive positions; when every remaining item is capped, the cap yields rather than the feed ending short.

Items in `exclude` (already seen) are dropped. Only the first `depth` positions are blended; the
rest follow by value. The result depends only on the inputs (ties go to the earlier candidate).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from feedcore.config import BlendConfig
from serving.mixing.value_model import value_scores


def blend(
    values: np.ndarray,
    content_types: Sequence[str],
    config: BlendConfig,
    *,
    item_ids: Sequence[str] | None = None,
    creators: Sequence[str | None] | None = None,
    embeddings: np.ndarray | None = None,
    exclude: frozenset[str] | set[str] = frozenset(),
) -> np.ndarray:
    """Candidate positions in feed order.

    Args:
        values: (n,) value-model scores.
        content_types: (n,) content type of each candidate.
        item_ids: (n,) ids, needed when `exclude` is not empty.
        creators: (n,) creator of each candidate (None: no creator, never capped).
        embeddings: (n, D) item embeddings for diversity (needed when `diversity` > 0).
        exclude: item ids to drop (already seen).

    Returns:
        (m,) int indices into the candidates, m = n minus the excluded ones.

    Example:
        >>> blend(np.array([0.9, 0.8, 0.7, 0.1]), ["video", "video", "video", "post"],
        ...       BlendConfig(type_shares={"video": 0.5, "post": 0.5})).tolist()
        [0, 3, 1, 2]
    """
    values = np.asarray(values, np.float64)
    n = len(values)
    if len(content_types) != n or (creators is not None and len(creators) != n):
        raise ValueError(f"blend: {n} values but {len(content_types)} content types"
                         + ("" if creators is None else f" and {len(creators)} creators"))
    keep = np.ones(n, bool)
    if exclude:
        if item_ids is None:
            raise ValueError("blend: item_ids are needed to exclude seen items")
        keep = np.array([i not in exclude for i in item_ids], bool)
    by_value = np.argsort(-values, kind="stable")
    by_value = by_value[keep[by_value]]
    plain = not config.type_shares and config.diversity == 0 and config.creator_cap == 0
    if plain or len(by_value) == 0:
        return by_value

    depth = min(config.depth, len(by_value))
    types = np.asarray(content_types, dtype=object)
    # Types without a share split what the listed ones leave; dict order = first appearance by value.
    present_types = list(dict.fromkeys(types[by_value]))
    unlisted = [t for t in present_types if t not in config.type_shares]
    leftover = max(0.0, 1.0 - sum(config.type_shares.values())) / max(1, len(unlisted))
    shares = np.array([config.type_shares.get(t, leftover) for t in present_types])
    code_of = {t: k for k, t in enumerate(present_types)}
    codes = np.array([code_of.get(t, -1) for t in content_types], np.int64)  # -1: only excluded items
    if config.diversity == 0 and not (config.creator_cap and creators is not None):
        order = _merge_by_type(by_value, codes, shares, depth)
    else:
        order = _greedy(values, by_value, keep, codes, shares, depth, config, creators, embeddings)
    placed = np.zeros(n, bool)
    placed[order] = True
    rest = by_value[~placed[by_value]]
    return np.concatenate([order, rest])


def blend_by_value_model(
    predictions: dict[str, np.ndarray],
    weights: dict[str, float],
    content_types: Sequence[str],
    config: BlendConfig,
    *,
    item_ids: Sequence[str],
    creators: Sequence[str | None],
    embeddings: np.ndarray | None,
    exclude: frozenset[str] | set[str],
) -> tuple[np.ndarray, np.ndarray]:
    """The mixing stage of GetFeed: the value model's (n,) scores of the candidates (task
    `predictions` weighted by `weights`, `value_scores`) and their (m,) feed order (`blend`)."""
    values = value_scores(predictions, weights)
    order = blend(values, content_types, config, item_ids=item_ids, exclude=exclude, creators=creators,
                  embeddings=embeddings)
    return values, order


def _wanted_type(shares: np.ndarray, placed: np.ndarray, present: np.ndarray, position: int) -> int:
    """The present type furthest below its target share (ties: the first in order of appearance)."""
    deficit = np.where(present, shares * (position + 1) - placed, -np.inf)
    return int(np.argmax(deficit))


def _merge_by_type(by_value: np.ndarray, codes: np.ndarray, shares: np.ndarray, depth: int) -> np.ndarray:
    """Type shares alone: each type's items in value order, merged by the share rule (the fast
    path of `_greedy` without diversity or creator caps, O(depth x types))."""
    if len(shares) == 1:  # one type present: its value order
        return by_value[:depth]
    queues = [by_value[codes[by_value] == k] for k in range(len(shares))]
    heads = np.zeros(len(shares), np.int64)
    lengths = np.array([len(q) for q in queues])
    placed = np.zeros(len(shares))
    order = np.empty(depth, np.int64)
    for position in range(depth):
        k = _wanted_type(shares, placed, heads < lengths, position)
        order[position] = queues[k][heads[k]]
        heads[k] += 1
        placed[k] += 1
    return order


def _greedy(values: np.ndarray, by_value: np.ndarray, keep: np.ndarray, codes: np.ndarray, shares: np.ndarray,
            depth: int, config: BlendConfig, creators: Sequence[str | None] | None,
            embeddings: np.ndarray | None) -> np.ndarray:
    """Position by position: the wanted type, then the best MMR score among its uncapped items."""
    n = len(values)
    span = values[by_value].max() - values[by_value].min()
    scaled = (values - values[by_value].min()) / span if span > 0 else np.zeros(n)
    if config.diversity > 0:
        if embeddings is None:
            raise ValueError("blend: diversity > 0 needs item embeddings")
        unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        max_sim = np.full(n, -1.0)
    capping = bool(config.creator_cap) and creators is not None
    if capping:
        creator_codes = {c: k for k, c in enumerate(dict.fromkeys(c for c in creators if c is not None))}
        creator_of = np.array([creator_codes.get(c, -1) if c is not None else -1 for c in creators], np.int64)
    available = keep.copy()
    placed = np.zeros(len(shares))
    order: list[int] = []
    for position in range(depth):
        eligible = available.copy()
        if capping:
            # The window is the new position and the creator_window - 1 before it.
            recent = creator_of[order[max(0, len(order) - config.creator_window + 1):]]
            counts = np.bincount(recent[recent >= 0], minlength=len(creator_codes))
            full = np.flatnonzero(counts >= config.creator_cap)
            capped = eligible & np.isin(creator_of, full)
            if capped.sum() < eligible.sum():  # the cap yields only when every remaining item is capped
                eligible &= ~capped
        present = np.bincount(codes[eligible & (codes >= 0)], minlength=len(shares)) > 0
        eligible &= codes == _wanted_type(shares, placed, present, position)
        score = scaled if config.diversity == 0 else (1 - config.diversity) * scaled - config.diversity * max_sim
        candidates = np.flatnonzero(eligible)
        best = int(candidates[np.argmax(score[candidates])])
        order.append(best)
        available[best] = False
        placed[codes[best]] += 1
        if config.diversity > 0:
            max_sim = np.maximum(max_sim, unit @ unit[best])
    return np.asarray(order, np.int64)
