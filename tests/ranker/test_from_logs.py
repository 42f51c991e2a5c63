"""Closing the loop: served traffic in the event log trains the ranker (`feed train ranker --from-logs`)."""

import dataclasses
import shutil

import numpy as np
import polars as pl
import pytest

from feedcore.config import TaskConfig
from feedcore.features import build_feature_spec, item_features_from_dict
from feedcore.metrics import auc
from ranker.data import examples_from_log, make_examples
from serving.event_log import EventLog


def _log_rows(users, items, comedy, rng, request_prefix):
    """Impressions of random items; a planted behaviour: comedies get clicked (80%), others rarely (5%)."""
    rows = []
    for u in users:
        request = f"{request_prefix}-{u}"
        for position, item in enumerate(rng.choice(items, 15, replace=False)):
            base = {"user_id": u, "item_id": item, "content_type": "movie", "ts": 0, "value": None,
                    "request_id": request, "position": position, "surface": "home", "experiment_arm": "a",
                    "source": "ann" if position % 2 else "popular"}
            rows.append({**base, "event": "impression"})
            if rng.random() < (0.8 if item in comedy else 0.05):
                rows.append({**base, "event": "click"})
    return rows


def test_examples_from_log_label_impressions_by_their_engagements():
    items = pl.DataFrame({"item_id": ["a", "b", "c"], "content_type": ["movie"] * 3, "categories": [[]] * 3},
                         schema_overrides={"categories": pl.List(pl.String)})
    spec = build_feature_spec(items, pl.DataFrame({"user_id": ["u", "v"]}), max_history=3)
    log = pl.DataFrame({
        "user_id": ["u", "u", "u", "v", "v"], "item_id": ["a", "a", "b", "c", "c"],
        "event": ["impression", "click", "impression", "click", "rating"], "value": [None, None, None, None, 5.0],
        "request_id": ["r1", "r1", "r1", "r2", None], "source": ["ann", None, "popular", "social", None],
    })
    tasks = (TaskConfig("click", event="click"), TaskConfig("follow", event="follow"))
    ex = examples_from_log(log, spec, tasks, {"u": np.array([3])})
    assert ex.item.tolist() == spec.items.encode(pl.Series(["a", "b", "c"])).tolist()  # the un-served rating is out
    assert ex.labels[:, 0].tolist() == [1.0, 0.0, 1.0]  # v's click implies an impression
    assert np.isnan(ex.labels[:, 1]).all()  # the log never records follows: unknown, not "no"
    assert ex.source.tolist() == [1, 4, 2]  # ann, popular, social
    assert ex.history[0, -1] == 3 and (ex.history[2] == 0).all()
    # The same rule for datasets: a task whose event a dataset never records gets no 0 labels.
    events = pl.DataFrame({"user_id": ["u"] * 3, "item_id": ["a", "b", "c"], "seq": [0, 1, 2],
                           "event": ["rating"] * 3, "value": [4.0, 5.0, 3.0]})
    ds = make_examples(events, events, spec, tasks, 1, np.random.default_rng(0))
    assert np.isnan(ds.labels).all()


def test_train_ranker_from_logs_learns_the_logged_behaviour(trained_engine, tmp_path):
    from feedcore.artifacts import load_checkpoint
    from feedcore.schemas import CanonicalDataset
    from ranker.model import MultiTaskRanker
    from ranker.train import predict, train_ranker_job

    # The trained engine's prepared data and retrieval model (the ranker may read its scores); its ranker stays untouched.
    for part in ("data", "splits", "retrieval"):
        shutil.copytree(trained_engine.prepared_dir.parent / part, tmp_path / "a" / part)
    tasks = (TaskConfig("engage", event="rating"), TaskConfig("click", event="click"))
    config = dataclasses.replace(trained_engine, artifacts_dir=str(tmp_path / "a"),
                                 # the logged behaviour alone (scored below without a retrieval model)
                                 ranker=dataclasses.replace(trained_engine.ranker, tasks=tasks, epochs=3,
                                                            retrieval_score=False))
    data = CanonicalDataset.read(config.prepared_dir)
    comedy = set(data.items.filter(pl.col("categories").list.contains("Comedy"))["item_id"].to_list())
    items = np.array(sorted(data.items["item_id"].to_list()))
    users = sorted(data.users["user_id"].to_list())
    rng = np.random.default_rng(0)
    rows = _log_rows(users[:400], items, comedy, rng, "train")
    logs = [tmp_path / "log-0", tmp_path / "log-1"]  # two server processes, each with its own log
    for n, directory in enumerate(logs):
        log = EventLog(directory, segment_bytes=50_000)
        for i in range(n * 500, len(rows), 1000):
            log.append(rows[i : i + 500])
        log.close()

    ckpt, metrics = train_ranker_job(config, progress=False, from_logs=logs)
    assert metrics["log_events"] == len(rows)  # both logs read
    model = MultiTaskRanker.from_checkpoint(load_checkpoint(config.ranker_path, "ranker"))
    # Held out: other users' impressions, scored by the click head.
    held = pl.DataFrame(_log_rows(users[400:], items, comedy, rng, "test"))
    examples = examples_from_log(held, ckpt.feature_spec, tasks, {})
    item_feats = item_features_from_dict(ckpt.extras["item_features"])
    clicks = predict(model, examples, item_feats)[:, 1]
    assert auc(examples.labels[:, 1], clicks) > 0.8


def test_from_logs_names_a_missing_directory(trained_engine, tmp_path):
    from feedcore.errors import DataError
    from ranker.train import train_ranker_job

    with pytest.raises(DataError, match="no event log here"):
        train_ranker_job(trained_engine, progress=False, from_logs=tmp_path / "nowhere")
