"""Training the two-tower model.

- ``mean`` user tower: (history before an event, its item) pairs.
- ``sasrec`` / ``hstu``: every position of each user's sequence predicts the next item (as in
  SASRec).

Both use one loss: a softmax over the whole catalogue (`num_negatives = 0`, for small catalogues;
the output layer fused with the cross-entropy in chunks of rows, `retrieval.ops`), or over shared
uniform negatives plus negatives drawn from the batch's targets, with logQ correction and
accidental hits masked. Training keeps the best validation epoch's weights, stops early on
`patience`, and holds a time budget (mid-epoch, with the cosine schedule decaying over it).
Evaluation ranks every item in chunks of users (`retrieval.ops.ranks_in_chunks`).

Example:
    >>> model, metrics = train_retrieval(config, spec, item_feats, split)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

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
from feedcore.metrics import metrics_from_ranks
from feedcore.prepare import load_training_inputs
from feedcore.splits import Split
from feedcore.text import item_text_embeddings
from retrieval.embed import embed_items, embed_users
from retrieval.index import ItemIndex
from retrieval.model import TwoTower, TwoTowerArgs
from retrieval.ops import Dropout, chunked_softmax_cross_entropy, ranks_in_chunks

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

    def __init__(self, model: TwoTower, config: RetrievalConfig, item_frequency: torch.Tensor,
                 *, fused: bool = True) -> None:
        super().__init__()
        self.model = model
        self.temperature = config.temperature if model.args.normalize else 1.0
        self.num_negatives = config.num_negatives
        self.in_batch = config.in_batch_negatives
        self.fused = fused  # False: the plain reference (the (P, N) logits, then F.cross_entropy)
        self.register_buffer("frequency", item_frequency)

    def forward(self, query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """query (P, D), target (P,) item indices → mean loss."""
        n = self.model.args.num_items
        device = query.device
        if self.num_negatives == 0 or self.num_negatives >= n - 1:
            items = self.model.item_embeddings(torch.arange(1, n, device=device))  # (N-1, D)
            if not self.fused:
                return F.cross_entropy(query @ items.T / self.temperature, target - 1)
            # The output layer and the cross-entropy fused, in chunks of rows (retrieval.ops).
            kind = device.type
            dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else torch.float32
            return chunked_softmax_cross_entropy(query, items, target - 1, self.temperature, dtype=dtype)
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


def budget_clock(kind: str) -> Callable[[], float]:
    """Seconds of training as the budget reads them: ``wall`` (perf_counter), or ``cpu`` (this
    process's CPU seconds divided by its torch threads: the run's time alone on those cores)."""
    if kind == "cpu":
        threads = torch.get_num_threads()
        return lambda: time.process_time() / threads
    if kind == "wall":
        return time.perf_counter
    raise ValueError(f"retrieval.budget_clock {kind!r}: expected 'wall' or 'cpu'")


def learning_rate_multiplier(kind: str, step: int, total_steps: int, time_fraction: float = 0.0) -> float:
    """The schedule's multiplier of the peak learning rate: ``constant``, or ``cosine`` (1% linear
    warm-up, then cosine decay to 0). Its progress is the larger of the steps' share of
    `total_steps` and `time_fraction` (the share of a time budget spent), so a budgeted run warms
    up and decays to 0 over its budget, or over `total_steps` if those end first.

    Example:
        >>> learning_rate_multiplier("cosine", 50, 10_000, time_fraction=1.0)
        0.0
    """
    if kind == "constant":
        return 1.0
    warmup = max(1, total_steps // 100)
    if step < warmup and time_fraction < 0.01:
        return max((step + 1) / warmup, time_fraction / 0.01)
    progress = max((step - warmup) / max(1, total_steps - warmup), (time_fraction - 0.01) / 0.99)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def train_retrieval(
    config: RetrievalConfig,
    spec: FeatureSpec,
    item_features: ItemFeatures,
    split: Split,
    *,
    text: np.ndarray | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int, TwoTower, float], None] | None = None,
    clock: Callable[[], float] | None = None,
    fused: bool = True,
) -> tuple[TwoTower, dict[str, float]]:
    """Train on `split.train`; return the model and its full-ranking metrics on `split.valid`.

    Every `config.validate_every` epochs (and when training stops) the model is scored on
    `split.valid`; the weights of the best validation NDCG@10 are returned, with that validation's
    metrics, and training stops after `config.patience` validations without improvement. With
    `config.max_train_minutes`, training stops mid-epoch when the budget (validations included,
    room left for the last one) runs out, and the cosine schedule decays to 0 over the budget.
    An empty `split.valid` trains `config.epochs` (or the budget) and returns the last weights: the
    final fit on train + validation, once the epoch count was chosen on validation.

    Args:
        text: optional (N, X) title embeddings of the items (vocabulary order).
        on_epoch_end: called with (epoch, model, seconds so far) after each epoch (e.g. to
            record a validation curve).
        clock: the budget's clock in seconds (default: `budget_clock(config.budget_clock)`).
        fused: the fast paths: the fused, chunked output layer and cross-entropy and `rand < p`
            dropout (False: the plain reference loop, F.cross_entropy on the whole batch's logits
            and ``nn.Dropout``).
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.device)
    model = TwoTower(model_args(config, spec, 0 if text is None else text.shape[1]), item_features, text).to(device)
    if not fused:  # the plain reference loop: bernoulli_ dropout too
        for module in list(model.modules()):
            for name, child in module.named_children():
                if isinstance(child, Dropout):
                    setattr(module, name, nn.Dropout(child.p))

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
    loss_fn = SampledSoftmaxLoss(model, config, frequency, fused=fused).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(inputs) // config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    budget = config.max_train_minutes * 60.0
    validate = config.validate_every > 0 and split.valid.height > 0
    groups = item_features.content_type if config.validate_within_type else None

    clock = clock or budget_clock(config.budget_clock)
    wall_start, start = time.perf_counter(), clock()
    step, samples, positions = 0, 0, 0
    validation_cost, validation_seconds, validation_wall = 0.0, 0.0, 0.0
    best: dict | None = None  # the best validation: its metrics, epoch and weights
    since_best, stopped, epochs_run, multiplier = 0, "epochs", 0.0, 1.0
    for epoch in range(config.epochs):
        model.train()
        total, steps = 0.0, 0
        batches = _batches(len(inputs), config.batch_size, rng)
        bar = tqdm(batches, desc=f"retrieval epoch {epoch + 1}/{config.epochs}", disable=None if progress else True)
        for idx in bar:
            elapsed = clock() - start
            if budget and elapsed + validation_cost >= budget:  # leave room for the last validation
                stopped = "budget"
                break
            multiplier = learning_rate_multiplier(config.lr_schedule, step, total_steps,
                                                  elapsed / budget if budget else 0.0)
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * multiplier
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
            total, steps, step = total + loss.item(), steps + 1, step + 1
            samples, positions = samples + len(idx), positions + len(target)
            bar.set_postfix(loss=f"{total / steps:.3f}")
        epochs_run = epoch + steps / steps_per_epoch
        logger.info("retrieval epoch %d: loss %.4f (%.0fs)", epoch + 1, total / max(steps, 1), clock() - start)
        if validate and steps and ((epoch + 1) % config.validate_every == 0 or stopped != "epochs"
                                   or epoch + 1 == config.epochs):
            begun, wall_begun = clock(), time.perf_counter()
            metrics = evaluate_retrieval(model, spec, split.train, split.valid, item_groups=groups)
            validation_cost = clock() - begun
            validation_seconds += validation_cost
            validation_wall += time.perf_counter() - wall_begun
            if best is None or metrics["ndcg@10"] > best["metrics"]["ndcg@10"]:
                best = {"metrics": metrics, "epoch": epochs_run,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
                since_best = 0
            else:
                since_best += 1
            logger.info("retrieval epoch %d: valid NDCG@10 %.4f (best %.4f at epoch %.1f)", epoch + 1,
                        metrics["ndcg@10"], best["metrics"]["ndcg@10"], best["epoch"])
            if config.patience and since_best >= config.patience and stopped == "epochs":
                stopped = "patience"
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model, clock() - start)
        if stopped != "epochs":
            break
    train_seconds, wall_seconds = clock() - start, time.perf_counter() - wall_start
    logger.info("retrieval: stopped (%s) after %.2f epochs, %.0fs", stopped, epochs_run, train_seconds)
    if best is not None:
        model.load_state_dict(best["state"])
        metrics, best_epoch = best["metrics"], best["epoch"]
    else:
        metrics, best_epoch = evaluate_retrieval(model, spec, split.train, split.valid, item_groups=groups), epochs_run
    metrics = dict(metrics)
    metrics.update(train_seconds=train_seconds, wall_seconds=wall_seconds, validation_seconds=validation_seconds,
                   epochs=float(epochs_run), best_epoch=float(best_epoch), steps=float(step),
                   stopped_by_budget=float(stopped == "budget"), stopped_by_patience=float(stopped == "patience"),
                   final_lr_multiplier=multiplier,
                   sequences_per_second=samples / max(wall_seconds - validation_wall, 1e-9),
                   positions_per_second=positions / max(wall_seconds - validation_wall, 1e-9))
    return model, metrics


def evaluate_retrieval(
    model: TwoTower | None,
    spec: FeatureSpec,
    history: pl.DataFrame,
    heldout: pl.DataFrame,
    ks: tuple[int, ...] = (10, 50, 200),
    *,
    item_offset: np.ndarray | None = None,
    item_groups: np.ndarray | None = None,
    chunk: int = 1024,
) -> dict[str, float]:
    """Full-ranking HR@K / NDCG@10 of each user's held-out item, their history items excluded;
    overall and, when held-out items span several content types, per content type.

    With `model` None, the most-popular baseline under the same protocol (items scored by their
    number of `history` events). `item_offset` (N,) is added to every item's score (a prior).
    With `item_groups` (N,) (e.g. `ItemFeatures.content_type`) each target is ranked among the items
    of its own group only: what `[candidates] ann_type_shares` serves, a shard per content type.
    Scores exist for `chunk` held-out rows at a time (float32), so memory does not grow with
    rows x items.
    """
    if heldout.height == 0:
        return {}
    ranks = heldout_ranks(model, spec, history, heldout, item_offset=item_offset, item_groups=item_groups, chunk=chunk)
    types = heldout["content_type"].to_numpy() if "content_type" in heldout.columns else None
    groups = types if types is not None and len(np.unique(types)) > 1 else None
    return metrics_from_ranks(ranks, ks, groups)


def heldout_ranks(
    model: TwoTower | None, spec: FeatureSpec, history: pl.DataFrame, heldout: pl.DataFrame, *,
    item_offset: np.ndarray | None = None, item_groups: np.ndarray | None = None, chunk: int = 1024,
) -> np.ndarray:
    """(B,) 0-based full-ranking rank of each held-out row's item (`retrieval.ops.ranks_in_chunks`)."""
    queries, items, target, exclude = heldout_inputs(model, spec, history, heldout)
    if model is None:
        item_offset = items if item_offset is None else items + item_offset
        items = None
    ranks, _ = ranks_in_chunks(queries, items, target, exclude, item_offset=item_offset, item_groups=item_groups,
                               chunk=chunk)
    return ranks


def heldout_inputs(
    model: TwoTower | None, spec: FeatureSpec, history: pl.DataFrame, heldout: pl.DataFrame,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, list[np.ndarray]]:
    """(B, D) user embeddings (None without a model), (N, D) item embeddings (the (N,) popularity
    counts without a model), (B,) target items, and per row the items to exclude."""
    users = heldout["user_id"].to_list()
    seen = dict(history.group_by("user_id").agg(pl.col("item_id")).iter_rows())
    exclude = [np.concatenate([[0], spec.items.encode(pl.Series(seen.get(u, []), dtype=pl.String))]) for u in users]
    target = spec.items.encode(heldout["item_id"])
    if model is None:
        counts = np.bincount(spec.items.encode(history["item_id"]), minlength=len(spec.items)).astype(np.float32)
        return None, counts, target, exclude
    histories = latest_histories(history, spec)
    hist = pad_histories([histories.get(u, np.zeros(0, np.int64)) for u in users], spec.max_history)
    item_emb = embed_items(model, np.arange(len(spec.items)))
    return embed_users(model, spec.users.encode(heldout["user_id"]), hist), item_emb, target, exclude


def heldout_scores(
    model: TwoTower | None, spec: FeatureSpec, history: pl.DataFrame, heldout: pl.DataFrame,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The dense reference of the full-ranking protocol (B x N memory: small data only): (B, N)
    scores of every item for each held-out row's user (their latest `history`; the most-popular
    counts when `model` is None), the (B,) held-out item indices, and per row the items to
    exclude (padding and the user's history)."""
    queries, items, target, exclude = heldout_inputs(model, spec, history, heldout)
    if model is None:
        return np.broadcast_to(items, (len(target), len(items))), target, exclude
    return queries @ items.T, target, exclude  # (B, N)


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
