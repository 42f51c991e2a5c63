"""The Amazon Arts × Office loader reproduces the published counts and rebuilds the full sequences."""

from pathlib import Path

import polars as pl
import pytest

from feedcore.datasets import load_dataset
from feedcore.datasets.amazon import ARTS, OFFICE, load_amazon_arts_office
from feedcore.errors import DataError
from feedcore.schemas import EVENTS_SCHEMA, ITEMS_SCHEMA


@pytest.fixture(scope="module")
def amazon(shared_data):
    return load_dataset("amazon-arts-office", shared_data / "amazon-arts-office")


def test_matches_published_counts(amazon):
    # SOURCES.md: 9,577 users, all active in both domains; 18,639 Art and 19,757 Office items.
    assert amazon.counts()["users"] == 9_577
    assert dict(amazon.items.group_by("content_type").len().iter_rows()) == {ARTS: 18_639, OFFICE: 19_757}
    assert amazon.events.group_by("user_id").agg(pl.col("content_type").n_unique())["content_type"].min() == 2
    # "Taking the longest line per user: about 198,964 interactions (Art 101,300, Office 97,664)":
    # that is the shared history plus the first line's target; the second line's target adds 9,577.
    one_line = amazon.events.filter(pl.col("target_line").is_null() | (pl.col("target_line") == 1))
    assert dict(one_line.group_by("content_type").len().iter_rows()) == {ARTS: 101_300, OFFICE: 97_664}
    assert dict(amazon.events.group_by("content_type").len().iter_rows()) == {ARTS: 110_877, OFFICE: 97_664}
    assert dict(amazon.events.group_by("target_line").len().iter_rows()) == {None: 189_387, 1: 9_577, 2: 9_577}
    # Kept whole, the sequences cover every Art item (375 of them only as a second-line target).
    assert amazon.events.filter(pl.col("content_type") == ARTS)["item_id"].n_unique() == 18_639


def test_schema_and_content(amazon):
    assert dict(amazon.items.schema) == ITEMS_SCHEMA
    assert {k: amazon.events.schema[k] for k in EVENTS_SCHEMA} == EVENTS_SCHEMA
    assert set(amazon.events["event"].unique()) == {"review"}
    assert amazon.items["title"].null_count() == 0
    first = amazon.items.filter(pl.col("item_id") == "0").row(0, named=True)
    assert first["title"] == "fletcher terry co framers stacked points 08 950 silver 5 8 in"
    assert first["categories"] == ["arts crafts sewing", "crafting",
                                   "arts crafts sewing crafting picture framing fletcher terry"]
    office = amazon.items.filter(pl.col("item_id") == "18639").row(0, named=True)
    assert office["content_type"] == OFFICE
    assert office["categories"][:2] == ["office products", "office school supplies"]
    user = amazon.users.filter(pl.col("user_id") == "0").row(0, named=True)
    assert (user["amazon_id"], user["split"]) == ("A7PVZNHRTX1J7", "train")
    # User 0: the history, then the first line's target (Office 22212), then the second's (Art 9).
    seq = amazon.events.filter(pl.col("user_id") == "0").sort("seq")
    assert seq["seq"].to_list() == list(range(16))
    assert seq["item_id"].to_list()[:3] == ["0", "28442", "1"]
    assert seq["item_id"].to_list()[-2:] == ["22212", "9"]


def _copy_with(tmp_path: Path, source: Path, replace: dict[str, str]) -> Path:
    """A dataset root in tmp_path linking to `source`'s files, with some files' text replaced."""
    for path in source.rglob("*"):
        if path.is_file():
            target = tmp_path / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            rel = str(path.relative_to(source))
            if rel in replace:
                target.write_text(replace[rel], encoding="utf-8")
            else:
                target.symlink_to(path)
    return tmp_path


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_bad_token_names_file_line_and_field(shared_data, tmp_path):
    source = shared_data / "amazon-arts-office"
    lines = _lines(source / "full_sequences" / "train_F2.txt")
    fields = lines[2].split("\t")
    fields[4] = "19187|3"  # a token cut short: `item|pos` instead of `item|pos|pos`
    lines[2] = "\t".join(fields)
    root = _copy_with(tmp_path, source, {"full_sequences/train_F2.txt": "".join(lines)})
    with pytest.raises(DataError, match=r"train_F2\.txt, line 3, column 'field 5': unparsable item token"):
        load_amazon_arts_office(root)


def test_missing_second_line_is_reported(shared_data, tmp_path):
    source = shared_data / "amazon-arts-office"
    lines = _lines(source / "full_sequences" / "test_F2.txt")
    root = _copy_with(tmp_path, source, {"full_sequences/test_F2.txt": "".join(lines[:-1])})
    with pytest.raises(DataError, match=r"test_F2\.txt, line 1999, column 'field 1'.*exactly two lines"):
        load_amazon_arts_office(root)
