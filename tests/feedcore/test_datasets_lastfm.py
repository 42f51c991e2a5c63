"""The Last.fm 2k loader reproduces the published counts; friends become accounts to follow."""

from pathlib import Path

import polars as pl
import pytest

from feedcore.datasets import load_dataset
from feedcore.datasets.lastfm import ARTIST, load_lastfm_2k
from feedcore.errors import DataError
from feedcore.schemas import ACCOUNT, EDGES_SCHEMA, EVENTS_SCHEMA, ITEMS_SCHEMA, account_item_id


@pytest.fixture(scope="module")
def lastfm(shared_data):
    return load_dataset("lastfm-2k", shared_data / "lastfm-2k")


def test_matches_published_counts(lastfm):
    # SOURCES.md / HetRec readme: 1,892 users, 17,632 artists, 92,834 user-artist rows,
    # 25,434 user-friend rows.
    assert lastfm.counts()["users"] == 1_892
    assert dict(lastfm.items.group_by("content_type").len().iter_rows()) == {ARTIST: 17_632, ACCOUNT: 1_892}
    by_event = dict(lastfm.events.group_by("event").len().iter_rows())
    assert by_event == {"play": 92_834, "follow": 25_434}
    plays = lastfm.events.filter(pl.col("event") == "play")
    assert plays["user_id"].n_unique() == 1_892 and plays["item_id"].n_unique() == 17_632
    assert lastfm.edges.height == 25_434 and set(lastfm.edges["kind"].unique()) == {"friend"}
    # The friend file lists each friendship in both directions: 12,717 friendships.
    reverse = lastfm.edges.select(pl.col("dst_user").alias("src_user"), pl.col("src_user").alias("dst_user"))
    assert lastfm.edges.join(reverse, on=["src_user", "dst_user"]).height == 25_434


def test_schema_and_content(lastfm):
    assert dict(lastfm.items.select(list(ITEMS_SCHEMA)).schema) == ITEMS_SCHEMA
    assert {k: lastfm.events.schema[k] for k in EVENTS_SCHEMA} == EVENTS_SCHEMA
    assert dict(lastfm.edges.schema) == EDGES_SCHEMA
    assert lastfm.items.filter(pl.col("item_id") == "1")["title"].to_list() == ["MALICE MIZER"]
    assert lastfm.items.filter(pl.col("item_id") == "227")["title"].to_list() == ["The Beatles"]
    # artists.dat is UTF-8: non-ASCII names come through intact.
    assert lastfm.items.filter(pl.col("title") == "Sigur Rós").height == 1
    first = lastfm.events.filter(pl.col("user_id") == "2").sort("seq").row(0, named=True)
    assert (first["item_id"], first["event"], first["value"]) == ("51", "play", 13_883.0)
    # Each friend row is a follow of the friend's account, after the user's plays.
    follows = lastfm.events.filter((pl.col("user_id") == "2") & (pl.col("event") == "follow"))
    friends = lastfm.edges.filter(pl.col("src_user") == "2")["dst_user"]
    assert sorted(follows["item_id"]) == sorted(account_item_id(u) for u in friends)
    user2 = lastfm.events.filter(pl.col("user_id") == "2").sort("seq")
    assert user2["event"].to_list() == ["play"] * 50 + ["follow"] * friends.len()


def _copy_with(tmp_path: Path, source: Path, name: str, data: bytes) -> Path:
    """A dataset root in tmp_path linking to `source`'s files, with file `name` replaced by `data`."""
    for path in source.iterdir():
        if path.is_file() and path.name != name:
            (tmp_path / path.name).symlink_to(path)
    (tmp_path / name).write_bytes(data)
    return tmp_path


def test_unknown_artist_names_file_line_and_column(shared_data, tmp_path):
    lines = (shared_data / "lastfm-2k" / "user_artists.dat").read_text().splitlines(keepends=True)
    user, _artist, weight = lines[6].split("\t")
    lines[6] = f"{user}\t99999\t{weight}"
    root = _copy_with(tmp_path, shared_data / "lastfm-2k", "user_artists.dat", "".join(lines).encode())
    with pytest.raises(DataError, match=r"user_artists\.dat, line 7, column 'artistID': artist id not in artists"):
        load_lastfm_2k(root)


def test_wrong_encoding_names_file_and_line(shared_data, tmp_path):
    text = (shared_data / "lastfm-2k" / "artists.dat").read_text(encoding="utf-8")
    root = _copy_with(tmp_path, shared_data / "lastfm-2k", "artists.dat", text.encode("latin-1", "replace"))
    first_non_ascii = next(i for i, char in enumerate(text) if ord(char) > 127)
    line = text[:first_non_ascii].count("\n") + 1
    with pytest.raises(DataError, match=rf"artists\.dat, line {line}: not valid utf-8 text"):
        load_lastfm_2k(root)
