"""Canonical tables: validation, Parquet round trip, atomic writes."""

import polars as pl
import pytest

from feedcore.errors import DataError
from feedcore.io import atomic_path, atomic_write_text
from feedcore.schemas import CanonicalDataset


def _tiny(**overrides):
    items = pl.DataFrame({"item_id": ["i1", "i2"], "content_type": ["movie", "post"],
                          "categories": [["a"], []]})
    events = pl.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["i1", "i2", "i1"],
                           "content_type": ["movie", "post", "movie"], "ts": [3, 1, 2],
                           "event": ["click", "like", "click"]})
    return CanonicalDataset.build("tiny", **{"items": items, "events": events, **overrides})


def test_build_derives_users_and_seq_from_time():
    ds = _tiny()
    assert ds.users["user_id"].to_list() == ["u1", "u2"]
    u1 = ds.events.filter(pl.col("user_id") == "u1").sort("seq")
    assert u1["item_id"].to_list() == ["i2", "i1"]


def test_events_referencing_unknown_items_are_refused():
    events = pl.DataFrame({"user_id": ["u1"], "item_id": ["ghost"], "content_type": ["movie"],
                           "event": ["click"]})
    with pytest.raises(DataError, match=r"reference unknown items.*'ghost'"):
        _tiny(events=events)


def test_an_event_of_another_content_type_than_its_item_is_refused():
    events = pl.DataFrame({"user_id": ["u1"], "item_id": ["i2"], "content_type": ["movie"], "event": ["click"]})
    with pytest.raises(DataError, match=r"column 'content_type': 1 event\(s\) carry another content type than their "
                                        r"item.*\('i2', 'movie'\).*the item's own \('post' for 'i2'\)"):
        _tiny(events=events)


def test_missing_required_column_is_named():
    with pytest.raises(DataError, match=r"missing required column\(s\) \['content_type'\]"):
        CanonicalDataset.build("x", items=pl.DataFrame({"item_id": ["a"], "categories": [["c"]]}),
                               events=pl.DataFrame({"user_id": ["u"], "item_id": ["a"], "content_type": ["m"],
                                                    "event": ["v"]}))


def test_parquet_round_trip(tmp_path):
    ds = _tiny()
    ds.write(tmp_path / "data")
    back = CanonicalDataset.read(tmp_path / "data")
    for table in ("items", "users", "events", "edges"):
        assert getattr(back, table).equals(getattr(ds, table))


def test_damaged_table_is_reported(tmp_path):
    _tiny().write(tmp_path / "data")
    (tmp_path / "data" / "events.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"events\.parquet: cannot read Parquet"):
        CanonicalDataset.read(tmp_path / "data")


def test_failed_write_leaves_no_partial_output(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_rewriting_a_directory_replaces_it_whole(tmp_path):
    _tiny().write(tmp_path / "data")
    _tiny().write(tmp_path / "data")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "edges.parquet", "events.parquet", "items.parquet", "meta.json", "users.parquet"]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
