"""ML-1M sequential retrieval against the published rows on the same file.

    .venv/bin/python benchmarks/retrieval_ml1m.py [--encoders sasrec hstu] [--minutes 28]

Data: ../shared/data/movielens/ml-1m/sasrec/ml-1m.txt (6,040 users, 3,416 items, 999,611 events),
the file of the SASRec / gSASRec papers. Protocol (that of the gSASRec README numbers): each user's
last item is the test target, ranked against all 3,416 items with the items the user already rated
removed; the input is the user's previous items (the last 200). We hold out every user's
second-to-last item for validation (gSASRec holds out 512 users' only), so our models train on
slightly fewer events. Training stops after the epoch that passes the wall-clock budget; the test
set is scored once, at the end. Writes benchmarks/results/retrieval_ml1m.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import time
from pathlib import Path

import polars as pl
import torch

from feedcore.config import RetrievalConfig
from feedcore.datasets import load_dataset
from feedcore.features import build_feature_spec, item_features
from feedcore.splits import leave_one_out
from retrieval.train import evaluate_retrieval, train_retrieval

OUT = Path(__file__).parent / "results" / "retrieval_ml1m.json"
PUBLISHED = [
    {"model": "SASRec (gSASRec README, BCE, 1 negative)", "hr@10": 0.2392, "ndcg@10": 0.1259, "source": "gSASRec README, this file"},
    {"model": "gSASRec (gSASRec README, gBCE, 128 negatives)", "hr@10": 0.3003, "ndcg@10": 0.1726, "source": "gSASRec README, this file"},
    {"model": "HSTU-large (HSTU README)", "hr@10": 0.3294, "ndcg@10": 0.1893, "source": "HSTU README, own ML-1M preprocessing (3,706 items): only roughly comparable"},
]
BASE = RetrievalConfig(
    embedding_dim=64, hidden_dim=128, num_blocks=2, num_heads=1, dropout=0.2, normalize=False,
    num_negatives=0, batch_size=128, learning_rate=3e-3, lr_schedule="cosine", epochs=45, bf16=True,
    seed=0, device="cpu",
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="../shared/data/movielens/ml-1m")
    parser.add_argument("--encoders", nargs="+", default=["sasrec", "hstu"])
    parser.add_argument("--minutes", type=float, default=25.0, help="training budget per model")
    parser.add_argument("--epochs", type=int, default=BASE.epochs, help="cosine schedule length")
    parser.add_argument("--eval-every", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)

    ds = load_dataset("ml-1m", args.root)
    spec = build_feature_spec(ds.items, ds.users, max_history=200)
    split = leave_one_out(ds.events)
    feats = item_features(ds.items, split.train, spec)
    test_history = pl.concat([split.train, split.valid])
    rows = [{"model": "most popular", **evaluate_retrieval(None, spec, test_history, split.test)}]
    for encoder in args.encoders:
        config = dataclasses.replace(BASE, user_encoder=encoder, epochs=args.epochs, max_train_minutes=args.minutes)
        curve = []

        def record(epoch, model, seconds, curve=curve, encoder=encoder):
            if epoch % args.eval_every == 0:
                m = evaluate_retrieval(model, spec, split.train, split.valid)
                curve.append({"epoch": epoch, "seconds": round(seconds), "valid_hr@10": m["hr@10"],
                              "valid_ndcg@10": m["ndcg@10"]})
                logging.info("%s epoch %d: valid %s", encoder, epoch, curve[-1])

        start = time.perf_counter()
        model, valid = train_retrieval(config, spec, feats, split, progress=False, on_epoch_end=record)
        test = evaluate_retrieval(model, spec, test_history, split.test)
        rows.append({"model": encoder, **test, "valid_ndcg@10": valid["ndcg@10"],
                     "train_minutes": valid["train_seconds"] / 60, "epochs": valid["epochs"],
                     "wall_minutes_incl_eval": (time.perf_counter() - start) / 60,
                     "config": dataclasses.asdict(config), "valid_curve": curve})
    report = {"benchmark": "retrieval_ml1m", "protocol": __doc__.strip(), "machine": platform.processor() or
              platform.machine(), "threads": torch.get_num_threads(), "results": rows, "published": PUBLISHED}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(f"\n{'model':<48} {'HR@10':>7} {'NDCG@10':>8} {'train min':>9}")
    for r in PUBLISHED:
        print(f"{r['model']:<48} {r['hr@10']:7.4f} {r['ndcg@10']:8.4f} {'':>9}")
    for r in rows:
        minutes = f"{r['train_minutes']:9.1f}" if "train_minutes" in r else ""
        print(f"{'this engine: ' + r['model']:<48} {r['hr@10']:7.4f} {r['ndcg@10']:8.4f} {minutes}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
