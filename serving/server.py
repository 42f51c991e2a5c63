"""The gRPC server: FeedService plus the standard health and reflection services.

`create_server` builds and binds (port 0 = a free port; tests use it); `serve` runs until SIGTERM
or SIGINT, then reports NOT_SERVING, lets in-flight requests finish and exits.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from typing import NamedTuple

import faiss
import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from feedcore.config import EngineConfig, ServingConfig
from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.event_log import EventLog
from serving.experiments import ExperimentStore
from serving.metrics import ServiceMetrics
from serving.pipeline import FeedPipeline
from serving.reloader import ModelReloader, freeze_heap
from serving.servicer import FeedServicer

logger = logging.getLogger(__name__)
SERVICE_NAME = feed_pb2.DESCRIPTOR.services_by_name["FeedService"].full_name
GRACE_SECONDS = 5.0


class FeedServer(NamedTuple):
    server: grpc.Server
    port: int
    health: health.HealthServicer
    servicer: FeedServicer
    metrics: ServiceMetrics
    metrics_port: int | None  # None: metrics not served over HTTP


def create_server(config: ServingConfig, pipeline: FeedPipeline, event_log: EventLog | None = None) -> FeedServer:
    """A ready (not yet started) server bound to config.host:config.port, with the real port; its
    Prometheus metrics are on HTTP when `config.metrics_port` >= 0. Without `event_log`,
    LogEvents answers UNIMPLEMENTED."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, initializer=_limit_threads,
                                   initargs=(config.torch_threads,)),
        options=[("grpc.max_receive_message_length", config.max_request_bytes)],  # larger: RESOURCE_EXHAUSTED
        maximum_concurrent_rpcs=config.max_concurrent_rpcs or None,  # beyond it: RESOURCE_EXHAUSTED
    )
    metrics = ServiceMetrics()
    health_servicer = health.HealthServicer()
    servicer = FeedServicer(pipeline, config, event_log, None, metrics, health_servicer)
    # A bad experiment file (or one the served ranker cannot run) refuses to start.
    servicer.experiments = ExperimentStore(config.experiments_file or None, validate=servicer.check_experiment)
    feed_pb2_grpc.add_FeedServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"cannot bind {config.host}:{config.port}")
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    metrics_port = metrics.serve_http(config.host, config.metrics_port) if config.metrics_port >= 0 else None
    return FeedServer(server, port, health_servicer, servicer, metrics, metrics_port)


def _limit_threads(threads: int) -> None:
    """Each worker thread's own intra-op thread counts: OpenMP's is a per-thread setting (faiss
    reads it), so what `serve` sets in the main thread does not reach the gRPC workers, whose
    searches would otherwise start a team of threads per core that spin on the other requests' cores."""
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)


def serve(engine: EngineConfig, pipeline: FeedPipeline, event_log: EventLog | None = None, on_ready=None,
          shared_model: tuple[str, bytes] | None = None) -> None:
    """Run the server until SIGTERM / SIGINT, then shut down gracefully: NOT_SERVING, in-flight
    requests finish, the event log is flushed into Parquet. New models and indexes written under
    `engine.artifacts_dir` are picked up live (`serving.reloader`). With `[generation] enabled`,
    the generative module loads first and writes posts in the background (`serving.generated_posts`),
    with the launcher's language model at `shared_model` (address, key) when given."""
    config = engine.serving
    _limit_threads(config.torch_threads)  # this thread's; the gRPC workers set theirs (create_server)
    running = create_server(config, pipeline, event_log)
    server, port, health_servicer = running.server, running.port, running.health
    posts = None
    if engine.generation.enabled:
        from serving.generated_posts import make_generated_posts

        posts = make_generated_posts(engine, lambda: running.servicer.pipeline, running.metrics, shared_model)
        running.servicer.posts = posts
    freeze_heap()  # everything loaded so far lives as long as the process (or until a reload)
    server.start()
    reloader = None
    if config.reload_interval_s > 0:
        reloader = ModelReloader(engine, running.servicer, config.reload_interval_s)
        reloader.start()
    stopping = threading.Event()

    def shutdown(signum, _frame) -> None:
        logger.info("signal %s: draining", signal.Signals(signum).name)
        health_servicer.enter_graceful_shutdown()
        stopping.set()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    logger.info("serving %s on %s:%d (model %s; metrics %s)", SERVICE_NAME, config.host, port, pipeline.model_version,
                f"http://{config.host}:{running.metrics_port}/metrics" if running.metrics_port else "off")
    if on_ready is not None:
        on_ready(port)
    stopping.wait()
    if reloader is not None:
        reloader.stop()
    server.stop(GRACE_SECONDS).wait()
    if posts is not None:
        posts.stop()
    if event_log is not None:
        event_log.close()
    running.metrics.stop_http()
    logger.info("stopped")
