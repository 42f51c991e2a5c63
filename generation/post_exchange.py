"""Generated posts shared by the server processes of one launcher (`feed serve --processes N`).

The launcher runs one language model for its processes (`generation.remote.serve_shared`); the
same key-checked connections carry their posts:

- `PostExchange`, in the model's process, keeps every unexpired post, sends each one a process
  publishes to every other process, and catches up a process that subscribes (at its start, or
  after the model's process restarted: each then sends it the posts it has, so none is lost with
  the exchange). It also gives each user's background post one writer at a time (`claim`).
- `SharedPostCache`, in each server process, is its `PostCache`: it publishes what the process
  writes, receives what the others write and asks the exchange before the background worker
  writes a post.

So any process serves any user's post and resolves events logged against it, and a user's post is
written once, not once per process.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from feedcore.config import GenerationConfig
from generation.cache import PostCache
from generation.interface import GeneratedPost

if TYPE_CHECKING:
    from generation.remote import ProcessLanguageModel

logger = logging.getLogger(__name__)
CLAIM_TIMEOUT_S = 300.0  # a claim whose writer neither published nor released (it hung) lapses after this
OUTBOX_SIZE = 10_000  # posts waiting for a member that does not read; beyond it, new ones are dropped for it

Member = Callable[[tuple], None]  # a connection's send function


def post_age_s(post: GeneratedPost) -> float:
    """Seconds since `post` was written, by its wall-clock `created_ms` (0 when it has none)."""
    return max(0.0, time.time() - post.created_ms / 1000.0) if post.created_ms else 0.0


class _Outbox:
    """One member's posts to send, sent by a thread of its own: a member slow to read (or gone)
    holds up no other member, nor the publisher."""

    def __init__(self, member: Member) -> None:
        self.member = member
        self.queue: queue.Queue = queue.Queue(OUTBOX_SIZE)
        threading.Thread(target=self._run, name="posts-out", daemon=True).start()

    def put(self, post: GeneratedPost | None) -> None:
        try:
            self.queue.put_nowait(post)
        except queue.Full:
            logger.warning("post exchange: a member has %d posts unread; dropping %s for it", OUTBOX_SIZE,
                           post.post_id if post else "its stop")

    def _run(self) -> None:
        while (post := self.queue.get()) is not None:
            try:
                self.member(("post", -1, post))
            except Exception:  # noqa: BLE001 (one bad send must not stop the member's later posts)
                logger.exception("post exchange: sending post %s failed", post.post_id)


class PostExchange:
    """The posts of the server processes sharing one model, kept in the model's process.

    Args:
        config: the `[generation]` cache settings (`cache_ttl_s`, `posts_per_user`).
        clock: seconds (monotonic), for claims and the cache's expiry; tests pass their own.

    Members are connections, known by their `send` function; `call` serves a connection's
    request, `leave` drops a member and its claims.
    """

    def __init__(self, config: GenerationConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.posts = PostCache(config, clock)
        self.clock = clock
        self._lock = threading.Lock()
        self._outboxes: dict[Member, _Outbox] = {}
        self._claims: dict[str, tuple[Member, float]] = {}  # user -> (member, claimed at)

    def call(self, member: Member, method: str, args: tuple):
        """Serve `member`'s request `method(*args)`, one of `REQUESTS`."""
        if method not in REQUESTS:
            raise ValueError(f"the post exchange has no {method!r}; expected one of {sorted(REQUESTS)}")
        return REQUESTS[method](self, member, *args)

    def subscribe(self, member: Member, known: list[GeneratedPost]) -> int:
        """Take the posts `member` has (`known`: after a restart of this process they are all
        there is) and send it every post from now on; first, at once, every unexpired post it
        lacks. Returns how many those were."""
        self._take(member, known)
        with self._lock:
            if member not in self._outboxes:
                self._outboxes[member] = _Outbox(member)
        ids = {p.post_id for p in known}
        missing = [p for p in self.posts.snapshot() if p.post_id not in ids]  # after joining: none falls between
        for post in missing:
            member(("post", -1, post))
        return len(missing)

    def claim(self, member: Member, user_id: str, known_ms: int) -> bool:
        """True when `member` is to write the user's background post: no other member holds a
        live claim on it, and no post newer than its newest (written at `known_ms`, 0 for none)
        is on its way to it."""
        now = self.clock()
        newest = self.posts.newest_ms(user_id)
        with self._lock:
            if len(self._claims) > 1000:  # lapsed claims of writers that hung
                self._claims = {u: c for u, c in self._claims.items() if now - c[1] < CLAIM_TIMEOUT_S}
            holder = self._claims.get(user_id)
            if newest > known_ms or (holder is not None and holder[0] != member and now - holder[1] < CLAIM_TIMEOUT_S):
                return False
            self._claims[user_id] = (member, now)
            return True

    def release(self, member: Member, user_id: str) -> None:
        """`member`'s write of the user's post ended without one: the user is free to claim."""
        with self._lock:
            if (claim := self._claims.get(user_id)) is not None and claim[0] == member:
                del self._claims[user_id]

    def publish(self, member: Member, post: GeneratedPost) -> None:
        """Keep `post` and send it to every other member; the user's claim ends."""
        self._take(member, [post])

    def leave(self, member: Member) -> None:
        with self._lock:
            outbox = self._outboxes.pop(member, None)
            self._claims = {u: c for u, c in self._claims.items() if c[0] != member}
        if outbox is not None:
            outbox.put(None)  # its thread ends

    def _take(self, member: Member, posts: list[GeneratedPost]) -> None:
        """Keep the posts this exchange lacks and pass them to the other members."""
        new = [p for p in posts if self.posts.get(p.post_id) is None]
        for post in new:
            self.posts.put(post, post_age_s(post))
        with self._lock:
            for post in posts:
                if (claim := self._claims.get(post.user_id)) is not None and claim[0] == member:
                    del self._claims[post.user_id]
            others = [o for m, o in self._outboxes.items() if m != member]
        for post in new:
            for outbox in others:
                outbox.put(post)


# A member's requests, by the method name it sends (`ProcessLanguageModel.subscribe_posts` etc.).
REQUESTS = {"subscribe_posts": PostExchange.subscribe, "claim_post": PostExchange.claim,
            "release_post": PostExchange.release, "publish_post": PostExchange.publish}


class SharedPostCache(PostCache):
    """A server process's `PostCache` when its posts are shared through `lm` (a
    `ProcessLanguageModel.connect`-ed model): what it writes (`put`) is published to the other
    processes, what they write arrives in `receive`, and `claim` / `release` ask the exchange
    before and after the background worker writes a post.

    A publish that fails (the model's process restarting) is logged; the post stays served here
    and reaches the exchange when this process subscribes again, with every post it has.
    """

    def __init__(self, config: GenerationConfig, lm: ProcessLanguageModel,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config, clock)
        self.lm = lm

    def put(self, post: GeneratedPost, age_s: float = 0.0) -> None:
        super().put(post, age_s)
        try:
            self.lm.publish_post(post)
        except RuntimeError as e:
            logger.warning("post %s is served by this process only until it subscribes again: publishing it "
                           "failed (%s)", post.post_id, e)

    def receive(self, post: GeneratedPost) -> None:
        """Another process's post."""
        super().put(post, post_age_s(post))

    def claim(self, user_id: str) -> bool:
        return self.lm.claim_post(user_id, self.newest_ms(user_id))

    def release(self, user_id: str) -> None:
        self.lm.release_post(user_id)
