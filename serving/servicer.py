"""FeedService: translates between the wire (protos/feed/v1/feed.proto) and the pipeline.

Validation errors map to gRPC status codes with messages a client developer can act on.
"""

from __future__ import annotations

import logging
import uuid

import grpc

from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from retrieval.candidates import EXPLANATIONS
from serving.pipeline import CursorError, FeedPipeline, FeedRequest

logger = logging.getLogger(__name__)
DEFAULT_ARM = "default"


class FeedServicer(feed_pb2_grpc.FeedServiceServicer):
    def __init__(self, pipeline: FeedPipeline, max_page_size: int) -> None:
        self.pipeline = pipeline
        self.max_page_size = max_page_size

    def GetFeed(self, request: feed_pb2.GetFeedRequest, context: grpc.ServicerContext) -> feed_pb2.GetFeedResponse:
        request_id = uuid.uuid4().hex
        if not request.user_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id is required")
        if not 1 <= request.page_size <= self.max_page_size:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"page_size must be 1..{self.max_page_size}, got {request.page_size}")
        try:
            page = self.pipeline.get_feed(FeedRequest(
                user_id=request.user_id, page_size=request.page_size, cursor=request.cursor,
                surface=request.surface or "home",
            ))
        except CursorError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        logger.info("request_id=%s user_id=%s items=%d timings_ms=%s", request_id, request.user_id,
                    len(page.items), {k: round(v, 2) for k, v in page.timings_ms.items()})
        return feed_pb2.GetFeedResponse(
            items=[
                feed_pb2.FeedItem(
                    item_id=i.item_id, content_type=i.content_type, score=i.score, task_scores=i.task_scores,
                    source=i.source, position=i.position, title=i.title,
                    explanation=EXPLANATIONS.get(i.source, i.source),
                )
                for i in page.items
            ],
            next_cursor=page.next_cursor,
            request_id=request_id,
            experiment_arm=DEFAULT_ARM,
            model_version=page.model_version,
        )
