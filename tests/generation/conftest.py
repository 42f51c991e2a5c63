"""Fixtures of the generation tests: the real SmolLM2 model (converted once per session into a
temporary cache) and the real MovieLens catalog."""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest

from feedcore.config import GenerationConfig

# Tiny decoding so the whole module's tests stay within a few minutes on 2 cores.
TEST_CONFIG = GenerationConfig(threads=2, max_new_tokens=20, num_candidates=2, max_tries=1, batch_size=4)


class Clock:
    """A clock the tests move by hand (seconds), for caches and the post exchange."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="session")
def llm_cache(tmp_path_factory):
    """(cache dir, converted folder, whether this call converted): the GGUF is converted once."""
    from generation.llm import converted_weights, packaged_gguf

    cache_dir = tmp_path_factory.mktemp("llm")
    folder, converted = converted_weights(packaged_gguf(), cache_dir)
    return cache_dir, folder, converted


@pytest.fixture(scope="session")
def lm(llm_cache):
    from generation.llm import make_language_model

    return make_language_model(TEST_CONFIG, llm_cache[0])


@pytest.fixture(scope="session")
def movielens(bundled_data):
    from feedcore.datasets import load_dataset

    return load_dataset("ml-latest-small", bundled_data)


@pytest.fixture(scope="session")
def catalog(movielens):
    from generation.grounding import Catalog

    return Catalog.from_items(movielens.items)


@pytest.fixture(scope="session")
def user_sources(movielens, catalog):
    """Each user's three best-rated, most recent movies as `SourceItem`s (the benchmark's proxy
    for the ranker's top items)."""
    categories = dict(zip(movielens.items["item_id"].to_list(), movielens.items["categories"].to_list(), strict=True))
    top = (movielens.events.filter(pl.col("event") == "rating")
           .sort(["user_id", "value", "ts"], descending=[False, True, True])
           .group_by("user_id", maintain_order=True).head(3))

    def sources(user_id: str):
        ids = top.filter(pl.col("user_id") == user_id)["item_id"].to_list()
        return tuple(catalog.source(i, categories[i]) for i in ids)

    return sources


def config(**changes) -> GenerationConfig:
    return dataclasses.replace(TEST_CONFIG, **changes)
