"""Prometheus metrics of the feed service, served over HTTP (`[serving] metrics_port`).

Each server has its own registry, so several servers (tests) can live in one process. The RPC
counts and latencies are recorded by `serving.interceptors.Metrics`, for every method alike.

- ``feed_requests_total{method, code}``: RPCs by gRPC status code (errors are the non-OK codes);
- ``feed_request_seconds{method}``: RPC latency;
- ``feed_stage_seconds{stage}``: GetFeed's stages (candidates, hydration, ranker, blend, total);
- ``feed_events_logged_total{event}``: events durably logged by LogEvents;
- ``feed_posts_written_total{method}``: generated posts by how they passed the checks (model,
  repaired, template); ``feed_posts_rejected_total{reason}``: model outputs refused (grounding,
  guardrails), by reason; ``feed_posts_served_total``: generated posts put on feed pages;
  ``feed_post_jobs_total{outcome}``: users the background writer took, by outcome (posts, fresh,
  written_elsewhere when another process of the launcher writes it, no_plan, errors).
"""

from __future__ import annotations

from collections import Counter as CounterType
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily

# Seconds; fine below 100 ms, where GetFeed and its stages live, so quantiles read from them are close.
_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
            0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("feed_requests", "RPCs by method and gRPC status code", ["method", "code"],
                                registry=self.registry)
        self.latency = Histogram("feed_request_seconds", "RPC latency", ["method"], buckets=_BUCKETS,
                                 registry=self.registry)
        self.stages = Histogram("feed_stage_seconds", "GetFeed latency per pipeline stage", ["stage"],
                                buckets=_BUCKETS, registry=self.registry)
        self.events = Counter("feed_events_logged", "Events durably logged, by event type", ["event"],
                              registry=self.registry)
        self.posts_served = Counter("feed_posts_served", "Generated posts put on feed pages", registry=self.registry)
        self._http = None

    def watch_generation(self, stats: Callable[[], CounterType[str]]) -> None:
        """Export the post writer's counts ("method:<m>", "refused:<reason>") and the background
        worker's ("worker:<outcome>") at every scrape."""
        self.registry.register(_GenerationCollector(stats))

    def stage_timings(self, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.stages.labels(stage).observe(ms / 1000.0)

    def serve_http(self, host: str, port: int) -> int:
        """Expose /metrics on host:port (0: a free port); returns the port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return server.server_port

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _GenerationCollector:
    """feed_posts_written_total{method}, feed_posts_rejected_total{reason} (the writer's) and
    feed_post_jobs_total{outcome} (the background worker's: posts, fresh, written_elsewhere, ...)."""

    def __init__(self, stats: Callable[[], CounterType[str]]) -> None:
        self.stats = stats

    def collect(self):
        written = CounterMetricFamily("feed_posts_written", "Generated posts, by how they passed the checks",
                                      labels=["method"])
        rejected = CounterMetricFamily("feed_posts_rejected", "Generated outputs refused, by reason",
                                       labels=["reason"])
        jobs = CounterMetricFamily("feed_post_jobs", "Users taken by the background post writer, by outcome",
                                   labels=["outcome"])
        families = {"method": written, "refused": rejected, "worker": jobs}
        for key, n in sorted(self.stats().items()):
            kind, _, label = key.partition(":")
            if kind in families:
                families[kind].add_metric([label], n)
        yield from families.values()
