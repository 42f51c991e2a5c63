"""Retrieval training a user can trust (best epoch, early stopping, a budget that holds) and its
fast paths against their references (fused chunked cross-entropy, `rand < p` dropout, chunked
full-ranking metrics)."""

import dataclasses
import itertools

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from feedcore.config import RetrievalConfig
from feedcore.datasets import load_dataset
from feedcore.features import build_feature_spec, item_features
from feedcore.metrics import full_ranking_metrics, rank_of_target
from feedcore.splits import Split, leave_one_out
from retrieval.ops import Dropout, chunked_softmax_cross_entropy, ranks_in_chunks
from retrieval.train import (
    evaluate_retrieval,
    heldout_scores,
    learning_rate_multiplier,
    train_retrieval,
)


@pytest.mark.parametrize("rows,chunk", [(37, 5), (64, 64), (10, 100)])
def test_fused_chunked_cross_entropy_matches_plain_cross_entropy(rows, chunk):
    torch.manual_seed(0)
    q = torch.randn(rows, 8, requires_grad=True)
    e = torch.randn(23, 8, requires_grad=True)
    t = torch.randint(0, 23, (rows,))
    want = F.cross_entropy(q @ e.T / 0.2, t)
    want_grads = torch.autograd.grad(want * 3.0, (q, e))  # a non-unit upstream gradient too
    got = chunked_softmax_cross_entropy(q, e, t, 0.2, chunk=chunk)
    got_grads = torch.autograd.grad(got * 3.0, (q, e))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    # bfloat16 matmuls (what training runs under autocast) stay close to the float32 reference.
    bf = chunked_softmax_cross_entropy(q, e, t, 0.2, chunk=chunk, dtype=torch.bfloat16)
    assert abs(bf.item() - want.item()) < 0.05 * want.item()


def test_rand_dropout_matches_reference_dropout_in_distribution():
    torch.manual_seed(0)
    x = torch.ones(400_000)
    layer = Dropout(0.2)
    out = layer(x)
    ref = F.dropout(x, 0.2, training=True)
    # Same law as the reference: zeros at rate p, survivors scaled by 1 / (1 - p), mean kept.
    assert abs((out == 0).float().mean().item() - (ref == 0).float().mean().item()) < 0.005
    assert set(out.unique().tolist()) == set(ref.unique().tolist()) == {0.0, 1.25}
    assert abs(out.mean().item() - 1.0) < 0.01
    assert torch.equal(layer.eval()(x), x)
    with pytest.raises(ValueError, match="dropout probability 1.0"):
        Dropout(1.0)


def test_chunked_ranks_match_the_dense_reference_with_ties_and_exclusions():
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(300, 6)).astype(np.float32)
    items = np.round(rng.normal(size=(80, 6)), 1).astype(np.float32)
    items[7] = items[3]  # exact ties
    target = rng.integers(0, 80, 300)
    exclude = [rng.choice(80, rng.integers(0, 10), replace=False) for _ in range(300)]
    exclude[0] = np.array([target[0], 1])  # the target itself is never excluded
    dense = queries @ items.T
    want = rank_of_target(dense, target, exclude)
    ranks, top = ranks_in_chunks(queries, items, target, exclude, top_k=5, chunk=7)
    np.testing.assert_array_equal(ranks, want)
    masked = dense.copy()
    for r, cols in enumerate(exclude):
        masked[r, cols] = -np.inf
        masked[r, target[r]] = dense[r, target[r]]
    np.testing.assert_allclose(np.take_along_axis(masked, top, 1), -np.sort(-masked, 1)[:, :5], rtol=1e-6)
    # Popularity (no queries): every row scores the offset.
    counts = rng.integers(0, 5, 80).astype(np.float32)
    np.testing.assert_array_equal(ranks_in_chunks(None, None, target, exclude, item_offset=counts, chunk=11)[0],
                                  rank_of_target(np.broadcast_to(counts, (300, 80)), target, exclude))
    # Within a group (a per-type shard): the rank among the target's own group's items only,
    # i.e. the dense reference on each group's columns alone.
    groups = rng.integers(0, 3, 80)
    within = ranks_in_chunks(queries, items, target, exclude, item_groups=groups, chunk=7)[0]
    for r in range(300):
        cols = np.flatnonzero(groups == groups[target[r]])
        keep = np.setdiff1d(cols, exclude[r])
        keep = np.union1d(keep, [target[r]])
        assert within[r] == int((dense[r, keep] >= dense[r, target[r]]).sum()) - 1


@pytest.fixture(scope="module")
def small(bundled_data):
    ds = load_dataset("ml-latest-small", bundled_data)
    spec = build_feature_spec(ds.items, ds.users, max_history=20)
    split = leave_one_out(ds.events.filter(pl.col("event") == "rating"))
    return spec, split, item_features(ds.items, split.train, spec)


# Small and eager to overfit: validation NDCG@10 peaks within a few epochs and then falls.
OVERFIT = RetrievalConfig(user_encoder="sasrec", embedding_dim=16, hidden_dim=16, num_blocks=1, dropout=0.0,
                          normalize=False, num_negatives=0, batch_size=32, learning_rate=0.02, epochs=8,
                          device="cpu", seed=0)


def _reference_curve(small, config):
    """The validation NDCG@10 after each epoch and the weights it was measured on."""
    spec, split, feats = small
    curve = []

    def record(epoch, model, seconds):
        ndcg = evaluate_retrieval(model, spec, split.train, split.valid)["ndcg@10"]
        curve.append((ndcg, {k: v.clone() for k, v in model.state_dict().items()}))

    train_retrieval(config, spec, feats, split, progress=False, on_epoch_end=record)
    return curve


def test_best_validation_epoch_weights_are_returned_and_patience_stops_early(small):
    torch.set_num_threads(1)
    spec, split, feats = small
    curve = _reference_curve(small, OVERFIT)
    ndcgs = [n for n, _ in curve]
    best = int(np.argmax(ndcgs))
    assert best < len(curve) - 2 and ndcgs[-1] < ndcgs[best], ndcgs  # the case this guards: an early peak
    model, metrics = train_retrieval(OVERFIT, spec, feats, split, progress=False)
    assert metrics["best_epoch"] == best + 1 and metrics["epochs"] == len(curve)
    assert metrics["ndcg@10"] == pytest.approx(ndcgs[best])
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, curve[best][1][k], atol=0, rtol=0)
    # Patience 2: stops at the second validation in a row without a new best, with the best so far.
    running, since = 0, 0
    for stop in range(1, len(ndcgs)):
        running, since = (stop, 0) if ndcgs[stop] > ndcgs[running] else (running, since + 1)
        if since == 2:
            break
    patient, m = train_retrieval(dataclasses.replace(OVERFIT, patience=2), spec, feats, split, progress=False)
    assert since == 2 and m["stopped_by_patience"] == 1.0 and m["epochs"] == stop + 1 < len(curve)
    assert m["best_epoch"] == running + 1 and m["ndcg@10"] == pytest.approx(ndcgs[running])
    for k, v in patient.state_dict().items():
        torch.testing.assert_close(v, curve[running][1][k], atol=0, rtol=0)


def test_budget_stops_inside_an_epoch_and_the_schedule_decays_over_it(small):
    torch.set_num_threads(1)
    spec, split, feats = small
    ticks = itertools.count()
    config = dataclasses.replace(OVERFIT, epochs=50, lr_schedule="cosine", max_train_minutes=0.5, batch_size=8,
                                 validate_every=0)
    steps_per_epoch = -(-len(set(split.train["user_id"])) // config.batch_size)
    _, metrics = train_retrieval(config, spec, feats, split, progress=False, clock=lambda: float(next(ticks)))
    # One tick per step: the 30-second budget ends after about 30 of an epoch's steps.
    assert metrics["stopped_by_budget"] == 1.0 and 25 <= metrics["steps"] <= 31 < steps_per_epoch
    assert metrics["epochs"] < 1.0
    # The learning rate reached ~0 with the budget; a schedule over `epochs` would be near its peak.
    assert metrics["final_lr_multiplier"] < 0.02
    assert learning_rate_multiplier("cosine", int(metrics["steps"]), 50 * steps_per_epoch) > 0.5


def test_an_empty_validation_split_trains_the_set_epochs_on_train_plus_validation(small):
    torch.set_num_threads(1)
    spec, split, feats = small
    both = Split(pl.concat([split.train, split.valid]), split.valid.clear(), split.test)
    model, metrics = train_retrieval(dataclasses.replace(OVERFIT, epochs=2), spec, feats, both, progress=False)
    assert metrics["epochs"] == 2.0 and metrics["best_epoch"] == 2.0 and "ndcg@10" not in metrics
    assert evaluate_retrieval(model, spec, both.train, split.test)["ndcg@10"] > 0.0


def test_evaluate_retrieval_matches_the_dense_metrics_on_a_trained_model(small):
    torch.set_num_threads(1)
    spec, split, feats = small
    model, _ = train_retrieval(dataclasses.replace(OVERFIT, epochs=1, validate_every=0), spec, feats,
                               Split(split.train, split.valid.clear(), split.test), progress=False)
    for m in (model, None):
        got = evaluate_retrieval(m, spec, split.train, split.valid, chunk=64)
        want = full_ranking_metrics(*heldout_scores(m, spec, split.train, split.valid), (10, 50, 200))
        assert got == pytest.approx(want) and got["users"] == split.valid.height
    assert got["hr@200"] > 0  # a real ranking, not all misses
