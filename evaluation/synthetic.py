"""Synthetic logs with a known truth, for validating the analysis code (tests, notebooks).

Nothing here is a measurement of the engine: every frame these functions return is generated from
a stated model, and the truth it was generated from is returned beside it, so an estimator can be
checked against it.

- `planted_ab_log`: an event log in the service's layout (`feedcore.events` columns) for an A/B
  experiment whose users are assigned by the given function (pass the service's own,
  `serving.experiments.Experiment.assign`), with a planted relative lift on the click probability per arm, an optional
  loss of a share of one arm's users (a planted sample-ratio mismatch, as a logging bug in one arm
  would cause) and a pre-period in which every user is treated alike (for CUPED).
- `planted_run`: `planted_ab_log` with the users split by the service's own assignment, salted
  by the seed (a fresh split per simulated run).
- `planted_ranking_logs`: ranked pages from a known Plackett–Luce logging policy with per-position
  click probabilities known exactly, for off-policy estimators (`evaluation.ope`);
  `planted_policy_case` adds a target policy and its exact value.
- `equal_held_out_models`: two models equally good in expectation on one held-out set, for the
  false positives of `evaluation.compare`.

The statistics audit (`benchmarks/stats_audit.py`) and its tests simulate with these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import polars as pl

from evaluation.compare import HeldOut, HeldOutScores
from evaluation.ope import plackett_luce_conditionals, plackett_luce_value, policy_inputs
from feedcore.events import LOG_SCHEMA
from serving.experiments import Arm, Experiment
from serving.mixing.exploration import plackett_luce_sample


@dataclasses.dataclass(frozen=True)
class PlantedAB:
    """What `planted_ab_log` generates: the experiment and the truth planted in it."""

    experiment: str = "planted"
    arms: tuple[tuple[str, float], ...] = (("control", 0.5), ("treatment", 0.5))
    users: int = 4000
    click_lift: dict[str, float] = dataclasses.field(default_factory=dict)  # arm -> relative lift of p(click)
    lost_users: dict[str, float] = dataclasses.field(default_factory=dict)  # arm -> share of its users dropped
    impressions_per_user: float = 20.0  # mean; each user's activity scales it (lognormal, sd 0.5)
    base_ctr: float = 0.08  # mean click probability; each user's taste scales it (lognormal, sd 0.5)
    like_given_click: float = 0.3
    hide_prob: dict[str, float] = dataclasses.field(default_factory=dict)  # arm -> p(hide) per impression
    watch_mean_s: float = 60.0
    generated_share: float = 0.1  # share of impressions that are generated posts
    start_ms: int = 1_700_000_000_000  # experiment start; the pre-period is the day before
    seed: int = 0


def planted_ab_log(plan: PlantedAB, assign: Callable[[str], str]) -> pl.DataFrame:
    """An event log (one row per event, `feedcore.events.LOG_SCHEMA`) generated from `plan`; `assign` maps a user
    id to its arm's name.

    Each user has a latent activity a (impressions ~ Poisson(a · impressions_per_user)) and taste
    b (p(click) = b · base_ctr, times 1 + lift in a treated arm), the same in the pre-period and
    the experiment, so pre-period clicks predict experiment clicks (what CUPED exploits). A click
    on a movie is followed by a watch of Exp(watch_mean_s) seconds and a like with probability
    `like_given_click`.
    """
    rng = np.random.default_rng(plan.seed)
    n = plan.users
    user_ids = np.array([f"u{i}" for i in range(n)], dtype=object)
    arm = np.array([assign(u) for u in user_ids], dtype=object)
    activity = rng.lognormal(-0.125, 0.5, n)
    taste = rng.lognormal(-0.125, 0.5, n)
    lift = np.array([plan.click_lift.get(a, 0.0) for a in arm])
    kept = np.ones(n, bool)
    for name, share in plan.lost_users.items():
        members = np.flatnonzero(arm == name)
        kept[rng.choice(members, size=int(round(share * len(members))), replace=False)] = False

    frames = []
    for period, start in (("pre", plan.start_ms - 86_400_000), ("exp", plan.start_ms)):
        p_click = np.clip(taste * plan.base_ctr * (1.0 + (lift if period == "exp" else 0.0)), 0.0, 1.0)
        impressions = rng.poisson(activity * plan.impressions_per_user)
        if period == "exp":
            impressions = np.where(kept, impressions, 0)
        rows = np.repeat(np.arange(n), impressions)  # one row per impression
        m = len(rows)
        position = np.concatenate([np.arange(k) for k in impressions]) if m else np.zeros(0, np.int64)
        generated = rng.random(m) < plan.generated_share
        clicked = rng.random(m) < p_click[rows]
        liked = clicked & (rng.random(m) < plan.like_given_click)
        watched = clicked & ~generated
        hide_p = np.array([plan.hide_prob.get(a, 0.0) for a in arm])[rows] if period == "exp" else np.zeros(m)
        hidden = ~clicked & (rng.random(m) < hide_p)
        item = rng.integers(0, 5000, m)
        content = np.where(generated, "generated", "movie")
        ts = start + rng.integers(0, 86_400_000, m)
        label = np.array([f"{plan.experiment}/{a}" for a in arm], dtype=object)[rows]
        if period == "pre":  # the pre-period: no experiment running, everyone on production
            label = np.full(m, "production/default", dtype=object)
        base = {
            "user_id": user_ids[rows], "item_id": np.char.add("i", item.astype(str)), "content_type": content,
            "ts": ts, "request_id": np.char.add(f"{period}-", rows.astype(str)), "position": position,
            "experiment_arm": label,
        }
        for event, mask, value in (("impression", np.ones(m, bool), None), ("click", clicked, None),
                                   ("like", liked, None), ("hide", hidden, None),
                                   ("watch", watched, rng.exponential(plan.watch_mean_s, m) + 1.0)):
            part = {k: np.asarray(v)[mask] for k, v in base.items()}
            part["event"] = np.full(int(mask.sum()), event, dtype=object)
            part["value"] = value[mask] if value is not None else np.full(int(mask.sum()), None, dtype=object)
            if event != "impression":
                part["ts"] = part["ts"] + 1000
            frames.append(pl.DataFrame({
                "user_id": part["user_id"].tolist(), "item_id": part["item_id"].tolist(),
                "content_type": part["content_type"].tolist(), "ts": part["ts"], "event": part["event"].tolist(),
                "value": pl.Series(part["value"].tolist(), dtype=pl.Float64),
                "request_id": part["request_id"].tolist(), "position": part["position"].astype(np.int32),
                "experiment_arm": part["experiment_arm"].tolist(),
            }))
    log = pl.concat(frames, how="vertical_relaxed").sort("ts")
    return log.with_columns(
        seq=pl.int_range(1, log.height + 1, dtype=pl.Int64), surface=pl.lit("home"), source=pl.lit("ann"),
        propensity=pl.lit(0.0), event_id=pl.lit(None, pl.String),
    ).select([pl.col(c).cast(t) for c, t in LOG_SCHEMA.items()])


@dataclasses.dataclass(frozen=True)
class RankingLogs:
    """Logged pages of a known logging policy, with the ground truth needed to check OPE.

    Shapes: R requests, K logged positions, N candidates per request.
    """

    scores: np.ndarray  # (R, N) the logging policy's scores
    order: np.ndarray  # (R, K) logged candidate index at each position
    propensity: np.ndarray  # (R, K) logging policy's p(item at k | items above)
    reward: np.ndarray  # (R, K) 0/1 clicks
    click_prob: np.ndarray  # (R, N, K) true p(click | candidate n at position k)
    temperature: float


def planted_ranking_logs(requests: int = 3000, candidates: int = 8, positions: int = 3,
                         temperature: float = 1.0, seed: int = 0) -> RankingLogs:
    """Pages ranked by Plackett–Luce over noisy scores, clicks from a position-based model.

    p(click | item n at position k) = attractiveness(n) · examination(k), examination(k) = 1/(k+1):
    the reward at a position depends only on the item there, so the cascade estimators of
    `evaluation.ope` are unbiased on these logs.
    """
    rng = np.random.default_rng(seed)
    attractiveness = rng.beta(1.0, 4.0, (requests, candidates))  # (R, N)
    # The logging policy knows the attractiveness only noisily.
    scores = np.log(attractiveness + 1e-3) + rng.normal(0, 0.5, (requests, candidates))
    examination = 1.0 / (np.arange(positions) + 1.0)
    click_prob = attractiveness[:, :, None] * examination[None, None, :]  # (R, N, K)
    order = np.zeros((requests, positions), np.int64)
    propensity = np.zeros((requests, positions))
    for r in range(requests):
        order[r], propensity[r] = plackett_luce_sample(scores[r], temperature, positions, rng)
    chosen = click_prob[np.arange(requests)[:, None], order, np.arange(positions)[None, :]]  # (R, K)
    reward = (rng.random((requests, positions)) < chosen).astype(np.float64)
    return RankingLogs(scores, order, propensity, reward, click_prob, temperature)


def planted_run(seed: int, users: int = 1000, arms: tuple[tuple[str, float], ...] = PlantedAB.arms,
                **plan) -> tuple[PlantedAB, pl.DataFrame]:
    """One simulated A/B run: its plan (`PlantedAB` fields in `plan`) and its log, the users split
    by `serving.experiments.Experiment.assign` salted with `seed`."""
    experiment = Experiment("planted", str(seed), tuple(Arm(name, share) for name, share in arms))
    planted = PlantedAB(arms=arms, users=users, seed=seed, **plan)
    return planted, planted_ab_log(planted, lambda user: experiment.assign(user).name)


def planted_policy_case(seed: int, requests: int, temperature: float):
    """Ranking logs (6 candidates, 3 positions, logging temperature 1) and a Plackett–Luce target
    policy at `temperature` over scores close to the true attractiveness: (logs, the target's
    per-position probabilities, its logging-policy ones and rewards as `policy_inputs` returns
    them, the target's exact value)."""
    logs = planted_ranking_logs(requests=requests, candidates=6, positions=3, temperature=1.0, seed=seed)
    rng = np.random.default_rng(seed + 1)
    scores = np.log(logs.click_prob[:, :, 0] + 1e-3) + rng.normal(0, 0.2, logs.scores.shape)
    target, q, v = policy_inputs(plackett_luce_conditionals(scores, logs.order, temperature), logs.order,
                                 logs.click_prob)
    return logs, target, q, v, plackett_luce_value(scores, temperature, logs.click_prob)


def equal_held_out_models(seed: int, users: int = 300) -> tuple[HeldOut, HeldOutScores, HeldOutScores]:
    """A held-out set (one positive and two negatives per user, users split into two groups) and
    two models equally good in expectation on it, each with noise of its own."""
    rng = np.random.default_rng(seed)
    labels = np.tile([1.0, 0.0, 0.0], users)
    groups = np.where(rng.random(users) < 0.5, "movie", "post")
    held = HeldOut(row_user=np.arange(users), row_group=groups, example_user=np.repeat(np.arange(users), 3),
                   example_group=np.repeat(groups, 3), labels={"engage": labels}, users=users)
    findable = rng.normal(0, 1, users)  # how easy each user's held-out item is, for both models

    def model(name: str) -> HeldOutScores:
        ranks = np.floor(np.exp(3 + findable + rng.normal(0, 0.7, users))).astype(np.int64)
        logits = rng.normal(0, 1, 3 * users) + 0.3 * np.repeat(findable, 3) + labels
        return HeldOutScores(name, ranks, {"engage": 1 / (1 + np.exp(-logits))})

    return held, model("A"), model("B")
