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
