"""The durable event log and LogEvents: acknowledged events survive kill -9; bad input loses nothing."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import polars as pl
import pytest

from feedcore.events import read_event_log, read_segment
from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.event_log import EventLog

REPO = Path(__file__).resolve().parents[2]
KEY = "test-key"


def _event(i: int, user: str = "u1") -> dict:
    return {"user_id": user, "item_id": f"item{i}", "content_type": "movie", "ts": 1_700_000_000_000 + i,
            "event": "click", "value": None, "request_id": "r1", "position": i, "surface": "home",
            "experiment_arm": "default", "source": "ann"}


def test_appended_events_are_read_back_in_order_and_rotate_into_parquet(tmp_path):
    log = EventLog(tmp_path, segment_bytes=2_000)
    last = [log.append([_event(i), _event(i + 100)]) for i in range(20)]
    assert last == list(range(2, 41, 2))
    assert list(tmp_path.glob("events-*.parquet"))  # segments past 2 kB were rotated
    log.close()
    assert not list(tmp_path.glob("wal-*.jsonl"))  # close converts the open segment too
    events = read_event_log(tmp_path)
    assert events["seq"].to_list() == list(range(1, 41))
    assert events["item_id"].to_list()[:4] == ["item0", "item100", "item1", "item101"]
    assert events.schema["ts"] == pl.Int64 and events.schema["position"] == pl.Int32
    reopened = EventLog(tmp_path)  # sequence numbers continue after a restart
    assert reopened.append([_event(0)]) == 41
    reopened.close()


def test_a_launchers_directory_reads_as_its_own_log_then_each_process_log_in_order(tmp_path):
    """`feed serve --processes N` logs to <dir>/process-<i>: reading <dir> gives them all (a log
    the directory held itself first), each in its seq order; other subdirectories are not logs."""
    for directory, items in ((tmp_path, [0]), (tmp_path / "process-10", [3]), (tmp_path / "process-2", [1, 2])):
        directory.mkdir(exist_ok=True)
        log = EventLog(directory)
        log.append([_event(i) for i in items])
        log.close()
    (tmp_path / "process-x").mkdir()
    events = read_event_log(tmp_path)
    assert events["item_id"].to_list() == ["item0", "item1", "item2", "item3"]  # process-2 before process-10
    assert events["seq"].to_list() == [1, 1, 2, 1]  # numbered per log


def test_recovery_drops_torn_and_corrupt_lines_that_were_never_acknowledged(tmp_path):
    log = EventLog(tmp_path)
    log.append([_event(i) for i in range(5)])
    segment = next(tmp_path.glob("wal-*.jsonl"))
    lines = segment.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"item1", b"itemX")  # a flipped byte: the checksum no longer matches
    segment.write_bytes(b"\n".join(lines[:5]) + b"\n" + b'0badc0de {"user_id": "u1", "item')  # torn tail
    assert [r["item_id"] for r in read_segment(segment)[0]] == ["item0", "item2", "item3", "item4"]
    log._lock_file.close()  # as after a crash: the kernel drops a dead process's lock, nothing is closed
    recovered = EventLog(tmp_path)
    assert recovered.dropped_at_recovery == 2
    assert read_event_log(tmp_path)["item_id"].to_list() == ["item0", "item2", "item3", "item4"]
    recovered.close()


def test_a_second_writer_on_one_directory_is_refused(tmp_path):
    """Two server processes on one event log would number and convert each other's segments."""
    from feedcore.errors import ArtifactError

    log = EventLog(tmp_path)
    log.append([_event(0)])
    with pytest.raises(ArtifactError, match=rf"{tmp_path}: the event log is open in process {os.getpid()}"):
        EventLog(tmp_path)
    log.close()
    reopened = EventLog(tmp_path)  # free again once closed
    assert reopened.append([_event(1)]) == 2
    reopened.close()


def test_concurrent_appends_share_fsyncs_and_lose_nothing(tmp_path, monkeypatch):
    syncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (syncs.append(fd), real_fsync(fd)))
    log = EventLog(tmp_path)
    threads = [threading.Thread(target=lambda t=t: [log.append([_event(i, f"t{t}")]) for i in range(50)])
               for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(syncs) <= 400  # never more than one fsync per append, usually fewer
    log.close()
    events = read_event_log(tmp_path)
    assert events["seq"].to_list() == list(range(1, 401))
    assert events.group_by("user_id").len()["len"].to_list() == [50] * 8


@pytest.fixture(scope="module")
def logging_server(trained_engine, tmp_path_factory):
    import dataclasses

    from serving.pipeline import FeedPipeline
    from serving.server import create_server

    directory = tmp_path_factory.mktemp("event_log")
    serving = dataclasses.replace(trained_engine.serving, api_keys=(KEY,))
    log = EventLog(directory)
    running = create_server(serving, FeedPipeline.from_artifacts(trained_engine), log)
    server, port = running.server, running.port
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield feed_pb2_grpc.FeedServiceStub(channel), log, directory
    server.stop(0).wait()
    log.close()


def _wire(i: int, **overrides) -> feed_pb2.Event:
    fields = {"user_id": "1", "item_id": "1", "event": "click", "request_id": "r", "position": i, **overrides}
    return feed_pb2.Event(**fields)


def test_log_events_acknowledges_what_it_wrote(logging_server):
    stub, log, directory = logging_server
    before = read_event_log(directory).height
    events = [_wire(0), _wire(1, event="dwell", value=12.5), _wire(2, event="follow", item_id="new-account",
                                                                        content_type="account")]
    response = stub.LogEvents(iter(events), metadata=[("x-api-key", KEY)], timeout=30)
    assert response.accepted == 3 and dict(response.by_event) == {"click": 1, "dwell": 1, "follow": 1}
    logged = read_event_log(directory).slice(before)
    assert logged["event"].to_list() == ["click", "dwell", "follow"]
    assert logged["content_type"].to_list() == ["movie", "movie", "account"]  # looked up in the catalogue
    assert logged["value"].to_list() == [None, 12.5, None]
    assert logged["seq"].to_list()[-1] == response.last_seq


@pytest.mark.parametrize("metadata, message", [
    ([], "needs an API key"),
    ([("x-api-key", "wrong")], "not valid"),
])
def test_log_events_needs_a_valid_api_key(logging_server, metadata, message):
    stub, _, _ = logging_server
    with pytest.raises(grpc.RpcError) as err:
        stub.LogEvents(iter([_wire(0)]), metadata=metadata, timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and message in err.value.details()


@pytest.mark.parametrize("bad, message", [
    ({"event": "purchase"}, "events[1].event is 'purchase'"),
    ({"user_id": ""}, "events[1].user_id is required"),
    ({"event": "watch", "value": 0.0}, "events[1].value must be the watch time"),
    ({"item_id": "not-in-catalogue"}, "events[1].content_type is needed"),
    ({"position": -3}, "events[1].position is -3"),
])
def test_a_stream_with_a_bad_event_is_refused_whole(logging_server, bad, message):
    stub, _, directory = logging_server
    before = read_event_log(directory).height
    with pytest.raises(grpc.RpcError) as err:
        stub.LogEvents(iter([_wire(0), _wire(1, **bad), _wire(2)]), metadata=[("x-api-key", KEY)], timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
    assert read_event_log(directory).height == before  # nothing from that stream


def test_acknowledged_events_survive_kill_9(trained_engine, tmp_path):
    """A real server process logs streams from 4 clients and is killed with SIGKILL mid-traffic:
    every acknowledged event is in the log afterwards, and every file in it is readable."""
    log_dir = tmp_path / "log"
    config = tmp_path / "serve.toml"
    config.write_text(f"artifacts_dir = '{trained_engine.artifacts_dir}'\n[serving]\napi_keys = ['{KEY}']\n"
                      f"event_log_dir = '{log_dir}'\nevent_log_segment_mb = 0.05\n")
    server = subprocess.Popen([sys.executable, "-m", "feedcli", "serve", "--config", str(config), "--port", "0"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    try:
        line = server.stdout.readline()
        assert line.startswith("FEED_SERVER_READY"), server.stderr.read()
        address = line.split()[1]

        def client(c: int) -> None:
            with grpc.insecure_channel(address) as channel:
                stub = feed_pb2_grpc.FeedServiceStub(channel)
                for s in range(10_000):
                    if stop.is_set():
                        return
                    ids = [f"c{c}-s{s}-e{e}" for e in range(20)]
                    try:
                        stub.LogEvents(iter(_wire(e, request_id=i) for e, i in enumerate(ids)),
                                       metadata=[("x-api-key", KEY)], timeout=10)
                    except grpc.RpcError:
                        return  # the server died: this stream was not acknowledged
                    with lock:
                        acked.extend(ids)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
        for t in threads:
            t.start()
        while True:
            with lock:
                if len(acked) >= 3_000:
                    break
            assert server.poll() is None, server.stderr.read()
            threading.Event().wait(0.05)
        server.send_signal(signal.SIGKILL)  # mid-stream: no shutdown, no flush
        server.wait(timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    with lock:
        acknowledged = set(acked)
    assert list(log_dir.glob("events-*.parquet"))  # it rotated while running
    recovered = EventLog(log_dir)  # what the next server start does: convert what the dead one left
    recovered.close()
    assert not list(log_dir.glob("wal-*.jsonl")) and not list(log_dir.glob(".*"))
    logged = read_event_log(log_dir)  # every Parquet file reads back whole
    missing = acknowledged - set(logged["request_id"].to_list())
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:3]}"
    assert logged["seq"].is_unique().all()


def test_logged_impressions_leave_the_next_session_but_not_the_current_one(logging_server):
    stub, _, _ = logging_server

    def page(cursor=""):
        return stub.GetFeed(feed_pb2.GetFeedRequest(user_id="5", page_size=10, cursor=cursor), timeout=30)

    first = page()
    shown = [i.item_id for i in first.items]
    stub.LogEvents(iter(_wire(i.position, user_id="5", item_id=i.item_id, event="impression",
                              request_id=first.request_id) for i in first.items),
                   metadata=[("x-api-key", KEY)], timeout=30)
    second = page(first.next_cursor)  # the same session: the order does not shift under it
    fresh = stub.GetFeed(feed_pb2.GetFeedRequest(user_id="5", page_size=20), timeout=30)
    assert [i.position for i in second.items] == list(range(10, 20))
    assert not set(shown) & {i.item_id for i in fresh.items}
