"""Off-policy evaluation on the simulated A/B (issue 18): how often IPS, SNIPS and DR intervals hold
the simulator's true value, over repeated simulated runs against a real server, and what logging
each exploring session's ranking costs a first page.

    nice -n 10 .venv/bin/python benchmarks/ope_simulated.py [--runs 8] [--users 300]

The engine is `configs/ab-engine.toml` trained on each user's past (`feed ab simulate`'s; reused
from ``artifacts/ab-simulation`` when it is there, trained otherwise), the experiment
`configs/experiments/ab-demo.toml` (both arms Plackett–Luce at temperature 0.3 on the first page).
Each run is a fresh event log and a fresh seed of the simulated users; every arm's policy is
estimated from every arm's pages (`evaluation.simulator.simulated_ope`) and each interval is checked
against the simulator's true value of that policy on those pages. The cost: first-page GetFeed
latency on the exploring arm with the ranking logged (a second pipeline call fetches the rest of the
session's order) against the same server without an event log, in one run, as a ratio.
Writes benchmarks/results/ope_simulated.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
from tqdm import tqdm

from evaluation.ope_log import arm_policies
from evaluation.simulator import (
    SimulatedOPE,
    SimulationConfig,
    prepare_simulation,
    run_simulation,
    simulated_ope,
    train_engine,
)
from feedcore.config import load_config
from feedcore.events import read_event_log, read_rankings
from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.event_log import EventLog
from serving.experiments import load_experiment
from serving.pipeline import FeedPipeline
from serving.server import create_server

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results" / "ope_simulated.json"
EXPERIMENT = ROOT / "configs" / "experiments" / "ab-demo.toml"


def _serve(config, pipeline, log_dir: Path | None):
    log = EventLog(log_dir) if log_dir is not None else None
    running = create_server(config.serving, pipeline, log)
    running.server.start()
    return running, log


def _stop(running, log) -> None:
    running.server.stop(2).wait()
    if log is not None:
        log.close()
    running.metrics.stop_http()


def first_page_latency(config, pipeline, users: list[str], workdir: Path) -> dict:
    """Median and p90 ms of first-page GetFeeds on the exploring control arm, with and without the
    ranking logged (interleaved in rounds so both see the same load on the shared cores)."""
    times: dict[str, list[float]] = {"logged": [], "not logged": []}
    servers = {"logged": _serve(config, pipeline, workdir / "latency-log"), "not logged": _serve(config, pipeline, None)}
    try:
        stubs = {}
        for name, (running, _) in servers.items():
            channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
            grpc.channel_ready_future(channel).result(timeout=30)
            stubs[name] = feed_pb2_grpc.FeedServiceStub(channel)
        for user in users:
            for name, stub in stubs.items():
                start = time.perf_counter()
                stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, page_size=10,
                                                     experiment_overrides={"diversity-demo": "control"}), timeout=30)
                times[name].append(1000 * (time.perf_counter() - start))
    finally:
        for running, log in servers.values():
            _stop(running, log)
    out = {name: {"p50_ms": float(np.median(t)), "p90_ms": float(np.quantile(t, 0.9)), "calls": len(t)}
           for name, t in times.items()}
    out["p50_ratio"] = out["logged"]["p50_ms"] / out["not logged"]["p50_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--users", type=int, default=300, help="simulated users per run (0: all 610)")
    parser.add_argument("--workdir", default=str(ROOT / "artifacts" / "ab-simulation"))
    args = parser.parse_args()
    started = time.time()
    workdir = Path(args.workdir)
    experiment = load_experiment(EXPERIMENT)
    base = SimulationConfig(users=args.users)
    config, futures = prepare_simulation(load_config(ROOT / "configs" / "ab-engine.toml"), base, workdir, EXPERIMENT)
    if not (Path(config.artifacts_dir) / "ranker").exists():
        train_engine(config)
    pipeline = FeedPipeline.from_artifacts(config)
    policies = arm_policies(experiment, config.serving.weights_for("home"))
    bench = workdir / "ope-benchmark"
    shutil.rmtree(bench, ignore_errors=True)
    rows, per_run = [], []
    for run_index in tqdm(range(args.runs), desc="simulated runs"):
        sim = dataclasses.replace(base, seed=run_index)
        running, log = _serve(config, pipeline, bench / f"run-{run_index}")
        contexts: dict[str, frozenset[str]] = {}
        try:
            run = run_simulation(f"127.0.0.1:{running.port}", futures, sim, experiment.name, experiment.arms[0].name,
                                 config.serving.api_keys[0], contexts)
        finally:
            _stop(running, log)
        log_dir = bench / f"run-{run_index}"
        found = simulated_ope(read_event_log(log_dir), experiment.name, run, sim,
                              SimulatedOPE(read_rankings(log_dir), contexts, policies))
        for r in found:
            for e in (r.estimates.ips, r.estimates.snips, r.estimates.dr):
                rows.append({"run": run_index, "target": r.estimates.target, "logged_by": r.estimates.logged_by,
                             "estimator": e.estimator, "value": e.value, "ci": [e.ci_low, e.ci_high],
                             "effective_pages": e.effective_pages, "pages": e.pages, "truth": r.truth,
                             "covered": bool(e.ci_low <= r.truth <= e.ci_high)})
        per_run.append({"run": run_index, "requests": run.requests, "events": run.events})
    summary = {}
    for estimator in ("IPS", "SNIPS", "DR"):
        for kind in ("on-policy", "off-policy"):
            chosen = [r for r in rows if r["estimator"] == estimator
                      and (r["logged_by"].endswith("/" + r["target"])) == (kind == "on-policy")]
            summary[f"{estimator} {kind}"] = {
                "intervals": len(chosen), "coverage": float(np.mean([r["covered"] for r in chosen])),
                "mean_error": float(np.mean([r["value"] - r["truth"] for r in chosen])),
                "mean_ci_width": float(np.mean([r["ci"][1] - r["ci"][0] for r in chosen])),
                "median_effective_pages": float(np.median([r["effective_pages"] for r in chosen])),
                "median_pages": float(np.median([r["pages"] for r in chosen]))}
    users = sorted(futures)[:200]
    latency = first_page_latency(config, pipeline, users, bench)
    print(f"{'estimator':<20} | intervals | coverage | mean error | mean CI width | median ESS / pages")
    for name, s in summary.items():
        print(f"{name:<20} | {s['intervals']} | {100 * s['coverage']:.1f}% | {s['mean_error']:+.4f} | "
              f"{s['mean_ci_width']:.4f} | {s['median_effective_pages']:.0f} / {s['median_pages']:.0f}")
    print(f"first page on an exploring arm: p50 {latency['logged']['p50_ms']:.1f} ms with the ranking logged, "
          f"{latency['not logged']['p50_ms']:.1f} ms without (x{latency['p50_ratio']:.2f})")
    OUT.write_text(json.dumps({"runs": args.runs, "users": args.users, "seconds": round(time.time() - started, 1),
                               "summary": summary, "latency": latency, "per_run": per_run, "rows": rows},
                              indent=2) + "\n")
    print(f"wrote {OUT} in {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
