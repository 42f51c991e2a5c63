"""Feature transforms shared by training and serving: vocabularies, item features, user histories.

These pure functions are the only place a raw id becomes a model input, so the training pipeline
and the server compute features the same way (no train/serve skew). Index 0 of every vocabulary
means "unknown" (and padding): ids seen only at serving time map there.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import polars as pl

UNKNOWN = 0
_SMALL = 4096


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """A frozen string → index map; index 0 is reserved for unknown values."""

    values: tuple[str, ...]

    @classmethod
    def from_series(cls, series: pl.Series) -> Vocabulary:
        return cls(tuple(series.drop_nulls().unique().sort().to_list()))

    def __len__(self) -> int:
        return len(self.values) + 1

    @property
    def _index(self) -> dict[str, int]:
        # Cached on first use; frozen dataclasses allow it through object.__setattr__.
        try:
            return self.__dict__["_cached_index"]
        except KeyError:
            index = {v: i + 1 for i, v in enumerate(self.values)}
            object.__setattr__(self, "_cached_index", index)
            return index

    def encode(self, series: pl.Series | list[str]) -> np.ndarray:
        """Indices of `series` (int64), unknown and null → 0."""
        if len(series) < _SMALL:  # a request's candidates: dict lookups beat a join
            index = self._index
            values = series if isinstance(series, list) else series.to_list()
            return np.fromiter((index.get(v, UNKNOWN) for v in values), np.int64, len(values))
        if isinstance(series, list):
            series = pl.Series(series, dtype=pl.String)
        out = pl.DataFrame({"v": series.cast(pl.String)}).join(self._frame, on="v", how="left", maintain_order="left")
        return out["i"].fill_null(UNKNOWN).to_numpy()

    @property
    def _frame(self) -> pl.DataFrame:
        try:
            return self.__dict__["_cached_frame"]
        except KeyError:
            frame = pl.DataFrame({"v": self.values, "i": np.arange(1, len(self.values) + 1, dtype=np.int64)})
            object.__setattr__(self, "_cached_frame", frame)
            return frame

    def encode_one(self, value: str) -> int:
        return self._index.get(value, UNKNOWN)

    def decode(self, index: int) -> str | None:
        return self.values[index - 1] if 0 < index <= len(self.values) else None


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """The vocabularies and sizes that turn canonical tables into model inputs; saved with every model."""

    users: Vocabulary
    items: Vocabulary
    content_types: Vocabulary
    categories: Vocabulary
    max_history: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "users": list(self.users.values),
            "items": list(self.items.values),
            "content_types": list(self.content_types.values),
            "categories": list(self.categories.values),
            "max_history": self.max_history,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(
            users=Vocabulary(tuple(d["users"])),
            items=Vocabulary(tuple(d["items"])),
            content_types=Vocabulary(tuple(d["content_types"])),
            categories=Vocabulary(tuple(d["categories"])),
            max_history=int(d["max_history"]),
        )


def build_feature_spec(items: pl.DataFrame, users: pl.DataFrame, max_history: int) -> FeatureSpec:
    """Vocabularies over the whole catalogue and user table (ids only: no labels, no leakage)."""
    return FeatureSpec(
        users=Vocabulary.from_series(users["user_id"]),
        items=Vocabulary.from_series(items["item_id"]),
        content_types=Vocabulary.from_series(items["content_type"]),
        categories=Vocabulary.from_series(items["categories"].explode()),
        max_history=max_history,
    )


@dataclasses.dataclass(frozen=True)
class ItemContent:
    """What a model reads about B items besides their ids, one row per item.

    content_type: (B,) int64.  category_lengths: (B,) and category_values: (sum of lengths,) int64,
    row by row.  popularity: (B,) float32 log1p count of the item's training events before the
    row's time (`ItemFeatures.popularity_at`).  created_at: (B,) float64
    unix seconds, NaN = unknown.  text: (B, X) float32 title embeddings (zeros = no text), or None
    when the features carry no text.
    """

    content_type: np.ndarray
    category_lengths: np.ndarray
    category_values: np.ndarray
    popularity: np.ndarray
    created_at: np.ndarray
    text: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.content_type)


@dataclasses.dataclass(frozen=True)
class NewItems:
    """Content supplied by the caller for candidates outside the item vocabulary (generated posts).

    Their item index is 0 (unknown), so the model knows them by content alone: content type,
    categories, text and age. A content type outside the training vocabulary (``generated`` is
    in none) is encoded as 0, the unknown row, like any unseen id. Popularity is 0 (no events).

    Args:
        rows: (M,) positions, in the batch being scored, of the new items.
        content_type: (M,) content-type indices (`FeatureSpec.content_types`; 0 = unseen type).
        category_lengths: (M,) and category_values: (sum,) category indices, row by row.
        text: optional (M, X) text embeddings (`feedcore.text.embed_texts`); None = no text.
        created_at: optional (M,) unix seconds; None = unknown age.
        embedding: optional (M, D) retrieval item embeddings (`TwoTower.content_embeddings`) for
            the retrieval-score feature; None = score 0.

    Example:
        >>> feats = ItemFeatures(np.array([0, 1, 1]), np.array([0, 0, 1, 3]), np.array([2, 1, 3]), np.zeros(3, "float32"))
        >>> new = NewItems.from_source_items(np.array([1]), [np.array([1, 2])], feats)
        >>> new.category_values.tolist(), feats.content(np.array([2, 0]), new).category_lengths.tolist()
        ([1, 2, 3], [2, 3])
    """

    rows: np.ndarray
    content_type: np.ndarray
    category_lengths: np.ndarray
    category_values: np.ndarray
    text: np.ndarray | None = None
    created_at: np.ndarray | None = None
    embedding: np.ndarray | None = None

    def __post_init__(self) -> None:
        m = len(self.rows)
        if len(self.content_type) != m or len(self.category_lengths) != m:
            raise ValueError(f"NewItems: {m} rows but {len(self.content_type)} content types and "
                             f"{len(self.category_lengths)} category lists")
        if int(self.category_lengths.sum()) != len(self.category_values):
            raise ValueError("NewItems: category_lengths do not add up to len(category_values)")
        for name in ("text", "created_at", "embedding"):
            value = getattr(self, name)
            if value is not None and len(value) != m:
                raise ValueError(f"NewItems: {m} rows but {len(value)} {name} rows")

    @classmethod
    def from_source_items(
        cls,
        rows: np.ndarray,
        source_items: list[np.ndarray],
        item_features: ItemFeatures,
        *,
        content_type: int | np.ndarray | None = None,
        text: np.ndarray | None = None,
        created_at: np.ndarray | None = None,
        embedding: np.ndarray | None = None,
    ) -> NewItems:
        """New items that inherit the categories of the items they were made from (a generated
        post of its source items): the sorted union of those items' categories, and by default
        the content type most of them have, a type the model was trained on (a post about films
        is read as a film, not through the never-trained unknown row).

        Args:
            rows: (M,) positions in the batch.
            source_items: M arrays of item indices, the sources of each new item.
            content_type: one index for all, or (M,); default: each new item's sources' most common.
        """
        cats, types = [], []
        for sources in source_items:
            sources = np.asarray(sources, np.int64)
            _, values = item_features.categories_of(sources)
            cats.append(np.unique(values))
            known = item_features.content_type[sources[sources != UNKNOWN]]
            types.append(int(np.bincount(known).argmax()) if len(known) else UNKNOWN)
        if content_type is None:
            content_type = np.array(types, np.int64)
        lengths = np.array([len(c) for c in cats], np.int64)
        values = np.concatenate(cats or [np.zeros(0, np.int64)]).astype(np.int64)
        rows = np.asarray(rows, np.int64)
        return cls(rows, np.broadcast_to(np.asarray(content_type, np.int64), rows.shape).copy(), lengths, values,
                   text, None if created_at is None else np.asarray(created_at, np.float64), embedding)


@dataclasses.dataclass(frozen=True)
class ItemFeatures:
    """Per-item model inputs aligned with the item vocabulary (row i = item index i; row 0 unknown).

    content_type: (N,) int64.  categories: CSR form, values of item i in
    category_values[category_offsets[i]:category_offsets[i+1]].  popularity: (N,) float32 log1p
    count of training events.  created_at: optional (N,) float64 unix seconds (the catalogue's
    ``created_at``, else the item's first training event; NaN = unknown).  text: optional (N, X)
    float16 title embeddings (zeros for items without a title), float16 so the copy saved with a
    checkpoint is half the size and training reads exactly what serving reads.  event_offsets
    (N + 1,) and event_times: optional CSR of the times (unix seconds, ascending per item; -inf
    for an event without one) of the events `popularity` counts, so a training row reads the
    popularity as of its own time (`popularity_at`); not saved with a checkpoint: a served model
    is asked after every training event, when the count is the total.
    """

    content_type: np.ndarray
    category_offsets: np.ndarray
    category_values: np.ndarray
    popularity: np.ndarray
    created_at: np.ndarray | None = None
    text: np.ndarray | None = None
    event_offsets: np.ndarray | None = None
    event_times: np.ndarray | None = None

    def popularity_at(self, item_index: np.ndarray, times: np.ndarray | None) -> np.ndarray:
        """(B,) float32 log1p count of each item's training events strictly before its row's time
        (unix seconds): a row never counts its own event, nor any later one, so an item first
        engaged in a row reads 0 there, as a new item does when served. A NaN time, or features
        without event times, read the total count.

        Example:
            >>> f = ItemFeatures(np.zeros(3, np.int64), np.zeros(4, np.int64), np.zeros(0, np.int64),
            ...                  np.log1p(np.array([0, 3, 1], "float32")), event_offsets=np.array([0, 0, 3, 4]),
            ...                  event_times=np.array([10.0, 20.0, 20.0, 5.0]))
            >>> np.expm1(f.popularity_at(np.array([1, 1, 1, 1, 2, 2]), np.array([10, 11, 21, np.nan, 5, 6]))).round().tolist()
            [0.0, 1.0, 3.0, 3.0, 0.0, 1.0]
        """
        item_index = np.asarray(item_index, np.int64)
        total = self.popularity[item_index].astype(np.float32)
        if times is None or self.event_times is None or not len(self.event_times):
            return total
        times = np.asarray(times, np.float64)
        known = ~np.isnan(times)
        keys, distinct = self._event_keys
        i = item_index[known]
        # Each item's events in a band of one ascending int64 array: item * (T + 1) + the rank of
        # the event's time among the T distinct times (exact at any scale, unlike adding seconds).
        query = i * (len(distinct) + 1) + np.searchsorted(distinct, times[known], side="left")
        counts = np.searchsorted(keys, query, side="left") - self.event_offsets[i]
        total[known] = np.log1p(counts.astype(np.float32))  # the same float32 log1p as the served totals
        return total

    @functools.cached_property  # computed on first use (it writes the instance dict, which a frozen dataclass allows)
    def _event_keys(self) -> tuple[np.ndarray, np.ndarray]:
        distinct = np.unique(self.event_times)
        owner = np.repeat(np.arange(len(self.event_offsets) - 1, dtype=np.int64), np.diff(self.event_offsets))
        return owner * (len(distinct) + 1) + np.searchsorted(distinct, self.event_times), distinct

    def categories_of(self, item_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lengths (B,) and concatenated values of the categories of `item_index` (B,)."""
        starts = self.category_offsets[item_index]
        lengths = self.category_offsets[item_index + 1] - starts
        # Positions in category_values: each row's start, then +0, +1, ... up to its length.
        index = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))
        return lengths.astype(np.int64), self.category_values[index].astype(np.int64)

    def content(self, item_index: np.ndarray, new_items: NewItems | None = None,
                times: np.ndarray | None = None) -> ItemContent:
        """The content of B rows at their `times` (unix seconds; None or NaN: after every training
        event): looked up for items of the vocabulary, taken from `new_items` for the rows it
        names (whose item index must be 0, unknown). As of its row's time, an item not created
        yet, or (without a catalogue ``created_at``) not engaged before, has no known creation
        time: an item's first engagement reads an unknown age, as a new item does when served."""
        item_index = np.asarray(item_index, np.int64)
        b = len(item_index)
        content_type = self.content_type[item_index].astype(np.int64)
        lengths, values = self.categories_of(item_index)
        popularity = self.popularity_at(item_index, times)
        created_at = (np.full(b, np.nan) if self.created_at is None else self.created_at[item_index].astype(np.float64))
        if times is not None:
            created_at[created_at >= np.asarray(times, np.float64)] = np.nan  # NaN times compare False
        text = None if self.text is None else self.text[item_index].astype(np.float32)
        if new_items is None or len(new_items.rows) == 0:
            return ItemContent(content_type, lengths, values, popularity, created_at, text)
        rows = new_items.rows
        if (item_index[rows] != UNKNOWN).any():
            raise ValueError("NewItems rows must have item index 0 (unknown): a vocabulary item has its own content")
        content_type[rows] = new_items.content_type
        popularity[rows] = 0.0
        created_at[rows] = np.nan if new_items.created_at is None else new_items.created_at
        if text is not None:
            text[rows] = 0.0 if new_items.text is None else new_items.text
        # Categories: row r's values come from the vocabulary or from new_items, in row order.
        new_lengths = lengths.copy()
        new_lengths[rows] = new_items.category_lengths
        new_starts = np.zeros(b, np.int64)
        new_starts[rows] = np.cumsum(new_items.category_lengths) - new_items.category_lengths
        old_starts = np.cumsum(lengths) - lengths
        is_new = np.zeros(b, bool)
        is_new[rows] = True
        parts = [new_items.category_values[new_starts[r] : new_starts[r] + new_lengths[r]] if is_new[r]
                 else values[old_starts[r] : old_starts[r] + lengths[r]] for r in range(b)]
        values = np.concatenate(parts or [np.zeros(0, np.int64)]).astype(np.int64)
        return ItemContent(content_type, new_lengths, values, popularity, created_at, text)


def item_features(items: pl.DataFrame, train_events: pl.DataFrame, spec: FeatureSpec,
                  text: np.ndarray | None = None) -> ItemFeatures:
    """Item inputs for every item of the vocabulary, in vocabulary order.

    Args:
        text: optional (N, X) title embeddings in vocabulary order (`feedcore.text.item_text_embeddings`).
    """
    n = len(spec.items)
    order = spec.items.encode(items["item_id"])
    content_type = np.zeros(n, np.int64)
    content_type[order] = spec.content_types.encode(items["content_type"])
    cat_lists = [[] for _ in range(n)]
    for idx, cats in zip(order, items["categories"].to_list(), strict=True):
        cat_lists[idx] = [spec.categories.encode_one(c) for c in cats]
    lengths = np.array([len(c) for c in cat_lists], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.array([c for cats in cat_lists for c in cats], np.int64)
    train_index = spec.items.encode(train_events["item_id"])
    counts = np.bincount(train_index, minlength=n)
    by_item_offsets = by_item_times = None
    times = event_times(train_events)
    if not np.isnan(times).all():  # popularity as of each row's time; an event with no time counts as before all
        times = np.where(np.isnan(times), -np.inf, times)
        by_item_times = times[np.lexsort((times, train_index))]
        by_item_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return ItemFeatures(content_type, offsets, values, np.log1p(counts.astype(np.float32)),
                        created_at=item_created_at(items, train_events, spec, order, train_index),
                        text=None if text is None else np.asarray(text, np.float16),
                        event_offsets=by_item_offsets, event_times=by_item_times)


def item_created_at(items: pl.DataFrame, train_events: pl.DataFrame, spec: FeatureSpec, order: np.ndarray,
                    train_index: np.ndarray) -> np.ndarray:
    """(N,) float64 unix seconds: the catalogue's ``created_at`` where set, else the item's first
    training event; NaN where neither is known (no timestamps)."""
    out = np.full(len(spec.items), np.nan)
    if "ts" in train_events.columns and train_events["ts"].null_count() < train_events.height:
        ts = train_events["ts"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        known = ~np.isnan(ts)
        np.fmin.at(out, train_index[known], ts[known])
    if "created_at" in items.columns:
        created = items["created_at"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        known = ~np.isnan(created)
        out[order[known]] = created[known]
    out[UNKNOWN] = np.nan
    return out


def history_events(events: pl.DataFrame, event_types: tuple[str, ...]) -> pl.DataFrame:
    """The events that make up user histories (all of them when `event_types` is empty)."""
    return events if not event_types else events.filter(pl.col("event").is_in(list(event_types)))


def sequences(events: pl.DataFrame, spec: FeatureSpec) -> pl.DataFrame:
    """One row per user: user_id and the item indices, ids and times (``ts``, null where the data
    has none) of their events in ``seq`` order."""
    ts = pl.col("ts") if "ts" in events.columns else pl.lit(None, pl.Int64).alias("ts")
    return (
        events.sort("user_id", "seq")
        .with_columns(pl.Series("item_idx", spec.items.encode(events.sort("user_id", "seq")["item_id"])), ts)
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("item_idx"), pl.col("item_id"), pl.col("ts"))
    )


def event_times(frame: pl.DataFrame) -> np.ndarray:
    """(n,) float64 unix seconds of a frame's ``ts`` column; NaN where null or without one."""
    if "ts" not in frame.columns:
        return np.full(frame.height, np.nan)
    return frame["ts"].cast(pl.Float64).fill_null(np.nan).to_numpy().astype(np.float64)


def latest_histories(events: pl.DataFrame, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Serving-time histories: each user's last `max_history` item indices, oldest first."""
    seqs = sequences(events, spec).with_columns(pl.col("item_idx").list.tail(spec.max_history))
    return {u: np.asarray(h, np.int64) for u, h in seqs.select("user_id", "item_idx").iter_rows()}


def histories_before_each_event(events: pl.DataFrame, spec: FeatureSpec) -> pl.DataFrame:
    """Training examples: for every event, the user's previous `max_history` items (oldest first).

    Returns user_id, user_idx, item_idx and item_id (the event's item), ts (its time, null when
    unknown) and history (list of item indices).
    It is `latest_histories` evaluated just before each event, so training sees exactly what the
    server will compute.
    """
    seqs = sequences(events, spec).with_columns(pl.int_ranges(pl.col("item_idx").list.len()).alias("pos"))
    exploded = seqs.explode("pos").with_columns(
        pl.col("item_idx").list.get(pl.col("pos")).alias("target"),
        pl.col("item_id").list.get(pl.col("pos")).alias("target_id"),
        pl.col("ts").list.get(pl.col("pos")).alias("ts"),
        pl.col("item_idx")
        .list.slice(pl.max_horizontal(pl.col("pos") - spec.max_history, pl.lit(0)),
                    pl.min_horizontal(pl.col("pos"), pl.lit(spec.max_history)))
        .alias("history"),
    )
    return exploded.select(
        "user_id",
        pl.Series("user_idx", spec.users.encode(exploded["user_id"])),
        pl.col("target").alias("item_idx"),
        pl.col("target_id").alias("item_id"),
        "ts",
        "history",
    )


def pad_histories(histories: pl.Series | list[np.ndarray], max_len: int) -> np.ndarray:
    """Right-aligned (B, L) int64 matrix of histories, left-padded with 0; longer ones keep the tail."""
    if isinstance(histories, pl.Series):
        lengths = histories.list.len().to_numpy().astype(np.int64)
        flat = histories.explode().drop_nulls().to_numpy().astype(np.int64)
    else:
        lengths = np.array([len(h) for h in histories], np.int64)
        flat = np.concatenate(list(histories) or [np.zeros(0, np.int64)]).astype(np.int64)
    out = np.zeros((len(lengths), max_len), np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    keep = np.minimum(lengths, max_len)
    rows = np.repeat(np.arange(len(lengths)), keep)
    within = np.arange(keep.sum()) - np.repeat(np.concatenate([[0], np.cumsum(keep)[:-1]]), keep)
    src = np.repeat(starts + lengths - keep, keep) + within
    out[rows, max_len - np.repeat(keep, keep) + within] = flat[src]
    return out


def item_features_to_dict(features: ItemFeatures) -> dict[str, Any]:
    """Plain tensors, for saving inside a checkpoint (so serving uses training's exact features);
    the event times stay out (`ItemFeatures`: served after every training event, popularity is
    the saved total)."""
    import torch

    return {f.name: torch.from_numpy(np.ascontiguousarray(getattr(features, f.name)))
            for f in dataclasses.fields(features)
            if getattr(features, f.name) is not None and f.name not in ("event_offsets", "event_times")}


def item_features_from_dict(d: dict[str, Any]) -> ItemFeatures:
    return ItemFeatures(**{k: v.numpy() for k, v in d.items()})


def item_age(event_time: np.ndarray, created_at: np.ndarray) -> np.ndarray:
    """(B, 2) float32: log1p of the item's age in days at `event_time` (unix seconds; clamped at
    0), and 1.0 where the age is unknown (either time NaN; the age column is then 0).

    Example:
        >>> item_age(np.array([86400.0 * 3, np.nan]), np.array([0.0, 0.0])).astype(float).round(3).tolist()
        [[1.386, 0.0], [0.0, 1.0]]
    """
    days = (np.asarray(event_time, np.float64) - np.asarray(created_at, np.float64)) / 86_400.0
    unknown = np.isnan(days)
    age = np.log1p(np.clip(np.nan_to_num(days), 0.0, None))
    return np.stack([age, unknown], axis=1).astype(np.float32)


def time_context(event_time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hour-of-day and day-of-week buckets of unix-second times (UTC): lengths (B,) and values.

    Buckets: 1-24 the hour, 25-31 the weekday (Monday first); a NaN time has no values (length 0,
    an all-zero pooled embedding), so datasets without timestamps carry no context.

    Example:
        >>> time_context(np.array([0.0, np.nan]))  # 1970-01-01 00:00 UTC was a Thursday
        (array([2, 0]), array([ 1, 28]))
    """
    t = np.asarray(event_time, np.float64)
    known = ~np.isnan(t)
    seconds = t[known].astype(np.int64)
    hour = (seconds // 3600) % 24
    weekday = (seconds // 86_400 + 3) % 7  # day 0 was a Thursday (weekday 3)
    values = np.stack([1 + hour, 25 + weekday], axis=1).reshape(-1)
    return np.where(known, 2, 0).astype(np.int64), values.astype(np.int64)
