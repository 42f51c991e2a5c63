"""Online A/B analysis from the service's event log (`feed ab analyze`).

Input: the events the service logged (`serving.event_log.read_event_log`: one row per event with
``user_id``, ``event``, ``content_type``, ``value`` (seconds for watch / dwell), ``ts`` (ms) and
``experiment_arm`` = ``"<experiment>/<arm>"``) and the experiment as configured (arms and shares).

Method, with the user as the randomisation unit throughout:

1. **Users and arms.** Events of the experiment window (``start_ms <= ts < end_ms``) labelled with the
   experiment's name are aggregated per user. A user logged in more than one arm (a forced
   override, a reshuffled salt) is a *crossover*: counted, reported and left out.
2. **Sample-ratio mismatch.** Users per arm against the configured shares, chi-square; p < 0.001
   flags the split as broken, loudly, at the top of the report: every other number is then suspect.
3. **Metrics** (`METRICS`): per-user means (engagements, clicks, likes, follows, watch and dwell
   seconds per user; hides and reports for guardrails) compared with Welch's test, and ratio
   metrics (CTR = clicks / impressions, generated-post engagement rate) by the delta method over
   user clusters (`evaluation.stats`).
4. **CUPED.** With a pre-period (events before ``start_ms``, whatever arm label they carry), each
   per-user metric is adjusted by the same metric's pre-period value per user (0 for users without
   one) with θ pooled over the arms; the report gives θ and the variance reduction.
5. **Guardrails** (`Guardrail`): a metric that must not get worse; breached when the change is in
   the harmful direction, significant at ``alpha`` and larger than the tolerated relative change.

`analyze` returns an `ABAnalysis`; `ab_report` renders it as markdown with figures.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import polars as pl

from evaluation.report import SIMULATION_BANNER, fmt, pct, table
from evaluation.stats import (
    SRM_ALPHA,
    Comparison,
    SRMResult,
    cuped,
    cuped_theta,
    ratio_mean_and_variance,
    ratio_test,
    srm_test,
    welch_test,
)

ENGAGEMENTS = ("click", "like", "follow", "share")
TIMED = ("watch", "dwell")


@dataclasses.dataclass(frozen=True)
class Metric:
    """A per-user mean (`denominator` None) or a ratio of per-user sums."""

    name: str
    numerator: str
    denominator: str | None = None
    description: str = ""


METRICS: tuple[Metric, ...] = (
    Metric("impressions_per_user", "impressions", description="items shown per user (exposure)"),
    Metric("ctr", "clicks", "impressions", "clicks / impressions"),
    Metric("engagements_per_user", "engagements", description="clicks + likes + follows + shares per user"),
    Metric("clicks_per_user", "clicks"),
    Metric("likes_per_user", "likes"),
    Metric("follows_per_user", "follows"),
    Metric("watch_dwell_s_per_user", "watch_s", description="watch + dwell seconds per user"),
    Metric("generated_engagement_rate", "gen_engagements", "gen_impressions",
           "engagements / impressions of generated posts"),
    Metric("hides_per_user", "hides"),
    Metric("reports_per_user", "reports"),
)
COUNTS = ("impressions", "clicks", "likes", "follows", "shares", "hides", "reports", "engagements", "watch_s",
          "gen_impressions", "gen_engagements")


@dataclasses.dataclass(frozen=True)
class Guardrail:
    """A metric that must not get worse by more than `tolerance` (relative)."""

    metric: str
    lower_is_better: bool = True
    tolerance: float = 0.0


DEFAULT_GUARDRAILS = (
    Guardrail("hides_per_user"),
    Guardrail("reports_per_user"),
    Guardrail("impressions_per_user", lower_is_better=False, tolerance=0.05),
)


@dataclasses.dataclass(frozen=True)
class ABConfig:
    """One analysis: which experiment, its configured arms, the window and the thresholds.

    `start_ms` None: the whole log is the experiment window and there is no pre-period (no CUPED).
    `control` empty: the first arm.
    """

    experiment: str
    arms: tuple[tuple[str, float], ...]
    control: str = ""
    start_ms: int | None = None
    end_ms: int | None = None
    alpha: float = 0.05
    srm_alpha: float = SRM_ALPHA
    cuped: bool = True
    guardrails: tuple[Guardrail, ...] = DEFAULT_GUARDRAILS

    def __post_init__(self) -> None:
        names = [a for a, _ in self.arms]
        if len(names) < 2:
            raise ValueError(f"experiment {self.experiment!r}: an A/B analysis needs at least two arms, got {names}")
        if self.control and self.control not in names:
            raise ValueError(f"control arm {self.control!r} is not an arm of {self.experiment!r} ({names})")

    @property
    def control_arm(self) -> str:
        return self.control or self.arms[0][0]


@dataclasses.dataclass(frozen=True)
class MetricResult:
    """One metric, one treatment arm against control: raw and (when available) CUPED-adjusted."""

    metric: str
    arm: str
    kind: str  # "mean" or "ratio"
    raw: Comparison
    adjusted: Comparison | None = None  # CUPED
    theta: float = float("nan")
    variance_reduction: float = float("nan")  # 1 - var(adjusted) / var(raw), pooled

    @property
    def result(self) -> Comparison:
        """The comparison to read: CUPED-adjusted when it was computed, else raw."""
        return self.adjusted or self.raw


@dataclasses.dataclass(frozen=True)
class GuardrailResult:
    guardrail: Guardrail
    arm: str
    breached: bool
    relative: float
    p_value: float


@dataclasses.dataclass(frozen=True)
class ArmSummary:
    """Exposure and per-arm metric values (mean, standard error) of one arm."""

    arm: str
    users: int
    configured_share: float
    values: dict[str, tuple[float, float]]
    totals: dict[str, float]


@dataclasses.dataclass(frozen=True)
class ABAnalysis:
    config: ABConfig
    arms: tuple[ArmSummary, ...]
    srm: SRMResult
    crossovers: int
    pre_period_users: int
    results: tuple[MetricResult, ...]
    guardrails: tuple[GuardrailResult, ...]
    skipped: tuple[str, ...]  # metrics with no events in the log (e.g. no generated posts served)


def _per_user(events: pl.DataFrame) -> pl.DataFrame:
    """Per-user sums of `COUNTS` from events."""
    e, ct = pl.col("event"), pl.col("content_type")
    return events.group_by("user_id").agg(
        impressions=(e == "impression").sum(),
        clicks=(e == "click").sum(),
        likes=(e == "like").sum(),
        follows=(e == "follow").sum(),
        shares=(e == "share").sum(),
        hides=(e == "hide").sum(),
        reports=(e == "report").sum(),
        engagements=e.is_in(ENGAGEMENTS).sum(),
        watch_s=pl.when(e.is_in(TIMED)).then(pl.col("value")).otherwise(0.0).fill_null(0.0).sum(),
        gen_impressions=((e == "impression") & (ct == "generated")).sum(),
        gen_engagements=(e.is_in(ENGAGEMENTS) & (ct == "generated")).sum(),
    ).with_columns(pl.col(c).cast(pl.Float64) for c in COUNTS)


def user_table(events: pl.DataFrame, config: ABConfig) -> tuple[pl.DataFrame, int, int]:
    """One row per user of the experiment: ``user_id``, ``arm``, the `COUNTS` and their ``pre_``
    pre-period values; plus the number of crossover users left out and of users with pre-period data."""
    ts = pl.col("ts")
    window = pl.lit(True)
    if config.start_ms is not None:
        window = window & (ts >= config.start_ms)
    if config.end_ms is not None:
        window = window & (ts < config.end_ms)
    prefix = f"{config.experiment}/"
    exp = events.filter(window & pl.col("experiment_arm").str.starts_with(prefix)).with_columns(
        arm=pl.col("experiment_arm").str.slice(len(prefix)))
    arms = exp.group_by("user_id").agg(arm=pl.col("arm").first(), arms=pl.col("arm").n_unique())
    crossovers = int((arms["arms"] > 1).sum())
    arms = arms.filter(pl.col("arms") == 1).drop("arms")
    users = arms.join(_per_user(exp), on="user_id", how="left")
    pre_users = 0
    if config.start_ms is not None:
        pre = _per_user(events.filter(ts < config.start_ms))
        pre_users = int(pre.join(users.select("user_id"), on="user_id", how="semi").height)
        users = users.join(pre.rename({c: f"pre_{c}" for c in COUNTS}), on="user_id", how="left")
        users = users.with_columns(pl.col(f"pre_{c}").fill_null(0.0) for c in COUNTS)
    return users.sort("user_id"), crossovers, pre_users


def _arm_value(metric: Metric, rows: pl.DataFrame) -> tuple[float, float]:
    if metric.denominator is None:
        x = rows[metric.numerator].to_numpy()
        return (float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))) if len(x) > 1 else (float("nan"),) * 2
    r, v = ratio_mean_and_variance(rows[metric.numerator].to_numpy(), rows[metric.denominator].to_numpy())
    return r, math.sqrt(v) if np.isfinite(v) else float("nan")


def analyze(events: pl.DataFrame, config: ABConfig, metrics: tuple[Metric, ...] = METRICS) -> ABAnalysis:
    """The whole analysis of one experiment's logged events (see the module docstring)."""
    users, crossovers, pre_users = user_table(events, config)
    by_arm = {name: users.filter(pl.col("arm") == name) for name, _ in config.arms}
    unknown = sorted(set(users["arm"].unique().to_list()) - set(by_arm))
    if unknown:
        raise ValueError(f"the log has arms {unknown} that experiment {config.experiment!r} does not configure "
                         f"({[a for a, _ in config.arms]}): analyse it with the experiment file it ran with")
    srm = srm_test(tuple(by_arm), tuple(by_arm[a].height for a in by_arm), tuple(s for _, s in config.arms),
                   config.srm_alpha)
    skipped = tuple(m.name for m in metrics if users.height == 0 or users[m.denominator or m.numerator].sum() == 0)
    live = [m for m in metrics if m.name not in skipped]
    summaries = tuple(
        ArmSummary(name, by_arm[name].height, share, {m.name: _arm_value(m, by_arm[name]) for m in live},
                   {c: float(by_arm[name][c].sum()) for c in COUNTS})
        for name, share in config.arms)
    control = by_arm[config.control_arm]
    use_cuped = config.cuped and config.start_ms is not None and pre_users > 0
    results = []
    for arm in (a for a, _ in config.arms if a != config.control_arm):
        treatment = by_arm[arm]
        for m in live:
            if m.denominator is not None:
                raw = ratio_test(control[m.numerator].to_numpy(), control[m.denominator].to_numpy(),
                                 treatment[m.numerator].to_numpy(), treatment[m.denominator].to_numpy(), config.alpha)
                results.append(MetricResult(m.name, arm, "ratio", raw))
                continue
            yc, yt = control[m.numerator].to_numpy(), treatment[m.numerator].to_numpy()
            raw = welch_test(yc, yt, config.alpha)
            if not use_cuped:
                results.append(MetricResult(m.name, arm, "mean", raw))
                continue
            # θ from the users of both arms pooled (the estimator is then unbiased for the difference).
            y = np.concatenate([yc, yt])
            x = np.concatenate([control[f"pre_{m.numerator}"].to_numpy(), treatment[f"pre_{m.numerator}"].to_numpy()])
            theta = cuped_theta(y, x)
            adjusted, _ = cuped(y, x, theta)
            adj = welch_test(adjusted[: len(yc)], adjusted[len(yc):], config.alpha)
            reduction = 1.0 - adjusted.var() / y.var() if y.var() > 0 else float("nan")
            results.append(MetricResult(m.name, arm, "mean", raw, adj, theta, float(reduction)))
    guardrails = []
    for g in config.guardrails:
        if g.metric in skipped:  # no such events at all: nothing got worse
            guardrails += [GuardrailResult(g, arm, False, float("nan"), float("nan"))
                           for arm, _ in config.arms if arm != config.control_arm]
        for r in (r for r in results if r.metric == g.metric):
            c = r.result
            harmful = c.delta > 0 if g.lower_is_better else c.delta < 0
            size = abs(c.relative) if np.isfinite(c.relative) else (math.inf if c.delta != 0 else 0.0)
            guardrails.append(GuardrailResult(g, r.arm, bool(harmful and c.significant(config.alpha)
                                                             and size > g.tolerance), c.relative, c.p_value))
    return ABAnalysis(config, summaries, srm, crossovers, pre_users, tuple(results), tuple(guardrails), skipped)


# -- report --------------------------------------------------------------------------------------------
def ab_figures(analysis: ABAnalysis) -> dict:
    """The report's figures: relative lifts with CIs, per-arm values with CIs, users per arm."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    figures = {}
    results = [r for r in analysis.results if np.isfinite(r.result.relative)]
    fig = Figure(figsize=(7, 0.45 * max(len(results), 2) + 1.2))
    ax = fig.subplots()
    for y, r in enumerate(results):
        c = r.result
        lo, hi = c.ci_low / c.control, c.ci_high / c.control
        color = "tab:green" if c.significant(analysis.config.alpha) and c.delta > 0 else (
            "tab:red" if c.significant(analysis.config.alpha) else "tab:gray")
        ax.errorbar(100 * c.relative, y, xerr=[[100 * (c.relative - lo)], [100 * (hi - c.relative)]], fmt="o",
                    color=color, capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(results)), [f"{r.metric}{' (CUPED)' if r.adjusted else ''}\n{r.arm} vs "
                                        f"{analysis.config.control_arm}" for r in results], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"relative change, % (with {100 * (1 - analysis.config.alpha):.0f}% CI)")
    ax.set_title(f"{analysis.config.experiment}: treatment vs control")
    figures["lifts"] = fig

    key = [m for m in ("ctr", "engagements_per_user", "watch_dwell_s_per_user", "impressions_per_user")
           if m in analysis.arms[0].values]
    fig = Figure(figsize=(3.2 * max(len(key), 1), 3))
    axes = fig.subplots(1, max(len(key), 1), squeeze=False)
    for ax, m in zip(axes[0], key, strict=False):
        means = [a.values[m][0] for a in analysis.arms]
        errs = [1.96 * a.values[m][1] for a in analysis.arms]
        ax.bar([a.arm for a in analysis.arms], means, yerr=errs, capsize=4, color="tab:blue", alpha=0.8)
        ax.set_title(m, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("per arm (95% CI)", fontsize=10)
    fig.tight_layout()
    figures["arms"] = fig

    srm = analysis.srm
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    x = np.arange(len(srm.arms))
    ax.bar(x - 0.2, srm.observed, 0.4, label="observed users")
    ax.bar(x + 0.2, srm.expected, 0.4, label="expected (configured shares)")
    ax.set_xticks(x, srm.arms)
    ax.legend(fontsize=8)
    ax.set_title(f"sample ratio: chi2 {srm.chi2:.2f}, p {fmt(srm.p_value)}" + ("  SRM!" if srm.flagged else ""),
                 color="red" if srm.flagged else "black", fontsize=10)
    figures["srm"] = fig
    return figures


def ab_markdown(analysis: ABAnalysis, *, simulated: bool = False, title: str = "",
                figures: tuple[str, ...] = ("lifts", "arms", "srm")) -> str:
    """The report as markdown (figures referenced as ``<name>.png`` beside it)."""
    cfg, srm = analysis.config, analysis.srm
    out = [f"# {title or f'A/B analysis: {cfg.experiment}'}\n"]
    if simulated:
        out.append(SIMULATION_BANNER)
    if srm.flagged:
        out.append(f"> **SAMPLE RATIO MISMATCH: the split is broken (chi-square p = {fmt(srm.p_value)} < "
                   f"{srm.alpha}).** Users per arm {dict(zip(srm.arms, srm.observed, strict=True))} do not match "
                   f"the configured shares {dict(cfg.arms)}. Do not trust the metrics below until the cause "
                   "(assignment, logging loss in one arm, bots, a crashing client) is found.\n")
    else:
        out.append(f"Sample ratio: OK (chi-square {srm.chi2:.2f}, p = {fmt(srm.p_value)}; flagged below "
                   f"{srm.alpha}).\n")
    breached = [g for g in analysis.guardrails if g.breached]
    if breached:
        out.append("> **GUARDRAIL BREACHED:** " + "; ".join(
            f"{g.guardrail.metric} in {g.arm} ({pct(g.relative)}, p = {fmt(g.p_value)})" for g in breached) + "\n")
    window = ("the whole log" if cfg.start_ms is None else
              f"events from ts {cfg.start_ms}" + (f" to {cfg.end_ms}" if cfg.end_ms else ""))
    out.append(f"Window: {window}. Control: `{cfg.control_arm}`. Randomisation unit: user; alpha = {cfg.alpha}. "
               f"Crossover users (logged in several arms, left out): {analysis.crossovers}. Users with "
               f"pre-period data (CUPED): {analysis.pre_period_users}.\n")
    out.append("## Exposure per arm\n")
    out.append(table(["arm", "configured share", "users", "observed share", "impressions", "clicks", "engagements",
                      "watch+dwell s"],
                     [[a.arm, f"{a.configured_share:.3f}", str(a.users),
                       f"{a.users / max(1, sum(s.users for s in analysis.arms)):.3f}",
                       f"{a.totals['impressions']:.0f}", f"{a.totals['clicks']:.0f}",
                       f"{a.totals['engagements']:.0f}", f"{a.totals['watch_s']:.0f}"] for a in analysis.arms]))
    out.append("\n## Metrics\n")
    out.append("Per-user means: Welch's t-test (CUPED-adjusted where a pre-period exists: θ pooled over arms). "
               "Ratio metrics: delta method over user clusters, normal test.\n\n")
    rows = []
    for r in analysis.results:
        c = r.result
        rows.append([r.metric, r.arm, fmt(c.control), fmt(c.treatment), fmt(c.delta), pct(c.relative),
                     f"[{fmt(c.ci_low)}, {fmt(c.ci_high)}]", fmt(c.p_value),
                     "**yes**" if c.significant(cfg.alpha) else "no",
                     "delta method" if r.kind == "ratio" else ("CUPED" if r.adjusted else "Welch"),
                     "" if r.adjusted is None else f"θ={r.theta:.3f}, -{100 * r.variance_reduction:.1f}% var"])
    out.append(table(["metric", "arm", "control", "treatment", "delta", "relative", "CI of delta", "p",
                      "significant", "method", "CUPED"], rows))
    if analysis.skipped:
        out.append(f"\nNot computed (no such events in the log): {', '.join(analysis.skipped)}.\n")
    out.append("\n## Guardrails\n")
    out.append(table(["metric", "arm", "must not", "tolerance", "relative", "p", "status"],
                     [[g.guardrail.metric, g.arm, "rise" if g.guardrail.lower_is_better else "fall",
                       f"{100 * g.guardrail.tolerance:.0f}%", pct(g.relative), fmt(g.p_value),
                       "**BREACHED**" if g.breached else ("ok (no events)" if g.guardrail.metric in analysis.skipped
                                                          else "ok")] for g in analysis.guardrails]))
    out.append("\n## Figures\n")
    out += [f"![{name}]({name}.png)\n" for name in figures]
    return "\n".join(out)
