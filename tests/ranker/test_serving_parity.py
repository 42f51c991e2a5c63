"""Train/serve parity of the ranker's features: what the server hydrates for a recorded request
equals what the training transform builds from that request's logged impressions."""

import dataclasses
import datetime
import shutil

import numpy as np
import polars as pl
import pytest

from feedcore.errors import ArtifactError

FEATURES = {"recency": True, "retrieval_score": True, "text_features": True, "context": True,
            "history_pooling": "target_attention"}


def _copy_artifacts(trained_engine, root, parts=("data", "splits", "retrieval", "index", "text")):
    for part in parts:
        source = trained_engine.prepared_dir.parent / part
        if source.exists():
            shutil.copytree(source, root / part)
    return dataclasses.replace(trained_engine, artifacts_dir=str(root))


@pytest.fixture(scope="module")
def featured_engine(trained_engine, tmp_path_factory):
    """The trained engine's data, retrieval model and index, with a ranker reading every optional feature."""
    from ranker.train import train_ranker_job

    config = _copy_artifacts(trained_engine, tmp_path_factory.mktemp("featured"))
    config = dataclasses.replace(config, ranker=dataclasses.replace(config.ranker, **FEATURES))
    train_ranker_job(config, progress=False)
    return config


def test_served_features_equal_the_training_transform_of_the_logged_request(featured_engine):
    from feedcore.artifacts import load_checkpoint
    from feedcore.prepare import load_training_inputs
    from ranker.data import examples_from_log
    from ranker.train import example_inputs, load_retrieval_scorer, with_text
    from retrieval.candidates import UserState
    from serving.pipeline import FeedPipeline, FeedRequest

    config = featured_engine
    pipeline = FeedPipeline.from_artifacts(config)
    features = pipeline.ranker.args.features
    assert features.text_dim and features.recency and features.retrieval_score and features.context

    # A served request: the page a user got, and the time its features were read.
    user_id = sorted(pipeline.histories)[3]
    page = pipeline.get_feed(FeedRequest(user_id=user_id, page_size=30))
    item_ids = [i.item_id for i in page.items]
    sources = [i.source for i in page.items]
    request_ms = 1_700_000_000_000 + 14 * 3_600_000
    history = pipeline.histories[user_id]
    served = pipeline.hydrate(UserState(user_id, history, frozenset()), pipeline.spec.items.encode(pl.Series(item_ids)),
                              sources, request_ms=request_ms)

    # The same request as the event log records it, turned into ranker examples by training's transform.
    log = pl.DataFrame({"user_id": [user_id] * len(item_ids), "item_id": item_ids, "request_id": ["r1"] * len(item_ids),
                        "source": sources, "ts": [request_ms] * len(item_ids), "event": ["impression"] * len(item_ids),
                        "value": [None] * len(item_ids)}, schema_overrides={"value": pl.Float64})
    inputs = with_text(load_training_inputs(config), config)
    retrieval, version = load_retrieval_scorer(config, inputs)
    examples = examples_from_log(log, inputs.spec, config.ranker.tasks, {user_id: history})
    assert examples.item.tolist() == pipeline.spec.items.encode(pl.Series(item_ids)).tolist()  # in the page's order
    trained = example_inputs(examples, inputs.item_features, features, retrieval, labels=False,
                             reader=pipeline.ranker.args)  # the served model: sources it never trained on read as unknown

    assert load_checkpoint(config.ranker_path, "ranker").extras["metrics"]["retrieval_version"] == version
    assert served.dense.shape == trained.dense.shape == (len(item_ids), features.num_extra_dense + 2 + 384)
    np.testing.assert_array_equal(served.dense.numpy(), trained.dense.numpy())
    assert served.sparse.keys() == trained.sparse.keys()
    for key, jagged in served.sparse.to_dict().items():
        assert jagged.lengths().tolist() == trained.sparse[key].lengths().tolist(), key
        assert jagged.values().tolist() == trained.sparse[key].values().tolist(), key
    # Not vacuous: the request's time, the titles and the retrieval scores are really there.
    dense = served.dense.numpy()
    assert (dense[:, 2] > 0).any() and (dense[:, 4] != 0).all() and (np.abs(dense[:, 5:]).sum(1) > 0).mean() > 0.9
    when = datetime.datetime.fromtimestamp(request_ms / 1000, datetime.UTC)
    assert served.sparse["context"].values().tolist()[:2] == [1 + when.hour, 25 + when.weekday()]


def test_a_served_ranker_refuses_another_retrieval_models_scores(featured_engine, tmp_path):
    from feedcore.artifacts import load_checkpoint, save_checkpoint
    from serving.pipeline import FeedPipeline

    config = _copy_artifacts(featured_engine, tmp_path, ("data", "splits", "retrieval", "index", "text", "ranker"))
    ckpt = load_checkpoint(config.ranker_path, "ranker")
    extras = {**ckpt.extras, "metrics": {**ckpt.extras["metrics"], "retrieval_version": "retrieval-other"}}
    save_checkpoint(config.ranker_path, kind="ranker", config=ckpt.config, feature_spec=ckpt.feature_spec,
                    data_fingerprint=ckpt.data_fingerprint, state_dict=ckpt.state_dict, extras=extras)
    with pytest.raises(ArtifactError, match="retrieval-other.*feed train ranker"):
        FeedPipeline.from_artifacts(config)


def test_retrieval_score_without_a_retrieval_model_says_what_to_run(trained_engine, tmp_path):
    from ranker.train import train_ranker_job

    config = _copy_artifacts(trained_engine, tmp_path, ("data", "splits"))
    config = dataclasses.replace(config, ranker=dataclasses.replace(config.ranker, retrieval_score=True))
    with pytest.raises(ArtifactError, match="retrieval_score = true.*feed train retrieval"):
        train_ranker_job(config, progress=False)
