"""Tmall multi-behaviour, buy as the target: the TorchRec ranker ranks every item for each user.

    .venv/bin/python benchmarks/ranker_tmall.py [--users 3000] [--epochs 4]

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

Rows, one run: the ranker; "viewed/carted count, then popularity" (the heuristic the features
make available); most popular by buys. Writes benchmarks/results/ranker_tmall.json.
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

from evaluation.metrics import hit_rate_at_k, ndcg_at_k, rank_of_target
from feedcore.config import RankerConfig, TaskConfig
from feedcore.datasets import load_dataset
from feedcore.distributed import process_group
from feedcore.features import build_feature_spec, item_features, pad_histories
from ranker.batching import ranker_inputs
from ranker.model import DENSE_FEATURES, MultiTaskRanker
from ranker.train import model_args, shard_for_training, unsharded_state_dict

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=3000, help="test users scored (0: all)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--hard", type=int, default=4)
    parser.add_argument("--popular", type=int, default=8)
    parser.add_argument("--uniform", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    ds = load_dataset("tmall")
    spec = build_feature_spec(ds.items, ds.users, max_history=50)
    train = ds.events.filter(pl.col("split") == "train")
    test = ds.events.filter(pl.col("split") == "test")
    feats = item_features(ds.items, train, spec)
    ctx = Context(train, spec, spec.max_history)
    n_items = len(spec.items)

    config = RankerConfig(embedding_dim=32, tasks=(TaskConfig("buy", event="buy"),), batch_size=1024,
                          sparse_learning_rate=0.05, dense_learning_rate=1e-3, epochs=args.epochs)
    margs = model_args(config, spec)
    margs = dataclasses.replace(margs, num_dense=len(DENSE_FEATURES) + len(EXTRA_DENSE))
    user, item, label = training_examples(ctx, n_items, args.hard, args.popular, args.uniform, rng)
    start = time.perf_counter()
    with process_group("cpu"):
        dmp, dense_optimizer = shard_for_training(MultiTaskRanker(margs, device=torch.device("meta")), config,
                                                  "cpu", 1)
        for epoch in range(args.epochs):
            order = rng.permutation(len(item))
            total = 0.0
            for b in range(0, len(order), config.batch_size):
                idx = order[b : b + config.batch_size]
                batch = inputs(ctx, spec, feats, user[idx], item[idx], label[idx])
                loss, _, _ = dmp(batch.dense, batch.sparse, batch.labels)
                dense_optimizer.zero_grad()
                loss.backward()
                dense_optimizer.step()
                total += loss.item() * len(idx)
            print(f"epoch {epoch + 1}: loss {total / len(order):.4f} ({time.perf_counter() - start:.0f}s)", flush=True)
        state = unsharded_state_dict(dmp)
    train_seconds = time.perf_counter() - start
    model = MultiTaskRanker(margs)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    model.eval()

    test_users = test.select("user_id", "item_id")
    if args.users:
        test_users = test_users.sample(min(args.users, test_users.height), seed=0)
    u_idx = spec.users.encode(test_users["user_id"])
    target = spec.items.encode(test_users["item_id"])
    exclude = [np.concatenate([[0], ctx.bought.get(int(u), np.zeros(0, np.int64))]) for u in u_idx]
    all_items = np.arange(1, n_items)
    start = time.perf_counter()
    scores = np.zeros((len(u_idx), n_items), np.float32)
    heuristic = np.zeros_like(scores)
    with torch.no_grad():
        for row, u in enumerate(u_idx):
            batch = inputs(ctx, spec, feats, np.full(len(all_items), u), all_items)
            scores[row, 1:] = model(batch.dense, batch.sparse)["buy"].numpy()
            extra = batch.dense[:, len(DENSE_FEATURES):].numpy()
            heuristic[row, 1:] = 100 * (extra[:, 0] + extra[:, 1]) + extra[:, 4]
    score_seconds = time.perf_counter() - start
    popular = np.broadcast_to(np.log1p(ctx.item_counts[:, 2]), scores.shape)

    rows = [PUBLISHED]
    for name, s in (("unified ranker (torchrec, DCN-v2 + MMoE), buy task", scores),
                    ("heuristic: user's view/cart count, then buys", heuristic),
                    ("most popular by buys", popular)):
        ranks = rank_of_target(s, target, exclude)
        m = {"hr@10": hit_rate_at_k(ranks, 10), "hr@50": hit_rate_at_k(ranks, 50), "ndcg@10": ndcg_at_k(ranks, 10),
             "users": float(len(ranks))}
        low, high = bootstrap_hr((ranks < 10).astype(np.float64), np.random.default_rng(1))
        rows.append({"model": name, **m, "hr@10_ci95": [low, high]})
        print(f"{name:<55} HR@10 {m['hr@10']:.4f} [{low:.4f}, {high:.4f}]  NDCG@10 {m['ndcg@10']:.4f}", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "benchmark": "ranker_tmall", "protocol": __doc__.strip(), "machine": platform.machine(),
        "threads": torch.get_num_threads(), "test_users_scored": len(u_idx), "train_examples": len(item),
        "train_seconds": train_seconds, "score_seconds": score_seconds, "epochs": args.epochs,
        "config": dataclasses.asdict(config), "results": rows,
    }, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
