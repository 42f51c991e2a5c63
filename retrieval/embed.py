"""Turning feature arrays into tower inputs and embeddings: shared by training, indexing and serving."""

from __future__ import annotations

import numpy as np
import torch

from feedcore.features import ItemFeatures
from retrieval.model import TwoTower


def item_inputs(features: ItemFeatures, item: np.ndarray, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    """(item, content_type, category_values, category_offsets) tensors for item indices `item` (B,)."""
    lengths, values = features.categories_of(item)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return tuple(
        torch.from_numpy(np.ascontiguousarray(a)).to(device)
        for a in (item, features.content_type[item], values, offsets)
    )


@torch.no_grad()
def embed_items(model: TwoTower, features: ItemFeatures, item: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """(N, D) float32 embeddings of item indices `item`."""
    model.eval()
    device = next(model.parameters()).device
    out = [model.item_tower(*item_inputs(features, item[i : i + batch_size], str(device))).cpu()
           for i in range(0, len(item), batch_size)]
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, model.args.embedding_dim), np.float32)


@torch.no_grad()
def embed_users(model: TwoTower, user: np.ndarray, history: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """(B, D) float32 embeddings of users `user` (B,) with padded histories (B, L)."""
    model.eval()
    device = next(model.parameters()).device
    out = [
        model.user_tower(torch.from_numpy(user[i : i + batch_size]).to(device),
                         torch.from_numpy(history[i : i + batch_size]).to(device)).cpu()
        for i in range(0, len(user), batch_size)
    ]
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, model.args.embedding_dim), np.float32)
