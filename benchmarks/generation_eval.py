"""Generated posts on real users, the writer of issue 20 beside the writer before it, in one run:
how posts pass (model, repaired, template), whether every named item is a source, whether every
attribute claim is true (`generation.claims`), diversity, and CPU per post.

    nice -n 5 .venv/bin/python benchmarks/generation_eval.py [--datasets ml-latest-small,amazon-arts-office] [--users 200]

Both writers run with the service defaults (`GenerationConfig()`: 3 candidates, 2 retries, 60
tokens, batches of 8, temperature 0.7) on the same users:
- "before": prompt "v1", no decoding constraint, names checked only (`check_claims=False`);
- "after": the default prompt ("v2": the plan's facts, an opening naming the first source,
  titles only through the trie of the sources' titles), every attribute claim checked.

Each user's sources are a documented proxy for the ranker's top items (the service uses the
ranker's): their three most recent ratings of 4 or more, newest first; interests are the two
categories most frequent among their ratings of 4 or more. The critic is the fluency term alone
(with `--ranker-config`, the service's critic: the one learned from engagement when the config's
artifacts hold it, else the served ranker's value model).

CPU per post is the process's CPU time (all threads) over the posts written; wall per post is the
batch's wall time over its users. The machine is shared: compare the two writers within one run.

Writes benchmarks/results/generation_eval.json (figures), generation_samples_<dataset>.md (10
posts per dataset with their sources, facts and claims) and prints a table.
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
from generation.writer import PostWriter

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]


def user_requests(dataset, catalog: Catalog, n_users: int, seed: int, per_post: int) -> list[PostRequest]:
    """PostRequests for `n_users` users sampled (seeded) among those with enough liked items."""
    items = dataset.items.select("item_id", "categories")
    categories = dict(zip(items["item_id"].to_list(), items["categories"].to_list(), strict=True))
    # Ratings of 4 or more; a catalog without ratings (the Amazon release's reviews) likes every event.
    rated = dataset.events["value"].null_count() < dataset.events.height
    liked = (dataset.events.filter(pl.col("value") >= 4.0 if rated else pl.lit(True))
             .filter(pl.col("item_id").is_in(list(catalog.titles)))
             .sort(["user_id", "ts", "seq"], descending=[False, True, True], nulls_last=True))
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


def served_value(config_path: str, dataset: str):
    """The service's critic value (`ServedModels.critic_value`): the critic learned from engagement
    when the config's artifacts hold one (`feed train critic`), else `FeedPipeline.score_posts` of
    the trained artifacts, each candidate text embedded as the service embeds posts."""
    from feedcore.config import load_config
    from feedcore.text import load_text_encoder
    from serving.generated_posts import TextEmbeddings
    from serving.generation_service import ServedModels
    from serving.pipeline import FeedPipeline

    engine = load_config(config_path)
    if engine.data.dataset != dataset:
        raise SystemExit(f"--ranker-config {config_path} serves dataset {engine.data.dataset!r}, not --dataset {dataset!r}")
    pipeline = FeedPipeline.from_artifacts(dataclasses.replace(
        engine, generation=dataclasses.replace(engine.generation, enabled=False)))
    return ServedModels(pipeline, TextEmbeddings(load_text_encoder()), critic_path=engine.critic_path).critic_value


def claim_rate(writer: PostWriter, posts, by_user) -> dict:
    """Attribute claims in the served posts and the share the check finds true."""
    claims = [c for p in posts for c in writer.claims.check(p.text, by_user[p.user_id].sources, writer.catalog,
                                                             by_user[p.user_id].interests)]
    true = sum(c.true for c in claims)
    return {"claims": len(claims), "true": true, "rate": true / len(claims) if claims else 1.0,
            "per_post": len(claims) / max(len(posts), 1)}


def run_writer(writer: PostWriter, requests, batch_size: int, label: str) -> tuple[list, list, list]:
    """Every user's post, batch by batch; (posts, trace, per user: (CPU s, wall ms) of its batch / its size)."""
    trace, posts, costs = [], [], []
    for at in tqdm(range(0, len(requests), batch_size), desc=label, unit="batch"):
        batch = requests[at:at + batch_size]
        cpu, wall = time.process_time(), time.perf_counter()
        posts.extend(writer.write(batch, trace))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        costs.extend([(cpu / len(batch), wall * 1000 / len(batch))] * len(batch))
    return posts, trace, costs


def timing(costs) -> dict:
    cpu = np.array([c for c, _ in costs]) if costs else np.zeros(1)
    wall = np.array([w for _, w in costs]) if costs else np.zeros(1)
    return {"cpu_s_per_post": float(cpu.mean()), "wall_ms_per_post_p50": float(np.percentile(wall, 50)),
            "wall_ms_per_post_p95": float(np.percentile(wall, 95))}


def summary(writer: PostWriter, requests, posts, trace, costs) -> dict:
    by_user = {r.user_id: r for r in requests}
    posts = [p for p in posts if p.user_id in by_user]
    trace = [c for c in trace if c.user_id in by_user]
    config = writer.config
    served_checks = [writer.catalog.check(p.text, by_user[p.user_id].sources, by_user[p.user_id].interests,
                                          config.max_chars) for p in posts]
    methods = Counter(p.method for p in posts)
    model_posts = [p for p in posts if p.method != "template"]
    stats = writer.stats
    return {
        "users": len(requests), "posts": len(posts), "prompt_version": config.prompt_version,
        "check_claims": writer.check_claims,
        "method_share": {m: methods[m] / max(len(posts), 1) for m in ("model", "repaired", "template")},
        "model_written_share": len(model_posts) / max(len(posts), 1),
        "grounding_before_check": grounding_rate([c.check for c in trace]),
        "grounding_after_check": grounding_rate(served_checks),
        "served_pass_check": sum(c.ok for c in served_checks) / max(len(served_checks), 1),
        "claims_served": claim_rate(writer, posts, by_user),
        "claims_served_model_written": claim_rate(writer, model_posts, by_user),
        "candidates": len(trace),
        "candidates_passing_as_written": sum(c.check.ok and all(x.true for x in c.claims) for c in trace)
        / max(len(trace), 1),
        "candidate_refusals": {k.split(":", 1)[1]: v for k, v in sorted(stats.items()) if k.startswith("refused:")},
        "no_post": stats["no_post"],
        "distinct_2_all": distinct_2([p.text for p in posts]),
        "distinct_2_model_written": distinct_2([p.text for p in model_posts]),
        "mean_chars": float(np.mean([len(p.text) for p in posts])) if posts else 0.0,
        **timing(costs[:len(requests)]),
    }


def samples_markdown(dataset: str, writer: PostWriter, requests, posts, n: int, seed: int) -> str:
    """n posts of the writer with their sources, the plan's facts and the claims found."""
    from generation.claims import make_plan

    by_user = {r.user_id: r for r in requests}
    rng = random.Random(seed)
    picked = sorted(rng.sample(posts, min(n, len(posts))), key=lambda p: p.user_id)
    lines = [f"# Generated posts: {len(picked)} samples ({dataset}, {writer.model_version}, prompt "
             f"{writer.config.prompt_version})", "",
             "Sources are each user's most recent liked items (the benchmark's proxy for the ranker's top items). "
             "Facts are the plan's (the catalog's); claims are what `generation.claims` finds in the post, "
             "with its verdict.", ""]
    for p in picked:
        request = by_user[p.user_id]
        plan = make_plan(request.sources, request.interests, p.kind)
        lines += [f"## user {p.user_id} — {p.kind}, method `{p.method}`", "", f"> {p.text}", "",
                  "Reader's interests: " + (", ".join(plan.interests) or "none"), ""]
        for f in plan.sources:
            lines.append(f"- `{f.item_id}` **{f.title}**: year {f.year or '—'}; "
                         f"{'genres' if dataset.startswith('ml') else 'category'} {', '.join(f.genres) or '—'}; "
                         f"maker {f.creator or '—'}; picked: {f.reason}")
        claims = writer.claims.check(p.text, request.sources, writer.catalog, request.interests)
        lines += ["", "Claims: " + ("; ".join(f"“{c.text}” → {', '.join(c.item_ids) or 'reader'}: "
                                                f"{'true' if c.true else 'FALSE'}" for c in claims) or "none"), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="ml-latest-small,amazon-arts-office")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=str(REPO / "artifacts" / "llm"))
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--before-users", type=int, default=None,
                        help="run the old writer on the first N of the users only (it costs several times more)")
    parser.add_argument("--out", default=str(RESULTS / "generation_eval.json"))
    parser.add_argument("--ranker-config", default=None,
                        help="an engine config with trained artifacts (configs/demo.toml after `make demo`): "
                             "its critic (learned, else its ranker) values the candidates, as in the service")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    after_config = GenerationConfig(threads=args.threads, seed=args.seed)
    before_config = dataclasses.replace(after_config, prompt_version="v1")
    start = time.perf_counter()
    lm = make_language_model(after_config, Path(args.cache_dir))
    load_s = time.perf_counter() - start
    result = {"model_version": lm.model_version, "model_load_s": load_s,
              "config": {k: getattr(after_config, k) for k in ("max_new_tokens", "num_candidates", "max_tries",
                                                               "temperature", "top_p", "batch_size", "threads")},
              "sources_proxy": "each user's 3 most recent ratings >= 4 (the service uses the ranker's top items)",
              "datasets": {}}
    for name in args.datasets.split(","):
        dataset = load_dataset(name, REPO / DATASETS[name].default_root)
        catalog = Catalog.from_items(dataset.items)
        requests = user_requests(dataset, catalog, args.users, args.seed, after_config.sources_per_post)
        value_fn = None if args.ranker_config is None else served_value(args.ranker_config, name)
        runs = {}
        before_users = len(requests) if args.before_users is None else args.before_users
        writers = [("after", after_config, True, requests)]
        if before_users > 0:
            writers.append(("before", before_config, False, requests[:before_users]))
        for label, config, check_claims, users in writers:
            writer = PostWriter(lm, catalog, Guardrails(config.guardrails), config, Critic(lm, value_fn=value_fn),
                                check_claims=check_claims)
            posts, trace, costs = run_writer(writer, users, config.batch_size, f"{name} {label}")
            runs[label] = summary(writer, users, posts, trace, costs)
            if label == "after" and before_users < len(requests):
                # The new writer on the old one's users (whole batches: their costs are theirs alone).
                runs["after_same_users"] = summary(writer, requests[:before_users], posts, trace, costs)
            if label == "after":
                (RESULTS / f"generation_samples_{name}.md").write_text(
                    samples_markdown(name, writer, requests, posts, args.samples, args.seed))
        result["datasets"][name] = runs
        for label, r in runs.items():
            print(f"{name} {label}: users {r['users']}, model-written {r['model_written_share']:.3f} "
                  f"(model {r['method_share']['model']:.3f}, repaired {r['method_share']['repaired']:.3f}, "
                  f"template {r['method_share']['template']:.3f}), named items that are sources "
                  f"{r['grounding_after_check']['rate']:.3f}, claims true {r['claims_served']['rate']:.3f} "
                  f"({r['claims_served']['claims']}), distinct-2 {r['distinct_2_all']:.3f}, "
                  f"CPU {r['cpu_s_per_post']:.2f} s/post, wall p50 {r['wall_ms_per_post_p50']:.0f} ms/post")
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                         "torch_threads": args.threads, "load_average_1m_at_end": os.getloadavg()[0]}
    RESULTS.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
