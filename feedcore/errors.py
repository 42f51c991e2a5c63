"""Errors that name what was wrong, where, and what was expected."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data: a missing file, wrong columns, an unparsable value or a wrong encoding.

    The message always names the file and, where known, the line and column, the value found and
    what was expected, so a user can fix the input without reading the loader's code.
    """

    def __init__(
        self,
        path: str | Path,
        problem: str,
        *,
        line: int | None = None,
        column: str | None = None,
        value: object = None,
        expected: str | None = None,
    ) -> None:
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        message = f"{where}: {problem}"
        if value is not None:
            message += f" (got {value!r})"
        if expected is not None:
            message += f"; expected {expected}"
        super().__init__(message)
        self.path = str(path)
        self.line = line
        self.column = column


class ArtifactError(RuntimeError):
    """A model, index or table artifact that is missing, corrupt or from an incompatible version."""
