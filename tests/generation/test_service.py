"""The generation service (generation.service) and its client (generation.remote) on a real gRPC
server with the real model, against the writer called in-process: the same posts, the same
stream, field for field; bad requests named; a client that outlives a restart of the service."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feedcore.config import GuardrailConfig
from feedcore.proto.generation.v1 import generation_pb2 as pb
from feedcore.proto.generation.v1 import generation_pb2_grpc
from generation.guardrails import Guardrails
from generation.interface import PostRequest
from generation.remote import ModelUnavailable, RemotePostWriter, request_to_proto
from generation.service import SERVICE_NAME, create_generation_server
from generation.writer import PostWriter
from tests.generation.conftest import config

SERVICE_CONFIG = config(max_new_tokens=12, num_candidates=2, max_tries=1, batch_size=4)


@pytest.fixture(scope="module")
def writer(lm, catalog):
    # A fixed clock: created_ms and the stream's seed are the same on both paths.
    return PostWriter(lm, catalog, Guardrails(GuardrailConfig()), SERVICE_CONFIG, clock=lambda: 1_700_000_000.0)


@pytest.fixture()
def service(writer, tmp_path):
    running = create_generation_server(writer, f"unix://{tmp_path / 'gen.sock'}")
    running.server.start()
    yield running
    running.server.stop(0).wait()


def _requests(user_sources) -> list[PostRequest]:
    return [PostRequest(user, tuple(user_sources(user)), interests=("Drama",)) for user in ("1", "4", "9")]


def test_write_posts_returns_what_the_writer_writes_in_process(service, writer, user_sources):
    client = RemotePostWriter(service.address)
    try:
        remote = client.write(_requests(user_sources))
    finally:
        client.close()
    local = writer.write(_requests(user_sources))
    assert remote == local and len(local) == 3  # every field of every post, in order
    assert client.model_version == writer.model_version


def test_stream_post_streams_the_writer_s_pieces_then_its_post(service, writer, user_sources):
    request = _requests(user_sources)[0]
    client = RemotePostWriter(service.address)
    try:
        remote = list(client.stream(request, max_new_tokens=8))
    finally:
        client.close()
    local = list(writer.stream(request, max_new_tokens=8))
    assert len(remote) >= 2 and all(isinstance(p, str) for p in remote[:-1])
    assert remote == local  # piece for piece, then the post field for field


def test_bad_requests_are_refused_naming_the_field(service, user_sources):
    with grpc.insecure_channel(service.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        one = request_to_proto(_requests(user_sources)[0])
        cases = [
            (pb.WritePostsRequest(requests=[pb.PostRequest(user_id="", sources=one.sources)]), "requests[0].user_id"),
            (pb.WritePostsRequest(requests=[pb.PostRequest(user_id="1", sources=one.sources[:1])]),
             "requests[0].a post is grounded in 2..4 source items, got 1"),
            (pb.WritePostsRequest(requests=[one] * 65), "requests: at most 64 per call, got 65"),
            (pb.WritePostsRequest(requests=[pb.PostRequest(user_id="1", sources=one.sources, kind="essay")]),
             "requests[0].kind must be one of"),
        ]
        for request, message in cases:
            with pytest.raises(grpc.RpcError) as e:
                stub.WritePosts(request, timeout=30)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            list(stub.StreamPost(pb.StreamPostRequest(request=one, max_new_tokens=-1), timeout=30))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_new_tokens: must be 0..12" in e.value.details()
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING


def _write_within(client: RemotePostWriter, requests, timeout_s: float = 30.0) -> list:
    """The client's posts once the service is back: gRPC reconnects by itself (backoff at most
    RECONNECT_MAX_MS); until then a call fails at once with ModelUnavailable."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.write(requests)
        except ModelUnavailable:
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_a_client_outlives_a_restart_of_the_service(writer, user_sources, tmp_path):
    address = f"unix://{tmp_path / 'gen.sock'}"
    client = RemotePostWriter(address)
    request = _requests(user_sources)[:1]
    try:
        start = time.monotonic()
        with pytest.raises(ModelUnavailable, match="unavailable"):  # not there yet: fails at once, no wait
            client.write(request)
        assert time.monotonic() - start < 5
        first = create_generation_server(writer, address)
        first.server.start()
        assert len(_write_within(client, request)) == 1
        first.server.stop(0).wait()
        with pytest.raises(ModelUnavailable):
            client.write(request)
        second = create_generation_server(writer, address)
        second.server.start()
        try:
            assert len(_write_within(client, request)) == 1
        finally:
            second.server.stop(0).wait()
    finally:
        client.close()
    with pytest.raises(ModelUnavailable, match="closed"):
        client.write(request)
