"""`feed serve-generation`: the generation service's process (`generation.service`).

It loads the language model, the served catalogue (what posts are grounded in), the served ranker
(the critic's value of a candidate post, as the feed would rank it) and the critic learned from
engagement (`feed train critic`), all reloaded when training writes new artifacts
(`serving.reloader`, every `[serving] reload_interval_s`), then serves
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
from pathlib import Path

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
    ranker), and the critic learned from engagement (`critic_path`, when trained), swapped by
    `serving.reloader.ModelReloader` when training writes new artifacts, as in a feed server: posts
    may then name the new items, and best-of-N follows the newest critic."""

    def __init__(self, pipeline: FeedPipeline, text_embeddings: TextEmbeddings, health=None,
                 critic_path: Path | None = None) -> None:
        self.text_embeddings, self.health = text_embeddings, health
        self.writer: PostWriter | None = None
        self.critic_path = critic_path
        self.learned: EngagementModel | None = None
        self._pipeline = pipeline
        self._load_critic()

    @property
    def pipeline(self) -> FeedPipeline:
        return self._pipeline

    @pipeline.setter
    def pipeline(self, pipeline: FeedPipeline) -> None:
        if self.writer is not None:
            self.writer.catalog = grounding_catalog(pipeline)  # before the swap: no post checked against a mix
        self._pipeline = pipeline
        self._load_critic()

    def _load_critic(self) -> None:
        """(Re)load the learned critic from `critic_path`; one that does not load keeps the last."""
        if self.critic_path is None or not self.critic_path.is_file():
            return
        try:
            learned = EngagementModel.load(self.critic_path)
        except Exception as e:  # noqa: BLE001 (a file being written, a bad file: keep the critic serving)
            logger.error("generation service: critic %s does not load, keeping the last: %s", self.critic_path, e)
            self.report_component("critic", False)
            return
        logger.info("generation service: critic learned from %d post impressions (%s)", learned.impressions,
                    self.critic_path)
        self.learned = learned

    def critic_value(self, user_id: str, texts: list[str], sources: list[SourceItem]) -> np.ndarray:
        """Best-of-N's value of candidate texts: the learned critic's P(engage) when one is loaded,
        else the value model's proxy (`value`), the cold start."""
        learned = self.learned  # one read: a reload may swap it meanwhile
        if learned is None:
            return self.value(user_id, texts, sources)
        return learned.value_fn(self.text_embeddings)(user_id, texts, sources)

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
                          TextEmbeddings(load_text_encoder()), critic_path=engine.critic_path)
    lm = make_language_model(config, engine.llm_cache_dir)
    served.writer = PostWriter(lm, grounding_catalog(served.pipeline), Guardrails(config.guardrails), config,
                               Critic(lm, value_fn=served.critic_value))
    return served.writer, served


def serve_generation(engine: EngineConfig, address: str, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the generation service at `address` until SIGTERM / SIGINT (see the module doc)."""
    writer, served = make_post_writer(engine)
    running = create_generation_server(writer, address)
    reloader = None
    if engine.serving.reload_interval_s > 0:  # new models and items, as the feed servers pick them up
        reloader = ModelReloader(engine, served, engine.serving.reload_interval_s, watch=(engine.critic_path,))
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
