"""The background worker that writes posts ahead of time and fills the `PostCache`.

One daemon thread takes user ids from a queue (deduplicated: a user queued or being written is
not queued again), skips those whose post is fresh by then or whose claim the cache refuses (a
`generation.post_exchange.SharedPostCache`: another process writes it), asks the injected
`plan(user_id)` what to write from, writes posts for up to `batch_size` users at once with the
`PostGenerator` and puts them in the cache. A failing `plan` or `write` is logged and counted
(`GenerationWorker.stats`) and never stops the thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable

from feedcore.config import GenerationConfig
from generation.cache import PostCache
from generation.interface import PostGenerator, PostRequest, SourceItem

logger = logging.getLogger(__name__)

PlanFn = Callable[[str], "tuple[list[SourceItem], list[str]] | None"]
"""plan(user_id) -> (sources, interests), or None when there is nothing to write from."""

_STOP = object()


class GenerationWorker:
    """Writes posts for queued users in a background thread.

    Args:
        writer: writes posts for a batch of requests (`PostWriter`).
        cache: where written posts go.
        plan: a user's sources (2-4 `SourceItem`s, the feed's top items for them) and interests.
        config: `batch_size` (users written together), `warm_users`, `sources_per_post`.
        surface: the surface posts are written for.

    Call `start()`, then `request(user_id)` / `warm(user_ids)`; `stop()` joins the thread.
    """

    def __init__(self, writer: PostGenerator, cache: PostCache, plan: PlanFn, config: GenerationConfig,
                 surface: str = "home") -> None:
        self.writer, self.cache, self.plan, self.config, self.surface = writer, cache, plan, config, surface
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._wanted: set[str] = set()  # queued or being written
        self._idle = threading.Condition(self._lock)
        self._stats: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._run, name="generation-worker", daemon=True)

    @property
    def stats(self) -> Counter[str]:
        """Counts so far: batches, posts, no_plan, fresh (had a fresh post by the time it was
        taken), written_elsewhere (claimed by another process), claim_errors, plan_errors,
        write_errors."""
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
                if not self.cache.needs_post(user_id):  # written since it was queued (here, or by another process)
                    self._count("fresh")
                    continue
                try:
                    mine = self.cache.claim(user_id)
                except Exception:
                    self._count("claim_errors")
                    logger.exception("claiming the post of user %s failed", user_id)
                    continue
                if not mine:  # another process sharing the posts is writing it, or has
                    self._count("written_elsewhere")
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
            for post in posts:
                self.cache.put(post)  # a shared cache's publish ends the claim
                claimed.discard(post.user_id)
            self._count("batches")
            self._count("posts", len(posts))
        finally:
            for user_id in claimed:  # claimed, but no post came of it: others may write it
                try:
                    self.cache.release(user_id)
                except Exception:  # noqa: BLE001 (a claim not released lapses at the exchange)
                    logger.exception("releasing the claim on user %s's post failed", user_id)
