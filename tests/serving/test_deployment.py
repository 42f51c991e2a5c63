"""A deployment on loopback, as an operator runs one across machines: two `feed serve` instances
(their own ports and event logs), one `feed serve-generation` on TCP, and a real Redis as the post
store. A post written through one instance is served by the other; with the generation service
killed both keep feeding (no new posts, no errors) until it is back, and posts with it; with Redis
killed the feeds go on without posts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.client import wait_ready
from tests.conftest import RedisServer

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], stderr: Path, ready: str) -> tuple[subprocess.Popen, str]:
    with stderr.open("w") as err:
        process = subprocess.Popen([sys.executable, "-m", "feedcli", *args], cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=err, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = process.stdout.readline()
    assert line.startswith(ready), stderr.read_text()[-3000:]
    return process, line.split()[1]


def _feed(stub, user_id: str) -> list:
    response = stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user_id, page_size=10), timeout=30)
    assert len(response.items) == 10
    return [i for i in response.items if i.content_type == "generated"]


def _eventually(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def test_two_feed_servers_one_generation_service_and_redis(trained_engine, llm_cache_dir, tmp_path):
    redis_server = RedisServer().start()
    generation_port = _free_port()
    config = tmp_path / "serve.toml"
    config.write_text(
        f"artifacts_dir = '{trained_engine.artifacts_dir}'\n"
        "[serving]\nreload_interval_s = 0\n[serving.blend]\ntype_shares = { generated = 0.2 }\n"
        f"[generation]\nenabled = true\ncache_dir = '{llm_cache_dir}'\nservice = '127.0.0.1:{generation_port}'\n"
        f"store = '{redis_server.url}'\nmax_new_tokens = 8\nnum_candidates = 1\nmax_tries = 0\nwarm_users = 0\n")
    configs = []
    for name in ("a", "b"):  # each instance its own event log
        path = tmp_path / f"{name}.toml"
        path.write_text(config.read_text().replace("[serving]\n", f"[serving]\nevent_log_dir = '{tmp_path / name}'\n"))
        configs.append(path)
    logs = {name: tmp_path / f"{name}.log" for name in ("generation", "a", "b")}
    generation_args = ["serve-generation", "--config", str(config), "--address", f"127.0.0.1:{generation_port}"]
    processes: list[subprocess.Popen] = []
    channels = []
    try:
        generation, _ = _start(generation_args, logs["generation"], "GENERATION_SERVER_READY")
        processes.append(generation)
        addresses = []
        for name, path in zip(("a", "b"), configs, strict=True):
            server, address = _start(["serve", "--config", str(path), "--port", "0"], logs[name], "FEED_SERVER_READY")
            processes.append(server)
            addresses.append(address)
        assert len(set(addresses)) == 2
        channels = [grpc.insecure_channel(address) for address in addresses]
        for channel in channels:
            wait_ready(channel)
        a, b = (feed_pb2_grpc.FeedServiceStub(channel) for channel in channels)

        # A post written through a is served by b.
        chunks = list(a.StreamPost(feed_pb2.StreamPostRequest(user_id="1", max_new_tokens=8), timeout=180))
        assert chunks[-1].done
        assert [i.item_id for i in _feed(b, "1")] == [chunks[-1].post_id]

        # The generation service killed: both feed, no new posts, no errors.
        generation.kill()
        generation.wait()
        for stub in (a, b):
            for user in ("5", "7", "9"):
                assert _feed(stub, user) == []
        try:
            list(b.StreamPost(feed_pb2.StreamPostRequest(user_id="5", max_new_tokens=8), timeout=60))
            raise AssertionError("StreamPost without a generation service")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
        # Back: the users asked for meanwhile get posts, written through either instance, served by both.
        generation, _ = _start(generation_args, tmp_path / "generation-2.log", "GENERATION_SERVER_READY")
        processes[0] = generation
        _eventually(lambda: all(_feed(stub, "7") for stub in (a, b)), 240, "no post for user 7 after the restart")

        # Redis killed: the feeds go on without posts (and without waiting for it).
        redis_server.kill()
        for stub in (a, b):
            for user in ("1", "7", "11"):
                start = time.monotonic()
                assert _feed(stub, user) == []
                assert time.monotonic() - start < 10
    finally:
        for channel in channels:
            channel.close()
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=120) for process in processes]
        redis_server.kill()
    assert codes == [0, 0, 0], {name: log.read_text()[-2000:] for name, log in logs.items()}
    for log in [*logs.values(), tmp_path / "generation-2.log"]:
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
