"""One feed request, end to end, as a straight line through named stages, each in its own module:

    candidates (`retrieval.candidates`) → hydration (`serving.hydration`) → ranking (`serving.ranking`)
    → mixing (`serving.mixing`: value model, blend, exploration) → page (`serving.page`)

`FeedPipeline.get_feed` is the one place that calls them, in that order; `FeedPipeline.from_artifacts`
rebuilds the pipeline from what the training jobs wrote.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time

import numpy as np
import polars as pl
import torch

from feedcore.artifacts import load_checkpoint
from feedcore.config import BlendConfig, EngineConfig, ServingConfig, resolve_device
from feedcore.errors import ArtifactError
from feedcore.events import now_ms
from feedcore.features import (
    FeatureSpec,
    ItemFeatures,
    NewItems,
    history_events,
    item_features_from_dict,
    latest_histories,
    pad_histories,
)
from feedcore.schemas import CanonicalDataset, dataset_fingerprint
from generation.interface import GeneratedPost, SourceItem
from ranker.batching import RankerBatch, RetrievalScorer, ranker_item_embeddings
from ranker.model import MultiTaskRanker, quantize_for_serving
from retrieval.candidates import CandidateGenerator, Candidates, UserState, make_candidate_generator
from retrieval.embed import embed_users
from retrieval.index import ItemIndex
from retrieval.model import TwoTower
from serving.cursors import decode_cursor
from serving.hydration import hydrate, post_features
from serving.mixing.blender import blend_by_value_model
from serving.mixing.exploration import ExplorationConfig, explore_session
from serving.mixing.value_model import value_scores
from serving.page import FeedPage, RankedItem, page_of
from serving.ranking import predict

logger = logging.getLogger(__name__)
POST_CONTENT_TYPE = "generated"  # the content type of generated posts
POST_SOURCE = "generated"  # their candidate source (a ranker feature, `RankerArgs.source_ids`)


@dataclasses.dataclass(frozen=True)
class FeedRequest:
    user_id: str
    page_size: int
    cursor: str = ""
    surface: str = "home"
    arm: str = ""  # the experiment arm serving this request (cursors are only valid within it)
    value_weights: dict[str, float] | None = None  # the arm's; None: the server's for the surface
    blend: BlendConfig | None = None  # the arm's; None: the server's
    # Logged impressions: items shown before this session started are filtered out. A session's
    # pages all use its first page's time, so items logged meanwhile never shift later pages.
    recently_seen: RecentlySeen | None = None
    exploration: ExplorationConfig | None = None  # the arm's; None: the blended order as is
    # Generated posts ready for this user (`serving.generated_posts`); ranked like any candidate.
    # Only posts written before the session started take part, so later pages never shift.
    posts: tuple[PostCandidate, ...] = ()
    # An exploring session's first page carries the whole sampled order (`FeedPage.session`) only
    # when it will be logged (`serving.session_rankings`): a server with no event log skips it.
    log_session: bool = True


@dataclasses.dataclass(frozen=True)
class PostCandidate:
    """A generated post ready to be served, with its text embedding (all-MiniLM-L6-v2, computed
    once when it was written, off the request path)."""

    post: GeneratedPost
    text_embedding: np.ndarray  # (384,)


class RecentlySeen:
    """Items each user was shown lately (from logged impressions), kept `ttl_s` and at most
    `max_per_user` per user; the feed filters them out. Thread-safe."""

    def __init__(self, ttl_s: float = 7 * 86_400, max_per_user: int = 1_000) -> None:
        self.ttl_ms = int(ttl_s * 1000)
        self.max_per_user = max_per_user
        self._lock = threading.Lock()
        self._shown: dict[str, collections.OrderedDict[str, int]] = {}

    def add(self, user_id: str, item_id: str, ts_ms: int) -> None:
        with self._lock:
            shown = self._shown.setdefault(user_id, collections.OrderedDict())
            shown.pop(item_id, None)
            shown[item_id] = ts_ms
            while len(shown) > self.max_per_user:
                shown.popitem(last=False)

    def before(self, user_id: str, ts_ms: int) -> frozenset[str]:
        """Items shown to the user before `ts_ms` and within the TTL of it."""
        with self._lock:
            shown = self._shown.get(user_id)
            if not shown:
                return frozenset()
            return frozenset(i for i, t in shown.items() if ts_ms - self.ttl_ms <= t < ts_ms)


class FeedPipeline:
    """The models, index and per-user state behind GetFeed."""

    def __init__(
        self,
        *,
        spec: FeatureSpec,
        item_features: ItemFeatures,
        items: pl.DataFrame,
        events: pl.DataFrame,
        candidates: CandidateGenerator,
        ranker: MultiTaskRanker,
        serving: ServingConfig,
        model_version: str,
        item_embeddings: np.ndarray | None = None,
        retrieval: TwoTower | None = None,
        retrieval_spec: FeatureSpec | None = None,
        retrieval_scorer: RetrievalScorer | None = None,
    ) -> None:
        self.spec = spec
        self.item_features = item_features
        self.catalog = {r[0]: (r[1], r[2] or "") for r in items.select("item_id", "content_type", "title").iter_rows()}
        self.creators = ({} if "creator_id" not in items.columns else
                         dict(items.select("item_id", "creator_id").drop_nulls().iter_rows()))
        self.seen = {u: frozenset(ids) for u, ids in events.group_by("user_id").agg(pl.col("item_id")).iter_rows()}
        self.histories = latest_histories(events, spec)  # the training-time transform (no skew)
        self.candidates = candidates
        self.ranker = ranker.eval()
        self.serving = serving
        self.model_version = model_version
        self.item_embeddings = item_embeddings  # (N, D) in vocabulary order, for the blender's diversity
        self.retrieval = retrieval  # embeds generated posts into the item space (content path)
        self.retrieval_scorer = retrieval_scorer  # the ranker's retrieval-score feature, as in training
        self.retrieval_spec = retrieval_spec or spec

    @classmethod
    def from_artifacts(cls, config: EngineConfig) -> FeedPipeline:
        """Load the prepared data, both models and the index; refuse mismatched or missing parts."""
        data = CanonicalDataset.read(config.prepared_dir)
        retrieval_ckpt = load_checkpoint(config.retrieval_path, "retrieval")
        ranker_ckpt = load_checkpoint(config.ranker_path, "ranker")
        index = ItemIndex.load(config.index_dir)
        if resolve_device(config.retrieval.device).startswith("cuda"):
            index.to_gpus()
        data_fingerprint = dataset_fingerprint(config.prepared_dir)
        for path, ckpt in ((config.retrieval_path, retrieval_ckpt), (config.ranker_path, ranker_ckpt)):
            if ckpt.data_fingerprint != data_fingerprint:
                raise ArtifactError(f"{path} was trained on other data than {config.prepared_dir} holds now "
                                    f"({ckpt.data_fingerprint} vs {data_fingerprint}); run `feed train {ckpt.kind}`")
        if (retrieval_ckpt.extras["history_events"] != ranker_ckpt.extras["history_events"]
                or retrieval_ckpt.feature_spec.max_history != ranker_ckpt.feature_spec.max_history):
            raise ArtifactError(f"{config.retrieval_path} and {config.ranker_path} use different histories "
                                "(history_events / max_history); retrain both with one config")
        predicted = {t["name"] for t in ranker_ckpt.config["tasks"]}
        for surface, weights in {"": config.serving.value_weights, **config.serving.surface_value_weights}.items():
            missing = sorted(set(weights) - predicted)
            if missing:
                key = f"surface_value_weights.{surface}" if surface else "value_weights"
                raise ArtifactError(f"serving.{key} name task(s) {missing} that {config.ranker_path} does not "
                                    f"predict ({sorted(predicted)})")
        if index.model_version != retrieval_ckpt.version:
            raise ArtifactError(f"{config.index_dir} was built from retrieval model {index.model_version}, "
                                f"not {retrieval_ckpt.version}; run `feed index build`")
        spec = ranker_ckpt.feature_spec
        item_feats = item_features_from_dict(ranker_ckpt.extras["item_features"])
        history = tuple(ranker_ckpt.extras["history_events"])
        retrieval = TwoTower.from_checkpoint(retrieval_ckpt).freeze_item_embeddings()
        candidates = make_candidate_generator(
            config.candidates, model=retrieval, index=index,
            spec=retrieval_ckpt.feature_spec, data=data, history_events=history)
        ranker = MultiTaskRanker.from_checkpoint(ranker_ckpt)
        if config.serving.int8_embeddings:
            ranker = quantize_for_serving(ranker)
        # For the blender's diversity (any experiment arm may turn it on). Row i = the ranker
        # vocabulary's item i (row 0, unknown, stays zero).
        embeddings = ranker_item_embeddings(retrieval, retrieval_ckpt.feature_spec, spec)
        trained_on = ranker_ckpt.extras["metrics"].get("retrieval_version")
        if ranker.args.features.retrieval_score and trained_on != retrieval_ckpt.version:
            raise ArtifactError(f"{config.ranker_path} was trained on the scores of retrieval model {trained_on}, "
                                f"not {retrieval_ckpt.version}; run `feed train ranker`")
        return cls(
            spec=spec,
            item_features=item_feats,
            items=data.items,
            events=history_events(data.events, history),
            candidates=candidates,
            ranker=ranker,
            serving=config.serving,
            model_version=f"{retrieval_ckpt.version}+{ranker_ckpt.version}",
            item_embeddings=embeddings,
            retrieval=retrieval,
            retrieval_spec=retrieval_ckpt.feature_spec,
            retrieval_scorer=RetrievalScorer(retrieval, embeddings),
        )

    @torch.no_grad()
    def get_feed(self, request: FeedRequest) -> FeedPage:
        clock = _StageClock()
        version = f"{self.model_version}|{request.arm}"
        offset, started_ms = decode_cursor(request.cursor, request.user_id, version)
        started_ms = started_ms or now_ms()
        user, candidates, posts = self._candidates(request, started_ms)
        clock.lap("candidates")
        item = self.spec.items.encode(candidates.item_ids)
        degraded: tuple[str, ...] = ()
        try:  # a failure from hydration to mixing degrades to the candidate sources' order, not an error
            new_items = self._post_features(list(posts.values()), first_row=len(candidates) - len(posts))
            batch = self.hydrate(user, item, candidates.sources, new_items, started_ms)
            clock.lap("hydration")
            preds = predict(self.ranker, batch)
            clock.lap("ranker")
            values, order = self._mix(request, user, candidates, item, preds, new_items)
            clock.lap("blend")
        except Exception:  # noqa: BLE001 (any failure of a model must not fail the feed)
            logger.exception("ranking failed for user %s: serving the candidate order", request.user_id)
            degraded = ("ranker",)
            preds = {}
            values = -np.arange(len(candidates), dtype=np.float64)  # the sources' order: ann, social, ..., popular
            order = np.array([i for i, item_id in enumerate(candidates.item_ids) if item_id not in user.seen], np.int64)
        order, propensity = explore_session(order, values, None if degraded else request.exploration,
                                            request.user_id, started_ms, request.arm)
        def page(offset: int, page_size: int) -> tuple[list[RankedItem], str]:
            return page_of(candidates, order, values, propensity, preds, offset=offset, page_size=page_size,
                           titles=self.catalog, posts={post_id: p.post for post_id, p in posts.items()},
                           user_id=request.user_id, version=version, session_ms=started_ms)

        items, next_cursor = page(offset, request.page_size)
        exploring = request.exploration is not None and request.exploration.kind != "none"
        logged = exploring and request.log_session and offset == 0 and not degraded
        session = page(0, len(order))[0] if logged else None
        return FeedPage(items, next_cursor, self.model_version, clock.total(), degraded, session)

    def _candidates(self, request: FeedRequest,
                    started_ms: int) -> tuple[UserState, Candidates, dict[str, PostCandidate]]:
        """The user's state, their candidates from every source and the generated posts ready for
        them (a cold user has no history: the fallback fills the list). The user tower runs once:
        its embedding is the ANN query and the ranker's retrieval-score feature."""
        history = self.histories.get(request.user_id, np.zeros(0, np.int64))
        seen = self.seen.get(request.user_id, frozenset())
        if request.recently_seen is not None:
            seen = seen | request.recently_seen.before(request.user_id, started_ms)
        user = UserState(request.user_id, history, seen, self.user_embedding(request.user_id, history))
        found = self.candidates.generate(user)
        posts = {p.post.post_id: p for p in request.posts
                 if p.post.post_id not in seen and p.post.created_ms <= started_ms}
        return user, found.plus(list(posts), POST_SOURCE, POST_CONTENT_TYPE), posts  # posts: their own source and type

    def _mix(self, request: FeedRequest, user: UserState, candidates: Candidates, item: np.ndarray,
             preds: dict[str, np.ndarray], new_items: NewItems | None) -> tuple[np.ndarray, np.ndarray]:
        """The candidates' values and blended order, by the arm's value weights and blend (else the
        surface's); diversity compares retrieval item embeddings (a post: its content's)."""
        embeddings = None if self.item_embeddings is None else self.item_embeddings[item]
        if embeddings is not None and new_items is not None and new_items.embedding is not None:
            embeddings[new_items.rows] = new_items.embedding  # posts: their content embedding, not row 0
        return blend_by_value_model(
            preds, request.value_weights or self.serving.weights_for(request.surface), candidates.content_types,
            request.blend or self.serving.blend, item_ids=candidates.item_ids, exclude=user.seen,
            creators=[self.creators.get(i) for i in candidates.item_ids], embeddings=embeddings)

    def hydrate(self, user: UserState, item: np.ndarray, sources: list[str], new_items: NewItems | None = None,
                request_ms: int = 0) -> RankerBatch:
        """The ranker's inputs for `user`'s B candidates (item indices `item`, found by `sources`), as
        GetFeed hydrates them (`serving.hydration.hydrate` with this pipeline's features and ranker)."""
        return hydrate(user, item, sources, spec=self.spec, item_features=self.item_features,
                       ranker_args=self.ranker.args, retrieval_scorer=self.retrieval_scorer,
                       new_items=new_items, request_ms=request_ms)

    def _post_features(self, posts: list[PostCandidate], first_row: int) -> NewItems | None:
        """The ranker's view of the generated posts at rows first_row.. of the batch (None: no posts)."""
        if not posts:
            return None
        return self._new_items([p.post.source_item_ids for p in posts], np.stack([p.text_embedding for p in posts]),
                               np.array([p.post.created_ms / 1000.0 for p in posts]), first_row)

    def _new_items(self, source_item_ids: list[tuple[str, ...]], text: np.ndarray, created_at: np.ndarray,
                   first_row: int) -> NewItems:
        return post_features(source_item_ids, text, created_at, first_row, spec=self.spec,
                             item_features=self.item_features, retrieval=self.retrieval,
                             retrieval_spec=self.retrieval_spec)

    @torch.no_grad()
    def score_posts(self, user_id: str, source_item_ids: list[tuple[str, ...]], text_embeddings: np.ndarray,
                    created_ms: np.ndarray | None = None, surface: str = "home") -> np.ndarray:
        """(M,) the value model's score of M posts for `user_id` (each from its source items, with
        its (384,) text embedding, written at `created_ms`, default now), ranked exactly as GetFeed
        ranks a generated candidate: the generation critic's measure of a post."""
        m = len(source_item_ids)
        if not m:
            return np.zeros(0)
        now = now_ms()
        created = np.full(m, now) if created_ms is None else np.asarray(created_ms)
        history = self.histories.get(user_id, np.zeros(0, np.int64))
        new_items = self._new_items(source_item_ids, text_embeddings, created / 1000.0, first_row=0)
        batch = self.hydrate(UserState(user_id, history, frozenset()), np.zeros(m, np.int64), [POST_SOURCE] * m,
                             new_items, now)
        return value_scores(predict(self.ranker, batch), self.serving.weights_for(surface))

    def source_item(self, item_id: str) -> SourceItem:
        """A catalogue item as a generated post's source: title, content type, categories, creator."""
        content_type, title = self.catalog[item_id]
        lengths, values = self.item_features.categories_of(self.spec.items.encode(pl.Series([item_id])))
        categories = tuple(c for c in (self.spec.categories.decode(int(v)) for v in values) if c)
        return SourceItem(item_id=item_id, title=title, content_type=content_type, categories=categories,
                          creator_id=self.creators.get(item_id))

    def interests(self, user_id: str, k: int = 3) -> list[str]:
        """The user's `k` most frequent categories over their history (a generated post's topic)."""
        history = self.histories.get(user_id, np.zeros(0, np.int64))
        if not len(history):
            return []
        _, values = self.item_features.categories_of(history)
        counts = collections.Counter(int(v) for v in values if v)
        return [c for c in (self.spec.categories.decode(v) for v, _ in counts.most_common(k)) if c]

    @torch.no_grad()
    def user_embedding(self, user_id: str, history: np.ndarray) -> np.ndarray | None:
        """(D,) the retrieval user tower's embedding of the user and their history (None without a
        retrieval model): the ANN query and the retrieval-score feature of one request."""
        if self.retrieval is None:
            return None
        spec = self.retrieval_spec
        user = np.array([spec.users.encode_one(user_id)], np.int64)
        return embed_users(self.retrieval, user, pad_histories([history], spec.max_history))[0]


class _StageClock:
    """Each stage's wall time in ms, by name (`lap` ends the stage since the previous lap), and the total."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._start = self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = (now - self._last) * 1000.0
        self._last = now

    def total(self) -> dict[str, float]:
        """Every lap so far, and the total since the clock started."""
        return {**self.timings, "total": (time.perf_counter() - self._start) * 1000.0}
