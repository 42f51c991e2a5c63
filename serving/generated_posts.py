"""Generated posts in the feed server: what GetFeed serves of the generative module, and StreamPost.

Posts are written by the generation service (`feed serve-generation`, reached through
`generation.remote.RemotePostWriter`) and kept in the post store (`generation.store`) that every
feed process reads. Here:

- `plan`: what a user's post is written from: their top ranked items (2-4, with titles), through
  the same concurrency gate as GetFeed, and their interests (the top categories of their history);
- `ready`: the user's posts in the store, each with its text embedding, for `FeedPipeline.get_feed`;
  a user with none, or a stale one, is queued for the background writer (`generation.worker`),
  which claims the user in the store, plans, asks the service and puts the post in the store;
- `stream`: one post written now, token by token, for the StreamPost RPC.

A store or service that is down costs posts, never feeds: GetFeed then serves without posts (the
store is not asked again for STORE_RETRY_S after a failure), and the writer waits for its next turn.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator

import numpy as np

from feedcore.config import EngineConfig, GenerationConfig
from feedcore.text import embed_texts, load_text_encoder
from generation.interface import GeneratedPost, PostRequest, SourceItem
from generation.remote import RemotePostWriter
from generation.store import PostStore, make_post_store
from generation.worker import GenerationWorker
from serving.metrics import ServiceMetrics
from serving.page import FeedPage
from serving.pipeline import POST_CONTENT_TYPE, FeedPipeline, FeedRequest, PostCandidate

logger = logging.getLogger(__name__)
PLAN_DEPTH = 30  # ranked items looked at for a post's sources
NO_SOURCE_TYPES = ("account", POST_CONTENT_TYPE)  # never what a post is written from
STORE_RETRY_S = 1.0  # after the store failed, GetFeed serves without asking it for this long


class TextEmbeddings:
    """A bounded, thread-safe memo of post texts → all-MiniLM-L6-v2 embeddings."""

    def __init__(self, encoder, capacity: int = 50_000) -> None:
        self.encoder = encoder
        self.capacity = capacity
        self._lock = threading.Lock()
        self._memo: OrderedDict[str, np.ndarray] = OrderedDict()

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if missing:
            computed = embed_texts(missing, self.encoder)
            with self._lock:
                for text, row in zip(missing, computed, strict=True):
                    self._memo[text] = row
                while len(self._memo) > self.capacity:
                    self._memo.popitem(last=False)
        with self._lock:
            return np.stack([self._memo[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)


class GeneratedPosts:
    """The generative module inside a feed server (built by `make_generated_posts`).

    Args:
        config: the `[generation]` settings.
        pipeline: returns the pipeline serving now (it changes on hot reload).
        feed: a page of the feed through GetFeed's concurrency gate (`FeedServicer.gated_feed`).
        text_embeddings: embeds post texts (all-MiniLM-L6-v2).
        writer: the generation service's client.
        store: the post store.
    """

    def __init__(self, config: GenerationConfig, pipeline: Callable[[], FeedPipeline],
                 feed: Callable[[FeedRequest], FeedPage], text_embeddings: TextEmbeddings, writer: RemotePostWriter,
                 store: PostStore) -> None:
        self.config, self.pipeline, self.feed = config, pipeline, feed
        self.text_embeddings, self.writer, self.store = text_embeddings, writer, store
        self.worker: GenerationWorker | None = None
        self._store_down_until = 0.0

    def plan(self, user_id: str) -> tuple[list[SourceItem], list[str]] | None:
        """The sources of a post for `user_id` (their top ranked items that have titles) and their
        interests; None when the feed has fewer than two such items for them."""
        pipeline = self.pipeline()
        page = self.feed(FeedRequest(user_id=user_id, page_size=PLAN_DEPTH))
        sources = [pipeline.source_item(i.item_id) for i in page.items
                   if i.content_type not in NO_SOURCE_TYPES and i.title]
        sources = sources[: self.config.sources_per_post]
        if len(sources) < 2:
            return None
        return sources, pipeline.interests(user_id)

    def _ask_store(self, what: str, call: Callable, default):
        """`call()`, or `default` (with one warning per outage) while the store is unreachable."""
        if time.monotonic() < self._store_down_until:
            return default
        try:
            answer = call()
        except Exception as e:  # noqa: BLE001 (a store that is down costs posts, never the feed)
            if not self._store_down_until:
                logger.warning("post store unreachable (%s: %s: %s): serving without posts", what, type(e).__name__, e)
            self._store_down_until = time.monotonic() + STORE_RETRY_S
            return default
        if self._store_down_until:
            self._store_down_until = 0.0
            logger.info("post store reachable again")
        return answer

    def ready(self, user_id: str) -> tuple[PostCandidate, ...]:
        """The user's ready posts with their text embeddings; queues a (re)write when there is
        none or they are stale. Never waits for generation."""
        posts = self._ask_store("ready", lambda: self.store.ready(user_id), [])
        if self.worker is not None and self._ask_store("needs_post", lambda: self.store.needs_post(user_id), False):
            self.worker.request(user_id)  # deduplicated: a user already queued is not queued again
        if not posts:
            return ()
        embeddings = self.text_embeddings([p.text for p in posts])
        return tuple(PostCandidate(p, e) for p, e in zip(posts, embeddings, strict=True))

    def note_engagement(self, user_id: str) -> None:
        """A logged engagement: after `refresh_after_events` of them the user's post is rewritten."""
        if self._ask_store("note_engagement", lambda: self.store.note_engagement(user_id), False) and self.worker:
            self.worker.request(user_id)

    def lookup(self, post_id: str) -> GeneratedPost | None:
        return self._ask_store("get", lambda: self.store.get(post_id), None)

    def stream(self, user_id: str, surface: str, max_new_tokens: int) -> Iterator[str | GeneratedPost]:
        """The post sentence by sentence as each passes the checks, then the post (also stored for the feed).
        LookupError when the user has too few ranked items to write from."""
        planned = self.plan(user_id)
        if planned is None:
            raise LookupError(f"user {user_id!r} has fewer than 2 ranked items with titles to write a post from")
        sources, interests = planned
        request = PostRequest(user_id=user_id, sources=tuple(sources), surface=surface, interests=tuple(interests))
        for piece in self.writer.stream(request, max_new_tokens):
            if isinstance(piece, GeneratedPost):
                self.text_embeddings([piece.text])  # ready before the feed serves it
                self._ask_store("put", lambda p=piece: self.store.put(p), None)
            yield piece

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop writing: the worker finishes (bounded) the batch under way, then the client closes
        (a call still running ends as unavailable, which the worker logs in one line)."""
        if self.worker is not None:
            self.worker.stop(timeout_s)
        self.writer.close()
        self.store.close()


def make_generated_posts(engine: EngineConfig, service: str, pipeline: Callable[[], FeedPipeline],
                         feed: Callable[[FeedRequest], FeedPage] | None = None,
                         metrics: ServiceMetrics | None = None) -> GeneratedPosts:
    """Connect to the generation service at `service`, open the post store, start the background
    writer and queue the most active users' posts. `feed` defaults to the pipeline's own get_feed
    (no gate)."""
    config = engine.generation
    current = pipeline()
    posts = GeneratedPosts(config, pipeline, feed or (lambda request: pipeline().get_feed(request)),
                           TextEmbeddings(load_text_encoder()), RemotePostWriter(service),
                           make_post_store(config, engine.artifacts_dir))
    posts.worker = GenerationWorker(posts.writer, posts.store, posts.plan, config,
                                    on_posts=lambda p: posts.text_embeddings([x.text for x in p])).start()
    if metrics is not None:
        metrics.watch_generation(lambda: Counter({f"worker:{k}": n for k, n in posts.worker.stats.items()}))
    most_active = sorted(current.seen, key=lambda u: (-len(current.seen[u]), u))
    queued = posts.worker.warm(most_active)
    logger.info("generation: posts from the generation service at %s, kept in %s; %d active users queued for posts",
                service, config.store or "<artifacts_dir>/posts.sqlite", queued)
    return posts
