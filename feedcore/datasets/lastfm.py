"""HetRec 2011 Last.fm (lastfm-2k): artist play counts and a friend graph, with accounts as items.

Files (tab-separated, with a header): ``artists.dat`` (id, name, url, pictureURL), ``user_artists.dat``
(userID, artistID, weight = play count), ``user_friends.dat`` (userID, friendID; CRLF line ends).
``tags.dat`` is only the tag vocabulary (in ISO-8859-1, unlike the rest); the artist-to-tag
assignments (``user_taggedartists*.dat``) are missing from this copy, so artists have no
categories (an empty list) and ``tags.dat`` is not read.

Artists are items of content type ``artist`` (title = name, ``url`` kept as an extra column).
``artists.dat`` is valid UTF-8 and is read as such (a handful of names are already mojibake in
the source, e.g. ``"BallakÃ© Sissoko"``; they are kept as they are). Names contain ``"``, so
quoting is off. Artist ids run 1..18,745 with gaps; every artist of ``artists.dat`` has plays
and every play references an artist of ``artists.dat`` (checked: an unknown artist id raises
DataError naming the line of ``user_artists.dat``).

Events: one ``play`` per ``user_artists.dat`` row, ``value`` = play count. The friend graph lists
every friendship in both directions (all 25,434 rows are reciprocated: 12,717 friendships), and
is kept as the file has it: 25,434 directed ``friend`` edges. So that following is a learnable
target, each user that appears as a friend has an account item (content type ``account``,
``item_id = account_item_id(user)``, ``creator_id`` the user) and each friend row is a ``follow``
event from userID to friendID's account. The data has no time: ``ts`` is null and ``seq`` is the
file order, a user's plays first, then their follows.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from feedcore.datasets.reading import read_table
from feedcore.errors import DataError
from feedcore.schemas import ACCOUNT, CanonicalDataset, account_item_id

ARTIST = "artist"


def load_lastfm_2k(root: str | Path) -> CanonicalDataset:
    """HetRec Last.fm 2k: 1,892 users, 17,632 artists, 92,834 play counts, 25,434 friend rows.

    Published (HetRec 2011 readme; SOURCES.md): 1,892 users, 17,632 artists, 92,834 user-artist
    rows, 25,434 user-friend rows. Adds 1,892 account items and 25,434 ``follow`` events.
    """
    root = Path(root)
    artists_path, plays_path, friends_path = root / "artists.dat", root / "user_artists.dat", root / "user_friends.dat"
    artists = read_table(artists_path, {"id": pl.Int64, "name": pl.String, "url": pl.String},
                         separator="\t", quoting=False, required=("id",))
    plays = read_table(plays_path, {"userID": pl.Int64, "artistID": pl.Int64, "weight": pl.Int64},
                       separator="\t", quoting=False, required=True)
    friends = read_table(friends_path, {"userID": pl.Int64, "friendID": pl.Int64}, separator="\t", quoting=False,
                         required=True)

    # Name the offending line of user_artists.dat rather than fail later on an unknown item_id.
    unknown = plays.with_row_index("row").join(artists, left_on="artistID", right_on="id", how="anti")
    if unknown.height:
        row = unknown.sort("row").row(0, named=True)
        raise DataError(plays_path, "artist id not in artists.dat", line=row["row"] + 2, column="artistID",
                        value=row["artistID"], expected="an id of artists.dat")

    items = pl.concat(
        [
            artists.select(
                pl.col("id").cast(pl.String).alias("item_id"),
                pl.lit(ARTIST).alias("content_type"),
                pl.col("name").alias("title"),
                pl.lit([], pl.List(pl.String)).alias("categories"),
                "url",
            ),
            friends.select(pl.col("friendID").unique().sort().cast(pl.String).alias("creator_id")).select(
                pl.col("creator_id").map_batches(_account_ids, return_dtype=pl.String).alias("item_id"),
                pl.lit(ACCOUNT).alias("content_type"),
                "creator_id",
                pl.lit([], pl.List(pl.String)).alias("categories"),
            ),
        ],
        how="diagonal",
    )
    events = pl.concat(
        [
            plays.select(
                pl.col("userID").cast(pl.String).alias("user_id"),
                pl.col("artistID").cast(pl.String).alias("item_id"),
                pl.lit(ARTIST).alias("content_type"),
                pl.lit("play").alias("event"),
                pl.col("weight").cast(pl.Float64).alias("value"),
            ),
            friends.select(
                pl.col("userID").cast(pl.String).alias("user_id"),
                pl.col("friendID").cast(pl.String).map_batches(_account_ids, return_dtype=pl.String).alias("item_id"),
                pl.lit(ACCOUNT).alias("content_type"),
                pl.lit("follow").alias("event"),
                pl.lit(None, pl.Float64).alias("value"),
            ),
        ]
    ).with_columns(
        pl.lit(None, pl.Int64).alias("ts"),
        # No time in the source: seq is the file order (plays, then follows) within each user.
        pl.int_range(pl.len()).over("user_id").cast(pl.Int64).alias("seq"),
    )
    edges = friends.select(
        pl.col("userID").cast(pl.String).alias("src_user"),
        pl.col("friendID").cast(pl.String).alias("dst_user"),
        pl.lit("friend").alias("kind"),
    )
    return CanonicalDataset.build("lastfm-2k", items=items, events=events, edges=edges)


def _account_ids(users: pl.Series) -> pl.Series:
    # account_item_id is the single definition of an account's id; apply it to each user.
    return pl.Series([account_item_id(u) for u in users], dtype=pl.String)

