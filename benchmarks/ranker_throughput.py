"""Ranker training throughput: TorchRec fused embeddings against a plain-PyTorch nn.EmbeddingBag reference.

    .venv/bin/python benchmarks/ranker_throughput.py [--device cpu|cuda] [--steps 60]

The same architecture (`ranker.model.MultiTaskRanker`: embedding tables → DCN-v2 → MMoE → task
towers) and the same batches, in one run, with the sparse part done three ways:

- ``torchrec fused``: EmbeddingBagCollection sharded by DistributedModelParallel onto fbgemm's fused
  kernel, RowWiseAdagrad applied inside the backward pass (what `feed train ranker` runs);
- ``nn.EmbeddingBag, dense grads``: one torch.nn.EmbeddingBag per table, every parameter updated by
  torch.optim.Adagrad (the dense gradient of the whole table every step);
- ``nn.EmbeddingBag, sparse grads``: the same with ``sparse=True`` and torch.optim.SparseAdam for the
  tables (Adam for the rest), the best plain-PyTorch option.

Data: real ranker examples from tmall-multibehavior (view / cart / buy tasks, 2 sampled negatives
per positive), 15,450 users × 11,954 items. "Large catalogue" rows repeat the run with the item and
user tables padded to 1M rows each (ids unchanged; the extra rows are never looked up), which is
where the per-step cost of dense table gradients shows. Batches are built before timing;
samples/s counts training steps only (forward, backward, optimizer), after warm-up steps.
Writes benchmarks/results/ranker_throughput[_cuda].json.
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
from torch import nn
from torchrec import KeyedJaggedTensor, PoolingType

from feedcore.config import RankerConfig, TaskConfig
from feedcore.datasets import load_dataset
from feedcore.distributed import process_group
from feedcore.features import build_feature_spec, item_features
from ranker.batching import ranker_inputs
from ranker.data import make_examples
from ranker.model import SPARSE_FEATURES, MultiTaskRanker, MultiTaskRankerTrain, RankerArgs
from ranker.train import model_args, shard_for_training

OUT = Path(__file__).parent / "results"
TASKS = (TaskConfig("view", event="view"), TaskConfig("cart", event="cart"), TaskConfig("buy", event="buy"))
CONFIG = RankerConfig(embedding_dim=64, tasks=TASKS, batch_size=2048, sparse_learning_rate=0.05)


class PlainSparseArch(nn.Module):
    """The SparseArch of `MultiTaskRanker` with one torch.nn.EmbeddingBag per table."""

    def __init__(self, args: RankerArgs, sparse: bool, device: str) -> None:
        super().__init__()
        tables = args.tables()
        self.bags = nn.ModuleDict({
            t.name: nn.EmbeddingBag(t.num_embeddings, t.embedding_dim, sparse=sparse, device=device, include_last_offset=True,
                                    mode="mean" if t.pooling == PoolingType.MEAN else "sum")
            for t in tables
        })
        self.table_of = {f: t.name for t in tables for f in t.feature_names}

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        by_name = features.to_dict()
        return torch.cat([self.bags[self.table_of[f]](by_name[f].values(), by_name[f].offsets())
                          for f in SPARSE_FEATURES], dim=1)


def time_steps(step, batches, warmup: int, device: str) -> float:
    """Samples per second of `step` over `batches` (after `warmup` untimed steps)."""
    for b in batches[:warmup]:
        step(b)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for b in batches[warmup:]:
        step(b)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return sum(len(b.dense) for b in batches[warmup:]) / (time.perf_counter() - start)


def fused(args: RankerArgs, batches, warmup: int, device: str) -> float:
    with process_group(device):
        dmp, dense_optimizer = shard_for_training(MultiTaskRanker(args, device=torch.device("meta")), CONFIG,
                                                  device, 1)

        def step(b):
            loss, _, _ = dmp(b.dense, b.sparse, b.labels)
            dense_optimizer.zero_grad()
            loss.backward()
            dense_optimizer.step()

        return time_steps(step, batches, warmup, device)


def plain(args: RankerArgs, batches, warmup: int, device: str, sparse: bool) -> float:
    model = MultiTaskRanker(args, device=torch.device(device))
    model.sparse_arch = PlainSparseArch(args, sparse, device)
    train = MultiTaskRankerTrain(model).to(device)
    tables = list(model.sparse_arch.parameters())
    table_ids = {id(p) for p in tables}
    dense = [p for p in train.parameters() if id(p) not in table_ids]
    if sparse:
        optimizers = [torch.optim.SparseAdam(tables, lr=1e-3), torch.optim.Adam(dense, lr=CONFIG.dense_learning_rate)]
    else:
        optimizers = [torch.optim.Adagrad(tables, lr=CONFIG.sparse_learning_rate),
                      torch.optim.Adam(dense, lr=CONFIG.dense_learning_rate)]

    def step(b):
        loss, _, _ = train(b.dense, b.sparse, b.labels)
        for opt in optimizers:
            opt.zero_grad()
        loss.backward()
        for opt in optimizers:
            opt.step()

    return time_steps(step, batches, warmup, device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args_ = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args_.threads)

    ds = load_dataset("tmall")
    spec = build_feature_spec(ds.items, ds.users, max_history=50)
    train_events = ds.events.filter(ds.events["split"] == "train")
    feats = item_features(ds.items, train_events, spec)
    rng = np.random.default_rng(0)
    examples = make_examples(train_events.filter(train_events["event"] == "buy"), train_events, spec, TASKS,
                             2, rng)
    n = (args_.steps + args_.warmup) * CONFIG.batch_size
    order = rng.permutation(len(examples))[:n]
    batches = []
    for i in range(0, n, CONFIG.batch_size):
        rows = examples.take(order[i : i + CONFIG.batch_size])
        batches.append(ranker_inputs(rows.user, rows.item, rows.history, feats, rows.labels).to(args_.device))

    base = model_args(CONFIG, spec)
    rows = []
    for catalogue, args in (("data", base),
                            ("1M rows", dataclasses.replace(base, num_items=1_000_000, num_users=1_000_000))):
        for name, run in (("torchrec fused (RowWiseAdagrad in backward)", lambda a: fused(a, batches, args_.warmup,
                                                                                             args_.device)),
                          ("nn.EmbeddingBag, dense grads (Adagrad)",
                           lambda a: plain(a, batches, args_.warmup, args_.device, sparse=False)),
                          ("nn.EmbeddingBag, sparse grads (SparseAdam)",
                           lambda a: plain(a, batches, args_.warmup, args_.device, sparse=True))):
            torch.manual_seed(0)
            rate = run(args)
            rows.append({"tables": catalogue, "variant": name, "samples_per_s": rate,
                         "item_rows": args.num_items, "user_rows": args.num_users})
            print(f"{catalogue:>8}  {name:<46} {rate:10.0f} samples/s", flush=True)
        fused_rate = rows[-3]["samples_per_s"]
        for r in rows[-3:]:
            r["fused_speedup"] = fused_rate / r["samples_per_s"]

    suffix = "" if args_.device == "cpu" else f"_{args_.device.split(':')[0]}"
    out = OUT / f"ranker_throughput{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "ranker_throughput", "protocol": __doc__.strip(), "device": args_.device,
        "machine": platform.machine(), "threads": torch.get_num_threads(), "batch_size": CONFIG.batch_size,
        "steps": args_.steps, "embedding_dim": CONFIG.embedding_dim, "examples_available": len(examples),
        "results": rows,
    }, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
