"""Online A/B analysis from the service's event log (`feed ab analyze`).

Input: the events the service logged (`feedcore.events.read_event_log`: one row per event with
``user_id``, ``event``, ``content_type``, ``value`` (seconds for watch / dwell), ``ts`` (ms) and
``experiment_arm`` = ``"<experiment>/<arm>"``) and the experiment as configured (arms and shares).

Method, with the user as the randomisation unit throughout:

1. **Users and arms.** Events of the experiment window (``start_ms <= ts < end_ms``) labelled with the
   experiment's name are aggregated per user. A user logged in more than one arm (a forced
   override, a reshuffled salt) is a *crossover*: counted, reported and left out. An arm with a
   configured share of 0 (an exploring arm that per-request overrides put users in) is reported
   but not compared: its users were not randomised.
2. **Sample-ratio mismatch.** Users per live arm against the configured shares, chi-square; p < 0.001
   flags the split as broken, loudly, at the top of the report: every other number is then suspect.
   Users of share-0 arms are counted beside the test, not in it.
3. **Metrics** (`METRICS`): per-user means (engagements, clicks, likes, follows, watch and dwell
   seconds per user; hides and reports for guardrails) compared with Welch's test, and ratio
   metrics (CTR = clicks / impressions, generated-post engagement rate) by the delta method over
   user clusters, or the jackknife and Student's t in an arm under ``min_arm_users`` users
   (`evaluation.stats`). Every comparison has Fieller's interval of the relative change.
4. **Multiple comparisons: a gate, then corrections within each family.** Each metric has a role:
   the experiment's declared ``primary`` metric (tested at ``alpha``; Holm over the treatment arms
   when there are several), the guardrails (their own non-inferiority tests, step 6, never gated:
   harm is looked for whatever the primary says) and every other metric, exploratory. The
   exploratory metrics of an arm are tested only when that arm's primary result is significant
   (serial gatekeeping), and then with Benjamini–Hochberg (a false discovery rate of ``alpha``);
   otherwise the report shows their p-values as "not tested". So under the null the report claims
   a primary or exploratory effect with probability at most ``alpha`` (the gate's), plus the
   guardrails' breach rate (one-sided, alpha / 2 at most, far less on A/A). Without the gate each
   family held its level but the whole report did not (8.2% of A/A runs claimed something, 25.2%
   with no correction at all: benchmarks/stats_audit.py). "Significant" reads the corrected p.
5. **CUPED.** Each user's pre-period is the events logged before that user's first exposure in the
   window, whatever their label; each per-user metric is adjusted by the same metric's pre-period
   value (0 for users without one) with θ pooled over the arms; the report gives θ and the variance
   reduction. A pre-period that holds events logged in a treatment arm of this experiment (the
   experiment began before ``start_ms``) is refused with a ValueError: it would absorb the effect.
   Events in the control arm may precede (a pre-period run on control, as `feed ab simulate` does).
6. **Guardrails** (`Guardrail`): a metric that must not get worse by more than its tolerated
   relative change, read as a non-inferiority test of the relative change's Fieller bound against
   the tolerance (one-sided at alpha/2, the bound of the two-sided interval; Holm over the guardrail
   tests): **shown safe** (the worst plausible change is within tolerance), **breached** (the change
   is shown worse than the tolerance), or **inconclusive**.

`analyze` returns an `ABAnalysis`, with its `warnings` (arms too small to read, share-0 arms with
users, a primary metric without events); `ab_markdown` and `ab_figures` render it.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import polars as pl

from evaluation.report import SIMULATION_BANNER, fmt, pct, table
from evaluation.stats import (
    SMALL_ARM_USERS,
    SRM_ALPHA,
    Comparison,
    SRMResult,
    benjamini_hochberg,
    cuped,
    cuped_theta,
    holm,
    ratio_mean_and_variance,
    ratio_test,
    relative_p,
    srm_test,
    welch_test,
)

logger = logging.getLogger(__name__)

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
PRIMARY = "engagements_per_user"

SHOWN_SAFE, INCONCLUSIVE, BREACHED, NO_EVENTS = "shown safe", "inconclusive", "breached", "no events"


@dataclasses.dataclass(frozen=True)
class Guardrail:
    """A metric that must not get worse by more than `tolerance` (relative, the non-inferiority
    margin: a product decision; with 0 only an improvement can be shown safe)."""

    metric: str
    lower_is_better: bool = True
    tolerance: float = 0.0


DEFAULT_GUARDRAILS = (
    Guardrail("hides_per_user", tolerance=0.05),
    Guardrail("reports_per_user", tolerance=0.05),
    Guardrail("impressions_per_user", lower_is_better=False, tolerance=0.05),
)


@dataclasses.dataclass(frozen=True)
class ABConfig:
    """One analysis: which experiment, its configured arms, the window and the thresholds.

    `start_ms` None: the whole log is the experiment window. `control` empty: the first arm.
    `primary`: the metric the experiment is decided on (tested without correction for the other
    metrics); `min_arm_users`: below this many users an arm is too small to read (a warning, and
    small-sample tests for ratio metrics).
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
    primary: str = PRIMARY
    min_arm_users: int = SMALL_ARM_USERS

    def __post_init__(self) -> None:
        names = [a for a, _ in self.arms]
        if len(names) < 2:
            raise ValueError(f"experiment {self.experiment!r}: an A/B analysis needs at least two arms, got {names}")
        if self.control and self.control not in names:
            raise ValueError(f"control arm {self.control!r} is not an arm of {self.experiment!r} ({names})")
        if dict(self.arms)[self.control_arm] <= 0:
            raise ValueError(f"control arm {self.control_arm!r} of {self.experiment!r} has share 0: its users are "
                             "not randomised; name a control with a share (`control`)")

    @property
    def control_arm(self) -> str:
        return self.control or self.arms[0][0]

    @property
    def treatment_arms(self) -> tuple[str, ...]:
        """The arms compared with control: every other arm with a share above 0."""
        return tuple(a for a, share in self.arms if a != self.control_arm and share > 0)


@dataclasses.dataclass(frozen=True)
class MetricResult:
    """One metric, one treatment arm against control: raw and (when available) CUPED-adjusted.

    `role`: "primary", "guardrail" or "exploratory"; `corrected_p`: the p-value adjusted for the
    other tests of its role (Holm for the primary over arms and for guardrails, Benjamini–Hochberg
    for exploratory metrics), the one `significant` reads. `tested` is False for an exploratory
    metric of an arm whose primary result was not significant (the gate was closed): it is then
    never significant, and `corrected_p` is NaN.
    """

    metric: str
    arm: str
    kind: str  # "mean" or "ratio"
    raw: Comparison
    adjusted: Comparison | None = None  # CUPED
    theta: float = float("nan")
    variance_reduction: float = float("nan")  # 1 - var(adjusted) / var(raw), pooled
    role: str = "exploratory"
    corrected_p: float = float("nan")
    tested: bool = True

    @property
    def result(self) -> Comparison:
        """The comparison to read: CUPED-adjusted when it was computed, else raw."""
        return self.adjusted or self.raw

    @property
    def correction(self) -> str:
        if not self.tested:
            return "not tested: the primary was not significant"
        return {"primary": "Holm over arms", "guardrail": "Holm"}.get(self.role, "Benjamini-Hochberg, gated")

    def significant(self, alpha: float = 0.05) -> bool:
        return bool(self.tested and self.corrected_p < alpha)


@dataclasses.dataclass(frozen=True)
class GuardrailResult:
    """A guardrail's non-inferiority verdict for one arm: `verdict` is "shown safe", "inconclusive",
    "breached" or "no events"; `p_safe` and `p_breach` are the Holm-adjusted one-sided p-values of
    "the harm is below the tolerance" and "above it", read at alpha / 2."""

    guardrail: Guardrail
    arm: str
    verdict: str
    relative: float
    relative_ci_low: float
    relative_ci_high: float
    p_safe: float
    p_breach: float

    @property
    def breached(self) -> bool:
        return self.verdict == BREACHED


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
    warnings: tuple[str, ...] = ()  # what makes parts of the analysis hard to read


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
    """One row per user of the experiment: ``user_id``, ``arm``, the `COUNTS` and (with CUPED) their
    ``pre_`` values over the user's pre-period, the events before their first exposure in the
    window; plus the number of crossover users left out and of users with pre-period events.

    Raises ValueError when a user's pre-period holds events logged in a treatment arm."""
    ts = pl.col("ts")
    window = pl.lit(True)
    if config.start_ms is not None:
        window = window & (ts >= config.start_ms)
    if config.end_ms is not None:
        window = window & (ts < config.end_ms)
    prefix = f"{config.experiment}/"
    exp = events.filter(window & pl.col("experiment_arm").str.starts_with(prefix)).with_columns(
        arm=pl.col("experiment_arm").str.slice(len(prefix)))
    arms = exp.group_by("user_id").agg(arm=pl.col("arm").first(), arms=pl.col("arm").n_unique(),
                                       first_ts=ts.min())
    crossovers = int((arms["arms"] > 1).sum())
    arms = arms.filter(pl.col("arms") == 1).drop("arms")
    users = arms.drop("first_ts").join(_per_user(exp), on="user_id", how="left")
    pre_users = 0
    if config.cuped:
        pre = events.join(arms.select("user_id", "first_ts"), on="user_id", how="inner").filter(
            ts < pl.col("first_ts"))
        label = pl.col("experiment_arm")
        treated = pre.filter(label.str.starts_with(prefix) & (label != prefix + config.control_arm))
        if treated.height:
            first = treated.sort("ts").row(0, named=True)
            raise ValueError(
                f"the CUPED pre-period overlaps logged exposure to a treatment arm: {treated['user_id'].n_unique()} "
                f"users have {treated.height} events in {sorted(treated['experiment_arm'].unique().to_list())} "
                f"before their first exposure in the analysis window (the first at ts {first['ts']}, user "
                f"{first['user_id']!r}), so the experiment began before start_ms={config.start_ms} and a "
                f"pre-period taken there would absorb the effect. Set start_ms to the experiment's real start "
                f"(at most {first['ts']}), or analyse this later window without CUPED (cuped=False)")
        pre = _per_user(pre.drop("first_ts"))
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


def _compare(m: Metric, control: pl.DataFrame, treatment: pl.DataFrame, arm: str, config: ABConfig,
             use_cuped: bool) -> MetricResult:
    if m.denominator is not None:
        raw = ratio_test(control[m.numerator].to_numpy(), control[m.denominator].to_numpy(),
                         treatment[m.numerator].to_numpy(), treatment[m.denominator].to_numpy(), config.alpha,
                         config.min_arm_users)
        return MetricResult(m.name, arm, "ratio", raw)
    yc, yt = control[m.numerator].to_numpy(), treatment[m.numerator].to_numpy()
    raw = welch_test(yc, yt, config.alpha)
    if not use_cuped:
        return MetricResult(m.name, arm, "mean", raw)
    # θ from the users of both arms pooled (the estimator is then unbiased for the difference).
    y = np.concatenate([yc, yt])
    x = np.concatenate([control[f"pre_{m.numerator}"].to_numpy(), treatment[f"pre_{m.numerator}"].to_numpy()])
    theta = cuped_theta(y, x)
    adjusted, _ = cuped(y, x, theta)
    adj = welch_test(adjusted[: len(yc)], adjusted[len(yc):], config.alpha)
    reduction = 1.0 - adjusted.var() / y.var() if y.var() > 0 else float("nan")
    return MetricResult(m.name, arm, "mean", raw, adj, theta, float(reduction))


def _with_corrections(results: list[MetricResult], config: ABConfig) -> tuple[MetricResult, ...]:
    """Each result's role and its p-value corrected within its role's family; an arm's exploratory
    metrics are tested only when its primary result is significant (the gate)."""
    guarded = {g.metric for g in config.guardrails}
    role = [("primary" if r.metric == config.primary else "guardrail" if r.metric in guarded else "exploratory")
            for r in results]
    corrected = np.full(len(results), np.nan)
    for name, adjust in (("primary", holm), ("guardrail", holm)):
        family = [i for i, x in enumerate(role) if x == name]
        if family:
            corrected[family] = adjust(np.array([results[i].result.p_value for i in family]))
    gate_open = {r.arm for r, x, p in zip(results, role, corrected, strict=True) if x == "primary" and p < config.alpha}
    tested = [x != "exploratory" or r.arm in gate_open for r, x in zip(results, role, strict=True)]
    family = [i for i, x in enumerate(role) if x == "exploratory" and tested[i]]
    if family:
        corrected[family] = benjamini_hochberg(np.array([results[i].result.p_value for i in family]))
    return tuple(dataclasses.replace(r, role=x, corrected_p=float(p), tested=t)
                 for r, x, p, t in zip(results, role, corrected, tested, strict=True))


def _guardrail_verdicts(results: tuple[MetricResult, ...], skipped: tuple[str, ...],
                        config: ABConfig) -> tuple[GuardrailResult, ...]:
    """Non-inferiority of every guardrail in every treatment arm, Holm over all of them."""
    rows, p_safe, p_breach = [], [], []
    for g in config.guardrails:
        for r in (r for r in results if r.metric == g.metric):
            c = r.result
            # Harm is a rise of a lower-is-better metric, a fall of a higher-is-better one.
            bound = g.tolerance if g.lower_is_better else -g.tolerance
            rows.append((g, r.arm, c))
            p_safe.append(relative_p(c, bound, greater=not g.lower_is_better))
            p_breach.append(relative_p(c, bound, greater=g.lower_is_better))
    p_safe, p_breach = holm(np.array(p_safe)), holm(np.array(p_breach))
    out = []
    for (g, arm, c), ps, pb in zip(rows, p_safe, p_breach, strict=True):
        verdict = SHOWN_SAFE if ps < config.alpha / 2 else BREACHED if pb < config.alpha / 2 else INCONCLUSIVE
        out.append(GuardrailResult(g, arm, verdict, c.relative, c.relative_ci_low, c.relative_ci_high, float(ps),
                                   float(pb)))
    nan = float("nan")
    out += [GuardrailResult(g, arm, NO_EVENTS, nan, nan, nan, nan, nan)  # no such events at all
            for g in config.guardrails if g.metric in skipped for arm in config.treatment_arms]
    return tuple(out)


def analyze(events: pl.DataFrame, config: ABConfig, metrics: tuple[Metric, ...] = METRICS) -> ABAnalysis:
    """The whole analysis of one experiment's logged events (see the module docstring)."""
    if config.primary not in {m.name for m in metrics}:
        raise ValueError(f"primary metric {config.primary!r} is not one of the metrics analysed "
                         f"({[m.name for m in metrics]})")
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
    use_cuped = config.cuped and pre_users > 0
    results = _with_corrections([_compare(m, control, by_arm[arm], arm, config, use_cuped)
                                 for arm in config.treatment_arms for m in live], config)
    warnings = [f"arm `{arm}` has share 0 but {n} users (per-request overrides): not randomised, so left out of "
                "the sample-ratio test and of the comparisons" for arm, n in srm.untested]
    warnings += [f"arm `{a.arm}` has {a.users} users (< {config.min_arm_users}): too small to read; its intervals "
                 "are approximate and false positives run above alpha with skewed per-user metrics"
                 for a in summaries if a.configured_share > 0 and a.users < config.min_arm_users]
    if config.primary in skipped:
        warnings.append(f"the primary metric `{config.primary}` has no events: no confirmatory result, and the "
                        "exploratory metrics, gated by it, are not tested")
    for w in warnings:
        logger.warning("%s: %s", config.experiment, w)
    return ABAnalysis(config, summaries, srm, crossovers, pre_users, results,
                      _guardrail_verdicts(results, skipped, config), skipped, tuple(warnings))


# -- report --------------------------------------------------------------------------------------------
def ab_figures(analysis: ABAnalysis) -> dict:
    """The report's figures: relative lifts with Fieller CIs, per-arm values with CIs, users per arm."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    alpha = analysis.config.alpha
    figures = {}
    results = [r for r in analysis.results if np.isfinite(r.result.relative)]
    fig = Figure(figsize=(7, 0.45 * max(len(results), 2) + 1.2))
    ax = fig.subplots()
    for y, r in enumerate(results):
        c = r.result
        color = "tab:green" if r.significant(alpha) and c.delta > 0 else (
            "tab:red" if r.significant(alpha) else "tab:gray")
        if np.isfinite(c.relative_ci_low) and np.isfinite(c.relative_ci_high):
            ax.errorbar(100 * c.relative, y, xerr=[[100 * max(c.relative - c.relative_ci_low, 0)],
                                                   [100 * max(c.relative_ci_high - c.relative, 0)]],
                        fmt="o", color=color, capsize=3)
        else:  # the control value is not distinguishable from 0: no bounded interval
            ax.plot(100 * c.relative, y, "x", color=color)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(results)), [f"{r.metric}{' (CUPED)' if r.adjusted else ''} [{r.role}]\n{r.arm} vs "
                                        f"{analysis.config.control_arm}" for r in results], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"relative change, % (Fieller {100 * (1 - alpha):.0f}% CI; x: unbounded; colour: significant "
                  "after correction)")
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


def _interval(low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return "n/a"
    return f"[{pct(low)}, {pct(high)}]" if np.isfinite(low) and np.isfinite(high) else "unbounded"


def ab_markdown(analysis: ABAnalysis, *, simulated: bool = False, title: str = "",
                figures: tuple[str, ...] = ("lifts", "arms", "srm")) -> str:
    """The report as markdown (figures referenced as ``<name>.png`` beside it)."""
    cfg, srm = analysis.config, analysis.srm
    out = [f"# {title or f'A/B analysis: {cfg.experiment}'}\n"]
    if simulated:
        out.append(SIMULATION_BANNER)
    live = {a: s for a, s in cfg.arms if s > 0}
    if srm.flagged:
        out.append(f"> **SAMPLE RATIO MISMATCH: the split is broken (chi-square p = {fmt(srm.p_value)} < "
                   f"{srm.alpha}).** Users per arm {dict(zip(srm.arms, srm.observed, strict=True))} do not match "
                   f"the configured shares {live}. Do not trust the metrics below until the cause "
                   "(assignment, logging loss in one arm, bots, a crashing client) is found.\n")
    else:
        out.append(f"Sample ratio: OK (chi-square {srm.chi2:.2f}, p = {fmt(srm.p_value)}; flagged below "
                   f"{srm.alpha}).\n")
    breached = [g for g in analysis.guardrails if g.breached]
    if breached:
        out.append("> **GUARDRAIL BREACHED:** " + "; ".join(
            f"{g.guardrail.metric} in {g.arm} ({pct(g.relative)}, CI {_interval(g.relative_ci_low, g.relative_ci_high)}"
            f" beyond the tolerated {pct(g.guardrail.tolerance if g.guardrail.lower_is_better else -g.guardrail.tolerance)})"
            for g in breached) + "\n")
    if analysis.warnings:
        out.append("> **Read with care:**\n" + "\n".join(f"> - {w}" for w in analysis.warnings) + "\n")
    window = ("the whole log" if cfg.start_ms is None else
              f"events from ts {cfg.start_ms}" + (f" to {cfg.end_ms}" if cfg.end_ms else ""))
    out.append(f"Window: {window}. Control: `{cfg.control_arm}`. Randomisation unit: user; alpha = {cfg.alpha}. "
               f"Crossover users (logged in several arms, left out): {analysis.crossovers}. Users with "
               f"pre-period data (CUPED, each user's events before their first exposure): "
               f"{analysis.pre_period_users}.\n")
    out.append("## Exposure per arm\n")
    total = max(1, sum(s.users for s in analysis.arms if s.configured_share > 0))
    out.append(table(["arm", "configured share", "users", "observed share", "impressions", "clicks", "engagements",
                      "watch+dwell s"],
                     [[a.arm, f"{a.configured_share:.3f}", str(a.users),
                       f"{a.users / total:.3f}" if a.configured_share > 0 else "not randomised",
                       f"{a.totals['impressions']:.0f}", f"{a.totals['clicks']:.0f}",
                       f"{a.totals['engagements']:.0f}", f"{a.totals['watch_s']:.0f}"] for a in analysis.arms]))
    guarded = ", ".join(f"`{g.metric}`" for g in cfg.guardrails) or "none"
    out.append("\n## Metrics\n")
    out.append(f"Primary metric: `{cfg.primary}`, read at alpha = {cfg.alpha} (Holm over the treatment arms when "
               f"there are several). Every other metric is exploratory, and gated: an arm's exploratory metrics are "
               f"tested only when its primary result is significant, then with Benjamini-Hochberg (a false "
               f"discovery rate of {cfg.alpha}), so the whole report claims an effect that is not there at most "
               f"about alpha of the time. Guardrails ({guarded}) are never gated: read by their verdicts below. "
               "\"Significant\" reads the corrected p. Per-user means: Welch's t-test (CUPED-adjusted where a pre-period exists: θ pooled "
               "over arms). Ratio metrics: delta method over user clusters, normal test (jackknife and Student's "
               f"t below {cfg.min_arm_users} users in an arm). Relative change: Fieller's interval.\n\n")
    # A guardrail is read by its verdict (below), not by whether it changed at all.
    verdicts = {(g.guardrail.metric, g.arm): f"see guardrails: {g.verdict}" for g in analysis.guardrails}
    rows = []
    for r in analysis.results:
        c = r.result
        rows.append([r.metric, f"**{r.role}**" if r.role == "primary" else r.role, r.arm, fmt(c.control),
                     fmt(c.treatment), pct(c.relative), _interval(c.relative_ci_low, c.relative_ci_high),
                     f"[{fmt(c.ci_low)}, {fmt(c.ci_high)}]", fmt(c.p_value), f"{fmt(r.corrected_p)} ({r.correction})" if r.tested else r.correction,
                     verdicts.get((r.metric, r.arm), "**yes**" if r.significant(cfg.alpha) else
                                  "no" if r.tested else "not tested"),
                     "delta method" if r.kind == "ratio" and not np.isfinite(c.df) else (
                         "jackknife, t" if r.kind == "ratio" else ("CUPED" if r.adjusted else "Welch")),
                     "" if r.adjusted is None else f"θ={r.theta:.3f}, -{100 * r.variance_reduction:.1f}% var"])
    out.append(table(["metric", "role", "arm", "control", "treatment", "relative", "CI of relative", "CI of delta",
                      "p", "corrected p", "significant", "method", "CUPED"], rows))
    if analysis.skipped:
        out.append(f"\nNot computed (no such events in the log): {', '.join(analysis.skipped)}.\n")
    out.append("\n## Guardrails\n")
    out.append(f"Non-inferiority: **shown safe** when the relative change's {100 * (1 - cfg.alpha):.0f}% bound on the "
               "harmful side is within the tolerance, **breached** when the other bound is beyond it, "
               "**inconclusive** otherwise (one-sided p-values, Holm over the guardrail tests, read at alpha/2).\n\n")
    out.append(table(["metric", "arm", "must not", "tolerance", "relative", "CI of relative", "p (safe)", "p (breach)",
                      "verdict"],
                     [[g.guardrail.metric, g.arm, "rise" if g.guardrail.lower_is_better else "fall",
                       f"{100 * g.guardrail.tolerance:.0f}%", pct(g.relative),
                       _interval(g.relative_ci_low, g.relative_ci_high), fmt(g.p_safe), fmt(g.p_breach),
                       "**BREACHED**" if g.breached else g.verdict] for g in analysis.guardrails]))
    out.append("\n## Figures\n")
    out += [f"![{name}]({name}.png)\n" for name in figures]
    return "\n".join(out)
