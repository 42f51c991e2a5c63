"""Candidate sources: where the items a ranker scores come from.

Each source returns (item ids, source scores) for a user, excluding items the user has seen.
"""

from __future__ import annotations

import numpy as np

from feedcore.features import FeatureSpec, pad_histories
from retrieval.embed import embed_users
from retrieval.index import ItemIndex
from retrieval.model import TwoTower


class RetrievalSource:
    """Two-tower user embedding → faiss nearest items."""

    name = "retrieval"

    def __init__(self, model: TwoTower, index: ItemIndex, spec: FeatureSpec) -> None:
        self.model = model
        self.index = index
        self.spec = spec

    def candidates(self, user_id: str, history: np.ndarray, seen: set[str], k: int) -> tuple[list[str], list[float]]:
        user = np.array([self.spec.users.encode_one(user_id)], np.int64)
        query = embed_users(self.model, user, pad_histories([history], self.spec.max_history))
        scores, ids = self.index.search(query, k + len(seen))
        out = [(i, s) for i, s in zip(ids[0], scores[0], strict=True) if i not in seen][:k]
        return [i for i, _ in out], [s for _, s in out]


class PopularSource:
    """The most engaged items of the training data: the fallback and the cold-start feed."""

    name = "popular"

    def __init__(self, item_ids: list[str], counts: np.ndarray) -> None:
        order = np.argsort(-counts, kind="stable")
        self.items = [item_ids[i] for i in order]
        self.scores = counts[order].astype(float).tolist()

    def candidates(self, user_id: str, history: np.ndarray, seen: set[str], k: int) -> tuple[list[str], list[float]]:
        ids, scores = [], []
        for item, score in zip(self.items, self.scores, strict=True):
            if item not in seen:
                ids.append(item)
                scores.append(score)
                if len(ids) == k:
                    break
        return ids, scores
