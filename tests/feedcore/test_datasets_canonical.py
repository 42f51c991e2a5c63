"""Bring-your-own-data: canonical Parquet tables are read, conformed and validated."""

import polars as pl
import pytest

from feedcore.datasets import load_dataset
from feedcore.errors import DataError


def test_own_tables_with_integer_ids_load(tmp_path):
    pl.DataFrame({"item_id": [10, 11], "content_type": ["video", "post"], "title": ["a", None]}).write_parquet(
        tmp_path / "items.parquet")
    pl.DataFrame({"user_id": [1, 1, 2], "item_id": [10, 11, 10], "content_type": ["video", "post", "video"],
                  "ts": [5, 3, 4], "event": ["click", "like", "click"]}).write_parquet(tmp_path / "events.parquet")
    ds = load_dataset("canonical", tmp_path)
    assert ds.counts() == {"users": 2, "items": 2, "events": 3, "edges": 0}
    assert ds.items["categories"].to_list() == [[], []]
    assert ds.events.filter(pl.col("user_id") == "1").sort("seq")["item_id"].to_list() == ["11", "10"]


def test_own_tables_are_validated(tmp_path):
    with pytest.raises(DataError, match=r"items\.parquet: file not found"):
        load_dataset("canonical", tmp_path)
    pl.DataFrame({"item_id": ["a"], "content_type": ["video"]}).write_parquet(tmp_path / "items.parquet")
    pl.DataFrame({"user_id": ["u"], "item_id": ["b"], "content_type": ["video"], "event": ["click"]}).write_parquet(
        tmp_path / "events.parquet")
    with pytest.raises(DataError, match=r"events\.parquet, column 'item_id': 1 event\(s\) reference unknown items.*'b'"):
        load_dataset("canonical", tmp_path)
    pl.DataFrame({"user_id": ["u"], "item_id": ["a"], "content_type": ["video"], "event": ["click"],
                  "ts": ["yesterday"]}).write_parquet(tmp_path / "events.parquet")
    with pytest.raises(DataError, match=r"events\.parquet: cannot cast to the canonical schema"):
        load_dataset("canonical", tmp_path)
