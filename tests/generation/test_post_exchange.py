"""The post exchange of processes sharing one model (generation.post_exchange), in-process with
a test clock: one writer per user's post, claims that end, posts passed on and caught up. The same
exchange behind a real shared model's connections is in test_remote.py."""

from __future__ import annotations

import threading
import time

from feedcore.config import GenerationConfig
from generation.interface import GeneratedPost
from generation.post_exchange import CLAIM_TIMEOUT_S, PostExchange
from tests.generation.conftest import Clock


class Member:
    """A connection's send function: what the exchange sends it, in order."""

    def __init__(self) -> None:
        self.got: list[tuple] = []
        self.lock = threading.Lock()

    def __call__(self, message: tuple) -> None:
        with self.lock:
            self.got.append(message)

    def posts(self, timeout_s: float = 10.0, count: int = 0) -> list[str]:
        """The ids of the posts it was sent, once there are `count` (sent by a thread of their own)."""
        deadline = time.monotonic() + timeout_s
        while len(self.got) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        with self.lock:
            return [m[2].post_id for m in self.got]


def _post(user: str, n: int, created_ms: int = 0) -> GeneratedPost:
    return GeneratedPost(f"gen:{user}:{n}", user, f"Post {n}.", ("1", "2"), "m", "v1/digest",
                         created_ms=created_ms or int(time.time() * 1000))


def test_one_writer_per_user_until_a_post_a_release_or_a_timeout():
    clock = Clock()
    exchange = PostExchange(GenerationConfig(), clock=clock)
    first, second = Member(), Member()
    exchange.subscribe(first, [])
    exchange.subscribe(second, [])
    assert exchange.claim(first, "u", 0) and exchange.claim(first, "u", 0)  # its own claim again
    assert not exchange.claim(second, "u", 0)  # being written by the first
    exchange.release(second, "u")  # not its claim: nothing changes
    assert not exchange.claim(second, "u", 0)
    exchange.release(first, "u")  # the first's write ended without a post
    assert exchange.claim(second, "u", 0)
    assert exchange.claim(second, "v", 0)
    exchange.leave(second)  # a process gone: its claims go with it
    assert exchange.claim(first, "v", 0) and exchange.claim(first, "u", 0)
    clock.now += CLAIM_TIMEOUT_S
    assert exchange.claim(second, "u", 0)  # the first hung: its claim lapsed


def test_a_post_ends_its_claim_and_a_claimant_that_has_not_seen_it_yet_is_refused():
    exchange = PostExchange(GenerationConfig())
    first, second = Member(), Member()
    exchange.subscribe(first, [])
    exchange.subscribe(second, [])
    assert exchange.claim(first, "u", 0)
    post = _post("u", 1)
    exchange.publish(first, post)
    assert not exchange.claim(second, "u", 0)  # on its way to the second: writing it again would be a copy
    assert exchange.claim(second, "u", post.created_ms)  # seen (stale there, say): a rewrite is its to make
    assert second.posts(count=1) == ["gen:u:1"] and first.posts() == []  # never echoed to its writer


def test_a_subscriber_hands_over_its_posts_and_is_caught_up():
    exchange = PostExchange(GenerationConfig())
    first, second, late = Member(), Member(), Member()
    assert exchange.subscribe(first, []) == 0
    exchange.publish(first, _post("u", 1))
    # The second had a post the exchange lacked (the exchange restarted, say): kept and passed on.
    assert exchange.subscribe(second, [_post("v", 2)]) == 1 and second.posts() == ["gen:u:1"]
    assert first.posts(count=1) == ["gen:v:2"]
    assert exchange.subscribe(late, [_post("u", 1)]) == 1 and late.posts() == ["gen:v:2"]  # only what it lacks
    exchange.leave(late)
    exchange.publish(first, _post("w", 3))
    assert second.posts(count=2) == ["gen:u:1", "gen:w:3"] and late.posts() == ["gen:v:2"]


def test_a_member_that_does_not_read_holds_up_no_other():
    exchange = PostExchange(GenerationConfig())
    stuck, reading = threading.Event(), Member()

    def blocked(message: tuple) -> None:
        stuck.wait(30)

    exchange.subscribe(blocked, [])
    exchange.subscribe(reading, [])
    for n in range(5):
        exchange.publish(None, _post(f"u{n}", n))  # published by a third process
    assert len(reading.posts(count=5)) == 5
    stuck.set()
