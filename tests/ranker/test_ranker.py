"""The TorchRec ranker: KJT batching, forward/backward, fused-optimizer training through DMP."""

import numpy as np
import pytest
import torch

from feedcore.config import RankerConfig, TaskConfig
from feedcore.features import ItemFeatures
from ranker.batching import ranker_inputs
from ranker.data import pair_labels
from ranker.model import DENSE_FEATURES, SPARSE_FEATURES, MultiTaskRanker, MultiTaskRankerTrain, RankerArgs
from ranker.value_model import blend_by_value_model, value_scores

TASKS = (TaskConfig("click", "binary"), TaskConfig("rating", "regression", 0.5, "rating"))


def _item_features(n=10):
    return ItemFeatures(
        content_type=np.array([0] + [1, 2] * ((n - 1) // 2) + [1] * ((n - 1) % 2)),
        category_offsets=np.array([0, 0] + list(range(1, n)), np.int64)[: n + 1],
        category_values=np.arange(1, n, dtype=np.int64) % 3 + 1,
        popularity=np.linspace(0, 1, n, dtype=np.float32),
    )


def _args():
    return RankerArgs(num_users=6, num_items=10, num_content_types=3, num_categories=4, embedding_dim=8,
                      dense_hidden=(8,), cross_layers=2, over_hidden=(16, 8), tasks=TASKS)


def test_kjt_batching_lays_out_every_feature():
    feats = _item_features()
    user, item = np.array([1, 2]), np.array([3, 4])
    history = np.array([[0, 5, 6], [0, 0, 7]])
    batch = ranker_inputs(user, item, history, feats, labels=np.array([[1, 4.0], [0, np.nan]]))
    kjt = batch.sparse.to_dict()
    assert list(batch.sparse.keys()) == list(SPARSE_FEATURES)
    assert kjt["user_id"].values().tolist() == [1, 2]
    assert kjt["item_id"].values().tolist() == [3, 4]
    assert kjt["history"].lengths().tolist() == [2, 1]
    assert kjt["history"].values().tolist() == [5, 6, 7]
    assert kjt["content_type"].values().tolist() == feats.content_type[item].tolist()
    lengths, values = feats.categories_of(item)
    assert kjt["category"].lengths().tolist() == lengths.tolist()
    assert kjt["category"].values().tolist() == values.tolist()
    assert batch.dense.shape == (2, len(DENSE_FEATURES))
    assert torch.isnan(batch.labels[1, 1])


def test_forward_backward_and_missing_labels():
    torch.manual_seed(0)
    model = MultiTaskRanker(_args())
    feats = _item_features()
    batch = ranker_inputs(np.array([1, 2, 3]), np.array([3, 4, 5]), np.array([[0, 1], [2, 3], [0, 0]]), feats,
                          labels=np.array([[1, 4.0], [0, np.nan], [1, np.nan]]))
    out = model(batch.dense, batch.sparse)
    assert sorted(out) == ["click", "rating"] and out["click"].shape == (3,)
    assert ((out["click"] > 0) & (out["click"] < 1)).all()
    loss, per_task, _ = MultiTaskRankerTrain(model)(batch.dense, batch.sparse, batch.labels)
    loss.backward()
    grads = model.sparse_arch.embedding_bag_collection.embedding_bags["t_item"].weight.grad
    assert grads is not None and grads.abs().sum() > 0
    # The regression loss only sees the one present label.
    expected = (model.logits(batch.dense, batch.sparse)[0, 1] - 4.0) ** 2
    assert per_task[1].item() == pytest.approx(expected.item(), rel=1e-5)


def test_pair_labels_follow_task_declarations():
    import polars as pl

    events = pl.DataFrame({"user_id": ["u", "u", "v"], "item_id": ["a", "a", "a"],
                           "event": ["view", "rating", "view"], "value": [None, 4.5, None]})
    tasks = (TaskConfig("engage"), TaskConfig("like", "binary", 1, "rating", 4.0),
             TaskConfig("rating", "regression", 1, "rating"))
    labels = {r["user_id"]: r for r in pair_labels(events, tasks).iter_rows(named=True)}
    assert (labels["u"]["engage"], labels["u"]["like"], labels["u"]["rating"]) == (1.0, 1.0, 4.5)
    assert (labels["v"]["engage"], labels["v"]["like"], labels["v"]["rating"]) == (1.0, 0.0, None)


def test_value_model_weights_tasks_and_refuses_unknown_ones():
    preds = {"click": np.array([0.2, 0.9]), "hide": np.array([0.5, 0.1])}
    scores = value_scores(preds, {"click": 1.0, "hide": -2.0})
    assert scores.tolist() == pytest.approx([-0.8, 0.7])
    assert blend_by_value_model(scores).tolist() == [1, 0]
    with pytest.raises(KeyError, match="follow"):
        value_scores(preds, {"follow": 1.0})


def test_training_with_fused_embeddings_learns(trained_engine):
    from feedcore.artifacts import load_checkpoint

    ckpt = load_checkpoint(trained_engine.ranker_path, "ranker")
    metrics = ckpt.extras["metrics"]
    # Held-out positives vs sampled negatives: well above chance after one tiny epoch.
    assert metrics["engage/auc"] > 0.75
    assert metrics["like/auc"] > 0.7
    assert all("/fused@" in v for v in metrics["sharding"].values())
    # The gathered tables come back whole (one row per item) for the unsharded inference model.
    table = ckpt.state_dict["sparse_arch.embedding_bag_collection.embedding_bags.t_item.weight"]
    assert table.shape == (len(ckpt.feature_spec.items), 8)


def test_dmp_plans_fused_kernels_and_the_fused_optimizer_updates_tables():
    from feedcore.distributed import process_group
    from ranker.train import describe_plan, shard_for_training, unsharded_state_dict

    torch.manual_seed(0)
    feats = _item_features()
    batch = ranker_inputs(np.array([1, 2, 3, 4]), np.array([3, 4, 5, 6]),
                          np.array([[0, 1], [2, 3], [0, 0], [7, 8]]), feats,
                          labels=np.array([[1, 4.0], [0, np.nan], [1, 2.0], [0, np.nan]]))
    with process_group("cpu"):
        dmp, dense_optimizer = shard_for_training(MultiTaskRanker(_args(), device=torch.device("meta")),
                                                  RankerConfig(sparse_learning_rate=0.1), "cpu", 1)
        plan = describe_plan(dmp.plan)
        before = unsharded_state_dict(dmp)
        losses = []
        for _ in range(30):
            loss, _, _ = dmp(batch.dense, batch.sparse, batch.labels)
            dense_optimizer.zero_grad()
            loss.backward()
            dense_optimizer.step()
            losses.append(loss.item())
        after = unsharded_state_dict(dmp)
    assert {v.split("@")[0] for v in plan.values()} <= {"table_wise/fused", "column_wise/fused",
                                                         "table_column_wise/fused"}
    assert len(plan) == 4
    key = "model.sparse_arch.embedding_bag_collection.embedding_bags.t_item.weight"
    changed = (before[key] != after[key]).any(dim=1)
    # Rows in the batch (candidates 3-6 and history 1,2,3,7,8) were updated; row 9 was never looked up.
    assert changed[[1, 2, 3, 4, 5, 6, 7, 8]].all() and not changed[9]
    assert losses[-1] < losses[0] * 0.7


def test_torchrun_two_processes_shard_the_tables(trained_engine, tmp_path):
    """The same training job under torchrun: 2 gloo ranks, tables spread over both, rank 0 saves."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from feedcore.artifacts import load_checkpoint

    artifacts = tmp_path / "artifacts"
    shutil.copytree(trained_engine.artifacts_dir, artifacts, ignore=shutil.ignore_patterns("ranker"))
    config = tmp_path / "c.toml"
    config.write_text(f"""artifacts_dir = '{artifacts}'
[data]
max_history = {trained_engine.data.max_history}
history_events = ['rating']
[ranker]
embedding_dim = 8
dense_hidden = [16]
over_hidden = [32, 16]
epochs = 1
batch_size = 2048
""")
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--standalone", "-m", "feedcore.cli", "train", "ranker", "--config", str(config)],
                            cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = load_checkpoint(artifacts / "ranker" / "model.pt", "ranker")
    ranks = {v.split("@")[1] for v in ckpt.extras["metrics"]["sharding"].values()}
    assert ranks == {"0", "1"}
    assert ckpt.extras["metrics"]["engage/auc"] > 0.75
