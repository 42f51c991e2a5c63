"""Faults against real `feed serve` processes, and what each one did.

    .venv/bin/python benchmarks/serving_faults.py [--config configs/demo.toml] [--only a,b,c,d,e]

Every fault runs on a private copy of the config's artifacts (the demo's by default; `make demo`
writes them) in a temporary directory, with a config that points there and polls for new
artifacts every 0.5 s (`reload_interval_s`) and without the background post generator
(`[generation] enabled = false`), so nothing here touches the real artifacts:

a. kill -9 while several clients stream LogEvents; restart on the same event log. Every event
   the server acknowledged must be found (0 lost); every file of the log must read (the write-ahead
   segments the killed process left, then the Parquet files the restarted one converted them to).
b. a corrupt ranker checkpoint (truncated, and garbled in the middle) and a truncated index shard
   at startup: the exit code and the message; then a truncated checkpoint landing while the server
   runs: the old model must keep serving and the health service report
   `feed.v1.FeedService/reload` NOT_SERVING; the good checkpoint written back must recover it.
c. the index rebuilt (`feed index build`, the real job) twice under a closed-loop GetFeed load:
   errors during the swaps (expected 0), reloads the server logged, latency against the same load
   without swaps, in the same run.
d. malformed and oversized requests: the status codes and messages clients get.
e. 1,000 concurrent LogEvents streams, then 1,000 concurrent GetFeed calls, from one grpc.aio
   client over 10 channels: how many succeed, status codes, latency, the server's RSS.

Every load is bounded in count and time. Prints a table; writes
benchmarks/results/serving_faults.json (atomically).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import polars as pl
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_load import closed_loop, open_channels, start_server

from feedcore.config import load_config
from feedcore.events import read_event_log, read_segment
from feedcore.io import atomic_path, atomic_write_bytes
from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from feedcore.schemas import CanonicalDataset
from serving.cursors import encode_cursor
from serving.server import SERVICE_NAME

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results" / "serving_faults.json"
RELOAD_HEALTH = f"{SERVICE_NAME}/reload"
STATUS = health_pb2.HealthCheckResponse.ServingStatus


class Sandbox:
    """A private copy of the artifacts (without their event log) and a config that points at it."""

    def __init__(self, config_path: str, root: Path, name: str, serving: str = "") -> None:
        engine = load_config(config_path)
        self.dir = root / name
        shutil.copytree(engine.artifacts_dir, self.dir, ignore=shutil.ignore_patterns("event_log", "llm"))
        text = Path(config_path).read_text()
        text = re.sub(r'(?m)^artifacts_dir\s*=.*$', f'artifacts_dir = "{self.dir}"', text)
        text = re.sub(r'(?m)^\[serving\]\s*$', "[serving]\nreload_interval_s = 0.5\n" + serving, text)
        text = re.sub(r'(?m)^enabled\s*=\s*true', "enabled = false", text)  # no background post writer
        self.config = str(root / f"{name}.toml")
        Path(self.config).write_text(text)
        self.engine = load_config(self.config)


def health(address: str, service: str) -> str:
    with grpc.insecure_channel(address) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                               timeout=5).status
            return STATUS.Name(status)
        except grpc.RpcError as e:
            return e.code().name


def stop(server: subprocess.Popen) -> int:
    """SIGTERM (graceful: drains, flushes the event log into Parquet); SIGKILL if it hangs."""
    if server.poll() is None:
        server.terminate()
        try:
            return server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    return server.wait()


def serve_refused(config: str, root: Path) -> dict:
    """Start `feed serve` on artifacts that should not load: its exit code and last error line
    (or, if it starts after all, that it did; it is then stopped)."""
    with tempfile.TemporaryFile("w+", dir=root) as err:
        server = subprocess.Popen([sys.executable, "-m", "feedcli", "serve", "--config", config, "--port", "0"],
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
        started = server.stdout.readline().startswith("FEED_SERVER_READY")  # "" when it exits first
        code = stop(server) if started else server.wait(timeout=60)
        err.seek(0)
        lines = err.read().strip().splitlines()
    errors = [line for line in lines if line.startswith("feed: error:")]
    return {"exit_code": code, "started": started, "message": errors[-1] if errors else (lines or [""])[-1]}


def event(user: str, item: str, request_id: str, position: int) -> feed_pb2.Event:
    return feed_pb2.Event(user_id=user, item_id=item, content_type="movie", event="impression",
                          request_id=request_id, position=position)


def read_every_log_file(directory: Path) -> dict:
    """Read each segment and Parquet file of an event log on its own: rows, dropped lines, errors."""
    files = {}
    for path in sorted(directory.iterdir()):
        try:
            if path.suffix == ".jsonl":
                records, dropped = read_segment(path)
                files[path.name] = {"rows": len(records), "dropped_lines": dropped}
            elif path.suffix == ".parquet":
                files[path.name] = {"rows": pl.read_parquet(path).height}
            else:
                files[path.name] = {"unexpected": True}
        except Exception as e:  # noqa: BLE001 (a file that does not read is the finding)
            files[path.name] = {"error": repr(e)}
    return files


# -- a. kill -9 during LogEvents -------------------------------------------------------------------
def fault_kill_during_log_events(sandbox: Sandbox, items: list[str], clients: int = 8,
                                 stream_events: int = 20, stream_seconds: float = 4.0) -> dict:
    server, address, _ = start_server(sandbox.config)
    acked: dict[str, int] = {}  # request id of a stream → events the server acknowledged
    sent: set[str] = set()
    failures: Counter = Counter()
    lock = threading.Lock()
    deadline = time.time() + 30  # bounded even if the kill never lands

    def client(c: int) -> None:
        rng = np.random.default_rng(c)
        with grpc.insecure_channel(address) as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            n = 0
            while time.time() < deadline:
                request_id = f"fault-a-{c}-{n}"
                batch = [event(f"u{c}", items[rng.integers(len(items))], request_id, p) for p in range(stream_events)]
                with lock:
                    sent.add(request_id)
                try:
                    ack = stub.LogEvents(iter(batch), metadata=[("x-api-key", "demo-key")], timeout=10)
                except grpc.RpcError as e:
                    with lock:
                        failures[e.code().name] += 1
                    return  # the server is gone
                with lock:
                    acked[request_id] = ack.accepted
                n += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    time.sleep(stream_seconds)
    server.kill()  # SIGKILL: no drain, no flush, no conversion
    server.wait()
    for t in threads:
        t.join(timeout=30)
    log_dir = sandbox.engine.event_log_dir
    after_kill = read_every_log_file(log_dir)

    log: list[str] = []
    server, address, _ = start_server(sandbox.config, log)
    try:
        with grpc.insecure_channel(address) as channel:  # the restarted server takes writes again
            ack = feed_pb2_grpc.FeedServiceStub(channel).LogEvents(
                iter([event("u-after", items[0], "fault-a-after", 0)]), metadata=[("x-api-key", "demo-key")],
                timeout=10)
        after_restart_seq = ack.last_seq
    finally:
        code = stop(server)
    after_stop = read_every_log_file(log_dir)
    logged = read_event_log(log_dir)
    found = Counter(logged["request_id"].to_list())
    acked_events = sum(acked.values())
    lost = sum(max(0, n - found.get(r, 0)) for r, n in acked.items())
    unacked_logged = sum(found.get(r, 0) for r in sent - set(acked))
    return {
        "clients": clients, "events_per_stream": stream_events, "streamed_seconds_before_kill": stream_seconds,
        "streams_acknowledged": len(acked), "events_acknowledged": acked_events,
        "events_acknowledged_found_after_restart": acked_events - lost, "events_lost": lost,
        "unacknowledged_streams": len(sent - set(acked)), "unacknowledged_events_found": unacked_logged,
        "duplicate_seqs": int(logged.height - logged["seq"].n_unique()),
        "client_errors_at_kill": dict(failures),
        "log_files_after_kill": after_kill, "log_files_after_restart_and_stop": after_stop,
        "every_file_reads": all("error" not in f for f in (*after_kill.values(), *after_stop.values())),
        "recovery_log": [line for line in log if "event log" in line or "dropped" in line][:5],
        "restarted_last_seq": after_restart_seq, "restarted_exit_code": code,
    }


# -- b. corrupt artifacts --------------------------------------------------------------------------
def fault_corrupt_artifacts(root: Path, config_path: str) -> dict:
    results = {}
    rng = np.random.default_rng(0)
    startup = Sandbox(config_path, root, "b-startup")
    ranker = startup.engine.ranker_path
    good = ranker.read_bytes()
    ranker.write_bytes(good[: len(good) // 2])
    results["startup_ranker_truncated"] = serve_refused(startup.config, root)
    garbled = bytearray(good)
    middle = len(garbled) // 2
    garbled[middle : middle + 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    ranker.write_bytes(bytes(garbled))
    results["startup_ranker_garbled_4KiB"] = serve_refused(startup.config, root)
    ranker.write_bytes(good)
    shard = startup.engine.index_dir / "shard-0.faiss"
    shard_bytes = shard.read_bytes()
    shard.write_bytes(shard_bytes[: len(shard_bytes) // 3])
    results["startup_index_shard_truncated"] = serve_refused(startup.config, root)
    shard.write_bytes(shard_bytes)

    live = Sandbox(config_path, root, "b-reload")
    log: list[str] = []
    server, address, _ = start_server(live.config, log)
    try:
        with grpc.insecure_channel(address) as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)

            def feed() -> str:
                return stub.GetFeed(feed_pb2.GetFeedRequest(user_id="1", page_size=10), timeout=10).model_version

            before = feed()
            health_before = health(address, RELOAD_HEALTH)
            atomic_write_bytes(live.engine.ranker_path, good[: len(good) // 2])  # a finished but corrupt write
            written = time.perf_counter()
            versions, errors, reported_s = Counter(), Counter(), None
            while time.perf_counter() - written < 30:
                try:
                    versions[feed()] += 1
                except grpc.RpcError as e:
                    errors[e.code().name] += 1
                if reported_s is None and health(address, RELOAD_HEALTH) == "NOT_SERVING":
                    reported_s = time.perf_counter() - written
                if reported_s is not None and time.perf_counter() - written > reported_s + 2:
                    break  # two more seconds of traffic on the old model after the report
            atomic_write_bytes(live.engine.ranker_path, good)  # the good model back
            recovered_s = None
            while time.perf_counter() - written < 60 and recovered_s is None:
                if health(address, RELOAD_HEALTH) == "SERVING":
                    recovered_s = time.perf_counter() - written
                time.sleep(0.1)
            after = feed()
    finally:
        code = stop(server)
    results["reload_ranker_truncated"] = {
        "model_before": before, "reload_health_before": health_before,
        "reload_not_serving_after_s": reported_s, "getfeed_during": dict(versions), "getfeed_errors": dict(errors),
        "old_model_kept": set(versions) == {before}, "server_log": [line for line in log if "reload:" in line][:4],
        "good_model_written_back_serving_after_s": recovered_s, "model_after_recovery": after,
        "server_exit_code": code,
    }
    return results


# -- c. index swap under load ----------------------------------------------------------------------
def fault_index_swap_under_load(sandbox: Sandbox, users: list[str], rebuilds: int = 2,
                                concurrency: int = 4, baseline_s: float = 15, load_s: float = 60) -> dict:
    log: list[str] = []
    server, address, _ = start_server(sandbox.config, log)
    builds = []
    try:
        asyncio.run(closed_loop(address, users, 20, 2, 3, np.random.default_rng(1)))  # warm-up
        base = asyncio.run(closed_loop(address, users, 20, concurrency, baseline_s, np.random.default_rng(2)))

        def rebuild() -> None:
            time.sleep(2)
            for _ in range(rebuilds):
                start = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "feedcli", "index", "build", "--config",
                                       sandbox.config], cwd=REPO, capture_output=True, text=True, timeout=load_s)
                builds.append({"exit_code": done.returncode, "seconds": time.perf_counter() - start,
                               "at_s": start - started})
                time.sleep(3)  # let the reloader pick it up under load

        started = time.perf_counter()
        builder = threading.Thread(target=rebuild)
        builder.start()
        swap = asyncio.run(closed_loop(address, users, 20, concurrency, load_s, np.random.default_rng(3)))
        builder.join(timeout=load_s)
        reload_health = health(address, RELOAD_HEALTH)
    finally:
        code = stop(server)

    def row(result) -> dict:
        latencies, errors, elapsed = result
        ms = np.asarray(latencies) * 1000
        return {"ok": len(ms), "errors": dict(errors), "qps": len(ms) / elapsed,
                **{f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 99)}, "max_ms": float(ms.max())}

    return {
        "concurrency": concurrency, "index_builds": builds,
        "reloads": sum("reload: now serving" in line for line in log),
        "failed_reloads": sum("reload: new artifacts do not load" in line for line in log),
        "failed_reload_messages": [line.split("reload: ", 1)[1][:300] for line in log
                                   if "reload: new artifacts do not load" in line][:3],
        "reload_health_at_end": reload_health, "without_swaps": row(base), "with_swaps": row(swap),
        "server_exit_code": code,
    }


# -- d. malformed and oversized requests -----------------------------------------------------------
def fault_bad_requests(address: str, max_events: int) -> list[dict]:
    key = [("x-api-key", "demo-key")]
    ok = event("1", "1", "fault-d", 0)
    cases = [
        ("GetFeed page_size 0", "GetFeed", dict(user_id="1", page_size=0), None),
        ("GetFeed page_size 2^31-1", "GetFeed", dict(user_id="1", page_size=2**31 - 1), None),
        ("GetFeed page_size -5", "GetFeed", dict(user_id="1", page_size=-5), None),
        ("GetFeed missing user_id", "GetFeed", dict(page_size=10), None),
        ("GetFeed garbage cursor", "GetFeed", dict(user_id="1", page_size=10, cursor="%%%not-a-cursor"), None),
        ("GetFeed another user's cursor", "GetFeed", dict(user_id="1", page_size=10,
                                                            cursor=encode_cursor("2", 10, "x")), None),
        ("GetFeed unknown experiment arm", "GetFeed", dict(user_id="1", page_size=10,
                                                            experiment_overrides={"none": "no-such-arm"}), None),
        ("GetFeed 5 MiB experiment_overrides (> max_request_bytes)", "GetFeed",
         dict(user_id="1", page_size=10, experiment_overrides={"blob": "x" * (5 << 20)}), None),
        ('GetFeed cursor b64 {"o":1e400}', "GetFeed", dict(user_id="1", page_size=10, cursor=_b64('{"o":1e400}')),
         None),
        ("GetFeed cursor b64 Infinity", "GetFeed",
         dict(user_id="1", page_size=10, cursor=_b64('{"u":"1","o":0,"v":"x","t":Infinity}')), None),
        ('GetFeed cursor b64 "[" x 983', "GetFeed", dict(user_id="1", page_size=10, cursor=_b64("[" * 983)), None),
        ("GetFeed 300-byte user_id", "GetFeed", dict(user_id="u" * 300, page_size=10), None),
        ("GetFeed 16 KiB user_id", "GetFeed", dict(user_id="u" * (16 << 10), page_size=10), None),
        ("GetFeed user_id with NUL", "GetFeed", dict(user_id="1\x00", page_size=10), None),
        ("GetFeed unparsable body (c5 30 69)", "GetFeed", b"\xc50i", None),
        ("LogEvents unparsable message (c5 30 69)", "LogEvents", b"\xc50i", key),
        ("LogEvents ts_ms 2^63-1", "LogEvents",
         [feed_pb2.Event(user_id="1", item_id="1", event="click", ts_ms=2**63 - 1)], key),
        ("LogEvents NUL in item_id", "LogEvents", [feed_pb2.Event(user_id="1", item_id="1\x00", event="click")], key),
        ('LogEvents content_type "banana"', "LogEvents",
         [feed_pb2.Event(user_id="1", item_id="1", content_type="banana", event="click")], key),
        ("LogEvents without API key", "LogEvents", [ok], []),
        ("LogEvents wrong API key", "LogEvents", [ok], [("x-api-key", "wrong")]),
        ("LogEvents unknown event type", "LogEvents",
         [feed_pb2.Event(user_id="1", item_id="1", content_type="movie", event="purchase")], key),
        ("LogEvents negative value", "LogEvents",
         [feed_pb2.Event(user_id="1", item_id="1", content_type="movie", event="click", value=-1)], key),
        ("LogEvents missing item_id", "LogEvents", [feed_pb2.Event(user_id="1", event="click")], key),
        (f"LogEvents {max_events + 1} events in one stream", "LogEvents", [ok] * (max_events + 1), key),
        ("LogEvents one 5 MiB event", "LogEvents",
         [feed_pb2.Event(user_id="1", item_id="x" * (5 << 20), content_type="movie", event="click")], key),
    ]
    rows = []
    with grpc.insecure_channel(address) as channel:
        stub = feed_pb2_grpc.FeedServiceStub(channel)
        raw = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
        for name, method, payload, metadata in cases:
            try:
                if isinstance(payload, bytes) and method == "GetFeed":
                    channel.unary_unary("/feed.v1.FeedService/GetFeed", **raw)(payload, timeout=10)
                elif isinstance(payload, bytes):
                    channel.stream_unary("/feed.v1.FeedService/LogEvents", **raw)(iter([payload]), metadata=metadata,
                                                                                  timeout=10)
                elif method == "GetFeed":
                    stub.GetFeed(feed_pb2.GetFeedRequest(**payload), timeout=10)
                else:
                    stub.LogEvents(iter(payload), metadata=metadata, timeout=30)
                rows.append({"case": name, "code": "OK", "message": ""})
            except grpc.RpcError as e:
                rows.append({"case": name, "code": e.code().name, "message": e.details()})
            except (ValueError, TypeError) as e:  # refused by the client library before sending
                rows.append({"case": name, "code": "CLIENT_SIDE", "message": repr(e)})
        rows.append({"case": "server still serving afterwards", "code": health(address, ""), "message": ""})
    return rows


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


# -- e. 1,000 concurrent calls ---------------------------------------------------------------------
def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def concurrent_calls(address: str, n: int, kind: str, users: list[str], items: list[str],
                           channels: int = 10, timeout: float = 60) -> dict:
    chans = open_channels(address, channels)
    stubs = [feed_pb2_grpc.FeedServiceStub(c) for c in chans]
    latencies, refused, codes, acked = [], [], Counter(), 0

    async def one(i: int) -> None:
        nonlocal acked
        start = time.perf_counter()
        stub = stubs[i % channels]
        try:
            if kind == "LogEvents":
                batch = [event(users[i % len(users)], items[(i * 10 + p) % len(items)], f"fault-e-{i}", p)
                         for p in range(10)]
                ack = await stub.LogEvents(iter(batch), metadata=[("x-api-key", "demo-key")], timeout=timeout)
                acked += ack.accepted
            else:
                await stub.GetFeed(feed_pb2.GetFeedRequest(user_id=users[i % len(users)], page_size=20),
                                   timeout=timeout)
            codes["OK"] += 1
            latencies.append(time.perf_counter() - start)
        except grpc.aio.AioRpcError as e:
            codes[e.code().name] += 1
            if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # shed at once, with a retry hint
                refused.append(time.perf_counter() - start)

    try:
        for c in chans:
            await asyncio.wait_for(c.channel_ready(), 30)
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - start
    finally:
        for c in chans:
            await c.close()
    ms = np.asarray(latencies) * 1000
    return {"calls": n, "channels": channels, "codes": dict(codes), "seconds": elapsed,
            "events_acknowledged": acked if kind == "LogEvents" else None,
            **({f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 99)} if len(ms) else {}),
            "max_ms": float(ms.max()) if len(ms) else None,
            **({"refused_p50_ms": float(np.percentile(refused, 50) * 1000),
                "refused_max_ms": float(max(refused) * 1000)} if refused else {})}


def fault_many_concurrent(address: str, pid: int, users: list[str], items: list[str], log_dir: Path,
                          n: int = 1000) -> dict:
    peak, stop_sampling = [rss_mib(pid)], threading.Event()

    def sample() -> None:
        while not stop_sampling.wait(0.05):
            peak.append(rss_mib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    results = {"server_rss_mib_before": peak[0]}
    sampler.start()
    try:
        for kind in ("LogEvents", "GetFeed"):
            results[kind] = asyncio.run(concurrent_calls(address, n, kind, users, items))
            results[kind]["server_rss_mib_peak_sampled"] = max(peak)
    finally:
        stop_sampling.set()
        sampler.join()
    results["server_rss_mib_high_water"] = rss_mib(pid, "VmHWM")
    results["server_still_serving"] = health(address, "")
    results["server_log_events_found"] = int(read_event_log(log_dir)["request_id"]
                                             .str.starts_with("fault-e-").sum())
    return results


# -- report ----------------------------------------------------------------------------------------
def summary_rows(report: dict) -> list[tuple[str, str]]:
    rows = []
    if a := report.get("a_kill9_during_log_events"):
        rows.append(("a kill -9 during LogEvents",
                     f"{a['events_acknowledged']} acked, {a['events_acknowledged_found_after_restart']} found, "
                     f"{a['events_lost']} lost; files read: {a['every_file_reads']}"))
    if b := report.get("b_corrupt_artifacts"):
        for name in ("startup_ranker_truncated", "startup_ranker_garbled_4KiB", "startup_index_shard_truncated"):
            r = b[name]
            rows.append((f"b {name}", f"exit {r['exit_code']}: {str(r['message'])[:90]}"))
        r = b["reload_ranker_truncated"]
        rows.append(("b corrupt ranker on hot reload",
                     f"old kept: {r['old_model_kept']}, reload NOT_SERVING after {r['reload_not_serving_after_s']}"
                     f" s, errors {r['getfeed_errors']}, recovered after {r['good_model_written_back_serving_after_s']}"))
    if c := report.get("c_index_swap_under_load"):
        rows.append(("c index swap under load",
                     f"{c['reloads']} reloads ({c['failed_reloads']} failed), errors {c['with_swaps']['errors']}, "
                     f"p99 {c['with_swaps']['p99_ms']:.0f} ms vs {c['without_swaps']['p99_ms']:.0f} ms without"))
    for r in report.get("d_bad_requests", []):
        rows.append((f"d {r['case']}", f"{r['code']}: {r['message'][:90]}"))
    for key, label in (("e_1000_concurrent", ""), ("e_1000_concurrent_unbounded_queue", " (unbounded queue)")):
        if key not in report:
            continue
        for kind in ("LogEvents", "GetFeed"):
            r = report[key][kind]
            rows.append((f"e 1,000 concurrent {kind}{label}",
                         f"{r['codes']} p50 {r.get('p50_ms', 0):.0f} ms p99 {r.get('p99_ms', 0):.0f} ms "
                         f"in {r['seconds']:.1f} s; RSS peak {r['server_rss_mib_peak_sampled']:.0f} MiB"
                         + (f"; refused in {r['refused_p50_ms']:.0f} ms (max {r['refused_max_ms']:.0f})"
                            if "refused_p50_ms" in r else "")))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/demo.toml")
    parser.add_argument("--only", default="a,b,c,d,e", help="which faults to run (comma-separated letters)")
    args = parser.parse_args()
    only = set(args.only.split(","))
    engine = load_config(args.config)
    data = CanonicalDataset.read(engine.prepared_dir)
    users, items = data.users["user_id"].to_list(), data.items["item_id"].to_list()
    report = {"benchmark": "serving_faults", "protocol": __doc__.strip(), "config": args.config,
              "machine": platform.machine(), "cpus": os.cpu_count(),
              "note": "2 cores shared with other engineers' jobs while this ran: latencies are noisy",
              "note_e": "e's INTERNAL 'Internal error from Core' on a refused LogEvents stream is the grpc.aio "
                        "client's (grpc/grpc#36066): it reports INTERNAL when the server ends a client stream "
                        "before the client half-closes; the server sent RESOURCE_EXHAUSTED (its metrics count no "
                        "INTERNAL), and the sync client reports that"}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="serving-faults-") as tmp:
        root = Path(tmp)
        if "a" in only:
            report["a_kill9_during_log_events"] = fault_kill_during_log_events(Sandbox(args.config, root, "a"), items)
            print(json.dumps(report["a_kill9_during_log_events"])[:400], flush=True)
        if "b" in only:
            report["b_corrupt_artifacts"] = fault_corrupt_artifacts(root, args.config)
            print(json.dumps(report["b_corrupt_artifacts"])[:400], flush=True)
        if "c" in only:
            report["c_index_swap_under_load"] = fault_index_swap_under_load(Sandbox(args.config, root, "c"), users)
            print(json.dumps(report["c_index_swap_under_load"])[:400], flush=True)
        if only & {"d", "e"}:
            sandbox = Sandbox(args.config, root, "de")
            server, address, _ = start_server(sandbox.config)
            try:
                if "d" in only:
                    report["d_bad_requests"] = fault_bad_requests(address, sandbox.engine.serving.max_events_per_stream)
                if "e" in only:
                    report["e_1000_concurrent"] = fault_many_concurrent(address, server.pid, users, items,
                                                                        sandbox.engine.event_log_dir)
            finally:
                stop(server)
        if "e" in only:  # the same load on an unbounded queue (what the server did before admission control)
            sandbox = Sandbox(args.config, root, "e-unbounded", serving="max_queued_feeds = -1\nmax_workers = 1000\n")
            server, address, _ = start_server(sandbox.config)
            try:
                report["e_1000_concurrent_unbounded_queue"] = fault_many_concurrent(
                    address, server.pid, users, items, sandbox.engine.event_log_dir)
            finally:
                stop(server)
    report["seconds"] = time.time() - started
    rows = summary_rows(report)
    width = max(len(r[0]) for r in rows)
    for name, what in rows:
        print(f"{name:<{width}}  {what}")
    if OUT.exists():  # a run of some faults (--only) keeps the others' last figures
        report = {**json.loads(OUT.read_text()), **report}
    with atomic_path(OUT) as tmp_out:
        tmp_out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
