"""Ciao product reviews (Tang et al.): the full 7,375-user log, and the 2,378-id release with its trust graph.

The two releases use different user and item id spaces and must never be mixed (SOURCES.md in
each folder shows that pairing the large log with the trust graph is an id mismatch).

Both: one content type ``product``; the category id (1..28 in ``ciao``, 1..6 in ``ciao-trust``;
the files have no category names) becomes the category ``"category:<id>"``. A few items are
filed under more than one category (101 in ``ciao``, 3 in ``ciao-trust``); they get all of them,
sorted by id; the ``category`` column of each rating event keeps the category of that row.
Each row of ``ratings.tsv`` is one ``rating`` event with the 0-5 stars as ``value``.
The review's helpfulness (1-7) is kept as a ``helpfulness`` column on that event rather than as an
event of its own: it is other users' opinion of the review, not something this user did.
``ts`` is the file's timestamp, already unix seconds at day level (every value is 07:00 UTC of
its day), so it is used as is; ``seq`` follows ``ts`` and the file order within a day.
Duplicate (user, item) rows (1,436 extra rows in ``ciao``) are kept: each is a separate review.

``ciao-trust`` adds the trust graph (``trust.tsv``: truster, trustee; 57,544 directed edges, no
timestamps): edges of kind ``trust``, and, so that following is a learnable target, every trusted
user's account is an item (content type ``account``, ``item_id = account_item_id(user)``,
``creator_id`` the user) and every edge is a ``follow`` event from the truster to that account
(null ``ts`` and ``value``, so it sorts after the truster's ratings in ``seq``). 127 users occur
only in the trust graph, without any rating (121 of them trust someone, 126 are trusted), so the
users table has 2,375 users while 2,248 have ratings.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from feedcore.datasets.reading import read_table
from feedcore.schemas import ACCOUNT, CanonicalDataset, account_item_id

PRODUCT = "product"
_RATING_COLUMNS: dict[str, pl.DataType] = {
    "user_id": pl.Int64(), "item_id": pl.Int64(), "category_id": pl.Int64(),
    "rating": pl.Float64(), "helpfulness": pl.Int64(), "timestamp": pl.Int64(),
}


def load_ciao(root: str | Path) -> CanonicalDataset:
    """Ciao (full release): 7,375 users, 105,114 products in 28 categories, 284,086 ratings.

    Published (SOURCES.md; Tang et al.): 284,086 ratings by 7,375 users on 105,114 items, 28
    categories; ratings 0-5 (34 zeros); helpfulness 1-7.
    """
    ratings = _read_ratings(Path(root) / "ratings.tsv")
    return CanonicalDataset.build("ciao", items=_products(ratings), events=_rating_events(ratings))


def load_ciao_trust(root: str | Path) -> CanonicalDataset:
    """Ciao (mTrust/eTrust release): 2,248 users, 16,861 products, 36,065 ratings, 57,544 trust edges.

    Products and ratings match the published counts; on top of them come 2,325 account items
    (one per trusted user) and 57,544 ``follow`` events, one per trust edge.
    """
    root = Path(root)
    ratings = _read_ratings(root / "ratings.tsv")
    trust_path = root / "trust.tsv"
    trust = read_table(trust_path, {"truster_id": pl.Int64, "trustee_id": pl.Int64}, separator="\t", quoting=False,
                       required=True)
    edges = trust.select(
        pl.col("truster_id").cast(pl.String).alias("src_user"),
        pl.col("trustee_id").cast(pl.String).alias("dst_user"),
        pl.lit("trust").alias("kind"),
    )
    accounts = edges.select(pl.col("dst_user").unique().sort().alias("creator_id")).select(
        pl.col("creator_id").map_batches(_account_ids, return_dtype=pl.String).alias("item_id"),
        pl.lit(ACCOUNT).alias("content_type"),
        "creator_id",
        pl.lit([], pl.List(pl.String)).alias("categories"),
    )
    follows = edges.select(
        pl.col("src_user").alias("user_id"),
        pl.col("dst_user").map_batches(_account_ids, return_dtype=pl.String).alias("item_id"),
        pl.lit(ACCOUNT).alias("content_type"),
        pl.lit(None, pl.Int64).alias("ts"),
        pl.lit("follow").alias("event"),
        pl.lit(None, pl.Float64).alias("value"),
        pl.lit(None, pl.Int64).alias("helpfulness"),
        pl.lit(None, pl.String).alias("category"),
    )
    items = pl.concat([_products(ratings), accounts], how="diagonal")
    events = pl.concat([_rating_events(ratings), follows])
    return CanonicalDataset.build("ciao-trust", items=items, events=events, edges=edges)


def _account_ids(users: pl.Series) -> pl.Series:
    # account_item_id is the single definition of an account's id; apply it per distinct user.
    return pl.Series([account_item_id(u) for u in users], dtype=pl.String)


def _read_ratings(path: Path) -> pl.DataFrame:
    return read_table(path, _RATING_COLUMNS, separator="\t", quoting=False, required=True)



def _products(ratings: pl.DataFrame) -> pl.DataFrame:
    return (
        ratings.group_by("item_id")
        .agg(pl.col("category_id").unique().sort())
        .sort("item_id")
        .select(
            pl.col("item_id").cast(pl.String),
            pl.lit(PRODUCT).alias("content_type"),
            pl.col("category_id").list.eval(pl.format("category:{}", pl.element())).alias("categories"),
        )
    )


def _rating_events(ratings: pl.DataFrame) -> pl.DataFrame:
    return ratings.select(
        pl.col("user_id").cast(pl.String),
        pl.col("item_id").cast(pl.String),
        pl.lit(PRODUCT).alias("content_type"),
        pl.col("timestamp").alias("ts"),
        pl.lit("rating").alias("event"),
        pl.col("rating").alias("value"),
        "helpfulness",
        pl.format("category:{}", "category_id").alias("category"),
    )
