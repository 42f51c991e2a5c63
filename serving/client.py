"""A small client for the feed service: readiness wait and a readable feed printout (used by the demo)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc


def wait_ready(channel: grpc.Channel, timeout: float = 30.0) -> None:
    """Block until the server's health service reports SERVING."""
    grpc.channel_ready_future(channel).result(timeout=timeout)
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    if status.status != health_pb2.HealthCheckResponse.SERVING:
        raise RuntimeError(f"feed server is not serving: {status}")


def print_feed(channel: grpc.Channel, user_id: str, page_size: int = 10, pages: int = 1) -> list[feed_pb2.FeedItem]:
    """Request `pages` pages of `user_id`'s feed and print them as a table; return the items."""
    stub = feed_pb2_grpc.FeedServiceStub(channel)
    cursor, items = "", []
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
                  f"{item.title[:60]}")
        items.extend(response.items)
        cursor = response.next_cursor
        if not cursor:
            break
    return items
