"""Ranker inputs: (user, item, history) rows → dense features and a KeyedJaggedTensor.

`ranker_inputs` is the one function that builds model inputs, used by training and by the server's
feature hydration alike.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torchrec import KeyedJaggedTensor

from feedcore.features import ItemFeatures, NewItems
from ranker.model import SPARSE_FEATURES


@dataclasses.dataclass
class RankerBatch:
    dense: torch.Tensor  # (B, Dd)
    sparse: KeyedJaggedTensor  # keys SPARSE_FEATURES, stride B
    labels: torch.Tensor | None = None  # (B, T), NaN = missing

    def to(self, device: str) -> RankerBatch:
        return RankerBatch(
            self.dense.to(device),
            self.sparse.to(torch.device(device)),
            None if self.labels is None else self.labels.to(device),
        )


def ranker_inputs(
    user: np.ndarray,
    item: np.ndarray,
    history: np.ndarray,
    item_features: ItemFeatures,
    labels: np.ndarray | None = None,
    source: np.ndarray | None = None,
    extra_dense: np.ndarray | None = None,
    *,
    new_items: NewItems | None = None,
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
        new_items: content of the rows whose item is outside the vocabulary (item index 0), e.g.
            generated posts; every other row's content is looked up in `item_features`.
    """
    b = len(item)
    hist_mask = history > 0
    hist_lengths = hist_mask.sum(1)
    content = item_features.content(item, new_items)
    ones = np.ones(b, np.int64)
    if source is None:
        source = np.zeros(b, np.int64)
    lengths = np.concatenate([ones, ones, hist_lengths, ones, content.category_lengths, ones])
    values = np.concatenate([user, item, history[hist_mask], content.content_type, content.category_values, source])
    sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=list(SPARSE_FEATURES),
        values=torch.from_numpy(values.astype(np.int64)),
        lengths=torch.from_numpy(lengths.astype(np.int32)),
    )
    dense = np.stack([content.popularity, np.log1p(hist_lengths).astype(np.float32)], axis=1)
    if extra_dense is not None:
        dense = np.concatenate([dense, extra_dense], axis=1)
    return RankerBatch(
        dense=torch.from_numpy(dense.astype(np.float32)),
        sparse=sparse,
        labels=None if labels is None else torch.from_numpy(labels.astype(np.float32)),
    )
