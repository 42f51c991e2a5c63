"""FeedService: translates between the wire (protos/feed/v1/feed.proto) and the pipeline.

Validation errors map to gRPC status codes with messages a client developer can act on, and a
google.rpc.BadRequest naming each wrong field (`serving.validation`). Authentication, metrics,
request ids, overload and unparsable bodies are the interceptors' (`serving.interceptors`).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import Counter

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import HealthServicer

from feedcore.config import ServingConfig
from feedcore.events import now_ms
from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from feedcore.schemas import ACCOUNT
from generation.interface import GeneratedPost
from generation.remote import ModelUnavailable
from ranker.model import CANDIDATE_SOURCES
from retrieval.candidates import EXPLANATIONS
from serving.cursors import CursorError, CursorSigner
from serving.event_log import EventLog
from serving.experiments import Experiment, ExperimentStore
from serving.generated_posts import GeneratedPosts
from serving.interceptors import note, request_id
from serving.metrics import ServiceMetrics
from serving.pipeline import POST_CONTENT_TYPE, FeedPipeline, FeedRequest, RecentlySeen
from serving.session_rankings import log_session_ranking
from serving.validation import MAX_CURSOR_BYTES, MAX_OVERRIDES, Violations, abort_invalid, clip

logger = logging.getLogger(__name__)
EVENT_TYPES = ("impression", "click", "like", "follow", "share", "dwell", "watch", "hide", "report")
TIMED_EVENTS = ("dwell", "watch")  # carry seconds in `value`
SERVED_SOURCES = tuple(s for s in CANDIDATE_SOURCES if s != "unknown")  # FeedItem.source values


class FeedServicer(feed_pb2_grpc.FeedServiceServicer):
    def __init__(self, pipeline: FeedPipeline, config: ServingConfig, event_log: EventLog | None = None,
                 experiments: ExperimentStore | None = None, metrics: ServiceMetrics | None = None,
                 health: HealthServicer | None = None, posts: GeneratedPosts | None = None,
                 cursors: CursorSigner | None = None) -> None:
        self.pipeline = pipeline
        self.config = config
        self.event_log = event_log
        self.experiments = experiments or ExperimentStore(None)
        self.metrics = metrics or ServiceMetrics()
        self.health = health
        self._component_ok: dict[str, bool] = {}
        self.recently_seen = RecentlySeen()  # outlives model reloads
        self.posts = posts  # the generative module; None: generation is off
        self.cursors = cursors or CursorSigner(os.urandom(32))
        self._content_types: tuple[FeedPipeline | None, frozenset[str]] = (None, frozenset())
        # At most `feed_concurrency` pipelines at once; the others wait (CPython wakes them in order).
        self._feed_slots = threading.Semaphore(config.feed_concurrency) if config.feed_concurrency > 0 else None

    def GetFeed(self, request: feed_pb2.GetFeedRequest, context: grpc.ServicerContext) -> feed_pb2.GetFeedResponse:
        note(user_id=request.user_id)
        bad = Violations()
        bad.check_id("user_id", request.user_id, required=True)
        bad.check_id("surface", request.surface)
        if not 1 <= request.page_size <= self.config.max_page_size:
            bad.add("page_size", f"must be 1..{self.config.max_page_size}, got {request.page_size}")
        if len(request.cursor) > MAX_CURSOR_BYTES:
            bad.add("cursor", f"is {len(request.cursor)} characters long, at most {MAX_CURSOR_BYTES}: pass back the "
                              "next_cursor of the previous page unchanged")
        if len(request.experiment_overrides) > MAX_OVERRIDES:
            bad.add("experiment_overrides", f"has {len(request.experiment_overrides)} entries, at most {MAX_OVERRIDES}")
        else:
            for name, arm in request.experiment_overrides.items():
                bad.check_id("experiment_overrides key", name)
                bad.check_id(f"experiment_overrides[{clip(name)}]", arm)
        bad.abort(context)
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:  # queued past its deadline: the client has given up
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the request's deadline passed before it was served")
        experiment = self.experiments.current()
        forced = request.experiment_overrides.get(experiment.name)
        try:
            arm = experiment.arm(forced) if forced else experiment.assign(request.user_id)
        except KeyError:
            abort_invalid(context, [(f"experiment_overrides[{clip(experiment.name)}]",
                                     f"names no arm of the experiment: {clip(forced)} (arms: "
                                     f"{[a.name for a in experiment.arms][:20]})")])
        arm_label = f"{experiment.name}/{arm.name}"
        try:
            feed_request = FeedRequest(
                user_id=request.user_id, page_size=request.page_size, cursor=self.cursors.open(request.cursor),
                surface=request.surface or "home", arm=arm_label, value_weights=arm.value_weights, blend=arm.blend,
                recently_seen=self.recently_seen, exploration=arm.exploration,
                posts=self.posts.ready(request.user_id) if self.posts is not None else (),
                log_session=self.event_log is not None,
            )
            page = self._run_pipeline(context, feed_request)
        except CursorError as e:
            abort_invalid(context, [("cursor", str(e).removeprefix("cursor ")[:300])])
        if arm.exploration is not None and self.event_log is not None:  # off-policy evaluation's record
            log_session_ranking(self.event_log, feed_request, page, request_id(),
                                arm.value_weights or self.config.weights_for(feed_request.surface))
        self.metrics.stage_timings(page.timings_ms)
        if served_posts := sum(i.post is not None for i in page.items):
            self.metrics.posts_served.inc(served_posts)
        self.report_component("ranker", "ranker" not in page.degraded)
        note(arm=arm_label, items=len(page.items), timings_ms={k: round(v, 2) for k, v in page.timings_ms.items()})
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
            next_cursor=self.cursors.sign(page.next_cursor),
            request_id=request_id(),
            experiment_arm=arm_label,
            model_version=page.model_version,
        )

    def LogEvents(self, request_iterator, context: grpc.ServicerContext) -> feed_pb2.LogEventsResponse:
        if self.event_log is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server runs without an event log")
        records, now = [], now_ms()
        for index, event in enumerate(request_iterator):
            if index >= self.config.max_events_per_stream:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"more than {self.config.max_events_per_stream} events in one stream: nothing was "
                              "logged; send them in smaller streams")
            records.append(self._record(index, event, context, now))
        appended = self.event_log.append_new(records)
        received = now_ms()  # the server's clock, which sessions are timed by (not the client's)
        for r in appended.logged:  # only after the append: what is filtered is what is logged
            if r["event"] == "impression":
                self.recently_seen.add(r["user_id"], r["item_id"], received)
            elif self.posts is not None:  # engagement: the user's generated post may be due a rewrite
                self.posts.note_engagement(r["user_id"])
        for event, n in Counter(r["event"] for r in appended.logged).items():
            self.metrics.events.labels(event).inc(n)
        note(events=len(records), duplicates=appended.duplicates)
        return feed_pb2.LogEventsResponse(accepted=len(records), by_event=dict(Counter(r["event"] for r in records)),
                                          last_seq=appended.last_seq, duplicates=appended.duplicates)

    def StreamPost(self, request: feed_pb2.StreamPostRequest, context: grpc.ServicerContext):
        note(user_id=request.user_id)
        if self.posts is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "generation is off on this server ([generation] enabled)")
        limit = self.posts.config.max_new_tokens
        bad = Violations()
        bad.check_id("user_id", request.user_id, required=True)
        bad.check_id("surface", request.surface)
        if not 0 <= request.max_new_tokens <= limit:
            bad.add("max_new_tokens", f"must be 0..{limit} (0 = {limit}), got {request.max_new_tokens}")
        bad.abort(context)
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

    def gated_feed(self, request: FeedRequest):
        """The pipeline's page for the background post writer, through GetFeed's `feed_concurrency`
        slots (it waits its turn like a GetFeed, so planning posts never crowds out the feed)."""
        if self._feed_slots is None:
            return self.pipeline.get_feed(request)
        with self._feed_slots:
            return self.pipeline.get_feed(request)

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

    def _record(self, index: int, event: feed_pb2.Event, context: grpc.ServicerContext, now: int) -> dict:
        """The log record of one event, or INVALID_ARGUMENT naming the event and its wrong fields."""
        bad = Violations(prefix=f"events[{index}].")
        bad.check_id("user_id", event.user_id, required=True)
        bad.check_id("item_id", event.item_id, required=True)
        for field in ("request_id", "surface", "experiment_arm", "event_id", "content_type"):
            bad.check_id(field, getattr(event, field))
        if event.event not in EVENT_TYPES:
            bad.add("event", f"is {clip(event.event)}, expected one of {list(EVENT_TYPES)}")
        if not math.isfinite(event.value) or event.value < 0:
            bad.add("value", f"is {event.value}, expected a finite number >= 0")
        elif event.event in TIMED_EVENTS and event.value <= 0:
            bad.add("value", f"must be the {event.event} time in seconds (> 0)")
        oldest = now - int(self.config.event_max_age_days * 86_400_000)
        latest = now + int(self.config.event_max_ahead_s * 1000)
        if event.ts_ms and not oldest <= event.ts_ms <= latest:
            bad.add("ts_ms", f"is {event.ts_ms}, expected milliseconds since the epoch within "
                             f"{self.config.event_max_age_days:g} days before and {self.config.event_max_ahead_s:g} s "
                             f"after the server's clock ({now}), or 0 for now")
        if not 0 <= event.propensity <= 1:  # NaN fails too
            bad.add("propensity", f"is {event.propensity}, expected the served item's propensity in [0, 1] "
                                  "(0 = unknown)")
        if event.position < 0:
            bad.add("position", f"is {event.position}, expected >= 0")
        if event.source and event.source not in SERVED_SOURCES:
            bad.add("source", f"is {clip(event.source)}, expected the served item's source, one of {list(SERVED_SOURCES)}")
        content_type = event.content_type
        if content_type and content_type not in self._served_types():
            bad.add("content_type", f"is {clip(content_type)}, expected one of {sorted(self._served_types())[:20]}")
        if not bad.items and not content_type:
            content_type = self.pipeline.catalog.get(event.item_id, ("",))[0]
            if not content_type and self.posts is not None and self.posts.lookup(event.item_id) is not None:
                content_type = POST_CONTENT_TYPE
            if not content_type:
                bad.add("content_type", f"is needed: item {clip(event.item_id)} is not in the catalogue")
        bad.abort(context, "; nothing from this stream was logged")
        return {
            "user_id": event.user_id, "item_id": event.item_id, "content_type": content_type,
            "ts": event.ts_ms or now_ms(), "event": event.event,
            "value": event.value if event.event in TIMED_EVENTS else None,
            "request_id": event.request_id or None, "position": event.position,
            "surface": event.surface or None,
            "experiment_arm": event.experiment_arm or self._arm_of(event.user_id),
            "source": event.source or None,
            "propensity": event.propensity or None,  # 0 on the wire: deterministic or unknown
            "event_id": event.event_id or None,
        }

    def _served_types(self) -> frozenset[str]:
        """The served catalogue's content types, plus "generated" and "account" (the follow
        source's accounts, which need not be in the catalogue); computed once per pipeline."""
        pipeline = self.pipeline
        if self._content_types[0] is not pipeline:
            types = frozenset(t for t, _ in pipeline.catalog.values()) | {POST_CONTENT_TYPE, ACCOUNT}
            self._content_types = (pipeline, types)
        return self._content_types[1]


def _provenance(post: GeneratedPost | None) -> feed_pb2.Provenance | None:
    if post is None:
        return None
    return feed_pb2.Provenance(source_item_ids=list(post.source_item_ids), model_version=post.model_version,
                               prompt_version=post.prompt_version, method=post.method)
