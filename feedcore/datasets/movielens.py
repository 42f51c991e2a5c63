"""MovieLens loaders: latest-small (the bundled demo default), 100k, and 1M in the SASRec ordering.

Content type ``movie``; genres become categories; rating events carry the rating as ``value``.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from feedcore.datasets.reading import read_table
from feedcore.schemas import CanonicalDataset

MOVIE = "movie"
_NO_GENRES = "(no genres listed)"


def _genres(col: str) -> pl.Expr:
    return pl.col(col).str.split("|").list.filter(
        (pl.element() != _NO_GENRES) & (pl.element() != "")
    ).alias("categories")


def load_ml_latest_small(root: str | Path) -> CanonicalDataset:
    """ml-latest-small: 610 users, 9,742 movies, 100,836 ratings and 3,683 tag events.

    Tags become events of type ``tag`` (value null) with their text in a ``tag`` column.
    """
    root = Path(root)
    movies = read_table(root / "movies.csv", {"movieId": pl.Int64, "title": pl.String, "genres": pl.String})
    ratings = read_table(root / "ratings.csv",
                         {"userId": pl.Int64, "movieId": pl.Int64, "rating": pl.Float64, "timestamp": pl.Int64})
    tags = read_table(root / "tags.csv",
                      {"userId": pl.Int64, "movieId": pl.Int64, "tag": pl.String, "timestamp": pl.Int64})
    items = movies.select(
        pl.col("movieId").cast(pl.String).alias("item_id"),
        pl.lit(MOVIE).alias("content_type"),
        pl.col("title"),
        _genres("genres"),
    )
    events = pl.concat(
        [
            ratings.select(
                pl.col("userId").cast(pl.String).alias("user_id"),
                pl.col("movieId").cast(pl.String).alias("item_id"),
                pl.col("timestamp").alias("ts"),
                pl.lit("rating").alias("event"),
                pl.col("rating").alias("value"),
                pl.lit(None, pl.String).alias("tag"),
            ),
            tags.select(
                pl.col("userId").cast(pl.String).alias("user_id"),
                pl.col("movieId").cast(pl.String).alias("item_id"),
                pl.col("timestamp").alias("ts"),
                pl.lit("tag").alias("event"),
                pl.lit(None, pl.Float64).alias("value"),
                pl.col("tag"),
            ),
        ]
    ).with_columns(pl.lit(MOVIE).alias("content_type"))
    return CanonicalDataset.build("ml-latest-small", items=items, events=events)


def load_ml_100k(root: str | Path) -> CanonicalDataset:
    """ml-100k: 943 users, 1,682 movies, 100,000 ratings, with user demographics."""
    root = Path(root)
    genre_names = read_table(root / "u.genre", {"genre": pl.String, "idx": pl.Int64}, separator="|",
                             has_header=False, names=["genre", "idx"], quoting=False)["genre"].drop_nulls().to_list()
    item_fields = ["movie_id", "title", "release_date", "video_release_date", "url", *genre_names]
    raw_items = read_table(root / "u.item", {"movie_id": pl.Int64, "title": pl.String,
                                             **{g: pl.Int64 for g in genre_names}},
                           separator="|", has_header=False, names=item_fields, encoding="latin-1", quoting=False)
    items = raw_items.select(
        pl.col("movie_id").cast(pl.String).alias("item_id"),
        pl.lit(MOVIE).alias("content_type"),
        pl.col("title"),
        pl.concat_list([pl.when(pl.col(g) == 1).then(pl.lit(g)) for g in genre_names])
        .list.drop_nulls().list.filter(pl.element() != "unknown").alias("categories"),
    )
    ratings = read_table(root / "u.data", {"user": pl.Int64, "item": pl.Int64, "rating": pl.Float64, "ts": pl.Int64},
                         separator="\t", has_header=False, names=["user", "item", "rating", "ts"], quoting=False)
    events = ratings.select(
        pl.col("user").cast(pl.String).alias("user_id"),
        pl.col("item").cast(pl.String).alias("item_id"),
        pl.lit(MOVIE).alias("content_type"),
        pl.col("ts"),
        pl.lit("rating").alias("event"),
        pl.col("rating").alias("value"),
    )
    users = read_table(root / "u.user", {"user_id": pl.String, "age": pl.Int64, "gender": pl.String,
                                         "occupation": pl.String, "zip": pl.String},
                       separator="|", has_header=False, names=["user_id", "age", "gender", "occupation", "zip"],
                       quoting=False)
    return CanonicalDataset.build("ml-100k", items=items, events=events, users=users)


def load_ml_1m(root: str | Path) -> CanonicalDataset:
    """ML-1M in the SASRec ordering (``sasrec/ml-1m.txt``): 6,040 users, 3,416 items, 999,611 events.

    Item and user ids are the SASRec ids of that file (so benchmarks match the published protocol);
    ``sasrec/sas_to_original_*.txt`` link them to ``movies.dat`` titles and genres and to the
    ``users.dat`` demographics. The file is implicit feedback in time order: events are ``rating``
    with a null value and ``seq`` is the line order within each user.
    """
    root = Path(root)
    seq = read_table(root / "sasrec" / "ml-1m.txt", {"user": pl.Int64, "item": pl.Int64}, separator=" ",
                     has_header=False, names=["user", "item"], quoting=False)
    item_map = read_table(root / "sasrec" / "sas_to_original_items.txt", {"sas": pl.Int64, "movie_id": pl.Int64},
                          separator=" ", has_header=False, names=["sas", "movie_id"], quoting=False)
    user_map = read_table(root / "sasrec" / "sas_to_original_users.txt", {"sas": pl.Int64, "orig": pl.Int64},
                          separator=" ", has_header=False, names=["sas", "orig"], quoting=False)
    movies = read_table(root / "movies.dat", {"movie_id": pl.Int64, "title": pl.String, "genres": pl.String},
                        separator="::", has_header=False, names=["movie_id", "title", "genres"],
                        encoding="latin-1", quoting=False)
    demographics = read_table(root / "users.dat", {"orig": pl.Int64, "gender": pl.String, "age": pl.Int64,
                                                   "occupation": pl.String, "zip": pl.String},
                              separator="::", has_header=False, names=["orig", "gender", "age", "occupation", "zip"],
                              quoting=False)
    items = (
        item_map.join(movies, on="movie_id", how="left")
        .select(
            pl.col("sas").cast(pl.String).alias("item_id"),
            pl.lit(MOVIE).alias("content_type"),
            pl.col("title"),
            _genres("genres").fill_null([]),
            pl.col("movie_id").alias("movielens_id"),
        )
        .sort(pl.col("item_id").cast(pl.Int64))
    )
    users = user_map.join(demographics, on="orig", how="left").select(
        pl.col("sas").cast(pl.String).alias("user_id"),
        pl.col("orig").alias("movielens_id"),
        "gender", "age", "occupation", "zip",
    )
    events = seq.select(
        pl.col("user").cast(pl.String).alias("user_id"),
        pl.col("item").cast(pl.String).alias("item_id"),
        pl.lit(MOVIE).alias("content_type"),
        pl.int_range(pl.len()).over("user").cast(pl.Int64).alias("seq"),
        pl.lit("rating").alias("event"),
    )
    return CanonicalDataset.build("ml-1m", items=items, events=events, users=users)
