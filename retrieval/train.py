"""Training the two-tower model: canonical events → (history, next item) pairs → sampled softmax.

Example:
    >>> model, metrics = train_retrieval(config, spec, item_feats, split)   # doctest: +SKIP
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
import torch
from tqdm import tqdm

from evaluation.metrics import full_ranking_metrics
from feedcore.artifacts import Checkpoint, save_model
from feedcore.config import EngineConfig, RetrievalConfig, resolve_device
from feedcore.features import (
    FeatureSpec,
    ItemFeatures,
    histories_before_each_event,
    history_events,
    latest_histories,
    pad_histories,
)
from feedcore.prepare import load_training_inputs
from feedcore.splits import Split
from retrieval.embed import embed_items, embed_users, item_inputs
from retrieval.model import TwoTower, TwoTowerArgs, TwoTowerTrain

logger = logging.getLogger(__name__)


def model_args(config: RetrievalConfig, spec: FeatureSpec) -> TwoTowerArgs:
    return TwoTowerArgs(
        num_users=len(spec.users),
        num_items=len(spec.items),
        num_content_types=len(spec.content_types),
        num_categories=len(spec.categories),
        embedding_dim=config.embedding_dim,
        hidden_dim=config.hidden_dim,
    )


def train_retrieval(
    config: RetrievalConfig,
    spec: FeatureSpec,
    item_features: ItemFeatures,
    split: Split,
    *,
    progress: bool = True,
) -> tuple[TwoTower, dict[str, float]]:
    """Train on `split.train` and report full-ranking metrics on `split.valid`."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.device)
    examples = histories_before_each_event(split.train, spec)
    users = examples["user_idx"].to_numpy()
    targets = examples["item_idx"].to_numpy()
    histories = pad_histories(examples["history"], spec.max_history)

    counts = np.bincount(targets, minlength=len(spec.items)).astype(np.float64) + 1.0
    log_q = torch.from_numpy(np.log(counts / counts.sum())).float()
    model = TwoTower(model_args(config, spec)).to(device)
    trainer = TwoTowerTrain(model, config.temperature, log_q).to(device)
    optimizer = torch.optim.AdamW(trainer.parameters(), lr=config.learning_rate)

    n_batches = max(1, len(targets) // config.batch_size)
    for epoch in range(config.epochs):
        trainer.train()
        order = rng.permutation(len(targets))
        total = 0.0
        bar = tqdm(range(n_batches), desc=f"retrieval epoch {epoch + 1}/{config.epochs}", disable=None if progress else True)
        for b in bar:
            idx = order[b * config.batch_size : (b + 1) * config.batch_size]
            loss = trainer(
                torch.from_numpy(users[idx]).to(device),
                torch.from_numpy(histories[idx]).to(device),
                *item_inputs(item_features, targets[idx], device)[0:4],
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            bar.set_postfix(loss=f"{total / (b + 1):.3f}")
        logger.info("retrieval epoch %d: loss %.4f", epoch + 1, total / n_batches)
    metrics = evaluate_retrieval(model, spec, item_features, split.train, split.valid)
    return model, metrics


def evaluate_retrieval(
    model: TwoTower | None,
    spec: FeatureSpec,
    item_features: ItemFeatures | None,
    history: pl.DataFrame,
    heldout: pl.DataFrame,
    ks: tuple[int, ...] = (10, 50, 200),
) -> dict[str, float]:
    """Full-ranking HR@K / NDCG@10 of each user's held-out item, their history items excluded.

    With `model` None, the most-popular baseline under the same protocol (items scored by their
    number of `history` events).
    """
    if heldout.height == 0:
        return {}
    users = heldout["user_id"].to_list()
    seen = dict(history.group_by("user_id").agg(pl.col("item_id")).iter_rows())
    exclude = [np.concatenate([[0], spec.items.encode(pl.Series(seen.get(u, []), dtype=pl.String))]) for u in users]
    target = spec.items.encode(heldout["item_id"])
    if model is None:
        counts = np.bincount(spec.items.encode(history["item_id"]), minlength=len(spec.items)).astype(np.float32)
        scores = np.broadcast_to(counts, (len(users), len(counts)))
    else:
        histories = latest_histories(history, spec)
        hist = pad_histories([histories.get(u, np.zeros(0, np.int64)) for u in users], spec.max_history)
        item_emb = embed_items(model, item_features, np.arange(len(spec.items)))
        scores = embed_users(model, spec.users.encode(heldout["user_id"]), hist) @ item_emb.T  # (B, N)
    return full_ranking_metrics(scores, target, exclude, ks)


def train_retrieval_job(config: EngineConfig, *, progress: bool = True) -> tuple[Checkpoint, dict[str, float]]:
    """`feed train retrieval`: prepared data → trained two-tower checkpoint (with its features)."""
    inputs = load_training_inputs(config)
    split = Split(*(history_events(getattr(inputs.split, p), config.data.history_events)
                    for p in ("train", "valid", "test")))
    model, metrics = train_retrieval(config.retrieval, inputs.spec, inputs.item_features, split, progress=progress)
    ckpt = save_model(config.retrieval_path, kind="retrieval", model=model, config=config.retrieval, inputs=inputs,
                      history_events=config.data.history_events, metrics=metrics)
    return ckpt, metrics
