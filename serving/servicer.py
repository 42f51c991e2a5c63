"""FeedService: translates between the wire (protos/feed/v1/feed.proto) and the pipeline.

Validation errors map to gRPC status codes with messages a client developer can act on.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
import uuid
from collections import Counter

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import HealthServicer

from feedcore.config import ServingConfig
from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from generation.interface import GeneratedPost
from generation.remote import ModelUnavailable
from retrieval.candidates import EXPLANATIONS
from serving.event_log import EventLog, now_ms
from serving.experiments import Experiment, ExperimentStore
from serving.generated_posts import GeneratedPosts
from serving.metrics import ServiceMetrics
from serving.pipeline import POST_CONTENT_TYPE, CursorError, FeedPipeline, FeedRequest, RecentlySeen

logger = logging.getLogger(__name__)
EVENT_TYPES = ("impression", "click", "like", "follow", "share", "dwell", "watch", "hide", "report")
TIMED_EVENTS = ("dwell", "watch")  # carry seconds in `value`
API_KEY_HEADER = "x-api-key"


class FeedServicer(feed_pb2_grpc.FeedServiceServicer):
    def __init__(self, pipeline: FeedPipeline, config: ServingConfig, event_log: EventLog | None = None,
                 experiments: ExperimentStore | None = None, metrics: ServiceMetrics | None = None,
                 health: HealthServicer | None = None, posts: GeneratedPosts | None = None) -> None:
        self.pipeline = pipeline
        self.config = config
        self.event_log = event_log
        self.experiments = experiments or ExperimentStore(None)
        self.metrics = metrics or ServiceMetrics()
        self.health = health
        self._component_ok: dict[str, bool] = {}
        self.recently_seen = RecentlySeen()  # outlives model reloads
        self.posts = posts  # the generative module; None: generation is off
        # At most `feed_concurrency` pipelines at once; the others wait (CPython wakes them in order).
        self._feed_slots = threading.Semaphore(config.feed_concurrency) if config.feed_concurrency > 0 else None

    def GetFeed(self, request: feed_pb2.GetFeedRequest, context: grpc.ServicerContext) -> feed_pb2.GetFeedResponse:
        with self.metrics.observe("GetFeed", context):
            return self._get_feed(request, context)

    def LogEvents(self, request_iterator, context: grpc.ServicerContext) -> feed_pb2.LogEventsResponse:
        with self.metrics.observe("LogEvents", context):
            return self._log_events(request_iterator, context)

    def StreamPost(self, request: feed_pb2.StreamPostRequest, context: grpc.ServicerContext):
        with self.metrics.observe("StreamPost", context):
            yield from self._stream_post(request, context)

    def _get_feed(self, request: feed_pb2.GetFeedRequest, context: grpc.ServicerContext) -> feed_pb2.GetFeedResponse:
        request_id = uuid.uuid4().hex
        if not request.user_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id is required")
        if not 1 <= request.page_size <= self.config.max_page_size:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"page_size must be 1..{self.config.max_page_size}, got {request.page_size}")
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:  # queued past its deadline: the client has given up
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the request's deadline passed before it was served")
        experiment = self.experiments.current()
        forced = request.experiment_overrides.get(experiment.name)
        try:
            arm = experiment.arm(forced) if forced else experiment.assign(request.user_id)
        except KeyError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"experiment_overrides: {e.args[0]}")
        arm_label = f"{experiment.name}/{arm.name}"
        try:
            page = self._run_pipeline(context, FeedRequest(
                user_id=request.user_id, page_size=request.page_size, cursor=request.cursor,
                surface=request.surface or "home", arm=arm_label, value_weights=arm.value_weights, blend=arm.blend,
                recently_seen=self.recently_seen, exploration=arm.exploration,
                posts=self.posts.ready(request.user_id) if self.posts is not None else (),
            ))
        except CursorError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        self.metrics.stage_timings(page.timings_ms)
        if served_posts := sum(i.post is not None for i in page.items):
            self.metrics.posts_served.inc(served_posts)
        self.report_component("ranker", "ranker" not in page.degraded)
        logger.info("request_id=%s user_id=%s arm=%s items=%d timings_ms=%s", request_id, request.user_id, arm_label,
                    len(page.items), {k: round(v, 2) for k, v in page.timings_ms.items()})
        return feed_pb2.GetFeedResponse(
            items=[
                feed_pb2.FeedItem(
                    item_id=i.item_id, content_type=i.content_type, score=i.score, task_scores=i.task_scores,
                    source=i.source, position=i.position, title=i.title,
                    explanation=EXPLANATIONS.get(i.source, i.source), propensity=i.propensity,
                    text=i.post.text if i.post else "", provenance=_provenance(i.post),
                )
                for i in page.items
            ],
            next_cursor=page.next_cursor,
            request_id=request_id,
            experiment_arm=arm_label,
            model_version=page.model_version,
        )

    def _run_pipeline(self, context: grpc.ServicerContext, request: FeedRequest):
        """The pipeline's page, once a slot is free; a request whose deadline passes while it waits
        gets DEADLINE_EXCEEDED (its client has given up) and costs nothing more."""
        if self._feed_slots is None:
            return self.pipeline.get_feed(request)
        acquired = self._feed_slots.acquire(timeout=context.time_remaining())
        try:
            remaining = context.time_remaining()
            # Not served: no slot in time, or one that came just after the deadline (or the client left).
            if not acquired or not context.is_active() or (remaining is not None and remaining <= 0):
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                              "the request's deadline passed while it waited to be served")
            return self.pipeline.get_feed(request)
        finally:
            if acquired:
                self._feed_slots.release()

    def _log_events(self, request_iterator, context: grpc.ServicerContext) -> feed_pb2.LogEventsResponse:
        self._authenticate(context)
        if self.event_log is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server runs without an event log")
        records = []
        for index, event in enumerate(request_iterator):
            if index >= self.config.max_events_per_stream:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"more than {self.config.max_events_per_stream} events in one stream: nothing was "
                              "logged; send them in smaller streams")
            records.append(self._record(index, event, context))
        last_seq = self.event_log.append(records)
        received = now_ms()  # the server's clock, which sessions are timed by (not the client's)
        for r in records:  # only after the append: what is filtered is what is logged
            if r["event"] == "impression":
                self.recently_seen.add(r["user_id"], r["item_id"], received)
            elif self.posts is not None:  # engagement: the user's generated post may be due a rewrite
                self.posts.note_engagement(r["user_id"])
        counts = Counter(r["event"] for r in records)
        for event, n in counts.items():
            self.metrics.events.labels(event).inc(n)
        return feed_pb2.LogEventsResponse(accepted=len(records), by_event=dict(counts), last_seq=last_seq)

    def _stream_post(self, request: feed_pb2.StreamPostRequest, context: grpc.ServicerContext):
        if self.posts is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "generation is off on this server ([generation] enabled)")
        if not request.user_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id is required")
        limit = self.posts.config.max_new_tokens
        if not 0 <= request.max_new_tokens <= limit:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"max_new_tokens must be 0..{limit} (0 = {limit}), got {request.max_new_tokens}")
        try:
            pieces = self.posts.stream(request.user_id, request.surface or "home", request.max_new_tokens or limit)
            for piece in pieces:
                if not context.is_active():  # the client went away: stop decoding for it
                    return
                if isinstance(piece, str):
                    yield feed_pb2.PostChunk(text=piece)
                else:
                    yield feed_pb2.PostChunk(done=True, post_id=piece.post_id, post_text=piece.text,
                                             provenance=_provenance(piece))
        except LookupError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except ModelUnavailable as e:  # the launcher's shared model is restarting
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{e}; retry in a few seconds")

    def check_experiment(self, experiment: Experiment) -> None:
        """ValueError if an arm weights a task the served ranker does not predict."""
        predicted = set(self.pipeline.ranker.task_names)
        for arm in experiment.arms:
            missing = sorted(set(arm.value_weights or {}) - predicted)
            if missing:
                raise ValueError(f"experiment {experiment.name!r} arm {arm.name!r}: value_weights name task(s) "
                                 f"{missing} that the ranker does not predict ({sorted(predicted)})")

    def report_component(self, component: str, ok: bool) -> None:
        """Health of one component, as the health service's `feed.v1.FeedService/<component>`:
        NOT_SERVING while it fails and the feed runs on its fallback."""
        if self.health is None or self._component_ok.get(component) == ok:
            return
        self._component_ok[component] = ok
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set(f"{feed_pb2.DESCRIPTOR.services_by_name['FeedService'].full_name}/{component}", status)
        (logger.info if ok else logger.error)("component %s: %s", component, "recovered" if ok else "failing")

    def _arm_of(self, user_id: str) -> str:
        experiment = self.experiments.current()
        return f"{experiment.name}/{experiment.assign(user_id).name}"

    def _authenticate(self, context: grpc.ServicerContext) -> None:
        if not self.config.api_keys:
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "writes are disabled: the server has no API keys configured (serving.api_keys)")
        key = dict(context.invocation_metadata()).get(API_KEY_HEADER, "")
        if not key:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"LogEvents needs an API key in the '{API_KEY_HEADER}' "
                          "call metadata")
        if not any(hmac.compare_digest(key, k) for k in self.config.api_keys):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"the API key in '{API_KEY_HEADER}' is not valid")

    def _record(self, index: int, event: feed_pb2.Event, context: grpc.ServicerContext) -> dict:
        """The log record of one event, or INVALID_ARGUMENT naming the event and field."""
        def bad(field: str, problem: str) -> None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"event {index}: {field} {problem}; nothing from this stream was logged")

        if not event.user_id:
            bad("user_id", "is required")
        if not event.item_id:
            bad("item_id", "is required")
        if event.event not in EVENT_TYPES:
            bad("event", f"is {event.event!r}, expected one of {list(EVENT_TYPES)}")
        if not math.isfinite(event.value) or event.value < 0:
            bad("value", f"is {event.value}, expected a finite number >= 0")
        if event.event in TIMED_EVENTS and event.value <= 0:
            bad("value", f"must be the {event.event} time in seconds (> 0)")
        if event.ts_ms < 0:
            bad("ts_ms", f"is {event.ts_ms}, expected milliseconds since the epoch (0 = now)")
        if not 0 <= event.propensity <= 1:  # NaN fails too
            bad("propensity", f"is {event.propensity}, expected the served item's propensity in [0, 1] (0 = unknown)")
        if event.position < 0:
            bad("position", f"is {event.position}, expected >= 0")
        content_type = event.content_type or self.pipeline.catalog.get(event.item_id, ("",))[0]
        if not content_type and self.posts is not None and self.posts.lookup(event.item_id) is not None:
            content_type = POST_CONTENT_TYPE
        if not content_type:
            bad("content_type", f"is needed: item {event.item_id!r} is not in the catalogue")
        return {
            "user_id": event.user_id, "item_id": event.item_id, "content_type": content_type,
            "ts": event.ts_ms or now_ms(), "event": event.event,
            "value": event.value if event.event in TIMED_EVENTS else None,
            "request_id": event.request_id or None, "position": event.position,
            "surface": event.surface or None,
            "experiment_arm": event.experiment_arm or self._arm_of(event.user_id),
            "source": event.source or None,
            "propensity": event.propensity or None,  # 0 on the wire: deterministic or unknown
        }


def _provenance(post: GeneratedPost | None) -> feed_pb2.Provenance | None:
    if post is None:
        return None
    return feed_pb2.Provenance(source_item_ids=list(post.source_item_ids), model_version=post.model_version,
                               prompt_version=post.prompt_version, method=post.method)
