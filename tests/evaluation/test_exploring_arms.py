"""Exploring arms served and logged by the real service: the propensities on the wire and in the log
are the arms' probabilities (the policies alone: tests/serving/mixing/test_exploration.py)."""

import dataclasses
import time

import grpc
import numpy as np
import pytest

from feedcore.errors import DataError
from feedcore.events import read_event_log
from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.event_log import EventLog
from serving.experiments import load_experiment
from serving.mixing.exploration import ExplorationConfig
from serving.server import create_server

ARMS = """
name = "ope"
salt = "o"
[[arms]]
name = "control"
share = 1.0
[[arms]]
name = "uniform"
share = 0.0
exploration = { kind = "epsilon_greedy", epsilon = 1.0, depth = 5 }
[[arms]]
name = "pl"
share = 0.0
exploration = { kind = "plackett_luce", temperature = 0.05, depth = 5 }
"""


def test_an_arm_explores_only_with_valid_settings(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(ARMS)
    arms = load_experiment(path).arms
    assert arms[1].exploration == ExplorationConfig("epsilon_greedy", epsilon=1.0, depth=5) and arms[0].exploration is None
    path.write_text(ARMS.replace('"epsilon_greedy"', '"softmax"'))
    with pytest.raises(DataError, match="exploration.kind"):
        load_experiment(path)


@pytest.fixture(scope="module")
def served(sim_engine, sim_pipeline, tmp_path_factory):
    config = sim_engine[0]
    directory = tmp_path_factory.mktemp("exploration")
    (directory / "exp.toml").write_text(ARMS)
    log = EventLog(directory / "log")
    running = create_server(dataclasses.replace(config.serving, experiments_file=str(directory / "exp.toml")),
                            sim_pipeline, log)
    running.server.start()
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield feed_pb2_grpc.FeedServiceStub(channel), log, directory / "log", config.serving.api_keys[0]
    running.server.stop(0).wait()
    log.close()


def _page(stub, arm, cursor="", size=4, user="1"):
    return stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, page_size=size, cursor=cursor,
                                                experiment_overrides={"ope": arm}), timeout=30)


def test_served_propensities_are_the_arms_probabilities(served):
    stub = served[0]
    first = _page(stub, "uniform")
    second = _page(stub, "uniform", first.next_cursor)
    items = list(first.items) + list(second.items)
    assert len({i.item_id for i in items}) == 8  # one draw per session: pages never repeat
    p = [i.propensity for i in items]
    n = round(1 / p[0])  # uniform over the n remaining candidates, position by position
    assert n > 20
    np.testing.assert_allclose(p[:5], [1 / (n - j) for j in range(5)])
    assert p[5:] == [1.0, 1.0, 1.0]  # after `depth`, the blended order
    time.sleep(0.01)
    assert [i.item_id for i in _page(stub, "uniform", size=8).items] != [i.item_id for i in items]  # new session
    assert {i.propensity for i in _page(stub, "control").items} == {0.0}
    pl_items = _page(stub, "pl", size=8).items
    assert all(0 < i.propensity <= 1 for i in pl_items) and [i.propensity for i in pl_items][5:] == [1.0] * 3


def test_logged_propensities_reach_the_event_log(served):
    stub, log, log_dir, key = served
    page = _page(stub, "uniform", user="2")
    events = [feed_pb2.Event(user_id="2", item_id=i.item_id, event="impression", request_id=page.request_id,
                             position=i.position, experiment_arm=page.experiment_arm, propensity=i.propensity)
              for i in page.items]
    stub.LogEvents(iter(events), metadata=[("x-api-key", key)], timeout=30)
    logged = read_event_log(log_dir).filter(read_event_log(log_dir)["request_id"] == page.request_id)
    assert logged["propensity"].to_list() == [i.propensity for i in page.items]
    bad = feed_pb2.Event(user_id="2", item_id=page.items[0].item_id, event="click", propensity=1.5)
    with pytest.raises(grpc.RpcError) as e:
        stub.LogEvents(iter([bad]), metadata=[("x-api-key", key)], timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "propensity" in e.value.details()


@pytest.mark.parametrize("exploration", [ExplorationConfig("plackett_luce", temperature=0.05, depth=5),
                                         ExplorationConfig("epsilon_greedy", epsilon=0.5, depth=5)])
def test_a_first_pages_session_is_the_order_its_pages_serve(sim_pipeline, exploration):
    """FeedPage.session (what the ranking log records) against the reference: every page of the
    session fetched through its cursors, as a client pages through it."""
    from serving.pipeline import FeedRequest

    request = FeedRequest(user_id="1", page_size=4, arm="ope/x", exploration=exploration)
    first = sim_pipeline.get_feed(request)
    served, cursor = list(first.items), first.next_cursor
    while cursor:
        page = sim_pipeline.get_feed(dataclasses.replace(request, cursor=cursor, page_size=7))
        assert page.session is None  # only a session's first page carries it
        served += page.items
        cursor = page.next_cursor
    assert len(first.session) == len(served) > 4
    assert [i.item_id for i in first.session] == [i.item_id for i in served]
    assert [i.propensity for i in first.session] == [i.propensity for i in served]
    assert [i.score for i in first.session] == [i.score for i in served]
    assert sim_pipeline.get_feed(dataclasses.replace(request, exploration=None)).session is None
    unlogged = sim_pipeline.get_feed(dataclasses.replace(request, log_session=False))  # no event log: not built
    assert unlogged.session is None and len(unlogged.items) == request.page_size  # (a new session: its own draw)
