"""Amazon Arts × Office: retrieval per content type, and cold-start items retrieved from content alone.

    .venv/bin/python benchmarks/retrieval_amazon.py [--minutes 6]

Data: ../shared/data/amazon-arts-office (9,577 users, 38,396 items of two content types,
arts_product and office_product; 208,541 review events; real product titles).

Protocol: the source's own (C2DSR / URLLM), one held-out target per `target_line`. Each user has a
shared history and two targets, each predicted from the shared history alone: line 1's target
(Office for 9,162 users, Art for 415) and line 2's target (always Art). Users are split as the
source splits them: train users 0-7999 train on their whole sequence (history, then both targets);
validation users 9000-9576 and test users 8000-8999 contribute their shared history to training
(no target of theirs is ever trained on) and are scored on their two targets. Every target is
ranked against all 38,396 items, the user's history excluded (full ranking, no sampled
negatives); HR@10/50/200 and NDCG@10 overall (2,000 test targets) and per content type of the
target. No published figure on this release was retrieved, so the rows compare the variants
measured here with each other and with the most-popular baseline.

Cold start: 10% of the items that have events (seeded) are held out of training entirely: every
event on them is removed from the training data and from the histories the model reads at test
time, so their id embeddings are never trained and they take the item tower's content path
(content type, categories, title text). Test targets that are one of these items are scored
separately ("cold" rows): each must be found among all 38,396 items from its content alone, and
("cold_among_cold" rows) among the 3,441 cold items only, as a new-items shelf would serve them.

Variants, one run, same split and budget: the SASRec user tower with the item tower's title text
(all-MiniLM-L6-v2) and without it (id + content type + categories), and the most-popular baseline.
Writes benchmarks/results/retrieval_amazon.json.
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

from evaluation.metrics import full_ranking_metrics
from feedcore.config import RetrievalConfig
from feedcore.datasets import load_dataset
from feedcore.features import build_feature_spec, item_features, latest_histories, pad_histories
from feedcore.splits import Split, target_line
from feedcore.text import item_text_embeddings
from retrieval.embed import embed_items, embed_users
from retrieval.train import evaluate_retrieval, train_retrieval

OUT = Path(__file__).parent / "results" / "retrieval_amazon.json"
TEXT_CACHE = Path("artifacts/benchmarks/amazon-arts-office-titles.npy")
BASE = RetrievalConfig(
    user_encoder="sasrec", embedding_dim=64, hidden_dim=128, num_blocks=2, num_heads=1, dropout=0.2,
    normalize=True, temperature=0.05, num_negatives=1024, in_batch_negatives=512, batch_size=128,
    learning_rate=2e-3, lr_schedule="cosine", epochs=30, bf16=True, id_dropout=0.25, seed=0, device="cpu",
)


def rank_among(model, spec, history: pl.DataFrame, heldout: pl.DataFrame, pool: np.ndarray) -> dict[str, float]:
    """HR@K / NDCG@10 of held-out items ranked against the items of `pool` only."""
    histories = latest_histories(history, spec)
    users = heldout["user_id"].to_list()
    hist = pad_histories([histories.get(u, np.zeros(0, np.int64)) for u in users], spec.max_history)
    scores = embed_users(model, spec.users.encode(heldout["user_id"]), hist) @ embed_items(model, pool).T
    position = {int(item): j for j, item in enumerate(pool)}
    target = np.array([position[int(i)] for i in spec.items.encode(heldout["item_id"])])
    return full_ranking_metrics(scores, target, [np.zeros(0, np.int64)] * len(users), (10, 50, 200))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="../shared/data/amazon-arts-office")
    parser.add_argument("--minutes", type=float, default=6.0, help="training budget per model")
    parser.add_argument("--cold-fraction", type=float, default=0.1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)

    ds = load_dataset("amazon-arts-office", args.root)
    spec = build_feature_spec(ds.items, ds.users, max_history=50)
    rng = np.random.default_rng(0)
    with_events = np.array(sorted(set(ds.events["item_id"].to_list())))
    cold = set(rng.choice(with_events, int(args.cold_fraction * len(with_events)), replace=False).tolist())
    warm = pl.col("item_id").is_in(list(cold)).not_()
    split = target_line(ds.events, ds.users)
    split = Split(split.train.filter(warm), split.valid, split.test)  # cold items never reach training
    feats = item_features(ds.items, split.train, spec)
    assert not (feats.popularity[spec.items.encode(pl.Series(list(cold)))] > 0).any()
    text = item_text_embeddings(ds.items, spec, TEXT_CACHE)
    test_cold = split.test.filter(~warm)
    history = split.train  # the shared histories of validation and test users, cold items removed

    cold_index = spec.items.encode(pl.Series(sorted(cold)))

    def evaluate(model) -> dict[str, float]:
        out = evaluate_retrieval(model, spec, history, split.test)
        out.update({f"cold/{k}": v for k, v in evaluate_retrieval(model, spec, history, test_cold).items()
                    if "/" not in k})
        if model is not None:  # the same cold targets ranked among the cold items only (a new-items shelf)
            out.update({f"cold_among_cold/{k}": v for k, v in rank_among(model, spec, history, test_cold,
                                                                          cold_index).items()})
        return out

    rows = [{"model": "most popular", **evaluate(None)}]
    for name, use_text in (("sasrec + title text", True), ("sasrec, id + type + categories", False)):
        config = dataclasses.replace(BASE, text_features=use_text, max_train_minutes=args.minutes)
        start = time.perf_counter()
        model, valid_metrics = train_retrieval(config, spec, feats, split, text=text if use_text else None,
                                               progress=False)
        rows.append({"model": name, **evaluate(model), "valid_ndcg@10": valid_metrics["ndcg@10"],
                     "train_minutes": valid_metrics["train_seconds"] / 60, "epochs": valid_metrics["epochs"],
                     "wall_minutes_incl_eval": (time.perf_counter() - start) / 60,
                     "config": dataclasses.asdict(config)})
    report = {"benchmark": "retrieval_amazon", "protocol": __doc__.strip(), "machine": platform.machine(),
              "threads": torch.get_num_threads(), "cold_items": len(cold), "cold_test_targets": test_cold.height,
              "test_targets": split.test.height, "results": rows}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    keys = ["hr@10", "ndcg@10", "arts_product/hr@10", "office_product/hr@10", "cold/hr@10", "cold/hr@200",
            "cold_among_cold/hr@10", "cold_among_cold/ndcg@10"]
    print(f"{'model':<34} " + " ".join(f"{k:>20}" for k in keys))
    for r in rows:
        print(f"{r['model']:<34} " + " ".join(f"{r.get(k, float('nan')):20.4f}" for k in keys))
    print(f"{len(cold)} cold items, {test_cold.height} test targets that are cold items; wrote {OUT}")


if __name__ == "__main__":
    main()
