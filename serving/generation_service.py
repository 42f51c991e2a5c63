"""`feed serve-generation`: the generation service's process (`generation.service`).

It loads the language model, the served catalogue (what posts are grounded in) and the served
ranker (the critic's value of a candidate post, as the feed would rank it), both reloaded when
training writes new artifacts (`serving.reloader`, every `[serving] reload_interval_s`), then serves
`generation.v1.GenerationService` until SIGTERM / SIGINT: NOT_SERVING, calls in progress get
GRACE_SECONDS, then it exits. It decodes in its own process, so decoding never competes with a
feed server's interpreter, and it may run on another machine (a GPU box) with the same artifacts.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

import numpy as np

from feedcore.config import EngineConfig
from feedcore.text import load_text_encoder
from generation.critic import Critic
from generation.engagement import EngagementModel
from generation.grounding import Catalog
from generation.guardrails import Guardrails
from generation.interface import SourceItem
from generation.llm import make_language_model
from generation.service import create_generation_server
from generation.writer import PostWriter
from serving.generated_posts import TextEmbeddings
from serving.pipeline import FeedPipeline
from serving.process import LAUNCHER_GONE
from serving.reloader import ModelReloader

logger = logging.getLogger(__name__)
GRACE_SECONDS = 5.0  # a batch under way gets this long at shutdown (the feed servers have stopped asking)


def grounding_catalog(pipeline: FeedPipeline) -> Catalog:
    """Every titled item `pipeline` serves, for the grounding check."""
    return Catalog((item_id, title, content_type) for item_id, (content_type, title) in pipeline.catalog.items())


class ServedModels:
    """The pipeline the service's writer grounds posts in (its catalogue) and values them with (its
    ranker), swapped by `serving.reloader.ModelReloader` when training writes new artifacts, as in
    a feed server: posts may then name the new items."""

    def __init__(self, pipeline: FeedPipeline, text_embeddings: TextEmbeddings, health=None) -> None:
        self.text_embeddings, self.health = text_embeddings, health
        self.writer: PostWriter | None = None
        self._pipeline = pipeline

    @property
    def pipeline(self) -> FeedPipeline:
        return self._pipeline

    @pipeline.setter
    def pipeline(self, pipeline: FeedPipeline) -> None:
        if self.writer is not None:
            self.writer.catalog = grounding_catalog(pipeline)  # before the swap: no post checked against a mix
        self._pipeline = pipeline

    def value(self, user_id: str, texts: list[str], sources: list[SourceItem]) -> np.ndarray:
        """The critic's value: the value model's score of each candidate text for its user, as the
        feed would rank the post (the same hydration, ranker and weights as GetFeed)."""
        if not texts:
            return np.zeros(0)
        source_ids = tuple(s.item_id for s in sources)
        return self._pipeline.score_posts(user_id, [source_ids] * len(texts), self.text_embeddings(list(texts)))

    def report_component(self, component: str, ok: bool) -> None:
        (logger.info if ok else logger.error)("generation service: %s %s", component, "ok" if ok else "failing")


def make_post_writer(engine: EngineConfig, pipeline: FeedPipeline | None = None) -> tuple[PostWriter, ServedModels]:
    """The service's writer: the language model (converted weights cached under
    `engine.llm_cache_dir`), grounded in the served catalogue, guarded, with the critic's value
    learned from engagement (`feed train critic`, `engine.critic_path`) when trained, else the
    served ranker's value of the post (the pipeline is loaded from `engine`'s artifacts when not
    given)."""
    config = engine.generation
    served = ServedModels(pipeline if pipeline is not None else FeedPipeline.from_artifacts(engine),
                          TextEmbeddings(load_text_encoder()))
    lm = make_language_model(config, engine.llm_cache_dir)
    value_fn = served.value  # the value model's proxy: the cold start
    if engine.critic_path.is_file():  # the reward model learned from engagement with posts
        learned = EngagementModel.load(engine.critic_path)
        logger.info("generation service: critic learned from %d post impressions (%s)", learned.impressions,
                    engine.critic_path)
        value_fn = learned.value_fn(served.text_embeddings)
    served.writer = PostWriter(lm, grounding_catalog(served.pipeline), Guardrails(config.guardrails), config,
                               Critic(lm, value_fn=value_fn))
    return served.writer, served


def serve_generation(engine: EngineConfig, address: str, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the generation service at `address` until SIGTERM / SIGINT (see the module doc)."""
    writer, served = make_post_writer(engine)
    running = create_generation_server(writer, address)
    reloader = None
    if engine.serving.reload_interval_s > 0:  # new models and items, as the feed servers pick them up
        reloader = ModelReloader(engine, served, engine.serving.reload_interval_s)
        reloader.start()
    stopping = threading.Event()

    def shutdown(signum, _frame) -> None:
        if stopping.is_set():
            return
        logger.info("signal %s: stopping the generation service", signal.Signals(signum).name)
        running.health.enter_graceful_shutdown()
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT, LAUNCHER_GONE):
        signal.signal(signum, shutdown)
    running.server.start()
    logger.info("generation service: %s on %s, %d titles to ground posts in", writer.model_version,
                running.address, len(writer.catalog))
    if on_ready is not None:
        on_ready(running.address)
    stopping.wait()
    if reloader is not None:
        reloader.stop()
    running.server.stop(GRACE_SECONDS).wait(GRACE_SECONDS + 5.0)
    logger.info("generation service stopped")
    # A batch still decoding after the grace period is cut off: its worker thread would hold up the exit.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)
