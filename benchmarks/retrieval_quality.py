"""Retrieval quality: the trained two-tower model against the most-popular baseline, full ranking.

    .venv/bin/python benchmarks/retrieval_quality.py [--config configs/demo.toml]

Protocol: leave-one-out (each user's last target event is the test item, the second-to-last
validation), the held-out item ranked against every item of the catalogue, the user's training
items excluded; HR@10/50/200 and NDCG@10 on the test split. Uses the artifacts of `feed demo`
(or prepare / train retrieval). Writes benchmarks/results/retrieval_quality_<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl

from feedcore.artifacts import load_checkpoint
from feedcore.config import load_config
from feedcore.features import history_events
from feedcore.splits import Split
from retrieval.model import TwoTower
from retrieval.train import evaluate_retrieval

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/demo.toml")
    args = parser.parse_args()
    config = load_config(args.config)
    ckpt = load_checkpoint(config.retrieval_path, "retrieval")
    model = TwoTower.from_checkpoint(ckpt)
    split = Split.read(config.splits_dir)
    events = tuple(ckpt.extras["history_events"])
    # Test-time history: training plus validation events (the validation item precedes the test item).
    history = pl.concat([history_events(split.train, events), history_events(split.valid, events)],
                        how="diagonal_relaxed")
    rows = {
        "most_popular": evaluate_retrieval(None, ckpt.feature_spec, history, split.test),
        "two_tower": evaluate_retrieval(model, ckpt.feature_spec, history, split.test),
    }
    report = {"benchmark": "retrieval_quality", "dataset": config.data.dataset, "split": "test",
              "protocol": "leave-one-out, full ranking over all items, training items excluded",
              "model_version": ckpt.version, "config": ckpt.config, "results": rows}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"retrieval_quality_{config.data.dataset}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"{'model':<14} {'HR@10':>7} {'HR@50':>7} {'HR@200':>7} {'NDCG@10':>8}  users")
    for name, m in rows.items():
        print(f"{name:<14} {m['hr@10']:7.4f} {m['hr@50']:7.4f} {m['hr@200']:7.4f} {m['ndcg@10']:8.4f}  {m['users']:.0f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
