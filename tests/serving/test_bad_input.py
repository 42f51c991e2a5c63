"""What a client nobody here wrote may send (issue 18's findings), against a real server: crafted
cursors, unparsable bodies, unbounded ids, events that should not be logged, retried streams. Each
gets INVALID_ARGUMENT (never UNKNOWN or INTERNAL) with a google.rpc.BadRequest naming the field,
a message and a log line that stay short, and a retried stream is logged once, across a restart too."""

import base64
import dataclasses
import logging

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from feedcore.events import read_event_log
from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.cursors import encode_cursor
from serving.event_log import EventLog
from serving.pipeline import FeedPipeline
from serving.server import create_server

KEY = "k"
AUTH = [("x-api-key", KEY)]


@pytest.fixture(scope="module")
def pipeline(trained_engine):
    return FeedPipeline.from_artifacts(trained_engine)


def _start(trained_engine, pipeline, log_dir, **serving):
    config = dataclasses.replace(trained_engine.serving, api_keys=(KEY,), **serving)
    running = create_server(config, pipeline, EventLog(log_dir))
    running.server.start()
    return running


def _stop(running):
    assert running.server.stop(1).wait(30)
    running.servicer.event_log.close()


@pytest.fixture(scope="module")
def running(trained_engine, pipeline, tmp_path_factory):
    running = _start(trained_engine, pipeline, tmp_path_factory.mktemp("log"))
    yield running
    _stop(running)


@pytest.fixture(scope="module")
def channel(running):
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return feed_pb2_grpc.FeedServiceStub(channel)


def _refused(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=30, **kwargs)
    return info.value


def _violations(error: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    found = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.update({v.field: v.description for v in bad.field_violations})
    return found


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize("payload", ['{"u":"1","o":1e400,"v":"x","t":0}', '{"u":"1","o":Infinity,"v":"x"}',
                                     '{"u":"1","o":0,"v":"x","t":Infinity}', "[" * 983, '{"o":1e400}'])
def test_crafted_cursors_are_invalid_argument(stub, payload):
    error = _refused(stub.GetFeed, feed_pb2.GetFeedRequest(user_id="1", page_size=5, cursor=_b64(payload)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "cursor" in _violations(error)


def test_cursors_are_signed_a_forged_or_altered_one_is_refused(stub, running):
    first = stub.GetFeed(feed_pb2.GetFeedRequest(user_id="1", page_size=5), timeout=30)
    second = stub.GetFeed(feed_pb2.GetFeedRequest(user_id="1", page_size=5, cursor=first.next_cursor), timeout=30)
    assert [i.position for i in second.items] == list(range(5, 10))
    version = f"{running.servicer.pipeline.model_version}|{first.experiment_arm}"
    forged = encode_cursor("1", 50, version)  # what the unsigned cursors were: now refused
    altered = first.next_cursor[:-1] + ("A" if first.next_cursor[-1] != "A" else "B")
    for cursor in (forged, altered, forged + "." + first.next_cursor.rpartition(".")[2]):
        error = _refused(stub.GetFeed, feed_pb2.GetFeedRequest(user_id="1", page_size=5, cursor=cursor))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "altered" in error.details()


@pytest.mark.parametrize("method,streaming", [("GetFeed", False), ("LogEvents", True), ("StreamPost", False)])
def test_an_unparsable_body_is_invalid_argument_with_one_log_line(channel, caplog, method, streaming):
    path = f"/feed.v1.FeedService/{method}"
    raw = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with caplog.at_level(logging.INFO):
        if streaming:
            call = channel.stream_unary(path, **raw)
            error = _refused(call, iter([b"\xc50i"]), metadata=AUTH)
        elif method == "StreamPost":
            with pytest.raises(grpc.RpcError) as info:
                list(channel.unary_stream(path, **raw)(b"\xc50i", timeout=30))
            error = info.value
        else:
            error = _refused(channel.unary_unary(path, **raw), b"\xc50i")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "is not a valid feed.v1." in error.details()
    assert not [r for r in caplog.records if r.exc_info or "deserializing" in r.getMessage()]
    assert len([r for r in caplog.records if r.name == "serving.interceptors" and method in r.getMessage()]) == 1


@pytest.mark.parametrize("user_id,problem", [
    ("u" * 257, "at most 256"), ("é" * 129, "at most 256"), ("x" * (16 << 10), "at most 256"),
    ("a\x00b", "control character U+0000"), ("a\nb", "control character U+000A"), ("", "required")])
def test_ids_are_bounded_and_echoes_cut_short(stub, user_id, problem):
    for request in (feed_pb2.GetFeedRequest(user_id=user_id, page_size=5),):
        error = _refused(stub.GetFeed, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.code()
        assert problem in _violations(error)["user_id"]
        assert len(error.details()) < 300


def test_bad_fields_are_named_together(stub):
    error = _refused(stub.GetFeed, feed_pb2.GetFeedRequest(user_id="1" * 300, page_size=0, surface="s\x07",
                                                           experiment_overrides={"x" * 300: "y"}))
    assert set(_violations(error)) == {"user_id", "page_size", "surface", "experiment_overrides key"}


def test_log_lines_stay_short_whatever_the_input(stub, caplog):
    with caplog.at_level(logging.INFO):
        stub.GetFeed(feed_pb2.GetFeedRequest(user_id="😀" * 64, page_size=5), timeout=30)  # 256 bytes: allowed
        _refused(stub.GetFeed, feed_pb2.GetFeedRequest(user_id="😀" * 50_000, page_size=5))
    lines = [r.getMessage() for r in caplog.records]
    assert lines and max(map(len, lines)) < 600


def test_every_call_gets_a_request_id_in_its_metadata(stub):
    response, call = stub.GetFeed.with_call(feed_pb2.GetFeedRequest(user_id="1", page_size=3), timeout=30)
    assert dict(call.initial_metadata())["x-request-id"] == response.request_id != ""


def _event(**fields) -> feed_pb2.Event:
    return feed_pb2.Event(**{"user_id": "1", "item_id": "1", "event": "click", **fields})


@pytest.mark.parametrize("fields,field,problem", [
    ({"ts_ms": 2**63 - 1}, "ts_ms", "within 30 days"),
    ({"ts_ms": 1}, "ts_ms", "within 30 days"),
    ({"item_id": "1\x00"}, "item_id", "U+0000"),
    ({"user_id": "\x00"}, "user_id", "U+0000"),
    ({"content_type": "banana"}, "content_type", "expected one of ['account', 'generated', 'movie']"),
    ({"source": "retrieval"}, "source", "expected the served item's source"),
    ({"event_id": "e" * 300}, "event_id", "at most 256"),
    ({"event": "x" * 10_000}, "event", "expected one of"),
])
def test_events_that_should_not_be_logged_are_refused(stub, fields, field, problem):
    error = _refused(stub.LogEvents, iter([_event(), _event(**fields)]), metadata=AUTH)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in _violations(error)[f"events[1].{field}"]
    assert "nothing from this stream was logged" in error.details() and len(error.details()) < 400


def test_log_events_needs_a_valid_key(stub):
    assert _refused(stub.LogEvents, iter([_event()])).code() == grpc.StatusCode.UNAUTHENTICATED
    error = _refused(stub.LogEvents, iter([_event()]), metadata=[("x-api-key", "wrong")])
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "not valid" in error.details()


def test_a_retried_stream_is_logged_once_across_a_restart(trained_engine, pipeline, tmp_path):
    log_dir = tmp_path / "log"
    events = [_event(event_id=f"e{i}", item_id=str(i + 1)) for i in range(5)]
    events.append(_event(event_id="e0", item_id="1"))  # the same event twice in one stream
    events.append(_event(item_id="7"))  # no event id: logged each time it is sent
    for restart in range(2):
        running = _start(trained_engine, pipeline, log_dir)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = feed_pb2_grpc.FeedServiceStub(channel)
                ack = stub.LogEvents(iter(events), metadata=AUTH, timeout=30)
                assert ack.accepted == 7
                assert ack.duplicates == (1 if restart == 0 else 6)
                again = stub.LogEvents(iter(events[:5]), metadata=AUTH, timeout=30)
                assert (again.accepted, again.duplicates) == (5, 5)
        finally:
            _stop(running)
    logged = read_event_log(log_dir)
    assert sorted(logged["event_id"].drop_nulls().to_list()) == [f"e{i}" for i in range(5)]
    assert logged.filter(logged["event_id"].is_null()).height == 2


def test_reflection_v1_and_v1alpha(channel):
    from grpc_reflection.v1alpha import reflection_pb2 as alpha_pb2
    from grpc_reflection.v1alpha import reflection_pb2_grpc as alpha_grpc

    from feedcore.proto.grpc.reflection.v1 import reflection_pb2 as v1_pb2
    from feedcore.proto.grpc.reflection.v1 import reflection_pb2_grpc as v1_grpc

    for pb2, stub in ((v1_pb2, v1_grpc.ServerReflectionStub(channel)),
                      (alpha_pb2, alpha_grpc.ServerReflectionStub(channel))):
        requests = [pb2.ServerReflectionRequest(list_services=""),
                    pb2.ServerReflectionRequest(file_containing_symbol="feed.v1.FeedService")]
        listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=30))
        names = {s.name for s in listed.list_services_response.service}
        assert {"feed.v1.FeedService", "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection"} <= names
        assert described.file_descriptor_response.file_descriptor_proto
