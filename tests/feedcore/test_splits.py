"""Splits hold out the right events and leak nothing from the future into training."""

import polars as pl
import pytest

from feedcore.datasets import load_dataset
from feedcore.errors import DataError
from feedcore.splits import leave_one_out, temporal


@pytest.fixture(scope="module")
def events(bundled_data):
    return load_dataset("ml-latest-small", bundled_data).events


def test_leave_one_out_holds_out_the_last_two_target_events(events):
    split = leave_one_out(events, ("rating",))
    ratings = events.filter(pl.col("event") == "rating")
    last = ratings.sort("seq").group_by("user_id").agg(pl.col("seq").last().alias("last"),
                                                      pl.col("seq").get(-2).alias("second"))
    test = split.test.join(last, on="user_id")
    assert (test["seq"] == test["last"]).all()
    valid = split.valid.join(last, on="user_id")
    assert (valid["seq"] == valid["second"]).all()
    assert split.test.height == split.valid.height == ratings["user_id"].n_unique()
    assert (split.test["event"] == "rating").all()


def test_leave_one_out_leaks_nothing(events):
    split = leave_one_out(events, ("rating",))
    held = pl.concat([split.valid, split.test])
    # No held-out event is in training, and every training event precedes the user's held-out ones.
    assert split.train.join(held, on=["user_id", "seq"], how="semi").height == 0
    first_held = held.group_by("user_id").agg(pl.col("seq").min().alias("cut"))
    joined = split.train.join(first_held, on="user_id")
    assert (joined["seq"] < joined["cut"]).all()
    # The tag events after the validation event are dropped, not trained on.
    assert split.train.height + split.valid.height + split.test.height <= events.height


def test_leave_one_out_keeps_short_users_in_training():
    events = pl.DataFrame({"user_id": ["a", "a", "b", "b", "b"], "item_id": ["1", "2", "1", "2", "3"],
                           "seq": [0, 1, 0, 1, 2], "event": ["view"] * 5})
    split = leave_one_out(events)
    assert split.train["user_id"].to_list() == ["a", "a", "b"]
    assert split.valid["item_id"].to_list() == ["2"] and split.test["item_id"].to_list() == ["3"]


def test_temporal_split_cuts_globally_in_time(events):
    split = temporal(events, ("rating",))
    assert split.train["ts"].max() < split.valid["ts"].min()
    assert split.valid["ts"].max() < split.test["ts"].min()
    assert 0.05 < split.test.height / events.height < 0.15


def test_temporal_split_needs_timestamps():
    events = pl.DataFrame({"user_id": ["a"], "item_id": ["1"], "seq": [0], "event": ["view"],
                           "ts": pl.Series([None], dtype=pl.Int64)})
    with pytest.raises(DataError, match="column 'ts'.*temporal split needs timestamps|temporal split needs"):
        temporal(events)


def test_target_line_split_holds_out_each_target_of_validation_and_test_users():
    from feedcore.splits import make_split

    # u0 trains; u1 (valid) and u2 (test) share a history and have two targets each.
    rows = []
    for user in ("u0", "u1", "u2"):
        rows += [(user, f"{user}h{k}", k, None) for k in range(3)]
        rows += [(user, f"{user}t1", 3, 1), (user, f"{user}t2", 4, 2)]
    events = pl.DataFrame(rows, schema=["user_id", "item_id", "seq", "target_line"], orient="row")
    users = pl.DataFrame({"user_id": ["u0", "u1", "u2"], "split": ["train", "valid", "test"]})
    split = make_split(events, "target_line", users=users)
    assert split.test["item_id"].to_list() == ["u2t1", "u2t2"]
    assert split.valid["item_id"].to_list() == ["u1t1", "u1t2"]
    train = split.train.group_by("user_id").agg("item_id")
    assert dict(train.iter_rows())["u0"] == ["u0h0", "u0h1", "u0h2", "u0t1", "u0t2"]
    assert dict(train.iter_rows())["u2"] == ["u2h0", "u2h1", "u2h2"]  # history only: no target trains
    with pytest.raises(DataError, match="target_line"):
        make_split(events.drop("target_line"), "target_line", users=users)
