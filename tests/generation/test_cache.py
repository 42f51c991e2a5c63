"""PostCache: time to live, staleness after engagements, posts kept per user, lookup by id; posts
arriving with an age (another process's) and the snapshot that catches another cache up."""

from __future__ import annotations

import threading

from feedcore.config import GenerationConfig
from generation.cache import PostCache
from generation.interface import GeneratedPost
from tests.generation.conftest import Clock


def _post(user: str, n: int) -> GeneratedPost:
    return GeneratedPost(f"gen:{user}:{n}", user, f"Post {n}.", ("1", "2"), "m", "v1/digest")


def test_posts_expire_after_the_ttl():
    clock = Clock()
    cache = PostCache(GenerationConfig(cache_ttl_s=10.0), clock=clock)
    cache.put(_post("u", 1))
    clock.now += 9.9
    assert [p.post_id for p in cache.ready("u")] == ["gen:u:1"]
    assert not cache.needs_post("u")
    clock.now += 0.2
    assert cache.ready("u") == [] and cache.needs_post("u")
    assert cache.get("gen:u:1") is not None  # an event can still name it
    assert cache.ready("nobody") == [] and cache.needs_post("nobody")


def test_engagements_make_a_user_stale_once_and_a_new_post_refreshes():
    cache = PostCache(GenerationConfig(refresh_after_events=3), clock=Clock())
    assert cache.note_engagement("u") is False  # no posts yet: nothing to refresh
    cache.put(_post("u", 1))
    assert [cache.note_engagement("u") for _ in range(5)] == [False, False, True, False, False]
    assert cache.needs_post("u") and cache.ready("u")  # stale posts are still served
    cache.put(_post("u", 2))
    assert not cache.needs_post("u")
    assert [cache.note_engagement("u") for _ in range(3)] == [False, False, True]


def test_posts_per_user_keeps_the_newest():
    cache = PostCache(GenerationConfig(posts_per_user=2), clock=Clock())
    for n in range(4):
        cache.put(_post("u", n))
    assert [p.post_id for p in cache.ready("u")] == ["gen:u:3", "gen:u:2"]
    assert cache.get("gen:u:1") is None and cache.get("gen:u:3") is not None


def test_a_post_put_with_its_age_expires_when_it_would_have_and_sorts_by_age():
    clock = Clock()
    cache = PostCache(GenerationConfig(cache_ttl_s=10.0, posts_per_user=2), clock=clock)
    cache.put(_post("u", 1))
    cache.put(_post("u", 0), age_s=4.0)  # written before post 1, arriving after it
    assert [p.post_id for p in cache.ready("u")] == ["gen:u:1", "gen:u:0"]
    cache.put(_post("u", 9), age_s=5.0)  # older than both: it is the one dropped
    assert [p.post_id for p in cache.ready("u")] == ["gen:u:1", "gen:u:0"] and cache.get("gen:u:9") is None
    clock.now += 6.5
    assert [p.post_id for p in cache.ready("u")] == ["gen:u:1"]  # post 0 is 10.5 s old
    cache.put(_post("v", 0), age_s=11.0)
    assert cache.ready("v") == [] and cache.needs_post("v")  # expired where it was written


def test_a_snapshot_rebuilds_the_ready_posts_in_another_cache():
    clock = Clock()
    config = GenerationConfig(cache_ttl_s=10.0, posts_per_user=2)
    cache = PostCache(config, clock=clock)
    for n, user in enumerate("abca"):
        cache.put(_post(user, n))
        clock.now += 1.0
    cache.put(_post("old", 9), age_s=20.0)
    snapshot = cache.snapshot()
    assert [p.post_id for p in snapshot] == ["gen:a:0", "gen:b:1", "gen:c:2", "gen:a:3"]  # oldest first, unexpired
    other = PostCache(config, clock=clock)
    for post in snapshot:
        other.put(post)
    assert {u: [p.post_id for p in other.ready(u)] for u in "abc"} == {u: [p.post_id for p in cache.ready(u)]
                                                                       for u in "abc"}
    assert cache.claim("a")  # a cache of its own always writes its users' posts


def test_only_a_new_newest_post_makes_a_stale_user_fresh():
    clock = Clock()
    cache = PostCache(GenerationConfig(refresh_after_events=1, posts_per_user=2), clock=clock)
    cache.put(_post("u", 1))
    assert cache.note_engagement("u") and cache.needs_post("u")
    cache.put(_post("u", 1))  # the same post again (another process's copy): still stale
    cache.put(_post("u", 0), age_s=5.0)  # an older one: still stale
    assert cache.needs_post("u")
    clock.now += 1.0
    cache.put(_post("u", 2))
    assert not cache.needs_post("u")


def test_least_recently_written_users_are_dropped_beyond_capacity():
    cache = PostCache(GenerationConfig(), clock=Clock(), max_users=2)
    for user in "abc":
        cache.put(_post(user, 0))
    assert len(cache) == 2 and cache.ready("a") == [] and cache.get("gen:a:0") is None


def test_concurrent_writers_and_readers():
    cache = PostCache(GenerationConfig(posts_per_user=1))
    users = [str(u) for u in range(50)]

    def write(offset: int) -> None:
        for n in range(20):
            for u in users:
                cache.put(_post(u, offset * 100 + n))

    threads = [threading.Thread(target=write, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for u in users:
            assert len(cache.ready(u)) <= 1
    for t in threads:
        t.join()
    assert all(len(cache.ready(u)) == 1 for u in users) and len(cache) == 50
