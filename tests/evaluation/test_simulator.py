"""The simulation harness: held-out futures, the response model, and an end-to-end simulated A/B
run against a real server on loopback, analysed from the service's own event log."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from evaluation.simulator import (
    SimulationConfig,
    post_tastes,
    respond,
    run_simulation,
    simulation_report,
    split_futures,
)
from feedcore.events import read_event_log
from serving.event_log import EventLog
from serving.experiments import load_experiment
from serving.server import create_server


def test_futures_are_each_users_latest_interactions():
    events = pl.DataFrame({
        "user_id": ["a"] * 10 + ["b"] * 3, "item_id": [f"i{k}" for k in range(10)] + ["x", "y", "z"],
        "ts": list(range(10, 0, -1)) + [1, 2, 3], "event": ["rating"] * 13, "value": [5.0] * 13,
    })
    past, futures = split_futures(events, 0.2, min_past=5, history_events=("rating",))
    assert futures == {"a": {"i0": 5.0, "i1": 5.0}}  # a's two latest (ts 10 and 9); b keeps all three
    assert past.height == 11 and not past.filter(pl.col("item_id").is_in(["i0", "i1"])).height
    every_past, every_future = split_futures(events, 0.2, min_past=5)  # no history_events: every event counts
    assert every_future == futures and every_past.equals(past)


def test_generated_posts_are_answered_by_what_they_say():
    """A post naming the user's favourite genre is clicked at p_post_base + p_post_taste / 2, one
    naming another genre at p_post_base and hidden at p_hide + p_post_off_taste_hide / 2."""
    items = pl.DataFrame({"item_id": ["a", "b", "c"], "categories": [["Comedy"], ["Comedy", "Drama"], ["Horror"]]})
    taste = post_tastes({"u": {"a": 5.0, "b": 4.0}}, items, k=1)["u"]
    assert taste.favourites == {"comedy"} and taste.mentioned("A COMEDY, not a horror-comedy.") == {"comedy"}
    sim = SimulationConfig(examine_decay=0.0, p_hide=0.0)
    rng = np.random.default_rng(0)

    def rates(text):
        post = [SimpleNamespace(item_id="gen:u:1", position=0, content_type="generated", text=text)]
        events = [e for _ in range(4000) for _, e, _ in respond(post, {}, sim, rng, taste)]
        return events.count("click") / 4000, events.count("hide") / 4000

    click, hide = rates("A comedy for tonight.")
    assert abs(click - (0.05 + 0.6 / 2)) < 0.025 and hide == 0
    click, hide = rates("A horror for tonight.")
    assert abs(click - 0.05) < 0.015 and abs(hide - 0.95 * 0.1) < 0.015


def _items(ids, start=0):
    return [SimpleNamespace(item_id=i, position=start + k, content_type="movie") for k, i in enumerate(ids)]


def test_response_model_follows_its_documented_noise():
    sim = SimulationConfig(examine_decay=0.0, p_click_future=1.0, p_click_other=0.0, p_like=1.0, p_hide=0.0)
    future = {"hit": 5.0, "meh": 2.0}
    events = respond(_items(["miss", "hit", "meh"]), future, sim, np.random.default_rng(0))
    kinds = [(i.item_id, e) for i, e, _ in events]
    assert kinds == [("miss", "impression"), ("hit", "impression"), ("hit", "click"), ("hit", "watch"),
                     ("hit", "like"), ("meh", "impression"), ("meh", "click"), ("meh", "watch")]
    assert future == {}  # engaged futures are consumed
    # position bias: with decay 1, position 9 is looked at 1/10 of the time
    sim = dataclasses.replace(sim, examine_decay=1.0)
    rng = np.random.default_rng(1)
    clicks = sum(e == "click" for _ in range(4000) for _, e, _ in respond(_items(["x"], 9), {"x": 1.0}, sim, rng))
    assert abs(clicks / 4000 - 0.1) < 0.02


@pytest.fixture(scope="module")
def simulated_run(sim_engine, sim_pipeline, tmp_path_factory):
    config, futures, experiment_file = sim_engine
    log = EventLog(config.event_log_dir)
    running = create_server(config.serving, sim_pipeline, log)
    running.server.start()
    sim = SimulationConfig(sessions=2, pages=2, workers=2, seed=3)
    try:
        run = run_simulation(f"127.0.0.1:{running.port}", futures, sim, "sim", "control", config.serving.api_keys[0])
    finally:
        running.server.stop(2).wait()
        log.close()
    return run, sim, read_event_log(config.event_log_dir), load_experiment(experiment_file)


def test_a_simulated_ab_run_goes_through_the_real_service_and_its_log(simulated_run):
    run, sim, log, _ = simulated_run
    assert not run.truncated and run.users > 100
    assert log.height == run.events  # every event the simulated app sent was logged, nothing else
    pre, exp = log.filter(pl.col("ts") < run.start_ms), log.filter(pl.col("ts") >= run.start_ms)
    assert set(pre["experiment_arm"].unique()) == {"sim/control"}  # the pre-period is all control
    assert set(exp["experiment_arm"].unique()) == {"sim/control", "sim/reversed"}
    assert exp.filter(pl.col("event") == "click").height > 20
    # a served page's impressions carry the request id and positions of the response
    imp = exp.filter(pl.col("event") == "impression")
    assert imp["request_id"].null_count() == 0 and imp["position"].min() == 0


def test_the_report_finds_the_planted_worse_arm_and_says_it_is_simulated(simulated_run, tmp_path):
    run, sim, log, experiment = simulated_run
    arms = tuple((a.name, a.share) for a in experiment.arms)
    path = simulation_report(log, "sim", arms, run, sim, tmp_path / "report")
    text = path.read_text()
    assert text.startswith("# SIMULATED A/B run") and "**SIMULATION.**" in text.splitlines()[2]
    assert "Sample ratio: OK" in text
    import json

    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["simulated"] is True and not summary["srm_flagged"]
    ctr = summary["metrics"]["ctr/reversed"]
    # the worst-first feed loses clicks: a planted effect the analysis must see
    assert ctr["relative"] < -0.3 and ctr["p_value"] < 0.01
    for name in ("lifts", "arms", "srm"):
        assert (tmp_path / "report" / f"{name}.png").stat().st_size > 5000


def test_a_run_stops_at_its_request_budget(sim_engine, sim_pipeline, tmp_path):
    config, futures, _ = sim_engine
    log = EventLog(tmp_path / "log")
    running = create_server(config.serving, sim_pipeline, log)
    running.server.start()
    try:
        sim = SimulationConfig(sessions=5, pages=3, max_requests=25, workers=2)
        run = run_simulation(f"127.0.0.1:{running.port}", futures, sim, "sim", "control", config.serving.api_keys[0])
    finally:
        running.server.stop(0).wait()
        log.close()
    assert run.truncated and run.requests == 25
    assert read_event_log(tmp_path / "log")["request_id"].n_unique() == 25
