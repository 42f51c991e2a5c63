"""Tmall and RetailRocket loaders reproduce the releases' published counts and benchmark splits."""

import gzip
import re

import polars as pl
import pytest

from feedcore.datasets import load_dataset
from feedcore.datasets.multibehavior import load_retailrocket, load_tmall
from feedcore.errors import DataError
from feedcore.schemas import EVENTS_SCHEMA, ITEMS_SCHEMA


def _last_per_user(events: pl.DataFrame) -> pl.DataFrame:
    return events.sort("user_id", "seq").group_by("user_id", maintain_order=True).last()


def test_tmall_matches_published_counts(shared_data):
    ds = load_dataset("tmall", shared_data / "tmall-multibehavior")
    assert ds.counts() == {"users": 15_449, "items": 11_953, "events": 1_177_059, "edges": 0}
    # SOURCES.md: view / cart train + test, buy train (+ one test buy per user).
    by_event = dict(ds.events.group_by("event").len().iter_rows())
    assert by_event == {"view": 873_954, "cart": 195_476, "buy": 107_629}
    parts = {(e, s, r): n for e, s, r, n in ds.events.group_by("event", "split", "release_test").len().iter_rows()}
    assert parts == {
        ("buy", "train", False): 92_180, ("buy", "test", True): 15_449,
        ("cart", "train", False): 180_027, ("cart", "train", True): 15_449,
        ("view", "train", False): 858_505, ("view", "train", True): 15_449,
    }
    assert dict(ds.items.schema) == ITEMS_SCHEMA
    assert {k: ds.events.schema[k] for k in EVENTS_SCHEMA} == EVENTS_SCHEMA
    assert ds.events.schema["split"] == pl.String and ds.events.schema["release_test"] == pl.Boolean
    assert ds.items["content_type"].unique().to_list() == ["product"]
    assert ds.items["categories"].list.len().max() == 0 and ds.items["title"].null_count() == 11_953
    assert ds.events["ts"].null_count() == ds.events.height


def test_tmall_seq_puts_the_release_test_buy_last(shared_data):
    ds = load_tmall(shared_data / "tmall-multibehavior")
    last = _last_per_user(ds.events)
    assert last.height == 15_449 and last["split"].unique().to_list() == ["test"]
    # buy/test.txt: user 0 holds out item 3, user 1 item 17.
    assert dict(last.filter(pl.col("user_id").is_in(["0", "1"])).select("user_id", "item_id").iter_rows()) == {
        "0": "3", "1": "17"}
    # The convention: views, carts, training buys, test buy; the release's order inside each.
    user0 = ds.events.filter(pl.col("user_id") == "0").sort("seq")
    assert user0["seq"].to_list() == list(range(user0.height))
    stages = user0["event"].replace_strict({"view": 0, "cart": 1, "buy": 2}).to_list()
    assert stages == sorted(stages)
    carts = user0.filter(pl.col("event") == "cart")["item_id"].to_list()
    assert carts[:3] == ["6042", "0", "7"] and carts[-1] == "6"  # cart/train.txt line 1, then cart/test.txt
    buys = user0.filter(pl.col("event") == "buy")["item_id"].to_list()
    assert buys == ["7", "2", "6", "9", "4", "1", "8", "5", "10", "0", "11", "12", "3"]


def test_retailrocket_matches_published_counts(shared_data):
    ds = load_dataset("retailrocket", shared_data / "retailrocket-multibehavior")
    assert ds.counts() == {"users": 2_174, "items": 30_113, "events": 97_381 + 2_174, "edges": 0}
    parts = {(e, s): n for e, s, n in ds.events.group_by("event", "split").len().iter_rows()}
    assert parts == {("view", "train"): 75_374, ("cart", "train"): 12_456, ("buy", "train"): 9_551,
                     ("buy", "test"): 2_174}
    assert {k: ds.events.schema[k] for k in EVENTS_SCHEMA} == EVENTS_SCHEMA
    assert ds.items["content_type"].unique().to_list() == ["product"]
    train = ds.events.filter(pl.col("split") == "train")
    # Unix seconds, 2015-05-03 .. 2015-09-18 (SOURCES.md); the test buys have no time.
    assert train["ts"].null_count() == 0
    assert 1_430_611_200 <= train["ts"].min() and train["ts"].max() < 1_442_620_800
    assert ds.events.filter(pl.col("split") == "test")["ts"].null_count() == 2_174


def test_retailrocket_seq_follows_time_and_ends_with_the_test_buy(shared_data):
    ds = load_retailrocket(shared_data / "retailrocket-multibehavior")
    ordered = ds.events.filter(pl.col("split") == "train").sort("user_id", "seq")
    assert ordered.group_by("user_id").agg(pl.col("ts").diff().min().alias("d"))["d"].min() >= 0
    last = _last_per_user(ds.events)
    assert last["split"].unique().to_list() == ["test"] and last["event"].unique().to_list() == ["buy"]
    assert last.filter(pl.col("user_id") == "0")["item_id"].item() == "4"


def test_retailrocket_unparsable_timestamp_names_file_line_and_column(shared_data, tmp_path):
    lines = (shared_data / "retailrocket-multibehavior" / "interactions.tsv").read_text().splitlines()
    lines[7] = re.sub(r"\t\d+\ttrain$", "\t14332x2323\ttrain", lines[7])
    (tmp_path / "interactions.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"interactions\.tsv, line 8, column 'timestamp': unparsable value"):
        load_retailrocket(tmp_path)


def test_retailrocket_rejects_millisecond_timestamps(tmp_path):
    (tmp_path / "interactions.tsv").write_text(
        "user_id\titem_id\tbehavior\ttimestamp\tsplit\n0\t1\tview\t1433221969000\ttrain\n0\t2\tbuy\t-1\ttest\n")
    with pytest.raises(DataError, match=r"line 2, column 'timestamp': bad timestamp.*unix seconds"):
        load_retailrocket(tmp_path)


def test_tmall_unknown_behaviour_names_file_line_and_column(tmp_path):
    rows = "user_id\titem_id\tbehavior\tsplit\n0\t1\tbuy\ttrain\n0\t2\tfav\ttrain\n0\t3\tbuy\ttest\n"
    (tmp_path / "interactions_long.tsv.gz").write_bytes(gzip.compress(rows.encode()))
    with pytest.raises(DataError, match=r"interactions_long\.tsv\.gz, line 3, column 'behavior': unknown value"):
        load_tmall(tmp_path)
