"""Generated posts in the service: what the feed serves of the generative module, and StreamPost.

The generative module (`generation/`) writes posts; this file connects it to the served models:

- `plan`: what a user's post is written from: their top ranked items (2-4, with titles) from the
  feed pipeline, and their interests (the top categories of their history);
- `value`: the critic's score of a candidate post for its user: the value model over the unified
  ranker's predictions for the post as an item (content type ``generated``, its sources'
  categories, its text embedding and its item-space embedding from the retrieval model's content
  path), so a post is judged the way the feed will rank it;
- `ready`: the posts written for a user so far (from the per-user cache, never waiting), each
  with its text embedding, for `FeedPipeline.get_feed`; a user with none, or a stale one, is
  queued for the background worker;
- `stream`: one post written now, token by token, for the StreamPost RPC.

The pipeline is read through a callable on every use, so hot-reloaded models take effect here too,
and posts are checked against the catalogue of the pipeline serving when they are planned.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from feedcore.config import EngineConfig, GenerationConfig
from feedcore.text import embed_texts, load_text_encoder
from generation.cache import PostCache
from generation.critic import Critic
from generation.grounding import Catalog
from generation.guardrails import Guardrails
from generation.interface import GeneratedPost, PostRequest, SourceItem
from generation.llm import make_language_model
from generation.post_exchange import SharedPostCache
from generation.remote import START_TIMEOUT_S, ProcessLanguageModel
from generation.worker import GenerationWorker
from generation.writer import PostWriter
from serving.metrics import ServiceMetrics
from serving.pipeline import POST_CONTENT_TYPE, FeedPipeline, FeedRequest, PostCandidate

logger = logging.getLogger(__name__)
PLAN_DEPTH = 30  # ranked items looked at for a post's sources
NO_SOURCE_TYPES = ("account", POST_CONTENT_TYPE)  # never what a post is written from


class TextEmbeddings:
    """A bounded, thread-safe memo of post texts → all-MiniLM-L6-v2 embeddings (the critic embeds
    every candidate in the worker thread, so the chosen post's embedding is ready when it is served)."""

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


class EmbeddingWriter:
    """The worker's `PostGenerator`: the posts `writer` writes are embedded as they are written, in
    the worker thread, so the GetFeed that first serves one (a template fallback, say, which the
    critic never scored) finds its embedding ready instead of computing it on the request path."""

    def __init__(self, writer: PostWriter, text_embeddings: TextEmbeddings) -> None:
        self.writer, self.text_embeddings = writer, text_embeddings
        self.model_version = writer.model_version

    def write(self, requests) -> list[GeneratedPost]:
        posts = self.writer.write(requests)
        self.text_embeddings([p.text for p in posts])
        return posts


class GeneratedPosts:
    """The generative module inside the service (built by `make_generated_posts`).

    Args:
        config: the `[generation]` settings.
        pipeline: returns the pipeline serving now (it changes on hot reload).
        text_embeddings: embeds post texts (all-MiniLM-L6-v2).
        writer, cache, worker: the generation module's post writer, per-user cache and background
            worker (`generation.writer`, `generation.cache`); the worker calls `plan` and the
            writer's critic calls `value`.
    """

    def __init__(self, config: GenerationConfig, pipeline: Callable[[], FeedPipeline],
                 text_embeddings: TextEmbeddings, writer=None, cache=None, worker=None) -> None:
        self.config = config
        self.pipeline = pipeline
        self.text_embeddings = text_embeddings
        self.writer, self.cache, self.worker = writer, cache, worker
        self._grounded_in: FeedPipeline | None = None  # the pipeline whose catalogue the writer checks against
        self._lock = threading.Lock()
        # Embeds the posts other processes write (its thread starts with the first one).
        self._embedder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="posts-in")

    # -- what posts are written from, and how the feed would value them --

    def plan(self, user_id: str) -> tuple[list[SourceItem], list[str]] | None:
        """The sources of a post for `user_id` (their top ranked items that have titles) and their
        interests; None when the feed has fewer than two such items for them."""
        pipeline = self.pipeline()
        self.ground_in(pipeline)
        page = pipeline.get_feed(FeedRequest(user_id=user_id, page_size=PLAN_DEPTH))
        sources = [pipeline.source_item(i.item_id) for i in page.items
                   if i.content_type not in NO_SOURCE_TYPES and i.title]
        sources = sources[: self.config.sources_per_post]
        if len(sources) < 2:
            return None
        return sources, pipeline.interests(user_id)

    def ground_in(self, pipeline: FeedPipeline) -> None:
        """Check posts against `pipeline`'s catalogue from now on: after a hot reload brings new
        items, posts may name them (built once per served pipeline, before a post is planned)."""
        if self.writer is None or pipeline is self._grounded_in:
            return
        with self._lock:
            if pipeline is not self._grounded_in:
                self.writer.catalog = grounding_catalog(pipeline)
                self._grounded_in = pipeline

    def value(self, user_id: str, texts: list[str], sources: list[SourceItem]) -> np.ndarray:
        """(n,) the value model's score of each candidate post text for `user_id`, as the feed
        would rank it (the same hydration, ranker and weights as GetFeed on the home surface)."""
        if not texts:
            return np.zeros(0)
        source_ids = tuple(s.item_id for s in sources)
        return self.pipeline().score_posts(user_id, [source_ids] * len(texts), self.text_embeddings(list(texts)))

    # -- the feed's side: never waits --

    def ready(self, user_id: str) -> tuple[PostCandidate, ...]:
        """The user's ready posts with their text embeddings (memoized when they were written);
        queues a (re)write when there is none or they are stale."""
        posts = self.cache.ready(user_id)
        if self.worker is not None and self.cache.needs_post(user_id):
            self.worker.request(user_id)  # deduplicated: a user already queued is not queued again
        if not posts:
            return ()
        embeddings = self.text_embeddings([p.text for p in posts])
        return tuple(PostCandidate(p, e) for p, e in zip(posts, embeddings, strict=True))

    def note_engagement(self, user_id: str) -> None:
        """A logged engagement: after `refresh_after_events` of them the user's post is rewritten."""
        if self.cache.note_engagement(user_id) and self.worker is not None:
            self.worker.request(user_id)

    def receive(self, post: GeneratedPost) -> None:
        """A post another server process wrote (`SharedPostCache`), from the model connection's
        reader, which must not wait: cached at once (events logged against it resolve), embedded
        in a thread of its own, so the GetFeed that serves it rarely embeds it itself."""
        self.cache.receive(post)
        self._embedder.submit(self.text_embeddings, [post.text])  # a failure leaves it to GetFeed to embed

    def lookup(self, post_id: str) -> GeneratedPost | None:
        return self.cache.get(post_id)

    # -- StreamPost --

    def stream(self, user_id: str, surface: str, max_new_tokens: int) -> Iterator[str | GeneratedPost]:
        """The raw model output piece by piece, then the checked post (also cached for the feed).
        LookupError when the user has too few ranked items to write from."""
        planned = self.plan(user_id)
        if planned is None:
            raise LookupError(f"user {user_id!r} has fewer than 2 ranked items with titles to write a post from")
        sources, interests = planned
        request = PostRequest(user_id=user_id, sources=tuple(sources), surface=surface, interests=tuple(interests))
        for piece in self.writer.stream(request, max_new_tokens=max_new_tokens):
            if isinstance(piece, GeneratedPost):
                self.text_embeddings([piece.text])  # ready before the feed can serve it
                self.cache.put(piece)
            yield piece

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop writing: the model's own process first (the batch under way ends with an error the
        worker logs, instead of holding a graceful shutdown for minutes), then the worker."""
        close = getattr(self.writer.lm if self.writer is not None else None, "close", None)
        if close is not None:
            close()
        if self.worker is not None:
            self.worker.stop(timeout_s)  # a daemon thread: an in-process model is not waited for
        self._embedder.shutdown(wait=False, cancel_futures=True)


def grounding_catalog(pipeline: FeedPipeline) -> Catalog:
    """Every titled item `pipeline` serves, for the grounding check."""
    return Catalog((item_id, title, content_type) for item_id, (content_type, title) in pipeline.catalog.items())


def make_generated_posts(engine: EngineConfig, pipeline: Callable[[], FeedPipeline],
                         metrics: ServiceMetrics | None = None,
                         shared_model: tuple[str, bytes] | None = None) -> GeneratedPosts:
    """Load the language model (converted weights cached under `engine.llm_cache_dir`), or
    connect to the shared one at `shared_model` (its socket address and key), and the text
    encoder; build the writer (grounded in the served catalogue, guarded, with the ranker as its
    critic), the cache and the background worker, and queue the most active users' posts."""
    config = engine.generation
    if shared_model is not None:  # the launcher's, under `feed serve --processes N`
        lm = ProcessLanguageModel.connect(*shared_model, wait_s=START_TIMEOUT_S)  # it may be restarting
        cache = SharedPostCache(config, lm)  # the posts of every process on the one model
    else:
        lm = (ProcessLanguageModel(config, engine.llm_cache_dir) if config.isolation == "process"
              else make_language_model(config, engine.llm_cache_dir))
        cache = PostCache(config)
    current = pipeline()
    posts = GeneratedPosts(config, pipeline, TextEmbeddings(load_text_encoder()))
    # The catalogue comes from `ground_in` (and again after each hot reload).
    writer = PostWriter(lm, Catalog(()), Guardrails(config.guardrails), config, Critic(lm, value_fn=posts.value))
    posts.writer, posts.cache = writer, cache
    # Under a shared model, the posts the other processes wrote so far, then each one they write.
    received = lm.subscribe_posts(posts.receive, cache.snapshot) if shared_model is not None else 0
    posts.ground_in(current)
    posts.worker = GenerationWorker(EmbeddingWriter(writer, posts.text_embeddings), cache, posts.plan, config).start()
    if metrics is not None:
        metrics.watch_generation(lambda: writer.stats + Counter({f"worker:{k}": n for k, n in posts.worker.stats.items()}))
    most_active = sorted(current.seen, key=lambda u: (-len(current.seen[u]), u))
    queued = posts.worker.warm(most_active)
    logger.info("generation: %s ready, %d titles to ground posts in; %d active users queued for posts%s",
                lm.model_version, len(writer.catalog), queued,
                f" (with the other processes; {received} of their posts received)" if shared_model else "")
    return posts
