"""The generation service's client: a `PostGenerator` whose posts are written by `feed
serve-generation` (`generation.service`) over gRPC, and the wire form of posts and requests.

The service is at ``unix:///path/to.sock`` on one machine or ``host:port`` across machines. gRPC
keeps the connection: it reconnects after the service restarts (within RECONNECT_MAX_MS), and a call
while the service is away fails at once (no wait for ready) with `ModelUnavailable`, which callers
treat as "no post now": the background writer drops the batch (its users are queued again by their
next GetFeed) and StreamPost answers UNAVAILABLE.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import grpc

from feedcore.proto.generation.v1 import generation_pb2 as pb
from feedcore.proto.generation.v1 import generation_pb2_grpc
from generation.interface import GeneratedPost, PostRequest, SourceItem

logger = logging.getLogger(__name__)
WRITE_TIMEOUT_S = 600.0  # a batch of 8 users, 3 candidates, 2 retries takes ~50 s on 2 CPU cores
RECONNECT_MAX_MS = 5000  # gRPC's default backoff grows to 120 s: a restarted service would wait that long
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 500), ("grpc.min_reconnect_backoff_ms", 500),
                   ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS), ("grpc.keepalive_time_ms", 30_000),
                   ("grpc.keepalive_timeout_ms", 10_000), ("grpc.max_receive_message_length", 16 << 20)]
UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


class ModelUnavailable(RuntimeError):
    """The generation service cannot be reached now (stopped, restarting, or this client closed):
    the call can be retried later."""


def request_to_proto(request: PostRequest) -> pb.PostRequest:
    return pb.PostRequest(user_id=request.user_id, surface=request.surface, interests=request.interests,
                          kind=request.kind or "", sources=[
                              pb.Source(item_id=s.item_id, title=s.title, content_type=s.content_type,
                                        categories=s.categories, creator_id=s.creator_id or "")
                              for s in request.sources])


def request_from_proto(message: pb.PostRequest) -> PostRequest:
    """ValueError (naming the field) for a request the writer cannot take."""
    return PostRequest(user_id=message.user_id, surface=message.surface or "home", interests=tuple(message.interests),
                       kind=message.kind or None, sources=tuple(
                           SourceItem(s.item_id, s.title, s.content_type, tuple(s.categories), s.creator_id or None)
                           for s in message.sources))


def post_to_proto(post: GeneratedPost) -> pb.Post:
    return pb.Post(post_id=post.post_id, user_id=post.user_id, text=post.text, source_item_ids=post.source_item_ids,
                   model_version=post.model_version, prompt_version=post.prompt_version, method=post.method,
                   created_ms=post.created_ms, kind=post.kind, score=post.score)


def post_from_proto(message: pb.Post) -> GeneratedPost:
    return GeneratedPost(post_id=message.post_id, user_id=message.user_id, text=message.text,
                         source_item_ids=tuple(message.source_item_ids), model_version=message.model_version,
                         prompt_version=message.prompt_version, method=message.method, created_ms=message.created_ms,
                         kind=message.kind, score=message.score)


class RemotePostWriter:
    """The posts of the generation service at `target` (a `PostGenerator`, plus `stream`).

    Args:
        target: ``unix:///path/to.sock`` or ``host:port``.

    `model_version` is the service's, as of its last answer ("" before the first).
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.stub = generation_pb2_grpc.GenerationServiceStub(self.channel)
        self.model_version = ""

    def write(self, requests: Sequence[PostRequest]) -> list[GeneratedPost]:
        try:
            response = self.stub.WritePosts(pb.WritePostsRequest(requests=[request_to_proto(r) for r in requests]),
                                            timeout=WRITE_TIMEOUT_S)
        except grpc.RpcError as e:
            raise _failure(e, self.target) from None
        except ValueError as e:  # "Cannot invoke RPC on closed channel!"
            raise ModelUnavailable(f"the generation service's client is closed: {e}") from None
        self.model_version = response.model_version
        return [post_from_proto(p) for p in response.posts]

    def stream(self, request: PostRequest, max_new_tokens: int = 0) -> Iterator[str | GeneratedPost]:
        """The post sentence by sentence as each passes the checks, then the post; LookupError when no post can
        be written from the sources. Closing the iterator cancels the call (decoding stops)."""
        try:
            call = self.stub.StreamPost(pb.StreamPostRequest(request=request_to_proto(request),
                                                             max_new_tokens=max_new_tokens), timeout=WRITE_TIMEOUT_S)
        except ValueError as e:  # "Cannot invoke RPC on closed channel!"
            raise ModelUnavailable(f"the generation service's client is closed: {e}") from None
        try:
            for chunk in call:
                if chunk.HasField("post"):
                    self.model_version = chunk.post.model_version
                    yield post_from_proto(chunk.post)
                else:
                    yield chunk.text
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise LookupError(e.details()) from None
            raise _failure(e, self.target) from None
        finally:
            call.cancel()  # a no-op once it ended

    def close(self) -> None:
        """Calls still running end with ModelUnavailable (CANCELLED)."""
        self.channel.close()


def _failure(error: grpc.RpcError, target: str) -> RuntimeError:
    if error.code() in UNAVAILABLE:
        return ModelUnavailable(f"the generation service at {target} is unavailable: {error.code().name}: "
                                f"{error.details()}")
    return RuntimeError(f"the generation service at {target}: {error.code().name}: {error.details()}")
