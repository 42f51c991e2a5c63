"""Candidate generation: the few hundred items, of every content type, that the ranker scores.

Sources, each tagging its candidates with its name (for explanations and as a ranker feature):

- ``ann``: the user tower's embedding → the faiss index, over all content types or with a quota per
  content type (each type searched in its own shard, no post-filtering);
- ``social``: items engaged by the accounts the user follows, scored by how many of them engaged;
- ``follow``: accounts to follow: those followed by the accounts the user follows (friends of
  friends), scored by how many of them follow it;
- ``fresh``: new items: those with at most `fresh_max_events` training events, embedded by the
  item tower from their content alone and searched, in an index of their own so they are not
  crowded out by trained items, with the user's embedding or (`fresh_query = "history"`) the mean
  content embedding of the user's recent items (`[candidates] fresh` sets its quota);
- ``popular``: trending items per content type (event counts, decayed by age when the data has
  time), interleaved across types: the fallback, and the whole list for a user with no history.

`CandidateGenerator` asks the sources in order, each for its quota; an item goes to the first
source that finds it, seen items are excluded, and quota a source cannot fill (a cold user has no
embedding and follows nobody) passes to the last source, so every user gets a full list. Each
candidate carries its content type from where its source found it (an index shard, an event), so
the blender never looks it up in a catalogue-sized map on the request path.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import polars as pl
import torch

from feedcore.config import CandidatesConfig
from feedcore.features import FeatureSpec, pad_histories
from feedcore.features import history_events as select_events  # the parameter name is taken below
from feedcore.schemas import ACCOUNT, CanonicalDataset, account_item_id
from retrieval.embed import embed_items, embed_users
from retrieval.index import ItemIndex
from retrieval.model import TwoTower

# Why an item is in the feed, by the source that found it (the feed's `explanation`).
EXPLANATIONS = {
    "ann": "close to what you engaged with recently",
    "social": "engaged by accounts you follow",
    "follow": "followed by accounts you follow",
    "fresh": "new, and like what you engaged with",
    "popular": "trending",
}


@dataclasses.dataclass(frozen=True)
class UserState:
    """What the sources know about the requesting user."""

    user_id: str
    history: np.ndarray  # item indices, oldest first (empty for a new user)
    seen: frozenset[str]  # items never to return
    # (D,) the user tower's embedding of (user_id, history), when the caller computed it (a feed
    # request shares it with the ranker's retrieval-score feature); None: the ANN source embeds.
    embedding: np.ndarray | None = None


Found = tuple[str, float, str]  # (item id, score, content type): plain tuples, a request makes hundreds


@dataclasses.dataclass(frozen=True)
class Candidates:
    """A request's candidates as columns, one row per item, in the order the sources found them."""

    item_ids: list[str]
    sources: list[str]
    scores: list[float]
    content_types: list[str]

    def __len__(self) -> int:
        return len(self.item_ids)

    def plus(self, item_ids: list[str], source: str, content_type: str) -> Candidates:
        """These candidates followed by `item_ids`, all found by `source` and of `content_type`
        (score 0): the generated posts a request ranks with them."""
        n = len(item_ids)
        return Candidates(self.item_ids + item_ids, self.sources + [source] * n, self.scores + [0.0] * n,
                          self.content_types + [content_type] * n)


class CandidateSource(Protocol):
    name: str

    def candidates(self, user: UserState, k: int, exclude: set[str]) -> list[Found]:
        """Up to `k` (item id, score, content type) triples, best first, none of them in `exclude`."""


class AnnSource:
    """Nearest items to the user tower's embedding; `type_shares` splits `k` across content types
    in proportion to the shares (each type searched in its own shard). With `prior` ((N,) per
    vocabulary index, `popularity_prior`), an item's score is its inner product plus its prior,
    and each search returns the exact top k by that score (as exact as the index), as the
    threshold algorithm over two sorted lists does: the `PRIOR_HEAD` items of the shard with the
    largest priors are scored directly (one small product), the index gives the top
    `PRIOR_OVERSAMPLE` x k by inner product, and the search goes deeper (x4 each time) only while an
    item below the depth reached and outside the head could still enter the top k (its inner
    product at most the last one found, its prior at most the largest outside the head)."""

    name = "ann"

    def __init__(self, model: TwoTower, index: ItemIndex, spec: FeatureSpec,
                 type_shares: dict[str, float] | None = None, prior: np.ndarray | None = None) -> None:
        self.model = model
        self.index = index
        self.spec = spec
        unknown = sorted(set(type_shares or {}) - set(index.content_types))
        if unknown:
            raise ValueError(f"candidates.ann_type_shares name content type(s) {unknown} that the index does not hold "
                             f"(it holds {index.content_types})")
        self.type_shares = type_shares or {}
        self.prior = prior
        self._heads: dict[str | None, _PriorHead] = {}
        if prior is not None:
            if len(prior) != len(spec.items):
                raise ValueError(f"the ann prior has {len(prior)} entries; expected one per item of the vocabulary "
                                 f"({len(spec.items)}, the unknown row included)")
            shards = {name: (shard.item_ids, [name] * len(shard.item_ids)) for name, shard in index.shards.items()}
            if self.type_shares:  # the shards searched
                searched = {name: shards[name] for name in self.type_shares}
            else:  # one search over every shard
                searched = {None: ([i for ids, _ in shards.values() for i in ids],
                                   [t for _, ts in shards.values() for t in ts])}
            for name, (ids, types) in searched.items():
                self._heads[name] = _PriorHead.of(model, spec, prior, ids, types)

    def candidates(self, user: UserState, k: int, exclude: set[str]) -> list[Found]:
        if not len(user.history):
            return []  # no history: no embedding worth searching with
        query = self._user_embedding(user)
        if not self.type_shares:
            return self._search(query, k, None, exclude)
        total = sum(self.type_shares.values())
        out = []
        for content_type, share in self.type_shares.items():
            out += self._search(query, max(1, round(k * share / total)), content_type, exclude)
        return sorted(out, key=lambda c: -c[1])[:k]

    def _user_embedding(self, user: UserState) -> np.ndarray:
        """(1, D) the user tower's embedding: the request's, else computed from the history."""
        if user.embedding is not None:
            return user.embedding[None]
        return embed_users(self.model, np.array([self.spec.users.encode_one(user.user_id)], np.int64),
                           pad_histories([user.history], self.spec.max_history))

    def _search(self, query: np.ndarray, k: int, content_type: str | None, exclude: set[str]) -> list[Found]:
        if self.prior is None:
            return _search(self.index, query, k, content_type, exclude)
        head = self._heads.get(content_type)
        if head is None:
            return []  # a type the index does not hold
        scores = head.vectors @ query[0] + head.prior
        best = list(itertools.islice(((head.ids[j], float(scores[j]), head.types[j])
                                      for j in np.argsort(-scores, kind="stable") if head.ids[j] not in exclude), k))
        depth = k * PRIOR_OVERSAMPLE
        while True:
            found = _search(self.index, query, depth, content_type, exclude)
            offsets = self.prior[self.spec.items.encode([i for i, _, _ in found])]
            merged = {c[0]: c for c in best}  # the index's score wins where both have an item
            merged.update((i, (i, float(score + offset), t)) for (i, score, t), offset in zip(found, offsets, strict=True))
            rescored = sorted(merged.values(), key=lambda c: -c[1])
            # An item outside both lists scores at most the last inner product found + the head's ceiling.
            if (len(found) < depth or len(rescored) >= k
                    and found[-1][1] + head.ceiling <= rescored[k - 1][1]):
                return rescored[:k]
            depth *= 4


@dataclasses.dataclass(frozen=True)
class _PriorHead:
    """The PRIOR_HEAD items of a shard with the largest priors: their embeddings and priors, and
    the largest prior outside them (the bound on the prior of every other item)."""

    ids: list[str]
    types: list[str]
    vectors: np.ndarray  # (P, D)
    prior: np.ndarray  # (P,)
    ceiling: float

    @classmethod
    def of(cls, model: TwoTower, spec: FeatureSpec, prior: np.ndarray, ids: list[str], types: list[str]) -> _PriorHead:
        rows = spec.items.encode(ids)
        order = np.argsort(-prior[rows], kind="stable")
        head, rest = order[:PRIOR_HEAD], order[PRIOR_HEAD:]
        return cls([ids[j] for j in head], [types[j] for j in head], embed_items(model, rows[head]),
                   prior[rows[head]].astype(np.float32), float(prior[rows[rest]].max(initial=0.0)))


PRIOR_OVERSAMPLE = 4  # the first search's depth, x the quota
PRIOR_HEAD = 1024  # per shard, the items with the largest priors, scored directly


def popularity_prior(model: TwoTower, spec: FeatureSpec, events: pl.DataFrame, betas: dict[str, float]) -> np.ndarray:
    """(N,) per vocabulary index: beta of the item's content type x log1p(its `events`), the learned
    popularity prior of `[candidates] ann_popularity_prior` (types not named: 0)."""
    counts = np.bincount(spec.items.encode(events["item_id"]), minlength=len(spec.items)).astype(np.float32)
    types = model.content_type.cpu().numpy()
    beta = np.zeros(len(spec.content_types) + 1, np.float32)
    for name, value in betas.items():
        beta[spec.content_types.encode_one(name)] = value
    return beta[types] * np.log1p(counts)


class FreshSource(AnnSource):
    """New items for the user: the nearest of the items with few or no events, whose embeddings
    come from their content alone (`fresh_index`), in their own index. `query`: ``"user"``
    searches with the user tower's embedding; ``"history"`` with the user's `content_profile`
    (item-to-item in content space), the found items then scored by the user embedding as the
    ``ann`` source's are, so the ranker sees one kind of retrieval score.
    """

    name = "fresh"

    def __init__(self, model: TwoTower, index: ItemIndex, spec: FeatureSpec, query: str = "user",
                 history_items: int = 10) -> None:
        if query not in FRESH_QUERIES:
            raise ValueError(f"candidates.fresh_query is {query!r}; expected one of {FRESH_QUERIES}")
        if history_items < 1:
            raise ValueError(f"candidates.fresh_history_items is {history_items}; expected at least 1")
        super().__init__(model, index, spec)
        self.query = query
        self.history_items = history_items

    def candidates(self, user: UserState, k: int, exclude: set[str]) -> list[Found]:
        if self.query == "user" or not len(user.history):
            return super().candidates(user, k, exclude)
        profile = content_profile(self.model, user.history, self.history_items)
        found = _search(self.index, profile[None], k, None, exclude)
        if not found:
            return []
        vectors = embed_items(self.model, self.spec.items.encode([i for i, _, _ in found]), content_only=True)
        scores = vectors @ self._user_embedding(user)[0]
        return [(i, float(s), t) for (i, _, t), s in zip(found, scores, strict=True)]


FRESH_QUERIES = ("user", "history")


def content_profile(model: TwoTower, history: np.ndarray, last: int) -> np.ndarray:
    """(D,) the mean content-only embedding of the `last` most recent items of `history` (item
    indices, oldest first; padding 0 skipped; zeros when there are none): the fresh source's
    ``history`` query."""
    recent = history[history > 0][-last:]
    if not len(recent):
        return np.zeros(model.args.embedding_dim, np.float32)
    return embed_items(model, recent, content_only=True).mean(0)


def fresh_items(spec: FeatureSpec, events: pl.DataFrame, max_events: int) -> np.ndarray:
    """Vocabulary indices (row 0, "unknown", left out) of items with at most `max_events` of
    `events`: the fresh-items source's catalogue."""
    counts = np.bincount(spec.items.encode(events["item_id"]), minlength=len(spec.items))
    return np.flatnonzero(counts[1:] <= max_events) + 1


def fresh_index(model: TwoTower, spec: FeatureSpec, items: np.ndarray, *, model_version: str = "") -> ItemIndex:
    """An exact index of `items` (vocabulary indices) embedded from their content alone, one
    shard per content type."""
    embeddings = embed_items(model, items, content_only=True)
    types = [spec.content_types.decode(int(t)) for t in model.content_type[torch.from_numpy(items)].tolist()]
    ids = [spec.items.values[i - 1] for i in items]
    return ItemIndex.build(embeddings, ids, types, "Flat", model_version=model_version, exact_below=len(items) + 1)


def _search(index: ItemIndex, query: np.ndarray, k: int, content_type: str | None,
            exclude: set[str]) -> list[Found]:
    # Ask for enough to survive the exclusion of seen items.
    scores, ids, types = index.search_with_types(query, k + len(exclude), content_type)
    return [found for found in zip(ids[0], scores[0], types[0], strict=True) if found[0] not in exclude][:k]


class SocialGraph:
    """Who follows whom (edges of any kind, plus events on account items, whose ``creator_id`` is
    the account's user), and what each user engaged with."""

    def __init__(self, edges: pl.DataFrame, events: pl.DataFrame, items: pl.DataFrame) -> None:
        owners = items.filter(pl.col("content_type") == ACCOUNT).select("item_id", pl.col("creator_id").alias("followee"))
        follows = (events.filter(pl.col("content_type") == ACCOUNT).join(owners, on="item_id")
                   .select("user_id", "followee").drop_nulls())
        pairs = pl.concat([edges.select(pl.col("src_user").alias("user_id"), pl.col("dst_user").alias("followee")),
                           follows]).unique(maintain_order=True)
        self.followees: dict[str, list[str]] = dict(pairs.group_by("user_id", maintain_order=True)
                                                    .agg("followee").iter_rows())
        engaged = events.filter(pl.col("content_type") != ACCOUNT).unique(["user_id", "item_id"], maintain_order=True)
        self.engaged: dict[str, list[str]] = dict(engaged.group_by("user_id", maintain_order=True)
                                                  .agg("item_id").iter_rows())
        self.content_types: dict[str, str] = dict(engaged.select("item_id", "content_type").iter_rows())

    def __bool__(self) -> bool:
        return bool(self.followees)


class SocialSource:
    """Items engaged by the accounts the user follows, scored by how many of them engaged."""

    name = "social"

    def __init__(self, graph: SocialGraph) -> None:
        self.graph = graph

    def candidates(self, user: UserState, k: int, exclude: set[str]) -> list[Found]:
        counts = Counter(i for f in self.graph.followees.get(user.user_id, ()) for i in self.graph.engaged.get(f, ()))
        return [(i, c, self.graph.content_types[i]) for i, c in _top(counts, k, exclude)]


class FollowSource:
    """Accounts to follow: accounts followed by those the user follows, scored by how many of them
    follow it. Only accounts that exist as items of the catalogue are returned."""

    name = "follow"

    def __init__(self, graph: SocialGraph, accounts: set[str]) -> None:
        self.graph = graph
        self.accounts = accounts

    def candidates(self, user: UserState, k: int, exclude: set[str]) -> list[Found]:
        followees = self.graph.followees.get(user.user_id, ())
        already = {user.user_id, *followees}  # whether or not follows are in the user's history
        counts = Counter(account_item_id(a) for f in followees for a in self.graph.followees.get(f, ())
                         if a not in already)
        top = _top(Counter({a: c for a, c in counts.items() if a in self.accounts}), k, exclude)
        return [(a, c, ACCOUNT) for a, c in top]


def _top(counts: Counter, k: int, exclude: set[str]) -> list[tuple[str, float]]:
    ranked = sorted(((i, c) for i, c in counts.items() if i not in exclude), key=lambda x: (-x[1], x[0]))
    return [(i, float(c)) for i, c in ranked[:k]]


class PopularSource:
    """Trending items per content type, interleaved across types (round robin, each type's best
    first), so a cold feed shows every content type.

    Args:
        events: the events to count (the training history).
        half_life_days: > 0 and the events have ``ts``: each event counts 2^(-age / half-life),
            age measured from the newest event; otherwise all events count 1.
    """

    name = "popular"

    def __init__(self, events: pl.DataFrame, half_life_days: float = 0.0) -> None:
        weight = pl.lit(1.0)
        if half_life_days > 0 and events["ts"].null_count() < events.height:
            age_days = (pl.col("ts").max() - pl.col("ts")) / 86400.0
            weight = (2.0 ** (-age_days / half_life_days)).fill_null(0.0)
        counts = (events.with_columns(weight.alias("weight")).group_by("item_id", "content_type")
                  .agg(pl.col("weight").sum().alias("score"))
                  .sort("score", "item_id", descending=[True, False]))
        by_type = {t: list(g.select("item_id", "score").iter_rows())
                   for (t,), g in counts.group_by("content_type", maintain_order=True)}
        # Round robin across types: the i-th best of each type before the (i+1)-th of any.
        ranked = [(item, score, rank, t) for t, rows in by_type.items() for rank, (item, score) in enumerate(rows)]
        ranked.sort(key=lambda x: (x[2], -x[1]))
        self.items = [(item, float(score), t) for item, score, _, t in ranked]

    def candidates(self, user: UserState, k: int, exclude: set[str]) -> list[Found]:
        out = []
        for found in self.items:
            if found[0] not in exclude:
                out.append(found)
                if len(out) == k:
                    break
        return out


class CandidateGenerator:
    """Merges sources with per-source quotas; the last source is the fallback that takes up any
    quota the others left unfilled.

    Example:
        >>> events = pl.DataFrame({"user_id": ["u", "v"], "item_id": ["a", "b"], "content_type": ["x", "y"],
        ...                        "ts": [None, None]}, schema_overrides={"ts": pl.Int64})
        >>> gen = CandidateGenerator([(PopularSource(events), 5)])
        >>> found = gen.generate(UserState("new", np.zeros(0, np.int64), frozenset()))
        >>> list(zip(found.item_ids, found.sources, found.content_types))
        [('a', 'popular', 'x'), ('b', 'popular', 'y')]
    """

    def __init__(self, sources: Sequence[tuple[CandidateSource, int]]) -> None:
        if not sources:
            raise ValueError("a candidate generator needs at least one source")
        self.sources = list(sources)

    def generate(self, user: UserState) -> Candidates:
        out = Candidates([], [], [], [])
        exclude = set(user.seen)
        unfilled = 0
        for i, (source, quota) in enumerate(self.sources):
            k = quota + (unfilled if i == len(self.sources) - 1 else 0)
            taken = len(out)
            for item_id, score, content_type in source.candidates(user, k, exclude) if k > 0 else []:
                if item_id not in exclude:  # a source listing an item twice keeps its first
                    out.item_ids.append(item_id)
                    out.sources.append(source.name)
                    out.scores.append(score)
                    out.content_types.append(content_type)
                    exclude.add(item_id)
            unfilled += quota - (len(out) - taken)
        return out


def make_candidate_generator(
    config: CandidatesConfig,
    *,
    model: TwoTower,
    index: ItemIndex,
    spec: FeatureSpec,
    data: CanonicalDataset,
    history_events: tuple[str, ...],
) -> CandidateGenerator:
    """The sources `config` asks for, in order ann → social → follow → fresh → popular (the
    fallback). Popularity and the fresh items' event counts read the history events; the social
    sources (left out when the data has no follow graph) see every event and edge."""
    events = select_events(data.events, history_events)
    prior = popularity_prior(model, spec, events, config.ann_popularity_prior) if config.ann_popularity_prior else None
    sources: list[tuple[CandidateSource, int]] = [
        (AnnSource(model, index, spec, config.ann_type_shares or None, prior), config.ann)]
    graph = SocialGraph(data.edges, data.events, data.items)
    if graph:
        catalog = set(data.items.filter(pl.col("content_type") == ACCOUNT)["item_id"].to_list())
        sources += [(SocialSource(graph), config.social), (FollowSource(graph, catalog), config.follow)]
    if config.fresh > 0:
        items = fresh_items(spec, events, config.fresh_max_events)
        if len(items):
            sources.append((FreshSource(model, fresh_index(model, spec, items, model_version=index.model_version),
                                        spec, config.fresh_query, config.fresh_history_items), config.fresh))
    sources = [(s, k) for s, k in sources if k > 0]
    sources.append((PopularSource(events, config.popular_half_life_days), config.popular))
    return CandidateGenerator(sources)
