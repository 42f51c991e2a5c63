"""The blender: type mix, diversity, creator caps, seen filtering; deterministic."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedcore.config import BlendConfig
from serving.mixing.blender import blend


def test_without_constraints_the_feed_is_by_value_and_seen_items_are_dropped():
    values = np.array([0.3, 0.9, 0.5, 0.9])
    assert blend(values, ["a"] * 4, BlendConfig()).tolist() == [1, 3, 2, 0]
    order = blend(values, ["a"] * 4, BlendConfig(), item_ids=["w", "x", "y", "z"], exclude={"x"})
    assert order.tolist() == [3, 2, 0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["video", "post", "product"]), min_size=1, max_size=60),
       st.floats(0.05, 0.9), st.integers(0, 10_000))
def test_type_shares_hold_in_every_prefix_while_each_type_lasts(types, share, seed):
    values = np.random.default_rng(seed).random(len(types))
    config = BlendConfig(type_shares={"video": share}, depth=len(types))
    order = blend(values, types, config)
    assert sorted(order.tolist()) == list(range(len(types)))  # a permutation: nothing lost
    placed = np.array(types, dtype=object)[order]
    # Types without a share split the rest: video `share`, each other type (1 - share) / 2.
    target = {"video": share, "post": (1 - share) / 2, "product": (1 - share) / 2}
    left = {t: np.cumsum((placed == t)[::-1])[::-1] for t in target}  # items of t at or after each position
    for p in range(1, len(order) + 1):
        if all(left[t][p - 1] for t in target):  # every type still available when position p was filled
            for t in target:
                assert abs((placed[:p] == t).sum() - target[t] * p) <= 1 + 1e-9
    # Within one type, items keep their value order.
    for t in set(types):
        vals = values[order][placed == t]
        assert (np.diff(vals) <= 0).all()


def test_creator_cap_spreads_one_creators_items_until_nothing_else_is_left():
    values = np.array([1.0, 0.99, 0.98, 0.97, 0.5, 0.4, 0.3])
    creators = ["c", "c", "c", "c", "d", "e", None]
    order = blend(values, ["post"] * 7, BlendConfig(creator_cap=1, creator_window=2), creators=creators)
    placed = [creators[i] for i in order]
    assert placed[:6] == ["c", "d", "c", "e", "c", None]  # no two c's in a row while others remain
    assert placed[6] == "c" and sorted(order.tolist()) == list(range(7))  # then the cap yields


def test_diversity_prefers_an_item_unlike_those_already_placed():
    values = np.array([1.0, 0.95, 0.9])
    emb = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]])  # item 1 duplicates item 0
    assert blend(values, ["a"] * 3, BlendConfig(diversity=0.0), embeddings=emb).tolist() == [0, 1, 2]
    assert blend(values, ["a"] * 3, BlendConfig(diversity=0.5), embeddings=emb).tolist() == [0, 2, 1]


def test_same_inputs_same_feed():
    rng = np.random.default_rng(0)
    values, emb = rng.random(300), rng.normal(size=(300, 8))
    types = rng.choice(["a", "b", "generated"], 300).tolist()
    creators = rng.choice(["x", "y", "z", "w"], 300).tolist()
    config = BlendConfig(type_shares={"a": 0.5, "generated": 0.1}, diversity=0.3, creator_cap=2, creator_window=5)
    first = blend(values, types, config, creators=creators, embeddings=emb)
    assert (first == blend(values, types, config, creators=creators, embeddings=emb)).all()
    assert sorted(first.tolist()) == list(range(300))


@pytest.mark.parametrize("kwargs, message", [
    ({"type_shares": {"a": 0.7, "b": 0.6}}, "sum to at most 1"),
    ({"diversity": 1.5}, "diversity"),
    ({"creator_window": 0}, "creator_window"),
])
def test_bad_blend_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BlendConfig(**kwargs)


def test_diversity_needs_embeddings():
    with pytest.raises(ValueError, match="embeddings"):
        blend(np.array([1.0, 0.5]), ["a", "a"], BlendConfig(diversity=0.2))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(["video", "post", "product", "generated"]), min_size=1, max_size=80),
       st.floats(0.0, 0.5), st.integers(1, 100), st.integers(0, 10_000))
def test_the_type_merge_fast_path_equals_the_greedy_reference(types, share, depth, seed):
    """Type shares without diversity or caps take `_merge_by_type`; `_greedy` is its reference."""
    from serving.mixing.blender import _greedy, _merge_by_type

    rng = np.random.default_rng(seed)
    values = rng.integers(0, 5, len(types)).astype(float)  # ties on purpose
    config = BlendConfig(type_shares={"generated": share, "post": share / 2}, depth=depth)
    by_value = np.argsort(-values, kind="stable")
    present = list(dict.fromkeys(np.array(types, dtype=object)[by_value]))
    leftover = (1 - sum(config.type_shares.values())) / max(1, len([t for t in present if t not in config.type_shares]))
    shares = np.array([config.type_shares.get(t, leftover) for t in present])
    codes = np.array([present.index(t) for t in types])
    depth = min(depth, len(types))
    fast = _merge_by_type(by_value, codes, shares, depth)
    reference = _greedy(values, by_value, np.ones(len(types), bool), codes, shares, depth, config, None, None)
    assert fast.tolist() == reference.tolist()
    assert blend(values, types, config)[:depth].tolist() == fast.tolist()
