"""Feature hydration, the second stage of GetFeed: a request's candidates → the ranker's inputs.

Every feature comes from the training transform (`ranker.batching.ranker_inputs`) at the request's
time, so what the server feeds the model is what training fed it. Generated posts are not in the
item vocabulary (item index 0): their content stands in for an id (`post_features`): their source
items' categories, their text embedding and age, and their embedding in the retrieval item space.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from feedcore.features import FeatureSpec, ItemFeatures, NewItems, pad_histories
from ranker.batching import RankerBatch, RetrievalScorer, ranker_inputs
from ranker.model import RankerArgs
from retrieval.candidates import UserState
from retrieval.model import TwoTower


def hydrate(user: UserState, item: np.ndarray, sources: list[str], *, spec: FeatureSpec,
            item_features: ItemFeatures, ranker_args: RankerArgs, retrieval_scorer: RetrievalScorer | None,
            new_items: NewItems | None = None, request_ms: int = 0) -> RankerBatch:
    """The ranker's inputs for `user`'s B candidates (item indices `item` in `spec`, found by
    `sources`), by the training transform (`ranker_inputs`) at `request_ms`; the user tower's
    embedding is `user.embedding` when the caller computed it. `ranker_args` is the served model's:
    a source it never trained on reads as unknown."""
    users = np.full(len(item), spec.users.encode_one(user.user_id), np.int64)
    hist = np.repeat(pad_histories([user.history], spec.max_history), len(item), axis=0)
    source = ranker_args.source_ids(sources)
    return ranker_inputs(users, item, hist, item_features, source=source, new_items=new_items,
                         features=ranker_args.features, event_time=np.full(len(item), request_ms / 1000.0),
                         retrieval=retrieval_scorer, user_embedding=user.embedding)


def post_features(source_item_ids: list[tuple[str, ...]], text: np.ndarray, created_at: np.ndarray,
                  first_row: int, *, spec: FeatureSpec, item_features: ItemFeatures,
                  retrieval: TwoTower | None, retrieval_spec: FeatureSpec) -> NewItems:
    """The ranker's view of M generated posts at rows first_row.. of the batch: the union of
    their source items' categories, their (M, 384) text embeddings and age (`created_at`, unix
    seconds), and their item-space embedding from the retrieval model's content path (for the
    retrieval score and the blender's diversity; none without a retrieval model)."""
    rows = np.arange(first_row, first_row + len(source_item_ids))
    text = np.asarray(text, np.float32)
    embedding = None if retrieval is None else post_embeddings(source_item_ids, text, retrieval, retrieval_spec)
    sources = [spec.items.encode(pl.Series(ids, dtype=pl.String)) for ids in source_item_ids]
    return NewItems.from_source_items(rows, sources, item_features, text=text, created_at=created_at,
                                      embedding=embedding)


@torch.no_grad()
def post_embeddings(source_item_ids: list[tuple[str, ...]], text: np.ndarray, model: TwoTower,
                    spec: FeatureSpec) -> np.ndarray:
    """(M, D) retrieval-space embeddings of M posts from their content: the union of their
    sources' categories (items of `spec`, the retrieval model's) and their text
    (`TwoTower.content_embeddings`)."""
    cats, types = [], []
    for ids in source_item_ids:
        idx = spec.items.encode(pl.Series(ids, dtype=pl.String))
        values = [model.category_values[model.category_offsets[i]:model.category_offsets[i + 1]] for i in idx]
        cats.append(torch.unique(torch.cat(values)) if values else torch.zeros(0, dtype=torch.long))
        known = model.content_type[torch.from_numpy(idx[idx != 0])]
        types.append(int(torch.bincount(known).argmax()) if len(known) else 0)  # its sources' type, as the ranker
    lengths = torch.tensor([len(c) for c in cats])
    offsets = torch.cumsum(lengths, 0) - lengths
    content_type = torch.tensor(types, dtype=torch.long)
    out = model.content_embeddings(content_type, torch.cat(cats), offsets, torch.from_numpy(text))
    return out.numpy().astype(np.float32)
