"""Training the two-tower model.

- ``mean`` user tower: (history before an event, its item) pairs.
- ``sasrec`` / ``hstu``: every position of each user's sequence predicts the next item (as in
  SASRec).

Both use one loss: a softmax over the whole catalogue (`num_negatives = 0`, for small catalogues),
or over shared uniform negatives plus negatives drawn from the batch's targets, with logQ
correction and accidental hits masked.

Example:
    >>> model, metrics = train_retrieval(config, spec, item_feats, split)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn
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
    sequences,
)
from feedcore.prepare import load_training_inputs
from feedcore.splits import Split
from feedcore.text import item_text_embeddings
from retrieval.embed import embed_items, embed_users
from retrieval.index import ItemIndex
from retrieval.model import TwoTower, TwoTowerArgs

logger = logging.getLogger(__name__)


def model_args(config: RetrievalConfig, spec: FeatureSpec, text_dim: int = 0) -> TwoTowerArgs:
    return TwoTowerArgs(
        num_users=len(spec.users),
        num_items=len(spec.items),
        num_content_types=len(spec.content_types),
        num_categories=max(2, len(spec.categories)),
        embedding_dim=config.embedding_dim,
        hidden_dim=config.hidden_dim,
        user_encoder=config.user_encoder,
        num_blocks=config.num_blocks,
        num_heads=config.num_heads,
        dropout=config.dropout,
        max_len=spec.max_history,
        normalize=config.normalize,
        text_dim=text_dim,
        id_dropout=config.id_dropout,
    )


class SampledSoftmaxLoss(nn.Module):
    """Softmax cross-entropy of (query, positive item) pairs against the whole catalogue, or
    against shared sampled negatives with logQ correction.

    Args:
        model: the TwoTower whose items are scored.
        config: temperature, `num_negatives` (0 = full softmax) and `in_batch_negatives`.
        item_frequency: (N,) each item's share of training targets (the in-batch sampling
            distribution, for the logQ correction).
    """

    def __init__(self, model: TwoTower, config: RetrievalConfig, item_frequency: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.temperature = config.temperature if model.args.normalize else 1.0
        self.num_negatives = config.num_negatives
        self.in_batch = config.in_batch_negatives
        self.register_buffer("frequency", item_frequency)

    def forward(self, query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """query (P, D), target (P,) item indices → mean loss."""
        n = self.model.args.num_items
        device = query.device
        if self.num_negatives == 0 or self.num_negatives >= n - 1:
            items = self.model.item_embeddings(torch.arange(1, n, device=device))  # (N-1, D)
            return F.cross_entropy(query @ items.T / self.temperature, target - 1)
        uniform = torch.randint(1, n, (self.num_negatives,), device=device)
        in_batch = target[torch.randint(0, len(target), (self.in_batch,), device=device)]
        candidates = torch.cat([uniform, in_batch])  # (S,)
        unique, inverse = torch.unique(torch.cat([target, candidates]), return_inverse=True)
        embedded = self.model.item_embeddings(unique)
        positive, negative = embedded[inverse[: len(target)]], embedded[inverse[len(target) :]]
        # Expected number of times each item is drawn: the logQ correction of sampled softmax.
        def log_q(items: torch.Tensor) -> torch.Tensor:
            return torch.log(self.num_negatives / (n - 1) + self.in_batch * self.frequency[items] + 1e-12)

        pos_logits = (query * positive).sum(-1) / self.temperature - log_q(target)  # (P,)
        neg_logits = query @ negative.T / self.temperature - log_q(candidates)[None]  # (P, S)
        neg_logits = neg_logits.masked_fill(candidates[None] == target[:, None], float("-inf"))
        logits = torch.cat([pos_logits[:, None], neg_logits], dim=1)
        return F.cross_entropy(logits, torch.zeros(len(target), dtype=torch.long, device=device))


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def train_retrieval(
    config: RetrievalConfig,
    spec: FeatureSpec,
    item_features: ItemFeatures,
    split: Split,
    *,
    text: np.ndarray | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int, TwoTower, float], None] | None = None,
) -> tuple[TwoTower, dict[str, float]]:
    """Train on `split.train`; return the model and full-ranking metrics on `split.valid`.

    Args:
        text: optional (N, X) title embeddings of the items (vocabulary order).
        on_epoch_end: called with (epoch, model, seconds so far) after each epoch (e.g. to
            record a validation curve).
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.device)
    model = TwoTower(model_args(config, spec, 0 if text is None else text.shape[1]), item_features, text).to(device)

    if config.user_encoder == "mean":
        examples = histories_before_each_event(split.train, spec)
        users = examples["user_idx"].to_numpy()
        targets = examples["item_idx"].to_numpy()
        inputs = pad_histories(examples["history"], spec.max_history)
    else:
        # One row per user: the last max_len + 1 items; inputs[t] predicts targets[t] = inputs[t + 1].
        seqs = pad_histories(sequences(split.train, spec)["item_idx"], spec.max_history + 1)
        inputs, targets = seqs[:, :-1], seqs[:, 1:]
        users = np.zeros(len(seqs), np.int64)

    counts = np.bincount(targets[targets > 0], minlength=len(spec.items)).astype(np.float64)
    frequency = torch.from_numpy(counts / counts.sum()).float()
    loss_fn = SampledSoftmaxLoss(model, config, frequency).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    total_steps = config.epochs * -(-len(inputs) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config.lr_schedule, total_steps))

    start = time.perf_counter()
    epochs_run = 0
    for epoch in range(config.epochs):
        model.train()
        total, steps = 0.0, 0
        batches = _batches(len(inputs), config.batch_size, rng)
        bar = tqdm(batches, desc=f"retrieval epoch {epoch + 1}/{config.epochs}", disable=None if progress else True)
        for idx in bar:
            history = torch.from_numpy(inputs[idx]).to(device)
            target = torch.from_numpy(targets[idx]).to(device)
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=config.bf16):
                if config.user_encoder == "mean":
                    query = model.user_embeddings(torch.from_numpy(users[idx]).to(device), history)  # (B, D)
                else:
                    mask = (history > 0) & (target > 0)
                    query, target = model.sequence_outputs(history)[mask], target[mask]  # (P, D), (P,)
                loss = loss_fn(query, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total, steps = total + loss.item(), steps + 1
            bar.set_postfix(loss=f"{total / steps:.3f}")
        logger.info("retrieval epoch %d: loss %.4f (%.0fs)", epoch + 1, total / max(steps, 1),
                    time.perf_counter() - start)
        epochs_run = epoch + 1
        elapsed = time.perf_counter() - start
        if on_epoch_end is not None:
            on_epoch_end(epochs_run, model, elapsed)
        if config.max_train_minutes and elapsed > config.max_train_minutes * 60:
            logger.info("retrieval: stopping after epoch %d, past the %.0f-minute budget", epochs_run,
                        config.max_train_minutes)
            break
    train_seconds = time.perf_counter() - start
    metrics = evaluate_retrieval(model, spec, split.train, split.valid)
    metrics.update(train_seconds=train_seconds, epochs=float(epochs_run))
    return model, metrics


def _schedule(kind: str, total_steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier per step."""
    if kind == "constant":
        return lambda step: 1.0
    warmup = max(1, total_steps // 100)

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + np.cos(np.pi * progress))

    return cosine


def evaluate_retrieval(
    model: TwoTower | None,
    spec: FeatureSpec,
    history: pl.DataFrame,
    heldout: pl.DataFrame,
    ks: tuple[int, ...] = (10, 50, 200),
) -> dict[str, float]:
    """Full-ranking HR@K / NDCG@10 of each user's held-out item, their history items excluded;
    overall and, when held-out items span several content types, per content type.

    With `model` None, the most-popular baseline under the same protocol (items scored by their
    number of `history` events).
    """
    if heldout.height == 0:
        return {}
    scores, target, exclude = heldout_scores(model, spec, history, heldout)
    types = heldout["content_type"].to_numpy() if "content_type" in heldout.columns else None
    groups = types if types is not None and len(np.unique(types)) > 1 else None
    return full_ranking_metrics(scores, target, exclude, ks, groups)


def heldout_scores(
    model: TwoTower | None, spec: FeatureSpec, history: pl.DataFrame, heldout: pl.DataFrame,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The full-ranking protocol's inputs: (B, N) scores of every item for each held-out row's user
    (their latest `history`; the most-popular counts when `model` is None), the (B,) held-out item
    indices, and per row the items to exclude (padding and the user's history)."""
    users = heldout["user_id"].to_list()
    seen = dict(history.group_by("user_id").agg(pl.col("item_id")).iter_rows())
    exclude = [np.concatenate([[0], spec.items.encode(pl.Series(seen.get(u, []), dtype=pl.String))]) for u in users]
    target = spec.items.encode(heldout["item_id"])
    if model is None:
        counts = np.bincount(spec.items.encode(history["item_id"]), minlength=len(spec.items)).astype(np.float32)
        return np.broadcast_to(counts, (len(users), len(counts))), target, exclude
    histories = latest_histories(history, spec)
    hist = pad_histories([histories.get(u, np.zeros(0, np.int64)) for u in users], spec.max_history)
    item_emb = embed_items(model, np.arange(len(spec.items)))
    return embed_users(model, spec.users.encode(heldout["user_id"]), hist) @ item_emb.T, target, exclude  # (B, N)


def train_retrieval_job(config: EngineConfig, *, progress: bool = True) -> tuple[Checkpoint, dict[str, float]]:
    """`feed train retrieval`: prepared data → trained two-tower checkpoint (with its features)."""
    ItemIndex.check_settings(config.retrieval.embedding_dim, config.retrieval.index_factory,
                             config.retrieval.index_search_params)  # before, not after, training
    inputs = load_training_inputs(config)
    split = Split(*(history_events(getattr(inputs.split, p), config.data.history_events)
                    for p in ("train", "valid", "test")))
    text = None
    if config.retrieval.text_features:
        text = item_text_embeddings(inputs.items, inputs.spec, config.title_embeddings_path(inputs.data_fingerprint))
    model, metrics = train_retrieval(config.retrieval, inputs.spec, inputs.item_features, split, text=text,
                                     progress=progress)
    ckpt = save_model(config.retrieval_path, kind="retrieval", model=model, config=config.retrieval, inputs=inputs,
                      history_events=config.data.history_events, metrics=metrics)
    return ckpt, metrics
