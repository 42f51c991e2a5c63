"""Every input the server feeds the ranker was trained, and the checkpoint serving loads predicts
what the training module predicted."""

import dataclasses

import numpy as np
import pytest
import torch

from feedcore.features import ItemFeatures, NewItems


def test_no_row_serving_feeds_for_sources_and_content_types_was_left_untrained(trained_engine):
    from feedcore.artifacts import load_checkpoint

    metrics = load_checkpoint(trained_engine.ranker_path, "ranker").extras["metrics"]
    # Dataset rows carry no source: served sources are all read as unknown, the row they trained.
    assert metrics["untrained_rows/source"] == 0.0
    assert metrics["untrained_rows/content_type"] == 0.0
    # Id dropout trains the unknown user and item rows (new users, new items, generated posts).
    assert metrics["untrained_rows/user_id"] == 0.0
    assert metrics["untrained_rows/item_id"] < 0.05


def test_untrained_sources_are_served_as_unknown():
    from feedcore.config import TaskConfig
    from ranker.model import CANDIDATE_SOURCES, SOURCE_IDS, RankerArgs

    args = RankerArgs(3, 3, 2, 2, 4, (4,), 1, (4,), (TaskConfig("click"),))
    assert args.source_ids(CANDIDATE_SOURCES).tolist() == [0] * len(CANDIDATE_SOURCES)
    logged = dataclasses.replace(args, sources=("unknown", "ann", "popular"))
    assert logged.source_ids(["ann", "popular", "generated", "social"]).tolist() == [
        SOURCE_IDS["ann"], SOURCE_IDS["popular"], 0, 0]


def test_a_post_is_read_as_its_sources_content_type():
    feats = ItemFeatures(content_type=np.array([0, 1, 2, 2]), category_offsets=np.array([0, 0, 1, 2, 3]),
                         category_values=np.array([1, 2, 3]), popularity=np.zeros(4, np.float32))
    new = NewItems.from_source_items(np.array([0, 1]), [np.array([1, 2, 3]), np.array([1, 0])], feats)
    assert new.content_type.tolist() == [2, 1]  # never 0, the unknown row no training example reaches


def test_the_served_checkpoint_predicts_what_the_training_module_predicted(trained_engine):
    """The job checks the gathered model against the DMP module on a probe batch, saves both, and
    the server's own loader and hydration reproduce the trained module's predictions."""
    from feedcore.artifacts import load_checkpoint
    from retrieval.candidates import UserState
    from serving.pipeline import FeedPipeline

    ckpt = load_checkpoint(trained_engine.ranker_path, "ranker")
    assert ckpt.extras["metrics"]["checkpoint_parity"] <= 1e-5
    probe = ckpt.extras["parity_probe"]
    pipeline = FeedPipeline.from_artifacts(trained_engine)
    spec = pipeline.spec
    for i, row in enumerate(probe["rows"]):
        history = spec.items.encode(row["history"])
        user = UserState(row["user_id"], history, frozenset(), pipeline.user_embedding(row["user_id"], history))
        batch = pipeline.hydrate(user, spec.items.encode(row["items"]), row["sources"], request_ms=probe["time_ms"])
        with torch.no_grad():
            served = pipeline.ranker(batch.dense, batch.sparse)
        start = i * len(row["items"])
        for task, expected in probe["predictions"].items():
            want = np.asarray(expected[start : start + len(row["items"])])
            assert served[task].numpy() == pytest.approx(want, abs=1e-5), task


def test_train_metrics_report_calibration_and_the_id_free_path(trained_engine):
    from feedcore.artifacts import load_checkpoint

    metrics = load_checkpoint(trained_engine.ranker_path, "ranker").extras["metrics"]
    for task in ("engage", "like"):
        assert 0 < metrics[f"{task}/log_loss"] < np.log(2) + 0.2
        assert 0 <= metrics[f"{task}/ece"] < 0.2
        # Scored with no item id, held-out items still rank above chance: the content path trained.
        assert metrics[f"{task}/auc_id_free"] > 0.6
