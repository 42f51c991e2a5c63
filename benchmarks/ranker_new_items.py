"""The ranker's id-free path: how items it has never trained on (new items, generated posts) rank.

    .venv/bin/python benchmarks/ranker_new_items.py --config configs/demo.toml [--dropouts 0,0.1,0.25]
        [--seeds 0,1] [--cold-share 0.1]

Needs `feed data prepare` on the config (and `feed train retrieval` when the config's ranker reads
the retrieval score). A seeded `--cold-share` of the items with training events is held out: none
of their events trains the ranker, and none is in a training history. Every such event becomes an
evaluation positive (the user's latest training history, as served), with 2 negatives drawn
uniformly among the held-out items the user never engaged with, so the cold rows compare cold items
with each other, as a fresh-items shelf or a post among posts would. Each variant trains with its
`id_dropout` (the share of training rows whose item id is fed as unknown, their content kept) and
scores the cold rows two ways:

- ``id path``: each cold item's own vocabulary row, which no training step touched (random);
- ``id-free``: the unknown id (0) with the item's content (type, categories, text when the config
  reads it, popularity 0, as a new item has): the path new items and generated posts take.

Next to them, the warm validation rows (`ranker.train.evaluate_ranker`) through the id path and the
id-free path: the price of dropping the id for an item the model knows. AUC and per-user NDCG@10
of the first binary task. Writes benchmarks/results/ranker_new_items.json.
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

from feedcore.config import load_config
from feedcore.features import history_events, latest_histories, pad_histories
from feedcore.io import atomic_write_bytes
from feedcore.metrics import auc, grouped_ndcg
from feedcore.prepare import load_training_inputs
from feedcore.splits import Split
from ranker.data import RankerExamples
from ranker.train import load_retrieval_scorer, predict, train_ranker, with_text

OUT = Path(__file__).parent / "results" / "ranker_new_items.json"


def cold_rows(events: pl.DataFrame, cold: np.ndarray, histories: dict[str, np.ndarray], spec,
              rng: np.random.Generator, negatives: int = 2) -> tuple[RankerExamples, np.ndarray]:
    """Positives: the users' events on cold items; negatives: cold items each user never engaged."""
    pairs = events.select("user_id", "item_id").unique(maintain_order=True)
    pairs = pairs.with_columns(pl.Series("item", spec.items.encode(pairs["item_id"])))
    pairs = pairs.filter(pl.col("item").is_in(pl.Series(cold).implode()))
    engaged = {u: set(g["item"].to_list()) for (u,), g in pairs.group_by("user_id")}
    user_ids, items, labels = [], [], []
    for user, item in pairs.select("user_id", "item").iter_rows():
        draws = [c for c in rng.choice(cold, negatives * 3) if c not in engaged[user]][:negatives]
        user_ids += [user] * (1 + len(draws))
        items += [item, *draws]
        labels += [1.0] + [0.0] * len(draws)
    history = pad_histories([histories.get(u, np.zeros(0, np.int64)) for u in user_ids], spec.max_history)
    examples = RankerExamples(spec.users.encode(user_ids), np.asarray(items, np.int64), history,
                              np.asarray(labels, np.float32)[:, None])
    return examples, np.asarray(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.toml")
    parser.add_argument("--dropouts", default="0,0.1,0.25")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--cold-share", type=float, default=0.1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    config = load_config(args.config)
    inputs = load_training_inputs(config)
    if config.ranker.text_features:
        inputs = with_text(inputs, config)
    retrieval = load_retrieval_scorer(config, inputs)[0] if config.ranker.retrieval_score else None
    spec, split = inputs.spec, inputs.split
    engaged_items = np.unique(spec.items.encode(split.train["item_id"]))
    cold = np.sort(np.random.default_rng(0).choice(engaged_items, int(args.cold_share * len(engaged_items)),
                                                   replace=False))
    is_cold = pl.col("item_id").is_in(pl.Series([spec.items.decode(int(i)) for i in cold]).implode())
    warm = Split(split.train.filter(~is_cold), split.valid.filter(~is_cold), split.test.filter(~is_cold))
    histories = latest_histories(history_events(warm.train, config.data.history_events), spec)
    evaluation, labels = cold_rows(split.train, cold, histories, spec, np.random.default_rng(1))
    served = dataclasses.replace(inputs.item_features, event_offsets=None, event_times=None,
                                 popularity=np.where(np.isin(np.arange(len(spec.items)), cold), 0.0,
                                                     inputs.item_features.popularity).astype(np.float32))
    task = next(t.name for t in config.ranker.tasks if t.kind == "binary")
    users = evaluation.user

    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for dropout in [float(d) for d in args.dropouts.split(",")]:
            ranker = dataclasses.replace(config.ranker, id_dropout=dropout, seed=seed)
            start = time.perf_counter()
            model, metrics = train_ranker(ranker, spec, inputs.item_features, warm, config.data.history_events,
                                          progress=False, retrieval=retrieval)
            seconds = time.perf_counter() - start
            row = {"id_dropout": dropout, "seed": seed, "train_seconds": round(seconds, 1),
                   "cold_rows": len(evaluation), "cold_items": len(cold),
                   "warm/auc": metrics[f"{task}/auc"], "warm/ndcg@10": metrics[f"{task}/ndcg@10"],
                   "warm/auc_id_free": metrics[f"{task}/auc_id_free"],
                   "warm/ndcg@10_id_free": metrics[f"{task}/ndcg@10_id_free"]}
            for path, id_free in (("id_path", False), ("id_free", True)):
                preds = predict(model, evaluation, served, retrieval=retrieval, id_free=id_free)[:, 0]
                row[f"cold/auc_{path}"] = auc(labels, preds)
                row[f"cold/ndcg@10_{path}"] = grouped_ndcg(users, labels, preds, 10)
            results.append(row)
            print(json.dumps(row), flush=True)
            atomic_write_bytes(OUT, (json.dumps({
                "benchmark": "ranker_new_items", "protocol": __doc__.strip(), "config": args.config,
                "task": task, "machine": platform.machine(), "threads": torch.get_num_threads(),
                "results": results}, indent=2) + "\n").encode())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
