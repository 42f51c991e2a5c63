"""GetFeed latency through a real gRPC server on loopback, per pipeline stage, for two candidate
budgets in one run (ratios hold on a noisy machine).

    .venv/bin/python benchmarks/feed_latency.py [--config configs/demo.toml] [--requests 300]

Needs the artifacts of `feed demo` (or prepare / train / index). Writes
benchmarks/results/feed_latency.json and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feedcore.config import load_config
from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.pipeline import FeedPipeline, FeedRequest
from serving.server import create_server

OUT = Path(__file__).parent / "results" / "feed_latency.json"


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


def run_variant(pipeline: FeedPipeline, serving, users: list[str], page_size: int) -> dict:
    # Stage timings measured inside the pipeline, in-process.
    stages: dict[str, list[float]] = {}
    for user in users:
        page = pipeline.get_feed(FeedRequest(user_id=user, page_size=page_size))
        for stage, ms in page.timings_ms.items():
            stages.setdefault(stage, []).append(ms)
    # End-to-end through gRPC: one client, sequential calls.
    running = create_server(serving, pipeline)
    server, port = running.server, running.port
    server.start()
    client_ms = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = feed_pb2_grpc.FeedServiceStub(channel)
        stub.GetFeed(feed_pb2.GetFeedRequest(user_id=users[0], page_size=page_size))  # warm-up
        start = time.perf_counter()
        for user in users:
            t = time.perf_counter()
            stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, page_size=page_size), timeout=10)
            client_ms.append((time.perf_counter() - t) * 1000)
        wall = time.perf_counter() - start
        # The transport floor on the same server: the health check RPC does no work.
        health = health_pb2_grpc.HealthStub(channel)
        floor_ms = []
        for _ in users:
            t = time.perf_counter()
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            floor_ms.append((time.perf_counter() - t) * 1000)
    server.stop(0).wait()
    return {"grpc_ms": percentiles(client_ms), "sequential_qps": len(users) / wall,
            "health_check_ms": percentiles(floor_ms),
            "stages_ms": {s: percentiles(v) for s, v in stages.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/demo.toml")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--page-size", type=int, default=20)
    args = parser.parse_args()
    config = load_config(args.config)
    torch.set_num_threads(2)
    serving = dataclasses.replace(config.serving, port=0)
    results = {}
    for name, ann_k, popular_k in (("candidates_250", 200, 50), ("candidates_1000", 800, 200)):
        candidates = dataclasses.replace(config.candidates, ann=ann_k, popular=popular_k)
        pipeline = FeedPipeline.from_artifacts(dataclasses.replace(config, candidates=candidates))
        users = [str(u) for u in np.random.default_rng(0).choice(sorted(pipeline.histories), args.requests)]
        results[name] = run_variant(pipeline, serving, users, args.page_size)
    report = {
        "benchmark": "feed_latency",
        "dataset": config.data.dataset,
        "index": config.retrieval.index_factory,
        "requests": args.requests,
        "page_size": args.page_size,
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform()},
        "variants": results,
        "ratio_p50_1000_vs_250": results["candidates_1000"]["grpc_ms"]["p50"] / results["candidates_250"]["grpc_ms"]["p50"],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(f"{'variant':<17} {'grpc p50':>9} {'p95':>7} {'p99':>7} {'qps':>6} {'floor p50':>9}   stage p50 (ms)")
    for name, r in results.items():
        g = r["grpc_ms"]
        stages = "  ".join(f"{s}={v['p50']:.2f}" for s, v in r["stages_ms"].items())
        print(f"{name:<17} {g['p50']:9.2f} {g['p95']:7.2f} {g['p99']:7.2f} {r['sequential_qps']:6.0f} "
              f"{r['health_check_ms']['p50']:9.2f}   {stages}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
