"""A small engine trained on each user's past, for the simulator, exploration and comparison tests.

The bundled MovieLens data cut to its first 150 users (so training takes seconds on two shared
cores), each user's latest 20% of ratings held out as their simulated future.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
import pytest

from evaluation.simulator import SimulationConfig, prepare_simulation, train_engine
from feedcore.config import load_config
from feedcore.datasets import load_dataset
from feedcore.schemas import CanonicalDataset

REPO = Path(__file__).resolve().parents[2]
USERS = 150
TWO_ARMS = """
name = "sim"
salt = "sim-1"
[[arms]]
name = "control"
share = 0.5
[[arms]]
name = "reversed"
share = 0.5
value_weights = { engage = -1.0 }  # planted: the worst-first feed
"""


def small_engine_config(artifacts_dir: Path, raw_root: Path):
    """configs/demo.toml shrunk: no title embeddings, tiny models, one or two epochs."""
    config = load_config(REPO / "configs" / "demo.toml")
    return dataclasses.replace(
        config, artifacts_dir=str(artifacts_dir),
        data=dataclasses.replace(config.data, dataset="canonical", raw_root=str(raw_root), max_history=20),
        retrieval=dataclasses.replace(config.retrieval, text_features=False, embedding_dim=16, hidden_dim=32,
                                      epochs=2),
        ranker=dataclasses.replace(config.ranker, embedding_dim=8, dense_hidden=(16,), over_hidden=(16,), epochs=1,
                                   batch_size=1024),
    )


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """MovieLens latest-small restricted to its first USERS users, in the canonical layout."""
    data = load_dataset("ml-latest-small", REPO / "data" / "ml-latest-small")
    users = data.users.sort("user_id").head(USERS)
    events = data.events.join(users.select("user_id"), on="user_id", how="semi")
    items = data.items.join(events.select("item_id").unique(), on="item_id", how="semi")
    root = tmp_path_factory.mktemp("ml-small-150") / "raw"
    CanonicalDataset("ml-small-150", items, users, events, data.edges).write(root)
    return root


@pytest.fixture(scope="session")
def sim_engine(tmp_path_factory, small_dataset):
    """(engine config, futures, experiment file): trained on the users' past, ready to serve."""
    workdir = tmp_path_factory.mktemp("simulation")
    experiment = workdir / "experiment.toml"
    experiment.write_text(TWO_ARMS)
    base = small_engine_config(workdir / "unused", small_dataset)
    config, futures = prepare_simulation(base, SimulationConfig(), workdir, experiment)
    train_engine(config)
    return config, futures, experiment


@pytest.fixture(scope="session")
def sim_pipeline(sim_engine):
    from serving.pipeline import FeedPipeline

    return FeedPipeline.from_artifacts(sim_engine[0])


def events_of(log: pl.DataFrame, event: str) -> pl.DataFrame:
    return log.filter(pl.col("event") == event)
