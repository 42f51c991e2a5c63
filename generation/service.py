"""`generation.v1.GenerationService`: the post writer behind gRPC, in a process of its own.

The servicer only translates: a `WritePostsRequest` becomes `PostWriter.write`'s requests, a
`StreamPostRequest` its `stream`; errors map to status codes (INVALID_ARGUMENT naming the field,
FAILED_PRECONDITION when no post can be written from the sources). The service keeps no state:
posts go back to the feed server that asked, which keeps them in the post store
(`generation.store`). `create_generation_server` binds ``unix:///path`` or ``host:port`` (port 0:
a free one) with the standard health service; `serving.generation_service` builds the writer and
runs it (`feed serve-generation`).
"""

from __future__ import annotations

from concurrent import futures
from typing import NamedTuple

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from feedcore.proto.generation.v1 import generation_pb2 as pb
from feedcore.proto.generation.v1 import generation_pb2_grpc
from generation.interface import GeneratedPost
from generation.remote import post_to_proto, request_from_proto
from generation.writer import PostWriter

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GenerationService"].full_name
MAX_REQUESTS = 64  # per WritePosts call
MAX_ID_BYTES = 256


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    """WritePosts and StreamPost over `writer` (a `PostWriter`)."""

    def __init__(self, writer: PostWriter) -> None:
        self.writer = writer

    def WritePosts(self, request: pb.WritePostsRequest, context: grpc.ServicerContext) -> pb.WritePostsResponse:
        if len(request.requests) > MAX_REQUESTS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"requests: at most {MAX_REQUESTS} per call, got {len(request.requests)}")
        requests = [_request(context, r, f"requests[{i}].") for i, r in enumerate(request.requests)]
        posts = self.writer.write(requests)
        return pb.WritePostsResponse(posts=[post_to_proto(p) for p in posts], model_version=self.writer.model_version)

    def StreamPost(self, request: pb.StreamPostRequest, context: grpc.ServicerContext):
        limit = self.writer.config.max_new_tokens
        if request.max_new_tokens < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"max_new_tokens: must be 0..{limit} (0 = {limit}), got {request.max_new_tokens}")
        pieces = self.writer.stream(_request(context, request.request, "request."),
                                    min(request.max_new_tokens or limit, limit))
        try:
            for piece in pieces:
                if not context.is_active():  # the client went away: stop decoding for it
                    return
                yield pb.PostChunk(post=post_to_proto(piece)) if isinstance(piece, GeneratedPost) \
                    else pb.PostChunk(text=piece)
        except LookupError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        finally:
            pieces.close()


def _request(context: grpc.ServicerContext, message: pb.PostRequest, prefix: str):
    """The writer's request, or INVALID_ARGUMENT naming the field."""
    ids = [("user_id", message.user_id)] + [(f"sources[{i}].item_id", s.item_id) for i, s in enumerate(message.sources)]
    for name, value in ids:
        if not value or len(value.encode()) > MAX_ID_BYTES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"{prefix}{name}: must be 1..{MAX_ID_BYTES} bytes, got {len(value.encode())}")
    try:
        return request_from_proto(message)
    except ValueError as e:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{prefix}{e}")


class GenerationServer(NamedTuple):
    server: grpc.Server
    address: str  # what clients dial: the unix:// target, or host:port with the bound port
    health: health.HealthServicer


def create_generation_server(writer: PostWriter, address: str, max_workers: int = 8) -> GenerationServer:
    """A bound, not yet started server for `writer` at `address` (``unix:///path`` or
    ``host:port``; port 0 picks a free one), SERVING on the health service."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         options=[("grpc.max_receive_message_length", 4 << 20)])
    generation_pb2_grpc.add_GenerationServiceServicer_to_server(GenerationServicer(writer), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the generation service to {address}")
    if not address.startswith("unix:"):
        address = f"{address.rsplit(':', 1)[0]}:{port}"
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return GenerationServer(server, address, health_servicer)
