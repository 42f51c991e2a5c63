"""Train / validation / test splits of an events table.

- ``leave_one_out``: per user, the last target event (by ``seq``) is test, the second-to-last
  validation, the events before that training. Users with fewer than 3 target events stay entirely
  in training. This is the protocol of SASRec / gSASRec / HSTU-style full-ranking benchmarks.
- ``temporal``: one global cut-off in time: the latest ``test_fraction`` of target events (by
  ``ts``) are test, the ``valid_fraction`` before them validation. Needs timestamps.
- ``target_line``: a release's own held-out targets and user split (C2DSR format, e.g.
  amazon-arts-office): per validation / test user, each target predicted from the shared history.

Both guarantee that no training event comes after a held-out event of the same user in the order
they are defined on, so nothing from the future leaks into training.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import polars as pl

from feedcore.errors import DataError
from feedcore.io import atomic_path, read_json


@dataclasses.dataclass(frozen=True)
class Split:
    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame

    def write(self, directory: str | Path, data_fingerprint: str) -> None:
        """Write the three parts and the fingerprint of the data they split, atomically."""
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            for part in ("train", "valid", "test"):
                getattr(self, part).write_parquet(tmp / f"{part}.parquet")
            (tmp / "meta.json").write_text(json.dumps({"data_fingerprint": data_fingerprint}))

    @classmethod
    def read(cls, directory: str | Path, data_fingerprint: str | None = None) -> Split:
        """Read a split; with `data_fingerprint`, refuse one made from other data."""
        directory = Path(directory)
        meta = read_json(directory / "meta.json", "a directory written by `feed data prepare`")
        if data_fingerprint is not None and meta.get("data_fingerprint") != data_fingerprint:
            raise DataError(directory, "split was made from other data than the prepared tables",
                            value=meta.get("data_fingerprint"), expected=f"{data_fingerprint}: rerun `feed data prepare`")
        parts = {}
        for part in ("train", "valid", "test"):
            path = directory / f"{part}.parquet"
            try:
                parts[part] = pl.read_parquet(path)
            except (OSError, pl.exceptions.PolarsError) as e:
                raise DataError(path, f"cannot read split: {e}", expected="a file written by `feed data prepare`") from e
        return cls(**parts)


def leave_one_out(events: pl.DataFrame, target_events: tuple[str, ...] = ()) -> Split:
    """Per user: the last target event → test, the second-to-last → valid, earlier events → train.

    Target events are those of `target_events` types (all when empty); training keeps every event
    (of any type) strictly before the validation event, so nothing after a held-out event leaks in.
    Users with fewer than 3 target events stay entirely in training.
    """
    is_target = pl.lit(True) if not target_events else pl.col("event").is_in(list(target_events))
    targets = events.filter(is_target).with_columns(
        pl.col("seq").rank("ordinal", descending=True).over("user_id").alias("_from_end"),
        pl.len().over("user_id").alias("_n"),
    )
    eligible = targets.filter(pl.col("_n") >= 3)
    test = eligible.filter(pl.col("_from_end") == 1).drop("_from_end", "_n")
    valid = eligible.filter(pl.col("_from_end") == 2).drop("_from_end", "_n")
    cut = valid.select("user_id", pl.col("seq").alias("_cut"))
    train = (
        events.join(cut, on="user_id", how="left", maintain_order="left")
        .filter(pl.col("_cut").is_null() | (pl.col("seq") < pl.col("_cut")))
        .drop("_cut")
    )
    return Split(train, valid, test)


def temporal(
    events: pl.DataFrame,
    target_events: tuple[str, ...] = (),
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> Split:
    """A global time cut: target events at or after the cut-offs are validation / test; training
    keeps every event before the first cut-off."""
    if events["ts"].null_count():
        raise DataError("<events>", "temporal split needs timestamps", column="ts",
                        value=f"{events['ts'].null_count()} nulls", expected="a ts on every event")
    is_target = pl.lit(True) if not target_events else pl.col("event").is_in(list(target_events))
    ts = events.filter(is_target)["ts"]  # the fractions are of target events
    t_test = ts.quantile(1.0 - test_fraction, "lower")
    t_valid = ts.quantile(1.0 - test_fraction - valid_fraction, "lower")
    return Split(
        train=events.filter(pl.col("ts") < t_valid),
        valid=events.filter(is_target & (pl.col("ts") >= t_valid) & (pl.col("ts") < t_test)),
        test=events.filter(is_target & (pl.col("ts") >= t_test)),
    )


def target_line(events: pl.DataFrame, users: pl.DataFrame) -> Split:
    """The split of releases in the C2DSR format (amazon-arts-office): users are split by the
    release (`users.split`); train users train on everything; validation and test users train on
    their shared history and are scored on each of their `target_line` targets, each predicted
    from the shared history alone (several held-out rows per user)."""
    for frame, column, name in ((events, "target_line", "events"), (users, "split", "users")):
        if column not in frame.columns:
            raise DataError(f"<{name}>", "target_line split needs the release's own targets and user split",
                            column=column, expected="a dataset that has it (amazon-arts-office)")
    events = events.join(users.select("user_id", pl.col("split").alias("_role")), on="user_id", how="left")
    heldout = pl.col("target_line").is_not_null() & pl.col("_role").is_in(["valid", "test"])
    return Split(
        train=events.filter(~heldout).drop("_role"),
        valid=events.filter(heldout & (pl.col("_role") == "valid")).drop("_role"),
        test=events.filter(heldout & (pl.col("_role") == "test")).drop("_role"),
    )


def make_split(events: pl.DataFrame, kind: str, target_events: tuple[str, ...] = (),
               users: pl.DataFrame | None = None) -> Split:
    if kind == "leave_one_out":
        return leave_one_out(events, target_events)
    if kind == "temporal":
        return temporal(events, target_events)
    if kind == "target_line":
        return target_line(events, users if users is not None else pl.DataFrame())
    raise DataError("<data config>", "unknown split", column="split", value=kind,
                    expected="leave_one_out, temporal or target_line")
