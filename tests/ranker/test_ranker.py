"""The TorchRec ranker: KJT batching, forward/backward, fused-optimizer training through DMP."""

import numpy as np
import pytest
import torch

from feedcore.config import RankerConfig, TaskConfig
from feedcore.features import ItemFeatures
from ranker.batching import ranker_inputs
from ranker.data import pair_labels
from ranker.model import DENSE_FEATURES, SPARSE_FEATURES, MultiTaskRanker, MultiTaskRankerTrain, RankerArgs

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
    from ranker.train import describe_plan, shard_for_training, train_step, unsharded_state_dict

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
        losses = [train_step(dmp, dense_optimizer, batch) for _ in range(30)]
        after = unsharded_state_dict(dmp)
    assert {v.split("@")[0] for v in plan.values()} <= {"table_wise/fused", "column_wise/fused",
                                                         "table_column_wise/fused"}
    assert len(plan) == len(_args().tables())
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
                             "--standalone", "-m", "feedcli", "train", "ranker", "--config", str(config)],
                            cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = load_checkpoint(artifacts / "ranker" / "model.pt", "ranker")
    ranks = {v.split("@")[1] for v in ckpt.extras["metrics"]["sharding"].values()}
    assert ranks == {"0", "1"}
    assert ckpt.extras["metrics"]["engage/auc"] > 0.75


@pytest.mark.parametrize("experts", ["mmoe", "ple", "shared"])
def test_every_multi_task_layout_predicts_each_task(experts):
    import dataclasses

    torch.manual_seed(0)
    model = MultiTaskRanker(dataclasses.replace(_args(), experts=experts, num_shared_experts=3, expert_hidden=8,
                                                num_task_experts=2))
    batch = ranker_inputs(np.array([1, 2]), np.array([3, 4]), np.array([[0, 1], [2, 3]]), _item_features())
    out = model(batch.dense, batch.sparse)
    assert sorted(out) == ["click", "rating"] and out["click"].shape == (2,)
    if experts != "shared":
        x = torch.randn(5, model.experts.gates.in_features)
        gates = model.experts.gates(x).view(5, 2, -1).softmax(-1)
        assert torch.allclose(gates.sum(-1), torch.ones(5, 2))
        # The batched-matmul mixture equals the definition: each task's gated sum of its experts.
        layer, h = model.experts.experts, model.experts.hidden
        outputs = torch.stack([torch.relu(x @ layer.weight[e * h : (e + 1) * h].T + layer.bias[e * h : (e + 1) * h])
                               for e in range(model.experts.num_experts)], dim=1)  # (5, E, H), expert by expert
        # Task t's gate reads the shared experts, then its own.
        s, p = model.experts.num_shared, model.experts.num_per_task
        index = torch.tensor([list(range(s)) + [s + t * p + j for j in range(p)] for t in range(2)])
        reference = torch.einsum("bte,bteh->bth", gates, outputs[:, index])
        assert torch.allclose(model.experts(x), reference, atol=1e-6)


def test_ple_task_experts_learn_only_from_their_own_task():
    import dataclasses

    torch.manual_seed(0)
    model = MultiTaskRanker(dataclasses.replace(_args(), experts="ple", num_shared_experts=2, num_task_experts=1,
                                                expert_hidden=8))
    batch = ranker_inputs(np.array([1, 2]), np.array([3, 4]), np.array([[0, 1], [2, 3]]), _item_features())
    model.logits(batch.dense, batch.sparse)[:, 0].sum().backward()  # the click task only
    grad = model.experts.experts.weight.grad.view(4, 8, -1)  # per expert: 2 shared, then click's, rating's
    assert all(g.abs().sum() > 0 for g in grad[:3])
    assert grad[3].abs().sum() == 0


def test_a_checkpoint_with_one_layer_per_expert_loads_into_the_stacked_layer():
    import dataclasses

    torch.manual_seed(0)
    model = MultiTaskRanker(dataclasses.replace(_args(), experts="ple", num_shared_experts=2, num_task_experts=1,
                                                expert_hidden=8))
    state = model.state_dict()
    weight, bias = state.pop("experts.experts.weight"), state.pop("experts.experts.bias")
    for e in range(4):  # the layout written before: experts.experts.<e>._mlp.0._linear.{weight,bias}
        state[f"experts.experts.{e}._mlp.0._linear.weight"] = weight[e * 8 : (e + 1) * 8].clone()
        state[f"experts.experts.{e}._mlp.0._linear.bias"] = bias[e * 8 : (e + 1) * 8].clone()
    torch.manual_seed(1)
    loaded = MultiTaskRanker(model.args)
    loaded.load_state_dict(state)  # strict: every old key consumed, every new one filled
    batch = ranker_inputs(np.array([1, 2]), np.array([3, 4]), np.array([[0, 1], [2, 3]]), _item_features())
    assert torch.equal(loaded.logits(batch.dense, batch.sparse), model.logits(batch.dense, batch.sparse))


def test_candidate_source_is_a_sparse_feature():
    from ranker.model import CANDIDATE_SOURCES

    batch = ranker_inputs(np.array([1, 2]), np.array([3, 4]), np.array([[0, 1], [2, 3]]), _item_features(),
                          source=np.array([CANDIDATE_SOURCES.index("ann"), CANDIDATE_SOURCES.index("popular")]))
    assert batch.sparse.to_dict()["source"].values().tolist() == [1, 4]
    default = ranker_inputs(np.array([1]), np.array([3]), np.array([[0, 1]]), _item_features())
    assert default.sparse.to_dict()["source"].values().tolist() == [0]  # unknown


def test_int8_serving_model_matches_fp32():
    from ranker.model import quantize_for_serving

    torch.manual_seed(0)
    model = MultiTaskRanker(_args()).eval()
    for table in model.sparse_arch.embedding_bag_collection.embedding_bags.values():
        torch.nn.init.normal_(table.weight, std=0.3)
    rng = np.random.default_rng(0)
    n = 64
    batch = ranker_inputs(rng.integers(1, 6, n), rng.integers(1, 10, n), rng.integers(0, 10, (n, 5)),
                          _item_features())
    int8 = quantize_for_serving(model)
    table = int8.sparse_arch.embedding_bag_collection.embedding_bags["t_item"].weight
    assert table.dtype == torch.uint8  # really quantized: int8 rows plus per-row scale and bias
    with torch.no_grad():
        ref, out = model(batch.dense, batch.sparse), int8(batch.dense, batch.sparse)
    for task in ref:
        assert (ref[task] - out[task]).abs().max() < 5e-3
        assert not torch.equal(ref[task], out[task])
    assert (torch.argsort(ref["click"])[-10:].sort().values == torch.argsort(out["click"])[-10:].sort().values).all()


def test_popularity_sampled_negatives_follow_the_popularity():
    import polars as pl

    from feedcore.features import build_feature_spec
    from ranker.data import make_examples

    items = pl.DataFrame({"item_id": [f"i{k}" for k in range(50)], "content_type": ["movie"] * 50,
                          "categories": [[]] * 50}, schema_overrides={"categories": pl.List(pl.String)})
    events = pl.DataFrame({"user_id": ["u"] * 20, "item_id": [f"i{k}" for k in range(20)], "seq": list(range(20)),
                           "event": ["rating"] * 20, "value": [5.0] * 20})
    spec = build_feature_spec(items, pl.DataFrame({"user_id": ["u"]}), max_history=5)
    popularity = np.zeros(len(spec.items))
    hot = spec.items.encode_one("i42")
    popularity[hot] = 1.0
    rng = np.random.default_rng(0)
    examples = make_examples(events, events, spec, (TaskConfig("engage"),), 10, rng, popularity=popularity,
                             popular_share=0.5)
    negatives = examples.item[20:]
    assert 0.4 < (negatives == hot).mean() < 0.6  # half by popularity (all on i42), half uniform
    uniform = make_examples(events, events, spec, (TaskConfig("engage"),), 10, rng)
    assert (uniform.item[20:] == hot).mean() < 0.1


def test_count_tasks_learn_the_expected_count_with_a_poisson_loss():
    import dataclasses

    import polars as pl

    torch.manual_seed(0)
    args = dataclasses.replace(_args(), tasks=(TaskConfig("click"), TaskConfig("plays", "count", 1.0, "play")))
    model = MultiTaskRanker(args)
    feats = _item_features()
    labels = np.array([[1, 6.0], [0, 0.0]] * 8)
    batch = ranker_inputs(np.array([1, 2] * 8), np.array([3, 4] * 8), np.zeros((16, 2), np.int64), feats,
                          labels=labels)
    train = MultiTaskRankerTrain(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(300):
        loss, _, _ = train(batch.dense, batch.sparse, batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out = model(batch.dense, batch.sparse)["plays"]
    assert out[0].item() == pytest.approx(6.0, rel=0.1) and out[1].item() < 0.5  # expected counts, not logits
    events = pl.DataFrame({"user_id": ["u", "u", "v"], "item_id": ["a", "a", "a"], "event": ["play", "play", "view"],
                           "value": [2.0, 3.0, None]})
    labels = {r["user_id"]: r["plays"] for r in pair_labels(events, args.tasks).iter_rows(named=True)}
    assert labels == {"u": 5.0, "v": 0.0}


def test_dislike_and_dataset_column_tasks():
    import polars as pl

    from feedcore.errors import DataError

    events = pl.DataFrame({"user_id": ["u", "v", "w"], "item_id": ["a", "a", "a"], "event": ["rating"] * 3,
                           "value": [1.0, 3.0, 5.0], "helpfulness": [2, None, 6]})
    tasks = (TaskConfig("dislike", "binary", 1, "rating", below=2.0),
             TaskConfig("helpfulness", "regression", 0.1, "rating", column="helpfulness"))
    labels = {r["user_id"]: (r["dislike"], r["helpfulness"]) for r in pair_labels(events, tasks).iter_rows(named=True)}
    assert labels == {"u": (1.0, 2.0), "v": (0.0, None), "w": (0.0, 6.0)}
    with pytest.raises(DataError, match="helpfulness"):
        pair_labels(events.drop("helpfulness"), tasks)
