"""The learned critic (issue 20, item 3) against today's critic and a random pick, on simulated users.

    nice -n 5 .venv/bin/python benchmarks/generation_critic.py [--users 200] [--candidates 4]

**A simulation.** ml-latest-small is split as `feed ab simulate` splits it
(`evaluation.simulator.prepare_simulation` with configs/demo.toml: each user's latest 20% of
ratings are their future, unseen by the engine), and the demo engine is trained on the past only
(`train_engine`), as the service would have it. Simulated users answer a generated post by what it says (`PostTaste`: a post whose
genre words are among the user's three favourite genres of their future is clicked more, one that
talks of other genres is hidden more; the module doc of `evaluation.simulator` gives the model).

1. For `--users` users (the sources and interests of `generation_eval.user_requests`, from the past
   only), the real writer (SmolLM2-135M, service defaults but `--candidates` candidates and no
   retries) writes candidates; every candidate that passes the checks is kept with its prompt.
2. Logging users (`--train-share` of them, seeded): each of their candidates is shown once, at the
   top of a page, and the simulated user answers it. Impressions, clicks, likes and hides go
   through the real event log (`serving.event_log.EventLog`); the posts go into the real post store
   (`SqlitePostStore`). The reward model is fit on `read_event_log` joined by post id with the store
   (`generation.engagement.post_examples`, `fit_engagement_model`).
3. Held-out users with two or more candidates: each critic picks one; the figure is the simulator's
   expected engagement (probability of a click, given the post is looked at) of the pick, averaged
   over users, with a paired bootstrap 95% interval of each difference:
   - random: the mean over the user's candidates;
   - today's critic: the service's, `Critic(lm, value_fn=ServedModels.value)`: the trained ranker's
     value-model score of the post as an item (`FeedPipeline.score_posts`) + 0.1 x fluency
     (`--no-ranker`: fluency alone);
   - learned: `Critic(lm, value_fn=model.value_fn(embed))`, P(engage) + 0.1 x fluency;
   - oracle: the best candidate under the simulator (the ceiling).

Writes benchmarks/results/generation_critic.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from generation_eval import user_requests  # benchmarks/ is the script's directory

from evaluation.simulator import (
    SimulationConfig,
    post_tastes,
    prepare_simulation,
    respond,
    train_engine,
    user_rng,
)
from feedcore.config import GenerationConfig, load_config
from feedcore.datasets import load_dataset
from feedcore.events import read_event_log
from feedcore.io import atomic_path
from feedcore.proto.feed.v1 import feed_pb2
from feedcore.text import load_text_encoder
from generation.critic import Critic
from generation.engagement import fit_engagement_model, post_examples
from generation.grounding import Catalog
from generation.guardrails import Guardrails
from generation.interface import GeneratedPost
from generation.llm import make_language_model
from generation.store import SqlitePostStore
from generation.writer import PostWriter, post_id
from serving.event_log import EventLog
from serving.generated_posts import TextEmbeddings
from serving.generation_service import ServedModels
from serving.pipeline import FeedPipeline

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]


class RecordingCritic(Critic):
    """Today's critic, keeping every group it scored (user, prompt, passing texts, sources)."""

    def __init__(self, lm) -> None:
        super().__init__(lm)
        self.groups: dict[str, tuple] = {}

    def score(self, groups):
        for group in groups:
            self.groups.setdefault(group[0], group)  # the first try's candidates
        return super().score(groups)


def bootstrap(diff: np.ndarray, rounds: int = 2000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (rounds, len(diff)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--train-share", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=str(REPO / "artifacts" / "llm"))
    parser.add_argument("--ranker", action=argparse.BooleanOptionalAction, default=True,
                        help="today's critic with the service's value (trains the demo engine on the past)")
    parser.add_argument("--min-impressions", type=int, default=200, help="the reward model's cold-start bar")
    parser.add_argument("--out", default=str(RESULTS / "generation_critic.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sim = SimulationConfig(seed=args.seed)
    name = "ml-latest-small"
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="generation-critic-"))
    engine, futures = prepare_simulation(load_config(REPO / "configs" / "demo.toml"), sim, work,
                                         REPO / "configs" / "experiments" / "ab-demo.toml")
    past = load_dataset(engine.data.dataset, engine.data.raw_root)
    tastes = post_tastes(futures, past.items, sim.favourite_categories)
    catalog = Catalog.from_items(past.items)
    with_future = dataclasses.replace(past, events=past.events.filter(pl.col("user_id").is_in(list(futures))))
    config = GenerationConfig(threads=args.threads, seed=args.seed, num_candidates=args.candidates, max_tries=0)
    requests = user_requests(with_future, catalog, args.users, args.seed, config.sources_per_post)
    served = None
    if args.ranker:  # the service's critic value: the demo engine trained on the past only
        engine = dataclasses.replace(engine, generation=dataclasses.replace(engine.generation, enabled=False))
        train_engine(engine)
        served = FeedPipeline.from_artifacts(engine)

    lm = make_language_model(config, Path(args.cache_dir))
    critic = RecordingCritic(lm)
    writer = PostWriter(lm, catalog, Guardrails(config.guardrails), config, critic)
    cpu = time.process_time()
    for at in range(0, len(requests), config.batch_size):
        writer.write(requests[at:at + config.batch_size])
    write_cpu = time.process_time() - cpu
    groups = critic.groups
    print(f"{len(requests)} users, {sum(len(g[2]) for g in groups.values())} passing candidates "
          f"({write_cpu:.0f} CPU s)")

    users = sorted(groups)
    random.Random(args.seed).shuffle(users)
    cut = int(len(users) * args.train_share)
    logging_users, held_out = users[:cut], users[cut:]
    embed = TextEmbeddings(load_text_encoder())

    with tempfile.TemporaryDirectory() as tmp:
        store = SqlitePostStore(Path(tmp) / "posts.sqlite",
                                dataclasses.replace(config, posts_per_user=args.candidates, cache_ttl_s=10**9))
        log = EventLog(Path(tmp) / "log")
        sources_by_id = {}
        ts = 0
        for user in logging_users:
            _, _, texts, sources = groups[user]
            sources_by_id.update({s.item_id: s for s in sources})
            rng = user_rng(args.seed, user, "critic-log")
            future = dict(futures[user])
            for text in dict.fromkeys(texts):
                ids = tuple(s.item_id for s in sources)
                post = GeneratedPost(post_id(user, text, ids), user, text, ids, lm.model_version, config.prompt_version)
                store.put(post)
                ts += 1
                item = feed_pb2.FeedItem(item_id=post.post_id, content_type="generated", text=text, position=0)
                log.append([{"user_id": user, "item_id": post.post_id, "content_type": "generated", "ts": ts,
                             "event": event, "value": value, "request_id": f"log-{ts}", "position": 0,
                             "surface": "home", "experiment_arm": "logging", "source": "generated",
                             "propensity": 1.0 / len(set(texts)), "event_id": None}
                            for _, event, value in respond([item], future, sim, rng, tastes[user])])
        log.close()
        examples = post_examples(read_event_log(Path(tmp) / "log"), store.get)
        store.close()
    model = fit_engagement_model(examples, sources_by_id.__getitem__, embed, min_impressions=args.min_impressions)
    if model is None:
        raise SystemExit(f"too few logged post impressions to learn from ({examples.height})")
    learned = Critic(lm, value_fn=model.value_fn(embed))
    today = Critic(lm, value_fn=ServedModels(served, embed).value if served is not None else None)

    rows = [u for u in held_out if len(set(groups[u][2])) >= 2]
    scored = [groups[u] for u in rows]
    truth = [np.array([tastes[u].probabilities(t, sim)[0] for t in groups[u][2]]) for u in rows]
    today_key = "today's critic (ranker value + 0.1 fluency)" if served is not None else "today's critic (fluency only)"
    picks = {today_key: today.score(scored),
             "learned critic (P(engage) + 0.1 fluency)": learned.score(scored)}
    value = {"random candidate": np.array([t.mean() for t in truth])}
    value.update({k: np.array([t[int(np.argmax(s))] for t, s in zip(truth, v, strict=True)]) for k, v in picks.items()})
    value["oracle (the simulator's best candidate)"] = np.array([t.max() for t in truth])
    learned_key = "learned critic (P(engage) + 0.1 fluency)"
    result = {
        "benchmark": "generation_critic", "protocol": __doc__.strip(), "dataset": name, "simulation": True,
        "model_version": lm.model_version, "users": len(requests), "logging_users": len(logging_users),
        "held_out_users_with_a_choice": len(rows), "candidates_per_user": args.candidates,
        "passing_candidates": sum(len(g[2]) for g in groups.values()), "write_cpu_s": write_cpu,
        "logged_post_impressions": examples.height, "logged_engaged": int(examples["label"].sum()),
        "expected_engagement": {k: float(v.mean()) for k, v in value.items()},
        "learned_minus": {k: {"mean": float((value[learned_key] - v).mean()), "ci95": bootstrap(value[learned_key] - v)}
                          for k, v in value.items() if k != learned_key},
        "today_value_errors": today.value_errors, "wall_s": time.perf_counter() - start,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": args.threads},
    }
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    for k, v in result["expected_engagement"].items():
        print(f"{k:<55} {v:.4f}")
    for k, v in result["learned_minus"].items():
        print(f"learned - {k:<44} {v['mean']:+.4f} [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
