"""The gRPC feed service end to end: a real server on a free loopback port, real models and index."""

import dataclasses
import shutil

import grpc
import polars as pl
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from feedcore.errors import ArtifactError
from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from retrieval.candidates import EXPLANATIONS
from serving.pipeline import FeedPipeline
from serving.server import SERVICE_NAME, create_server


@pytest.fixture(scope="module")
def pipeline(trained_engine):
    return FeedPipeline.from_artifacts(trained_engine)


@pytest.fixture(scope="module")
def running(trained_engine, pipeline):
    running = create_server(dataclasses.replace(trained_engine.serving, metrics_port=0), pipeline)
    running.server.start()
    yield running
    running.server.stop(0).wait()
    running.metrics.stop_http()


@pytest.fixture(scope="module")
def channel(running):
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return feed_pb2_grpc.FeedServiceStub(channel)


def _get(stub, user_id="1", page_size=10, cursor=""):
    return stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user_id, page_size=page_size, cursor=cursor), timeout=30)


def test_feed_for_a_known_user(stub, pipeline):
    response = _get(stub, "1")
    assert len(response.items) == 10
    assert response.request_id and response.model_version == pipeline.model_version
    scores = [i.score for i in response.items]
    assert scores == sorted(scores, reverse=True)
    for item in response.items:
        assert item.content_type == "movie" and item.title
        assert set(item.task_scores) == {"engage", "like"}
        assert 0.0 < item.task_scores["engage"] < 1.0
        # score is the value model: 1.0 * engage + 0.5 * like
        assert item.score == pytest.approx(item.task_scores["engage"] + 0.5 * item.task_scores["like"], rel=1e-5)
        assert item.source in {"ann", "popular"} and item.explanation in {EXPLANATIONS["ann"], EXPLANATIONS["popular"]}
        assert item.item_id not in pipeline.seen["1"]  # nothing the user already rated
    assert [i.position for i in response.items] == list(range(10))


def test_pages_never_repeat_an_item(stub):
    seen, cursor = [], ""
    for _ in range(4):
        response = _get(stub, "1", page_size=25, cursor=cursor)
        seen += [i.item_id for i in response.items]
        cursor = response.next_cursor
    assert len(seen) == len(set(seen)) == 100


def test_unknown_user_gets_a_cold_start_feed(stub):
    response = _get(stub, "never-seen-user-42", page_size=5)
    assert len(response.items) == 5
    assert {i.source for i in response.items} == {"popular"}


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"user_id": "1", "page_size": 0}, "page_size must be 1..100, got 0"),
        ({"user_id": "1", "page_size": 101}, "page_size must be 1..100, got 101"),
        ({"user_id": "", "page_size": 5}, "user_id is required"),
        ({"user_id": "1", "page_size": 5, "cursor": "%%%not-a-cursor"}, "cursor is malformed"),
    ],
)
def test_bad_requests_get_invalid_argument(stub, kwargs, message):
    with pytest.raises(grpc.RpcError) as info:
        stub.GetFeed(feed_pb2.GetFeedRequest(**kwargs), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_a_cursor_cannot_be_replayed_for_another_user_or_model(stub, running):
    from serving.cursors import encode_cursor

    cursor = _get(stub, "1", page_size=5).next_cursor
    with pytest.raises(grpc.RpcError) as info:
        _get(stub, "2", page_size=5, cursor=cursor)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    older = running.servicer.cursors.sign(encode_cursor("1", 5, "an-older-model"))  # as the server signed it then
    with pytest.raises(grpc.RpcError) as info:
        _get(stub, "1", page_size=5, cursor=older)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "earlier model version" in info.value.details()


def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"feed.v1.FeedService", "grpc.health.v1.Health"} <= names


def test_startup_refuses_missing_or_mismatched_artifacts(trained_engine, tmp_path):
    copy = tmp_path / "artifacts"
    shutil.copytree(trained_engine.artifacts_dir, copy)
    config = dataclasses.replace(trained_engine, artifacts_dir=str(copy))
    shutil.rmtree(copy / "index")
    with pytest.raises(ArtifactError, match="no item index found; run `feed index build`"):
        FeedPipeline.from_artifacts(config)
    shutil.copytree(trained_engine.index_dir, copy / "index")
    (copy / "ranker" / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match="corrupt or unreadable ranker checkpoint"):
        FeedPipeline.from_artifacts(config)


def test_value_weights_must_name_ranker_tasks(trained_engine):
    config = dataclasses.replace(trained_engine, serving=dataclasses.replace(
        trained_engine.serving, value_weights={"engage": 1.0, "follow": 2.0}))
    with pytest.raises(ArtifactError, match=r"value_weights name task\(s\) \['follow'\]"):
        FeedPipeline.from_artifacts(config)


def test_models_trained_on_other_data_are_refused(trained_engine, tmp_path):
    from feedcore.schemas import CanonicalDataset

    copy = tmp_path / "artifacts"
    shutil.copytree(trained_engine.artifacts_dir, copy)
    data = CanonicalDataset.read(copy / "data")
    data.with_events(data.events.head(1000)).write(copy / "data")  # re-prepared: different data
    with pytest.raises(ArtifactError, match="trained on other data.*run `feed train retrieval`"):
        FeedPipeline.from_artifacts(dataclasses.replace(trained_engine, artifacts_dir=str(copy)))


def test_serving_histories_are_the_training_transform(pipeline, trained_engine):
    from feedcore.features import histories_before_each_event, history_events
    from feedcore.schemas import CanonicalDataset

    events = history_events(CanonicalDataset.read(trained_engine.prepared_dir).events,
                            trained_engine.data.history_events)
    # Training sees, before a user's k-th event, exactly what the server holds after k events.
    user = events.filter(pl.col("user_id") == "1").sort("seq")
    extended = pl.concat([user, user.tail(1).with_columns(pl.col("seq") + 1, pl.lit("x").alias("item_id"))])
    rows = histories_before_each_event(extended, pipeline.spec)
    assert rows["history"][-1].to_list() == pipeline.histories["1"].tolist()


def test_surface_weights_blend_and_int8_ranker_shape_the_served_feed(trained_engine, pipeline):
    """Per-surface value weights, MMR diversity and an int8 ranker, through the real artifacts."""
    from feedcore.config import BlendConfig
    from serving.pipeline import FeedRequest

    serving = dataclasses.replace(trained_engine.serving, int8_embeddings=True,
                                  surface_value_weights={"explore": {"engage": 1.0}},
                                  blend=BlendConfig(diversity=0.5))
    variant = FeedPipeline.from_artifacts(dataclasses.replace(trained_engine, serving=serving))
    explore = variant.get_feed(FeedRequest("1", 20, surface="explore"))
    for item in explore.items:  # the explore surface's value model: engage only
        assert item.score == pytest.approx(item.task_scores["engage"], rel=1e-5)
    home = variant.get_feed(FeedRequest("1", 20))
    for item in home.items:
        assert item.score == pytest.approx(item.task_scores["engage"] + 0.5 * item.task_scores["like"], rel=1e-5)
    # Diversity reorders the page (it is no longer sorted by score) but keeps the same candidates.
    plain = pipeline.get_feed(FeedRequest("1", 1000))
    diverse = variant.get_feed(FeedRequest("1", 1000))
    assert {i.item_id for i in diverse.items} == {i.item_id for i in plain.items}
    scores = [i.score for i in diverse.items[:20]]
    assert scores != sorted(scores, reverse=True)
    # int8 tables: predictions within quantization error of the fp32 ranker, item by item.
    fp32 = {i.item_id: i.task_scores["engage"] for i in plain.items}
    assert max(abs(fp32[i.item_id] - i.task_scores["engage"]) for i in diverse.items) < 0.02


def test_prometheus_metrics_count_requests_by_code_and_time_each_stage(stub, running):
    import urllib.request

    _get(stub, "1", page_size=5)
    with pytest.raises(grpc.RpcError):
        stub.GetFeed(feed_pb2.GetFeedRequest(user_id="", page_size=5), timeout=10)
    text = urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=10).read().decode()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    assert samples['feed_requests_total{code="OK",method="GetFeed"}'] >= 1
    assert samples['feed_requests_total{code="INVALID_ARGUMENT",method="GetFeed"}'] >= 1
    for stage in ("candidates", "hydration", "ranker", "blend", "total"):
        assert samples[f'feed_stage_seconds_count{{stage="{stage}"}}'] >= 1
    assert samples['feed_request_seconds_count{method="GetFeed"}'] >= 2


def test_oversized_requests_are_refused_with_resource_exhausted(stub, running):
    big = feed_pb2.GetFeedRequest(user_id="1", page_size=5, experiment_overrides={"blob": "x" * (5 << 20)})
    with pytest.raises(grpc.RpcError) as err:
        stub.GetFeed(big, timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
