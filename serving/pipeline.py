"""One feed request, end to end: candidate sources → feature hydration → ranker → value model →
blend → page. `FeedPipeline.from_artifacts` rebuilds it from what the training jobs wrote.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import json
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
from ranker.batching import RankerBatch, RetrievalScorer, ranker_inputs, ranker_item_embeddings
from ranker.model import MultiTaskRanker, quantize_for_serving
from retrieval.candidates import CandidateGenerator, Candidates, UserState, make_candidate_generator
from retrieval.embed import embed_users
from retrieval.index import ItemIndex
from retrieval.model import TwoTower
from serving.mixing.blender import blend
from serving.mixing.exploration import ExplorationConfig, explore, session_seed
from serving.mixing.value_model import value_scores

logger = logging.getLogger(__name__)
POST_CONTENT_TYPE = "generated"  # the content type of generated posts
POST_SOURCE = "generated"  # their candidate source (a ranker feature, `RankerArgs.source_ids`)


class CursorError(ValueError):
    """A cursor this service did not issue (or issued for another user or model)."""


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


@dataclasses.dataclass(frozen=True)
class PostCandidate:
    """A generated post ready to be served, with its text embedding (all-MiniLM-L6-v2, computed
    once when it was written, off the request path)."""

    post: GeneratedPost
    text_embedding: np.ndarray  # (384,)


@dataclasses.dataclass(frozen=True)
class RankedItem:
    item_id: str
    content_type: str
    title: str
    score: float
    task_scores: dict[str, float]
    source: str
    position: int
    propensity: float = 0.0  # p(this item here | the items above) on an exploring arm; 0: deterministic
    post: GeneratedPost | None = None  # set for generated posts: their text and provenance


@dataclasses.dataclass(frozen=True)
class FeedPage:
    items: list[RankedItem]
    next_cursor: str
    model_version: str
    timings_ms: dict[str, float]
    degraded: tuple[str, ...] = ()  # components that failed and were replaced by a fallback


def encode_cursor(user_id: str, offset: int, version: str, started_ms: int = 0) -> str:
    raw = json.dumps({"u": user_id, "o": offset, "v": version, "t": started_ms}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str, user_id: str, version: str) -> tuple[int, int]:
    """The offset in the ranked feed a cursor points to, and when its session's first page was
    served (ms; 0 for the first page, which starts a session)."""
    if not cursor:
        return 0, 0
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        offset, owner, issued_by, started = int(data["o"]), data["u"], data["v"], int(data.get("t", 0))
    except (binascii.Error, ValueError, KeyError, TypeError) as e:
        raise CursorError("cursor is malformed: pass back the next_cursor of the previous page") from e
    if owner != user_id or offset < 0:
        raise CursorError(f"cursor was issued for another user, not {user_id!r}")
    if issued_by != version:
        raise CursorError("cursor was issued by an earlier model version: start again without a cursor")
    return offset, started


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
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        version = f"{self.model_version}|{request.arm}"
        offset, started_ms = decode_cursor(request.cursor, request.user_id, version)
        started_ms = started_ms or now_ms()
        history = self.histories.get(request.user_id, np.zeros(0, np.int64))
        seen = self.seen.get(request.user_id, frozenset())
        if request.recently_seen is not None:
            seen = seen | request.recently_seen.before(request.user_id, started_ms)

        # 1. candidate sources (a cold user has no history: the fallback fills the list). The user
        # tower runs once: its embedding is the ANN query and the ranker's retrieval-score feature.
        embedding = self.user_embedding(request.user_id, history)
        user = UserState(request.user_id, history, seen, embedding)
        found = self.candidates.generate(user)
        posts = {p.post.post_id: p for p in request.posts
                 if p.post.post_id not in seen and p.post.created_ms <= started_ms}
        candidates = found.plus(list(posts), POST_SOURCE, POST_CONTENT_TYPE)  # posts: their own source and type
        item_ids = candidates.item_ids
        timings["candidates"] = _lap(t0)

        # 2. feature hydration (the same transforms as training), 3. ranker, 4. value model and blend.
        # A failure here degrades to the candidate sources' own order rather than failing the request.
        item = self.spec.items.encode(item_ids)
        degraded: tuple[str, ...] = ()
        try:
            ready = list(posts.values())
            new_items = None if not ready else self._post_features(
                [p.post.source_item_ids for p in ready], np.stack([p.text_embedding for p in ready]),
                np.array([p.post.created_ms / 1000.0 for p in ready]), len(item_ids) - len(ready))
            preds, values, order = self._rank(request, user, candidates, item, timings, new_items, started_ms)
        except Exception:  # noqa: BLE001 (any failure of a model must not fail the feed)
            logger.exception("ranking failed for user %s: serving the candidate order", request.user_id)
            degraded = ("ranker",)
            preds = {}
            values = -np.arange(len(item_ids), dtype=np.float64)  # the sources' order: ann, social, ..., popular
            order = np.array([i for i, item_id in enumerate(item_ids) if item_id not in seen], np.int64)

        # 5. the page. An exploring arm samples its order from the blended one, seeded by the session,
        # so every page of a session comes from one draw (`serving.mixing.exploration`).
        propensity = np.zeros(len(order))
        if request.exploration is not None and not degraded:
            rng = np.random.default_rng(session_seed(request.user_id, started_ms, request.arm))
            order, propensity = explore(order, values, request.exploration, rng)
        page = order[offset : offset + request.page_size]
        items = []
        for position, c in enumerate(page, start=offset):
            post = posts[item_ids[c]].post if item_ids[c] in posts else None
            title = self.catalog[item_ids[c]][1] if post is None else ""
            items.append(RankedItem(
                item_id=item_ids[c], content_type=candidates.content_types[c], title=title, score=float(values[c]),
                task_scores={t: float(p[c]) for t, p in preds.items()}, source=candidates.sources[c],
                position=position, post=post, propensity=float(propensity[position]),
            ))
        end = offset + len(page)
        next_cursor = encode_cursor(request.user_id, end, version, started_ms) if end < len(order) else ""
        timings["total"] = _lap(t0)
        return FeedPage(items, next_cursor, self.model_version, timings, degraded)

    def _rank(self, request: FeedRequest, user: UserState, candidates: Candidates, item: np.ndarray,
              timings: dict[str, float], new_items: NewItems | None, request_ms: int):
        """Task predictions, values and the blended order of the candidates (item indices `item`)
        for `user`; `new_items` carries the content of candidates outside the vocabulary
        (generated posts, item index 0). `request_ms` is the time features read (the session's
        first page's, so pages never shift)."""
        item_ids = candidates.item_ids
        preds = self._predict(user, item, candidates.sources, new_items, request_ms, timings)
        t3 = time.perf_counter()
        values = value_scores(preds, request.value_weights or self.serving.weights_for(request.surface))
        embeddings = None if self.item_embeddings is None else self.item_embeddings[item]
        if embeddings is not None and new_items is not None and new_items.embedding is not None:
            embeddings[new_items.rows] = new_items.embedding  # posts: their content embedding, not row 0
        order = blend(
            values, candidates.content_types, request.blend or self.serving.blend,
            item_ids=item_ids, exclude=user.seen, creators=[self.creators.get(i) for i in item_ids],
            embeddings=embeddings,
        )
        timings["blend"] = _lap(t3)
        return preds, values, order

    def _predict(self, user: UserState, item: np.ndarray, sources: list[str], new_items: NewItems | None,
                 request_ms: int, timings: dict[str, float]) -> dict[str, np.ndarray]:
        """Task → (B,) ranker predictions of B candidates: hydration, then the ranker (timed)."""
        t1 = time.perf_counter()
        batch = self.hydrate(user, item, sources, new_items, request_ms)
        timings["hydration"] = _lap(t1)
        t2 = time.perf_counter()
        preds = {k: v.numpy() for k, v in self.ranker(batch.dense, batch.sparse).items()} if len(item) else {
            t: np.zeros(0) for t in self.ranker.task_names}
        timings["ranker"] = _lap(t2)
        return preds

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
        new_items = self._post_features(source_item_ids, text_embeddings, created / 1000.0, first_row=0)
        preds = self._predict(UserState(user_id, history, frozenset()), np.zeros(m, np.int64), [POST_SOURCE] * m,
                              new_items, now, {})
        return value_scores(preds, self.serving.weights_for(surface))

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

    def hydrate(self, user: UserState, item: np.ndarray, sources: list[str], new_items: NewItems | None = None,
                request_ms: int = 0) -> RankerBatch:
        """The ranker's inputs for `user`'s B candidates (item indices `item`, found by `sources`),
        by the training transform (`ranker_inputs`) at the request time; the user tower's
        embedding is `user.embedding` when the caller computed it."""
        users = np.full(len(item), self.spec.users.encode_one(user.user_id), np.int64)
        hist = np.repeat(pad_histories([user.history], self.spec.max_history), len(item), axis=0)
        source = self.ranker.args.source_ids(sources)
        return ranker_inputs(users, item, hist, self.item_features, source=source, new_items=new_items,
                             features=self.ranker.args.features, event_time=np.full(len(item), request_ms / 1000.0),
                             retrieval=self.retrieval_scorer, user_embedding=user.embedding)

    @torch.no_grad()
    def user_embedding(self, user_id: str, history: np.ndarray) -> np.ndarray | None:
        """(D,) the retrieval user tower's embedding of the user and their history (None without a
        retrieval model): the ANN query and the retrieval-score feature of one request."""
        if self.retrieval is None:
            return None
        spec = self.retrieval_spec
        user = np.array([spec.users.encode_one(user_id)], np.int64)
        return embed_users(self.retrieval, user, pad_histories([history], spec.max_history))[0]

    def _post_features(self, source_item_ids: list[tuple[str, ...]], text: np.ndarray, created_at: np.ndarray,
                       first_row: int) -> NewItems:
        """The ranker's view of M generated posts at rows first_row.. of the batch: the union of
        their source items' categories, their (M, 384) text embeddings and age (`created_at`, unix
        seconds), and their item-space embedding from the retrieval model's content path (for the
        retrieval score and the blender's diversity)."""
        rows = np.arange(first_row, first_row + len(source_item_ids))
        text = np.asarray(text, np.float32)
        embedding = None if self.retrieval is None else self.post_embeddings(source_item_ids, text)
        sources = [self.spec.items.encode(pl.Series(ids, dtype=pl.String)) for ids in source_item_ids]
        return NewItems.from_source_items(rows, sources, self.item_features, text=text, created_at=created_at,
                                          embedding=embedding)

    @torch.no_grad()
    def post_embeddings(self, source_item_ids: list[tuple[str, ...]], text: np.ndarray) -> np.ndarray:
        """(M, D) retrieval-space embeddings of M posts from their content: the union of their
        sources' categories and their text (`TwoTower.content_embeddings`)."""
        model, spec = self.retrieval, self.retrieval_spec
        cats, types = [], []
        for ids in source_item_ids:
            idx = spec.items.encode(pl.Series(ids, dtype=pl.String))
            values = [model.category_values[model.category_offsets[i]:model.category_offsets[i + 1]] for i in idx]
            cats.append(torch.unique(torch.cat(values)) if values else torch.zeros(0, dtype=torch.long))
            known = model.content_type[torch.from_numpy(idx[idx != 0])]
            types.append(int(torch.bincount(known).argmax()) if len(known) else 0)  # its sources' type, as the ranker
        lengths = torch.tensor([len(c) for c in cats])
        offsets = torch.cumsum(lengths, 0) - lengths
        content_type = torch.tensor(types, dtype=torch.long)
        out = model.content_embeddings(content_type, torch.cat(cats), offsets, torch.from_numpy(text))
        return out.numpy().astype(np.float32)


def _lap(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
