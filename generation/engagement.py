"""The learned critic: a reward model of how users engage with generated posts, fit on the event log.

Examples (`post_examples`): every impression of a generated post (content type "generated") in the
event log, joined by post id with the post store's text and sources (`PostStore.get`). The label is
1 when the same user clicked or liked that post, else 0 (hidden, or nothing).

Features, from all-MiniLM-L6-v2 embeddings (unit length): p, the post's text; u, the mean of its
sources' descriptions ("title. categories"), which stand for the user, since the plan picked them
from the user's recent items and interests. x = [p ⊙ u, p, p · u]: which words of a post suit which
reader, which read well to anyone, and how close the post stays to its plan. The model is an
L2-regularized logistic regression (torch, L-BFGS; the L2 strength chosen by cross-validation over
users), so its scores are probabilities of engagement.

`EngagementModel.value_fn(embed)` is a `generation.critic.ValueFn`, P(engage) per candidate, which
best-of-N uses in place of the value model's proxy. `fit_engagement_model` returns None while the log
holds fewer than `min_impressions` post impressions or no engagement at all: on a cold start the
proxy stays. A model is saved as a .npz of its weights (no pickle): `feed train critic` fits one on the
served log (`train_critic_job`) into `EngineConfig.critic_path`, and the generation service uses it
when it is there.

The post store keeps a user's latest `posts_per_user` posts (and none past `cache_ttl_s`), so the
join finds the posts still held: train the critic as often as posts rotate.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch

from feedcore.config import EngineConfig
from feedcore.io import atomic_path
from generation.critic import ValueFn
from generation.interface import GeneratedPost, SourceItem

logger = logging.getLogger(__name__)

Embed = Callable[[list[str]], np.ndarray]
"""embed(texts) -> (n, d) sentence embeddings (e.g. `serving.generated_posts.TextEmbeddings`)."""
ENGAGED = ("click", "like")
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)
FOLDS = 4


def describe(source: SourceItem) -> str:
    """The text a source is embedded from: its title and categories.

    >>> describe(SourceItem("1", "Heat (1995)", "movie", ("Action", "Crime")))
    'Heat (1995). Action, Crime'
    """
    return f"{source.title}. {', '.join(source.categories)}" if source.categories else source.title


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def features(post: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """(n, 2d + 1) features of n posts from their (n, d) text and mean-source embeddings."""
    p, u = _unit(post), _unit(sources)
    return np.hstack([p * u, p, (p * u).sum(1, keepdims=True)])


@dataclasses.dataclass(frozen=True)
class EngagementModel:
    """P(a user engages with a generated post) from its text and sources (see the module doc)."""

    weights: np.ndarray  # (2d + 1,)
    bias: float
    impressions: int  # the examples it was fit on
    engaged: int  # of which engaged

    def predict(self, post: np.ndarray, sources: np.ndarray) -> np.ndarray:
        """(n,) probabilities for (n, d) post-text and mean-source embeddings."""
        return 1.0 / (1.0 + np.exp(-(features(post, sources) @ self.weights + self.bias)))

    def value_fn(self, embed: Embed) -> ValueFn:
        """The critic's value of candidate texts for a user: their probability of engagement."""

        def value(user_id: str, texts: list[str], sources: list[SourceItem]) -> np.ndarray:
            if not texts:
                return np.zeros(0)
            post = embed(list(texts))
            mean = embed([describe(s) for s in sources]).mean(0, keepdims=True) if sources else post
            return self.predict(post, np.broadcast_to(mean, post.shape))

        return value

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, weights=self.weights, bias=self.bias, impressions=self.impressions, engaged=self.engaged)

    @classmethod
    def load(cls, path: str | Path) -> EngagementModel:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["weights"].astype(np.float32), float(z["bias"]), int(z["impressions"]), int(z["engaged"]))


def post_examples(events: pl.DataFrame, get_post: Callable[[str], GeneratedPost | None]) -> pl.DataFrame:
    """One row per (user, generated post) impression of the event log: user_id, post_id, label
    (1: the user clicked or liked it), text and source_item_ids (from `get_post`; impressions of
    posts it no longer knows are dropped, and counted in the log)."""
    posts = events.filter(pl.col("content_type") == "generated")
    shown = posts.filter(pl.col("event") == "impression").select("user_id", "item_id").unique(maintain_order=True)
    engaged = (posts.filter(pl.col("event").is_in(ENGAGED)).select("user_id", "item_id").unique()
               .with_columns(label=pl.lit(1, pl.Int8)))
    rows = shown.join(engaged, on=["user_id", "item_id"], how="left").with_columns(pl.col("label").fill_null(0))
    found = {pid: get_post(pid) for pid in rows["item_id"].unique().to_list()}
    missing = sum(p is None for p in found.values())
    if missing:
        logger.warning("post_examples: %d of %d logged posts are not in the post store; their impressions are "
                       "left out", missing, len(found))
    rows = rows.filter(pl.col("item_id").is_in([pid for pid, p in found.items() if p is not None]))
    return rows.rename({"item_id": "post_id"}).with_columns(
        text=pl.col("post_id").replace_strict({pid: p.text for pid, p in found.items() if p}, return_dtype=pl.String),
        source_item_ids=pl.col("post_id").replace_strict(
            {pid: list(p.source_item_ids) for pid, p in found.items() if p}, return_dtype=pl.List(pl.String)))


def fit_engagement_model(
    examples: pl.DataFrame,
    sources: Callable[[str], SourceItem],
    embed: Embed,
    *,
    l2: float | None = None,
    min_impressions: int = 200,
) -> EngagementModel | None:
    """Fit the reward model on `post_examples` rows (`sources` maps a source id to its
    `SourceItem`); None on a cold start (too few impressions or no engagement). `l2` None picks
    the L2 strength of `L2_GRID` with the best held-out log-loss in `FOLDS`-fold cross-validation
    (folds by user, so a user's posts are never on both sides)."""
    engaged = int(examples["label"].sum()) if examples.height else 0
    if examples.height < min_impressions or engaged == 0:
        logger.info("engagement model: %d post impressions, %d engaged: too few to learn from (the value proxy "
                    "stays)", examples.height, engaged)
        return None
    post = embed(examples["text"].to_list())
    described = [[describe(sources(i)) for i in ids] for ids in examples["source_item_ids"].to_list()]
    flat = embed([d for ds in described for d in ds])
    at = np.cumsum([0] + [len(ds) for ds in described])
    mean = np.stack([flat[at[i]:at[i + 1]].mean(0) for i in range(len(described))])
    x, y = features(post, mean), examples["label"].to_numpy().astype(np.float32)
    if l2 is None:
        fold = np.array([zlib.crc32(u.encode()) % FOLDS for u in examples["user_id"].to_list()])
        l2 = min(L2_GRID, key=lambda c: _held_out_log_loss(x, y, fold, c))
    weights, bias = _logistic(x, y, l2)
    logger.info("engagement model: fit on %d post impressions (%d engaged), l2 %g", examples.height, engaged, l2)
    return EngagementModel(weights, bias, examples.height, engaged)


def train_critic_job(config: EngineConfig, log_dirs: Sequence[str | Path] = ()) -> EngagementModel | None:
    """`feed train critic`: the served post events of `log_dirs` (default: the config's event log)
    joined with the config's post store → the reward model, saved to `config.critic_path` (where
    the generation service picks it up); None, and nothing saved, on a cold start."""
    from feedcore.events import read_event_log
    from feedcore.schemas import CanonicalDataset
    from feedcore.text import embed_texts, load_text_encoder
    from generation.grounding import Catalog
    from generation.store import make_post_store

    items = CanonicalDataset.read(config.prepared_dir).items  # the catalogue `feed data prepare` wrote
    catalog = Catalog.from_items(items)
    categories = dict(zip(items["item_id"].to_list(), items["categories"].to_list(), strict=True))
    events = pl.concat([read_event_log(d) for d in (log_dirs or [config.event_log_dir])], how="vertical_relaxed")
    store = make_post_store(config.generation, config.artifacts_dir)
    try:
        examples = post_examples(events, store.get)
    finally:
        store.close()
    encoder = load_text_encoder()
    model = fit_engagement_model(examples, lambda i: catalog.source(i, tuple(categories.get(i) or ())),
                                 lambda texts: embed_texts(texts, encoder))
    if model is not None:
        model.save(config.critic_path)
    return model


def _held_out_log_loss(x: np.ndarray, y: np.ndarray, fold: np.ndarray, l2: float) -> float:
    losses = []
    for k in np.unique(fold):
        train, test = fold != k, fold == k
        if not y[train].any():
            continue
        w, b = _logistic(x[train], y[train], l2)
        p = np.clip(1.0 / (1.0 + np.exp(-(x[test] @ w + b))), 1e-6, 1 - 1e-6)
        losses.append(-(y[test] * np.log(p) + (1 - y[test]) * np.log(1 - p)).sum())
    return float(np.sum(losses))


def _logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 200) -> tuple[np.ndarray, float]:
    """L2-regularized logistic regression by L-BFGS: mean log-loss + l2 / 2 · |w|² (bias free)."""
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(y)
    w = torch.zeros(x.shape[1], requires_grad=True)
    prior = float(np.clip(y.mean(), 1e-4, 1 - 1e-4))
    b = torch.tensor(np.log(prior / (1 - prior)), dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach().numpy().copy(), float(b.detach())

