"""Ranker training examples from canonical events.

Positives: each (user, item) pair a user interacted with, at its first occurrence, with the user's
history just before it. Labels per task from all of that pair's events (`TaskConfig`): binary = an
event of the task's type (with value >= threshold where set); regression = the mean value of
those events (missing otherwise).

Negatives: the data holds positives only, so for each positive, `negatives_per_positive` items are
sampled as non-engaged exposures (binary labels 0, regression missing), sharing the positive's
history: a share `popular_share` in proportion to the items' training popularity (what retrieval
puts in front of the ranker: popular items this user did not engage with), the rest uniformly from
the catalogue. On Tmall, popularity-sampled negatives took a buy ranker's full-ranking HR@10 from
0.02 to 0.35 (benchmarks/ranker_tmall.py): with uniform negatives only, the model never learns
that a popular item the user never touched is usually not bought. Logged impressions that were
not engaged (served traffic, `--from-logs`) are the better exposure model when they exist.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl

from feedcore.config import TaskConfig
from feedcore.errors import DataError
from feedcore.features import FeatureSpec, event_times, histories_before_each_event, pad_histories
from ranker.model import SOURCE_IDS


@dataclasses.dataclass(frozen=True)
class RankerExamples:
    user: np.ndarray  # (n,)
    item: np.ndarray  # (n,)
    history: np.ndarray  # (n, L)
    labels: np.ndarray  # (n, T), NaN = missing
    source: np.ndarray | None = None  # (n,) candidate-source ids; None = unknown
    time: np.ndarray | None = None  # (n,) unix seconds of the event (a negative: its positive's); NaN/None = unknown

    def __len__(self) -> int:
        return len(self.item)

    def take(self, idx: np.ndarray) -> RankerExamples:
        source = None if self.source is None else self.source[idx]
        time = None if self.time is None else self.time[idx]
        return RankerExamples(self.user[idx], self.item[idx], self.history[idx], self.labels[idx], source, time)

    @staticmethod
    def concat(parts: list[RankerExamples]) -> RankerExamples:
        return RankerExamples(
            np.concatenate([p.user for p in parts]), np.concatenate([p.item for p in parts]),
            np.concatenate([p.history for p in parts]), np.concatenate([p.labels for p in parts]),
            np.concatenate([p.source if p.source is not None else np.zeros(len(p), np.int64) for p in parts]),
            np.concatenate([p.time if p.time is not None else np.full(len(p), np.nan) for p in parts]),
        )


def unrecorded_tasks(events: pl.DataFrame, tasks: tuple[TaskConfig, ...]) -> list[int]:
    """Indices of the tasks whose event type never occurs in `events`: a source that never records
    an event cannot say it did not happen, so those labels are missing, not 0."""
    present = set(events["event"].unique().to_list())
    return [t for t, task in enumerate(tasks) if task.event != "*" and task.event not in present]


def examples_from_log(
    log: pl.DataFrame,
    spec: FeatureSpec,
    tasks: tuple[TaskConfig, ...],
    histories: dict[str, np.ndarray],
) -> RankerExamples:
    """Examples from served traffic (`serving.event_log`): one per (user, item, request) the log
    shows the user was served (an impression, or any engagement, which implies one), labelled by
    the engagements on it. Impressions nobody engaged with are the real negatives that datasets
    lack. The candidate source is the one logged; the history is the user's in `histories`.
    """
    served = log.filter(pl.col("request_id").is_not_null())
    if served.height == 0:
        return RankerExamples(np.zeros(0, np.int64), np.zeros(0, np.int64),
                              np.zeros((0, spec.max_history), np.int64), np.zeros((0, len(tasks)), np.float32))
    keys = ["user_id", "item_id", "request_id"]
    # An engagement implies the impression; a task on every event counts engagements only. A task
    # reading a column the log does not have (a dataset's own, like helpfulness) is unrecorded here.
    logged = tuple(dataclasses.replace(t, column="value") if t.column not in served.columns else t for t in tasks)
    aggs = [pl.col("source").drop_nulls().first().alias("_source"),
            (pl.col("ts").min() if "ts" in served.columns else pl.lit(None, pl.Int64)).alias("ts"),
            *label_aggregations(logged, any_event=pl.col("event") != "impression")]
    rows = served.group_by(keys, maintain_order=True).agg(aggs)
    labels = rows.select([t.name for t in tasks]).to_numpy().astype(np.float32)
    labels[:, unrecorded_tasks(served, tasks)] = np.nan
    labels[:, [t for t, task in enumerate(tasks) if task.column not in served.columns]] = np.nan
    return RankerExamples(
        user=spec.users.encode(rows["user_id"]),
        item=spec.items.encode(rows["item_id"]),
        history=pad_histories([histories.get(u, np.zeros(0, np.int64)) for u in rows["user_id"].to_list()],
                              spec.max_history),
        labels=labels,
        source=np.array([SOURCE_IDS.get(s, 0) for s in rows["_source"].to_list()], np.int64),
        time=event_times(rows) / 1000.0,  # the log's ts is the wire's milliseconds
    )


def label_aggregations(tasks: tuple[TaskConfig, ...], any_event: pl.Expr | None = None) -> list[pl.Expr]:
    """One aggregation per task over a group's events: its label. `any_event` is what a task on
    every event (``event = "*"``) counts (default: every event)."""
    aggs = []
    for task in tasks:
        if task.event == "*":
            match = any_event if any_event is not None else pl.lit(True)
        else:
            match = pl.col("event") == task.event
        value = pl.col(task.column).cast(pl.Float64)
        if task.kind == "binary":
            if task.threshold is not None:
                match = match & (value >= task.threshold)
            if task.below is not None:
                match = match & (value <= task.below)
            aggs.append(match.any().cast(pl.Float32).alias(task.name))
        elif task.kind == "count":  # the summed value (1 per event without one), 0 when none matches
            aggs.append(value.fill_null(1.0).filter(match).sum().cast(pl.Float32).alias(task.name))
        else:
            aggs.append(value.filter(match).mean().cast(pl.Float32).alias(task.name))
    return aggs


def _check_columns(events: pl.DataFrame, tasks: tuple[TaskConfig, ...]) -> None:
    for task in tasks:
        if task.column not in events.columns:
            raise DataError("<events>", f"ranker task {task.name!r} reads its value from a column the events lack",
                            column=task.column, expected=f"one of {events.columns}")


def pair_labels(events: pl.DataFrame, tasks: tuple[TaskConfig, ...]) -> pl.DataFrame:
    """user_id, item_id and one label column per task, aggregated over each pair's events."""
    _check_columns(events, tasks)
    return events.group_by("user_id", "item_id").agg(label_aggregations(tasks))


def make_examples(
    history_events: pl.DataFrame,
    label_events: pl.DataFrame,
    spec: FeatureSpec,
    tasks: tuple[TaskConfig, ...],
    negatives_per_positive: int,
    rng: np.random.Generator,
    context: dict[str, np.ndarray] | None = None,
    popularity: np.ndarray | None = None,
    popular_share: float = 0.0,
) -> RankerExamples:
    """Positives and sampled negatives.

    Args:
        history_events: the events positives come from (their order defines histories).
        label_events: all events the labels are read from.
        context: when given (user_id → history), positives use that fixed history instead of the
            one just before each event: how held-out events are scored at serving time.
        popularity: (N,) non-negative item weights (e.g. training event counts) for the
            `popular_share` of negatives drawn in proportion to them.
    """
    if context is None:
        rows = histories_before_each_event(history_events, spec)
        rows = rows.unique(["user_id", "item_idx"], keep="first", maintain_order=True)
        history = pad_histories(rows["history"], spec.max_history)
    else:
        rows = history_events.unique(["user_id", "item_id"], keep="first", maintain_order=True)
        rows = rows.select(
            "user_id", "item_id", pl.col("ts") if "ts" in rows.columns else pl.lit(None, pl.Int64).alias("ts"),
            pl.Series("user_idx", spec.users.encode(rows["user_id"])),
            pl.Series("item_idx", spec.items.encode(rows["item_id"])),
        )
        history = pad_histories([context.get(u, np.zeros(0, np.int64)) for u in rows["user_id"]],
                                spec.max_history)
    labels_df = rows.select("user_id", "item_id").join(pair_labels(label_events, tasks),
                                                      on=["user_id", "item_id"], how="left", maintain_order="left")
    pos_labels = labels_df.select([t.name for t in tasks]).to_numpy().astype(np.float32)
    user, item, time = rows["user_idx"].to_numpy(), rows["item_idx"].to_numpy(), event_times(rows)

    k = negatives_per_positive
    neg_item = rng.integers(1, len(spec.items), size=len(item) * k)
    if popular_share > 0 and popularity is not None and popularity.sum() > 0:
        popular = rng.random(len(neg_item)) < popular_share
        neg_item[popular] = rng.choice(len(popularity), int(popular.sum()), p=popularity / popularity.sum())
        neg_item[neg_item == 0] = 1
    collide = neg_item == np.repeat(item, k)
    neg_item[collide] = (neg_item[collide] % (len(spec.items) - 1)) + 1
    neg_labels = np.array([np.nan if t.kind == "regression" else 0.0 for t in tasks], np.float32)
    labels = np.concatenate([pos_labels, np.tile(neg_labels, (len(neg_item), 1))])
    labels[:, unrecorded_tasks(label_events, tasks)] = np.nan
    return RankerExamples(
        user=np.concatenate([user, np.repeat(user, k)]),
        item=np.concatenate([item, neg_item]),
        history=np.concatenate([history, np.repeat(history, k, axis=0)]),
        labels=labels,
        time=np.concatenate([time, np.repeat(time, k)]),
    )
