"""Reading raw delimited files with errors that name the file, line, column and expectation.

Every dataset loader reads its raw files through `read_table`, so a missing file, a missing
column, an unparsable value or a wrong encoding is reported the same way everywhere.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import polars as pl

from feedcore.errors import DataError

_UNIT_SEPARATOR = "\x1f"


def require_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found", expected="an existing file (check the dataset root)")
    return path


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """The file's text, gunzipped when it ends in .gz; bad bytes raise DataError with the line."""
    path = require_file(path)
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DataError(path, f"not a valid gzip file: {e}", expected="gzip-compressed text") from e
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(path, f"not valid {encoding} text", line=line, value=data[e.start : e.start + 8],
                        expected=f"{encoding}-encoded text") from e


def read_table(
    path: str | Path,
    columns: dict[str, pl.DataType],
    *,
    separator: str = ",",
    has_header: bool = True,
    names: list[str] | None = None,
    encoding: str = "utf-8",
    quoting: bool = True,
    required: tuple[str, ...] | bool = (),
) -> pl.DataFrame:
    """Read a delimited text file and return `columns` cast to their dtypes.

    Args:
        path: the file (.gz is decompressed).
        columns: the columns to return and their dtypes; others in the file are dropped.
        separator: the field separator; multi-character separators (MovieLens' ``::``) work.
        has_header: whether the first line names the columns.
        names: the column names when the file has no header (all of its fields, in order).
        encoding: the text encoding of the file.
        quoting: whether ``"`` quotes fields (CSV); off for TSV and ``.dat`` files.
        required: columns that must have a value on every line (True: all of `columns`).

    Raises:
        DataError: naming the file, and the line and column for an unparsable value.
    """
    text = read_text(path, encoding)
    if len(separator) > 1:
        text = text.replace(separator, _UNIT_SEPARATOR)
        separator = _UNIT_SEPARATOR
    if not quoting:
        _check_field_counts(path, text, separator, len(names) if names else None, has_header)
    try:
        raw = pl.read_csv(
            io.BytesIO(text.encode("utf-8")),
            separator=separator,
            has_header=has_header,
            new_columns=names,
            infer_schema=False,
            quote_char='"' if quoting else None,
            truncate_ragged_lines=False,
        )
    except pl.exceptions.PolarsError as e:
        raise DataError(path, f"cannot parse as {separator!r}-separated text: {e}",
                        expected=f"{len(names or columns)} fields per line") from e
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}", value=raw.columns,
                        expected=f"columns {list(columns)}")
    header_lines = 1 if has_header else 0
    for name in (tuple(columns) if required is True else required or ()):
        empty = raw[name].is_null() | (raw[name].str.strip_chars() == "")
        if empty.any():
            row = int(empty.arg_max())
            raise DataError(path, "missing value", line=row + 1 + header_lines, column=name,
                            expected="a value on every line")
    out = []
    for name, dtype in columns.items():
        col = raw[name]
        if dtype == pl.String():
            out.append(col)
            continue
        cast = col.str.strip_chars().cast(dtype, strict=False)
        bad = cast.is_null() & col.is_not_null() & (col.str.strip_chars() != "")
        if bad.any():
            row = int(bad.arg_max())
            raise DataError(path, "unparsable value", line=row + 1 + header_lines, column=name,
                            value=col[row], expected=f"a {dtype} value")
        out.append(cast)
    return pl.DataFrame(out)


def _check_field_counts(path: str | Path, text: str, separator: str, expected: int | None, has_header: bool) -> None:
    """Without quoting, every line must have the same number of fields: name the first that does not.

    (A parser would silently fill a short line with nulls, or stop with no line number.)
    """
    lines = pl.Series(text.split("\n"))
    if len(lines) and lines[-1] == "":
        lines = lines[:-1]
    lines = lines.str.strip_suffix("\r")
    counts = lines.str.count_matches(separator, literal=True) + 1
    if expected is None:
        expected = int(counts[0]) if len(counts) else 0
    bad = (counts != expected) & (lines != "")
    if bad.any():
        row = int(bad.arg_max())
        raise DataError(path, f"line has {counts[row]} fields", line=row + 1, value=lines[row][:80],
                        expected=f"{expected} {separator!r}-separated fields")
