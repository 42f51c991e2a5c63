"""The background worker with the real writer and model: it fills the post store, batches users,
survives a failing plan or batch, and never makes a feed read wait."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from feedcore.config import GuardrailConfig
from generation.guardrails import Guardrails
from generation.store import SqlitePostStore
from generation.worker import GenerationWorker
from generation.writer import PostWriter
from tests.generation.conftest import config

# Three new tokens never pass the checks, so every post is the template: the worker's behaviour
# is under test here, and the model still runs for every candidate.
WORKER_CONFIG = config(max_new_tokens=3, num_candidates=1, max_tries=0, batch_size=4, warm_users=3)


@pytest.fixture()
def parts(lm, catalog, tmp_path):
    writer = PostWriter(lm, catalog, Guardrails(GuardrailConfig()), WORKER_CONFIG)
    return writer, SqlitePostStore(tmp_path / "posts.sqlite", WORKER_CONFIG)


def test_the_worker_fills_the_store_and_survives_failures(parts, user_sources):
    writer, store = parts

    def plan(user_id):
        if user_id == "boom":
            raise RuntimeError("ranker unavailable")
        if user_id == "none":
            return None
        if user_id == "broken":  # a title-less source makes the whole batch's write fail
            return [dataclasses.replace(s, title=None) for s in user_sources("5")], []
        return list(user_sources(user_id)), ["Drama"]

    worker = GenerationWorker(writer, store, plan, WORKER_CONFIG).start()
    try:
        assert worker.warm(["1", "boom", "none", "4"]) == 3  # warm_users = 3
        assert worker.wait_idle(timeout=300)
        assert [p.user_id for p in store.ready("1")] == ["1"] and store.ready("4") == []
        assert worker.stats["plan_errors"] == 1 and worker.stats["no_plan"] == 1
        assert worker.stats["batches"] == 1 and worker.stats["posts"] == 1
        assert worker.request("1") and worker.wait_idle(timeout=300)  # its post is fresh: not written again
        assert worker.stats["fresh"] == 1 and worker.stats["posts"] == 1
        worker.request("broken")
        assert worker.wait_idle(timeout=300)
        assert worker.stats["write_errors"] == 1
        # Still alive after both failures:
        assert worker.request("4") and worker.wait_idle(timeout=300)
        post, = store.ready("4")
        assert post.source_item_ids == tuple(s.item_id for s in user_sources("4"))
    finally:
        worker.stop(timeout=60)
    assert not worker._thread.is_alive()


def test_a_feed_read_never_waits_for_generation(parts, user_sources):
    writer, store = parts
    entered, release = threading.Event(), threading.Event()

    def plan(user_id):
        entered.set()
        release.wait(timeout=300)  # generation "in progress" until the test lets it go
        return list(user_sources(user_id)), []

    worker = GenerationWorker(writer, store, plan, WORKER_CONFIG).start()
    try:
        assert worker.request("7")
        assert entered.wait(timeout=60)
        # The worker is busy with user 7: reads answer at once and a second request is deduplicated.
        assert store.ready("7") == [] and store.needs_post("7")
        assert worker.request("7") is False
        release.set()
        assert worker.wait_idle(timeout=300)
        assert [p.user_id for p in store.ready("7")] == ["7"]
        assert worker.request("7")  # done: it may be queued again
    finally:
        release.set()
        worker.stop(timeout=60)


def test_a_user_claimed_elsewhere_is_skipped_and_a_claim_without_a_post_is_released(lm, catalog, user_sources,
                                                                                       tmp_path):
    writer = PostWriter(lm, catalog, Guardrails(GuardrailConfig()), WORKER_CONFIG)
    store = SqlitePostStore(tmp_path / "posts.sqlite", WORKER_CONFIG)
    other = SqlitePostStore(tmp_path / "posts.sqlite", WORKER_CONFIG)  # another process on the same file
    assert other.claim("2")

    def plan(user_id):
        if user_id == "boom":
            raise RuntimeError("ranker unavailable")
        return None if user_id == "none" else (list(user_sources(user_id)), [])

    worker = GenerationWorker(writer, store, plan, WORKER_CONFIG).start()
    try:
        for user in ("1", "2", "none", "boom"):
            worker.request(user)
        assert worker.wait_idle(timeout=300)
        assert worker.stats["written_elsewhere"] == 1 and worker.stats["posts"] == 1 and store.ready("2") == []
        assert [p.user_id for p in other.ready("1")] == ["1"]  # the other process reads it
        # The claims that ended without a post were released; "2" is still the other one's.
        assert other.claim("none") and other.claim("boom") and not store.claim("2")
    finally:
        worker.stop(timeout=60)
