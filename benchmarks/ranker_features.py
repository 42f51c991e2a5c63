"""The ranker's optional features, one at a time and together, against the base model, in one run.

    .venv/bin/python benchmarks/ranker_features.py --config configs/ciao.toml [--epochs 1] [--seeds 0,1]
        [--variants base,recency,retrieval_score,text,context,target_attention,all]

Needs `feed data prepare` and `feed train retrieval` on the config first (the retrieval score
reads the retrieval checkpoint); title embeddings come from the per-dataset cache (computed once).

Every variant is the config's `[ranker]` section with one feature turned on (``all``: every
feature the dataset can feed; ``text`` is skipped on a dataset without titles), trained by
`ranker.train.train_ranker` with the same seed, so training negatives, batch order and the
validation examples (validation events scored with the user's training history, plus uniform
sampled negatives) are the same for every variant. Each seed in `--seeds` trains every variant
again. Reports valid AUC / GAUC per binary task (mean and standard deviation over the seeds) and
each variant's ratio to ``base``; writes benchmarks/results/ranker_features.json (merged by
dataset, so runs on several datasets share the file).
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
import torch

from feedcore.config import EngineConfig, RankerConfig, load_config
from feedcore.io import atomic_write_bytes
from feedcore.prepare import load_training_inputs
from ranker.train import load_retrieval_scorer, train_ranker, with_text

OUT = Path(__file__).parent / "results" / "ranker_features.json"
VARIANTS = {
    "base": {},
    "recency": {"recency": True},
    "retrieval_score": {"retrieval_score": True},
    "text": {"text_features": True},
    "context": {"context": True},
    "target_attention": {"history_pooling": "target_attention"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--epochs", type=int, default=None, help="override [ranker] epochs for every variant")
    parser.add_argument("--batch-size", type=int, default=None, help="override [ranker] batch_size")
    parser.add_argument("--variants", default=",".join([*VARIANTS, "all"]))
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    config = load_config(args.config)
    base = dataclasses.replace(config.ranker, epochs=args.epochs or config.ranker.epochs,
                               batch_size=args.batch_size or config.ranker.batch_size)
    inputs = load_training_inputs(config)
    has_titles = inputs.items["title"].null_count() < inputs.items.height
    has_time = inputs.split.train["ts"].null_count() < inputs.split.train.height
    if has_titles:
        inputs = with_text(inputs, config)
    retrieval, retrieval_version = (load_retrieval_scorer(config, inputs) if config.retrieval_path.is_file()
                                    else (None, None))
    variants = {name: VARIANTS[name] for name in args.variants.split(",") if name in VARIANTS}
    if "all" in args.variants.split(","):
        variants["all"] = {k: v for name, change in VARIANTS.items() for k, v in change.items()
                           if name != "text" or has_titles}
    skipped = {}
    if not has_titles:
        skipped["text"] = "the dataset has no titles"
    if retrieval is None:
        skipped["retrieval_score"] = f"no retrieval model at {config.retrieval_path} (run `feed train retrieval`)"
    for name in skipped:
        variants.pop(name, None)
        if "all" in variants:
            for key in VARIANTS[name]:
                variants["all"].pop(key, None)

    results: dict[str, dict] = {}
    for seed in [int(x) for x in args.seeds.split(",")]:
        for name, change in variants.items():
            ranker = dataclasses.replace(base, seed=seed, **change)
            start = time.perf_counter()
            _, metrics = train_ranker(ranker, inputs.spec, inputs.item_features, inputs.split,
                                      config.data.history_events, progress=False,
                                      retrieval=retrieval if ranker.retrieval_score else None)
            for key in ("sharding", "parity_probe"):
                metrics.pop(key, None)
            entry = results.setdefault(name, {"features": change, "seeds": {}})
            entry["seeds"][str(seed)] = {"seconds": round(time.perf_counter() - start, 1), **metrics}
            entry["mean"] = {k: float(np.mean([r[k] for r in entry["seeds"].values()]))
                             for k, v in metrics.items() if isinstance(v, float)}
            entry["sd"] = {k: float(np.std([r[k] for r in entry["seeds"].values()], ddof=1))
                           if len(entry["seeds"]) > 1 else 0.0 for k in entry["mean"]}
            logging.info("%s seed %d: %s", name, seed, entry["seeds"][str(seed)])
            write(config, args.config, base, has_titles, has_time, retrieval_version, results, skipped)  # partial

    tasks = [t.name for t in base.tasks if t.kind == "binary"]
    print(f"\n{config.data.dataset} (split {config.data.split}, {base.epochs} epoch(s), seeds {args.seeds}); "
          "valid AUC mean ± sd, ratio to base, GAUC")
    print(f"{'variant':18s}" + "".join(f"{t + ' auc':>18s}{'ratio':>7s}{t + ' gauc':>12s}" for t in tasks))
    for name, r in results.items():
        m, sd = r["mean"], r["sd"]
        row = "".join(f"{m[f'{t}/auc']:11.4f} ± {sd[f'{t}/auc']:.3f}{m[f'{t}/auc'] / results['base']['mean'][f'{t}/auc']:7.3f}"
                      f"{m[f'{t}/gauc']:12.4f}" for t in tasks)
        print(f"{name:18s}{row}")

    print(f"wrote {OUT}")


def write(config: EngineConfig, config_path: str, base: RankerConfig, has_titles: bool, has_time: bool,
          retrieval_version: str | None, results: dict, skipped: dict[str, str]) -> None:
    """Merge this dataset's figures into the results file."""
    tasks = [t.name for t in base.tasks if t.kind == "binary"]
    figures = json.loads(OUT.read_text()) if OUT.is_file() else {}
    figures[config.data.dataset] = {
        "config": config_path, "split": config.data.split, "epochs": base.epochs, "batch_size": base.batch_size,
        "embedding_dim": base.embedding_dim, "has_titles": has_titles, "has_timestamps": has_time,
        "retrieval_model": retrieval_version,
        "valid_examples": results["base"]["mean"]["examples"] if "base" in results else None,
        "variants": results,
        "skipped": skipped,
        "ratio_to_base": {name: {f"{t}/auc": r["mean"][f"{t}/auc"] / results["base"]["mean"][f"{t}/auc"] for t in tasks}
                          for name, r in results.items()} if "base" in results else {},
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()},
    }
    atomic_write_bytes(OUT, (json.dumps(figures, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
