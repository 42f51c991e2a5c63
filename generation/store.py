"""The post store: the generated posts every feed process reads, and who writes a user's next one.

Posts are written ahead of time (by a feed server's background writer, through the generation
service) and read by every feed process on GetFeed and LogEvents, so they live in a store made for
sharing, not in any one process's memory:

- `SqlitePostStore`: one SQLite file in WAL mode (readers never wait for the writer), the default
  on one machine (``<artifacts_dir>/posts.sqlite``): every `feed serve` on that machine, and each
  process of `feed serve --processes N`, opens the same file;
- `RedisPostStore`: a Redis server (``[generation] store = "redis://host:port/db"``), for feed
  servers on several machines.

Both keep the same records: a user's newest `posts_per_user` posts (by wall-clock `created_ms`,
each expiring `cache_ttl_s` after it was written), the user's engagements since their newest post
(after `refresh_after_events` the post is stale: still served, but rewritten), and one claim per
user's background post, so one process writes it (`claim`: an SQLite upsert that takes a free or
lapsed claim only, or Redis ``SET NX PX``). A post survives the restart of any process but the
store's own (Redis without persistence loses its posts with it; they are then written again).

Times are wall-clock (`clock`, seconds), as the processes sharing a store share no other clock.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from feedcore.config import GenerationConfig
from generation.interface import GeneratedPost

logger = logging.getLogger(__name__)
CLAIM_TIMEOUT_S = 300.0  # a claim whose writer neither wrote nor released (it hung, or died) lapses after this
KEEP_AFTER_EXPIRY_S = 3600.0  # an expired post still resolves events logged against it for this long


class PostStore(Protocol):
    """What the feed side reads and writes (see the module doc); every method may raise the
    backend's error when the store is unreachable (the caller degrades to no posts)."""

    def put(self, post: GeneratedPost) -> None:
        """Keep `post` for its user (the newest `posts_per_user`); a new post newer than the user's
        others makes them fresh again; this store's claim on the user ends."""

    def ready(self, user_id: str) -> list[GeneratedPost]:
        """The user's unexpired posts, newest first."""

    def get(self, post_id: str) -> GeneratedPost | None:
        """A post by id (expired up to KEEP_AFTER_EXPIRY_S ago, too), to resolve logged events."""

    def needs_post(self, user_id: str) -> bool:
        """True when the user has no unexpired post, or it is stale."""

    def note_engagement(self, user_id: str) -> bool:
        """Count one engagement of a user who has posts; True exactly when it makes them stale."""

    def claim(self, user_id: str) -> bool:
        """True when this store object (its process) is now the one writer of the user's post."""

    def release(self, user_id: str) -> None:
        """This store object's claim on the user ended without a post."""

    def close(self) -> None: ...


def encode_post(post: GeneratedPost) -> str:
    return json.dumps(dataclasses.asdict(post), separators=(",", ":"))


def decode_post(text: str | bytes) -> GeneratedPost:
    fields = json.loads(text)
    fields["source_item_ids"] = tuple(fields["source_item_ids"])
    return GeneratedPost(**fields)


class _Settings:
    def __init__(self, config: GenerationConfig, clock: Callable[[], float]) -> None:
        self.ttl_ms = int(config.cache_ttl_s * 1000)
        self.keep_ms = self.ttl_ms + int(KEEP_AFTER_EXPIRY_S * 1000)
        self.per_user = max(1, config.posts_per_user)
        self.refresh_after = max(1, config.refresh_after_events)
        self.clock = clock
        self.owner = f"{os.getpid()}:{os.urandom(6).hex()}"  # this store object's claims

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def written_ms(self, post: GeneratedPost) -> int:
        return post.created_ms or self.now_ms()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS posts (post_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, written_ms INTEGER NOT NULL,
                                  post TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS posts_by_user ON posts (user_id, written_ms);
CREATE TABLE IF NOT EXISTS engagements (user_id TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS claims (user_id TEXT PRIMARY KEY, owner TEXT NOT NULL, until_ms INTEGER NOT NULL);
"""


class SqlitePostStore:
    """The post store in one SQLite file (WAL), shared by the processes of one machine.

    Args:
        path: the database file (created with its directory).
        config: `cache_ttl_s`, `posts_per_user`, `refresh_after_events`.
        clock: wall-clock seconds; tests pass their own.

    Example:
        >>> import tempfile
        >>> now = [1000.0]
        >>> store = SqlitePostStore(Path(tempfile.mkdtemp()) / "posts.sqlite",
        ...                         GenerationConfig(cache_ttl_s=60, refresh_after_events=2), clock=lambda: now[0])
        >>> store.put(GeneratedPost("gen:u:1", "u", "Two films.", ("1", "2"), "m", "v1/digest", created_ms=1_000_000))
        >>> [p.post_id for p in store.ready("u")], store.note_engagement("u"), store.note_engagement("u")
        (['gen:u:1'], False, True)
        >>> now[0] = 1061.0
        >>> store.ready("u"), store.needs_post("u"), store.get("gen:u:1").text
        ([], True, 'Two films.')
    """

    def __init__(self, path: str | Path, config: GenerationConfig, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.settings = _Settings(config, clock)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash loses no committed post, a power cut maybe the last
        self._db.executescript(_SCHEMA)  # idempotent (IF NOT EXISTS), one statement at a time
        self._puts = 0

    def _transaction(self):
        return _Transaction(self._db)

    def put(self, post: GeneratedPost) -> None:
        s, written = self.settings, self.settings.written_ms(post)
        with self._lock, self._transaction():
            newest = self._db.execute("SELECT MAX(written_ms) FROM posts WHERE user_id = ?", (post.user_id,)).fetchone()[0]
            added = self._db.execute("INSERT OR IGNORE INTO posts VALUES (?, ?, ?, ?)",
                                     (post.post_id, post.user_id, written, encode_post(post))).rowcount
            if added and (newest is None or written >= newest):
                self._db.execute("DELETE FROM engagements WHERE user_id = ?", (post.user_id,))
            self._db.execute("DELETE FROM posts WHERE user_id = ? AND post_id NOT IN (SELECT post_id FROM posts "
                             "WHERE user_id = ? ORDER BY written_ms DESC LIMIT ?)", (post.user_id, post.user_id, s.per_user))
            self._db.execute("DELETE FROM claims WHERE user_id = ? AND owner = ?", (post.user_id, s.owner))
            self._puts += 1
            if self._puts % 1000 == 0:  # expired posts, and engagements of users who have none
                self._db.execute("DELETE FROM posts WHERE written_ms < ?", (s.now_ms() - s.keep_ms,))
                self._db.execute("DELETE FROM engagements WHERE user_id NOT IN (SELECT user_id FROM posts)")

    def ready(self, user_id: str) -> list[GeneratedPost]:
        s = self.settings
        with self._lock:
            rows = self._db.execute("SELECT post FROM posts WHERE user_id = ? AND written_ms > ? "
                                    "ORDER BY written_ms DESC LIMIT ?",
                                    (user_id, s.now_ms() - s.ttl_ms, s.per_user)).fetchall()
        return [decode_post(r[0]) for r in rows]

    def get(self, post_id: str) -> GeneratedPost | None:
        with self._lock:
            row = self._db.execute("SELECT post FROM posts WHERE post_id = ? AND written_ms > ?",
                                   (post_id, self.settings.now_ms() - self.settings.keep_ms)).fetchone()
        return None if row is None else decode_post(row[0])

    def needs_post(self, user_id: str) -> bool:
        s = self.settings
        with self._lock:
            live = self._db.execute("SELECT COUNT(*) FROM posts WHERE user_id = ? AND written_ms > ?",
                                    (user_id, s.now_ms() - s.ttl_ms)).fetchone()[0]
            engaged = self._db.execute("SELECT n FROM engagements WHERE user_id = ?", (user_id,)).fetchone()
        return not live or (engaged is not None and engaged[0] >= s.refresh_after)

    def note_engagement(self, user_id: str) -> bool:
        with self._lock, self._transaction():
            if self._db.execute("SELECT 1 FROM posts WHERE user_id = ? LIMIT 1", (user_id,)).fetchone() is None:
                return False
            n = self._db.execute("INSERT INTO engagements VALUES (?, 1) ON CONFLICT (user_id) DO UPDATE SET n = n + 1 "
                                 "RETURNING n", (user_id,)).fetchone()[0]
        return n == self.settings.refresh_after

    def claim(self, user_id: str) -> bool:
        s = self.settings
        now = s.now_ms()
        with self._lock, self._transaction():
            # Taken when free, lapsed or already this store's; otherwise the row is left alone (no change).
            taken = self._db.execute(
                "INSERT INTO claims VALUES (?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET owner = excluded.owner, "
                "until_ms = excluded.until_ms WHERE claims.until_ms < ? OR claims.owner = excluded.owner",
                (user_id, s.owner, now + int(CLAIM_TIMEOUT_S * 1000), now)).rowcount
        return taken == 1

    def release(self, user_id: str) -> None:
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM claims WHERE user_id = ? AND owner = ?", (user_id, self.settings.owner))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Transaction:
    """BEGIN IMMEDIATE (the write lock at once, so two processes' read-then-write never interleave)
    ... COMMIT, or ROLLBACK on an error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, *_) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


# Deletes the claim only if this store holds it (KEYS[1] the claim, ARGV[1] the owner).
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class RedisPostStore:
    """The post store in Redis, shared by feed servers on several machines.

    Keys (under `prefix`): ``post:<id>`` the post (JSON; expires KEEP_AFTER_EXPIRY_S after the
    post does), ``user:<id>:posts`` a sorted set of the user's post ids by written time,
    ``user:<id>:engagements`` a counter, ``claim:<user id>`` the writer (``SET NX PX``).

    Args:
        client: a `redis.Redis` (short socket timeouts: a Redis that is down must fail fast).
        config, clock: as `SqlitePostStore`.
    """

    def __init__(self, client, config: GenerationConfig, clock: Callable[[], float] = time.time,
                 prefix: str = "feed:") -> None:
        self.client, self.settings, self.prefix = client, _Settings(config, clock), prefix
        self._release = client.register_script(_RELEASE)

    def _user(self, user_id: str, what: str) -> str:
        return f"{self.prefix}user:{user_id}:{what}"

    def put(self, post: GeneratedPost) -> None:
        s, written = self.settings, self.settings.written_ms(post)
        posts = self._user(post.user_id, "posts")
        newest = self.client.zrevrange(posts, 0, 0, withscores=True)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(f"{self.prefix}post:{post.post_id}", encode_post(post), px=max(1, written + s.keep_ms - s.now_ms()))
            pipe.zadd(posts, {post.post_id: written}, nx=True)
            pipe.zrange(posts, 0, -(s.per_user + 1))  # beyond the newest per_user
            pipe.pexpire(posts, s.keep_ms)
            _, added, dropped, _ = pipe.execute()
        if dropped:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.zrem(posts, *dropped)
                pipe.delete(*(f"{self.prefix}post:{i.decode()}" for i in dropped))
                pipe.execute()
        if added and (not newest or written >= newest[0][1]):
            self.client.delete(self._user(post.user_id, "engagements"))
        self._release(keys=[f"{self.prefix}claim:{post.user_id}"], args=[s.owner])

    def ready(self, user_id: str) -> list[GeneratedPost]:
        s = self.settings
        ids = self.client.zrevrangebyscore(self._user(user_id, "posts"), "+inf", f"({s.now_ms() - s.ttl_ms}",
                                           start=0, num=s.per_user)
        if not ids:
            return []
        found = self.client.mget([f"{self.prefix}post:{i.decode()}" for i in ids])
        return [decode_post(text) for text in found if text is not None]

    def get(self, post_id: str) -> GeneratedPost | None:
        text = self.client.get(f"{self.prefix}post:{post_id}")
        return None if text is None else decode_post(text)

    def needs_post(self, user_id: str) -> bool:
        s = self.settings
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zcount(self._user(user_id, "posts"), f"({s.now_ms() - s.ttl_ms}", "+inf")
            pipe.get(self._user(user_id, "engagements"))
            live, engaged = pipe.execute()
        return not live or (engaged is not None and int(engaged) >= s.refresh_after)

    def note_engagement(self, user_id: str) -> bool:
        if not self.client.exists(self._user(user_id, "posts")):
            return False
        key = self._user(user_id, "engagements")
        with self.client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.pexpire(key, self.settings.keep_ms)
            n = pipe.execute()[0]
        return n == self.settings.refresh_after

    def claim(self, user_id: str) -> bool:
        key = f"{self.prefix}claim:{user_id}"
        return bool(self.client.set(key, self.settings.owner, nx=True, px=int(CLAIM_TIMEOUT_S * 1000))
                    or self.client.get(key) == self.settings.owner.encode())

    def release(self, user_id: str) -> None:
        self._release(keys=[f"{self.prefix}claim:{user_id}"], args=[self.settings.owner])

    def close(self) -> None:
        self.client.close()


REDIS_TIMEOUT_S = 0.5  # a Redis that does not answer within this fails the call (GetFeed serves without posts)


def make_post_store(config: GenerationConfig, artifacts_dir: str | Path) -> PostStore:
    """The store `[generation] store` names: empty for ``<artifacts_dir>/posts.sqlite``, a file path
    or ``sqlite:///<path>``, or ``redis://host:port/db``."""
    where = config.store
    if where.startswith(("redis://", "rediss://", "unix://")):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis.from_url(where, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S,
                                      retry=Retry(NoBackoff(), 0))  # no retries: a request must not wait for a dead Redis
        return RedisPostStore(client, config)
    if "://" in where and not where.startswith("sqlite:///"):
        raise ValueError(f"[generation] store {where!r}: expected empty (<artifacts_dir>/posts.sqlite), a file path, "
                         "sqlite:///<path> or redis://host:port/db")
    path = Path(where.removeprefix("sqlite://")) if where else Path(artifacts_dir) / "posts.sqlite"
    return SqlitePostStore(path, config)
