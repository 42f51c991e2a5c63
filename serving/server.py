"""The gRPC server: FeedService plus the standard health and reflection (v1 and v1alpha) services.

`create_server` builds and binds (port 0 = a free port; tests use it); `serve` runs until SIGTERM
or SIGINT, then reports NOT_SERVING, lets in-flight requests finish and exits. Every wait of the
shutdown is bounded: calls that have not ended after the grace period are left behind (the event
log is flushed and closed all the same, and the process exits); a second signal exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import NamedTuple

import faiss
import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from feedcore.config import EngineConfig, ServingConfig
from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from feedcore.proto.grpc.reflection.v1 import reflection_pb2 as reflection_v1_pb2
from serving.cursors import CursorSigner, load_cursor_key
from serving.event_log import EventLog
from serving.experiments import ExperimentStore
from serving.interceptors import SPARE_THREADS, Admission, server_interceptors
from serving.metrics import ServiceMetrics
from serving.pipeline import FeedPipeline
from serving.process import LAUNCHER_GONE
from serving.reloader import ModelReloader, freeze_heap
from serving.servicer import FeedServicer

logger = logging.getLogger(__name__)
SERVICE_NAME = feed_pb2.DESCRIPTOR.services_by_name["FeedService"].full_name
REFLECTION_V1 = reflection_v1_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name
GRACE_SECONDS = 5.0  # in-flight calls get this long to finish at shutdown
STOP_MARGIN_SECONDS = 5.0  # then grpc gets this long to stop before the process goes on without it
POST_WORKER_STOP_SECONDS = 10.0  # for the background post writer's batch under way to end


class FeedServer(NamedTuple):
    server: grpc.Server
    port: int
    health: health.HealthServicer
    servicer: FeedServicer
    metrics: ServiceMetrics
    metrics_port: int | None  # None: metrics not served over HTTP
    admission: Admission  # its counters: calls in progress, GetFeeds admitted


def create_server(config: ServingConfig, pipeline: FeedPipeline, event_log: EventLog | None = None,
                  cursor_key: bytes = b"") -> FeedServer:
    """A ready (not yet started) server bound to config.host:config.port, with the real port; its
    Prometheus metrics are on HTTP when `config.metrics_port` >= 0. Without `event_log`,
    LogEvents answers UNIMPLEMENTED. Cursors are signed with `cursor_key`, else
    `config.cursor_key`, else a random key of this server's own."""
    metrics = ServiceMetrics()
    method = {m.name: f"/{SERVICE_NAME}/{m.name}" for m in feed_pb2.DESCRIPTOR.services_by_name["FeedService"].methods}
    interceptors = server_interceptors(config, metrics, write_methods=[method["LogEvents"]],
                                       feed_method=method["GetFeed"])
    server = grpc.server(
        # SPARE_THREADS beyond max_workers answer the calls that Admission refuses, at once.
        futures.ThreadPoolExecutor(max_workers=config.max_workers + SPARE_THREADS, initializer=_limit_threads,
                                   initargs=(config.torch_threads,)),
        interceptors=interceptors,
        options=[("grpc.max_receive_message_length", config.max_request_bytes)],  # larger: RESOURCE_EXHAUSTED
        maximum_concurrent_rpcs=config.max_concurrent_rpcs or None,  # beyond it: RESOURCE_EXHAUSTED
    )
    health_servicer = health.HealthServicer()
    cursors = CursorSigner(cursor_key or config.cursor_key.encode() or os.urandom(32))
    servicer = FeedServicer(pipeline, config, event_log, None, metrics, health_servicer, cursors=cursors)
    # A bad experiment file (or one the served ranker cannot run) refuses to start.
    servicer.experiments = ExperimentStore(config.experiments_file or None, validate=servicer.check_experiment)
    feed_pb2_grpc.add_FeedServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _add_reflection(server, (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                             reflection.SERVICE_NAME, REFLECTION_V1))
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"cannot bind {config.host}:{config.port}")
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    metrics_port = metrics.serve_http(config.host, config.metrics_port) if config.metrics_port >= 0 else None
    admission = next(i for i in interceptors if isinstance(i, Admission))
    return FeedServer(server, port, health_servicer, servicer, metrics, metrics_port, admission)


def _add_reflection(server: grpc.Server, service_names: tuple[str, ...]) -> None:
    """Server reflection as v1alpha (grpcio-reflection's) and v1: one servicer answers both, as
    their messages are the same field for field (v1's descriptors come from protos/grpc/reflection)."""
    servicer = reflection.ReflectionServicer(service_names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo, request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),))


def _limit_threads(threads: int) -> None:
    """Each worker thread's own intra-op thread counts: OpenMP's is a per-thread setting (faiss
    reads it), so what `serve` sets in the main thread does not reach the gRPC workers, whose
    searches would otherwise start a team of threads per core that spin on the other requests' cores."""
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)


def serve(engine: EngineConfig, pipeline: FeedPipeline, event_log: EventLog | None = None, on_ready=None,
          generation_service: str = "") -> None:
    """Run the server until SIGTERM / SIGINT, then shut down gracefully: NOT_SERVING, in-flight
    requests finish, the event log is flushed into Parquet. New models and indexes written under
    `engine.artifacts_dir` are picked up live (`serving.reloader`). With `[generation] enabled`,
    posts are written in the background by the generation service at `generation_service` (else
    `[generation] service`) and kept in the post store (`serving.generated_posts`)."""
    config = engine.serving
    _limit_threads(config.torch_threads)  # this thread's; the gRPC workers set theirs (create_server)
    # One key for every process of `feed serve --processes N` and across restarts: a cursor one issued is good on all.
    cursor_key = load_cursor_key(config.cursor_key, Path(engine.artifacts_dir) / "cursor.key")
    running = create_server(config, pipeline, event_log, cursor_key)
    server, port, health_servicer = running.server, running.port, running.health
    posts = None
    if engine.generation.enabled:
        from serving.generated_posts import make_generated_posts

        posts = make_generated_posts(engine, generation_service or engine.generation.service,
                                     lambda: running.servicer.pipeline, running.servicer.gated_feed, running.metrics)
        running.servicer.posts = posts
    freeze_heap()  # everything loaded so far lives as long as the process (or until a reload)
    server.start()
    reloader = None
    if config.reload_interval_s > 0:
        reloader = ModelReloader(engine, running.servicer, config.reload_interval_s)
        reloader.start()
    stopping = threading.Event()

    def shutdown(signum, _frame) -> None:
        name = signal.Signals(signum).name
        if stopping.is_set():
            if signum == LAUNCHER_GONE:  # the kernel's, maybe once per thread of the dead launcher
                return
            # A second signal: the operator will not wait for the drain.
            # Nothing acknowledged is lost: every acknowledged event was fsynced before its ack.
            os.write(2, f"signal {name} again: exiting now\n".encode())
            os._exit(128 + signum)
        logger.info("signal %s: draining", name)
        health_servicer.enter_graceful_shutdown()
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT, LAUNCHER_GONE):
        signal.signal(signum, shutdown)
    logger.info("serving %s on %s:%d (model %s; metrics %s)", SERVICE_NAME, config.host, port, pipeline.model_version,
                f"http://{config.host}:{running.metrics_port}/metrics" if running.metrics_port else "off")
    if on_ready is not None:
        on_ready(port)
    stopping.wait()
    if reloader is not None:
        reloader.stop()
    drained = server.stop(GRACE_SECONDS).wait(GRACE_SECONDS + STOP_MARGIN_SECONDS)
    if not drained:  # grpcio can miss the end of calls it failed itself; the rest of the shutdown goes on
        logger.warning("the gRPC server did not stop within %.0f s: leaving its open calls behind",
                       GRACE_SECONDS + STOP_MARGIN_SECONDS)
    if posts is not None:  # bounded: a batch still writing after this is cut off (one line in the log)
        posts.stop(POST_WORKER_STOP_SECONDS)
    if event_log is not None:
        event_log.close()
    running.metrics.stop_http()
    logger.info("stopped")
    if not drained:  # its worker threads would hold up the interpreter's exit forever
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)
