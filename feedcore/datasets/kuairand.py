"""KuaiRand-Pure loader: short-video feed logs with 12 feedback signals and random exposures.

Files (official release, https://zenodo.org/records/10439422, ``KuaiRand-Pure/data/``):

- ``user_features_pure.csv``: 27,285 users → the users table, every feature column kept
  (``-124`` is the release's own "unknown" code and is kept as is).
- ``video_features_basic_pure.csv``: 7,583 videos → items of content type ``video`` (the 76
  ``AD`` videos are videos too; ``video_type`` stays as an extra column), ``creator_id`` from
  ``author_id``, ``categories`` from the comma-separated ``tag`` ids (empty when missing),
  ``created_at`` from ``upload_dt`` as midnight Beijing time (UTC+8, Kuaishou's time zone) in
  unix seconds, null where unparsable. The other columns (but ``tag``) stay as extras.
- The interaction logs ``log_standard_4_08_to_4_21_pure.csv``, ``log_standard_4_22_to_5_08_pure.csv``
  and ``log_random_4_22_to_5_08_pure.csv`` (optionally ``.gz``) are **not** in ../shared/data:
  users download them. Any of them found is loaded; none found raises DataError.

Every log row (one exposure of a video to a user) becomes, at ``ts = time_ms // 1000``:

- ``impression`` (value null), always;
- ``play`` with value = ``play_time_ms / 1000`` seconds, when ``play_time_ms > 0``;
- one event per positive binary signal, value null: ``click`` (``is_click``; in the
  single-column UI the README defines it as a *valid play*), ``long_view``, ``like``,
  ``comment``, ``forward``, ``follow``, ``hate`` and ``profile_enter`` (``is_profile_enter``,
  one of the README's binary signals too). An empty signal field counts as 0.

``profile_stay_time`` and ``comment_stay_time`` are not mapped: the README gives no unit.
Each event also carries, from its row: ``is_rand`` (bool: a randomly exposed video, the
unbiased part of KuaiRand), ``tab`` (the app scenario, 0–14), ``duration_s`` (the video's
duration in the log, seconds; with ``play`` it gives the watch ratio) and ``log`` (the file
stem, e.g. ``log_random_4_22_to_5_08_pure``, so the standard-train / random-test protocol can
be rebuilt). ``seq`` follows ``time_ms`` (finer than ``ts``), then the log files in the order
above, then the file's row order, then the signal order listed here.

Follows are kept as ``follow`` events on the video, **not** as edges: ``is_follow`` means "follow
the author", but author ids live in another id space (``author_id`` ∈ [0, 8,839,734] while
``user_id`` is re-indexed to 0–27,284), so a user → author edge would silently point at an
unrelated user with the same number. The followed author of a follow event is the event's item's
``creator_id`` (a join, when a follow graph is needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from feedcore.datasets.reading import read_table, require_file
from feedcore.errors import DataError
from feedcore.schemas import CanonicalDataset

VIDEO = "video"
USER_FILE = "user_features_pure.csv"
VIDEO_FILE = "video_features_basic_pure.csv"
# The official log names, in the order their events are sequenced when times tie.
LOG_FILES = (
    "log_standard_4_08_to_4_21_pure.csv",
    "log_standard_4_22_to_5_08_pure.csv",
    "log_random_4_22_to_5_08_pure.csv",
)
DOWNLOAD = "https://zenodo.org/records/10439422 (KuaiRand-Pure.tar.gz, folder KuaiRand-Pure/data/)"
# Canonical event name → log column; the order is the within-row order of `seq`.
SIGNALS = {
    "click": "is_click",
    "long_view": "long_view",
    "like": "is_like",
    "comment": "is_comment",
    "forward": "is_forward",
    "follow": "is_follow",
    "hate": "is_hate",
    "profile_enter": "is_profile_enter",
}
# The README's log fields that the loader reads (the stay times are left out: no unit given).
LOG_COLUMNS: dict[str, pl.DataType] = {
    "user_id": pl.Int64(),
    "video_id": pl.Int64(),
    "time_ms": pl.Int64(),
    **{column: pl.Int64() for column in SIGNALS.values()},
    # Float: the feature tables write durations as "87433.0"; accept that form in logs too.
    "play_time_ms": pl.Float64(),
    "duration_ms": pl.Float64(),
    "is_rand": pl.Int64(),
    "tab": pl.Int64(),
}
# user_features_pure.csv in file order. The seven one-hot columns written as floats ("1.0",
# with gaps) are read as float and stored as int positions like the others.
_USER_COLUMNS: dict[str, pl.DataType] = {
    "user_id": pl.Int64(),
    "user_active_degree": pl.String(),
    "is_lowactive_period": pl.Int64(),
    "is_live_streamer": pl.Int64(),
    "is_video_author": pl.Int64(),
    "follow_user_num": pl.Int64(),
    "follow_user_num_range": pl.String(),
    "fans_user_num": pl.Int64(),
    "fans_user_num_range": pl.String(),
    "friend_user_num": pl.Int64(),
    "friend_user_num_range": pl.String(),
    "register_days": pl.Int64(),
    "register_days_range": pl.String(),
    **{f"onehot_feat{i}": pl.Float64() for i in range(18)},
}
# Kuaishou dates are Beijing dates (UTC+8).
_BEIJING_OFFSET_S = 8 * 3600


def _users(path: Path) -> pl.DataFrame:
    raw = read_table(path, _USER_COLUMNS, required=("user_id",))
    return raw.select(
        pl.col("user_id").cast(pl.String),
        *(pl.col(c).cast(pl.Int64) if t == pl.Float64() else pl.col(c)
          for c, t in _USER_COLUMNS.items() if c != "user_id"),
    )


def _items(path: Path) -> pl.DataFrame:
    raw = read_table(path, {
        "video_id": pl.Int64(), "author_id": pl.Int64(), "video_type": pl.String(), "upload_dt": pl.String(),
        "upload_type": pl.String(), "visible_status": pl.Float64(), "video_duration": pl.Float64(),
        "server_width": pl.Float64(), "server_height": pl.Float64(), "music_id": pl.Int64(),
        "music_type": pl.Float64(), "tag": pl.String(),
    }, required=("video_id", "author_id"))
    midnight = pl.col("upload_dt").str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("ms"))
    return raw.select(
        pl.col("video_id").cast(pl.String).alias("item_id"),
        pl.lit(VIDEO).alias("content_type"),
        pl.col("author_id").cast(pl.String).alias("creator_id"),
        pl.col("tag").str.split(",").list.eval(pl.element().str.strip_chars())
        .list.filter(pl.element() != "").fill_null([]).alias("categories"),
        # Midnight of the upload date in Beijing: its UTC epoch is 8 hours earlier.
        (midnight.dt.epoch("s") - _BEIJING_OFFSET_S).alias("created_at"),
        "video_type",
        "upload_dt",
        "upload_type",
        # Integral in the release; ints are the honest type (ms, pixels, codes).
        *(pl.col(c).cast(pl.Int64) for c in ("visible_status", "video_duration", "server_width",
                                              "server_height")),
        "music_id",
        pl.col("music_type").cast(pl.Int64),
    )


def _find_logs(root: Path, log_files: Sequence[str | Path] | None) -> list[Path]:
    if log_files is not None:
        # Explicit files must all exist: a typo should not silently drop a log.
        return [require_file(p if Path(p).is_absolute() else root / p) for p in log_files]
    found = []
    for name in LOG_FILES:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                found.append(candidate)
                break
    if not found:
        raise DataError(root, "no KuaiRand-Pure interaction log found",
                        expected=f"at least one of {list(LOG_FILES)} (or .csv.gz) in this folder; the logs "
                                 f"are not redistributed here: download them from the official release, "
                                 f"{DOWNLOAD}")
    return found


def _log_rows(path: Path, file_rank: int, items: pl.DataFrame, users: pl.DataFrame) -> pl.DataFrame:
    """One log file, checked, with the keys that order its rows (ids stay ints: cheaper to sort)."""
    raw = read_table(path, LOG_COLUMNS, required=("user_id", "video_id", "time_ms"))
    flags = list(SIGNALS.values())
    bad = raw.select(pl.any_horizontal(~pl.col(c).is_in([0, 1]) for c in flags)).to_series()
    if bad.any():
        row = int(bad.arg_max())
        column = next(c for c in flags if raw[c][row] not in (0, 1))
        # +2: one header line, and lines count from 1.
        raise DataError(path, "not a binary signal", line=row + 2, column=column, value=raw[column][row],
                        expected="0 or 1")
    # Checked here so the error names the log file and line; build() could only name the table.
    for column, known, file in (("video_id", items["item_id"], VIDEO_FILE), ("user_id", users["user_id"], USER_FILE)):
        unknown = ~raw[column].is_in(known.cast(pl.Int64))
        if unknown.any():
            row = int(unknown.arg_max())
            raise DataError(path, f"{int(unknown.sum())} row(s) reference ids missing from {file}", line=row + 2,
                            column=column, value=raw[column][row],
                            expected="KuaiRand-Pure logs (KuaiRand-1K / 27K use other ids)")
    return raw.with_columns(pl.lit(file_rank, pl.Int64).alias("_file"),
                            pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"))


def _events(rows: pl.DataFrame, log_names: list[str]) -> pl.DataFrame:
    """Log rows → long events (see the module docstring), `seq` set.

    The rows are put in order once (user, time_ms, file, row; `rows` must come in (file, row)
    order); each event's key is then its row's
    position times 16 plus its signal's rank, so one integer sort orders the ~2.7 events per row.
    """
    # One integer key (user rank, time rank) and a stable sort: a multi-column sort is several
    # times slower on millions of rows. Ties keep the concatenation order, i.e. (file, row).
    key = (pl.col("user_id").rank("dense").cast(pl.Int64) * (1 << 32)
           + pl.col("time_ms").rank("dense").cast(pl.Int64))
    rows = rows.sort(key, maintain_order=True).with_row_index("_pos")
    parts = [
        ("impression", pl.lit(True), pl.lit(None, pl.Float64)),
        ("play", pl.col("play_time_ms") > 0, pl.col("play_time_ms") / 1000.0),
        *((name, pl.col(column) == 1, pl.lit(None, pl.Float64)) for name, column in SIGNALS.items()),
    ]
    events = pl.concat([
        rows.filter(when).select(
            "user_id", "video_id", "time_ms", "is_rand", "tab", "duration_ms", "_file",
            (pl.col("_pos").cast(pl.Int64) * 16 + rank).alias("_key"),
            pl.lit(name).alias("event"),
            value.alias("value"),
        )
        for rank, (name, when, value) in enumerate(parts)
    ]).sort("_key")
    return events.select(
        pl.col("user_id").cast(pl.String),
        pl.col("video_id").cast(pl.String).alias("item_id"),
        pl.lit(VIDEO).alias("content_type"),
        (pl.col("time_ms") // 1000).alias("ts"),
        # Rows are grouped by user in `_key` order, so a running count within the user is `seq`.
        pl.int_range(pl.len(), dtype=pl.Int64).over("user_id").alias("seq"),
        "event",
        "value",
        (pl.col("is_rand") == 1).alias("is_rand"),
        "tab",
        (pl.col("duration_ms") / 1000.0).alias("duration_s"),
        pl.col("_file").replace_strict(dict(enumerate(log_names)), return_dtype=pl.String).alias("log"),
    )


def load_kuairand(root: str | Path, log_files: Sequence[str | Path] | None = None) -> CanonicalDataset:
    """KuaiRand-Pure from `root`: the two feature tables there plus the interaction logs.

    Args:
        root: the folder of ``user_features_pure.csv`` and ``video_features_basic_pure.csv``
            (and, unless `log_files` is given, of the official log files).
        log_files: the log files to load (relative to `root` or absolute); by default every
            official log name found in `root`.

    Raises:
        DataError: no log found (naming the expected files and where to download them), a
            missing or malformed file, or a log row whose video or user is not in the feature
            tables (e.g. KuaiRand-1K / 27K logs, whose ids differ).
    """
    root = Path(root)
    users = _users(root / USER_FILE)
    items = _items(root / VIDEO_FILE)
    paths = _find_logs(root, log_files)
    # Official logs tie-break in the release's order, other files after them in the order given.
    ranks = [LOG_FILES.index(n) if (n := p.name.removesuffix(".gz")) in LOG_FILES else len(LOG_FILES) + i
             for i, p in enumerate(paths)]
    log_names = {rank: p.name.removesuffix(".gz").removesuffix(".csv") for rank, p in zip(ranks, paths, strict=True)}
    rows = pl.concat([_log_rows(p, rank, items, users)
                      for rank, p in sorted(zip(ranks, paths, strict=True), key=lambda pair: pair[0])])
    events = _events(rows, [log_names.get(i, "") for i in range(max(ranks) + 1)])
    return CanonicalDataset.build("kuairand-pure", items=items, events=events, users=users)
