"""Bad raw input gets an error naming the file, line, column and what was expected."""

import polars as pl
import pytest

from feedcore.datasets import load_dataset
from feedcore.datasets.reading import read_table
from feedcore.errors import DataError

COLUMNS = {"userId": pl.Int64, "movieId": pl.Int64, "rating": pl.Float64, "timestamp": pl.Int64}


def _write(tmp_path, text, name="ratings.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        read_table(tmp_path / "nope.csv", COLUMNS)


def test_missing_column_names_expected_columns(tmp_path):
    path = _write(tmp_path, "userId,movieId,score,timestamp\n1,2,3.0,4\n")
    with pytest.raises(DataError, match=r"ratings\.csv: missing column\(s\) \['rating'\]"):
        read_table(path, COLUMNS)


def test_unparsable_value_names_line_and_column(tmp_path):
    path = _write(tmp_path, "userId,movieId,rating,timestamp\n1,2,3.0,4\n1,3,great,5\n")
    with pytest.raises(DataError, match=r"ratings\.csv, line 3, column 'rating': unparsable value \(got 'great'\)"):
        read_table(path, COLUMNS)


def test_wrong_encoding_names_line(tmp_path):
    path = _write(tmp_path, b"userId,movieId,rating,timestamp\n1,2,3.0,4\n1,\xff\xfe,3.0,5\n")
    with pytest.raises(DataError, match=r"ratings\.csv, line 3: not valid utf-8"):
        read_table(path, COLUMNS)


@pytest.mark.parametrize("line", ["7\t8", "7\t8\t9\t10"])
def test_ragged_line_names_line(tmp_path, line):
    path = _write(tmp_path, f"a\tb\tc\n1\t2\t3\n{line}\n", name="x.tsv")
    with pytest.raises(DataError, match=r"x\.tsv, line 3: line has \d fields"):
        read_table(path, {"a": pl.Int64, "b": pl.Int64, "c": pl.Int64}, separator="\t", quoting=False)


def test_loader_reports_a_broken_bundled_file(tmp_path, bundled_data):
    for name in ("movies.csv", "tags.csv"):
        (tmp_path / name).write_bytes((bundled_data / name).read_bytes())
    lines = (bundled_data / "ratings.csv").read_text().splitlines()
    lines[42] = "1,50,five stars,964982931"
    (tmp_path / "ratings.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"ratings\.csv, line 43, column 'rating'"):
        load_dataset("ml-latest-small", tmp_path)


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(DataError, match="unknown dataset.*ml-latest-small"):
        load_dataset("ml-10t")
