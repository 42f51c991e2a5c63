"""DistributedModelParallel against the unsharded ranker: the same weights and batch must give the
same loss, per-task losses, predictions and dense gradients.

Imported by `test_dmp_parity.py` (world size 1, in the test process) and run as a script under
``torchrun --nproc_per_node=2`` (world size 2, gloo), where every rank feeds the same batch: DDP
averages identical gradients, so the sharded model must match the unsharded one exactly as in one
process. Also covers `unsharded_state_dict`, which rank 0 uses to build the reference.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import torch

from feedcore.config import RankerConfig, TaskConfig
from feedcore.distributed import process_group
from feedcore.features import ItemFeatures
from ranker.batching import RankerBatch, ranker_inputs
from ranker.model import MultiTaskRanker, MultiTaskRankerTrain, RankerArgs, RankerFeatures
from ranker.train import shard_for_training, unsharded_state_dict

TOLERANCE = 1e-5
# Every task kind, and a dislike (binary, positive at or below a value).
TASKS = (TaskConfig("click", "binary"), TaskConfig("dislike", "binary", 0.5, "rating", below=2.0),
         TaskConfig("plays", "count", 0.5), TaskConfig("rating", "regression", 0.5, "rating"))
FEATURES = {
    "base": RankerFeatures(),
    "all_bag": RankerFeatures(recency=True, retrieval_score=True, text_dim=6, text_projection=3, context=True),
    "all_attention": RankerFeatures(recency=True, retrieval_score=True, text_dim=6, text_projection=3, context=True,
                                    history_pooling="target_attention"),
}
CASES = [(experts, name) for experts in ("shared", "mmoe", "ple") for name in FEATURES]


def case(experts: str, features: str, batch_size: int = 24) -> tuple[RankerArgs, RankerBatch]:
    """The model args and one seeded batch (labels of every kind, some missing) of a parity case."""
    args = RankerArgs(num_users=7, num_items=13, num_content_types=3, num_categories=5, embedding_dim=8,
                      dense_hidden=(8,), cross_layers=2, over_hidden=(16, 8), tasks=TASKS, experts=experts,
                      num_shared_experts=2, num_task_experts=1, expert_hidden=8, features=FEATURES[features])
    rng = np.random.default_rng(0)
    n = args.num_items
    items = ItemFeatures(content_type=rng.integers(1, 3, n), category_offsets=np.arange(n + 1) * 2,
                         category_values=rng.integers(1, 5, 2 * n), popularity=rng.random(n).astype(np.float32))
    history = rng.integers(0, n, (batch_size, 5)) * (rng.random((batch_size, 5)) < 0.7)
    labels = np.column_stack([rng.integers(0, 2, batch_size), rng.integers(0, 2, batch_size),
                              rng.poisson(2.0, batch_size), rng.normal(3.0, 1.0, batch_size)]).astype(np.float32)
    labels[rng.random(labels.shape) < 0.2] = np.nan
    # The sparse inputs by the one transform; the dense ones drawn at the model's width (their
    # meaning does not matter to parity, only that both models read the same numbers).
    sparse_only = dataclasses.replace(args.features, recency=False, retrieval_score=False, text_dim=0)
    batch = ranker_inputs(rng.integers(1, args.num_users, batch_size), rng.integers(1, n, batch_size), history,
                          items, labels, source=rng.integers(0, 6, batch_size), features=sparse_only,
                          event_time=rng.uniform(1.6e9, 1.7e9, batch_size))
    width = args.num_scalar_dense + args.features.text_dim
    dense = torch.from_numpy(rng.normal(size=(batch_size, width)).astype(np.float32))
    return args, RankerBatch(dense, batch.sparse, batch.labels)


def max_differences(experts: str, features: str, world_size: int) -> dict[str, float] | None:
    """Largest absolute differences between the DMP-wrapped and the unsharded model, on rank 0
    (None on other ranks). Call inside a process group of `world_size`."""
    args, batch = case(experts, features)
    torch.manual_seed(0)
    dmp, _ = shard_for_training(MultiTaskRanker(args, device=torch.device("meta")), RankerConfig(), "cpu",
                                world_size)
    state = unsharded_state_dict(dmp)  # the weights DMP materialised, gathered whole on rank 0
    dmp.eval()
    with torch.no_grad():
        served = dmp.module.model(batch.dense, batch.sparse)
    dmp.train()
    loss, per_task, _ = dmp(batch.dense, batch.sparse, batch.labels)
    loss.backward()  # the fused table optimizer steps here; dense gradients are kept for comparison
    grads = {n: p.grad for n, p in dmp.named_parameters() if p.grad is not None}
    if torch.distributed.get_rank() != 0:
        return None

    reference = MultiTaskRanker(args)
    reference.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    reference.eval()
    with torch.no_grad():
        expected = reference(batch.dense, batch.sparse)
    train = MultiTaskRankerTrain(reference.train())
    ref_loss, ref_per_task, _ = train(batch.dense, batch.sparse, batch.labels)
    ref_loss.backward()
    ref_grads = {n: p.grad for n, p in train.named_parameters() if p.grad is not None}
    dense_names = {n for n in ref_grads if "embedding" not in n}
    if set(grads) != dense_names:
        raise AssertionError(f"dense parameters with gradients differ: {sorted(set(grads) ^ dense_names)}")
    return {
        "loss": abs(loss.item() - ref_loss.item()),
        "per_task": (per_task - ref_per_task).abs().max().item(),
        "predictions": max((served[t] - expected[t]).abs().max().item() for t in expected),
        "dense_gradients": max((grads[n] - ref_grads[n]).abs().max().item() for n in dense_names),
    }


def main() -> int:
    """Every case under the current process group (torchrun); rank 0 prints one JSON line."""
    with process_group("cpu") as (rank, world_size):
        results = {f"{e}/{f}": max_differences(e, f, world_size) for e, f in CASES}
    if rank == 0:
        print(json.dumps({"world_size": world_size, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
