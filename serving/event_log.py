"""The durable event log: what apps report (impressions, clicks, follows, ...) is never lost once acknowledged.

Write path: `EventLog.append` numbers a batch of events (`seq`, increasing within the log), writes them
to the open segment ``wal-<n>.jsonl`` as one line per event (``<crc32 hex> <json>``), and returns
only after an fsync that covers them, so an event acknowledged to a client survives ``kill -9``
and power loss. Concurrent appends share fsyncs (group commit): a thread whose events were
covered by another thread's fsync does not sync again.

Rotation: once a segment passes `segment_bytes` (and at open, for segments a previous process
left), it is closed and converted into ``events-<n>.parquet`` in the canonical `events` schema
(`feedcore.schemas.EVENTS_SCHEMA`, plus the serving columns request_id, position, surface,
experiment_arm and source), written atomically (temporary file, fsync, rename), and only then
deleted. A crash at any point leaves either the segment or the Parquet file (or both, and then the
segment is dropped on the next open), never a partial file. Lines that fail their checksum, or a
torn last line, were never acknowledged (the fsync comes after the write); they are dropped at
recovery and counted.

Idempotence: an event may carry a client's `event_id`. `EventLog.append_new` writes an event
whose (user_id, event_id) the log already holds not again (a retried stream), and says so; the
keys of the last `dedupe_ids` such events are remembered, and read back from the log at open, so a
retry after a restart is caught too.

Rankings: for off-policy evaluation a server also logs, per session of an exploring arm, the
ranking it sampled (`EventLog.append_ranking`, `feedcore.events.RANKING_SCHEMA`): every eligible candidate in the
served order with its value score, its task predictions and its propensity, and the arm's value
weights and exploration settings: what a target policy's propensities are recomputed from
(`evaluation.ope_log`). They share the segments (a line with ``"kind": "ranking"``), are written
without an fsync of their own (no client waits on them; the next event's fsync covers them), and
convert to ``rankings-<n>.parquet`` beside ``events-<n>.parquet``.

The record format and the reader (`read_event_log`, `read_rankings`) live in `feedcore.events`:
training and evaluation read the log without importing the serving side.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path

import polars as pl

from feedcore.errors import ArtifactError
from feedcore.events import (
    EVENTS_NAME,
    RANKING,
    RANKINGS_NAME,
    SEGMENT_NAME,
    encode_record,
    events_frame,
    rankings_frame,
    read_segment,
)
from feedcore.io import atomic_path

logger = logging.getLogger(__name__)

def _dedupe_key(record: dict) -> int | None:
    """64 bits of (user_id, event_id): a collision among the remembered ids is ~1e-9 likely."""
    event_id = record.get("event_id")
    if not event_id:
        return None
    digest = hashlib.blake2b(f"{record['user_id']}\0{event_id}".encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


@dataclasses.dataclass(frozen=True)
class Appended:
    """What `EventLog.append_new` did with a batch."""

    last_seq: int  # the seq of the last event written now (when none was: the log's last)
    logged: list[dict]  # the events written now, in order
    duplicates: int  # events whose (user_id, event_id) the log already held (or the batch, earlier)


def take_lock(directory: Path):
    """An exclusive `flock` on <directory>/LOCK, held while the log is open (the kernel drops it
    when the process dies, so `kill -9` leaves nothing to clean up). Two writers would number and
    convert each other's segments; the second one gets a clear error instead. `feed serve
    --processes` holds the lock of the directory above its processes' logs."""
    handle = open(directory / "LOCK", "a+")  # noqa: SIM115 (held open while the log is)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ArtifactError(f"{directory}: the event log is open in {holder}; give each server process its own "
                            "[serving] event_log_dir (`feed train ranker --from-logs` takes several)") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}\n")
    handle.flush()
    return handle


class EventLog:
    """An append-only, crash-safe event log in `directory` (created if missing).

    Args:
        directory: where segments and Parquet files live; one process writes it at a time (a
            second one is refused with ArtifactError: each server process needs its own).
        segment_bytes: rotate the open segment into Parquet once it is this large.
        dedupe_ids: how many of the latest events' (user_id, event_id) are remembered to refuse a
            second copy (about 100 bytes each).
    """

    def __init__(self, directory: str | Path, segment_bytes: int = 64 << 20, dedupe_ids: int = 250_000) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = take_lock(self.directory)  # one writer: a second server process on it is refused
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()  # the open file, sequence numbers
        self._sync_lock = threading.Lock()  # one fsync at a time
        self._convert_lock = threading.Lock()  # one conversion of closed segments at a time
        self.dropped_at_recovery = self._recover()
        self.dedupe_ids = dedupe_ids
        self._event_ids: dict[int, int] = self._logged_event_ids()  # dedupe key -> seq, oldest first
        self._next_seq = self._last_seq() + 1
        self._written = self._durable = self._next_seq - 1
        self._segment = self._next_segment_number()
        self._file = open(self._segment_path(self._segment), "ab")  # noqa: SIM115 (held open until close)
        self.closed = False

    # -- write path ---------------------------------------------------------------------------
    def append(self, events: list[dict]) -> int:
        """Write `events` (dicts with the LOG_SCHEMA columns except seq) durably; returns the
        seq of the last one. Returns only once they are on disk."""
        return self.append_new(events).last_seq

    def append_new(self, events: list[dict]) -> Appended:
        """`append`, skipping events whose (user_id, event_id) the log already holds; returns once
        what was written, and the earlier copies of what was skipped, are on disk."""
        if not events:
            return Appended(self._durable, [], 0)
        with self._lock:
            if self.closed:
                raise RuntimeError("the event log is closed")
            new, keys, wait_for = [], {}, 0
            for e in events:
                key = _dedupe_key(e)
                if key is not None:
                    if key in self._event_ids:  # logged before (maybe not yet synced: wait for it below)
                        wait_for = max(wait_for, self._event_ids[key])
                        continue
                    if key in keys:  # a second copy within the batch
                        continue
                    keys[key] = len(new)
                new.append(e)
            first = self._next_seq
            if new:
                self._next_seq += len(new)
                self._file.write(b"".join(encode_record({**e, "seq": first + i}) for i, e in enumerate(new)))
                self._file.flush()
                self._written = self._next_seq - 1
            for key, i in keys.items():
                self._event_ids[key] = first + i
            while len(self._event_ids) > self.dedupe_ids:
                del self._event_ids[next(iter(self._event_ids))]
            last = self._next_seq - 1 if new else max(wait_for, self._written)
            full = self._file.tell() >= self.segment_bytes
        self._sync(max(last, wait_for))
        if full:
            self.rotate()
        return Appended(last, new, len(events) - len(new))

    def append_ranking(self, record: dict) -> None:
        """Write one session's ranking (the `RANKING_SCHEMA` columns) to the open segment. Nothing
        waits on it, so there is no fsync of its own: the next fsync (an event's, a rotation's, the
        close's) covers it, and a crash before one can lose it, never an acknowledged event."""
        with self._lock:
            if self.closed:
                raise RuntimeError("the event log is closed")
            self._file.write(encode_record({**record, "kind": RANKING}))
            self._file.flush()
            full = self._file.tell() >= self.segment_bytes
        if full:
            self.rotate()

    def _sync(self, upto: int) -> None:
        with self._sync_lock:
            if self._durable >= upto:  # another thread's fsync already covered these events
                return
            with self._lock:
                file, written = self._file, self._written
            os.fsync(file.fileno())
            self._durable = written

    def rotate(self) -> None:
        """Close the open segment, start the next, and convert every closed segment to Parquet."""
        with self._sync_lock, self._lock:
            if self.closed:
                return
            if self._file.tell() > 0:
                os.fsync(self._file.fileno())
                self._durable = self._written
                self._file.close()
                self._segment += 1
                self._file = open(self._segment_path(self._segment), "ab")  # noqa: SIM115
            open_segment = self._segment
        with self._convert_lock:  # two threads rotating at once must not convert one segment twice
            for path in self._segments():
                if int(SEGMENT_NAME.match(path.name).group(1)) < open_segment:
                    self._convert(path)

    def close(self) -> None:
        """Flush, fsync and convert everything to Parquet (graceful shutdown)."""
        with self._sync_lock, self._lock:
            if self.closed:
                return
            os.fsync(self._file.fileno())
            self._durable = self._written
            self._file.close()
            self.closed = True
        with self._convert_lock:
            for path in self._segments():
                self._convert(path)
        self._lock_file.close()  # releases the directory for the next writer

    # -- recovery and conversion --------------------------------------------------------------
    def _recover(self) -> int:
        dropped = 0
        for path in self._segments():
            dropped += self._convert(path)
        for stale in self.directory.glob(".events-*.tmp"):  # an interrupted atomic write
            logger.warning("removing %s, left by an interrupted conversion", stale)
            shutil.rmtree(stale, ignore_errors=True)
        if dropped:
            logger.warning("event log %s: dropped %d torn or corrupt line(s) that were never acknowledged",
                           self.directory, dropped)
        return dropped

    def _convert(self, segment: Path) -> int:
        number = int(SEGMENT_NAME.match(segment.name).group(1))
        records, dropped = read_segment(segment)
        # Rankings first, events last: a crash between the two leaves the segment (converted again
        # at the next open, each file written only if missing), never a numbered file half-done.
        for name, frame in ((f"rankings-{number:08d}.parquet", rankings_frame(records)),
                            (f"events-{number:08d}.parquet", events_frame(records))):
            target = self.directory / name
            if not target.exists() and frame.height:
                with atomic_path(target) as tmp:
                    frame.write_parquet(tmp)
                    with open(tmp, "rb") as f:
                        os.fsync(f.fileno())
        segment.unlink()
        return dropped

    def _segments(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if SEGMENT_NAME.match(p.name))

    def _parquet_files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if EVENTS_NAME.match(p.name))

    def _segment_path(self, number: int) -> Path:
        return self.directory / f"wal-{number:08d}.jsonl"

    def _next_segment_number(self) -> int:
        numbers = [int(EVENTS_NAME.match(p.name).group(1)) for p in self._parquet_files()]
        numbers += [int(m.group(1)) for p in self.directory.iterdir() if (m := RANKINGS_NAME.match(p.name))]
        return max(numbers, default=0) + 1

    def _logged_event_ids(self) -> dict[int, int]:
        """The dedupe keys of the latest `dedupe_ids` events with an event_id, oldest first (all
        segments are Parquet files by now)."""
        frames, found = [], 0
        for path in reversed(self._parquet_files()):
            if found >= self.dedupe_ids:
                break
            if "event_id" not in pl.read_parquet_schema(path):  # written before events had ids
                continue
            frame = pl.read_parquet(path, columns=["user_id", "event_id", "seq"]).filter(pl.col("event_id").is_not_null())
            frames.append(frame)
            found += frame.height
        if not frames:
            return {}
        latest = pl.concat(frames).sort("seq").tail(self.dedupe_ids)
        return {_dedupe_key(r): r["seq"] for r in latest.iter_rows(named=True)}

    def _last_seq(self) -> int:
        files = self._parquet_files()
        if not files:
            return 0
        return int(pl.read_parquet(files[-1], columns=["seq"])["seq"].max() or 0)
