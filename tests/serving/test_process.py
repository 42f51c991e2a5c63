"""`feed serve --processes N` (`serving.process`) as an operator runs it: real processes on one port."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import pytest

from feedcore.errors import DataError
from feedcore.events import read_event_log
from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.client import wait_ready

REPO = Path(__file__).resolve().parents[2]


def _launch(config: Path, stderr: Path, *args: str) -> subprocess.Popen:
    with stderr.open("w") as err:
        return subprocess.Popen([sys.executable, "-m", "feedcli", "serve", "--config", str(config), *args],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _serving_pids(stderr: Path) -> dict[int, int]:
    """Process index -> pid, the latest start of each, from the launcher's log."""
    return {int(i): int(pid) for i, pid in re.findall(r"process (\d+) \(pid (\d+)\) serving", stderr.read_text())}


def _running(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()  # a zombie has exited
    except FileNotFoundError:
        return False


def _kill_survivors(*pids: int) -> None:
    for pid in pids:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


def _stop(launcher: subprocess.Popen, stderr: Path, *pids: int) -> int:
    """SIGTERM the launcher and return its exit code; whatever is left of it or its processes
    (these, and every one its log names) is killed, so a failing test leaks nothing."""
    launcher.send_signal(signal.SIGTERM)
    try:
        return launcher.wait(timeout=120)
    finally:
        _kill_survivors(launcher.pid, *pids, *_serving_pids(stderr).values())


def _config(tmp_path: Path, engine, **serving: str) -> Path:
    config = tmp_path / "serve.toml"
    lines = [f"artifacts_dir = '{engine.artifacts_dir}'", "[serving]", f"event_log_dir = '{tmp_path / 'log'}'"]
    config.write_text("\n".join(lines + [f"{k} = {v}" for k, v in serving.items()]) + "\n")
    return config


def test_processes_share_one_port_restart_a_killed_one_and_lose_no_event(trained_engine, tmp_path):
    """Both processes take connections on the one port, each logs to its own event log; a second
    server on the config is refused; a process killed with -9 is restarted on its log, whose
    acknowledged events survive; SIGTERM stops both cleanly, and the directory reads back as
    every event acknowledged."""
    config, stderr = _config(tmp_path, trained_engine, api_keys="['k']"), tmp_path / "server.log"
    launcher = _launch(config, stderr, "--port", "0", "--processes", "2")
    acked = 0

    def log_one_event_per_connection(n: int) -> None:
        nonlocal acked
        acked += _log_per_connection(address, n, item_id="1", content_type="movie", request_id=f"r{acked}")

    first = {}
    try:
        line = launcher.stdout.readline()
        assert line.startswith("FEED_SERVER_READY"), stderr.read_text()[-3000:]
        address = line.split()[1]
        first = _serving_pids(stderr)
        assert sorted(first) == [0, 1]
        second = subprocess.run([sys.executable, "-m", "feedcli", "serve", "--config", str(config), "--port", "0"],
                                cwd=REPO, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and f"the event log is open in process {launcher.pid}" in second.stderr
        log_one_event_per_connection(24)
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 120
        while _serving_pids(stderr).get(0) == first[0] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _serving_pids(stderr)[0] != first[0], stderr.read_text()[-3000:]  # restarted
        log_one_event_per_connection(8)
    finally:
        code = _stop(launcher, stderr, *first.values())
    assert code == 0, stderr.read_text()[-3000:]
    per_process = [read_event_log(tmp_path / "log" / f"process-{i}").height for i in range(2)]
    assert min(per_process) > 0 and sum(per_process) == acked == 32
    assert read_event_log(tmp_path / "log").height == acked  # the launcher's directory reads as all of its logs


def test_processes_drain_when_their_launcher_is_killed(trained_engine, tmp_path):
    stderr = tmp_path / "server.log"
    launcher = _launch(_config(tmp_path, trained_engine), stderr, "--port", "0", "--processes", "2")
    pids = []
    try:
        assert launcher.stdout.readline().startswith("FEED_SERVER_READY"), stderr.read_text()[-3000:]
        pids = list(_serving_pids(stderr).values())
        assert len(pids) == 2
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 60
        while any(map(_running, pids)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(map(_running, pids))
    finally:
        _kill_survivors(launcher.pid, *pids)
    assert stderr.read_text().count("INFO serving.server: stopped") == 2  # each drained, as on a SIGTERM


def test_a_launch_whose_process_cannot_load_exits_1_and_says_why(tmp_path):
    config = tmp_path / "serve.toml"
    config.write_text(f"artifacts_dir = '{tmp_path / 'empty'}'\n")
    stderr = tmp_path / "server.log"
    launcher = _launch(config, stderr, "--port", "0", "--processes", "2")
    try:
        assert launcher.wait(timeout=300) == 1
    finally:
        _kill_survivors(launcher.pid)
    log = stderr.read_text()
    assert "run `feed data prepare` first" in log or "written by `feed data prepare`" in log
    assert "server process 0 exited before serving (code 2); stopping the others" in log


def test_training_refuses_to_read_one_event_log_twice(trained_engine, tmp_path):
    from ranker.train import train_ranker_job

    (tmp_path / "log" / "process-0").mkdir(parents=True)
    with pytest.raises(DataError, match="would be read twice"):
        train_ranker_job(trained_engine, progress=False, from_logs=[tmp_path / "log", tmp_path / "log" / "process-0"])


def test_a_restart_that_cannot_load_leaves_the_other_process_serving(trained_engine, tmp_path):
    import shutil

    artifacts = tmp_path / "artifacts"
    shutil.copytree(trained_engine.artifacts_dir, artifacts)
    config, stderr = tmp_path / "serve.toml", tmp_path / "server.log"
    config.write_text(f"artifacts_dir = '{artifacts}'\n[serving]\nreload_interval_s = 0\n")
    launcher = _launch(config, stderr, "--port", "0", "--processes", "2")
    pids = {}
    try:
        line = launcher.stdout.readline()
        assert line.startswith("FEED_SERVER_READY"), stderr.read_text()[-3000:]
        pids = _serving_pids(stderr)
        (artifacts / "ranker" / "model.pt").write_bytes(b"not a checkpoint")  # what a restart would load
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 120
        while "the other processes keep serving" not in stderr.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "server process 0 exited before serving (code 2); the other processes keep serving" in stderr.read_text()
        for _ in range(4):  # new connections all land on process 1, the one left
            with grpc.insecure_channel(line.split()[1], options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                wait_ready(channel)
                response = feed_pb2_grpc.FeedServiceStub(channel).GetFeed(
                    feed_pb2.GetFeedRequest(user_id="1", page_size=3), timeout=30)
                assert len(response.items) == 3
        assert _running(pids[1])
    finally:
        code = _stop(launcher, stderr, *pids.values())
    assert code != 0  # process 0 never came back
    assert "corrupt or unreadable ranker checkpoint" in stderr.read_text()


def _generation_services(pid: int) -> list[int]:
    """The running `feed serve-generation` children of `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"serve-generation" in cmdline and _running(int(entry.name)):
            out.append(int(entry.name))
    return out


def _post_jobs(metrics_url: str) -> Counter:
    """A process's background post writer outcomes (feed_post_jobs_total), from its metrics."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return Counter({m: float(n) for m, n in re.findall(r'^feed_post_jobs_total\{outcome="(\w+)"\} (\S+)$', text, re.M)})


def _users_taken(jobs: Counter) -> float:
    """Users the background writer has taken from its queue, whatever came of them."""
    return sum(jobs[k] for k in ("posts", "fresh", "written_elsewhere", "no_plan", "store_errors", "plan_errors"))


def _known_everywhere(address: str, post_id: str, timeout_s: float = 60.0) -> bool:
    """Whether, within `timeout_s`, events naming `post_id` without a content type are accepted
    on 16 connections in a row (the kernel gives each to either process); a refusal
    (INVALID_ARGUMENT) is tried again until then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return _log_per_connection(address, 16, item_id=post_id) == 16
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
            time.sleep(0.2)
    return False


def _log_per_connection(address: str, n: int, **event: str) -> int:
    """Log `event` (user 1's impression) on n channels, a connection each, which the kernel gives
    to either process; how many were accepted."""
    accepted = 0
    for i in range(n):
        with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            wait_ready(channel)
            message = feed_pb2.Event(**{"user_id": "1", "event": "impression", "position": i, **event})
            ack = feed_pb2_grpc.FeedServiceStub(channel).LogEvents(iter([message]), metadata=[("x-api-key", "k")],
                                                                   timeout=30)
            accepted += ack.accepted
    return accepted


def _stream_post(address: str):
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        wait_ready(channel)
        chunks = list(feed_pb2_grpc.FeedServiceStub(channel).StreamPost(
            feed_pb2.StreamPostRequest(user_id="1", max_new_tokens=8), timeout=180))
    return chunks[-1]


def test_generation_runs_one_service_for_all_processes_and_shares_their_posts(trained_engine, llm_cache_dir, tmp_path):
    """With generation on, the launcher runs one generation service that both processes call, and
    their posts live in one store: a post either writes is known to both, and a user's background
    post is written once. The service and a process killed at once are each restarted, posts are
    written again, the ones written before are still served, and the stop prints no traceback."""
    config, stderr = _config(tmp_path, trained_engine, api_keys="['k']", metrics_port="0"), tmp_path / "server.log"
    config.write_text(config.read_text() + f"[generation]\nenabled = true\ncache_dir = '{llm_cache_dir}'\n"
                      f"store = '{tmp_path / 'posts.sqlite'}'\n"
                      "max_new_tokens = 8\nnum_candidates = 1\nmax_tries = 0\nwarm_users = 2\n")
    launcher = _launch(config, stderr, "--port", "0", "--processes", "2")
    pids, services = {}, []
    try:
        line = launcher.stdout.readline()
        assert line.startswith("FEED_SERVER_READY"), stderr.read_text()[-3000:]
        pids = _serving_pids(stderr)
        services = _generation_services(launcher.pid)
        assert len(services) == 1, stderr.read_text()[-3000:]  # one service, the launcher's
        assert all(_generation_services(pid) == [] for pid in pids.values())  # none of the processes has its own
        assert stderr.read_text().count("generation: posts from the generation service at unix://") == 2
        # Both warm the same two most active users; each post is written once, by one of them.
        metrics = re.findall(r"metrics (http://\S+/metrics)", stderr.read_text())
        assert len(metrics) == 2
        deadline = time.monotonic() + 180
        while sum(_users_taken(_post_jobs(url)) for url in metrics) < 4:  # each process has taken both users
            assert time.monotonic() < deadline, [_post_jobs(url) for url in metrics]
            time.sleep(0.5)
        jobs = [_post_jobs(url) for url in metrics]
        assert sum(j["posts"] for j in jobs) == 2 and sum(j["fresh"] + j["written_elsewhere"] for j in jobs) == 2, jobs
        posts = []
        for _ in range(3):  # connections land on either process; each writes through the one service
            final = _stream_post(line.split()[1])
            assert final.done and final.post_text
            posts.append(final.post_id)
        # An event naming a post without its content type resolves only where the post is known: everywhere.
        assert _known_everywhere(line.split()[1], posts[0], timeout_s=5)
        os.kill(services[0], signal.SIGKILL)
        os.kill(pids[1], signal.SIGKILL)
        deadline = time.monotonic() + 180
        while len(_generation_services(launcher.pid)) != 1 or _generation_services(launcher.pid) == services:
            assert time.monotonic() < deadline, stderr.read_text()[-3000:]
            time.sleep(0.5)
        services.extend(_generation_services(launcher.pid))
        assert "the generation service" in stderr.read_text() and "restarting it" in stderr.read_text()
        while _serving_pids(stderr)[1] == pids[1]:
            assert time.monotonic() < deadline, stderr.read_text()[-3000:]  # process 1 back
            time.sleep(0.5)
        while True:  # the new service loads; the processes reconnect by themselves
            try:
                final = _stream_post(line.split()[1])
                break
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, e
                time.sleep(1.0)
        assert final.done and final.post_text
        posts.append(final.post_id)
        assert _known_everywhere(line.split()[1], posts[-1], timeout_s=5)
        assert _known_everywhere(line.split()[1], posts[0], timeout_s=5)  # written before the restarts
        launcher.send_signal(signal.SIGTERM)
        code = launcher.wait(timeout=120)
        left = [pid for pid in services if _running(pid)]  # before the clean-up below kills anything
    finally:
        _stop(launcher, stderr, *pids.values(), *services)
    assert code == 0, stderr.read_text()[-3000:]
    assert left == []  # the launcher stopped its service too
    assert "Traceback" not in stderr.read_text(), stderr.read_text()[-3000:]
    for i in range(2):  # each process logged events against posts, some of them written by the other one
        log = read_event_log(tmp_path / "log" / f"process-{i}")
        assert log.height > 0 and set(log["item_id"]) <= {posts[0], posts[-1]}
        assert set(log["content_type"]) == {"generated"}
