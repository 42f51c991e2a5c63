"""Admission control (`serving.interceptors.Admission`): past the configured bound a GetFeed gets
RESOURCE_EXHAUSTED with a google.rpc.RetryInfo while earlier ones are still being served, instead
of joining a queue; the admitted ones are all served, and the places they held are given back."""

import dataclasses
import threading

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.pipeline import FeedPipeline
from serving.server import create_server


@pytest.fixture
def held_server(trained_engine):
    """A server with feed_concurrency 1 and max_queued_feeds 2 whose pipeline holds every request
    until released; yields (stub, release, running)."""
    config = dataclasses.replace(trained_engine.serving, feed_concurrency=1, max_queued_feeds=2)
    pipeline = FeedPipeline.from_artifacts(trained_engine)
    release, real = threading.Event(), pipeline.get_feed

    def held(request):
        release.wait(60)
        return real(request)

    pipeline.get_feed = held
    running = create_server(config, pipeline)
    running.server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield feed_pb2_grpc.FeedServiceStub(channel), release, running
    finally:
        release.set()
        running.server.stop(0).wait(30)


def _retry_delay_s(error: grpc.RpcError) -> float:
    status = rpc_status.from_call(error)
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    raise AssertionError("no RetryInfo in the status details")


def _wait_for(predicate) -> None:
    done = threading.Event()
    for _ in range(600):
        if predicate():
            return
        done.wait(0.05)
    raise AssertionError("timed out")


def test_feeds_past_the_queue_bound_are_refused_at_once_with_a_retry_hint(held_server):
    stub, release, running = held_server
    admission = running.admission
    request = feed_pb2.GetFeedRequest(user_id="1", page_size=5)
    admitted = [stub.GetFeed.future(request, timeout=60) for _ in range(3)]  # one served, two waiting
    _wait_for(lambda: admission.feeds == 3)
    with pytest.raises(grpc.RpcError) as refused:
        stub.GetFeed(request, timeout=60)  # answered while the three are still held
    assert not any(f.done() for f in admitted)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry in" in refused.value.details() and 0 < _retry_delay_s(refused.value) <= 5
    release.set()
    assert all(len(f.result().items) == 5 for f in admitted)
    _wait_for(lambda: admission.feeds == 0 and admission.in_flight == 0)  # every place given back
    assert len(stub.GetFeed(request, timeout=60).items) == 5
    refused_count = running.metrics.registry.get_sample_value(
        "feed_requests_total", {"method": "GetFeed", "code": "RESOURCE_EXHAUSTED"})
    assert refused_count == 1


def test_a_client_that_leaves_while_queued_gives_its_place_back(held_server):
    stub, release, running = held_server
    admission = running.admission
    request = feed_pb2.GetFeedRequest(user_id="1", page_size=5)
    first = stub.GetFeed.future(request, timeout=60)
    _wait_for(lambda: admission.feeds == 1)
    for _ in range(5):  # each waits, gives up at its deadline, and must not keep its place
        with pytest.raises(grpc.RpcError) as gave_up:
            stub.GetFeed(request, timeout=0.5)
        assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_for(lambda: admission.feeds == 1)
    release.set()
    assert len(first.result().items) == 5
    _wait_for(lambda: admission.feeds == 0 and admission.in_flight == 0)
