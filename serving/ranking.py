"""Ranking, the third stage of GetFeed: the multi-task ranker's predictions of a hydrated batch."""

from __future__ import annotations

import numpy as np
import torch

from ranker.batching import RankerBatch
from ranker.model import MultiTaskRanker


@torch.no_grad()
def predict(ranker: MultiTaskRanker, batch: RankerBatch) -> dict[str, np.ndarray]:
    """Task → (B,) the ranker's predictions of the B candidates in `batch` (no candidates: empty
    arrays, without running the model)."""
    if not len(batch.dense):
        return {t: np.zeros(0) for t in ranker.task_names}
    return {k: v.numpy() for k, v in ranker(batch.dense, batch.sparse).items()}
