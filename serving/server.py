"""The gRPC server: FeedService plus the standard health and reflection services.

`create_server` builds and binds (port 0 = a free port; tests use it); `serve` runs until SIGTERM
or SIGINT, then reports NOT_SERVING, lets in-flight requests finish and exits.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from feedcore.config import ServingConfig
from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.event_log import EventLog
from serving.experiments import ExperimentStore
from serving.pipeline import FeedPipeline
from serving.servicer import FeedServicer

logger = logging.getLogger(__name__)
SERVICE_NAME = feed_pb2.DESCRIPTOR.services_by_name["FeedService"].full_name
GRACE_SECONDS = 5.0


def create_server(
    config: ServingConfig, pipeline: FeedPipeline, event_log: EventLog | None = None
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A started-ready (not yet started) server bound to config.host:config.port; returns the real port.
    Without `event_log`, LogEvents answers UNIMPLEMENTED."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.max_workers))
    experiments = ExperimentStore(config.experiments_file or None)  # a bad file refuses to start
    feed_pb2_grpc.add_FeedServiceServicer_to_server(FeedServicer(pipeline, config, event_log, experiments), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"cannot bind {config.host}:{config.port}")
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


def serve(config: ServingConfig, pipeline: FeedPipeline, event_log: EventLog | None = None, on_ready=None) -> None:
    """Run the server until SIGTERM / SIGINT, then shut down gracefully: NOT_SERVING, in-flight
    requests finish, the event log is flushed into Parquet."""
    server, port, health_servicer = create_server(config, pipeline, event_log)
    server.start()
    stopping = threading.Event()

    def shutdown(signum, _frame) -> None:
        logger.info("signal %s: draining", signal.Signals(signum).name)
        health_servicer.enter_graceful_shutdown()
        stopping.set()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    logger.info("serving %s on %s:%d (model %s)", SERVICE_NAME, config.host, port, pipeline.model_version)
    if on_ready is not None:
        on_ready(port)
    stopping.wait()
    server.stop(GRACE_SECONDS).wait()
    if event_log is not None:
        event_log.close()
    logger.info("stopped")
