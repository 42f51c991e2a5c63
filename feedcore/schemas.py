"""The canonical tables every dataset is converted to, so every later part is dataset-agnostic.

Four tables, stored as Parquet:

- ``items``:  item_id, content_type, creator_id?, title?, categories (list), created_at?
- ``users``:  user_id, plus any optional feature columns
- ``events``: user_id, item_id, content_type, ts?, seq, event, value?
  Long format: one row per signal. ``event`` names the signal (rating, view, cart, buy, play,
  follow, click, like, impression, ...); ``value`` carries its magnitude where it has one (the
  rating, the play count, the watch time). ``seq`` orders a user's events (0, 1, 2, ... per user,
  following ``ts`` where the source has time, the source's own order otherwise).
- ``edges``:  src_user, dst_user, kind (follow, friend, trust), ts?

Ids are strings, so any source's ids fit. Accounts are recommendable items too: the item standing
for user ``u`` is ``account_item_id(u)`` with content type ``account``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import polars as pl

from feedcore.errors import DataError
from feedcore.io import atomic_path, read_json

ITEMS_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.String(),
    "content_type": pl.String(),
    "creator_id": pl.String(),
    "title": pl.String(),
    "categories": pl.List(pl.String()),
    "created_at": pl.Int64(),
}
USERS_KEY_SCHEMA: dict[str, pl.DataType] = {"user_id": pl.String()}
EVENTS_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "item_id": pl.String(),
    "content_type": pl.String(),
    "ts": pl.Int64(),
    "seq": pl.Int64(),
    "event": pl.String(),
    "value": pl.Float64(),
}
EDGES_SCHEMA: dict[str, pl.DataType] = {
    "src_user": pl.String(),
    "dst_user": pl.String(),
    "kind": pl.String(),
    "ts": pl.Int64(),
}
# Columns that must never be null.
REQUIRED = {
    "items": ("item_id", "content_type", "categories"),
    "users": ("user_id",),
    "events": ("user_id", "item_id", "content_type", "seq", "event"),
    "edges": ("src_user", "dst_user", "kind"),
}
ACCOUNT = "account"
GENERATED = "generated"
TABLES = ("items", "users", "events", "edges")


def account_item_id(user_id: str) -> str:
    """The item id of the account of `user_id`, when accounts are recommended as items."""
    return f"{ACCOUNT}:{user_id}"


def empty_edges() -> pl.DataFrame:
    return pl.DataFrame(schema=EDGES_SCHEMA)


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType], table: str, source: str | None = None) -> pl.DataFrame:
    """Cast `df` to `schema`: add missing nullable columns, order known columns first, keep extras.

    Raises DataError (naming `source`, the file the table came from, when given) when a required
    column is missing or a value cannot be cast.
    """
    where = source or f"<{table} table>"
    missing = [c for c in REQUIRED[table] if c not in df.columns]
    if missing:
        raise DataError(where, f"missing required column(s) {missing}", expected=f"columns {list(schema)}")
    columns = []
    for name, dtype in schema.items():
        if name in df.columns:
            columns.append(pl.col(name).cast(dtype, strict=True))
        else:
            columns.append(pl.lit(None, dtype=dtype).alias(name))
    extras = [c for c in df.columns if c not in schema]
    try:
        return df.select(*columns, *extras)
    except pl.exceptions.PolarsError as e:
        raise DataError(where, f"cannot cast to the canonical schema: {e}", expected=str(schema)) from e


@dataclasses.dataclass(frozen=True)
class CanonicalDataset:
    """A dataset in canonical form: items, users, events and edges as polars DataFrames.

    Example:
        >>> ds = CanonicalDataset.read("artifacts/ml-latest-small/data")   # doctest: +SKIP
        >>> ds.events.group_by("event").len()                               # doctest: +SKIP
    """

    name: str
    items: pl.DataFrame
    users: pl.DataFrame
    events: pl.DataFrame
    edges: pl.DataFrame

    @classmethod
    def build(
        cls,
        name: str,
        *,
        items: pl.DataFrame,
        events: pl.DataFrame,
        users: pl.DataFrame | None = None,
        edges: pl.DataFrame | None = None,
        sources: dict[str, str] | None = None,
    ) -> CanonicalDataset:
        """Conform raw loader output to the canonical schema and validate it.

        `users` defaults to the distinct users of `events` (and of `edges`); `seq` is filled in
        from (`ts`, source order) when the loader did not set it. `sources` names the file of each
        table, for error messages.
        """
        sources = sources or {}
        if "ts" not in events.columns:
            events = events.with_columns(pl.lit(None, pl.Int64).alias("ts"))
        if "seq" not in events.columns:
            events = events.with_row_index("_order").sort("user_id", "ts", "_order", nulls_last=True)
            events = events.with_columns(
                pl.int_range(pl.len()).over("user_id").cast(pl.Int64).alias("seq")
            ).drop("_order")
        events = conform(events, EVENTS_SCHEMA, "events", sources.get("events"))
        edges = conform(edges, EDGES_SCHEMA, "edges", sources.get("edges")) if edges is not None else empty_edges()
        if users is None:
            ids = [events.select("user_id")]
            if edges.height:
                ids += [edges.select(pl.col("src_user").alias("user_id")),
                        edges.select(pl.col("dst_user").alias("user_id"))]
            users = pl.concat(ids).unique().sort("user_id")
        users = conform(users, USERS_KEY_SCHEMA, "users", sources.get("users"))
        ds = cls(name, conform(items, ITEMS_SCHEMA, "items", sources.get("items")), users, events, edges)
        ds.validate(sources)
        return ds

    def validate(self, sources: dict[str, str] | None = None) -> None:
        """Check keys, nulls and references; raise DataError naming the table (or its file) and value."""
        sources = sources or {}

        def where(table: str) -> str:
            return sources.get(table, f"<{self.name}:{table}>")

        for table in TABLES:
            df: pl.DataFrame = getattr(self, table)
            for column in REQUIRED[table]:
                nulls = df[column].null_count()
                if nulls:
                    raise DataError(where(table), f"{nulls} null value(s) in a required column",
                                    column=column, expected="no nulls")
        for table, key in (("items", "item_id"), ("users", "user_id")):
            df = getattr(self, table)
            dup = df.filter(pl.col(key).is_duplicated())
            if dup.height:
                raise DataError(where(table), "duplicate key", column=key, value=dup[key][0], expected="unique ids")
        typed = self.events.join(self.items.select("item_id", pl.col("content_type").alias("_item_type")),
                                 on="item_id", how="left")
        unknown = typed.filter(pl.col("_item_type").is_null())
        if unknown.height:
            raise DataError(where("events"), f"{unknown.height} event(s) reference unknown items",
                            column="item_id", value=unknown["item_id"][0], expected="an item_id of the items table")
        mismatch = typed.filter(pl.col("content_type") != pl.col("_item_type"))
        if mismatch.height:
            row = mismatch.row(0, named=True)
            raise DataError(where("events"), f"{mismatch.height} event(s) carry another content type than their item",
                            column="content_type", value=(row["item_id"], row["content_type"]),
                            expected=f"the item's own ({row['_item_type']!r} for {row['item_id']!r})")
        unknown = self.events.join(self.users, on="user_id", how="anti")
        if unknown.height:
            raise DataError(where("events"), f"{unknown.height} event(s) reference unknown users",
                            column="user_id", value=unknown["user_id"][0], expected="a user_id of the users table")
        dup = self.events.select("user_id", "seq").filter(pl.struct("user_id", "seq").is_duplicated())
        if dup.height:
            raise DataError(where("events"), "seq is not unique within a user", column="seq",
                            value=(dup["user_id"][0], dup["seq"][0]), expected="one position per event")

    def counts(self) -> dict[str, int]:
        return {
            "users": self.users.height,
            "items": self.items.height,
            "events": self.events.height,
            "edges": self.edges.height,
        }

    def with_events(self, events: pl.DataFrame) -> CanonicalDataset:
        """The same catalogue with another event table (e.g. a training split)."""
        return dataclasses.replace(self, events=events)

    def write(self, directory: str | Path) -> Path:
        """Write the four tables as Parquet plus meta.json, atomically (all or nothing)."""
        directory = Path(directory)
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            for table in TABLES:
                getattr(self, table).write_parquet(tmp / f"{table}.parquet")
            meta = {"name": self.name, "counts": self.counts(), "fingerprint": fingerprint(tmp)}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def read(cls, directory: str | Path) -> CanonicalDataset:
        """Read tables written by `write`; a missing or damaged file raises DataError naming it."""
        directory = Path(directory)
        meta = read_json(directory / "meta.json", "a directory written by `feed data prepare`")
        tables = {}
        for table in TABLES:
            path = directory / f"{table}.parquet"
            try:
                tables[table] = pl.read_parquet(path)
            except (OSError, pl.exceptions.PolarsError) as e:
                raise DataError(path, f"cannot read Parquet table: {e}", expected="a Parquet file") from e
        ds = cls(meta["name"], **tables)
        ds.validate()
        return ds


def fingerprint(directory: str | Path) -> str:
    """A short content hash of the Parquet tables in `directory`: ties artifacts to their data."""
    h = hashlib.sha256()
    for table in TABLES:
        h.update((Path(directory) / f"{table}.parquet").read_bytes())
    return h.hexdigest()[:16]


def dataset_fingerprint(directory: str | Path) -> str:
    """The fingerprint recorded in a prepared dataset's meta.json."""
    meta = read_json(Path(directory) / "meta.json", "a directory written by `feed data prepare`")
    if "fingerprint" not in meta:
        raise DataError(Path(directory) / "meta.json", "no fingerprint", expected="rerun `feed data prepare`")
    return meta["fingerprint"]
