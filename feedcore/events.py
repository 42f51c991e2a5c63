"""The event log's record format and its reader: what `serving.event_log` writes and training and
evaluation read back.

A log directory holds segments ``wal-<n>.jsonl``, one record per line (``<crc32 hex> <json>``), and
the Parquet files they convert to: ``events-<n>.parquet`` in `LOG_SCHEMA` (the canonical
`feedcore.schemas.EVENTS_SCHEMA` plus the serving columns request_id, position, surface,
experiment_arm, source, propensity and event_id) and ``rankings-<n>.parquet`` in `RANKING_SCHEMA`
(an exploring arm's sampled ranking of a session, a line with ``"kind": "ranking"`` in a segment).

`read_event_log(directory)` returns every event in the log (Parquet files and live segments) as
one canonical events frame, which `feed train ranker --from-logs` reads; over the logs of `feed
serve --processes N` it keeps the first of events that share a (user_id, event_id) (a retry that
reached another process). `read_rankings(directory)` reads the rankings (`evaluation.ope_log`);
`read_event_log` skips them, and a log written before rankings existed reads as before.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from pathlib import Path

import polars as pl

from feedcore.schemas import EVENTS_SCHEMA

SERVING_COLUMNS: dict[str, pl.DataType] = {
    "request_id": pl.String(),
    "position": pl.Int32(),
    "surface": pl.String(),
    "experiment_arm": pl.String(),
    "source": pl.String(),
    "propensity": pl.Float64(),  # the served item's propensity (exploring arms; null: deterministic)
    "event_id": pl.String(),  # the client's id of the event (null: none given); (user_id, event_id) is logged once
}
LOG_SCHEMA = {**EVENTS_SCHEMA, **SERVING_COLUMNS}
RANKING = "ranking"  # the "kind" of a ranking line in a segment (events have none)
RANKING_SCHEMA: dict[str, pl.DataType] = {
    "ts": pl.Int64(),  # when the session's first page was served (ms)
    "user_id": pl.String(),
    "request_id": pl.String(),  # the first page's: its events carry it
    "experiment_arm": pl.String(),
    "surface": pl.String(),
    "model_version": pl.String(),
    "exploration": pl.String(),  # the arm's ExplorationConfig.kind
    "temperature": pl.Float64(),
    "epsilon": pl.Float64(),
    "depth": pl.Int32(),
    "page_size": pl.Int32(),  # the first page's size: its items are the first page_size of item_ids
    "weight_tasks": pl.List(pl.String()),  # the arm's value model: score = Σ weights · task predictions
    "weights": pl.List(pl.Float64()),
    "item_ids": pl.List(pl.String()),  # (N,) every eligible candidate, in the served (sampled) order
    "values": pl.List(pl.Float64()),  # (N,) their value scores (what the exploring policy sampled on)
    "propensities": pl.List(pl.Float64()),  # (N,) p(item at its position | the items above)
    "tasks": pl.List(pl.String()),  # (T,)
    "task_scores": pl.List(pl.List(pl.Float64())),  # (T, N) each task's prediction of each candidate
}
SEGMENT_NAME = re.compile(r"^wal-(\d{8})\.jsonl$")
EVENTS_NAME = re.compile(r"^events-(\d{8})\.parquet$")
RANKINGS_NAME = re.compile(r"^rankings-(\d{8})\.parquet$")


def now_ms() -> int:
    """The wall clock in ms: the time every logged record and served session carries."""
    return int(time.time() * 1000)


def encode_record(record: dict) -> bytes:
    """One segment line: ``<crc32 hex> <json>\\n``."""
    body = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def read_segment(path: Path) -> tuple[list[dict], int]:
    """The intact records of a segment, and how many lines were dropped (bad checksum or torn)."""
    records, dropped = [], 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:  # the last line has no newline: torn by a crash mid-write
        lines.pop()
        dropped += 1
    for line in lines:
        crc, _, body = line.partition(b" ")
        try:
            if int(crc, 16) != zlib.crc32(body):
                raise ValueError("checksum")
            records.append(json.loads(body))
        except ValueError:
            dropped += 1
    return records, dropped


def events_frame(records: list[dict]) -> pl.DataFrame:
    """The events among a segment's records (rankings left out)."""
    records = [r for r in records if r.get("kind") != RANKING]
    return pl.DataFrame(records, schema=LOG_SCHEMA) if records else pl.DataFrame(schema=LOG_SCHEMA)


def rankings_frame(records: list[dict]) -> pl.DataFrame:
    """The rankings among a segment's records."""
    records = [r for r in records if r.get("kind") == RANKING]
    return pl.DataFrame(records, schema=RANKING_SCHEMA) if records else pl.DataFrame(schema=RANKING_SCHEMA)


def read_event_log(directory: str | Path) -> pl.DataFrame:
    """Every event of the log in `directory`, in seq order (Parquet files, then live segments).
    The directory of a `feed serve --processes N` holds one log per process (``process-<i>/``):
    then their events too, one log after the other, each in its own seq order (seq is unique
    within a log, not across them)."""
    directory = Path(directory)
    processes = sorted((p for p in directory.glob("process-*") if p.name[8:].isdigit()), key=lambda p: int(p.name[8:]))
    if processes:
        logs = pl.concat([_read_one_log(directory), *map(_read_one_log, processes)], how="vertical_relaxed")
        # A retried stream that reached another process is in two logs: keep its first copy.
        first = pl.col("_row").min().over("user_id", "event_id")
        return (logs.with_row_index("_row").filter(pl.col("event_id").is_null() | (pl.col("_row") == first))
                .drop("_row"))
    return _read_one_log(directory)


def read_rankings(directory: str | Path) -> pl.DataFrame:
    """Every session ranking logged in `directory` (`RANKING_SCHEMA`; none in a log written before
    rankings were logged), from its Parquet files and live segments, and from each process's log
    under a `feed serve --processes N` directory."""
    directory = Path(directory)
    processes = sorted((p for p in directory.glob("process-*") if p.name[8:].isdigit()), key=lambda p: int(p.name[8:]))
    parts = []
    for log in (directory, *processes):
        parts += [pl.read_parquet(p) for p in sorted(log.glob("rankings-*.parquet")) if RANKINGS_NAME.match(p.name)]
        parts += [rankings_frame(read_segment(p)[0]) for p in sorted(log.glob("wal-*.jsonl")) if SEGMENT_NAME.match(p.name)]
    frame = pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame(schema=RANKING_SCHEMA)
    return frame.select(list(RANKING_SCHEMA)).sort("ts", maintain_order=True)


def _read_one_log(directory: Path) -> pl.DataFrame:
    parts = [pl.read_parquet(p) for p in sorted(directory.glob("events-*.parquet")) if EVENTS_NAME.match(p.name)]
    for segment in sorted(p for p in directory.glob("wal-*.jsonl") if SEGMENT_NAME.match(p.name)):
        parts.append(events_frame(read_segment(segment)[0]))
    if not parts:
        return events_frame([])
    # diagonal: files written before a serving column existed (propensity, event_id) read it as null
    frame = pl.concat(parts, how="diagonal_relaxed")
    missing = [pl.lit(None, dtype).alias(name) for name, dtype in LOG_SCHEMA.items() if name not in frame.columns]
    return frame.with_columns(missing).select(list(LOG_SCHEMA)).sort("seq")
