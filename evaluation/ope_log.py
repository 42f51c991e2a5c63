"""Off-policy evaluation from the service's own log: each experiment arm's value estimated from the
pages another arm served.

Input: the session rankings an exploring arm logs (`feedcore.events.read_rankings`: every
eligible candidate of a session in its served order, with value scores, task predictions and
propensities) and the events (`read_event_log`), joined by the first page's request id.

The unit is a session's **first page** (positions 0..K−1, K its page size) and the value estimated
is V(π) = E[Σ_k clicks_k], clicks summed over the page. A target policy (`TargetPolicy`) is a
Plackett–Luce policy over value scores Σ_t w_t · prediction_t at a temperature, which is what an
arm with ``exploration = { kind = "plackett_luce", ... }`` serves on its sampled positions; its
conditionals π(a | items above) over the logged candidates are recomputed from the logged task
predictions (`evaluation.ope.plackett_luce_conditionals`), the logging policy's are the logged
propensities, and `evaluation.ope` gives IPS, SNIPS and DR (with its intervals, effective sample
size and warnings). DR's reward model q̂_k(a) is a logistic regression of a click at position k on
the position and the logits of the candidate's task predictions, fitted on the logging arm's own
pages. Pages of each arm are evaluated separately: an arm's pages estimate its own value
(weights 1, the on-policy mean) and every other arm's.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
from scipy import stats as sps

from evaluation.ope import OPEEstimate, doubly_robust, ips, plackett_luce_conditionals, policy_inputs, snips


@dataclasses.dataclass(frozen=True)
class TargetPolicy:
    """Plackett–Luce over Σ_t weights[t] · prediction_t at `temperature` (an exploring arm's policy
    on its sampled positions)."""

    name: str
    weights: dict[str, float]
    temperature: float

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"target policy {self.name!r}: temperature must be > 0, got {self.temperature}")


def arm_policies(experiment, default_weights: dict[str, float]) -> tuple[TargetPolicy, ...]:
    """The target policy of every Plackett–Luce arm of `experiment` (a `serving.experiments.Experiment`);
    an arm without value weights of its own uses `default_weights` (the server's)."""
    return tuple(TargetPolicy(a.name, dict(a.value_weights or default_weights), a.exploration.temperature)
                 for a in experiment.arms if a.exploration is not None and a.exploration.kind == "plackett_luce")


@dataclasses.dataclass(frozen=True)
class LoggedPages:
    """The first pages of one arm's exploring sessions, as arrays (R pages, N candidates padded, K positions).

    Candidates are in served order, so the logged page is candidates 0..K−1 of each row.
    """

    arm: str
    request_ids: tuple[str, ...]  # (R,)
    item_ids: tuple[tuple[str, ...], ...]  # (R,) each page's N_r candidates
    tasks: tuple[str, ...]  # (T,)
    task_scores: np.ndarray  # (R, T, N) predictions; NaN past a row's N_r candidates
    live: np.ndarray  # (R, N) bool: a real candidate (not padding)
    logging_propensity: np.ndarray  # (R, K)
    reward: np.ndarray  # (R, K) clicks at each position (0/1)
    temperature: float  # the logging arm's
    weights: dict[str, float]  # the logging arm's value weights

    @property
    def positions(self) -> int:
        return self.reward.shape[1]

    def __len__(self) -> int:
        return len(self.request_ids)


def logged_pages(rankings: pl.DataFrame, events: pl.DataFrame, experiment_arm: str, start_ms: int | None = None,
                 end_ms: int | None = None) -> LoggedPages:
    """The first pages `experiment_arm` ("<experiment>/<arm>") logged with a Plackett–Luce ranking
    in [start_ms, end_ms), with their clicks. K is the smallest first page's size among them.

    Raises ValueError when the arm logged no such ranking (it does not explore with Plackett–Luce,
    or the log predates ranking logs)."""
    rows = rankings.filter((pl.col("experiment_arm") == experiment_arm) & (pl.col("exploration") == "plackett_luce"))
    if start_ms is not None:
        rows = rows.filter(pl.col("ts") >= start_ms)
    if end_ms is not None:
        rows = rows.filter(pl.col("ts") < end_ms)
    if not rows.height:
        raise ValueError(f"no Plackett-Luce session rankings of arm {experiment_arm!r} in the log: off-policy "
                         "evaluation needs an arm that explores (exploration = { kind = \"plackett_luce\" }) on a "
                         "server that logs its rankings")
    rows = rows.unique("request_id", keep="first", maintain_order=True)
    tasks = tuple(rows["tasks"][0])
    if any(tuple(t) != tasks for t in rows["tasks"]):
        raise ValueError(f"arm {experiment_arm!r}: rankings with different task sets (a model change inside the "
                         "window): evaluate each model's window separately")
    temperatures = rows["temperature"].unique().to_list()
    if len(temperatures) != 1:
        raise ValueError(f"arm {experiment_arm!r} changed its temperature inside the window: {temperatures}")
    weights = {tuple(w): tuple(v) for w, v in zip(rows["weight_tasks"], rows["weights"], strict=True)}
    if len(weights) != 1:
        raise ValueError(f"arm {experiment_arm!r} changed its value weights inside the window")
    k = int(min(rows["page_size"].min(), rows["item_ids"].list.len().min()))
    sizes = rows["item_ids"].list.len().to_numpy()
    r, n = rows.height, int(sizes.max())
    scores = np.full((r, len(tasks), n), np.nan)
    for i, per_task in enumerate(rows["task_scores"].to_list()):
        scores[i, :, : sizes[i]] = np.asarray(per_task, np.float64)
    live = np.arange(n)[None, :] < sizes[:, None]
    propensity = np.array([p[:k] for p in rows["propensities"].to_list()], np.float64)
    request_ids = tuple(rows["request_id"].to_list())
    clicks = (events.filter((pl.col("event") == "click") & pl.col("request_id").is_in(request_ids)
                            & (pl.col("position") < k))
              .unique(["request_id", "position"]).select("request_id", "position"))
    index = {rid: i for i, rid in enumerate(request_ids)}
    reward = np.zeros((r, k))
    for rid, position in clicks.iter_rows():
        reward[index[rid], position] = 1.0
    (tasks_w, values_w), = weights.items()
    return LoggedPages(experiment_arm, request_ids, tuple(tuple(x) for x in rows["item_ids"].to_list()), tasks,
                       scores, live, propensity, reward, float(temperatures[0]), dict(zip(tasks_w, values_w,
                                                                                         strict=True)))


def policy_scores(pages: LoggedPages, policy: TargetPolicy) -> np.ndarray:
    """(R, N) the policy's value score of every logged candidate; −inf at padding (never drawn)."""
    missing = sorted(set(policy.weights) - set(pages.tasks))
    if missing:
        raise ValueError(f"target policy {policy.name!r} weights task(s) {missing} that the logged rankings do not "
                         f"predict ({list(pages.tasks)})")
    value = np.zeros(pages.live.shape)
    for task, weight in policy.weights.items():
        value += weight * pages.task_scores[:, pages.tasks.index(task)]
    return np.where(pages.live, value, -np.inf)


def fit_reward_model(pages: LoggedPages, ridge: float = 1.0, iterations: int = 25) -> np.ndarray:
    """(R, N, K) q̂_k(a): a logistic regression of a click at position k on the position (one-hot) and
    the logits of the candidate's task predictions, fitted on the logged pages by Newton's method."""
    k = pages.positions
    logits = np.log(np.clip(pages.task_scores, 1e-6, 1 - 1e-6) / (1 - np.clip(pages.task_scores, 1e-6, 1 - 1e-6)))
    logits = np.where(np.isfinite(logits), logits, 0.0).transpose(0, 2, 1)  # (R, N, T)
    r = len(pages)

    def design(item_logits: np.ndarray, position: np.ndarray) -> np.ndarray:  # (M, K + T)
        return np.concatenate([np.eye(k)[position], item_logits], axis=1)

    shown = logits[:, :k]  # (R, K, T): the logged items are candidates 0..K-1
    x = design(shown.reshape(r * k, -1), np.tile(np.arange(k), r))
    y = pages.reward.reshape(-1)
    beta = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(x @ beta)))
        hessian = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(len(beta))
        beta -= np.linalg.solve(hessian, x.T @ (p - y) + ridge * beta)
    linear = logits @ beta[k:]  # (R, N)
    q = 1 / (1 + np.exp(-(linear[:, :, None] + beta[None, None, :k])))  # (R, N, K)
    return np.where(pages.live[:, :, None], q, 0.0)


@dataclasses.dataclass(frozen=True)
class PolicyEstimates:
    """One target policy's value estimated from one arm's pages."""

    target: str
    logged_by: str
    pages: int
    positions: int
    ips: OPEEstimate
    snips: OPEEstimate
    dr: OPEEstimate


def estimate(pages: LoggedPages, policy: TargetPolicy, q_hat: np.ndarray | None = None, seed: int = 0,
             resamples: int = 1000, alpha: float = 0.05) -> PolicyEstimates:
    """IPS, SNIPS and DR of `policy`'s first-page clicks from `pages` (cascade estimators: the
    reward at k depends on the items at 1..k only)."""
    k = pages.positions
    order = np.tile(np.arange(k), (len(pages), 1))  # the logged page: candidates 0..K-1
    conditionals = plackett_luce_conditionals(policy_scores(pages, policy), order, policy.temperature)
    q_hat = fit_reward_model(pages) if q_hat is None else q_hat
    target, q_logged, v_target = policy_inputs(conditionals, order, q_hat)
    kwargs = {"alpha": alpha, "resamples": resamples, "seed": seed}
    return PolicyEstimates(policy.name, pages.arm, len(pages), k,
                           ips(pages.reward, target, pages.logging_propensity, **kwargs),
                           snips(pages.reward, target, pages.logging_propensity, **kwargs),
                           doubly_robust(pages.reward, target, pages.logging_propensity, q_logged, v_target,
                                         **kwargs))


def on_policy_value(pages: LoggedPages, alpha: float = 0.05) -> tuple[float, float, float]:
    """The arm's own mean clicks per first page and its t interval: (mean, low, high)."""
    total = pages.reward.sum(axis=1)
    mean = float(total.mean())
    half = float(sps.t.ppf(1 - alpha / 2, len(total) - 1) * total.std(ddof=1) / np.sqrt(len(total)))
    return mean, mean - half, mean + half


def logged_propensity_check(pages: LoggedPages) -> float:
    """The largest gap between the logged propensities and those recomputed from the logged task
    predictions under the logging arm's own weights and temperature (0 up to float error when the
    log holds what a target policy needs)."""
    policy = TargetPolicy(pages.arm, pages.weights, pages.temperature)
    k = pages.positions
    order = np.tile(np.arange(k), (len(pages), 1))
    conditionals = plackett_luce_conditionals(policy_scores(pages, policy), order, policy.temperature)
    recomputed = conditionals[np.arange(len(pages))[:, None], np.arange(k)[None, :], order]
    return float(np.abs(recomputed - pages.logging_propensity).max())
