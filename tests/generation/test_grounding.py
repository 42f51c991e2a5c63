"""The grounding check on the real MovieLens catalog: named sources, foreign titles, invented
names, repetition, length, repair, and the template fallback that is grounded by construction."""

from __future__ import annotations

import random

import pytest

from generation.grounding import Catalog, repair, template_post
from generation.interface import KINDS, SourceItem
from generation.prompts import build_prompt
from generation.titles import display_title


def _ids(catalog: Catalog, *titles: str) -> list[str]:
    found = [i for t in titles for i, shown in catalog.titles.items() if shown == t]
    assert len(found) == len(titles), f"catalog titles not found: {titles}"
    return found


@pytest.fixture(scope="module")
def toy_story(catalog):
    """Toy Story, A Bug's Life and Toy Story 2 as sources."""
    return [catalog.source(i) for i in _ids(catalog, "Toy Story", "A Bug's Life", "Toy Story 2")]


def test_display_titles_read_as_people_write_them():
    assert display_title("Shawshank Redemption, The (1994)") == "The Shawshank Redemption"
    assert display_title("Seven (a.k.a. Se7en) (1995)") == "Seven"
    assert display_title("Star Wars: Episode IV - A New Hope (1977)") == "Star Wars: Episode IV - A New Hope"


def test_named_sources_are_found(catalog, toy_story):
    result = catalog.check("If you loved Toy Story, A Bug's Life and Toy Story 2 are next.", toy_story)
    assert result.ok
    assert set(result.named_source_ids) == {s.item_id for s in toy_story}
    assert result.foreign_names == ()


def test_a_foreign_catalog_title_is_flagged(catalog, toy_story):
    matrix, = _ids(catalog, "The Matrix")
    result = catalog.check("Toy Story is fun, and so is The Matrix.", toy_story)
    assert result.reason == "foreign_item"
    assert result.foreign_item_ids == (matrix,)
    assert result.named_source_ids == (toy_story[0].item_id,)


def test_an_invented_title_like_span_is_flagged(catalog, toy_story):
    quoted = catalog.check('Toy Story has a sequel called "Buzz Goes Home".', toy_story)
    assert quoted.reason == "invented_name" and quoted.unknown_names == ("Buzz Goes Home",)
    person = catalog.check("Toy Story stars the voice of Tom Hanks.", toy_story)
    assert person.unknown_names == ("Tom Hanks",)


def test_ordinary_words_that_are_also_titles_are_not_names(catalog, toy_story):
    # "Heat", "Up", "Big", "The Game" are films; written as ordinary words they are not named.
    text = "Toy Story is big fun. Heat up some popcorn, the game is on, and enjoy it."
    result = catalog.check(text, toy_story)
    assert result.ok, result
    assert result.foreign_item_ids == ()
    heat, = _ids(catalog, "Heat")
    assert catalog.check("Toy Story first, then Heat.", toy_story).foreign_item_ids == (heat,)


def test_repetition_length_and_garbage(catalog, toy_story):
    repeated = catalog.check("Toy Story is a great film. Toy Story is a great film.", toy_story)
    assert repeated.reason == "repeats"
    assert repair(repeated) == "Toy Story is a great film."
    long = catalog.check("Toy Story is great. " + "It is a film everyone remembers fondly. " * 3, toy_story, max_chars=60)
    assert long.over_length and len(repair(long)) <= 60
    assert catalog.check("!!! ??? 12 34", toy_story).reason == "garbage"
    assert catalog.check("", toy_story).reason == "garbage"
    assert catalog.check("Toy Story is a film that", toy_story).reason == "unfinished"
    assert catalog.check("A fun film for a cosy night in.", toy_story).reason == "no_source"


def test_repair_keeps_the_grounded_sentences(catalog, toy_story):
    text = "Toy Story is a classic. Jumanji is wild too. A Bug's Life is sweet. And then"
    result = catalog.check(text, toy_story)
    assert not result.ok
    fixed = repair(result)
    assert fixed == "Toy Story is a classic. A Bug's Life is sweet."
    assert catalog.check(fixed, toy_story).ok
    # Nothing grounded left: repair says so.
    assert repair(catalog.check("Jumanji is wild.", toy_story)) == ""


def _random_sources(catalog: Catalog, rng: random.Random, n: int) -> list[list[SourceItem]]:
    ids = sorted(catalog.titles)
    return [[catalog.source(i) for i in rng.sample(ids, rng.choice([2, 3, 4]))] for _ in range(n)]


def test_templates_are_grounded_by_construction_on_movielens(catalog):
    rng = random.Random(0)
    for n, sources in enumerate(_random_sources(catalog, rng, 600)):
        interests = ["Sci-Fi", "Comedy"] if n % 2 else []
        for kind in KINDS:
            text = template_post(sources, interests, kind, user_id=str(n))
            result = catalog.check(text, sources, interests)
            assert result.ok, (text, result.reason, result.foreign_names)
            assert set(result.named_source_ids) == {s.item_id for s in sources}, text


def test_templates_differ_between_users(catalog):
    sources = _random_sources(catalog, random.Random(1), 1)[0]
    assert len({template_post(sources, ["Drama"], "digest", user_id=str(u)) for u in range(40)}) >= 3
    assert template_post(sources, [], "caption", "7") == template_post(sources, [], "caption", "7")


def test_templates_are_grounded_on_amazon_products(shared_data):
    from feedcore.datasets import load_dataset

    items = load_dataset("amazon-arts-office", shared_data / "amazon-arts-office").items
    catalog = Catalog.from_items(items)
    rng = random.Random(2)
    for n, sources in enumerate(_random_sources(catalog, rng, 300)):
        for kind in KINDS:
            text = template_post(sources, [], kind, user_id=str(n))
            result = catalog.check(text, sources)
            assert result.ok and set(result.named_source_ids) == {s.item_id for s in sources}, (text, result)


def test_prompts_name_only_the_sources(catalog, toy_story):
    for kind in KINDS:
        user = build_prompt(toy_story, ["Animation"], kind)[1]["content"]
        found = {i for m in catalog.find_titles(user) for i in m.item_ids}
        assert found == {s.item_id for s in toy_story}, (kind, user)
