"""Bring your own data: tables already in the canonical layout, as Parquet files.

``root`` holds ``items.parquet`` and ``events.parquet`` and, optionally, ``users.parquet`` and
``edges.parquet``, with the columns of `feedcore.schemas` (ids of any integer or string type are
cast to strings; missing optional columns are added as nulls; ``seq`` is derived from ``ts`` when
absent). Everything is validated: an event naming an unknown item, a duplicate id or a null in a
required column is reported with the table, column and value.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from feedcore.errors import DataError
from feedcore.schemas import CanonicalDataset


def _read(path: Path, required: bool) -> pl.DataFrame | None:
    if not path.is_file():
        if required:
            raise DataError(path, "file not found", expected="a Parquet table in the canonical layout")
        return None
    try:
        df = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise DataError(path, f"cannot read Parquet table: {e}", expected="a Parquet file") from e
    ids = [c for c in ("item_id", "user_id", "creator_id", "src_user", "dst_user") if c in df.columns]
    return df.with_columns(pl.col(c).cast(pl.String) for c in ids)


def load_canonical(root: str | Path) -> CanonicalDataset:
    root = Path(root)
    items = _read(root / "items.parquet", required=True)
    if "categories" not in items.columns:
        items = items.with_columns(pl.lit([], dtype=pl.List(pl.String)).alias("categories"))
    return CanonicalDataset.build(
        root.name,
        items=items,
        events=_read(root / "events.parquet", required=True),
        users=_read(root / "users.parquet", required=False),
        edges=_read(root / "edges.parquet", required=False),
        sources={t: str(root / f"{t}.parquet") for t in ("items", "users", "events", "edges")},
    )
