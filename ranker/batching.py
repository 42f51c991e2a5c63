"""Ranker inputs: (user, item, history) rows → dense features and a KeyedJaggedTensor.

`ranker_inputs` is the one function that builds model inputs, used by training and by the server's
feature hydration alike; the optional features it adds (`ranker.model.RankerFeatures`) come from
the pure transforms of `feedcore.features` and, for the retrieval score, `RetrievalScorer`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import torch
from torchrec import KeyedJaggedTensor

from feedcore.features import FeatureSpec, ItemFeatures, NewItems, item_age, time_context
from ranker.model import RankerFeatures
from retrieval.embed import embed_items, embed_users
from retrieval.model import TwoTower


@dataclasses.dataclass
class RankerBatch:
    dense: torch.Tensor  # (B, Dd)
    sparse: KeyedJaggedTensor  # keys RankerFeatures.kjt_keys, stride B
    labels: torch.Tensor | None = None  # (B, T), NaN = missing

    def to(self, device: str) -> RankerBatch:
        return RankerBatch(
            self.dense.to(device),
            self.sparse.to(torch.device(device)),
            None if self.labels is None else self.labels.to(device),
        )


def ranker_item_embeddings(model: TwoTower, retrieval_spec: FeatureSpec, spec: FeatureSpec) -> np.ndarray:
    """(N, D) retrieval item embeddings in the ranker's item vocabulary `spec` (row 0, unknown: zeros)."""
    rows = retrieval_spec.items.encode(pl.Series(spec.items.values, dtype=pl.String))
    embeddings = np.zeros((len(spec.items), model.args.embedding_dim), np.float32)
    embeddings[1:] = embed_items(model, rows)
    return embeddings


@dataclasses.dataclass(frozen=True)
class RetrievalScorer:
    """The retrieval model's score of (user, history, item) rows, a ranker dense feature: the dot
    product of the user tower's embedding and the item's (0 for an item it cannot embed).

    Args:
        model: the trained two-tower model.
        item_embeddings: (N, D) item embeddings in the ranker's item vocabulary (`ranker_item_embeddings`).
    """

    model: TwoTower
    item_embeddings: np.ndarray

    @classmethod
    def build(cls, model: TwoTower, retrieval_spec: FeatureSpec, spec: FeatureSpec) -> RetrievalScorer:
        if retrieval_spec.users != spec.users or retrieval_spec.max_history != spec.max_history:
            raise ValueError("the retrieval model was trained with other user vocabularies or histories than the "
                             "ranker's; retrain both on one prepared dataset and config")
        return cls(model.eval(), ranker_item_embeddings(model, retrieval_spec, spec))

    def __call__(self, user: np.ndarray, history: np.ndarray, item: np.ndarray,
                 new_items: NewItems | None = None, user_embedding: np.ndarray | None = None) -> np.ndarray:
        """(B,) float32 scores; rows of `new_items` use its `embedding` when given (else 0).
        `user_embedding`: (D,) the user tower's embedding of the one (user, history) every row
        shares, when the caller has it already (a feed request: the ANN source computed it)."""
        if len(user) == 0:
            return np.zeros(0, np.float32)
        items = self.item_embeddings[item]
        if new_items is not None and new_items.embedding is not None and len(new_items.rows):
            items = items.copy()
            items[new_items.rows] = new_items.embedding
        if user_embedding is not None:
            return (items * user_embedding).sum(1).astype(np.float32)  # as below, for the same bits
        # Rows of one request (or a positive and its negatives) share a user state: embed it once.
        state, inverse = np.unique(np.column_stack([user, history]), axis=0, return_inverse=True)
        users = embed_users(self.model, np.ascontiguousarray(state[:, 0]), np.ascontiguousarray(state[:, 1:]))
        return (users[inverse.reshape(-1)] * items).sum(1).astype(np.float32)


def ranker_inputs(
    user: np.ndarray,
    item: np.ndarray,
    history: np.ndarray,
    item_features: ItemFeatures,
    labels: np.ndarray | None = None,
    source: np.ndarray | None = None,
    extra_dense: np.ndarray | None = None,
    *,
    features: RankerFeatures | None = None,
    event_time: np.ndarray | None = None,
    retrieval: RetrievalScorer | None = None,
    new_items: NewItems | None = None,
    user_embedding: np.ndarray | None = None,
    unknown_items: np.ndarray | None = None,
) -> RankerBatch:
    """Model inputs for B (user, candidate item) rows.

    Args:
        user: (B,) user indices.
        item: (B,) candidate item indices.
        history: (B, L) right-aligned history item indices, 0 = padding.
        item_features: per-item content features and popularity.
        labels: optional (B, T) float labels.
        source: optional (B,) candidate-source ids (`ranker.model.CANDIDATE_SOURCES`); unknown (0)
            when not given.
        extra_dense: optional (B, X) dense inputs appended after `DENSE_FEATURES` (the model must
            be built with ``num_dense = len(DENSE_FEATURES) + X``).
        features: the optional features the model reads (its `RankerArgs.features`; default none).
        event_time: (B,) unix seconds of each row: the event's time in training, the request's in
            serving (NaN or None = unknown); for `features.recency` and `features.context`.
        retrieval: the retrieval scorer, required with `features.retrieval_score`.
        new_items: content of the rows whose item is outside the vocabulary (item index 0), e.g.
            generated posts; every other row's content is looked up in `item_features`.
        user_embedding: (D,) the retrieval user embedding every row shares (one feed request's),
            when the caller computed it already; otherwise the scorer embeds the rows' users.
        unknown_items: optional (B,) bool: rows whose item id is fed as unknown (0) while their
            content (type, categories, text, age, popularity, retrieval score) stays the item's.
            Training's id dropout: the id-free path that new items and generated posts take.

    Returns:
        A `RankerBatch`: dense (B, Dd) = [popularity as of `event_time`, log1p history length, extra_dense, log1p age
        and age-unknown (recency), retrieval score, text (X)], each optional part only when on;
        sparse keyed by `features.kjt_keys`.
    """
    features = features or RankerFeatures()
    b = len(item)
    hist_mask = history > 0
    hist_lengths = hist_mask.sum(1)
    times = np.full(b, np.nan) if event_time is None else np.asarray(event_time, np.float64)
    content = item_features.content(item, new_items, times)
    ones = np.ones(b, np.int64)
    if source is None:
        source = np.zeros(b, np.int64)
    item_ids = item if unknown_items is None else np.where(unknown_items, 0, item)
    sparse = {
        "user_id": (ones, user), "item_id": (ones, item_ids), "history": (hist_lengths, history[hist_mask]),
        "content_type": (ones, content.content_type), "category": (content.category_lengths, content.category_values),
        "source": (ones, source),
    }
    if features.context:
        sparse["context"] = time_context(times)
    keys = features.kjt_keys
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=list(keys),
        values=torch.from_numpy(np.concatenate([sparse[k][1] for k in keys]).astype(np.int64)),
        lengths=torch.from_numpy(np.concatenate([sparse[k][0] for k in keys]).astype(np.int32)),
    )
    dense = [content.popularity[:, None], np.log1p(hist_lengths).astype(np.float32)[:, None]]
    if extra_dense is not None:
        dense.append(extra_dense)
    if features.recency:
        dense.append(item_age(times, content.created_at))
    if features.retrieval_score:
        if retrieval is None:
            raise ValueError("this ranker reads the retrieval score: pass retrieval=RetrievalScorer(...)")
        dense.append(retrieval(user, history, item, new_items, user_embedding)[:, None])
    if features.text_dim:
        if content.text is None or content.text.shape[1] != features.text_dim:
            raise ValueError(f"this ranker reads ({features.text_dim},) text embeddings: build the item features "
                             "with text (feedcore.features.item_features(..., text=...))")
        dense.append(content.text)
    return RankerBatch(
        dense=torch.from_numpy(np.concatenate(dense, axis=1).astype(np.float32)),
        sparse=kjt,
        labels=None if labels is None else torch.from_numpy(labels.astype(np.float32)),
    )
