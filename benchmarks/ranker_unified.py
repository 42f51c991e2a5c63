"""One ranker over all content types against one ranker per type, same data and training budget.

    .venv/bin/python benchmarks/ranker_unified.py [--epochs 3] [--negatives 99] [--seeds 0,1,2]

Data: ../shared/data/amazon-arts-office (two content types, arts_product and office_product, the
same 9,577 users), split by the release's own protocol (`feedcore.splits.target_line`): train users
train on everything; validation and test users contribute their shared history; each test user's
two targets are held out (line 1: mostly Office, line 2: always Art), 2,000 test rows.

Models (`ranker.model.MultiTaskRanker`: TorchRec tables on fused RowWiseAdagrad through DMP,
DCN-v2, MMoE; task ``engage`` = the review; 2 uniform negatives per positive in training):

- ``unified``: one model trained on the events of both types;
- ``separate``: one model per type, each trained only on its type's events (its histories hold
  only that type too: what a team running one model per surface has). Same config and epochs, so
  the two separate models together see exactly the unified model's examples.

Evaluation per content type: each test target is re-ranked among itself and `--negatives` items of
the same type drawn in proportion to their training popularity (the kind of candidates retrieval
hands the ranker), never from the user's history; the same candidates for every model. Pooled AUC,
GAUC (per test row: the share of its negatives scored below the target), HR@10 and NDCG@10 of the
target among its candidates, per training seed, and their mean ± sd over `--seeds`. Writes
benchmarks/results/ranker_unified.json.
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
from feedcore.features import build_feature_spec, item_features, latest_histories, pad_histories
from feedcore.metrics import auc, gauc, hit_rate_at_k, ndcg_at_k, rank_of_target
from feedcore.splits import Split, target_line
from ranker.data import RankerExamples
from ranker.train import predict, train_ranker

OUT = Path(__file__).parent / "results" / "ranker_unified.json"
CONFIG = RankerConfig(embedding_dim=32, tasks=(TaskConfig("engage"),), negatives_per_positive=2, batch_size=1024,
                      sparse_learning_rate=0.05, dense_learning_rate=1e-3, device="cpu")


def candidates(test: pl.DataFrame, train: pl.DataFrame, spec, feats, n_neg: int, rng) -> np.ndarray:
    """(rows, 1 + n_neg) item indices: the target, then popularity-sampled items of its type."""
    counts = np.expm1(feats.popularity).astype(np.float64)
    seen = {u: set(spec.items.encode(pl.Series(ids, dtype=pl.String)).tolist())
            for u, ids in train.group_by("user_id").agg("item_id").iter_rows()}
    out = np.zeros((test.height, 1 + n_neg), np.int64)
    out[:, 0] = spec.items.encode(test["item_id"])
    for row, (user, target) in enumerate(zip(test["user_id"].to_list(), out[:, 0], strict=True)):
        weights = np.where(feats.content_type == feats.content_type[target], counts, 0.0)
        weights[list(seen.get(user, ())) + [target]] = 0.0
        out[row, 1:] = rng.choice(len(weights), n_neg, replace=False, p=weights / weights.sum())
    return out


def score(model, spec, feats, train: pl.DataFrame, test: pl.DataFrame, cands: np.ndarray) -> np.ndarray:
    """(rows, candidates) predictions, each user's history taken from `train` (the model's own world)."""
    histories = latest_histories(train, spec)
    hist = pad_histories([histories.get(u, np.zeros(0, np.int64)) for u in test["user_id"].to_list()],
                         spec.max_history)
    k = cands.shape[1]
    examples = RankerExamples(user=np.repeat(spec.users.encode(test["user_id"]), k), item=cands.reshape(-1),
                              history=np.repeat(hist, k, axis=0), labels=np.zeros((cands.size, 1), np.float32))
    return predict(model, examples, feats)[:, 0].reshape(cands.shape)


def metrics(scores: np.ndarray) -> dict[str, float]:
    """Column 0 is the target; GAUC groups by test row (ties count against the target in ranks)."""
    labels = np.zeros_like(scores)
    labels[:, 0] = 1
    rows = np.repeat(np.arange(len(scores)), scores.shape[1])
    ranks = rank_of_target(scores, np.zeros(len(scores), np.int64))
    return {
        "auc": auc(labels.reshape(-1), scores.reshape(-1)),
        "gauc": gauc(rows, labels.reshape(-1), scores.reshape(-1)),
        "hr@10": hit_rate_at_k(ranks, 10),
        "ndcg@10": ndcg_at_k(ranks, 10),
        "rows": float(len(scores)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--negatives", type=int, default=99)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    ds = load_dataset("amazon-arts-office")
    spec = build_feature_spec(ds.items, ds.users, max_history=50)
    split = target_line(ds.events, ds.users)
    feats = item_features(ds.items, split.train, spec)
    types = sorted(split.test["content_type"].unique().to_list())
    cands = candidates(split.test, split.train, spec, feats, args.negatives, np.random.default_rng(0))

    rows = []
    for seed in [int(x) for x in args.seeds.split(",")]:
        config = dataclasses.replace(CONFIG, epochs=args.epochs, seed=seed)
        start = time.perf_counter()
        unified, _ = train_ranker(config, spec, feats, split, progress=False)
        seconds = time.perf_counter() - start
        scores = score(unified, spec, feats, split.train, split.test, cands)
        for t in types:
            mask = (split.test["content_type"] == t).to_numpy()
            rows.append({"model": "unified", "content_type": t, "seed": seed, **metrics(scores[mask]),
                         "train_seconds": seconds})
        for t in types:
            of_type = pl.col("content_type") == t
            own = Split(split.train.filter(of_type), split.valid.filter(of_type), split.test.filter(of_type))
            start = time.perf_counter()
            separate, _ = train_ranker(config, spec, feats, own, progress=False)
            seconds = time.perf_counter() - start
            mask = (split.test["content_type"] == t).to_numpy()
            scores = score(separate, spec, feats, own.train, split.test.filter(of_type), cands[mask])
            rows.append({"model": "separate", "content_type": t, "seed": seed, **metrics(scores),
                         "train_seconds": seconds})
        for r in rows[-2 * len(types):]:
            print(f"seed {seed} {r['model']:<9} {r['content_type']:<15} AUC {r['auc']:.4f}  GAUC {r['gauc']:.4f}  "
                  f"HR@10 {r['hr@10']:.4f}  NDCG@10 {r['ndcg@10']:.4f}  ({int(r['rows'])} rows, "
                  f"{r['train_seconds']:.0f}s)", flush=True)
    summary = []
    for model in ("unified", "separate"):
        for t in types:
            runs = [r for r in rows if r["model"] == model and r["content_type"] == t]
            entry = {"model": model, "content_type": t, "seeds": len(runs)}
            for k in ("auc", "gauc", "hr@10", "ndcg@10"):
                values = np.array([r[k] for r in runs])
                entry[k] = float(values.mean())
                entry[f"{k}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            summary.append(entry)
            print(f"{model:<9} {t:<15} " + "  ".join(f"{k} {entry[k]:.4f} ± {entry[f'{k}_sd']:.4f}"
                                                     for k in ("auc", "gauc", "hr@10", "ndcg@10")))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "benchmark": "ranker_unified", "protocol": __doc__.strip(), "machine": platform.machine(),
        "threads": torch.get_num_threads(), "negatives": args.negatives, "config": dataclasses.asdict(config),
        "summary": summary, "results": rows,
    }, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
