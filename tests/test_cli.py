"""The `feed` command line as a user runs it: real subprocesses."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc

from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.client import wait_ready

REPO = Path(__file__).resolve().parents[1]


def _feed(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "feedcli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_bad_config_exits_2_with_a_clear_message(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[data]\ndataset = 'ml-latest-small'\nsplit = 'random'\n")
    result = _feed("data", "prepare", "--config", str(config))
    assert result.returncode == 2
    assert "column 'data.split': unsupported value (got 'random'); expected one of" in result.stderr


def test_serving_without_artifacts_says_what_to_run(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f"artifacts_dir = '{tmp_path / 'empty'}'\n")
    result = _feed("serve", "--config", str(config))
    assert result.returncode == 2
    assert "run `feed data prepare` first" in result.stderr or "written by `feed data prepare`" in result.stderr


def test_prepare_writes_tables_and_split(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(textwrap.dedent(f"""
        artifacts_dir = '{tmp_path / "a"}'
        [data]
        dataset = 'ml-latest-small'
        raw_root = '{REPO / "data" / "ml-latest-small"}'
        history_events = ['rating']
    """))
    result = _feed("data", "prepare", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert '"users": 610' in result.stdout and '"test": 610' in result.stdout
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["data", "splits"]


def test_serve_answers_and_stops_cleanly_on_sigterm(trained_engine, tmp_path):
    config = tmp_path / "serve.toml"
    config.write_text(f"artifacts_dir = '{trained_engine.artifacts_dir}'\n")
    server = subprocess.Popen([sys.executable, "-m", "feedcli", "serve", "--config", str(config), "--port", "0"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = server.stdout.readline()
        assert line.startswith("FEED_SERVER_READY"), server.stderr.read()
        with grpc.insecure_channel(line.split()[1]) as channel:
            wait_ready(channel)
            response = feed_pb2_grpc.FeedServiceStub(channel).GetFeed(
                feed_pb2.GetFeedRequest(user_id="1", page_size=3), timeout=30)
            assert len(response.items) == 3
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    assert code == 0
    assert "stopped" in server.stderr.read()


def test_demo_runs_the_whole_path_on_a_tiny_config(tmp_path, llm_cache_dir):
    """`feed demo` as a user runs it: prepare, train both, index, serve with the generative module
    (the real language model, short posts), a streamed post that then shows in the first user's
    feed with its sources, two feeds, clean stop."""
    config = tmp_path / "demo.toml"
    config.write_text(textwrap.dedent(f"""
        artifacts_dir = '{tmp_path / "a"}'
        [data]
        dataset = 'ml-latest-small'
        raw_root = '{REPO / "data" / "ml-latest-small"}'
        max_history = 20
        history_events = ['rating']
        [retrieval]
        embedding_dim = 16
        hidden_dim = 32
        epochs = 1
        [ranker]
        embedding_dim = 8
        dense_hidden = [16]
        over_hidden = [16, 8]
        epochs = 1
        batch_size = 4096
        tasks = [{{ name = 'engage', event = 'rating' }}, {{ name = 'like', event = 'rating', threshold = 4.0 }}]
        [serving]
        api_keys = ['k']
        [serving.blend]
        type_shares = {{ generated = 0.1 }}
        [generation]
        enabled = true
        cache_dir = '{llm_cache_dir}'
        max_new_tokens = 16
        num_candidates = 1
        max_tries = 1
        warm_users = 1
    """))
    result = _feed("demo", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("feed for user") == 3  # two users, the first with two pages
    assert "movie" in result.stdout and "server stopped cleanly (exit code 0)" in result.stdout
    # the streamed post, then the same post placed in the first user's first page, with its sources
    streamed = result.stdout.split("StreamPost for user ", 1)[1]
    first_page = streamed.split("feed for user", 2)[1]
    assert "  generated " in first_page and "    sources: " in first_page
    # The app's side of the loop: each user's first page logged (10 impressions and a click), and
    # the graceful stop flushed the log into Parquet, ready for `feed train ranker --from-logs`.
    assert result.stdout.count("11 events") == 2
    from feedcore.events import read_event_log

    logged = read_event_log(tmp_path / "a" / "event_log")
    assert logged.height == 22 and logged["request_id"].null_count() == 0
    assert not list((tmp_path / "a" / "event_log").glob("wal-*"))
