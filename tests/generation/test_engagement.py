"""The learned critic: logged post events joined by post id, and a reward model that recovers a
planted preference."""

import argparse
import json

import numpy as np
import polars as pl

from feedcore.config import GenerationConfig
from feedcore.events import read_event_log
from generation.critic import Critic
from generation.engagement import EngagementModel, describe, fit_engagement_model, post_examples
from generation.interface import GeneratedPost, SourceItem
from generation.store import SqlitePostStore
from serving.event_log import EventLog

TOPICS = ["comedy", "drama", "horror", "western"]


def _embed(texts: list[str]) -> np.ndarray:
    """A known embedding: one axis per topic word the text holds, plus a constant axis."""
    return np.array([[float(t in text.lower()) for t in TOPICS] + [1.0] for text in texts], np.float32)


def _event(user, post_id, event, ts):
    return {"user_id": user, "item_id": post_id, "content_type": "generated", "ts": ts, "event": event, "value": 0.0,
            "request_id": f"r{ts}", "position": 0, "surface": "home", "experiment_arm": "control",
            "source": "generated", "propensity": 0.0, "event_id": None}


def test_examples_join_the_log_to_the_post_store_and_the_model_learns_the_planted_taste(tmp_path):
    """Users engage with posts naming their source's topic; the critic fit on the real event log
    and post store picks that post for held-out users far above chance (the truth is known)."""
    rng = np.random.default_rng(0)
    sources = {t: SourceItem(t, f"A {t} film", "movie", (t.title(),)) for t in TOPICS}
    store = SqlitePostStore(tmp_path / "posts.sqlite", GenerationConfig(posts_per_user=4, cache_ttl_s=10**9))
    log = EventLog(tmp_path / "log")
    events, ts = [], 0
    for u in range(300):
        mine = TOPICS[u % 4]
        for topic in TOPICS:  # one post per topic, each shown once (uniform logging)
            post = GeneratedPost(f"gen:{u}:{topic}", str(u), f"Tonight, a {topic} for you.", (mine,), "m", "v2")
            store.put(post)
            ts += 1
            events.append(_event(str(u), post.post_id, "impression", ts))
            if rng.random() < (0.6 if topic == mine else 0.1):
                events.append(_event(str(u), post.post_id, "click", ts))
    events.append(_event("9", "gen:9:unknown", "impression", ts + 1))  # a post the store no longer holds
    log.append(events)
    log.close()
    examples = post_examples(read_event_log(tmp_path / "log"), store.get)
    store.close()
    assert examples.height == 1200 and examples["post_id"].n_unique() == 1200
    truth = pl.DataFrame(events).filter(pl.col("event") == "click").select("user_id", "item_id").unique()
    assert examples["label"].sum() == truth.height
    row = examples.filter(pl.col("post_id") == "gen:7:western").row(0, named=True)
    assert row["text"] == "Tonight, a western for you." and row["source_item_ids"] == ["western"]

    model = fit_engagement_model(examples, sources.__getitem__, _embed)
    assert model is not None and model.impressions == 1200
    loaded = EngagementModel.load(_saved(model, tmp_path / "critic.npz"))
    value = loaded.value_fn(_embed)
    critic = Critic(None, value)
    picks = critic.score([(str(u), "", [f"Tonight, a {t} for you." for t in TOPICS], [sources[TOPICS[u % 4]]])
                          for u in range(4)])
    assert [int(np.argmax(s)) for s in picks] == [0, 1, 2, 3]  # each user's own topic
    mine = value("x", ["Tonight, a drama for you."], [sources["drama"]])[0]
    other = value("x", ["Tonight, a horror for you."], [sources["drama"]])[0]
    assert abs(mine - 0.6) < 0.1 and abs(other - 0.1) < 0.07  # calibrated near the planted rates


def _saved(model, path):
    model.save(path)
    return path


def test_a_cold_start_keeps_the_proxy():
    examples = pl.DataFrame({"user_id": ["1"], "post_id": ["gen:1:a"], "label": [0], "text": ["a"],
                             "source_item_ids": [["x"]]})
    assert fit_engagement_model(examples, lambda i: SourceItem(i, i, "movie"), _embed) is None
    assert describe(SourceItem("1", "Heat (1995)", "movie")) == "Heat (1995)"


def test_feed_train_critic_fits_the_served_log_into_the_critic_path(tmp_path, capsys, engine_config):
    """The job end to end on prepared MovieLens data: real post store, real event log, real
    all-MiniLM-L6-v2; the saved critic prefers, for a user, the post that names the genre users
    like them engaged with (planted 0.6 against 0.1)."""
    import dataclasses

    from feedcli.cli import cmd_train_critic
    from feedcore.prepare import prepare_data
    from feedcore.text import embed_texts, load_text_encoder
    from generation.grounding import Catalog
    from generation.store import make_post_store

    config = engine_config(tmp_path / "engine")
    config = dataclasses.replace(config, generation=dataclasses.replace(config.generation, posts_per_user=4))
    dataset, _ = prepare_data(config)
    catalog = Catalog.from_items(dataset.items)
    films = {"comedy": "1", "drama": "31", "horror": "1347", "western": "1201"}  # Toy Story, ... (ml-latest-small)
    genres = dict(zip(dataset.items["item_id"].to_list(), dataset.items["categories"].to_list(), strict=True))
    store = make_post_store(config.generation, config.artifacts_dir)
    rng = np.random.default_rng(1)
    events, ts = [], 0
    for u in range(240):
        mine = TOPICS[u % 4]
        for topic in TOPICS:
            post = GeneratedPost(f"gen:{u}:{topic}", str(u), f"Tonight, a {topic} for you.", (films[mine],), "m", "v2")
            store.put(post)
            ts += 1
            events.append(_event(str(u), post.post_id, "impression", ts))
            if rng.random() < (0.6 if topic == mine else 0.1):
                events.append(_event(str(u), post.post_id, "click", ts))
    store.close()
    log = EventLog(tmp_path / "log")
    log.append(events)
    log.close()
    assert not config.critic_path.exists()
    cmd_train_critic(config, argparse.Namespace(from_logs=[str(tmp_path / "log")]))
    assert json.loads(capsys.readouterr().out)["impressions"] == 960
    model = EngagementModel.load(config.critic_path)
    assert model.impressions == 960
    encoder = load_text_encoder()
    value = model.value_fn(lambda texts: embed_texts(texts, encoder))
    wins = 0
    for topic, film in films.items():
        source = catalog.source(film, tuple(genres[film] or ()))
        scores = value("x", [f"Tonight, a {t} for you." for t in TOPICS], [source])
        wins += TOPICS[int(np.argmax(scores))] == topic
    assert wins >= 3
