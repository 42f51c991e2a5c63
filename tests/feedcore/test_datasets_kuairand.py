"""KuaiRand-Pure loader: the real feature tables plus small logs written in the official layout."""

from pathlib import Path

import polars as pl
import pytest

from feedcore.datasets import load_dataset
from feedcore.datasets.kuairand import LOG_FILES, load_kuairand
from feedcore.errors import DataError
from feedcore.schemas import EVENTS_SCHEMA, ITEMS_SCHEMA

FEATURES = ("user_features_pure.csv", "video_features_basic_pure.csv")
# The official log header (KuaiRand README, "Description of the fields in log_xxx.csv").
HEADER = ("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,"
          "long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab")
STANDARD = [
    # Every signal positive: impression, play and the 8 signal events.
    "3,1071,20220408,1600,1649408076860,1,1,1,1,1,1,1,175045,87433,120,3000,1,0,1",
    # Earlier, nothing positive and no play: the impression only.
    "3,1072,20220408,1600,1649408070100,0,0,0,0,0,0,0,0,61000,0,0,0,0,1",
    # A click and a short play (the single-column UI's valid play); same second as the random row.
    "0,0,20220422,900,1650589200500,1,0,0,0,0,0,0,2500,87433,0,0,0,0,0",
]
RANDOM = [
    # Random exposure, same millisecond as the standard row of user 0: the standard log goes first.
    "0,1,20220422,900,1650589200500,0,0,0,0,0,0,1,19000,218066,0,0,0,1,4",
]


@pytest.fixture
def kuairand_root(shared_data: Path, tmp_path: Path) -> Path:
    """The two real feature tables (symlinked) and two small logs in the official column layout."""
    for name in FEATURES:
        (tmp_path / name).symlink_to(shared_data / "kuairand-pure-features" / name)
    (tmp_path / LOG_FILES[0]).write_text("\n".join([HEADER, *STANDARD]) + "\n")
    (tmp_path / LOG_FILES[2]).write_text("\n".join([HEADER, *RANDOM]) + "\n")
    return tmp_path


def test_feature_tables_match_published_counts(kuairand_root):
    ds = load_dataset("kuairand", kuairand_root)
    assert ds.counts() == {"users": 27_285, "items": 7_583, "events": 17, "edges": 0}
    # README: 30 user features (+ user_id), all kept.
    assert len(ds.users.columns) == 31 and ds.users.schema["onehot_feat17"] == pl.Int64
    assert dict(ds.items.select(list(ITEMS_SCHEMA)).schema) == ITEMS_SCHEMA
    assert ds.items["content_type"].unique().to_list() == ["video"]
    assert dict(ds.items.group_by("video_type").len().iter_rows()) == {"NORMAL": 7_506, "AD": 76, "UNKNOWN": 1}
    video0 = ds.items.filter(pl.col("item_id") == "0").row(0, named=True)
    # video 0: author 7349781, uploaded 2022-04-10 (midnight Beijing = 2022-04-09T16:00Z), tag 39.
    assert video0["creator_id"] == "7349781" and video0["categories"] == ["39"]
    assert video0["created_at"] == 1_649_520_000
    assert ds.items["created_at"].null_count() == 0
    assert ds.items.filter(pl.col("categories").list.len() == 0).height == 96  # videos without a tag


def test_log_rows_become_exactly_these_events(kuairand_root):
    ds = load_kuairand(kuairand_root)
    events = ds.events
    assert {k: events.schema[k] for k in EVENTS_SCHEMA} == EVENTS_SCHEMA
    assert dict(events.group_by("event").len().iter_rows()) == {
        "impression": 4, "play": 3, "click": 2, "long_view": 2, "like": 1, "comment": 1, "forward": 1,
        "follow": 1, "hate": 1, "profile_enter": 1,
    }
    plays = dict(events.filter(pl.col("event") == "play").select("item_id", "value").iter_rows())
    assert plays == pytest.approx({"1071": 175.045, "0": 2.5, "1": 19.0})
    assert events.filter(pl.col("event") != "play")["value"].null_count() == events.height - 3

    user3 = events.filter(pl.col("user_id") == "3").sort("seq")
    assert user3["seq"].to_list() == list(range(11))
    assert user3.select("item_id", "event").rows() == [
        ("1072", "impression"),
        ("1071", "impression"), ("1071", "play"), ("1071", "click"), ("1071", "long_view"), ("1071", "like"),
        ("1071", "comment"), ("1071", "forward"), ("1071", "follow"), ("1071", "hate"), ("1071", "profile_enter"),
    ]
    assert user3["ts"].to_list() == [1_649_408_070] + [1_649_408_076] * 10
    assert user3["log"].unique().to_list() == ["log_standard_4_08_to_4_21_pure"]

    user0 = events.filter(pl.col("user_id") == "0").sort("seq")
    assert user0.select("item_id", "event", "is_rand", "tab", "log").rows() == [
        ("0", "impression", False, 0, "log_standard_4_08_to_4_21_pure"),
        ("0", "play", False, 0, "log_standard_4_08_to_4_21_pure"),
        ("0", "click", False, 0, "log_standard_4_08_to_4_21_pure"),
        ("1", "impression", True, 4, "log_random_4_22_to_5_08_pure"),
        ("1", "play", True, 4, "log_random_4_22_to_5_08_pure"),
        ("1", "long_view", True, 4, "log_random_4_22_to_5_08_pure"),
    ]
    assert user0["ts"].unique().to_list() == [1_650_589_200]
    assert user0.filter(pl.col("item_id") == "1")["duration_s"].unique().to_list() == [218.066]


def test_explicit_log_files_load_only_those(kuairand_root):
    ds = load_kuairand(kuairand_root, log_files=[LOG_FILES[2]])
    assert ds.events.height == 3 and ds.events["is_rand"].all()


def test_missing_logs_raise_naming_the_official_files(shared_data):
    # The shared folder holds the feature tables only, as the release's logs are not redistributed.
    with pytest.raises(DataError, match="no KuaiRand-Pure interaction log found") as info:
        load_kuairand(shared_data / "kuairand-pure-features")
    message = str(info.value)
    assert all(name in message for name in LOG_FILES) and "zenodo.org/records/10439422" in message


def test_missing_explicit_log_file_is_named(kuairand_root):
    with pytest.raises(DataError, match=r"log_standard_4_22_to_5_08_pure\.csv: file not found"):
        load_kuairand(kuairand_root, log_files=[LOG_FILES[1]])


def test_unparsable_log_value_names_file_line_and_column(kuairand_root):
    bad = STANDARD[1].split(",")
    bad[6] = "yes"  # is_like
    (kuairand_root / LOG_FILES[0]).write_text("\n".join([HEADER, STANDARD[0], ",".join(bad)]) + "\n")
    with pytest.raises(DataError, match=r"log_standard_4_08_to_4_21_pure\.csv, line 3, column 'is_like': "
                                        r"unparsable value \(got 'yes'\)"):
        load_kuairand(kuairand_root)


def test_unknown_video_names_file_line_and_column(kuairand_root):
    (kuairand_root / LOG_FILES[2]).write_text(f"{HEADER}\n{RANDOM[0].replace('0,1,', '0,99999,', 1)}\n")
    with pytest.raises(DataError, match=r"log_random_4_22_to_5_08_pure\.csv, line 2, column 'video_id': "
                                        r"1 row\(s\) reference ids missing from video_features_basic_pure\.csv"):
        load_kuairand(kuairand_root)


def test_missing_time_names_file_line_and_column(kuairand_root):
    bad = STANDARD[2].split(",")
    bad[4] = ""  # time_ms
    (kuairand_root / LOG_FILES[0]).write_text("\n".join([HEADER, *STANDARD[:2], ",".join(bad)]) + "\n")
    with pytest.raises(DataError, match=r"log_standard_4_08_to_4_21_pure\.csv, line 4, column 'time_ms': missing value"):
        load_kuairand(kuairand_root)
