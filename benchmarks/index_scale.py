"""faiss at catalogue scale: recall@100 against exact search and queries/s, per index type.

    .venv/bin/python benchmarks/index_scale.py [--config configs/demo.toml] [--items 1000000]

Vectors: the trained item embeddings of a retrieval checkpoint (the demo's by default), scaled up
to `--items` synthetic items: each synthetic item is a real item's embedding plus isotropic
Gaussian noise whose norm is `--noise` times the median distance from a real item to its nearest
real neighbour, so the synthetic catalogue keeps the trained embeddings' cluster structure (uniform
random vectors would be far harder and unrepresentative). Queries: the checkpoint's user
embeddings (real users), perturbed the same way up to `--queries`. Ground truth: exact inner-product
search (`Flat`). Every index runs in the same process on the same vectors, with the same threads.
Memory: each index's serialized size per item. Writes benchmarks/results/index_scale.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import faiss
import numpy as np
import polars as pl

from feedcore.artifacts import load_checkpoint
from feedcore.config import load_config
from feedcore.features import history_events, latest_histories, pad_histories
from feedcore.schemas import CanonicalDataset
from retrieval.embed import embed_items, embed_users
from retrieval.index import ItemIndex
from retrieval.model import TwoTower

OUT = Path(__file__).parent / "results" / "index_scale.json"
# (factory, search-parameter sweep)
VARIANTS = [
    ("IVF4096,Flat", ["nprobe=8", "nprobe=16", "nprobe=32", "nprobe=64"]),
    ("HNSW32", ["efSearch=64", "efSearch=128", "efSearch=256"]),
    ("IVF4096,PQ32", ["nprobe=16", "nprobe=32", "nprobe=64"]),
    ("IVF4096,PQ32x4fs,RFlat", ["nprobe=16,k_factor_rf=4", "nprobe=32,k_factor_rf=4", "nprobe=64,k_factor_rf=8"]),
]


def scale_up(base: np.ndarray, n: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    sample = base[rng.choice(len(base), min(len(base), 5000), replace=False)]
    d = sample @ base.T
    norms = (sample ** 2).sum(1)[:, None] + (base ** 2).sum(1)[None] - 2 * d
    nearest = np.sqrt(np.maximum(np.partition(norms, 1, axis=1)[:, 1], 0))
    sigma = noise * np.median(nearest) / np.sqrt(base.shape[1])
    out = base[rng.integers(0, len(base), n)] + rng.normal(0, sigma, (n, base.shape[1])).astype(np.float32)
    return out.astype(np.float32)


def recall_at(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def bytes_per_item(index: ItemIndex) -> float:
    """The serialized faiss index's size per vector (codes, lists, graph links, ids; the id map's
    Python strings excluded): what the index holds in memory per item."""
    return sum(faiss.serialize_index(shard.index).nbytes for shard in index.shards.values()) / len(index)


def timed_search(index: ItemIndex, queries: np.ndarray, k: int, repeats: int = 3) -> tuple[list[list[str]], float]:
    """Search through `ItemIndex.search` (what serving calls: faiss plus the id map); best of `repeats`."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        _, ids = index.search(queries, k)
        best = min(best, time.perf_counter() - start)
    return ids, len(queries) / best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/demo.toml")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    config = load_config(args.config)
    ckpt = load_checkpoint(config.retrieval_path, "retrieval")
    model = TwoTower.from_checkpoint(ckpt)
    spec = ckpt.feature_spec
    items = embed_items(model, np.arange(1, len(spec.items)))
    events = history_events(CanonicalDataset.read(config.prepared_dir).events, tuple(ckpt.extras["history_events"]))
    histories = latest_histories(events, spec)
    users = sorted(histories)
    user_emb = embed_users(model, spec.users.encode(pl.Series(users)),
                           pad_histories([histories[u] for u in users], spec.max_history))
    xb = np.concatenate([items, scale_up(items, args.items - len(items), args.noise, rng)])
    xq = np.concatenate([user_emb, scale_up(user_emb, max(0, args.queries - len(user_emb)), args.noise, rng)])
    xq = xq[: args.queries]
    ids = [str(i) for i in range(len(xb))]
    one_type = ["item"] * len(xb)  # one shard: the whole catalogue

    exact = ItemIndex.build(xb, ids, one_type, "Flat", model_version=ckpt.version)
    truth, exact_qps = timed_search(exact, xq, args.k, repeats=1)
    rows = [{"factory": "Flat", "search_params": "", "recall@100": 1.0, "qps": exact_qps, "speedup": 1.0,
             "build_seconds": 0.0, "bytes_per_item": bytes_per_item(exact)}]
    print(f"{'factory':<26} {'params':<26} {'recall@100':>10} {'qps':>9} {'x exact':>8} {'build s':>8} {'B/item':>7}")
    print(f"{'Flat':<26} {'':<26} {1.0:10.4f} {exact_qps:9.0f} {1.0:8.1f} {0.0:8.1f} {rows[0]['bytes_per_item']:7.1f}")
    for factory, sweep in VARIANTS:
        start = time.perf_counter()
        index = ItemIndex.build(xb, ids, one_type, factory, model_version=ckpt.version)
        build = time.perf_counter() - start
        memory = bytes_per_item(index)
        for params in sweep:
            index.set_search_params(params)
            found, qps = timed_search(index, xq, args.k)
            row = {"factory": factory, "search_params": params, "recall@100": recall_at(found, truth), "qps": qps,
                   "speedup": qps / exact_qps, "build_seconds": build, "bytes_per_item": memory}
            rows.append(row)
            print(f"{factory:<26} {params:<26} {row['recall@100']:10.4f} {qps:9.0f} {row['speedup']:8.1f} {build:8.1f} "
                  f"{memory:7.1f}")
    meeting = [r for r in rows if r["recall@100"] >= 0.95 and r["speedup"] >= 10]
    report = {"benchmark": "index_scale", "items": len(xb), "dim": xb.shape[1], "queries": len(xq), "k": args.k,
              "base_items": len(items), "noise": args.noise, "model_version": ckpt.version,
              "threads": faiss.omp_get_max_threads(), "results": rows,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "target": "recall@100 >= 0.95 at >= 10x exact throughput",
              "meeting_target": meeting}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(f"{len(meeting)} configuration(s) meet the target; wrote {OUT}")


if __name__ == "__main__":
    main()
