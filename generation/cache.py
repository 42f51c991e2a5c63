"""Posts written ahead of time, per user: what GetFeed serves without waiting for a model.

`PostCache.ready` only reads a dict under a lock held for microseconds (the worker never holds
it while generating), so a feed request never waits for generation. A user's posts expire after
`cache_ttl_s`; after `refresh_after_events` engagements they are stale: still served, but the
caller is told to queue a rewrite (`note_engagement` returns True once).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from feedcore.config import GenerationConfig
from generation.interface import GeneratedPost

MAX_USERS = 200_000  # users kept (least recently written dropped first): bounds memory


@dataclasses.dataclass
class _Entry:
    posts: list[tuple[float, GeneratedPost]]  # (written at, post), newest first
    engagements: int = 0
    stale: bool = False


class PostCache:
    """Ready posts per user, thread-safe, with a time to live and engagement-driven staleness.

    Args:
        config: `cache_ttl_s`, `refresh_after_events`, `posts_per_user` (posts kept per user).
        clock: seconds (monotonic); tests pass their own.
        max_users: users kept; the least recently written are dropped beyond it.

    Example:
        >>> from feedcore.config import GenerationConfig
        >>> now = [0.0]
        >>> cache = PostCache(GenerationConfig(cache_ttl_s=60, refresh_after_events=2), clock=lambda: now[0])
        >>> cache.put(GeneratedPost("gen:u:1", "u", "Two films.", ("1", "2"), "m", "v1/digest"))
        >>> [p.post_id for p in cache.ready("u")], cache.note_engagement("u"), cache.note_engagement("u")
        (['gen:u:1'], False, True)
        >>> now[0] = 61.0
        >>> cache.ready("u"), cache.needs_post("u")
        ([], True)
    """

    def __init__(self, config: GenerationConfig, clock: Callable[[], float] = time.monotonic,
                 max_users: int = MAX_USERS) -> None:
        self.ttl_s = config.cache_ttl_s
        self.refresh_after = max(1, config.refresh_after_events)
        self.per_user = max(1, config.posts_per_user)
        self.clock = clock
        self.max_users = max_users
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._by_id: dict[str, GeneratedPost] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def put(self, post: GeneratedPost, age_s: float = 0.0) -> None:
        """Store a post for its user, written `age_s` seconds ago (0: just now; another process's
        post arrives with its age, so it expires when it does there). A post new to the cache and
        newer than the user's others makes the user fresh again (a copy or an older post does not)."""
        written = self.clock() - age_s
        with self._lock:
            entry = self._entries.pop(post.user_id, None) or _Entry([])
            if all(p.post_id != post.post_id and t <= written for t, p in entry.posts):
                entry.engagements, entry.stale = 0, False
            offered = [(written, post), *((t, p) for t, p in entry.posts if p.post_id != post.post_id)]
            offered.sort(key=lambda e: -e[0])  # newest first
            entry.posts = offered[: self.per_user]
            for _, dropped in offered[self.per_user:]:
                self._by_id.pop(dropped.post_id, None)
            for _, kept in entry.posts:
                self._by_id[kept.post_id] = kept
            self._entries[post.user_id] = entry
            while len(self._entries) > self.max_users:
                _, evicted = self._entries.popitem(last=False)
                for _, p in evicted.posts:
                    self._by_id.pop(p.post_id, None)

    def claim(self, user_id: str) -> bool:
        """Whether this process is to write the user's background post now: always, for a cache
        of its own (a `generation.post_exchange.SharedPostCache` asks the processes it shares with)."""
        return True

    def release(self, user_id: str) -> None:
        """A claimed user's write ended without a post (nothing to release for a cache of its own)."""

    def ready(self, user_id: str) -> list[GeneratedPost]:
        """The user's unexpired posts, newest first ([] when none); never waits for generation."""
        now = self.clock()
        with self._lock:
            entry = self._entries.get(user_id)
            if entry is None:
                return []
            return [p for t, p in entry.posts if now - t < self.ttl_s]

    def newest_ms(self, user_id: str) -> int:
        """The wall-clock `created_ms` of the user's newest unexpired post (0 for none)."""
        return max((p.created_ms for p in self.ready(user_id)), default=0)

    def snapshot(self) -> list[GeneratedPost]:
        """Every unexpired post, oldest first: what another cache is sent to catch up."""
        now = self.clock()
        with self._lock:
            posts = [(t, p) for entry in self._entries.values() for t, p in entry.posts if now - t < self.ttl_s]
        return [p for _, p in sorted(posts, key=lambda e: e[0])]

    def get(self, post_id: str) -> GeneratedPost | None:
        """A cached post by id (expired or not), e.g. to resolve an event logged against it."""
        with self._lock:
            return self._by_id.get(post_id)

    def needs_post(self, user_id: str) -> bool:
        """True when the user has no unexpired post or their posts are stale."""
        now = self.clock()
        with self._lock:
            entry = self._entries.get(user_id)
            return entry is None or entry.stale or not any(now - t < self.ttl_s for t, _ in entry.posts)

    def note_engagement(self, user_id: str) -> bool:
        """Count one engagement of a user who has posts; True exactly when it makes them stale
        (after `refresh_after_events`): the caller then queues a rewrite."""
        with self._lock:
            entry = self._entries.get(user_id)
            if entry is None or entry.stale:
                return False
            entry.engagements += 1
            entry.stale = entry.engagements >= self.refresh_after
            return entry.stale
