"""The `feed` command line: data preparation, training, indexing, serving, and the demo.

    feed data prepare   --config configs/demo.toml
    feed train retrieval --config configs/demo.toml
    feed train ranker   --config configs/demo.toml [--from-logs artifacts/ml-latest-small/event_log [DIR ...]]
    feed train critic   --config configs/demo.toml [--from-logs DIR ...]   (generated posts' reward model)
    feed index build    --config configs/demo.toml
    feed serve          --config configs/demo.toml [--port 50051] [--processes 2]
    feed serve-generation --config configs/demo.toml [--address unix:///tmp/gen.sock | 0.0.0.0:50061]
    feed demo           [--config configs/demo.toml]
    feed eval compare   A.toml B.toml --dataset configs/demo.toml [--out reports/compare]
    feed ab analyze     --experiment configs/experiments/ab-demo.toml [--log DIR] [--start-ms MS] [--out reports/ab]
    feed ab simulate    --config configs/demo.toml --experiment configs/experiments/ab-demo.toml [--out examples/ab-report]

Each command imports only the parts it runs. `python -m feedcli ...` is the same command (`feedcli/__main__.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from feedcore.config import EngineConfig, load_config
from feedcore.errors import ArtifactError, DataError

logger = logging.getLogger("feed")
DEFAULT_CONFIG = "configs/demo.toml"
READY = "FEED_SERVER_READY"


class _QuietLibraries(logging.Filter):
    """TorchRec's planner warns about single-process topologies and fbgemm logs every kernel it
    loads, on every run and partly through the root logger; keep only their errors."""

    NOISY = ("/torchrec/", "/fbgemm_gpu/", "/torch/distributed/", "/torch/fx/")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not any(n in record.pathname for n in self.NOISY)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietLibraries())
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)  # has its own handler
    warnings.filterwarnings("ignore", module="torchrec")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)  # TorchRec's ShardedTensor → DTensor move


def cmd_prepare(config: EngineConfig, args: argparse.Namespace) -> None:
    from feedcore.prepare import prepare_data

    dataset, split = prepare_data(config)
    print(json.dumps({"dataset": dataset.name, **dataset.counts(), "train": split.train.height,
                      "valid": split.valid.height, "test": split.test.height}))


def cmd_train_retrieval(config: EngineConfig, args: argparse.Namespace) -> None:
    from retrieval.train import train_retrieval_job

    ckpt, metrics = train_retrieval_job(config)
    print(json.dumps({"version": ckpt.version, "valid": metrics}))


def cmd_train_ranker(config: EngineConfig, args: argparse.Namespace) -> None:
    from ranker.train import train_ranker_job

    ckpt, metrics = train_ranker_job(config, from_logs=getattr(args, "from_logs", None))
    if ckpt is not None:  # under torchrun, rank 0 reports
        print(json.dumps({"version": ckpt.version, "valid": metrics}))


def cmd_train_critic(config: EngineConfig, args: argparse.Namespace) -> None:
    from generation.engagement import train_critic_job

    model = train_critic_job(config, args.from_logs or ())
    print(json.dumps({"critic": str(config.critic_path) if model else None,
                      "impressions": model.impressions if model else 0, "engaged": model.engaged if model else 0,
                      "note": "fit" if model else "too few logged post impressions: the value proxy stays"}))


def cmd_index_build(config: EngineConfig, args: argparse.Namespace) -> None:
    from retrieval.build_index import build_index_job

    index = build_index_job(config)
    print(json.dumps({"items": len(index), "factory": index.factory, "model_version": index.model_version}))


def cmd_serve(config: EngineConfig, args: argparse.Namespace) -> None:
    from serving.process import GenerationProcess, process_event_log, serve_processes, stop_with_launcher

    serving = config.serving
    if args.port is not None:
        serving = dataclasses.replace(serving, port=args.port)
    if args.processes > 1:  # a launcher: the processes load the models
        raise SystemExit(serve_processes(config, args.config, args.processes, serving.port, READY, args.verbose))
    from serving.event_log import EventLog
    from serving.pipeline import FeedPipeline
    from serving.server import serve

    event_log_dir = config.event_log_dir
    if args.process_index is not None:  # one of `--processes N`: its own event log and metrics port
        stop_with_launcher()
        event_log_dir = str(process_event_log(event_log_dir, args.process_index))
        if serving.metrics_port > 0:
            serving = dataclasses.replace(serving, metrics_port=serving.metrics_port + args.process_index)
    pipeline = FeedPipeline.from_artifacts(config)
    event_log = EventLog(event_log_dir, segment_bytes=int(serving.event_log_segment_mb * (1 << 20)))
    with tempfile.TemporaryDirectory(prefix="feed-generation-") as scratch:
        generation, service = None, args.generation_service or config.generation.service
        if config.generation.enabled and not service:  # a generation service of its own
            generation = GenerationProcess(args.config, Path(scratch), args.verbose)
            service = generation.start()
            generation.keep_running()
        try:
            serve(dataclasses.replace(config, serving=serving), pipeline, event_log,
                  on_ready=lambda port: print(f"{READY} {serving.host}:{port}", flush=True), generation_service=service)
        finally:
            if generation is not None:
                generation.stop()


def cmd_serve_generation(config: EngineConfig, args: argparse.Namespace) -> None:
    from serving.generation_service import serve_generation
    from serving.process import LAUNCHER_PID, stop_with_launcher

    if LAUNCHER_PID in os.environ:  # started by a `feed serve`: stops with it
        stop_with_launcher()
    address = args.address or config.generation.service or "127.0.0.1:0"
    serve_generation(config, address, on_ready=lambda bound: print(f"GENERATION_SERVER_READY {bound}", flush=True))


def cmd_demo(config: EngineConfig, args: argparse.Namespace) -> None:
    """Prepare, train both models, index, serve, stream a generated post, request two users'
    feeds (the first with its post among the items), log what was shown, stop the server."""
    start = time.time()
    for step in (cmd_prepare, cmd_train_retrieval, cmd_train_ranker, cmd_index_build):
        step(config, args)
    from serving.client import log_interactions, print_feed, stream_post, wait_ready

    server = subprocess.Popen(
        [sys.executable, "-m", "feedcli", "serve", "--config", args.config, "--port", "0"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        address = None
        for line in server.stdout:
            if line.startswith(READY):
                address = line.split()[1]
                break
        if address is None:
            raise SystemExit(f"the feed server exited before serving (code {server.wait()})")
        users = _demo_users(config)
        import grpc

        with grpc.insecure_channel(address) as channel:
            wait_ready(channel)
            if config.generation.enabled:  # a post written now; it joins the user's next feed
                stream_post(channel, users[0])
            for user in users:
                pages = print_feed(channel, user, page_size=10, pages=2 if user == users[0] else 1)
                if config.serving.api_keys:  # what the app reports back: impressions and a click
                    log_interactions(channel, user, pages[0], config.serving.api_keys[0])
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            code = server.wait()
    print(f"\nserver stopped cleanly (exit code {code}); events logged under {config.event_log_dir}; "
          f"demo took {time.time() - start:.0f}s")
    if code != 0:
        raise SystemExit(code)


def _demo_users(config: EngineConfig) -> list[str]:
    """The most active user, and one with a short history."""
    import polars as pl

    counts = pl.read_parquet(config.prepared_dir / "events.parquet").group_by("user_id").len().sort(
        "len", "user_id", descending=[True, False])
    return [counts["user_id"][0], counts["user_id"][counts.height // 2]]


def cmd_eval_compare(config: EngineConfig, args: argparse.Namespace) -> None:
    """Two trained engines (configs A and B) on the held-out data of `--dataset`."""
    from evaluation.compare import CompareConfig, compare_engines, compare_figures, compare_markdown
    from evaluation.report import write_report

    result = compare_engines(load_config(args.a), load_config(args.b), config,
                             CompareConfig(split=args.split, resamples=args.resamples, primary=args.primary),
                             names=(args.a, args.b))
    path = write_report(args.out, compare_markdown(result), compare_figures(result))
    print(json.dumps({"report": str(path), "deltas": {f"{d.metric}[{d.group}]": [d.a, d.b, d.ci_low, d.ci_high]
                                                      for d in result.deltas}}))


def _arm_shares(experiment) -> tuple[tuple[str, float], ...]:
    return tuple((a.name, a.share) for a in experiment.arms)


def cmd_ab_analyze(config: EngineConfig, args: argparse.Namespace) -> None:
    """The A/B report of an experiment from the service's event log."""
    from evaluation.ab import PRIMARY, ABConfig, ab_figures, ab_markdown, analyze
    from evaluation.report import write_report
    from feedcore.events import read_event_log
    from serving.experiments import load_experiment

    experiment = load_experiment(args.experiment)
    log_dir = args.log or config.event_log_dir
    try:
        analysis = analyze(read_event_log(log_dir), ABConfig(experiment.name, _arm_shares(experiment),
                                                             control=args.control, start_ms=args.start_ms,
                                                             end_ms=args.end_ms,
                                                             primary=args.primary or experiment.primary_metric or PRIMARY))
    except ValueError as e:
        raise DataError(log_dir, str(e)) from e
    path = write_report(args.out, ab_markdown(analysis, simulated=args.simulated), ab_figures(analysis))
    print(json.dumps({"report": str(path), "srm_flagged": analysis.srm.flagged,
                      "guardrails_breached": [f"{g.guardrail.metric}/{g.arm}" for g in analysis.guardrails
                                              if g.breached]}))


@contextlib.contextmanager
def _local_server(config: EngineConfig):
    """A real feed server with its event log on a free loopback port, stopped (and its log flushed
    into Parquet) on exit; yields its address."""
    from serving.event_log import EventLog
    from serving.pipeline import FeedPipeline
    from serving.server import create_server

    event_log = EventLog(config.event_log_dir)
    running = create_server(config.serving, FeedPipeline.from_artifacts(config), event_log)
    running.server.start()
    try:
        yield f"{config.serving.host}:{running.port}"
    finally:
        running.server.stop(5).wait()
        event_log.close()
        running.metrics.stop_http()


def cmd_ab_simulate(config: EngineConfig, args: argparse.Namespace) -> None:
    """An end-to-end simulated A/B run: train on each user's past, serve, simulate, analyse."""
    from evaluation.ope_log import arm_policies
    from evaluation.simulator import (
        SimulatedOPE,
        SimulationConfig,
        post_tastes,
        prepare_simulation,
        run_simulation,
        simulation_report,
        train_engine,
    )
    from feedcore.datasets import load_dataset
    from feedcore.events import read_event_log, read_rankings
    from serving.experiments import load_experiment

    experiment = load_experiment(args.experiment)
    sim = SimulationConfig(users=args.users, sessions=args.sessions, max_requests=args.max_requests,
                           max_seconds=args.max_seconds, seed=args.seed)
    engine, futures = prepare_simulation(config, sim, args.workdir, args.experiment)
    train_engine(engine)
    contexts: dict[str, frozenset[str]] = {}  # the simulator's truth of each first page, for OPE
    tastes = post_tastes(futures, load_dataset(engine.data.dataset, engine.data.raw_root).items,
                         sim.favourite_categories)  # generated posts answered by what they say
    with _local_server(engine) as address:
        run = run_simulation(address, futures, sim, experiment.name, experiment.arms[0].name,
                             engine.serving.api_keys[0], contexts, tastes)
    ope = SimulatedOPE(read_rankings(engine.event_log_dir), contexts,
                       arm_policies(experiment, engine.serving.weights_for("home")))
    path = simulation_report(read_event_log(engine.event_log_dir), experiment.name, _arm_shares(experiment), run,
                             sim, args.out, engine_note=f"Engine: `{args.config}` trained on each user's past "
                             f"(`feed ab simulate`), experiment `{args.experiment}`.",
                             primary=experiment.primary_metric, ope=ope)
    print(json.dumps({"report": str(path), "simulated": True, **dataclasses.asdict(run)}))


COMMANDS = {
    ("eval", "compare"): cmd_eval_compare,
    ("ab", "analyze"): cmd_ab_analyze,
    ("ab", "simulate"): cmd_ab_simulate,
    ("data", "prepare"): cmd_prepare,
    ("train", "retrieval"): cmd_train_retrieval,
    ("train", "ranker"): cmd_train_ranker,
    ("train", "critic"): cmd_train_critic,
    ("index", "build"): cmd_index_build,
    ("serve",): cmd_serve,
    ("serve-generation",): cmd_serve_generation,
    ("demo",): cmd_demo,
}


def _at_least_one(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a whole number >= 1")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feed", description="Recommendation and generative feed engine")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(p: argparse.ArgumentParser, key: tuple[str, ...]) -> None:
        p.add_argument("--config", default=DEFAULT_CONFIG, help=f"TOML config (default {DEFAULT_CONFIG})")
        p.set_defaults(key=key)

    for group, actions in (("data", ["prepare"]), ("train", ["retrieval", "ranker", "critic"]), ("index", ["build"])):
        g = sub.add_parser(group).add_subparsers(dest="action", required=True)
        for action in actions:
            action_parser = g.add_parser(action)
            add(action_parser, (group, action))
            if (group, action) == ("train", "ranker"):
                action_parser.add_argument("--from-logs", default=None, metavar="DIR", nargs="+",
                                           help="also train on the served traffic in these event log directories "
                                                "(a server's event_log_dir; with --processes, all its processes')")
            if (group, action) == ("train", "critic"):
                action_parser.add_argument("--from-logs", default=None, metavar="DIR", nargs="+",
                                           help="the event log directories of the served posts (default: the "
                                                "config's event_log_dir)")
    serve_parser = sub.add_parser("serve", help="run the gRPC feed service")
    add(serve_parser, ("serve",))
    serve_parser.add_argument("--port", type=int, default=None, help="override serving.port (0 = free port)")
    serve_parser.add_argument("--processes", type=_at_least_one, default=1,
                              help="server processes sharing the port (one per core; serving.process)")
    serve_parser.add_argument("--process-index", type=int, default=None, help=argparse.SUPPRESS)  # one of them
    serve_parser.add_argument("--generation-service", default="", help=argparse.SUPPRESS)  # the launcher's
    generation_parser = sub.add_parser("serve-generation", help="run the gRPC generation service")
    add(generation_parser, ("serve-generation",))
    generation_parser.add_argument("--address", default="",
                                   help="unix:///path/to.sock or host:port (default: [generation] service, "
                                        "else 127.0.0.1 on a free port)")
    add(sub.add_parser("demo", help="the whole path on the bundled dataset"), ("demo",))

    compare = sub.add_parser("eval", help="offline evaluation").add_subparsers(dest="action", required=True) \
        .add_parser("compare", help="two trained engines on the same held-out data, paired bootstrap")
    compare.add_argument("a", help="config of engine A (its artifacts trained)")
    compare.add_argument("b", help="config of engine B")
    compare.add_argument("--dataset", dest="config", default=DEFAULT_CONFIG,
                         help=f"config whose prepared data and split hold the held-out data (default {DEFAULT_CONFIG})")
    compare.add_argument("--split", choices=["valid", "test"], default="test")
    compare.add_argument("--resamples", type=int, default=500, help="bootstrap resamples (users)")
    compare.add_argument("--primary", default="", metavar="METRIC",
                         help="the metric the comparison is decided on, over all users (e.g. engage/auc; default "
                              "ndcg@10): read at alpha; every other delta is tested only when it is significant")
    compare.add_argument("--out", default="reports/compare", help="report directory (replaced)")
    compare.set_defaults(key=("eval", "compare"))

    ab = sub.add_parser("ab", help="online A/B experiments").add_subparsers(dest="action", required=True)
    analyze = ab.add_parser("analyze", help="A/B report from the service's event log")
    add(analyze, ("ab", "analyze"))
    analyze.add_argument("--experiment", required=True, help="the experiment file the service ran")
    analyze.add_argument("--log", default=None, help="event log directory (default: the config's)")
    analyze.add_argument("--start-ms", type=int, default=None,
                         help="experiment start (ms); earlier events are the pre-period for CUPED")
    analyze.add_argument("--end-ms", type=int, default=None)
    analyze.add_argument("--control", default="", help="control arm (default: the first)")
    analyze.add_argument("--primary", default="", metavar="METRIC",
                         help="the metric the experiment is decided on (default: the experiment's primary_metric, "
                              "else engagements_per_user): read at alpha; the other metrics are tested only when it "
                              "is significant")
    analyze.add_argument("--simulated", action="store_true", help="label the report as simulated traffic")
    analyze.add_argument("--out", default="reports/ab", help="report directory (replaced)")
    simulate = ab.add_parser("simulate", help="end-to-end A/B run with simulated users on a real server")
    add(simulate, ("ab", "simulate"))
    simulate.add_argument("--experiment", required=True, help="experiment file (arms) to serve")
    simulate.add_argument("--workdir", default="artifacts/ab-simulation", help="data, models and log of the run")
    simulate.add_argument("--out", default="reports/ab-simulation", help="report directory (replaced)")
    simulate.add_argument("--users", type=int, default=0, help="simulated users (0: all with a future)")
    simulate.add_argument("--sessions", type=int, default=2, help="sessions per user in the experiment")
    simulate.add_argument("--max-requests", type=int, default=20_000)
    simulate.add_argument("--max-seconds", type=float, default=900.0)
    simulate.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        config = load_config(args.config)
        COMMANDS[args.key](config, args)
    except (DataError, ArtifactError) as e:
        print(f"feed: error: {e}", file=sys.stderr)
        raise SystemExit(2) from e

