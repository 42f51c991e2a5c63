"""The blender: value-scored candidates → the order of the feed.

The value model (`ranker.value_model`) gives every candidate one score; the blender turns scores into
a feed a person wants to scroll. Greedily, position by position, it picks:

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
    span = values[by_value].max() - values[by_value].min()
    scaled = (values - values[by_value].min()) / span if span > 0 else np.zeros(n)
    types = np.asarray(content_types, dtype=object)
    # Types without a share split what the listed ones leave; dict order = first appearance by value.
    present_types = list(dict.fromkeys(types[by_value]))
    unlisted = [t for t in present_types if t not in config.type_shares]
    leftover = max(0.0, 1.0 - sum(config.type_shares.values())) / max(1, len(unlisted))
    shares = {t: config.type_shares.get(t, leftover) for t in present_types}
    placed = {t: 0 for t in shares}
    if config.diversity > 0:
        if embeddings is None:
            raise ValueError("blend: diversity > 0 needs item embeddings")
        unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        max_sim = np.full(n, -1.0)
    available = keep.copy()
    order: list[int] = []
    for position in range(depth):
        eligible = available.copy()
        if config.creator_cap and creators is not None:
            # The window is the new position and the creator_window - 1 before it.
            recent = [creators[i] for i in order[max(0, len(order) - config.creator_window + 1):]]
            full = {c for c in set(recent) if c is not None and recent.count(c) >= config.creator_cap}
            capped = eligible & np.array([c in full for c in creators], bool)
            if capped.sum() < eligible.sum():  # the cap yields only when every remaining item is capped
                eligible &= ~capped
        if shares:
            present = [t for t in shares if (eligible & (types == t)).any()]
            # The type furthest below its target share (ties: the one whose best item ranks first).
            wanted = max(present, key=lambda t: shares[t] * (position + 1) - placed[t])
            eligible &= types == wanted
        score = scaled if config.diversity == 0 else (1 - config.diversity) * scaled - config.diversity * max_sim
        candidates = np.flatnonzero(eligible)
        best = int(candidates[np.argmax(score[candidates])])
        order.append(best)
        available[best] = False
        placed[types[best]] += 1
        if config.diversity > 0:
            max_sim = np.maximum(max_sim, unit @ unit[best])
    rest = by_value[available[by_value]]
    return np.concatenate([np.asarray(order, np.int64), rest])
