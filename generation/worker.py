"""The background writer of a feed server: posts written ahead of time into the post store.

One daemon thread takes user ids from a queue (deduplicated: a user queued or being written is
not queued again), skips those whose post is fresh by then (written here, by another process or on
another machine) or whose claim the store refuses (another process writes it), asks the injected
`plan(user_id)` what to write from, has the `PostGenerator` (the generation service's client) write
posts for up to `batch_size` users at once and puts them in the store. Nothing stops the thread:
a failing `plan` is logged with its traceback, a generation service or store that is unreachable
(`ModelUnavailable`, a store connection error) in one line, and each is counted
(`GenerationWorker.stats`); the users whose posts were not written are queued again by their next
GetFeed.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable

from feedcore.config import GenerationConfig
from generation.interface import GeneratedPost, PostGenerator, PostRequest, SourceItem
from generation.remote import ModelUnavailable
from generation.store import PostStore

logger = logging.getLogger(__name__)

PlanFn = Callable[[str], "tuple[list[SourceItem], list[str]] | None"]
"""plan(user_id) -> (sources, interests), or None when there is nothing to write from."""

_STOP = object()


class GenerationWorker:
    """Writes posts for queued users in a background thread.

    Args:
        writer: writes posts for a batch of requests (`PostWriter`).
        store: where written posts go, and who writes a user's post (`claim`).
        plan: a user's sources (2-4 `SourceItem`s, the feed's top items for them) and interests.
        config: `batch_size` (users written together), `warm_users`, `sources_per_post`.
        surface: the surface posts are written for.
        on_posts: called with each batch's posts before they are stored (say, to embed their texts).

    Call `start()`, then `request(user_id)` / `warm(user_ids)`; `stop()` joins the thread.
    """

    def __init__(self, writer: PostGenerator, store: PostStore, plan: PlanFn, config: GenerationConfig,
                 surface: str = "home", on_posts: Callable[[list[GeneratedPost]], object] | None = None) -> None:
        self.writer, self.store, self.plan, self.config, self.surface = writer, store, plan, config, surface
        self.on_posts = on_posts
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._wanted: set[str] = set()  # queued or being written
        self._idle = threading.Condition(self._lock)
        self._stats: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._run, name="generation-worker", daemon=True)

    @property
    def stats(self) -> Counter[str]:
        """Counts so far: batches, posts, no_plan, fresh (had a fresh post by the time it was
        taken), written_elsewhere (claimed by another process), store_errors, plan_errors,
        unavailable (the generation service was not reachable), write_errors."""
        with self._lock:
            return Counter(self._stats)

    def start(self) -> GenerationWorker:
        self._thread.start()
        return self

    def request(self, user_id: str) -> bool:
        """Queue a (re)write of the user's post; False when one is already queued or under way."""
        with self._lock:
            if user_id in self._wanted:
                return False
            self._wanted.add(user_id)
        self._queue.put(user_id)
        return True

    def warm(self, user_ids: Iterable[str]) -> int:
        """Queue the first `warm_users` of `user_ids` (the most active users, at start); how many were queued."""
        queued = 0
        for n, user_id in enumerate(user_ids):
            if n >= self.config.warm_users:
                break
            queued += self.request(user_id)
        return queued

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or being written; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._wanted, timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Finish the batch under way, drop what is still queued, join the thread."""
        self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def _done(self, users: Iterable[str]) -> None:
        with self._idle:
            self._wanted.difference_update(users)
            self._idle.notify_all()

    def _run(self) -> None:
        size = max(1, self.config.batch_size)
        while True:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stopping = [first], False
            while len(batch) < size:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stopping = True
                    break
                batch.append(more)
            try:
                self._write(batch)
            except ModelUnavailable as e:  # stopped or restarting: these users wait for their next GetFeed
                self._count("unavailable")
                logger.warning("generation batch of %d users not written: %s", len(batch), e)
            except Exception:  # the thread must outlive any one batch
                self._count("write_errors")
                logger.exception("generation batch of %d users failed", len(batch))
            finally:
                self._done(batch)
            if stopping:
                break
        with self._idle:
            self._wanted.clear()
            self._idle.notify_all()

    def _write(self, users: list[str]) -> None:
        claimed: set[str] = set()
        try:
            requests = []
            for user_id in users:
                try:
                    if not self.store.needs_post(user_id):  # written since it was queued (here, or elsewhere)
                        self._count("fresh")
                        continue
                    if not self.store.claim(user_id):  # another process is writing it
                        self._count("written_elsewhere")
                        continue
                except Exception as e:  # noqa: BLE001 (the store is down: no posts until it is back)
                    self._count("store_errors")
                    logger.warning("post store: user %s's post not claimed (%s: %s)", user_id, type(e).__name__, e)
                    continue
                claimed.add(user_id)
                try:
                    planned = self.plan(user_id)
                except Exception:
                    self._count("plan_errors")
                    logger.exception("planning the post of user %s failed", user_id)
                    continue
                if planned is None:
                    self._count("no_plan")
                    continue
                sources, interests = planned
                requests.append(PostRequest(user_id, tuple(sources), self.surface, tuple(interests)))
            if not requests:
                return
            posts = self.writer.write(requests)
            if self.on_posts is not None:
                self.on_posts(posts)
            self._count("batches")
            for post in posts:
                try:
                    self.store.put(post)  # ends the claim
                except Exception as e:  # noqa: BLE001 (the store is down: this post is lost, the next is written)
                    self._count("store_errors")
                    logger.warning("post store: user %s's post not stored (%s: %s)", post.user_id, type(e).__name__, e)
                    continue
                claimed.discard(post.user_id)
                self._count("posts")
        finally:
            for user_id in claimed:  # claimed, but no post came of it: others may write it
                try:
                    self.store.release(user_id)
                except Exception as e:  # noqa: BLE001 (a claim not released lapses in the store)
                    logger.warning("post store: the claim on user %s's post not released (%s)", user_id, e)
