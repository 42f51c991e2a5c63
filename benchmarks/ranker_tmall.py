"""Tmall multi-behaviour, buy as the target: the TorchRec ranker ranks every item for each user.

    .venv/bin/python benchmarks/ranker_tmall.py [--users 3000] [--max-epochs 4] [--valid-users 1000]

Data and protocol: ../shared/data/tmall-multibehavior (15,449 users, 11,953 items; view, cart and
buy), the release CascadingRank publishes on (HR@10 0.3324, NDCG@10 0.1626, full ranking, buy
target). As in CascadingRank, training sees every view and cart, the release's held-out views and
carts included, and the training buys; the test target is each user's held-out buy
(`split == "test"`), ranked against all 11,953 items with the user's training buys excluded.
`--users N` scores a seeded sample of N test users (0: all 15,449); HR@10 comes with a 95%
bootstrap interval over users.

Model: `ranker.model.MultiTaskRanker` (TorchRec EmbeddingBagCollection on fbgemm's fused
RowWiseAdagrad through DistributedModelParallel, DCN-v2, MMoE), task ``buy``. Sparse features:
user, candidate item, the user's viewed/carted items as a bag, content type, category (none in
this release), source (unknown). Extra dense features, all available at test time under this
protocol: log1p counts of the user's views and carts of the candidate, and the candidate's log1p
view and cart counts over all users and its buy count by the other users. Views and carts are features here, not tasks: the
protocol hands them to the model at test time, so as labels they would be read off the inputs.

Training examples (no test buy is ever used): each training buy (u, i) is a positive; per
positive, `--hard` negatives drawn from items u viewed or carted but did not buy (exposed, not
bought), `--popular` drawn in proportion to the items' training buys (what the full ranking puts
in front of the model: popular items the user never touched) and `--uniform` drawn uniformly
from the catalogue; a sampled item the user bought becomes the unknown item 0 instead. A positive's own buy is not in
its features: the user's own buys are not a feature, and the item's buy count leaves out the
user's own buys of it (at test time the held-out buy is in no count either).

The number of epochs is chosen on a validation split carved from training, never on test: one
training buy of each user with two or more is held out (`--valid-users` of them scored, full
ranking as for test), a model trains on the rest, and the epoch with the best validation HR@10 is
kept; the final model then trains on every training buy for that many epochs, as the published
protocols do. The base item popularity counts views and carts only: a buy count would include a
training positive's own buy (its label) and no test buy.

Rows, one run: the ranker; "viewed/carted count, then popularity" (the heuristic the features
make available); most popular by buys. The published figure is kept apart, under ``published``.
Writes benchmarks/results/ranker_tmall.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from feedcore.config import RankerConfig, TaskConfig
from feedcore.datasets import load_dataset
from feedcore.distributed import process_group
from feedcore.features import build_feature_spec, item_features, pad_histories
from feedcore.metrics import hit_rate_at_k, ndcg_at_k, rank_of_target
from ranker.batching import ranker_inputs
from ranker.model import DENSE_FEATURES, MultiTaskRanker
from ranker.train import model_args, shard_for_training, train_step, unsharded_state_dict

OUT = Path(__file__).parent / "results" / "ranker_tmall.json"
PUBLISHED = {"model": "CascadingRank (published, README)", "hr@10": 0.3324, "ndcg@10": 0.1626}
EXTRA_DENSE = ("user_views_of_item", "user_carts_of_item", "item_views", "item_carts", "item_buys")


class Context:
    """What the model may read about users and items: every training view, cart and buy."""

    def __init__(self, train: pl.DataFrame, spec, max_history: int) -> None:
        self.n_items = len(spec.items)
        frame = pl.DataFrame({
            "u": spec.users.encode(train["user_id"]), "i": spec.items.encode(train["item_id"]),
            "event": train["event"],
        })
        self.item_counts = np.stack([
            np.bincount(frame.filter(pl.col("event") == b)["i"].to_numpy(), minlength=self.n_items)
            for b in ("view", "cart", "buy")], axis=1).astype(np.float32)  # (N, 3) raw counts
        pairs = frame.group_by("u", "i").agg(*[(pl.col("event") == b).sum().alias(b) for b in ("view", "cart", "buy")])
        pairs = pairs.with_columns((pl.col("u") * self.n_items + pl.col("i")).alias("key")).sort("key")
        engaged = pairs.filter((pl.col("view") + pl.col("cart")) > 0)
        self.pair_keys = pairs["key"].to_numpy()  # sorted (user, item) keys
        self.pair_counts = pairs.select("view", "cart", "buy").to_numpy().astype(np.float32)  # raw counts
        self.bought = {u: g["i"].to_numpy() for (u,), g in pairs.filter(pl.col("buy") > 0).group_by("u")}
        self.exposed = {u: g["i"].to_numpy() for (u,), g in engaged.group_by("u")}
        # The history bag: the user's most viewed/carted items (the release has no time order).
        top = engaged.with_columns((pl.col("view") + pl.col("cart")).alias("n")).sort("n", descending=True)
        self.history = {u: g["i"].to_numpy()[:max_history] for (u,), g in top.group_by("u", maintain_order=True)}

    def extra_dense(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """(B, 5) EXTRA_DENSE features of (user, item) rows."""
        keys = user.astype(np.int64) * self.n_items + item
        pos = np.minimum(np.searchsorted(self.pair_keys, keys), len(self.pair_keys) - 1)
        hit = self.pair_keys[pos] == keys
        own = np.where(hit[:, None], self.pair_counts[pos], 0.0).astype(np.float32)  # (B, 3)
        # The item's buys by everyone else: a training positive's own buy must not show in its
        # features (at test time the held-out buy is in no count either).
        others = self.item_counts[item] - np.concatenate([np.zeros((len(item), 2), np.float32), own[:, 2:]], 1)
        return np.log1p(np.concatenate([own[:, :2], others], axis=1))


def training_examples(ctx: Context, n_items: int, hard: int, popular: int, uniform: int,
                      rng: np.random.Generator):
    users, items, labels = [], [], []
    by_buys = ctx.item_counts[:, 2] / ctx.item_counts[:, 2].sum()
    for user, bought in ctx.bought.items():
        exposed = np.setdiff1d(ctx.exposed.get(user, np.zeros(0, np.int64)), bought)
        k = len(bought)
        neg_hard = rng.choice(exposed, hard * k) if len(exposed) else rng.integers(1, n_items, hard * k)
        neg_popular = rng.choice(n_items, popular * k, p=by_buys)
        neg_uniform = rng.integers(1, n_items, uniform * k)
        batch = np.concatenate([bought, neg_hard, neg_popular, neg_uniform])
        batch[k:][np.isin(batch[k:], bought)] = 0  # a sampled item the user bought is no negative: padding row
        users.append(np.full(len(batch), user))
        items.append(batch)
        labels.append(np.concatenate([np.ones(k), np.zeros(len(batch) - k)]))
    return np.concatenate(users), np.concatenate(items), np.concatenate(labels).astype(np.float32)


def inputs(ctx: Context, spec, feats, user: np.ndarray, item: np.ndarray, labels=None):
    hist = pad_histories([ctx.history.get(int(u), np.zeros(0, np.int64)) for u in user], spec.max_history)
    return ranker_inputs(user, item, hist, feats, None if labels is None else labels[:, None],
                         extra_dense=ctx.extra_dense(user, item))


def bootstrap_hr(hits: np.ndarray, rng: np.random.Generator, n: int = 1000) -> tuple[float, float]:
    means = [hits[rng.integers(0, len(hits), len(hits))].mean() for _ in range(n)]
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def scores_of(model: MultiTaskRanker, ctx: Context, spec, feats, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U, N) the model's buy probability and the heuristic's score of every item for each user."""
    all_items = np.arange(1, ctx.n_items)
    scores = np.zeros((len(users), ctx.n_items), np.float32)
    heuristic = np.zeros_like(scores)
    model.eval()
    with torch.no_grad():
        for row, u in enumerate(users):
            batch = inputs(ctx, spec, feats, np.full(len(all_items), u), all_items)
            scores[row, 1:] = model(batch.dense, batch.sparse)["buy"].numpy()
            extra = batch.dense[:, len(DENSE_FEATURES):].numpy()
            heuristic[row, 1:] = 100 * (extra[:, 0] + extra[:, 1]) + extra[:, 4]
    return scores, heuristic


def ranks_of(scores: np.ndarray, users: np.ndarray, target: np.ndarray, ctx: Context) -> np.ndarray:
    """Each target's rank among all items, the user's training buys (in `ctx`) excluded."""
    exclude = [np.concatenate([[0], ctx.bought.get(int(u), np.zeros(0, np.int64))]) for u in users]
    return rank_of_target(scores, target, exclude)


def train_model(ctx: Context, spec, feats, margs, config: RankerConfig, epochs: int, rng: np.random.Generator,
                examples: tuple[np.ndarray, np.ndarray, np.ndarray],
                after_epoch=None) -> tuple[MultiTaskRanker, float]:
    """Train for `epochs` through DMP; `after_epoch(epoch, model)` sees the gathered model after
    each epoch. Returns the final model and the training seconds (evaluation excluded)."""
    user, item, label = examples
    seconds = 0.0
    with process_group("cpu"):
        dmp, dense_optimizer = shard_for_training(MultiTaskRanker(margs, device=torch.device("meta")), config,
                                                  "cpu", 1)
        for epoch in range(epochs):
            start = time.perf_counter()
            dmp.train()
            order = rng.permutation(len(item))
            total = 0.0
            for b in range(0, len(order), config.batch_size):
                idx = order[b : b + config.batch_size]
                total += train_step(dmp, dense_optimizer, inputs(ctx, spec, feats, user[idx], item[idx], label[idx]))
            seconds += time.perf_counter() - start
            print(f"epoch {epoch + 1}: loss {total * config.batch_size / len(order):.4f} ({seconds:.0f}s)", flush=True)
            if after_epoch is not None or epoch == epochs - 1:
                model = MultiTaskRanker(margs)
                model.load_state_dict({k.removeprefix("model."): v for k, v in unsharded_state_dict(dmp).items()})
                if after_epoch is not None:
                    after_epoch(epoch + 1, model)
    return model, seconds


def validation_split(train: pl.DataFrame, n_users: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(training events less one buy of each sampled user with 2+ buys, those held-out buys)."""
    buys = train.filter(pl.col("event") == "buy").unique(["user_id", "item_id"])
    eligible = buys.group_by("user_id").len().filter(pl.col("len") >= 2)["user_id"]
    users = eligible.sample(min(n_users, len(eligible)), seed=seed)
    held = buys.filter(pl.col("user_id").is_in(users.implode())).sample(fraction=1.0, shuffle=True, seed=seed)
    held = held.unique("user_id", keep="first")
    rest = train.join(held.select("user_id", "item_id", "event"), on=["user_id", "item_id", "event"], how="anti")
    return rest, held


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=3000, help="test users scored (0: all)")
    parser.add_argument("--max-epochs", type=int, default=4, help="epochs tried on the validation split")
    parser.add_argument("--valid-users", type=int, default=1000)
    parser.add_argument("--hard", type=int, default=4)
    parser.add_argument("--popular", type=int, default=8)
    parser.add_argument("--uniform", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    ds = load_dataset("tmall")
    spec = build_feature_spec(ds.items, ds.users, max_history=50)
    train = ds.events.filter(pl.col("split") == "train")
    test = ds.events.filter(pl.col("split") == "test")
    config = RankerConfig(embedding_dim=32, tasks=(TaskConfig("buy", event="buy"),), batch_size=1024,
                          sparse_learning_rate=0.05, dense_learning_rate=1e-3, id_dropout=0.0)
    margs = dataclasses.replace(model_args(config, spec), num_dense=len(DENSE_FEATURES) + len(EXTRA_DENSE))

    def setup(events: pl.DataFrame, rng: np.random.Generator):
        # Base popularity from views and carts only: a buy count would hold a positive's own label.
        feats = item_features(ds.items, events.filter(pl.col("event") != "buy"), spec)
        ctx = Context(events, spec, spec.max_history)
        return ctx, feats, training_examples(ctx, len(spec.items), args.hard, args.popular, args.uniform, rng)

    # 1. The number of epochs, on validation buys carved from training.
    rest, held = validation_split(train, args.valid_users, seed=0)
    ctx, feats, examples = setup(rest, np.random.default_rng(0))
    v_users, v_target = spec.users.encode(held["user_id"]), spec.items.encode(held["item_id"])
    validation = []

    def validate(epoch: int, model: MultiTaskRanker) -> None:
        ranks = ranks_of(scores_of(model, ctx, spec, feats, v_users)[0], v_users, v_target, ctx)
        validation.append({"epoch": epoch, "hr@10": hit_rate_at_k(ranks, 10), "ndcg@10": ndcg_at_k(ranks, 10)})
        print(f"  validation, epoch {epoch}: HR@10 {validation[-1]['hr@10']:.4f}", flush=True)

    train_model(ctx, spec, feats, margs, config, args.max_epochs, np.random.default_rng(0), examples, validate)
    epochs = max(validation, key=lambda v: v["hr@10"])["epoch"]
    print(f"epochs chosen on validation: {epochs}", flush=True)

    # 2. The final model on every training buy, scored on test.
    rng = np.random.default_rng(0)
    ctx, feats, examples = setup(train, rng)
    model, train_seconds = train_model(ctx, spec, feats, margs, config, epochs, rng, examples)
    test_users = test.select("user_id", "item_id")
    if args.users:
        test_users = test_users.sample(min(args.users, test_users.height), seed=0)
    u_idx = spec.users.encode(test_users["user_id"])
    target = spec.items.encode(test_users["item_id"])
    start = time.perf_counter()
    scores, heuristic = scores_of(model, ctx, spec, feats, u_idx)
    score_seconds = time.perf_counter() - start
    popular = np.broadcast_to(np.log1p(ctx.item_counts[:, 2]), scores.shape)

    rows = []
    for name, s in ((f"unified ranker (torchrec, DCN-v2 + MMoE), buy task, {epochs} epoch(s)", scores),
                    ("heuristic: user's view/cart count, then buys", heuristic),
                    ("most popular by buys", popular)):
        ranks = ranks_of(s, u_idx, target, ctx)
        m = {"hr@10": hit_rate_at_k(ranks, 10), "hr@50": hit_rate_at_k(ranks, 50), "ndcg@10": ndcg_at_k(ranks, 10),
             "users": float(len(ranks))}
        low, high = bootstrap_hr((ranks < 10).astype(np.float64), np.random.default_rng(1))
        rows.append({"model": name, **m, "hr@10_ci95": [low, high]})
        print(f"{name:<55} HR@10 {m['hr@10']:.4f} [{low:.4f}, {high:.4f}]  NDCG@10 {m['ndcg@10']:.4f}", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "benchmark": "ranker_tmall", "protocol": __doc__.strip(), "machine": platform.machine(),
        "threads": torch.get_num_threads(), "test_users_scored": len(u_idx), "train_examples": len(examples[1]),
        "train_seconds": train_seconds, "score_seconds": score_seconds, "epochs": epochs,
        "validation": validation, "validation_users": len(v_users),
        "config": dataclasses.asdict(config), "results": rows, "published": [PUBLISHED],
    }, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
