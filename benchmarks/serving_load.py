"""Load generator for the feed service: closed and open loop over real gRPC on loopback.

    .venv/bin/python benchmarks/serving_load.py [--config configs/demo.toml] [--seconds 20]
        [--rates 25,50,100,200] [--concurrency 1,4,16] [--page-size 20]

Starts `feed serve` as its own process on a free loopback port (the artifacts of `--config` must
exist: `make demo` writes the demo's), then drives GetFeed with an asyncio gRPC client
(`grpc.aio`), one user id drawn per request from the dataset's users:

- closed loop: `c` workers, each sending its next request when the previous one returns, for
  `--seconds`: the maximum throughput at that concurrency;
- open loop: requests start on a Poisson schedule at `r` per second for `--seconds`, whatever the
  server's state; latency is measured from the scheduled start, so queueing counts (no coordinated
  omission).

Per run: achieved requests/s, latency p50 / p95 / p99 / max, errors by status code, and each
pipeline stage's mean and p50 / p95 / p99 from the server's Prometheus histograms (their delta
over the run; the quantiles interpolated inside the histogram's buckets, as Prometheus does). Client and server share the machine's cores. Writes
benchmarks/results/serving_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from feedcore.config import load_config
from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from feedcore.schemas import CanonicalDataset

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results" / "serving_load.json"


def start_server(config: str, log: list[str] | None = None,
                 command: list[str] | None = None) -> tuple[subprocess.Popen, str, int]:
    """`feed serve` (or `command`, which must print the same ready line) in its own process;
    returns it, its address and its metrics port. The server's log lines are appended to `log`
    when one is given."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        command or [sys.executable, "-m", "feedcli", "serve", "--config", config, "--port", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = server.stdout.readline()
    if not line.startswith("FEED_SERVER_READY"):
        raise SystemExit(f"server did not start: {server.stderr.read()[-2000:]}")
    address = line.split()[1]
    found = threading.Event()
    port_box: list[int] = []

    def drain() -> None:  # keep reading the server's log so its pipe never fills and blocks it
        for err in server.stderr:
            if log is not None:
                log.append(err.rstrip("\n"))
            if "metrics http://" in err and not found.is_set():  # "... metrics http://host:port/metrics)"
                port_box.append(int(err.split("metrics http://")[1].split("/")[0].rsplit(":", 1)[1]))
                found.set()

    threading.Thread(target=drain, daemon=True).start()
    found.wait(timeout=30)
    metrics_port = port_box[0] if port_box else None
    if metrics_port is None:
        raise SystemExit("the config must set [serving] metrics_port = 0 (or a port) for per-stage figures")
    return server, address, metrics_port


@dataclasses.dataclass(frozen=True)
class StageStats:
    """One pipeline stage's Prometheus histogram: total seconds, count, cumulative bucket counts."""

    seconds: float
    count: float
    buckets: tuple[tuple[float, float], ...]  # (upper bound in s, cumulative count), +Inf last

    def __add__(self, other: StageStats) -> StageStats:  # two server processes together
        return StageStats(self.seconds + other.seconds, self.count + other.count,
                          tuple((le, a + b) for (le, a), (_, b) in zip(self.buckets, other.buckets, strict=True)))

    def __sub__(self, other: StageStats) -> StageStats:  # what a run added
        return StageStats(self.seconds - other.seconds, self.count - other.count,
                          tuple((le, a - b) for (le, a), (_, b) in zip(self.buckets, other.buckets, strict=True)))

    def quantile(self, q: float) -> float:
        """Seconds at quantile q, interpolated linearly inside its bucket (Prometheus'
        `histogram_quantile`): as fine as the service's buckets (`serving.metrics`)."""
        if self.count <= 0:
            return float("nan")
        rank, lower, below = q * self.count, 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank:
                if le == float("inf"):
                    return lower
                return lower + (le - lower) * (rank - below) / max(cumulative - below, 1e-12)
            lower, below = le, cumulative
        return lower


def stage_sums(metrics_port: int) -> dict[str, StageStats]:
    """stage → its `feed_stage_seconds` histogram, read from the server's metrics page."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    sums: dict[str, list[float]] = {}
    buckets: dict[str, list[tuple[float, float]]] = {}
    for line in text.splitlines():
        if not line.startswith("feed_stage_seconds"):
            continue
        stage = line.split('stage="')[1].split('"')[0]
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith("feed_stage_seconds_bucket{"):
            buckets.setdefault(stage, []).append((float(line.split('le="')[1].split('"')[0]), value))
        for suffix, slot in (("_sum", 0), ("_count", 1)):
            if line.startswith(f"feed_stage_seconds{suffix}{{"):
                sums.setdefault(stage, [0.0, 0.0])[slot] = value
    return {k: StageStats(v[0], v[1], tuple(sorted(buckets.get(k, [])))) for k, v in sums.items()}


async def one(stub, user: str, page_size: int, started: float, latencies: list, errors: Counter) -> None:
    try:
        await stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, page_size=page_size), timeout=10)
        latencies.append(time.perf_counter() - started)
    except grpc.aio.AioRpcError as e:
        errors[e.code().name] += 1


def open_channels(address: str, n: int) -> list[grpc.aio.Channel]:
    """`n` channels, each its own TCP connections (a local subchannel pool: channels with the same
    arguments would otherwise share them). A target naming several servers (``ipv4:a:p1,a:p2``)
    is balanced per request, round-robin."""
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.lb_policy_name", "round_robin")]
    return [grpc.aio.insecure_channel(address, options=options) for _ in range(n)]


async def closed_loop(address, users, page_size, concurrency, seconds, rng, channels=1):
    latencies, errors = [], Counter()
    chans = open_channels(address, channels)
    try:
        stubs = [feed_pb2_grpc.FeedServiceStub(c) for c in chans]
        end = time.perf_counter() + seconds

        async def worker(w):
            while time.perf_counter() < end:
                await one(stubs[w % len(stubs)], users[rng.integers(len(users))], page_size, time.perf_counter(),
                          latencies, errors)

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
    finally:
        for c in chans:
            await c.close()
    return latencies, errors, elapsed


async def open_loop(address, users, page_size, rate, seconds, rng, channels=1):
    latencies, errors = [], Counter()
    chans = open_channels(address, channels)
    try:
        stubs = [feed_pb2_grpc.FeedServiceStub(c) for c in chans]
        gaps = rng.exponential(1.0 / rate, int(rate * seconds * 1.5) + 10)
        schedule = np.cumsum(gaps)
        schedule = schedule[schedule < seconds]
        start = time.perf_counter()
        tasks = []
        for n, at in enumerate(schedule):
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(stubs[n % len(stubs)], users[rng.integers(len(users))], page_size,
                                                 start + at, latencies, errors)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    finally:
        for c in chans:
            await c.close()
    return latencies, errors, elapsed


def summarize(kind, level, latencies, errors, elapsed, before, after) -> dict:
    ms = np.asarray(latencies) * 1000
    row = {"loop": kind, "level": level, "requests": len(ms) + sum(errors.values()), "ok": len(ms),
           "errors": dict(errors), "qps": len(ms) / elapsed, "seconds": elapsed}
    if len(ms):
        row.update({f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 95, 99)}, max_ms=float(ms.max()))
    runs = {stage: stats - before[stage] if stage in before else stats for stage, stats in after.items()}
    row["stage_mean_ms"] = {stage: 1000 * r.seconds / max(1.0, r.count) for stage, r in runs.items()}
    for q in (50, 95, 99):
        row[f"stage_p{q}_ms"] = {stage: 1000 * r.quantile(q / 100) for stage, r in runs.items()}
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/demo.toml")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rates", default="25,50,100,200")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--page-size", type=int, default=20)
    args = parser.parse_args()
    config = load_config(args.config)
    users = CanonicalDataset.read(config.prepared_dir).users["user_id"].to_list()
    rng = np.random.default_rng(0)
    server, address, metrics_port = start_server(args.config)
    rows = []
    try:
        asyncio.run(closed_loop(address, users, args.page_size, 2, 3, rng))  # warm-up
        for c in [int(x) for x in args.concurrency.split(",") if x]:
            before = stage_sums(metrics_port)
            result = asyncio.run(closed_loop(address, users, args.page_size, c, args.seconds, rng))
            rows.append(summarize("closed", c, *result, before, stage_sums(metrics_port)))
            print(json.dumps(rows[-1]), flush=True)
        for r in [float(x) for x in args.rates.split(",") if x]:
            before = stage_sums(metrics_port)
            result = asyncio.run(open_loop(address, users, args.page_size, r, args.seconds, rng))
            rows.append(summarize("open", r, *result, before, stage_sums(metrics_port)))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "benchmark": "serving_load", "protocol": __doc__.strip(), "config": args.config,
        "machine": platform.machine(), "cpus": os.cpu_count(), "page_size": args.page_size,
        "candidates": {"ann": config.candidates.ann, "popular": config.candidates.popular}, "results": rows,
    }, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
