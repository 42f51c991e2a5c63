"""Multi-behaviour e-commerce loaders: Tmall (MB-CGCN release) and RetailRocket (KHGT/CML release).

Both are view / cart / buy logs on one user × product space, with a held-out buy per user that
their published benchmarks rank against. Items are ``product`` with no titles and no categories
(neither release has any item metadata). Events are ``view``, ``cart`` and ``buy`` with a null
``value``; every event carries an extra ``split`` column (``"train"`` / ``"test"``): ``"test"``
marks exactly the release's held-out buys, the targets of the published buy-target benchmark, and
is also each user's last event by ``seq``, so ``leave_one_out`` tests on the same buys.

Tmall (``interactions_long.tsv.gz``; columns user_id, item_id, behavior, split)
    15,449 users, 11,953 items, 1,177,059 events: view 873,954, cart 195,476, buy 107,629
    (92,180 train + 15,449 test). The release has **no timestamps** (``ts`` is null) and its
    order carries no time: the view rows were rebuilt from an adjacency matrix (item-id order) and
    the order inside the buy/cart lines is undocumented. The release also holds out one view and
    one cart per user (``view/test.txt``, ``cart/test.txt``); the published buy-target number
    (CascadingRank: HR@10 0.3324, NDCG@10 0.1626, full ranking) trains on those, so they are
    ``split = "train"`` here and flagged by the extra boolean column ``release_test`` (true for
    every row of any ``*/test.txt``; MB-CGCN, unlike CascadingRank, leaves them out of training).
    ``seq`` is therefore a *convention*, not time: per user, views, then carts, then training
    buys, then the test buy; within a behaviour, the release's order (its held-out view / cart
    after that behaviour's training rows).

RetailRocket (``interactions.tsv``; columns user_id, item_id, behavior, timestamp, split)
    2,174 users, 30,113 items, 99,555 events: 97,381 training pairs (view 75,374, cart 12,456,
    buy 9,551) plus one held-out test buy per user (2,174). Timestamps are unix **seconds**
    (2015-05-03 … 2015-09-18); the test buys have timestamp -1 in the file, i.e. no time, so
    their ``ts`` is null and ``seq`` puts them last (ties in time keep the file order). Only one
    timestamp is kept per (user, item, behaviour) by the release, so repeated views are collapsed.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from feedcore.datasets.reading import read_table
from feedcore.errors import DataError
from feedcore.schemas import CanonicalDataset

PRODUCT = "product"
BEHAVIOURS = ("view", "cart", "buy")
SPLITS = ("train", "test")
# Unix seconds below this bound; milliseconds of any date after 1973 are above it.
_MAX_UNIX_SECONDS = 100_000_000_000


def _check_values(df: pl.DataFrame, path: Path, column: str, allowed: tuple[str, ...]) -> None:
    """Raise DataError naming the first line whose `column` is not one of `allowed`."""
    bad = ~df[column].is_in(allowed)
    if bad.any():
        row = int(bad.arg_max())
        # +2: one header line, and lines count from 1.
        raise DataError(path, "unknown value", line=row + 2, column=column, value=df[column][row],
                        expected=f"one of {list(allowed)}")


def _products(events: pl.DataFrame) -> pl.DataFrame:
    """The item table: every product that occurs in `events` (the releases have no item file)."""
    return (
        events.select(pl.col("item_id").unique())
        .sort(pl.col("item_id").cast(pl.Int64))
        .with_columns(pl.lit(PRODUCT).alias("content_type"), pl.lit([], pl.List(pl.String)).alias("categories"))
    )


def load_tmall(root: str | Path) -> CanonicalDataset:
    """Tmall (MB-CGCN release): 15,449 users, 11,953 products, 1,177,059 view/cart/buy events.

    No timestamps; ``split == "test"`` marks the 15,449 held-out buys of the published
    buy-target benchmark; ``release_test`` flags every row of the release's ``*/test.txt``.
    See the module docstring for the (conventional) ``seq`` order.
    """
    path = Path(root) / "interactions_long.tsv.gz"
    raw = read_table(path, {"user_id": pl.Int64, "item_id": pl.Int64, "behavior": pl.String, "split": pl.String},
                     separator="\t", quoting=False, required=True)
    _check_values(raw, path, "behavior", BEHAVIOURS)
    _check_values(raw, path, "split", SPLITS)
    is_test = pl.col("split") == "test"
    # The order key: behaviour funnel position, then the held-out row after the training rows of
    # its behaviour, then the file order, so the test buy is each user's last event.
    events = (
        raw.with_row_index("_order")
        .with_columns(
            pl.col("behavior").replace_strict({b: i for i, b in enumerate(BEHAVIOURS)}, return_dtype=pl.Int8)
            .alias("_stage"),
        )
        .sort("user_id", "_stage", is_test, "_order")
        .select(
            pl.col("user_id").cast(pl.String),
            pl.col("item_id").cast(pl.String),
            pl.lit(PRODUCT).alias("content_type"),
            pl.lit(None, pl.Int64).alias("ts"),
            pl.int_range(pl.len()).over("user_id").cast(pl.Int64).alias("seq"),
            pl.col("behavior").alias("event"),
            pl.lit(None, pl.Float64).alias("value"),
            pl.when(is_test & (pl.col("behavior") == "buy")).then(pl.lit("test")).otherwise(pl.lit("train"))
            .alias("split"),
            is_test.alias("release_test"),
        )
    )
    return CanonicalDataset.build("tmall", items=_products(events), events=events)


def load_retailrocket(root: str | Path) -> CanonicalDataset:
    """RetailRocket (KHGT/CML release): 2,174 users, 30,113 products, 97,381 + 2,174 test events.

    ``ts`` is unix seconds (null for the held-out buys, which ``split == "test"`` marks and
    ``seq`` puts last).
    """
    path = Path(root) / "interactions.tsv"
    raw = read_table(path, {"user_id": pl.Int64, "item_id": pl.Int64, "behavior": pl.String,
                            "timestamp": pl.Int64, "split": pl.String},
                     separator="\t", quoting=False, required=True)
    _check_values(raw, path, "behavior", BEHAVIOURS)
    _check_values(raw, path, "split", SPLITS)
    is_test = pl.col("split") == "test"
    # Training rows need a real time in seconds; test rows carry the release's -1 placeholder.
    bad = raw.select(
        (is_test & (pl.col("timestamp") != -1))
        | (~is_test & ((pl.col("timestamp") <= 0) | (pl.col("timestamp") >= _MAX_UNIX_SECONDS)))
    ).to_series()
    if bad.any():
        row = int(bad.arg_max())
        raise DataError(path, "bad timestamp", line=row + 2, column="timestamp", value=raw["timestamp"][row],
                        expected="unix seconds on training rows and -1 on test rows")
    # No seq here: build() orders each user's events by (ts, file order) with null ts last,
    # which puts the untimed test buy at the end of each user's sequence.
    events = raw.select(
        pl.col("user_id").cast(pl.String),
        pl.col("item_id").cast(pl.String),
        pl.lit(PRODUCT).alias("content_type"),
        pl.when(is_test).then(None).otherwise(pl.col("timestamp")).alias("ts"),
        pl.col("behavior").alias("event"),
        pl.lit(None, pl.Float64).alias("value"),
        pl.col("split"),
    )
    return CanonicalDataset.build("retailrocket", items=_products(events), events=events)
