"""The `feed` command line: data preparation, training, indexing, serving, and the demo.

    feed data prepare   --config configs/demo.toml
    feed train retrieval --config configs/demo.toml
    feed train ranker   --config configs/demo.toml [--from-logs artifacts/ml-latest-small/event_log]
    feed index build    --config configs/demo.toml
    feed serve          --config configs/demo.toml [--port 50051]
    feed demo           [--config configs/demo.toml]

Each command imports only the parts it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import subprocess
import sys
import time
import warnings

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


def cmd_index_build(config: EngineConfig, args: argparse.Namespace) -> None:
    from retrieval.build_index import build_index_job

    index = build_index_job(config)
    print(json.dumps({"items": len(index), "factory": index.factory, "model_version": index.model_version}))


def cmd_serve(config: EngineConfig, args: argparse.Namespace) -> None:
    from serving.event_log import EventLog
    from serving.pipeline import FeedPipeline
    from serving.server import serve

    serving = config.serving
    if args.port is not None:
        serving = dataclasses.replace(serving, port=args.port)
    pipeline = FeedPipeline.from_artifacts(config)
    event_log = EventLog(config.event_log_dir, segment_bytes=int(serving.event_log_segment_mb * (1 << 20)))
    serve(dataclasses.replace(config, serving=serving), pipeline, event_log,
          on_ready=lambda port: print(f"{READY} {serving.host}:{port}", flush=True))


def cmd_demo(config: EngineConfig, args: argparse.Namespace) -> None:
    """Prepare, train both models, index, serve, request two users' feeds, stop the server."""
    start = time.time()
    for step in (cmd_prepare, cmd_train_retrieval, cmd_train_ranker, cmd_index_build):
        step(config, args)
    from serving.client import log_interactions, print_feed, wait_ready

    server = subprocess.Popen(
        [sys.executable, "-m", "feedcore.cli", "serve", "--config", args.config, "--port", "0"],
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


COMMANDS = {
    ("data", "prepare"): cmd_prepare,
    ("train", "retrieval"): cmd_train_retrieval,
    ("train", "ranker"): cmd_train_ranker,
    ("index", "build"): cmd_index_build,
    ("serve",): cmd_serve,
    ("demo",): cmd_demo,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feed", description="Recommendation and generative feed engine")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(p: argparse.ArgumentParser, key: tuple[str, ...]) -> None:
        p.add_argument("--config", default=DEFAULT_CONFIG, help=f"TOML config (default {DEFAULT_CONFIG})")
        p.set_defaults(key=key)

    for group, actions in (("data", ["prepare"]), ("train", ["retrieval", "ranker"]), ("index", ["build"])):
        g = sub.add_parser(group).add_subparsers(dest="action", required=True)
        for action in actions:
            action_parser = g.add_parser(action)
            add(action_parser, (group, action))
            if (group, action) == ("train", "ranker"):
                action_parser.add_argument("--from-logs", default=None, metavar="DIR",
                                           help="also train on the served traffic in this event log directory")
    serve_parser = sub.add_parser("serve", help="run the gRPC feed service")
    add(serve_parser, ("serve",))
    serve_parser.add_argument("--port", type=int, default=None, help="override serving.port (0 = free port)")
    add(sub.add_parser("demo", help="the whole path on the bundled dataset"), ("demo",))
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


if __name__ == "__main__":
    main()
