"""`feed serve` stops on SIGTERM whatever its clients did, and at once on a second one: a real
server process, as an operator runs it (issue 18: ten LogEvents streams carrying an unparsable
message used to leave `server.stop(grace).wait()` hanging for ever)."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

from feedcore.events import read_event_log
from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.client import wait_ready

REPO = Path(__file__).resolve().parents[2]
KEY = "k"


@pytest.fixture
def server(trained_engine, tmp_path):
    """A `feed serve` process on a free port: (process, address, stderr path, event log dir)."""
    config, stderr, log_dir = tmp_path / "serve.toml", tmp_path / "server.log", tmp_path / "log"
    config.write_text(f"artifacts_dir = '{trained_engine.artifacts_dir}'\n[serving]\nevent_log_dir = '{log_dir}'\n"
                      f"api_keys = ['{KEY}']\nreload_interval_s = 0\n")
    with stderr.open("w") as err:
        process = subprocess.Popen([sys.executable, "-m", "feedcli", "serve", "--config", str(config),
                                    "--port", "0"], cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        ready = process.stdout.readline()
        assert ready.startswith("FEED_SERVER_READY"), (ready, stderr.read_text()[-2000:])
        yield process, ready.split()[-1], stderr, log_dir
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _unparsable_streams(address: str, n: int) -> list[grpc.StatusCode]:
    codes = []
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_unary("/feed.v1.FeedService/LogEvents", request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)
        for _ in range(n):
            try:
                call(iter([b"\xc50i"]), metadata=[("x-api-key", KEY)], timeout=30)
            except grpc.RpcError as e:
                codes.append(e.code())
    return codes


def test_sigterm_after_unparsable_streams_drains_closes_the_log_and_exits(server):
    process, address, stderr, log_dir = server
    with grpc.insecure_channel(address) as channel:
        wait_ready(channel)
        ack = feed_pb2_grpc.FeedServiceStub(channel).LogEvents(
            iter([feed_pb2.Event(user_id="1", item_id="1", event="click", event_id="a")]),
            metadata=[("x-api-key", KEY)], timeout=30)
        assert ack.accepted == 1
    assert _unparsable_streams(address, 10) == [grpc.StatusCode.INVALID_ARGUMENT] * 10
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    log = stderr.read_text()
    assert "draining" in log and "stopped" in log
    assert "Traceback" not in log and "terminate called" not in log
    assert not list(log_dir.glob("wal-*.jsonl"))  # the log was closed: every segment is Parquet
    assert read_event_log(log_dir)["event_id"].to_list() == ["a"]


def test_a_second_sigterm_exits_at_once(server):
    process, address, stderr, _ = server
    release = threading.Event()

    def held_open():  # a stream the drain waits for (its grace period)
        release.wait(60)
        yield feed_pb2.Event(user_id="1", item_id="1", event="click")

    with grpc.insecure_channel(address) as channel:
        wait_ready(channel)
        pending = feed_pb2_grpc.FeedServiceStub(channel).LogEvents.future(
            held_open(), metadata=[("x-api-key", KEY)], timeout=60)
        process.send_signal(signal.SIGTERM)
        while "draining" not in stderr.read_text():
            assert process.poll() is None
            threading.Event().wait(0.05)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        release.set()
        pending.cancel()
    assert code == 128 + signal.SIGTERM
    assert "again: exiting now" in stderr.read_text()
