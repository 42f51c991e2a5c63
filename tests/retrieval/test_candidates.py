"""The candidate layer: ANN per content type, the social graph, trending, and their merge."""

import dataclasses
import itertools
from collections import Counter

import numpy as np
import polars as pl
import pytest
import torch

import retrieval.candidates as candidates_module
from feedcore.config import CandidatesConfig
from feedcore.datasets import load_dataset
from feedcore.features import FeatureSpec, Vocabulary, build_feature_spec, item_features, pad_histories
from feedcore.schemas import account_item_id
from retrieval.candidates import (
    AnnSource,
    CandidateGenerator,
    FollowSource,
    FreshSource,
    PopularSource,
    SocialGraph,
    SocialSource,
    UserState,
    content_profile,
    fresh_index,
    fresh_items,
    make_candidate_generator,
    popularity_prior,
)
from retrieval.embed import embed_items, embed_users
from retrieval.index import ItemIndex
from retrieval.model import TwoTower, TwoTowerArgs
from tests.retrieval.test_retrieval import _tiny_model

NOBODY = UserState("nobody", np.zeros(0, np.int64), frozenset())


@pytest.fixture(scope="module")
def lastfm(shared_data):
    return load_dataset("lastfm-2k", shared_data / "lastfm-2k")


def _user(user_id, seen=()):
    return UserState(user_id, np.array([1, 2, 3]), frozenset(seen))


def test_social_source_counts_followees_who_engaged_on_real_graph(lastfm):
    graph = SocialGraph(lastfm.edges, lastfm.events, lastfm.items)
    user = lastfm.edges["src_user"][0]
    followees = set(lastfm.edges.filter(pl.col("src_user") == user)["dst_user"])
    plays = lastfm.events.filter(pl.col("event") == "play")
    want = Counter(plays.filter(pl.col("user_id").is_in(list(followees))).unique(["user_id", "item_id"])["item_id"])
    seen = {plays.filter(pl.col("user_id") == user)["item_id"][0]}
    got = SocialSource(graph).candidates(_user(user, seen), 30, set(seen))
    assert len(got) == 30 and not seen & {i for i, _, _ in got}
    assert [s for _, s, _ in got] == sorted((s for _, s, _ in got), reverse=True)
    assert all(want[i] == s for i, s, _ in got)
    assert got[0][1] == max(c for i, c in want.items() if i not in seen)
    types = dict(lastfm.events.select("item_id", "content_type").iter_rows())
    assert all(t == types[i] for i, _, t in got)


def test_follow_source_suggests_friends_of_friends_not_self_nor_followed(lastfm):
    graph = SocialGraph(lastfm.edges, lastfm.events, lastfm.items)
    accounts = set(lastfm.items.filter(pl.col("content_type") == "account")["item_id"])
    edges = lastfm.edges
    user = edges["src_user"][0]
    mine = set(edges.filter(pl.col("src_user") == user)["dst_user"])
    # Brute force on the raw edges: accounts followed by my followees, by how many of them.
    fof = (edges.filter(pl.col("src_user").is_in(list(mine)) & ~pl.col("dst_user").is_in([*mine, user]))
           .group_by("dst_user").agg(pl.len().alias("n")))
    want = {account_item_id(d): n for d, n in fof.iter_rows()}
    got = FollowSource(graph, accounts).candidates(_user(user), 20, set())
    assert len(got) == min(20, len(want)) and got[0][1] == max(want.values())
    assert all(item in accounts and want[item] == score and t == "account" for item, score, t in got)
    assert not {account_item_id(u) for u in [*mine, user]} & {i for i, _, _ in got}
    # A user who follows nobody gets nothing from either social source.
    assert FollowSource(graph, accounts).candidates(NOBODY, 20, set()) == []
    assert SocialSource(graph).candidates(NOBODY, 20, set()) == []


def test_popular_interleaves_content_types_and_decays_old_events():
    day = 86400
    events = pl.DataFrame({
        "user_id": ["u"] * 7,
        "item_id": ["old", "old", "old", "new", "new", "p1", "p2"],
        "content_type": ["movie"] * 5 + ["post"] * 2,
        "ts": [0, 0, 0, 100 * day, 100 * day, 100 * day, 50 * day],
    })
    all_time = PopularSource(events)
    assert [(i, t) for i, _, t in all_time.candidates(NOBODY, 10, set())] == [
        ("old", "movie"), ("p1", "post"), ("new", "movie"), ("p2", "post")]
    trending = PopularSource(events, half_life_days=10)
    # Round by round (each type's best, then second best), higher score first within a round.
    assert [i for i, _, _ in trending.candidates(NOBODY, 10, set())] == ["new", "p1", "p2", "old"]
    assert [i for i, _, _ in trending.candidates(NOBODY, 2, {"new"})] == ["p1", "p2"]


def test_ann_type_shares_search_each_content_type_shard():
    torch.manual_seed(0)
    model = _tiny_model("mean", n_items=30).eval()
    model.id_row = torch.arange(30)  # every item trained: distinct embeddings, no ties
    items = np.arange(1, 30)
    ids = [f"i{i}" for i in items]
    types = ["abc"[t] for t in model.content_type[items].tolist()]
    index = ItemIndex.build(embed_items(model, items), ids, types, "Flat", model_version="m")
    spec = FeatureSpec(Vocabulary(("u",)), Vocabulary(tuple(ids)), Vocabulary(("a", "b", "c")), Vocabulary(()), 6)
    source = AnnSource(model, index, spec, {"a": 1.0, "b": 3.0})
    got = source.candidates(_user("u", {"i3"}), 8, {"i3"})
    kinds = Counter(types[ids.index(i)] for i, _, _ in got)
    assert kinds == {"a": 2, "b": 6} and "i3" not in {i for i, _, _ in got}
    assert all(t == types[ids.index(i)] for i, _, t in got)  # each carries its shard's type
    # Each type's share is that type's exact top k.
    query = source.candidates(_user("u"), 100, set())
    top_b = [i for i, _, _ in query if types[ids.index(i)] == "b"][:6]
    assert [i for i, _, _ in got if types[ids.index(i)] == "b"] == [i for i in top_b if i != "i3"][:6]
    # Without shares, one search over every shard: each result still carries its own shard's type.
    merged = AnnSource(model, index, spec).candidates(_user("u"), 20, set())
    assert len(merged) == 20 and all(t == types[ids.index(i)] for i, _, t in merged)
    assert source.candidates(NOBODY, 8, set()) == []  # no history: nothing to search with
    with pytest.raises(ValueError, match=r"ann_type_shares name content type\(s\) \['z'\]"):
        AnnSource(model, index, spec, {"z": 1.0})


def test_the_popularity_prior_reranks_each_search_by_score_plus_prior(monkeypatch):
    torch.manual_seed(0)
    model = _tiny_model("mean", n_items=30).eval()
    model.id_row = torch.arange(30)
    items = np.arange(1, 30)
    ids = [f"i{i}" for i in items]
    types = ["abc"[t] for t in model.content_type[items].tolist()]
    index = ItemIndex.build(embed_items(model, items), ids, types, "Flat", model_version="m")
    spec = FeatureSpec(Vocabulary(("u",)), Vocabulary(tuple(ids)), Vocabulary(("a", "b", "c")), Vocabulary(()), 6)
    plain = AnnSource(model, index, spec, {"b": 1.0}).candidates(_user("u"), 12, set())
    # A zero prior changes nothing; a prior on the 3rd best b item lifts it to the top, its score
    # the inner product plus the prior, the rest in their order.
    zero = AnnSource(model, index, spec, {"b": 1.0}, np.zeros(30, np.float32)).candidates(_user("u"), 12, set())
    assert zero == plain
    lifted = plain[2][0]
    prior = np.zeros(30, np.float32)
    prior[spec.items.encode_one(lifted)] = 100.0
    got = AnnSource(model, index, spec, {"b": 1.0}, prior).candidates(_user("u"), 3, set())
    assert [i for i, _, _ in got] == [lifted, plain[0][0], plain[1][0]]
    assert got[0][1] == pytest.approx(plain[2][1] + 100.0)
    # Exact under any prior: a strong random prior puts the best items far below the first
    # search's depth (4 x k by inner product) and, with a head of 2 items, outside the head; the
    # source searches deeper until the bound holds and returns the brute-force top k by inner
    # product + prior, for each shard and over all.
    query = embed_users(model, np.array([spec.users.encode_one("u")]), pad_histories([np.array([1, 2, 3])], 6))[0]
    brute_scores = embed_items(model, items) @ query
    for seed, head in itertools.product(range(5), (2, 1024)):
        monkeypatch.setattr(candidates_module, "PRIOR_HEAD", head)
        strong = np.random.default_rng(seed).uniform(0, 5 * np.ptp(brute_scores), 30).astype(np.float32)
        total = {i: float(brute_scores[n] + strong[n + 1]) for n, i in enumerate(ids)}
        for shares, k in (({"b": 1.0}, 1), ({"b": 1.0}, 2), (None, 3)):
            got = AnnSource(model, index, spec, shares, strong).candidates(_user("u", {"i4"}), k, {"i4"})
            pool = [i for i in ids if i != "i4" and (shares is None or types[ids.index(i)] == "b")]
            want = sorted(pool, key=lambda i: -total[i])[:k]
            assert [i for i, _, _ in got] == want
            assert [s for _, s, _ in got] == pytest.approx([total[i] for i in want], abs=1e-5)
    # popularity_prior: beta of the item's type (as the model's item features encode it) x
    # log1p(events), other types 0.
    other = next(i for i in ids if i != lifted)
    events = pl.DataFrame({"item_id": [lifted] * 3 + [other], "event": ["rating"] * 4})
    type_of = {i: spec.content_types.decode(int(model.content_type[spec.items.encode_one(i)])) for i in (lifted, other)}
    betas = popularity_prior(model, spec, events, {type_of[lifted]: 0.5})
    assert betas[spec.items.encode_one(lifted)] == pytest.approx(0.5 * np.log(4))
    assert betas[spec.items.encode_one(other)] == pytest.approx(0.5 * np.log(2) if type_of[other] == type_of[lifted] else 0)
    assert betas.sum() == pytest.approx(betas[spec.items.encode_one(lifted)] + betas[spec.items.encode_one(other)])


class _Fixed:
    def __init__(self, name, items):
        self.name, self.items = name, items

    def candidates(self, user, k, exclude):
        return [(i, 1.0, "x") for i in self.items if i not in exclude][:k]


def test_generator_quotas_first_source_wins_seen_excluded_and_fallback_fills():
    first = _Fixed("first", ["a", "b", "c", "d"])
    second = _Fixed("second", ["b", "e"])  # can fill only one of its 3 slots once "b" is taken
    fallback = _Fixed("popular", ["a", "f", "g", "h", "i", "j", "k"])
    gen = CandidateGenerator([(first, 2), (second, 3), (fallback, 2)])
    got = gen.generate(UserState("u", np.array([1]), frozenset({"a"})))
    assert list(zip(got.item_ids, got.sources, strict=True)) == [
        ("b", "first"), ("c", "first"), ("e", "second"), ("f", "popular"), ("g", "popular"), ("h", "popular"),
        ("i", "popular")]
    # A source listing an item twice: the first listing counts, once, and the fallback fills the slot.
    twice = CandidateGenerator([(_Fixed("first", ["b", "b", "c"]), 3), (fallback, 1)]).generate(NOBODY)
    assert list(zip(twice.item_ids, twice.sources, strict=True)) == [
        ("b", "first"), ("c", "first"), ("a", "popular"), ("f", "popular")]
    # A cold user: sources that find nothing hand their quota to the fallback.
    cold = CandidateGenerator([(_Fixed("first", []), 3), (fallback, 2)]).generate(NOBODY)
    assert cold.item_ids == ["a", "f", "g", "h", "i"]


def test_fresh_source_finds_the_nearest_items_with_few_events_from_content_alone():
    torch.manual_seed(0)
    model = _tiny_model("mean", n_items=30).eval()
    model.id_row = torch.arange(30)  # every item has a trained id row: content-only must ignore it
    model.content_type = torch.arange(30) % 2 + 1  # vocabulary indices of "a" and "b"
    ids = [f"i{i}" for i in range(1, 30)]
    spec = FeatureSpec(Vocabulary(("u",)), Vocabulary(tuple(ids)), Vocabulary(("a", "b")), Vocabulary(()), 6)
    # Items i1..i19 have 3 events each, i20..i29 one or none.
    events = pl.DataFrame({"item_id": [f"i{i}" for i in range(1, 20) for _ in range(3)] + ["i20", "i25"]})
    items = fresh_items(spec, events, max_events=1)
    assert [spec.items.values[i - 1] for i in items] == [f"i{i}" for i in range(20, 30)]
    source = FreshSource(model, fresh_index(model, spec, items, model_version="m"), spec)
    got = source.candidates(_user("u", {"i21"}), 4, {"i21"})
    # Brute force: the user embedding against the content-only embeddings of the fresh items.
    query = embed_users(model, np.array([spec.users.encode_one("u")]), pad_histories([np.array([1, 2, 3])], 6))[0]
    content = embed_items(model, items, content_only=True)
    assert not np.allclose(content, embed_items(model, items))  # not the id embeddings
    brute = {spec.items.values[i - 1]: float(s) for i, s in zip(items, content @ query, strict=True)}
    best = sorted((s for i, s in brute.items() if i != "i21"), reverse=True)[:4]
    assert [s for _, s, _ in got] == pytest.approx(best, abs=1e-5)  # the exact top 4 (items with equal
    assert all(brute[i] == pytest.approx(s, abs=1e-5) for i, s, _ in got)  # content tie: either may come)
    assert "i21" not in {i for i, _, _ in got}
    types = ["_ab"[t] for t in model.content_type[torch.from_numpy(items)].tolist()]
    assert all(t == types[[spec.items.values[i - 1] for i in items].index(i)] for i, _, t in got)
    assert source.candidates(NOBODY, 4, set()) == []


def test_fresh_source_history_query_searches_with_the_content_profile_and_scores_by_the_user():
    torch.manual_seed(0)
    model = _tiny_model("mean", n_items=30).eval()
    model.id_row = torch.arange(30)
    model.content_type = torch.arange(30) % 2 + 1
    model.category_values = torch.arange(30) % 5  # with the type: items 20-29 all differ in content
    ids = [f"i{i}" for i in range(1, 30)]
    spec = FeatureSpec(Vocabulary(("u",)), Vocabulary(tuple(ids)), Vocabulary(("a", "b")), Vocabulary(()), 6)
    items = np.arange(20, 30)
    source = FreshSource(model, fresh_index(model, spec, items, model_version="m"), spec, "history", history_items=2)
    user = UserState("u", np.array([5, 1, 2]), frozenset())
    got = source.candidates(user, 3, set())
    # The profile: the mean content-only embedding of the last 2 items (1 and 2), not of item 5.
    profile = embed_items(model, np.array([1, 2]), content_only=True).mean(0)
    assert np.allclose(content_profile(model, np.array([0, 0, 5, 1, 2]), 2), profile)
    content = embed_items(model, items, content_only=True)
    nearest = items[np.argsort(-(content @ profile), kind="stable")[:3]]
    assert sorted(spec.items.encode([i for i, _, _ in got]).tolist()) == sorted(nearest.tolist())
    # Scored by the user embedding, as the ann source scores, so the ranker sees one kind of score.
    query = embed_users(model, np.array([spec.users.encode_one("u")]), pad_histories([user.history], 6))[0]
    brute = dict(zip(items.tolist(), (content @ query).tolist(), strict=True))
    assert all(s == pytest.approx(brute[int(spec.items.encode([i])[0])], abs=1e-5) for i, s, _ in got)
    user_query = FreshSource(model, fresh_index(model, spec, items), spec).candidates(user, 3, set())
    assert {i for i, _, _ in user_query} != {i for i, _, _ in got}  # a different query, a different shelf
    with pytest.raises(ValueError, match="fresh_query"):
        FreshSource(model, fresh_index(model, spec, items), spec, "profile")
    with pytest.raises(ValueError, match="fresh_history_items is 0"):
        FreshSource(model, fresh_index(model, spec, items), spec, "history", history_items=0)


def test_make_candidate_generator_adds_the_fresh_source_with_its_quota(bundled_data):
    ds = load_dataset("ml-latest-small", bundled_data)
    spec = build_feature_spec(ds.items, ds.users, max_history=6)
    ratings = ds.events.filter(pl.col("event") == "rating")
    feats = item_features(ds.items, ratings, spec)
    torch.manual_seed(0)
    model = TwoTower(TwoTowerArgs(len(spec.users), len(spec.items), len(spec.content_types),
                                  max(2, len(spec.categories)), 8, 16), feats).eval()
    everything = np.arange(1, len(spec.items))
    index = ItemIndex.build(embed_items(model, everything), list(spec.items.values),
                            [spec.content_types.decode(int(t)) for t in model.content_type[1:].tolist()],
                            "Flat", model_version="m")
    config = CandidatesConfig(ann=10, social=0, follow=0, fresh=5, fresh_max_events=0, popular=5)
    generator = make_candidate_generator(config, model=model, index=index, spec=spec, data=ds,
                                         history_events=("rating",))
    assert [s.name for s, _ in generator.sources] == ["ann", "fresh", "popular"]
    unrated = set(ds.items["item_id"]) - set(ratings["item_id"])
    user = ratings["user_id"][0]
    history = spec.items.encode(ratings.filter(pl.col("user_id") == user)["item_id"])[-6:]
    found = generator.generate(UserState(user, history, frozenset()))
    fresh = [i for i, s in zip(found.item_ids, found.sources, strict=True) if s == "fresh"]
    assert len(fresh) == 5 and set(fresh) <= unrated and len(set(found.item_ids)) == len(found) == 20
    off = make_candidate_generator(dataclasses.replace(config, fresh=0), model=model, index=index, spec=spec,
                                   data=ds, history_events=("rating",))
    assert [s.name for s, _ in off.sources] == ["ann", "popular"]
    by_history = make_candidate_generator(dataclasses.replace(config, fresh_query="history", fresh_history_items=3),
                                          model=model, index=index, spec=spec, data=ds, history_events=("rating",))
    fresh_source = by_history.sources[1][0]
    assert (fresh_source.query, fresh_source.history_items) == ("history", 3)
