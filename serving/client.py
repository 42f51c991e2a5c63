"""A small client for the feed service: readiness wait and a readable feed printout (used by the demo)."""

from __future__ import annotations

import uuid

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc


def wait_ready(channel: grpc.Channel, timeout: float = 30.0) -> None:
    """Block until the server's health service reports SERVING."""
    grpc.channel_ready_future(channel).result(timeout=timeout)
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    if status.status != health_pb2.HealthCheckResponse.SERVING:
        raise RuntimeError(f"feed server is not serving: {status}")


def print_feed(channel: grpc.Channel, user_id: str, page_size: int = 10,
               pages: int = 1) -> list[feed_pb2.GetFeedResponse]:
    """Request `pages` pages of `user_id`'s feed and print them as a table; return the responses."""
    stub = feed_pb2_grpc.FeedServiceStub(channel)
    cursor, responses = "", []
    for page in range(pages):
        response = stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user_id, page_size=page_size, cursor=cursor),
                                timeout=10.0)
        print(f"\nfeed for user {user_id} - page {page + 1} (arm {response.experiment_arm}, "
              f"request {response.request_id[:8]})")
        tasks = sorted(response.items[0].task_scores) if response.items else []
        print(f"{'pos':>3}  {'type':<10} {'score':>6}  " + "  ".join(f"{t:>6}" for t in tasks)
              + f"  {'source':<9} title")
        for item in response.items:
            scores = "  ".join(f"{item.task_scores[t]:6.3f}" for t in tasks)
            print(f"{item.position:>3}  {item.content_type:<10} {item.score:6.3f}  {scores}  {item.source:<9} "
                  f"{(item.title or item.text)[:60]}")
        for item in response.items:
            if item.content_type == "generated":
                print_post(item.text, item.provenance)
        responses.append(response)
        cursor = response.next_cursor
        if not cursor:
            break
    return responses


def print_post(text: str, provenance: feed_pb2.Provenance) -> None:
    """A generated post in full, with what it was written from."""
    print(f"\n  generated post ({provenance.method}; {provenance.model_version}, prompt {provenance.prompt_version}):")
    for line in text.splitlines() or [""]:
        print(f"    {line}")
    print(f"    sources: {', '.join(provenance.source_item_ids)}")


def stream_post(channel: grpc.Channel, user_id: str, max_new_tokens: int = 0) -> feed_pb2.PostChunk:
    """Ask for a post written now and print its sentences as they pass the checks; return the final
    message (the served post, with its provenance)."""
    print(f"\nStreamPost for user {user_id} (checked sentence by sentence as it is decoded):\n  ", end="", flush=True)
    final = feed_pb2.PostChunk()
    request = feed_pb2.StreamPostRequest(user_id=user_id, max_new_tokens=max_new_tokens)
    for chunk in feed_pb2_grpc.FeedServiceStub(channel).StreamPost(request, timeout=120.0):
        if chunk.done:
            final = chunk
        else:
            print(chunk.text.replace("\n", "\n  "), end="", flush=True)
    print()
    print_post(final.post_text, final.provenance)
    return final


def log_interactions(channel: grpc.Channel, user_id: str, page: feed_pb2.GetFeedResponse,
                     api_key: str) -> feed_pb2.LogEventsResponse:
    """Report what the app showed of `page` (an impression per item) and a click on its first item,
    as an app would after rendering it; print the server's acknowledgement. Each event carries an
    event id, so sending the stream again (after a failure) logs nothing twice."""
    items, request_id = list(page.items), page.request_id
    events = [feed_pb2.Event(user_id=user_id, item_id=i.item_id, content_type=i.content_type, event="impression",
                             request_id=request_id, position=i.position, source=i.source,
                             event_id=uuid.uuid4().hex) for i in items]
    if items:
        first = items[0]
        events.append(feed_pb2.Event(user_id=user_id, item_id=first.item_id, content_type=first.content_type,
                                     event="click", request_id=request_id, position=first.position,
                                     source=first.source, event_id=uuid.uuid4().hex))
    ack = feed_pb2_grpc.FeedServiceStub(channel).LogEvents(iter(events), metadata=[("x-api-key", api_key)],
                                                           timeout=10.0)
    print(f"logged for user {user_id}: {ack.accepted} events {dict(ack.by_event)} (durable, seq {ack.last_seq})")
    return ack
