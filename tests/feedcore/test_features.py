"""Feature transforms: one definition for training and serving."""

import numpy as np
import polars as pl

from feedcore.features import (
    Vocabulary,
    build_feature_spec,
    histories_before_each_event,
    latest_histories,
    pad_histories,
)
from feedcore.schemas import CanonicalDataset


def test_vocabulary_reserves_zero_for_unknown():
    vocab = Vocabulary.from_series(pl.Series(["b", "a", "b"]))
    assert len(vocab) == 3
    assert vocab.encode(pl.Series(["a", "zzz", None, "b"])).tolist() == [1, 0, 0, 2]
    assert vocab.encode_one("b") == 2 and vocab.decode(2) == "b" and vocab.decode(0) is None


def test_pad_histories_right_aligns_and_keeps_the_tail():
    out = pad_histories(pl.Series([[1, 2, 3], [], [4, 5, 6, 7, 8]]), 4)
    assert out.tolist() == [[0, 1, 2, 3], [0, 0, 0, 0], [5, 6, 7, 8]]
    assert (pad_histories([np.array([9]), np.array([1, 2])], 2) == [[0, 9], [1, 2]]).all()


def test_training_histories_equal_serving_histories_at_each_step():
    rng = np.random.default_rng(0)
    n = 60
    items = pl.DataFrame({"item_id": [str(i) for i in range(20)], "content_type": ["movie"] * 20,
                          "categories": [[]] * 20})
    events = pl.DataFrame({"user_id": rng.choice(["u1", "u2", "u3"], n), "item_id": rng.integers(0, 20, n).astype(str),
                           "content_type": ["movie"] * n, "ts": rng.integers(0, 1000, n), "event": ["view"] * n})
    ds = CanonicalDataset.build("t", items=items, events=events)
    spec = build_feature_spec(ds.items, ds.users, max_history=4)
    train_rows = histories_before_each_event(ds.events, spec)
    for user, group in ds.events.sort("seq").group_by("user_id"):
        rows = train_rows.filter(pl.col("user_id") == user[0])
        for k in range(group.height):
            served = latest_histories(group.head(k), spec).get(user[0], np.zeros(0, np.int64))
            assert rows["history"][k].to_list() == served.tolist()
            assert rows["item_id"][k] == group["item_id"][k]


def test_vocabulary_encodes_large_inputs_like_small_ones():
    vocab = Vocabulary(tuple(str(i) for i in range(100)))
    values = pl.Series([str(i) for i in range(-50, 9000)])
    big = vocab.encode(values)
    small = np.concatenate([vocab.encode(values[i : i + 1000]) for i in range(0, len(values), 1000)])
    assert (big == small).all() and big[:50].sum() == 0 and big[50] == 1
