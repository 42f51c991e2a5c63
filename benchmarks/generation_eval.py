"""Generated posts on real users: grounding before and after the checks, how posts pass (model,
repaired, template), guardrail refusals, diversity, critic score, latency, and decoding speed
single-stream vs batched in the same run.

    .venv/bin/python benchmarks/generation_eval.py [--dataset ml-latest-small] [--users 200]

Each user's sources are a documented proxy for the ranker's top items (the service uses the
ranker's): their three most recent ratings of 4 or more, newest first; interests are the two
categories most frequent among their ratings of 4 or more. With `--ranker-config` the critic
scores candidates as the service does (the value model over the served ranker's predictions of
each post, `FeedPipeline.score_posts`, from that config's trained artifacts); without it, by the
fluency term alone.

Writes benchmarks/results/generation_eval.json (figures) and generation_samples.md (10 posts with
their sources) and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import torch
from tqdm import tqdm

from feedcore.config import GenerationConfig
from feedcore.datasets import DATASETS, load_dataset
from generation.critic import Critic
from generation.grounding import Catalog
from generation.guardrails import Guardrails
from generation.interface import PostRequest
from generation.llm import make_language_model
from generation.prompts import build_prompt, display_title
from generation.writer import PostWriter

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]


def user_requests(dataset, catalog: Catalog, n_users: int, seed: int, per_post: int) -> list[PostRequest]:
    """PostRequests for `n_users` users sampled (seeded) among those with enough liked items."""
    items = dataset.items.select("item_id", "categories")
    categories = dict(zip(items["item_id"].to_list(), items["categories"].to_list(), strict=True))
    liked = (dataset.events.filter(pl.col("value") >= 4.0)
             .filter(pl.col("item_id").is_in(list(catalog.titles)))
             .sort(["user_id", "ts", "seq"], descending=[False, True, True]))
    by_user = liked.group_by("user_id", maintain_order=True).agg(pl.col("item_id"))
    by_user = by_user.filter(pl.col("item_id").list.len() >= per_post)
    users = sorted(by_user["user_id"].to_list())
    random.Random(seed).shuffle(users)
    chosen = set(users[:n_users])
    requests = []
    for user_id, item_ids in zip(by_user["user_id"].to_list(), by_user["item_id"].to_list(), strict=True):
        if user_id not in chosen:
            continue
        top = list(dict.fromkeys(item_ids))[:per_post]
        counts = Counter(c for i in item_ids for c in (categories[i] or []) if c and not c.startswith("("))
        interests = tuple(c for c, _ in counts.most_common(2))
        sources = tuple(catalog.source(i, tuple(categories[i] or ())) for i in top)
        requests.append(PostRequest(user_id, sources, interests=interests))
    return requests


def distinct_2(texts: list[str]) -> float:
    """Distinct bigrams / all bigrams over the texts' lower-cased words."""
    grams = [tuple(w[i:i + 2]) for t in texts for w in [t.lower().split()] for i in range(len(w) - 1)]
    return len(set(grams)) / max(len(grams), 1)


def grounding_rate(checks) -> dict:
    """Share of everything named (catalog items and unknown title-like names) that is a source."""
    sources = sum(len(c.named_source_ids) for c in checks)
    foreign = sum(len(c.foreign_item_ids) for c in checks)
    unknown = sum(len(c.unknown_names) for c in checks)
    named = sources + foreign + unknown
    return {"rate": sources / named if named else 1.0, "named": named, "sources": sources,
            "foreign_items": foreign, "unknown_names": unknown,
            "texts_naming_nothing_foreign": sum(not c.foreign_names for c in checks) / max(len(checks), 1)}


def decode_speed(lm, prompts, tokens: int) -> dict:
    """Greedy tokens/s for the same prompts one at a time and as one batch."""
    def count(texts):
        return sum(len(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)

    lm.generate(prompts[:1], 4)  # warm-up
    start = time.perf_counter()
    single = [lm.generate([p], tokens)[0] for p in prompts]
    single_s = time.perf_counter() - start
    start = time.perf_counter()
    batched = lm.generate(prompts, tokens)
    batch_s = time.perf_counter() - start
    single_tps, batch_tps = count(single) / single_s, count(batched) / batch_s
    return {"prompts": len(prompts), "max_new_tokens": tokens, "single_stream_tok_s": single_tps,
            "batched_tok_s": batch_tps, "batched_over_single": batch_tps / single_tps,
            "same_text_greedy": single == batched}


def stream_latency(writer: PostWriter, requests: list[PostRequest]) -> dict:
    first, total = [], []
    for request in requests:
        start = time.perf_counter()
        got_first = None
        for piece in writer.stream(request):
            if got_first is None and isinstance(piece, str):
                got_first = time.perf_counter() - start
        first.append((got_first or 0.0) * 1000)
        total.append((time.perf_counter() - start) * 1000)
    return {"users": len(requests), "first_piece_ms_p50": float(np.median(first)),
            "post_ms_p50": float(np.median(total))}


def served_value(config_path: str, dataset: str):
    """The service's critic value: `FeedPipeline.score_posts` of the config's trained artifacts,
    each candidate text embedded by all-MiniLM-L6-v2 as the service embeds posts."""
    from feedcore.config import load_config
    from feedcore.text import embed_texts, load_text_encoder
    from serving.pipeline import FeedPipeline

    engine = load_config(config_path)
    if engine.data.dataset != dataset:
        raise SystemExit(f"--ranker-config {config_path} serves dataset {engine.data.dataset!r}, not --dataset {dataset!r}")
    pipeline = FeedPipeline.from_artifacts(dataclasses.replace(
        engine, generation=dataclasses.replace(engine.generation, enabled=False)))
    encoder = load_text_encoder()

    def value(user_id: str, texts: list[str], sources) -> np.ndarray:
        ids = tuple(s.item_id for s in sources)
        return pipeline.score_posts(user_id, [ids] * len(texts), embed_texts(texts, encoder))

    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-latest-small")
    parser.add_argument("--raw-root", default=None)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--tries", type=int, default=1, help="regenerations after a failed check")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--speed-tokens", type=int, default=32)
    parser.add_argument("--stream-users", type=int, default=4)
    parser.add_argument("--cache-dir", default=str(REPO / "artifacts" / "llm"))
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--ranker-config", default=None,
                        help="an engine config with trained artifacts (configs/demo.toml after `make demo`): "
                             "its ranker values the candidates, as in the service")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = GenerationConfig(threads=args.threads, max_new_tokens=args.max_new_tokens,
                              num_candidates=args.candidates, max_tries=args.tries, batch_size=args.batch_size,
                              seed=args.seed)

    root = Path(args.raw_root) if args.raw_root else REPO / DATASETS[args.dataset].default_root
    dataset = load_dataset(args.dataset, root)
    catalog = Catalog.from_items(dataset.items)
    requests = user_requests(dataset, catalog, args.users, args.seed, config.sources_per_post)
    start = time.perf_counter()
    lm = make_language_model(config, Path(args.cache_dir))
    load_s = time.perf_counter() - start
    guardrails = Guardrails(config.guardrails)
    value_fn = None if args.ranker_config is None else served_value(args.ranker_config, args.dataset)
    writer = PostWriter(lm, catalog, guardrails, config, Critic(lm, value_fn=value_fn))

    speed = decode_speed(lm, [build_prompt(r.sources, r.interests, "digest") for r in requests[:8]],
                         args.speed_tokens)
    print(f"decoding: {speed['single_stream_tok_s']:.1f} tok/s single, {speed['batched_tok_s']:.1f} tok/s "
          f"batch {speed['prompts']} ({speed['batched_over_single']:.2f}x)")

    trace, posts, per_post_ms = [], [], []
    for at in tqdm(range(0, len(requests), config.batch_size), desc="writing", unit="batch"):
        batch = requests[at:at + config.batch_size]
        t = time.perf_counter()
        posts.extend(writer.write(batch, trace))
        per_post_ms.extend([(time.perf_counter() - t) * 1000 / len(batch)] * len(batch))
    streamed = stream_latency(writer, requests[:args.stream_users])

    by_user = {r.user_id: r for r in requests}
    served_checks = [catalog.check(p.text, by_user[p.user_id].sources, by_user[p.user_id].interests,
                                   config.max_chars) for p in posts]
    methods = Counter(p.method for p in posts)
    model_posts = [p for p in posts if p.method != "template"]
    stats = writer.stats
    result = {
        "dataset": args.dataset, "users": len(requests), "posts": len(posts),
        "model_version": lm.model_version, "prompt_version": config.prompt_version,
        "config": {"max_new_tokens": config.max_new_tokens, "num_candidates": config.num_candidates,
                   "max_tries": config.max_tries, "temperature": config.temperature, "top_p": config.top_p,
                   "batch_size": config.batch_size, "threads": config.threads},
        "sources_proxy": "each user's 3 most recent ratings >= 4 (the service uses the ranker's top items)",
        "grounding_before_check": grounding_rate([c.check for c in trace]),
        "grounding_after_check": grounding_rate(served_checks),
        "served_pass_check": sum(c.ok for c in served_checks) / max(len(served_checks), 1),
        "candidates": len(trace),
        "candidates_passing_as_written": sum(c.check.ok for c in trace) / max(len(trace), 1),
        "candidate_refusals": {k.split(":", 1)[1]: v for k, v in sorted(stats.items()) if k.startswith("refused:")},
        "guardrail_refusals": dict(guardrails.rejections),
        "method_share": {m: methods[m] / max(len(posts), 1) for m in ("model", "repaired", "template")},
        "no_post": stats["no_post"],
        "distinct_2_all": distinct_2([p.text for p in posts]),
        "distinct_2_model_written": distinct_2([p.text for p in model_posts]),
        "critic_score_mean_model_written": float(np.mean([p.score for p in model_posts])) if model_posts else None,
        "critic_note": ("no value_fn: score = 0.1 * mean token log-prob" if value_fn is None else
                        f"the value model of {args.ranker_config}'s served ranker + 0.1 * mean token log-prob"),
        "latency_per_post_ms": {"p50": float(np.percentile(per_post_ms, 50)),
                                "p95": float(np.percentile(per_post_ms, 95)),
                                "note": f"batch wall time / users in the batch ({config.batch_size} users, "
                                        f"{config.num_candidates} candidates each, retries included)"},
        "stream": streamed,
        "decode_speed": speed,
        "model_load_s": load_s,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": args.threads, "load_average_1m_at_end": os.getloadavg()[0]},
    }
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if args.dataset == "ml-latest-small" else f"_{args.dataset}"
    (RESULTS / f"generation_eval{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")

    rng = random.Random(args.seed)
    ordered = sorted(posts, key=lambda p: p.method)
    samples = sorted(rng.sample(ordered, min(args.samples, len(ordered))), key=lambda p: (p.method, p.user_id))
    lines = [f"# Generated posts: {args.samples} samples ({args.dataset}, {lm.model_version})", "",
             "Sources are each user's most recent liked items (the benchmark's proxy for the ranker's top items).", ""]
    for p in samples:
        request = by_user[p.user_id]
        lines += [f"## user {p.user_id} — {p.kind}, method `{p.method}`", "",
                  "Sources: " + "; ".join(f"{display_title(s.title)} (`{s.item_id}`)" for s in request.sources), "",
                  f"> {p.text}", ""]
        raw = [c.text for c in trace if c.user_id == p.user_id]
        if p.method != "model" and raw:
            lines += [f"Raw model output (first candidate): `{raw[0]!r}`", ""]
    (RESULTS / f"generation_samples{suffix}.md").write_text("\n".join(lines))

    before, after = result["grounding_before_check"], result["grounding_after_check"]
    print(f"{'users':<34}{len(requests)}")
    print(f"{'grounding rate before / after':<34}{before['rate']:.3f} / {after['rate']:.3f}")
    print(f"{'candidates passing as written':<34}{result['candidates_passing_as_written']:.3f}")
    print(f"{'model / repaired / template':<34}" + " / ".join(f"{v:.3f}" for v in result["method_share"].values()))
    print(f"{'candidate refusals':<34}{result['candidate_refusals']}")
    print(f"{'guardrail refusals':<34}{result['guardrail_refusals']}")
    print(f"{'distinct-2 all / model-written':<34}{result['distinct_2_all']:.3f} / {result['distinct_2_model_written']:.3f}")
    print(f"{'latency per post p50 / p95 (ms)':<34}{result['latency_per_post_ms']['p50']:.0f} / "
          f"{result['latency_per_post_ms']['p95']:.0f}")


if __name__ == "__main__":
    main()
