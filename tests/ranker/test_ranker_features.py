"""The ranker's optional features: item age, retrieval score, title text, time context, and the
history pooled by target attention; each through the real model and TorchRec's DMP."""

import dataclasses

import numpy as np
import polars as pl
import pytest
import torch

from feedcore.config import RankerConfig, TaskConfig
from feedcore.features import ItemFeatures, build_feature_spec, item_features, time_context
from ranker.batching import RetrievalScorer, ranker_inputs
from ranker.model import MultiTaskRanker, MultiTaskRankerTrain, RankerArgs, RankerFeatures, TargetAttention
from retrieval.model import TwoTower, TwoTowerArgs

DAY = 86_400.0
ALL = RankerFeatures(recency=True, retrieval_score=True, text_dim=4, text_projection=3, context=True)


def _features(text_dim: int = 4) -> ItemFeatures:
    rng = np.random.default_rng(0)
    n = 10
    return ItemFeatures(
        content_type=np.array([0] + [1, 2] * 4 + [1]),
        category_offsets=np.array([0, 0] + list(range(1, n)), np.int64),
        category_values=np.arange(1, n, dtype=np.int64) % 3 + 1,
        popularity=np.linspace(0, 1, n, dtype=np.float32),
        created_at=np.array([np.nan] + [DAY * k for k in range(n - 2)] + [np.nan]),
        text=rng.normal(size=(n, text_dim)).astype(np.float16),
    )


def _scorer(feats: ItemFeatures) -> RetrievalScorer:
    torch.manual_seed(0)
    model = TwoTower(TwoTowerArgs(6, 10, 3, 4, 8, 16), feats).eval()
    with torch.no_grad():
        emb = model.item_embeddings(torch.arange(10)).numpy()
    emb[0] = 0.0
    return RetrievalScorer(model, emb)


def _args(features: RankerFeatures) -> RankerArgs:
    return RankerArgs(num_users=6, num_items=10, num_content_types=3, num_categories=4, embedding_dim=8,
                      dense_hidden=(8,), cross_layers=1, over_hidden=(8,),
                      tasks=(TaskConfig("click"), TaskConfig("rating", "regression", 0.5, "rating")),
                      features=features)


def test_optional_features_lay_out_age_score_text_and_context():
    feats, scorer = _features(), _scorer(_features())
    user, item = np.array([1, 2, 3]), np.array([3, 9, 0])
    history = np.array([[0, 1, 2], [0, 0, 5], [0, 0, 0]])
    when = np.array([10 * DAY + 3600 * 5, 4 * DAY, np.nan])
    batch = ranker_inputs(user, item, history, feats, features=ALL, event_time=when, retrieval=scorer)
    dense = batch.dense.numpy()
    assert dense.shape == (3, 2 + 2 + 1 + 4)
    # Age: item 3 was created on day 2, seen on day 10.2; item 9 has no creation time; row 2 no time.
    np.testing.assert_allclose(dense[0, 2:4], [np.log1p(10 + 5 / 24 - 2), 0.0], rtol=1e-6)
    assert dense[1, 2:4].tolist() == [0.0, 1.0] and dense[2, 2:4].tolist() == [0.0, 1.0]
    # The retrieval score: the user tower's embedding · the item's (0 for the unknown item).
    with torch.no_grad():
        u = scorer.model.user_embeddings(torch.from_numpy(user), torch.from_numpy(history)).numpy()
    np.testing.assert_allclose(dense[:2, 4], (u[:2] * scorer.item_embeddings[item[:2]]).sum(1), rtol=1e-5)
    assert dense[2, 4] == 0.0
    np.testing.assert_array_equal(dense[:, 5:], feats.text[item].astype(np.float32))
    kjt = batch.sparse.to_dict()
    assert list(batch.sparse.keys())[-1] == "context"
    lengths, values = time_context(when)
    assert kjt["context"].lengths().tolist() == [2, 2, 0] == lengths.tolist()
    assert kjt["context"].values().tolist() == values.tolist() == [1 + 5, 25 + (10 + 3) % 7, 1, 25 + (4 + 3) % 7]


def test_a_model_that_reads_a_feature_refuses_inputs_without_it():
    feats = _features()
    with pytest.raises(ValueError, match="retrieval"):
        ranker_inputs(np.array([1]), np.array([2]), np.array([[0, 1]]), feats, features=ALL)
    with pytest.raises(ValueError, match="text"):
        ranker_inputs(np.array([1]), np.array([2]), np.array([[0, 1]]), dataclasses.replace(feats, text=None),
                      features=RankerFeatures(text_dim=4))


def test_item_creation_time_falls_back_to_the_first_training_event():
    items = pl.DataFrame({"item_id": ["a", "b", "c"], "content_type": ["x"] * 3, "categories": [[]] * 3,
                          "created_at": [100, None, None]}, schema_overrides={"categories": pl.List(pl.String)})
    events = pl.DataFrame({"user_id": ["u", "u", "v"], "item_id": ["a", "b", "b"], "ts": [500, 700, 300],
                           "seq": [0, 1, 0], "event": ["view"] * 3})
    spec = build_feature_spec(items, pl.DataFrame({"user_id": ["u", "v"]}), 5)
    created = item_features(items, events, spec).created_at
    index = {i: spec.items.encode_one(i) for i in "abc"}
    assert created[index["a"]] == 100.0 and created[index["b"]] == 300.0  # the catalogue's, else the first event
    assert np.isnan(created[index["c"]]) and np.isnan(created[0])


def test_target_attention_ignores_padding_and_follows_the_candidate():
    torch.manual_seed(0)
    attention = TargetAttention(4)
    history = torch.randn(2, 3, 4)
    valid = torch.tensor([[False, True, True], [False, False, False]])
    candidate = torch.randn(2, 4)
    out = attention(history, valid, candidate)
    moved = history.clone()
    moved[:, 0] += 10.0  # a padded position
    assert torch.allclose(attention(moved, valid, candidate), out)
    assert torch.equal(out[1], torch.zeros(4))  # empty history
    assert not torch.allclose(attention(history, valid, candidate + 1.0)[0], out[0])  # pooling depends on the candidate


@pytest.mark.parametrize("features", [ALL, dataclasses.replace(ALL, history_pooling="target_attention")],
                         ids=["bag", "target_attention"])
def test_every_feature_trains_under_dmp_with_fused_tables(features):
    from feedcore.distributed import process_group
    from ranker.train import describe_plan, shard_for_training, train_step

    torch.manual_seed(0)
    feats = _features()
    rng = np.random.default_rng(0)
    n = 32
    labels = np.stack([rng.integers(0, 2, n), rng.normal(size=n)], axis=1)
    batch = ranker_inputs(rng.integers(1, 6, n), rng.integers(1, 10, n), rng.integers(0, 10, (n, 4)), feats,
                          labels, features=features, event_time=rng.uniform(0, 30 * DAY, n), retrieval=_scorer(feats))
    args = _args(features)
    with process_group("cpu"):
        dmp, dense_optimizer = shard_for_training(MultiTaskRanker(args, device=torch.device("meta")),
                                                  RankerConfig(sparse_learning_rate=0.1), "cpu", 1)
        plan = describe_plan(dmp.plan)
        losses = [train_step(dmp, dense_optimizer, batch) for _ in range(40)]
        trained = {n: p for n, p in dmp.named_parameters()}
    assert set(plan) == {t.name for t in args.tables()} and "t_context" in plan
    assert all("/fused@" in v for v in plan.values())
    assert losses[-1] < losses[0] * 0.7
    # The text projection and the attention MLP are dense parameters (Adam), not fused tables.
    assert any("text_projection" in n for n in trained)
    if features.history_pooling == "target_attention":
        assert any("target_attention" in n for n in trained)


def test_int8_serving_copy_of_a_target_attention_model_matches_fp32():
    from ranker.model import quantize_for_serving

    torch.manual_seed(0)
    features = RankerFeatures(history_pooling="target_attention", context=True)
    model = MultiTaskRanker(_args(features)).eval()
    for module in (model.sparse_arch.embedding_bag_collection.embedding_bags.values(),
                   model.sparse_arch.embedding_collection.embeddings.values()):
        for table in module:
            torch.nn.init.normal_(table.weight, std=0.3)
    rng = np.random.default_rng(0)
    n = 32
    batch = ranker_inputs(rng.integers(1, 6, n), rng.integers(1, 10, n), rng.integers(0, 10, (n, 5)), _features(),
                          features=features, event_time=rng.uniform(0, 30 * DAY, n))
    int8 = quantize_for_serving(model)
    assert int8.sparse_arch.embedding_collection.embeddings["t_item"].weight.dtype == torch.uint8
    with torch.no_grad():
        ref, out = model(batch.dense, batch.sparse), int8(batch.dense, batch.sparse)
    for task in ref:
        assert (ref[task] - out[task]).abs().max() < 1e-2
        assert not torch.equal(ref[task], out[task])


def test_training_examples_carry_event_times():
    from feedcore.features import FeatureSpec, Vocabulary
    from ranker.data import make_examples

    spec = FeatureSpec(Vocabulary(("u",)), Vocabulary(tuple("abcd")), Vocabulary(("x",)), Vocabulary(()), 3)
    events = pl.DataFrame({"user_id": ["u"] * 3, "item_id": ["a", "b", "c"], "ts": [10, 20, 30], "seq": [0, 1, 2],
                           "event": ["view"] * 3, "value": [None] * 3})
    examples = make_examples(events, events, spec, (TaskConfig("engage"),), 2, np.random.default_rng(0))
    assert examples.time.tolist() == [10, 20, 30] + [10, 10, 20, 20, 30, 30]  # negatives at their positive's time
    no_time = make_examples(events.drop("ts"), events.drop("ts"), spec, (TaskConfig("engage"),), 1,
                            np.random.default_rng(0))
    assert np.isnan(no_time.time).all()


def test_popularity_and_age_are_as_of_each_rows_time():
    from feedcore.features import item_features_from_dict, item_features_to_dict

    items = pl.DataFrame({"item_id": list("abcdef"), "content_type": ["x"] * 6, "categories": [[]] * 6},
                         schema_overrides={"categories": pl.List(pl.String)})
    users = pl.DataFrame({"user_id": ["u", "v", "w"]})
    events = pl.DataFrame({"user_id": ["u", "v", "w", "u", "v", "w"], "item_id": ["a", "a", "a", "b", "c", "c"],
                           "ts": [10, 20, 30, 25, 30, None], "seq": [0, 0, 0, 1, 1, 1], "event": ["view"] * 6,
                           "value": [None] * 6})
    spec = build_feature_spec(items, users, max_history=3)
    feats = item_features(items, events, spec)
    a, b, c = (spec.items.encode_one(i) for i in "abc")
    counts = np.expm1(feats.popularity_at(np.array([a, a, a, a, b, b, c]), np.array([10, 20, 31, np.nan, 25, 26, 30])))
    # Strictly before; a NaN time reads the total; c's event without a time counts before every row.
    assert counts.round().tolist() == [0, 1, 3, 3, 0, 1, 1]
    batch = ranker_inputs(np.array([1, 1]), np.array([a, a]), np.zeros((2, 3), np.int64), feats,
                          event_time=np.array([20.0, 1e9]))
    assert np.expm1(batch.dense[:, 0].numpy()).round().tolist() == [1, 3]  # the training transform reads it
    # Age: known once the item was engaged (no catalogue created_at here), unknown at its first
    # engagement, as for an item new at serving time.
    created = feats.content(np.array([a, a, b, a]), times=np.array([10.0, 20.0, 25.0, np.nan])).created_at
    assert created[[1, 3]].tolist() == [10.0, 10.0] and np.isnan(created[[0, 2]]).all()
    # A checkpoint keeps the totals only: what a request (after every training event) reads.
    loaded = item_features_from_dict(item_features_to_dict(feats))
    assert loaded.event_times is None and np.array_equal(loaded.popularity_at(np.array([a]), np.array([20.0])),
                                                         feats.popularity[[a]])


def test_loss_wrapper_runs_with_text_features_only():
    torch.manual_seed(0)
    features = RankerFeatures(text_dim=4)
    model = MultiTaskRanker(_args(features))
    batch = ranker_inputs(np.array([1, 2]), np.array([3, 4]), np.array([[0, 1], [2, 3]]), _features(),
                          np.array([[1, 2.0], [0, np.nan]]), features=features)
    loss, _, _ = MultiTaskRankerTrain(model)(batch.dense, batch.sparse, batch.labels)
    loss.backward()
    assert model.text_projection.weight.grad.abs().sum() > 0
