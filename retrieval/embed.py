"""Embedding items and users in batches with a trained TwoTower: for indexing, evaluation, serving."""

from __future__ import annotations

import numpy as np
import torch

from retrieval.model import TwoTower


@torch.no_grad()
def embed_items(model: TwoTower, item: np.ndarray, batch_size: int = 8192, *, content_only: bool = False) -> np.ndarray:
    """(N, D) float32 embeddings of item indices `item` (`content_only`: from content alone)."""
    if model.training:  # eval() walks every module: a per-request cost when serving
        model.eval()
    device = next(model.parameters()).device
    out = [model.item_embeddings(torch.from_numpy(item[i : i + batch_size]).to(device), content_only).cpu()
           for i in range(0, len(item), batch_size)]
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, model.args.embedding_dim), np.float32)


@torch.no_grad()
def embed_users(model: TwoTower, user: np.ndarray, history: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """(B, D) float32 embeddings of users `user` (B,) with right-aligned padded histories (B, L)."""
    if model.training:  # eval() walks every module: a per-request cost when serving
        model.eval()
    device = next(model.parameters()).device
    out = [
        model.user_embeddings(torch.from_numpy(user[i : i + batch_size]).to(device),
                              torch.from_numpy(history[i : i + batch_size]).to(device)).cpu()
        for i in range(0, len(user), batch_size)
    ]
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, model.args.embedding_dim), np.float32)
