"""MovieLens loaders reproduce the published counts and the canonical schema."""

import polars as pl

from feedcore.datasets import load_dataset
from feedcore.schemas import EVENTS_SCHEMA, ITEMS_SCHEMA


def test_ml_latest_small_matches_published_counts(bundled_data):
    ds = load_dataset("ml-latest-small", bundled_data)
    # README.txt: 100,836 ratings and 3,683 tag applications across 9,742 movies by 610 users.
    assert ds.counts()["users"] == 610
    assert ds.items.height == 9742
    by_event = dict(ds.events.group_by("event").len().iter_rows())
    assert by_event == {"rating": 100_836, "tag": 3_683}
    assert ds.events.filter(pl.col("event") == "rating")["item_id"].n_unique() == 9_724
    assert dict(ds.items.schema) == ITEMS_SCHEMA
    assert {k: ds.events.schema[k] for k in EVENTS_SCHEMA} == EVENTS_SCHEMA
    toy = ds.items.filter(pl.col("item_id") == "1").row(0, named=True)
    assert toy["title"] == "Toy Story (1995)"
    assert toy["categories"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]


def test_seq_follows_time_within_each_user(bundled_data):
    ds = load_dataset("ml-latest-small", bundled_data)
    ordered = ds.events.sort("user_id", "seq")
    assert ordered.group_by("user_id").agg(pl.col("ts").diff().min().alias("d"))["d"].min() >= 0


def test_ml_100k_matches_published_counts(shared_data):
    ds = load_dataset("ml-100k", shared_data / "movielens" / "ml-100k")
    assert ds.counts() == {"users": 943, "items": 1682, "events": 100_000, "edges": 0}
    ratings = ds.events["value"].value_counts().sort("value")["count"].to_list()
    assert ratings == [6_110, 11_370, 27_145, 34_174, 21_201]
    assert set(ds.users.columns) >= {"age", "gender", "occupation"}


def test_ml_1m_sasrec_matches_published_counts_and_maps_titles(shared_data):
    ds = load_dataset("ml-1m", shared_data / "movielens" / "ml-1m")
    assert ds.counts() == {"users": 6040, "items": 3416, "events": 999_611, "edges": 0}
    assert ds.items["title"].null_count() == 0
    assert ds.users["gender"].null_count() == 0
    # seq is the file's line order within each user.
    first = ds.events.filter(pl.col("user_id") == "1").sort("seq")["item_id"].head(3).to_list()
    assert first == ["1", "2", "3"]
