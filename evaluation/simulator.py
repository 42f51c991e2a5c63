"""A user-response simulator for end-to-end A/B runs against a real feed server (`feed ab simulate`).

**This is a simulation.** Simulated users are driven by held-out real interactions: each user's
latest interactions (`SimulationConfig.future_share` of them, by time) are removed from the data
the engine is trained and served on, and become that user's *future*. Served the feed over gRPC,
a simulated user responds to each item, top to bottom, with this documented noise model:

- **examination**: the item at 0-based position k is looked at with probability
  1 / (1 + examine_decay · k) (position bias); an item not looked at gets no event but its
  impression (the app rendered it);
- **click**: a looked-at item in the user's future is clicked with probability `p_click_future`
  (a future interaction can be missed); any other item with probability `p_click_other` (noise);
- **like**: a clicked future item the user rated at least `like_rating` is liked with probability
  `p_like`; **watch**: a clicked movie (any content type but generated posts and accounts) is
  watched for Exp(`watch_s_mean`) + 1 seconds; a clicked account is **followed**; a looked-at,
  unclicked item is **hidden** with probability `p_hide`;
- **sessions**: a user opens `sessions` sessions and reads up to `pages` pages in each, going on
  to the next page with probability `p_next_page`; a future item engaged once is consumed.

Each user's draws come from their own seeded generator, so a run is reproducible given the feeds
the server returns. Everything the simulated app does goes through the public API (`GetFeed`,
`LogEvents` with an API key): the service's own event log is the record, analysed by
`evaluation.ab` exactly as real traffic would be. A pre-period in which every user is forced onto
the control arm (`experiment_overrides`) precedes the experiment, for CUPED. Runs are bounded by
`max_requests` and `max_seconds` and stop by themselves; a truncated run says so.

`prepare_simulation` writes the past-only dataset and the engine config that serves it;
`run_simulation` is the gRPC client loop; `simulation_report` analyses the log into a report
labelled as a simulation on every page.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import math
import re
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl

from evaluation.ab import PRIMARY, ABConfig, ab_figures, ab_markdown, analyze
from evaluation.ope_log import (
    LoggedPages,
    PolicyEstimates,
    TargetPolicy,
    estimate,
    fit_reward_model,
    logged_pages,
    on_policy_value,
    policy_scores,
)
from evaluation.report import SIMULATION_BANNER, table, write_report

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    """The simulated population and its response model (see the module docstring)."""

    future_share: float = 0.2
    min_past: int = 5  # users with fewer past interactions keep all of them (no future)
    users: int = 0  # simulate this many users (those with a future, by id); 0: all
    pre_sessions: int = 1
    sessions: int = 2
    pages: int = 3
    page_size: int = 10
    examine_decay: float = 0.15
    p_click_future: float = 0.8
    p_click_other: float = 0.01
    p_like: float = 0.7
    like_rating: float = 4.0
    p_hide: float = 0.005
    watch_s_mean: float = 90.0
    favourite_categories: int = 3
    p_post_base: float = 0.05
    p_post_taste: float = 0.6
    p_post_off_taste_hide: float = 0.2
    p_next_page: float = 0.6
    workers: int = 4  # concurrent simulated users
    max_requests: int = 20_000
    max_seconds: float = 900.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.future_share < 1:
            raise ValueError(f"future_share must be in (0, 1), got {self.future_share}")
        for name in ("p_click_future", "p_click_other", "p_like", "p_hide", "p_next_page", "p_post_base",
                     "p_post_taste", "p_post_off_taste_hide"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class SimulationRun:
    """What a run did: the experiment window (server-clock ms) and how much traffic it sent."""

    start_ms: int
    end_ms: int
    pre_start_ms: int
    users: int
    requests: int
    events: int
    truncated: bool  # stopped by max_requests / max_seconds before every session ran


def split_futures(events: pl.DataFrame, future_share: float, min_past: int,
                  history_events: tuple[str, ...] = ()) -> tuple[pl.DataFrame, dict[str, dict[str, float]]]:
    """Each user's latest `future_share` interactions (of `history_events`, all when empty) as
    their future, item -> value (the rating; 0 when none); the rest is the past the engine sees."""
    order = [c for c in ("ts", "seq") if c in events.columns]
    ev = events.with_row_index("_row").sort(["user_id", *order, "_row"])
    ev = ev.with_columns(_pos=pl.int_range(pl.len()).over("user_id"))  # time order within the user
    # Every event when none are named (a column expression: a literal True would sum to 1 per user).
    eligible = pl.col("event").is_in(history_events) if history_events else pl.col("event").is_not_null()
    ranked = ev.with_columns(
        _k=pl.when(eligible).then(pl.col("_pos")).otherwise(None).rank("ordinal", descending=True).over("user_id"),
        _n=eligible.sum().over("user_id"),
    )
    future_n = (pl.col("_n").cast(pl.Float64) * future_share).ceil()
    is_future = eligible & (pl.col("_n") - future_n >= min_past) & (pl.col("_k") <= future_n)
    ranked = ranked.with_columns(_future=is_future.fill_null(False))
    future = ranked.filter(pl.col("_future"))
    futures: dict[str, dict[str, float]] = {}
    for user, item, value in future.select("user_id", "item_id", pl.col("value").fill_null(0.0)).iter_rows():
        futures.setdefault(user, {})[item] = max(value, futures.get(user, {}).get(item, 0.0))
    past = ranked.filter(~pl.col("_future")).sort("_row").drop("_row", "_pos", "_k", "_n", "_future")
    return past, futures


def prepare_simulation(engine, sim: SimulationConfig, workdir: str | Path, experiments_file: str | Path):
    """Write the past-only dataset under `workdir` and return (engine config serving it, futures).

    The returned config trains into ``<workdir>/artifacts``, reads ``<workdir>/past`` (canonical
    layout), logs to ``<workdir>/event_log`` and runs `experiments_file`.
    """
    from feedcore.datasets import load_dataset
    from feedcore.schemas import CanonicalDataset

    workdir = Path(workdir)
    shutil.rmtree(workdir / "event_log", ignore_errors=True)  # a run's log holds that run only
    data = load_dataset(engine.data.dataset, engine.data.raw_root)
    past, futures = split_futures(data.events, sim.future_share, sim.min_past, engine.data.history_events)
    CanonicalDataset(f"{data.name}-past", data.items, data.users, past, data.edges).write(workdir / "past")
    serving = dataclasses.replace(
        engine.serving, port=0, metrics_port=-1, reload_interval_s=0.0, experiments_file=str(experiments_file),
        event_log_dir=str(workdir / "event_log"), api_keys=engine.serving.api_keys or ("simulator-key",))
    config = dataclasses.replace(
        engine, artifacts_dir=str(workdir / "artifacts"),
        data=dataclasses.replace(engine.data, dataset="canonical", raw_root=str(workdir / "past")), serving=serving)
    return config, futures


def train_engine(config) -> None:
    """Prepare the data, train both models and build the index of `config` (what `feed demo` does)."""
    from feedcore.prepare import prepare_data
    from ranker.train import train_ranker_job
    from retrieval.build_index import build_index_job
    from retrieval.train import train_retrieval_job

    prepare_data(config)
    train_retrieval_job(config, progress=False)
    train_ranker_job(config, progress=False)
    build_index_job(config)


def user_rng(seed: int, user_id: str, phase: str) -> np.random.Generator:
    """Each simulated user's own generator, so a run does not depend on thread scheduling."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}:{phase}:{user_id}".encode()).digest()[:8],
                                                "big"))


@dataclasses.dataclass(frozen=True)
class PostTaste:
    """How a simulated user answers generated posts (see the module doc): their favourite
    categories (lower case) and the catalogue's category names as a whole-word pattern."""

    favourites: frozenset[str]
    categories: re.Pattern

    def mentioned(self, text: str) -> frozenset[str]:
        """The catalogue categories `text` names (lower case)."""
        return frozenset(m.lower() for m in self.categories.findall(text))

    def probabilities(self, text: str, sim: SimulationConfig) -> tuple[float, float]:
        """(p_click, p_hide) of a looked-at post with this text.

        >>> taste = PostTaste(frozenset({"comedy"}), category_pattern(["Comedy", "Drama"]))
        >>> taste.probabilities("A comedy and a drama.", SimulationConfig())
        (0.25, 0.07166666666666667)
        """
        mentioned = self.mentioned(text)
        hits = len(mentioned & self.favourites)
        share = 1.0 / (len(mentioned) + 1)
        return (sim.p_post_base + sim.p_post_taste * hits * share,
                sim.p_hide + sim.p_post_off_taste_hide * (len(mentioned) - hits) * share)


def category_pattern(categories) -> re.Pattern:
    """Whole-word, case-insensitive pattern of category names (longest first)."""
    names = sorted({c for c in categories if c and not c.startswith("(")}, key=len, reverse=True)
    return re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?![\w-])", re.I)


def post_tastes(futures: dict[str, dict[str, float]], items: pl.DataFrame, k: int) -> dict[str, PostTaste]:
    """Each user's `PostTaste`: the `k` categories most frequent among their future items."""
    categories = dict(zip(items["item_id"].to_list(), items["categories"].to_list(), strict=True))
    pattern = category_pattern(c for cs in categories.values() for c in (cs or []))
    out = {}
    for user, future in futures.items():
        counts = Counter(c.lower() for item in future for c in (categories.get(item) or []) if not c.startswith("("))
        out[user] = PostTaste(frozenset(c for c, _ in counts.most_common(k)), pattern)
    return out


def respond(items, future: dict[str, float], sim: SimulationConfig, rng: np.random.Generator,
            taste: PostTaste | None = None) -> list[tuple]:
    """The simulated user's events for one page: (item, event, value) in the order they happen.

    `items` are the page's FeedItems; `future` is updated (an engaged future item is consumed).
    With `taste`, generated posts are answered by their text (`PostTaste`).
    """
    out = []
    for item in items:
        out.append((item, "impression", 0.0))
        if rng.random() >= 1.0 / (1.0 + sim.examine_decay * item.position):
            continue  # not looked at
        if taste is not None and item.content_type == "generated":
            p_click, p_hide = taste.probabilities(item.text, sim)
            if rng.random() < p_click:
                out.append((item, "click", 0.0))
                if taste.mentioned(item.text) & taste.favourites and rng.random() < sim.p_like:
                    out.append((item, "like", 0.0))
            elif rng.random() < p_hide:
                out.append((item, "hide", 0.0))
            continue
        in_future = item.item_id in future
        if rng.random() < (sim.p_click_future if in_future else sim.p_click_other):
            out.append((item, "click", 0.0))
            if item.content_type == "account":
                out.append((item, "follow", 0.0))
            elif item.content_type != "generated":
                out.append((item, "watch", float(rng.exponential(sim.watch_s_mean) + 1.0)))
            if in_future and future[item.item_id] >= sim.like_rating and rng.random() < sim.p_like:
                out.append((item, "like", 0.0))
            future.pop(item.item_id, None)
        elif rng.random() < sim.p_hide:
            out.append((item, "hide", 0.0))
    return out


class _Budget:
    """Requests and time left to the whole run (shared by the worker threads)."""

    def __init__(self, max_requests: int, max_seconds: float) -> None:
        self.left, self.deadline = max_requests, time.monotonic() + max_seconds
        self.exhausted = False
        self._lock = threading.Lock()
        self.requests = self.events = 0

    def take(self) -> bool:
        with self._lock:
            if self.left <= 0 or time.monotonic() > self.deadline:
                self.exhausted = True
                return False
            self.left -= 1
            self.requests += 1
            return True


def _session(stub, user: str, future: dict[str, float], sim: SimulationConfig, rng: np.random.Generator,
             api_key: str, overrides: dict[str, str], budget: _Budget,
             contexts: dict[str, frozenset[str]] | None, taste: PostTaste | None = None) -> None:
    from feedcore.proto.feed.v1 import feed_pb2

    cursor = ""
    for _ in range(sim.pages):
        if not budget.take():
            return
        page = stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, page_size=sim.page_size, cursor=cursor,
                                                    experiment_overrides=overrides), timeout=30)
        if contexts is not None and not cursor:  # the truth of a first page: what this user would click
            contexts[page.request_id] = frozenset(future)
        events = [feed_pb2.Event(user_id=user, item_id=i.item_id, content_type=i.content_type, event=e, value=v,
                                 request_id=page.request_id, position=i.position, source=i.source,
                                 experiment_arm=page.experiment_arm, propensity=i.propensity)
                  for i, e, v in respond(page.items, future, sim, rng, taste)]
        if events:
            stub.LogEvents(iter(events), metadata=[("x-api-key", api_key)], timeout=30)
            with budget._lock:
                budget.events += len(events)
        cursor = page.next_cursor
        if not cursor or rng.random() >= sim.p_next_page:
            return


def run_simulation(address: str, futures: dict[str, dict[str, float]], sim: SimulationConfig, experiment: str,
                   control: str, api_key: str, contexts: dict[str, frozenset[str]] | None = None,
                   tastes: dict[str, PostTaste] | None = None) -> SimulationRun:
    """Drive the server at `address` (host:port): a pre-period on `control`, then the experiment.
    With `tastes` (`post_tastes`), users answer generated posts by their text; without, a post is
    answered like any item outside the user's future.

    Users are those with a future (the first `sim.users` by id when set); returns the experiment
    window in the server's clock (this process shares it: the server runs on loopback). With
    `contexts`, each session's first page's request id is mapped there to the user's future items
    at that moment: the simulator's own truth, from which `true_policy_value` computes any
    policy's expected clicks on those pages.
    """
    import grpc

    from feedcore.proto.feed.v1 import feed_pb2_grpc

    users = sorted(futures)[: sim.users or None]
    budget = _Budget(sim.max_requests, sim.max_seconds)
    state = {u: dict(futures[u]) for u in users}
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = feed_pb2_grpc.FeedServiceStub(channel)

        def phase(name: str, sessions: int, overrides: dict[str, str]) -> None:
            def one(user: str) -> None:
                rng = user_rng(sim.seed, user, name)
                for _ in range(sessions):
                    _session(stub, user, state[user], sim, rng, api_key, overrides, budget, contexts,
                             (tastes or {}).get(user))

            with concurrent.futures.ThreadPoolExecutor(sim.workers) as pool:
                for f in [pool.submit(one, u) for u in users]:
                    f.result()

        pre_start = _now_ms()
        phase("pre", sim.pre_sessions, {experiment: control})
        time.sleep(0.01)
        start = _now_ms()
        phase("experiment", sim.sessions, {})
        end = _now_ms() + 1
    logger.info("simulation: %d users, %d requests, %d events%s", len(users), budget.requests, budget.events,
                " (truncated by the budget)" if budget.exhausted else "")
    return SimulationRun(start, end, pre_start, len(users), budget.requests, budget.events, budget.exhausted)


def _now_ms() -> int:
    return int(time.time() * 1000)


def true_policy_value(pages: LoggedPages, policy: TargetPolicy, contexts: dict[str, frozenset[str]],
                      sim: SimulationConfig, samples: int = 500, seed: int = 0) -> tuple[float, float]:
    """The simulator's true value of `policy` on the logged first `pages`: its expected clicks per
    page under the response model (a user looks at position k with probability 1/(1 + decay·k) and
    clicks a looked-at item with p_click_future when it is in their future at that moment, else
    p_click_other), averaged over the pages, with `samples` Plackett–Luce draws per page (Gumbel
    top-K). Returns (value, its Monte Carlo standard error)."""
    k = pages.positions
    examine = 1.0 / (1.0 + sim.examine_decay * np.arange(k))  # (K,)
    logits = policy_scores(pages, policy) / policy.temperature  # (R, N)
    rng = np.random.default_rng(seed)
    per_page = np.empty(len(pages))
    draws = np.empty(len(pages))
    for i, (request_id, items) in enumerate(zip(pages.request_ids, pages.item_ids, strict=True)):
        future = contexts[request_id]
        click = np.array([sim.p_click_future if item in future else sim.p_click_other for item in items])
        noisy = logits[i, : len(items)] + rng.gumbel(size=(samples, len(items)))  # (S, N)
        top = np.argpartition(-noisy, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(top, np.argsort(-np.take_along_axis(noisy, top, 1), axis=1), 1)  # (S, K)
        clicks = (click[order] * examine).sum(axis=1)
        per_page[i], draws[i] = clicks.mean(), clicks.var(ddof=1) / samples
    return float(per_page.mean()), float(np.sqrt(draws.sum()) / len(pages))


@dataclasses.dataclass(frozen=True)
class SimulatedOPE:
    """What off-policy evaluation of a simulated run needs beside its events: the session rankings
    the server logged (`feedcore.events.read_rankings`), the simulator's first-page contexts
    (`run_simulation(contexts=...)`) and the arms' policies (`evaluation.ope_log.arm_policies`)."""

    rankings: pl.DataFrame
    contexts: dict[str, frozenset[str]]
    policies: tuple[TargetPolicy, ...]


@dataclasses.dataclass(frozen=True)
class OPERow:
    """One arm's policy estimated from one arm's pages, beside the simulator's truth."""

    estimates: PolicyEstimates
    truth: float  # the simulator's expected clicks of the target policy on these pages
    truth_se: float  # Monte Carlo
    on_policy: tuple[float, float, float]  # the target arm's own mean clicks per first page, CI


def simulated_ope(events: pl.DataFrame, experiment: str, run: SimulationRun, sim: SimulationConfig,
                  ope: SimulatedOPE) -> list[OPERow]:
    """Every arm's policy estimated (IPS, SNIPS, DR) from every arm's first pages of the experiment
    window, with the simulator's true value on those pages and the target arm's on-policy mean."""
    pages = {p.name: logged_pages(ope.rankings, events, f"{experiment}/{p.name}", run.start_ms, run.end_ms)
             for p in ope.policies}
    own = {name: on_policy_value(p) for name, p in pages.items()}
    rows = []
    for logged in pages.values():
        q_hat = fit_reward_model(logged)
        for policy in ope.policies:
            truth, truth_se = true_policy_value(logged, policy, ope.contexts, sim, seed=len(rows))
            rows.append(OPERow(estimate(logged, policy, q_hat, seed=len(rows)), truth, truth_se, own[policy.name]))
    return rows


def ope_markdown(rows: list[OPERow]) -> str:
    """The off-policy section of a simulated report."""
    def est(e) -> str:
        return f"{e.value:.3f} [{e.ci_low:.3f}, {e.ci_high:.3f}]" + (" ⚠" if e.warnings else "")

    lines = [
        "## Off-policy evaluation\n",
        "Each arm samples its first page by Plackett–Luce over its value scores, and the server logs every "
        "session's ranking (all candidates, their task predictions and propensities). From the first pages one "
        "arm served, IPS, SNIPS and DR (cascade, `evaluation.ope`) estimate each arm's expected clicks per first "
        "page, its policy's propensities recomputed from the logged predictions (`evaluation.ope_log`); the "
        "simulator's true value is that policy's exact expectation on the same pages under the response model "
        "(Monte Carlo over 500 draws a page), and the target arm's own mean is what it got on its pages. "
        "Intervals: 95%, bootstrap over pages; ESS: effective pages of the importance weights; ⚠: fewer than "
        "100 effective pages.\n",
        table(["target arm", "pages of", "pages", "ESS", "IPS", "SNIPS", "DR", "true value (simulator)",
               "target arm's own mean"],
              [[r.estimates.target, r.estimates.logged_by.split("/", 1)[-1], str(r.estimates.pages),
                f"{r.estimates.ips.effective_pages:.0f}", est(r.estimates.ips), est(r.estimates.snips),
                est(r.estimates.dr), f"{r.truth:.3f} ± {r.truth_se:.3f}",
                f"{r.on_policy[0]:.3f} [{r.on_policy[1]:.3f}, {r.on_policy[2]:.3f}]"] for r in rows]),
    ]
    return "\n".join(lines)


def _ope_summary(rows: list[OPERow]) -> list[dict]:
    def one(e) -> dict:
        return {"value": e.value, "ci": [e.ci_low, e.ci_high], "effective_pages": e.effective_pages,
                "warnings": list(e.warnings)}

    return [{"target": r.estimates.target, "logged_by": r.estimates.logged_by, "pages": r.estimates.pages,
             "positions": r.estimates.positions, "ips": one(r.estimates.ips), "snips": one(r.estimates.snips),
             "dr": one(r.estimates.dr), "true_value": r.truth, "true_value_mc_se": r.truth_se,
             "target_on_policy": list(r.on_policy)} for r in rows]


def simulation_report(events: pl.DataFrame, experiment: str, arms: tuple[tuple[str, float], ...],
                      run: SimulationRun, sim: SimulationConfig, out: str | Path, engine_note: str = "",
                      primary: str = "", ope: SimulatedOPE | None = None) -> Path:
    """Analyse a simulated run's event log (`evaluation.ab`; `primary`: the experiment's primary
    metric, "" for the default) and write the report, labelled as a simulation in its title, its
    banner and every figure; with `ope`, an off-policy section (`simulated_ope`)."""
    analysis = analyze(events, ABConfig(experiment, arms, start_ms=run.start_ms, end_ms=run.end_ms,
                                        primary=primary or PRIMARY))
    ope_rows = simulated_ope(events, experiment, run, sim, ope) if ope is not None and ope.policies else []
    figures = ab_figures(analysis)
    for fig in figures.values():
        fig.text(0.99, 0.01, "SIMULATED USERS", ha="right", va="bottom", fontsize=9, color="red", alpha=0.8)
    markdown = ab_markdown(analysis, simulated=True, title=f"SIMULATED A/B run: {experiment}")
    if ope_rows:
        markdown += "\n" + ope_markdown(ope_rows) + "\n"
    noise = {k: v for k, v in dataclasses.asdict(sim).items() if k not in ("workers",)}
    pre = events.filter(pl.col("ts") < run.start_ms)
    markdown += "\n## The simulation\n\n" + SIMULATION_BANNER + "\n" + (
        f"Users: {run.users} simulated users (MovieLens users with held-out future interactions); "
        f"{run.requests} GetFeed requests, {run.events} logged events ({pre.height} in the pre-period, all on "
        f"control); experiment window {run.start_ms}..{run.end_ms} (server ms)"
        + (". **The run was truncated by its request/time budget.**" if run.truncated else ".") + "\n\n"
        + (engine_note + "\n\n" if engine_note else "")
        + "Response model (`evaluation.simulator`): a user looks at position k with probability "
        "1/(1 + examine_decay·k); clicks a looked-at item among their held-out future interactions with "
        "probability p_click_future, any other with p_click_other; likes a clicked future item rated ≥ "
        "like_rating with p_like; watches a clicked movie Exp(watch_s_mean)+1 s; hides a looked-at, "
        "unclicked item with p_hide; reads the next page with p_next_page.\n\n"
        + table(["setting", "value"], [[k, str(v)] for k, v in noise.items()]))
    summary = {"simulated": True, "run": dataclasses.asdict(run), "simulation": noise,
               "srm_flagged": analysis.srm.flagged,
               "metrics": {f"{r.metric}/{r.arm}": {"control": r.result.control, "treatment": r.result.treatment,
                                                   "relative": _finite(r.result.relative),
                                                   "p_value": _finite(r.result.p_value)}
                           for r in analysis.results},
               "ope": _ope_summary(ope_rows)}
    return write_report(out, markdown, figures, {"summary.json": json.dumps(summary, indent=2, sort_keys=True)})


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else x
