"""The Ciao loaders reproduce the published counts; the trust release adds accounts and follows."""

from pathlib import Path

import polars as pl
import pytest

from feedcore.datasets import load_dataset
from feedcore.datasets.ciao import PRODUCT, load_ciao, load_ciao_trust
from feedcore.errors import DataError
from feedcore.schemas import ACCOUNT, EDGES_SCHEMA, EVENTS_SCHEMA, ITEMS_SCHEMA, account_item_id


@pytest.fixture(scope="module")
def ciao(shared_data):
    return load_dataset("ciao", shared_data / "ciao")


@pytest.fixture(scope="module")
def ciao_trust(shared_data):
    return load_dataset("ciao-trust", shared_data / "ciao-trust")


def _histogram(series: pl.Series) -> dict:
    return dict(series.value_counts().iter_rows())


def test_ciao_matches_published_counts(ciao):
    # SOURCES.md: ratings=284086, users=7375, items=105114, categories=28, duplicate rows=1436.
    assert ciao.counts() == {"users": 7_375, "items": 105_114, "events": 284_086, "edges": 0}
    assert set(ciao.items["content_type"].unique()) == {PRODUCT}
    assert ciao.items["categories"].explode().n_unique() == 28
    assert ciao.events.height - ciao.events.select("user_id", "item_id").unique().height == 1_436
    assert _histogram(ciao.events["value"]) == {0.0: 34, 1.0: 11_049, 2.0: 14_317, 3.0: 31_294,
                                                 4.0: 88_499, 5.0: 138_893}
    by_category = _histogram(ciao.events["category"].str.strip_prefix("category:").cast(pl.Int64))
    assert by_category[1] == 39_887 and by_category[26] == 68 and by_category[28] == 2_733
    assert ciao.events["helpfulness"].min() == 1 and ciao.events["helpfulness"].max() == 7
    days = ciao.events.select(pl.from_epoch("ts").dt.date().alias("day"))["day"]
    assert (str(days.min()), str(days.max()), days.n_unique()) == ("2000-05-30", "2011-04-12", 3_965)


def test_ciao_schema_and_order(ciao):
    assert dict(ciao.items.schema) == ITEMS_SCHEMA
    assert {k: ciao.events.schema[k] for k in EVENTS_SCHEMA} == EVENTS_SCHEMA
    ordered = ciao.events.sort("user_id", "seq")
    assert ordered.group_by("user_id").agg(pl.col("ts").diff().min().alias("d"))["d"].min() >= 0
    first = ciao.events.filter(pl.col("user_id") == "1").sort("seq").row(0, named=True)
    assert (first["item_id"], first["value"], first["helpfulness"], first["ts"]) == ("652", 5.0, 2, 1_187_161_200)
    assert ciao.items.filter(pl.col("item_id") == "652")["categories"].to_list() == [["category:8"]]


def test_ciao_trust_matches_published_counts(ciao_trust):
    ds = ciao_trust
    # SOURCES.md: 36,065 ratings, 2,248 users with ratings, 16,861 items, 6 categories, ratings 1-5;
    # 57,544 directed trust edges, 27,708 of them reciprocated.
    products = ds.items.filter(pl.col("content_type") == PRODUCT)
    ratings = ds.events.filter(pl.col("event") == "rating")
    assert products.height == 16_861
    assert ratings.height == 36_065
    assert ratings["user_id"].n_unique() == 2_248
    assert products["categories"].explode().n_unique() == 6
    assert _histogram(ratings["category"]) == {"category:1": 8_349, "category:2": 5_398, "category:3": 3_478,
                                               "category:4": 2_426, "category:5": 6_923, "category:6": 9_491}
    assert ratings["value"].min() == 1 and ratings["value"].max() == 5
    assert ds.edges.height == 57_544 and set(ds.edges["kind"].unique()) == {"trust"}
    reverse = ds.edges.select(pl.col("dst_user").alias("src_user"), pl.col("src_user").alias("dst_user"))
    assert ds.edges.join(reverse, on=["src_user", "dst_user"]).height == 27_708


def test_ciao_trust_accounts_and_follows(ciao_trust):
    ds = ciao_trust
    assert dict(ds.edges.schema) == EDGES_SCHEMA
    accounts = ds.items.filter(pl.col("content_type") == ACCOUNT)
    assert accounts.height == ds.edges["dst_user"].n_unique() == 2_325
    assert accounts.filter(pl.col("creator_id") == "2")["item_id"].to_list() == [account_item_id("2")]
    follows = ds.events.filter(pl.col("event") == "follow")
    assert follows.height == 57_544 and set(follows["content_type"].unique()) == {ACCOUNT}
    as_edges = follows.select(pl.col("user_id").alias("src_user"),
                              pl.col("item_id").str.strip_prefix(f"{ACCOUNT}:").alias("dst_user"))
    assert as_edges.sort(pl.all()).equals(ds.edges.select("src_user", "dst_user").sort(pl.all()))
    # Users only in the trust graph are users too.
    assert ds.counts()["users"] == 2_375


def _copy_with(tmp_path: Path, source: Path, name: str, text: str) -> Path:
    """A dataset root in tmp_path linking to `source`'s files, with file `name` replaced by `text`."""
    for path in source.iterdir():
        if path.is_file():
            (tmp_path / path.name).symlink_to(path)
    (tmp_path / name).unlink()
    (tmp_path / name).write_text(text)
    return tmp_path


def test_unparsable_rating_names_file_line_and_column(shared_data, tmp_path):
    lines = (shared_data / "ciao" / "ratings.tsv").read_text().splitlines(keepends=True)
    fields = lines[4].split("\t")
    fields[3] = "five"  # the rating column
    lines[4] = "\t".join(fields)
    root = _copy_with(tmp_path, shared_data / "ciao", "ratings.tsv", "".join(lines))
    with pytest.raises(DataError, match=r"ratings\.tsv, line 5, column 'rating'"):
        load_ciao(root)


def test_truncated_trust_line_names_file_and_line(shared_data, tmp_path):
    lines = (shared_data / "ciao-trust" / "trust.tsv").read_text().splitlines(keepends=True)
    lines[9] = lines[9].split("\t")[0] + "\n"  # the trustee is cut off
    root = _copy_with(tmp_path, shared_data / "ciao-trust", "trust.tsv", "".join(lines))
    with pytest.raises(DataError, match=r"trust\.tsv, line 10: line has 1 fields"):
        load_ciao_trust(root)
