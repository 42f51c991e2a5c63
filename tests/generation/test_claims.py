"""The plan and the claim check (issue 20): the check's precision and recall on 64 generated posts
labelled by hand claim by claim, the facts the plan takes from the catalog, and the decoding
constraint on the real model (titles only from the sources, in quotes, nothing else name-like)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from generation.claims import ClaimChecker, drop_false_claims, evaluate_check, make_plan, source_facts
from generation.grounding import Catalog
from generation.interface import SourceItem
from generation.prompts import build_prompt

FIXTURE = Path(__file__).parent / "data" / "claims_labelled.json"
# Measured on the fixture (BENCHMARKS.md, "Generated posts: the claim check"); the floors leave a
# claim's worth of slack, so a check that flags less, or flags true claims, fails.
FLOORS = {"ml-latest-small": (1.0, 0.89), "amazon-arts-office": (0.81, 0.60), None: (0.95, 0.80)}


@pytest.fixture(scope="module")
def labelled():
    return json.loads(FIXTURE.read_text())


def _checker(labelled, dataset):
    return ClaimChecker.from_words(labelled["category_words"]["amazon-arts-office" if dataset is None else dataset])


def test_the_fixture_is_labelled_claim_by_claim(labelled):
    posts = labelled["posts"]
    assert len(posts) >= 50
    claims = [c for p in posts for c in p["claims"]]
    assert len(claims) >= 100 and sum(not c["true"] for c in claims) >= 30
    for post in posts:
        for claim in post["claims"]:
            start, end = claim["span"]
            assert post["text"][start:end] == claim["text"], (post["id"], claim)


@pytest.mark.parametrize("dataset", ["ml-latest-small", "amazon-arts-office", None])
def test_precision_and_recall_of_the_claim_check(labelled, dataset):
    posts = [p for p in labelled["posts"] if dataset is None or p["dataset"] == dataset]
    result = evaluate_check(_checker(labelled, dataset), posts)
    precision, recall = FLOORS[dataset]
    assert result["precision"] >= precision - 1e-9, result
    assert result["recall"] >= recall - 1e-9, result


def test_a_names_only_check_finds_no_false_claim(labelled):
    """The reference the claim check is measured against: the check before issue 20 looked at names
    only, so every attribute claim passed (recall 0 on the same labels)."""

    class NamesOnly(ClaimChecker):
        def check(self, *args, **kwargs):
            return [c.__class__(**{**c.__dict__, "true": True}) for c in super().check(*args, **kwargs)]

    result = evaluate_check(NamesOnly.from_words([]), labelled["posts"])
    assert result["recall"] == 0.0 and result["false_claims"] >= 30


def test_the_issue_examples_are_false_claims():
    catalog = Catalog([("1", "Quiet Place, A (2018)", "movie"), ("2", "American Beauty (1999)", "movie")])
    quiet = catalog.source("1", ("Drama", "Horror", "Thriller"))
    beauty = catalog.source("2", ("Drama", "Romance"))
    checker = ClaimChecker([])
    claims = checker.check('"A Quiet Place", on its own, is a comedy.', [quiet, beauty], catalog)
    assert [(c.text, c.item_ids, c.true) for c in claims] == [("comedy", ("1",), False)]
    claims = checker.check('"American Beauty" is a thriller from 1999. "A Quiet Place" is not a comedy.',
                           [quiet, beauty], catalog)
    assert [(c.text, c.item_ids, c.true) for c in claims] == [
        ("thriller", ("2",), False), ("1999", ("2",), True), ("comedy", ("1",), True)]
    text = '"American Beauty" is a 1999 drama. It is a thriller. "A Quiet Place" is scary.'
    claims = checker.check(text, [quiet, beauty], catalog)
    assert [(c.text, c.item_ids, c.true) for c in claims] == [
        ("1999", ("2",), True), ("drama", ("2",), True), ("thriller", ("2",), False), ("scary", ("1",), True)]
    assert drop_false_claims(text, claims) == '"American Beauty" is a 1999 drama. "A Quiet Place" is scary.'


def test_the_plan_holds_the_catalog_facts(catalog, movielens):
    categories = dict(zip(movielens.items["item_id"].to_list(), movielens.items["categories"].to_list(),
                          strict=True))
    matrix = next(i for i, t in catalog._stored.items() if t == "Matrix, The (1999)")
    toy = next(i for i, t in catalog._stored.items() if t == "Toy Story (1995)")
    sources = [catalog.source(toy, categories[toy]), catalog.source(matrix, categories[matrix])]
    plan = make_plan(sources, ["Sci-Fi"], "because")
    assert [(f.title, f.year, f.genres) for f in plan.sources] == [
        ("Toy Story", 1995, tuple(categories[toy])), ("The Matrix", 1999, tuple(categories[matrix]))]
    assert plan.sources[0].reason == "the reader liked it"
    assert plan.sources[1].reason == "like Toy Story, which the reader liked"
    product = SourceItem("7", "clover wonder clips red 50 pack", "arts_product",
                         ("arts crafts sewing", "sewing", "arts crafts sewing sewing sewing notions supplies clover"))
    facts = source_facts(product)
    assert (facts.title, facts.year, facts.genres, facts.creator) == ("Clover Wonder Clips Red 50 Pack", None,
                                                                      ("sewing",), "Clover")
    prompt = build_prompt(sources, ["Sci-Fi"], "digest", "v2", variant=0)
    assert prompt[1]["titles"] == ["Toy Story", "The Matrix"]
    assert '"The Matrix" is a 1999 action, sci-fi and thriller movie.' in prompt[1]["content"]
    assert prompt[2] == {"role": "assistant", "content": '"Toy Story"'}


def test_constrained_decoding_names_only_the_sources(lm, catalog, user_sources):
    """Sampled on the real model with and without the constraint: with it, every quoted span is a
    source title and no word inside a sentence is capitalized; without it (the reference), the
    same prompts name other things."""
    from generation.llm import TITLES_KEY

    prompts, titles = [], []
    for user in ["1", "2", "3", "4"]:
        sources = user_sources(user)
        prompt = build_prompt(sources, ["Drama"], "digest", "v2", variant=1)
        prompts.append(prompt)
        titles.append(set(prompt[1][TITLES_KEY]))
    free = [[{k: v for k, v in m.items() if k != TITLES_KEY} for m in p] for p in prompts]
    seeds = [11, 12, 13, 14]
    constrained = lm.generate(prompts, 40, 0.9, 0.95, seeds)
    unconstrained = lm.generate(free, 40, 0.9, 0.95, seeds)

    def violations(text: str, allowed: set[str]) -> list[str]:
        quoted = re.findall(r'"([^"]*)"', text)
        bad = [q for q in quoted if q not in allowed]
        outside = re.sub(r'"[^"]*"?', " ", text)
        bad += [w for w in re.findall(r"(?<![.!?\n:] )(?<=\s)[A-Z]\w+", outside)]
        return bad

    for text, allowed in zip(constrained, titles, strict=True):
        assert violations(text, allowed) == [], text
    assert any(violations(t, a) for t, a in zip(unconstrained, titles, strict=True)), unconstrained
