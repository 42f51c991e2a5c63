"""A/B arms: deterministic salted assignment, live reload, overrides, and arms that change the feed."""

import dataclasses
import os
from collections import Counter

import grpc
import pytest

from feedcore.errors import DataError
from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.experiments import Arm, Experiment, ExperimentStore, load_experiment

TWO_ARMS = """
name = "exp"
salt = "s1"
[[arms]]
name = "control"
share = 0.5
[[arms]]
name = "engage-only"
share = 0.5
value_weights = { engage = 1.0 }
blend = { diversity = 0.3 }
"""


def _write(path, text, mtime):
    path.write_text(text)
    os.utime(path, (mtime, mtime))  # distinct mtimes, however fast the test writes


def test_assignment_is_deterministic_balanced_and_reshuffled_by_the_salt():
    exp = Experiment("e", "salt-a", (Arm("a", 0.2), Arm("b", 0.8)))
    users = [f"user{i}" for i in range(20_000)]
    arms = [exp.assign(u).name for u in users]
    assert arms == [exp.assign(u).name for u in users]
    share_a = Counter(arms)["a"] / len(users)
    assert abs(share_a - 0.2) < 0.015  # 5 standard errors
    other = Experiment("e", "salt-b", exp.arms)
    moved = sum(a != other.assign(u).name for a, u in zip(arms, users, strict=True)) / len(users)
    assert 0.25 < moved < 0.4  # a new salt re-draws independently: 2 * 0.2 * 0.8 = 0.32 expected


@pytest.mark.parametrize("text, message", [
    ('name = "e"\nsalt = "s"\n[[arms]]\nname = "a"\nshare = 0.7\n', "sum to 1"),
    ('name = "e"\nsalt = "s"\n[[arms]]\nname = "a"\nshare = 1.0\ncolour = "red"\n', "unknown key"),
    ('name = "e"\nsalt = "s"\n[[arms]]\nname = "a"\nshare = 1.0\nblend = { diversity = 2.0 }\n', "diversity"),
    ('name = "e"\nsalt = ', "cannot read experiment file"),
])
def test_bad_experiment_files_are_named(tmp_path, text, message):
    path = tmp_path / "exp.toml"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        load_experiment(path)
    assert str(path) in str(err.value)


def test_store_reloads_a_changed_file_and_keeps_the_last_good_one(tmp_path):
    path = tmp_path / "exp.toml"
    _write(path, TWO_ARMS, 1_000)
    store = ExperimentStore(path, check_every_s=0)
    assert [a.name for a in store.current().arms] == ["control", "engage-only"]
    _write(path, TWO_ARMS.replace("share = 0.5", "share = 0.25", 1).replace("share = 0.5", "share = 0.75"), 2_000)
    assert [a.share for a in store.current().arms] == [0.25, 0.75]
    _write(path, "name = broken", 3_000)
    assert [a.share for a in store.current().arms] == [0.25, 0.75]  # a typo never takes the service down
    assert "rejected" in store.last_error


@pytest.fixture(scope="module")
def experiment_server(trained_engine, tmp_path_factory):
    from serving.pipeline import FeedPipeline
    from serving.server import create_server

    path = tmp_path_factory.mktemp("exp") / "exp.toml"
    _write(path, TWO_ARMS, 1_000)
    serving = dataclasses.replace(trained_engine.serving, experiments_file=str(path))
    running = create_server(serving, FeedPipeline.from_artifacts(trained_engine))
    server, port = running.server, running.port
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield feed_pb2_grpc.FeedServiceStub(channel), path
    server.stop(0).wait()


def test_arms_are_served_overridden_and_reloaded_live(experiment_server):
    stub, path = experiment_server
    exp = load_experiment(path)
    user = next(f"{i}" for i in range(1, 500) if exp.assign(f"{i}").name == "engage-only")

    def get(**kwargs):
        return stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, page_size=10, **kwargs), timeout=30)

    response = get()
    assert response.experiment_arm == "exp/engage-only"
    for item in response.items:  # the arm's value model: engage only
        assert item.score == pytest.approx(item.task_scores["engage"], rel=1e-5)
    forced = get(experiment_overrides={"exp": "control"})
    assert forced.experiment_arm == "exp/control"
    assert any(i.score != pytest.approx(i.task_scores["engage"], rel=1e-5) for i in forced.items)
    with pytest.raises(grpc.RpcError) as err:
        get(experiment_overrides={"exp": "nope"})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no arm of the experiment: 'nope'" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # a cursor from another arm's feed
        get(cursor=response.next_cursor, experiment_overrides={"exp": "control"})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Everyone to control, without a restart.
    _write(path, TWO_ARMS.replace("share = 0.5", "share = 1.0", 1).replace("share = 0.5", "share = 0.0"), 2_000)
    import time

    deadline = time.time() + 10
    while get().experiment_arm != "exp/control":
        assert time.time() < deadline, "the experiment file was not reloaded"
        time.sleep(0.2)


def test_an_arm_weighting_an_unknown_task_is_refused_and_the_last_good_experiment_stays(tmp_path):
    def validate(experiment):
        for arm in experiment.arms:
            if set(arm.value_weights or {}) - {"engage", "like"}:
                raise ValueError(f"arm {arm.name!r} weights a task the ranker does not predict")

    path = tmp_path / "exp.toml"
    _write(path, TWO_ARMS.replace("{ engage = 1.0 }", "{ follow = 1.0 }"), 1_000)
    with pytest.raises(DataError, match="arm 'engage-only' weights a task"):
        ExperimentStore(path, validate=validate)
    _write(path, TWO_ARMS, 2_000)
    store = ExperimentStore(path, check_every_s=0, validate=validate)
    _write(path, TWO_ARMS.replace("{ engage = 1.0 }", "{ follow = 1.0 }"), 3_000)
    assert store.current().arm("engage-only").value_weights == {"engage": 1.0}
    assert "does not predict" in store.last_error
