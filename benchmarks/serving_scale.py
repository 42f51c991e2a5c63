"""The feed service at catalogue scale: 1M items, 500 candidates ranked per request, over gRPC.

    .venv/bin/python benchmarks/serving_scale.py [--config configs/demo.toml] [--items 1000000]
        [--variants naive,ivf,ivf-2proc] [--seconds 15] [--rate 100] [--sweep 50,70,85]
    .venv/bin/python benchmarks/serving_scale.py --soak-seconds 300 [--soak-variant ivf-2proc]

Catalogue: a synthetic scale-up of the demo's real item embeddings (`index_scale.scale_up`, per
content type so each synthetic item keeps a real item's type): the 9,742 trained item vectors
plus real vectors with Gaussian jitter of half the median nearest-neighbour distance, ids
``synthetic:<n>``, up to `--items`. The indexes are built once and cached in /tmp.

Pipeline: the real `FeedPipeline` (candidate sources → hydration → the demo's trained TorchRec
ranker → value model → blend) with its index replaced by the 1M-item `ItemIndex` and its quotas
set to 450 ann + 50 popular = 500 candidates per request, served by the real `serving.server.serve`
(the gRPC server with health, metrics and graceful shutdown) in its own process, and driven over
loopback by `serving_load`'s asyncio client (16 channels, so SO_REUSEPORT servers each get some).
Candidates outside the ranker's vocabulary (the synthetic ones) hydrate as FeedPipeline hydrates any
unknown id: the unknown id row with the unknown row's content; the work per request (500 rows
through the same model) is what a real 1M catalogue costs, the scores of synthetic items mean
nothing.

Variants, in the same run on the same vectors, users and client:
- ``naive``: exact search (`Flat`, inner product over all 1M vectors per request), one process;
- ``ivf``: `IVF4096,Flat` with `nprobe=64` (recall@100 0.97 in benchmarks/results/index_scale.json),
  one process;
- ``ivf-2proc``: the same, two server processes, each on its own port, the client balancing
  requests over them round-robin (gRPC's client-side load balancing over a target naming both:
  per request, where one port shared by SO_REUSEPORT balances per connection, measured 58/42).
Each: closed loop with 1 and 4 in flight (8 too with two processes; maximum throughput), open loop
at `--rate` req/s (Poisson, latency from the scheduled start), and for two processes open loops at
the `--sweep` rates too (the highest rate meeting a p99 target). Also in-process: the ranker on 500 candidates in one
batch against 500 single-row calls (what "no batching" costs), and the IVF's recall of the exact
top-450 for the real users. faiss runs single-threaded (OpenMP threads spin against each other on 2
shared cores; the server's concurrency comes from its gRPC workers). Writes benchmarks/results/serving_scale.json; `--soak-seconds` runs
only the soak (open loop at `--rate` in 30 s windows) into serving_scale_soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import torch
from index_scale import scale_up
from serving_load import StageStats, closed_loop, open_loop, stage_sums, start_server, summarize

from feedcore.artifacts import load_checkpoint
from feedcore.config import EngineConfig, load_config
from feedcore.features import pad_histories
from feedcore.io import atomic_path
from feedcore.schemas import CanonicalDataset
from retrieval.candidates import UserState, make_candidate_generator
from retrieval.embed import embed_items, embed_users
from retrieval.index import ItemIndex
from retrieval.model import TwoTower
from serving.pipeline import FeedPipeline
from serving.server import serve

RESULTS = Path(__file__).parent / "results"
EXACT, IVF, IVF_PARAMS = "Flat", "IVF4096,Flat", "nprobe=64"
VARIANTS = {"naive": ("exact", 1), "ivf": ("ivf", 1), "ivf-2proc": ("ivf", 2)}  # index, server processes
CHANNELS = 16
ANN, POPULAR = 450, 50
SYNTHETIC = "synthetic:"


def cache_dir(config: EngineConfig, items: int) -> Path:
    version = load_checkpoint(config.retrieval_path, "retrieval").version
    return Path(tempfile.gettempdir()) / f"feed-serving-scale-{version}-{items}"


def build_indexes(config: EngineConfig, items: int, directory: Path) -> dict:
    """The exact and the IVF index over the scaled catalogue, in `directory` (reused when there)."""
    if (directory / "ivf" / "meta.json").is_file() and (directory / "exact" / "meta.json").is_file():
        return json.loads((directory / "build.json").read_text())
    rng = np.random.default_rng(0)
    ckpt = load_checkpoint(config.retrieval_path, "retrieval")
    model, spec = TwoTower.from_checkpoint(ckpt), ckpt.feature_spec
    rows = np.arange(1, len(spec.items))
    real = embed_items(model, rows)
    types = np.array([spec.content_types.decode(int(t)) for t in model.content_type[rows].tolist()], dtype=object)
    vectors, ids, kinds = [real], list(spec.items.values), types.tolist()
    for content_type in sorted(set(kinds)):  # each type scaled up by its share of the real catalogue
        base = real[types == content_type]
        n = round((items - len(real)) * len(base) / len(real))
        vectors.append(scale_up(base, n, 0.5, rng))
        ids += [f"{SYNTHETIC}{len(ids) + i}" for i in range(n)]
        kinds += [content_type] * n
    xb = np.concatenate(vectors)
    built = {"items": len(xb), "real_items": len(real)}
    for name, factory, params in (("exact", EXACT, ""), ("ivf", IVF, IVF_PARAMS)):
        start = time.perf_counter()
        index = ItemIndex.build(xb, ids, kinds, factory, search_params=params, model_version=ckpt.version)
        built[f"{name}_build_seconds"] = time.perf_counter() - start
        index.save(directory / name)
        del index
    (directory / "build.json").write_text(json.dumps(built))
    return built


def scaled_pipeline(config: EngineConfig, index_dir: Path) -> FeedPipeline:
    """The real pipeline of `config`'s artifacts (with every check `from_artifacts` makes), with
    its candidate generator rebuilt over the scaled index and its catalogue extended by the
    synthetic items. A shallow copy with two attributes replaced, rather than a second
    construction, so it keeps whatever else `from_artifacts` sets up."""
    base = FeedPipeline.from_artifacts(config)
    data = CanonicalDataset.read(config.prepared_dir)
    retrieval_ckpt = load_checkpoint(config.retrieval_path, "retrieval")
    index = ItemIndex.load(index_dir)
    history = tuple(load_checkpoint(config.ranker_path, "ranker").extras["history_events"])
    pipeline = copy.copy(base)
    pipeline.candidates = make_candidate_generator(
        dataclasses.replace(config.candidates, ann=ANN, popular=POPULAR), model=base.retrieval,
        index=index, spec=retrieval_ckpt.feature_spec, data=data, history_events=history)
    pipeline.catalog = {**base.catalog, **{i: (t, i) for t, shard in index.shards.items() for i in shard.item_ids
                                          if i.startswith(SYNTHETIC)}}
    pipeline.model_version = f"{base.model_version}+{len(index)}"
    return pipeline


def run_server(config_path: str, index_dir: Path, port: int) -> None:
    """`--serve`: the scaled pipeline behind `serving.server.serve` (SIGTERM stops it)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)  # an import may have configured logging already
    config = load_config(config_path)
    # No reloads (they would swap the unscaled index back in); no background post generation
    # (an LLM on the same 2 cores is another workload; benchmarks/generation_feed_latency.py's).
    config = dataclasses.replace(
        config, serving=dataclasses.replace(config.serving, port=port, metrics_port=0, reload_interval_s=0),
        generation=dataclasses.replace(config.generation, enabled=False))
    pipeline = scaled_pipeline(config, index_dir)
    serve(config, pipeline, None, on_ready=lambda p: print(f"FEED_SERVER_READY {config.serving.host}:{p}", flush=True))


def start_variant(config_path: str, index_dir: Path, processes: int) -> tuple[list[subprocess.Popen], str, list[int]]:
    """`processes` servers, each on a free port of its own; the address is a gRPC target naming
    them all (``ipv4:host:p1,host:p2``), which `serving_load.open_channels` balances round-robin."""
    servers, addresses, metrics_ports = [], [], []
    try:
        for _ in range(processes):  # one after the other: each loads the 1M index on the shared cores
            command = [sys.executable, str(Path(__file__).resolve()), "--config", config_path, "--serve",
                       str(index_dir), "--port", "0"]
            server, address, metrics_port = start_server(config_path, command=command)
            servers.append(server)
            addresses.append(address)
            metrics_ports.append(metrics_port)
    except BaseException:
        stop_all(servers)
        raise
    return servers, addresses[0] if processes == 1 else "ipv4:" + ",".join(addresses), metrics_ports


def stop_all(servers: list[subprocess.Popen]) -> None:
    for server in servers:
        server.terminate()
    for server in servers:
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def merge_stages(per_process: list[dict[str, StageStats]]) -> dict[str, StageStats]:
    """Each stage's histogram over every server process."""
    total: dict[str, StageStats] = {}
    for stages in per_process:
        for stage, stats in stages.items():
            total[stage] = total[stage] + stats if stage in total else stats
    return total


def all_stage_sums(metrics_ports: list[int]) -> dict[str, StageStats]:
    return merge_stages([stage_sums(port) for port in metrics_ports])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_variant(name: str, config_path: str, index_dir: Path, processes: int, users: list[str],
                    seconds: float, rates: list[float]) -> list[dict]:
    servers, address, metrics_ports = start_variant(config_path, index_dir, processes)
    rng = np.random.default_rng(0)
    rows = []
    try:
        asyncio.run(closed_loop(address, users, 20, 2 * processes, 3, rng, CHANNELS))  # warm-up
        runs = [("closed", 1, closed_loop), ("closed", 4, closed_loop)]
        if processes > 1:
            runs.append(("closed", 8, closed_loop))
        runs += [("open", rate, open_loop) for rate in rates]
        for kind, level, loop in runs:
            before = [stage_sums(port) for port in metrics_ports]
            result = asyncio.run(loop(address, users, 20, level, seconds, rng, CHANNELS))
            after = [stage_sums(port) for port in metrics_ports]
            row = summarize(kind, level, *result, merge_stages(before), merge_stages(after))
            row.update(variant=name, processes=processes, server_rss_mib=[rss_mib(s.pid) for s in servers],
                       requests_per_process=[a["total"].count - (b["total"].count if "total" in b else 0)
                                             for a, b in zip(after, before, strict=True)])
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("variant", "loop", "level", "qps", "errors", "requests_per_process")}
                             | {k: round(row.get(k, float("nan")), 1) for k in ("p50_ms", "p99_ms")}), flush=True)
    finally:
        stop_all(servers)
    return rows


@torch.no_grad()
def batching_and_recall(config: EngineConfig, directory: Path, users: int = 5) -> dict:
    """In-process: the ranker on 500 candidates as one batch vs 500 single-row calls (hydration
    included in both), and the IVF's recall of the exact top-450 for every real user."""
    torch.set_num_threads(1)
    pipeline = FeedPipeline.from_artifacts(dataclasses.replace(
        config, generation=dataclasses.replace(config.generation, enabled=False)))
    rng = np.random.default_rng(0)
    vocabulary = len(pipeline.spec.items)

    def ranked(u: str, item: np.ndarray, rows_per_call: int) -> float:
        """Seconds to hydrate and rank `item` for `u` in calls of `rows_per_call` rows (the request's
        user embedding, which gives every row its retrieval score, computed once, as served)."""
        start = time.perf_counter()
        history = pipeline.histories[u]
        user = UserState(u, history, frozenset(), pipeline.user_embedding(u, history))
        for r in range(0, len(item), rows_per_call):
            rows = item[r : r + rows_per_call]
            batch = pipeline.hydrate(user, rows, ["ann"] * len(rows))
            pipeline.ranker(batch.dense, batch.sparse)
        return time.perf_counter() - start

    sample = list(pipeline.histories)[:users]
    for u in sample:  # warm-up
        ranked(u, rng.integers(1, vocabulary, ANN + POPULAR), ANN + POPULAR)
    batched, single = [], []
    for u in sample:
        item = rng.integers(1, vocabulary, ANN + POPULAR)
        batched.append(ranked(u, item, len(item)))
        single.append(ranked(u, item, 1))
    ckpt = load_checkpoint(config.retrieval_path, "retrieval")
    model, spec = TwoTower.from_checkpoint(ckpt), ckpt.feature_spec
    names = sorted(pipeline.histories)
    queries = embed_users(model, spec.users.encode(pl.Series(names)),
                          pad_histories([pipeline.histories[u] for u in names], spec.max_history))
    found = {}
    for name in ("exact", "ivf"):
        index = ItemIndex.load(directory / name)
        start = time.perf_counter()
        found[name] = [index.search(q[None], ANN)[1][0] for q in queries]  # one query per call, as served
        found[f"{name}_ms_per_query"] = 1000 * (time.perf_counter() - start) / len(queries)
        del index
    recall = float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found["ivf"], found["exact"], strict=True)]))
    return {"ranker_500_batched_ms": 1000 * float(np.median(batched)),
            "ranker_500_single_row_calls_ms": 1000 * float(np.median(single)),
            "single_rows_over_batched": float(np.median(single) / np.median(batched)),
            "ivf_recall_of_exact_top450": recall, "search_queries": len(queries),
            "exact_search_ms_per_query": found["exact_ms_per_query"], "ivf_search_ms_per_query": found["ivf_ms_per_query"]}


def soak(config_path: str, index_dir: Path, variant: str, users: list[str], seconds: float, rate: float) -> dict:
    _, processes = VARIANTS[variant]
    servers, address, metrics_ports = start_variant(config_path, index_dir, processes)
    rng = np.random.default_rng(1)
    windows, latencies, errors = [], [], {}
    try:
        asyncio.run(closed_loop(address, users, 20, 2, 3, rng, CHANNELS))  # warm-up
        rss_start = [rss_mib(s.pid) for s in servers]
        started = time.perf_counter()
        while time.perf_counter() - started < seconds - 1:
            before = all_stage_sums(metrics_ports)
            result = asyncio.run(open_loop(address, users, 20, rate, min(30.0, seconds - (time.perf_counter() - started)),
                                           rng, CHANNELS))
            row = summarize("open", rate, *result, before, all_stage_sums(metrics_ports))
            row["server_rss_mib"] = [rss_mib(s.pid) for s in servers]
            windows.append(row)
            latencies += result[0]
            for code, n in result[1].items():
                errors[code] = errors.get(code, 0) + n
            print(json.dumps({k: row.get(k) for k in ("qps", "p50_ms", "p99_ms", "errors")}), flush=True)
        elapsed = time.perf_counter() - started
    finally:
        stop_all(servers)
    ms = np.asarray(latencies) * 1000
    return {"variant": variant, "rate": rate, "seconds": elapsed, "ok": len(ms), "errors": errors,
            "qps": len(ms) / elapsed, **{f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 95, 99)},
            "max_ms": float(ms.max()), "server_rss_mib_start": rss_start, "windows": windows}


def write(path: Path, report: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/demo.toml")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--sweep", type=lambda v: [float(x) for x in v.split(",")], default=[50.0, 70.0, 85.0],
                        help="further open-loop rates for the multi-process variant")
    parser.add_argument("--soak-seconds", type=float, default=0, help="> 0: only the soak, at --rate")
    parser.add_argument("--soak-variant", default="ivf-2proc")
    parser.add_argument("--serve", default=None, metavar="INDEX_DIR", help=argparse.SUPPRESS)  # a server process
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    if args.serve:
        run_server(args.config, Path(args.serve), args.port)
        return
    config = load_config(args.config)
    directory = cache_dir(config, args.items)
    built = build_indexes(config, args.items, directory)
    users = CanonicalDataset.read(config.prepared_dir).users["user_id"].to_list()
    common = {"config": args.config, "machine": platform.machine(), "cpus": os.cpu_count(), "built": built,
              "candidates": {"ann": ANN, "popular": POPULAR}, "page_size": 20, "client_channels": CHANNELS,
              "note": "2 vCPUs of a VM, the load generator on the same 2 cores: compare variants within this run"}
    if args.soak_seconds > 0:
        result = soak(args.config, directory / VARIANTS[args.soak_variant][0], args.soak_variant, users,
                      args.soak_seconds, args.rate)
        write(RESULTS / "serving_scale_soak.json", {"benchmark": "serving_scale_soak", **common, "soak": result})
        return
    in_process = batching_and_recall(config, directory)
    print(json.dumps(in_process), flush=True)
    rows = []
    for name in args.variants.split(","):
        index, processes = VARIANTS[name]
        rates = [args.rate] if processes == 1 else sorted({*args.sweep, args.rate})  # the best variant: a sweep
        rows += measure_variant(name, args.config, directory / index, processes, users, args.seconds, rates)
    print(f"\n{'variant':<10} {'loop':<6} {'load':>5} {'req/s':>7} {'p50':>7} {'p95':>7} {'p99':>7} {'errors':<8} "
          f"{'cand':>6} {'hydr':>6} {'rank':>6} {'blend':>6} {'total':>6}")
    for r in rows:
        s = r["stage_mean_ms"]
        print(f"{r['variant']:<10} {r['loop']:<6} {r['level']:>5g} {r['qps']:7.1f} {r.get('p50_ms', 0):7.1f} "
              f"{r.get('p95_ms', 0):7.1f} {r.get('p99_ms', 0):7.1f} {str(r['errors'] or 0):<8} "
              + " ".join(f"{s.get(k, 0):6.2f}" for k in ("candidates", "hydration", "ranker", "blend", "total")))
    write(RESULTS / "serving_scale.json", {"benchmark": "serving_scale", "protocol": __doc__.strip(), **common,
                                           "in_process": in_process, "results": rows})


if __name__ == "__main__":
    main()
