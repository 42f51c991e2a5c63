"""The page, the last stage of GetFeed: the served order → one page of ranked items and the cursor
to the next page (`serving.cursors`)."""

from __future__ import annotations

import dataclasses

import numpy as np

from generation.interface import GeneratedPost
from retrieval.candidates import Candidates
from serving.cursors import encode_cursor


@dataclasses.dataclass(frozen=True)
class RankedItem:
    item_id: str
    content_type: str
    title: str
    score: float
    task_scores: dict[str, float]
    source: str
    position: int
    propensity: float = 0.0  # p(this item here | the items above) on an exploring arm; 0: deterministic
    post: GeneratedPost | None = None  # set for generated posts: their text and provenance


@dataclasses.dataclass(frozen=True)
class FeedPage:
    items: list[RankedItem]
    next_cursor: str
    model_version: str
    timings_ms: dict[str, float]
    degraded: tuple[str, ...] = ()  # components that failed and were replaced by a fallback
    # The first page of an exploring session: every eligible candidate in the sampled order the
    # session pages through, with scores and propensities (what off-policy evaluation logs,
    # `serving.session_rankings`); None on any other page.
    session: list[RankedItem] | None = None


def page_of(
    candidates: Candidates,
    order: np.ndarray,
    values: np.ndarray,
    propensity: np.ndarray,
    predictions: dict[str, np.ndarray],
    *,
    offset: int,
    page_size: int,
    titles: dict[str, tuple[str, str]],
    posts: dict[str, GeneratedPost],
    user_id: str,
    version: str,
    session_ms: int,
) -> tuple[list[RankedItem], str]:
    """The `page_size` items of the served `order` (indices into `candidates`) from position
    `offset`, and the cursor to the next page ("" after the last one).

    Args:
        values: (n,) the candidates' value scores; `predictions`: task → (n,) their predictions.
        propensity: (m,) the propensity of each position of `order`.
        titles: item id → (content type, title) of the catalogue.
        posts: post id → the generated posts among the candidates (served with their text, no title).
        user_id, version, session_ms: what the cursor binds the next page to (the user, the model
            and arm, the session's start).
    """
    item_ids = candidates.item_ids
    page = order[offset : offset + page_size]
    items = []
    for position, c in enumerate(page, start=offset):
        post = posts.get(item_ids[c])
        title = titles[item_ids[c]][1] if post is None else ""
        items.append(RankedItem(
            item_id=item_ids[c], content_type=candidates.content_types[c], title=title, score=float(values[c]),
            task_scores={t: float(p[c]) for t, p in predictions.items()}, source=candidates.sources[c],
            position=position, post=post, propensity=float(propensity[position]),
        ))
    end = offset + len(page)
    next_cursor = encode_cursor(user_id, end, version, session_ms) if end < len(order) else ""
    return items, next_cursor
