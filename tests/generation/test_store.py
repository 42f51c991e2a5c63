"""The post store (generation.store) on SQLite and on a real Redis server, held to the same
behaviour: time to live, posts kept per user, staleness after engagements, one writer per user's
post among the processes sharing it, and posts that outlive the process that wrote them."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from feedcore.config import GenerationConfig
from generation.interface import GeneratedPost
from generation.store import CLAIM_TIMEOUT_S, RedisPostStore, SqlitePostStore, make_post_store
from tests.generation.conftest import Clock

CONFIG = GenerationConfig(cache_ttl_s=10.0, refresh_after_events=2, posts_per_user=2)


def _post(user_id: str, n: int, created_s: float) -> GeneratedPost:
    return GeneratedPost(f"gen:{user_id}:{n}", user_id, f"Post {n}.", ("1", "2"), "m", "v1/digest",
                         created_ms=int(created_s * 1000))


@pytest.fixture(params=["sqlite", "redis"])
def stores(request, tmp_path):
    """open() -> a new store object (another process's, say) on the same data, with the test's clock."""
    clock = Clock()
    opened = []
    if request.param == "sqlite":
        def open_store(config=CONFIG):
            opened.append(SqlitePostStore(tmp_path / "posts.sqlite", config, clock=clock))
            return opened[-1]
    else:
        server = request.getfixturevalue("redis_server")

        def open_store(config=CONFIG):
            opened.append(RedisPostStore(redis.Redis.from_url(server.url), config, clock=clock))
            return opened[-1]
    yield open_store, clock
    for store in opened:
        store.close()


def test_posts_expire_newest_first_and_per_user(stores):
    open_store, clock = stores
    store, reader = open_store(), open_store()
    assert store.ready("u") == [] and store.needs_post("u") and store.get("gen:u:1") is None
    store.put(_post("u", 1, clock.now - 5))
    store.put(_post("u", 2, clock.now - 1))
    store.put(_post("u", 0, clock.now - 8))  # older than both: dropped at once (2 per user)
    assert [p.post_id for p in reader.ready("u")] == ["gen:u:2", "gen:u:1"]
    assert reader.get("gen:u:2") == _post("u", 2, clock.now - 1)  # every field round trips
    assert reader.get("gen:u:0") is None and not reader.needs_post("u")
    clock.now += 6  # post 1 is 11 s old
    assert [p.post_id for p in reader.ready("u")] == ["gen:u:2"]
    clock.now += 4
    assert reader.ready("u") == [] and reader.needs_post("u")
    assert reader.get("gen:u:2").text == "Post 2."  # an expired post still resolves logged events


def test_engagements_make_a_post_stale_once_and_a_newer_post_fresh(stores):
    open_store, clock = stores
    store, other = open_store(), open_store()
    assert not store.note_engagement("u")  # no post: nothing to refresh
    store.put(_post("u", 1, clock.now))
    assert [other.note_engagement("u"), store.note_engagement("u"), other.note_engagement("u")] == [False, True, False]
    assert store.needs_post("u") and [p.post_id for p in store.ready("u")] == ["gen:u:1"]  # stale, still served
    store.put(_post("u", 1, clock.now))  # the same post again: still stale
    assert other.needs_post("u")
    other.put(_post("u", 2, clock.now + 1))
    assert not store.needs_post("u") and not store.note_engagement("u")


def test_one_writer_per_user_among_the_processes(stores):
    open_store, clock = stores
    a, b = open_store(), open_store()
    assert a.claim("u") and a.claim("u")  # its own claim, again
    assert not b.claim("u")
    a.release("u")
    assert b.claim("u") and not a.claim("u")
    b.put(_post("u", 1, clock.now))  # the post ends its writer's claim
    assert a.claim("u")
    b.release("u")  # not b's claim: left alone
    assert not b.claim("u")


def test_concurrent_claims_give_each_user_one_writer(stores):
    open_store, _ = stores
    processes = [open_store() for _ in range(4)]
    users = [f"u{i}" for i in range(40)]
    won: list[tuple[int, str]] = []

    def race(index: int) -> None:
        for user in users:
            if processes[index].claim(user):
                won.append((index, user))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(processes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(u for _, u in won) == sorted(users)


def test_posts_outlive_the_store_object_that_wrote_them(stores):
    open_store, clock = stores
    writer = open_store()
    writer.put(_post("u", 1, clock.now))
    writer.note_engagement("u")
    writer.close()
    again = open_store()
    assert [p.post_id for p in again.ready("u")] == ["gen:u:1"] and again.note_engagement("u")


def test_a_lapsed_claim_can_be_taken(tmp_path):
    clock = Clock()
    a = SqlitePostStore(tmp_path / "posts.sqlite", CONFIG, clock=clock)
    b = SqlitePostStore(tmp_path / "posts.sqlite", CONFIG, clock=clock)
    assert a.claim("u") and not b.claim("u")
    clock.now += CLAIM_TIMEOUT_S + 1  # a's writer hung, or its process died
    assert b.claim("u") and not a.claim("u")


def test_make_post_store_reads_the_config(tmp_path, redis_server):
    assert isinstance(make_post_store(GenerationConfig(), tmp_path), SqlitePostStore)
    assert (tmp_path / "posts.sqlite").is_file()
    store = make_post_store(GenerationConfig(store=f"sqlite://{tmp_path / 'other.sqlite'}"), tmp_path)
    assert store.path == tmp_path / "other.sqlite"
    store = make_post_store(GenerationConfig(store=redis_server.url), tmp_path)
    assert isinstance(store, RedisPostStore) and store.needs_post("u")
    with pytest.raises(ValueError, match=r"\[generation\] store 'postgres://x'.*redis://host:port/db"):
        make_post_store(GenerationConfig(store="postgres://x"), tmp_path)


def test_a_redis_that_is_down_fails_fast(tmp_path, redis_server):
    store = make_post_store(GenerationConfig(store=redis_server.url), tmp_path)
    store.put(_post("u", 1, time.time()))
    redis_server.kill()
    start = time.monotonic()
    for call in (lambda: store.ready("u"), lambda: store.claim("u"), lambda: store.put(_post("u", 2, time.time()))):
        with pytest.raises(redis.ConnectionError):
            call()
    assert time.monotonic() - start < 5.0  # no retries, no waits: GetFeed serves without posts at once
    redis_server.start()  # back, empty (no persistence): posts are written again
    assert store.ready("u") == [] and store.needs_post("u")
