"""GetFeed latency with generation off and on, in one run: does writing posts slow the feed?

    .venv/bin/python benchmarks/generation_feed_latency.py [--config configs/demo.toml] [--seconds 30]
        [--rate 20] [--warm-users 400]

Two `feed serve` processes in turn, on the artifacts of `--config` (`make demo` writes the
demo's), each measured the same way (closed loop with one request in flight, then an open loop
at `--rate` requests/s):

- ``off``: `[generation] enabled = false`;
- ``service``: generation on: `feed serve` starts its generation service (`feed serve-generation`,
  a process of its own on a Unix socket) and keeps posts in a fresh SQLite post store.

With generation on, the background writer is kept busy for the whole measurement (`--warm-users`
users are queued at start, far more than it writes in the window; the posts written during the
window are counted from the server's `feed_post_jobs_total{outcome="posts"}`). Ready posts take part in the feeds as they
are written. The client shares the machine's cores with the server. Writes
benchmarks/results/generation_feed_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serving_load import closed_loop, open_loop, stage_sums, start_server, summarize  # noqa: E402

from feedcore.config import load_config  # noqa: E402
from feedcore.io import atomic_write_bytes  # noqa: E402
from feedcore.schemas import CanonicalDataset  # noqa: E402

OUT = Path(__file__).parent / "results" / "generation_feed_latency.json"
VARIANTS = {"off": False, "service": True}


def variant_config(engine_config: str, artifacts_dir: str, llm_cache: str, generation_on: bool,
                   warm_users: int, directory: Path) -> Path:
    """A serve config over the same artifacts, differing only in [generation]."""
    generation = ("enabled = false" if not generation_on else
                  f'enabled = true\nwarm_users = {warm_users}\nstore = "{directory / "posts.sqlite"}"\n'
                  f'cache_dir = "{llm_cache}"\nnum_candidates = 2\nbatch_size = 4\nmax_new_tokens = 48')
    path = directory / f"{'service' if generation_on else 'off'}.toml"
    path.write_text(f'artifacts_dir = "{artifacts_dir}"\n[serving]\nmetrics_port = 0\nreload_interval_s = 0\n'
                    f'blend = {{ type_shares = {{ generated = 0.1 }} }}\n[generation]\n{generation}\n')
    return path


def posts_written(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return sum(float(m) for m in re.findall(r'^feed_post_jobs_total\{outcome="posts"\} (\S+)$', text, re.MULTILINE))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/demo.toml")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--warm-users", type=int, default=400)
    parser.add_argument("--page-size", type=int, default=20)
    args = parser.parse_args()
    engine = load_config(args.config)
    users = CanonicalDataset.read(engine.prepared_dir).users["user_id"].to_list()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, generation_on in VARIANTS.items():
            path = variant_config(args.config, str(Path(engine.artifacts_dir).resolve()),
                                  str(engine.llm_cache_dir.resolve()), generation_on, args.warm_users, Path(tmp))
            log: list[str] = []
            server, address, metrics_port = start_server(str(path), log)
            rng = np.random.default_rng(0)  # the same users in the same order for every variant
            try:
                if generation_on:  # wait until the worker has written its first posts
                    deadline = time.time() + 300
                    while posts_written(metrics_port) < 1 and time.time() < deadline:
                        time.sleep(1)
                asyncio.run(closed_loop(address, users, args.page_size, 1, 3, rng))  # warm-up
                for loop, level in (("closed", 1), ("open", args.rate)):
                    before, written = stage_sums(metrics_port), posts_written(metrics_port)
                    run = (closed_loop(address, users, args.page_size, 1, args.seconds, rng) if loop == "closed"
                           else open_loop(address, users, args.page_size, args.rate, args.seconds, rng))
                    row = summarize(loop, level, *asyncio.run(run), before, stage_sums(metrics_port))
                    row.update(variant=name, posts_written_during=posts_written(metrics_port) - written)
                    rows.append(row)
                    print(f"{name:8} {loop:6} {level:>5}  qps {row['qps']:6.1f}  p50 {row.get('p50_ms', 0):6.1f}  "
                          f"p95 {row.get('p95_ms', 0):6.1f}  p99 {row.get('p99_ms', 0):6.1f} ms  errors {row['errors']}  "
                          f"posts written meanwhile {row['posts_written_during']:.0f}", flush=True)
            finally:
                server.terminate()
                server.wait(timeout=120)
    result = {
        "benchmark": "generation_feed_latency",
        "config": args.config, "seconds": args.seconds, "rate": args.rate, "warm_users": args.warm_users,
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
        "rows": rows,
    }
    atomic_write_bytes(OUT, json.dumps(result, indent=2).encode())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
