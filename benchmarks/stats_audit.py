"""The experiment-statistics audit (issue 22): each check's expected value against the measured one,
before and after the fixes, by simulation against known answers.

    nice -n 10 .venv/bin/python benchmarks/stats_audit.py [--scale 1.0]

Everything runs through the project's public functions (`evaluation.ab.analyze`, `evaluation.stats`,
`evaluation.ope`, `evaluation.compare.compare_scores`) on synthetic data with a planted truth
(`evaluation.synthetic`). "Before" is measured where the old behaviour can still be computed: the
uncorrected p-values the report used to flag, a ratio test with the small-sample switch off
(`small_arm=0`: delta method and z, as before), the normal interval from an estimate's standard
error, the difference's interval divided by the control mean, the old guardrail rule, and CUPED
with the pre-period taken as every event before `start_ms` (rebuilt here in a few lines, since
`analyze` now refuses it). `--scale` multiplies every number of runs (0.2 for a quick look).
Writes benchmarks/results/stats_audit.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl
from scipy import stats as sps
from tqdm import tqdm

from evaluation.ab import BREACHED, SHOWN_SAFE, ABConfig, analyze
from evaluation.compare import CompareConfig, compare_scores
from evaluation.ope import (
    OPEWarning,
    doubly_robust,
    ips,
    snips,
)
from evaluation.stats import benjamini_hochberg, cuped, ratio_test, srm_test, welch_test
from evaluation.synthetic import (
    PlantedAB,
    equal_held_out_models,
    planted_policy_case,
    planted_run,
)

OUT = Path(__file__).parent / "results" / "stats_audit.json"
ARMS = (("control", 0.5), ("treatment", 0.5))
HOUR_MS = 3_600_000


@dataclasses.dataclass
class Row:
    check: str
    expected: str
    before: str
    after: str
    setup: str


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _runs(n: int, scale: float) -> int:
    return max(10, int(round(n * scale)))


# -- checks ------------------------------------------------------------------------------------------------
def srm_checks(scale: float) -> list[Row]:
    rng = np.random.default_rng(0)
    try:  # the old srm_test: total over every arm, chi-square over the live ones
        obs, shares = np.array([1000.0, 1000, 50]), np.array([0.5, 0.5, 0.0])
        sps.chisquare(obs[:2], (obs.sum() * shares / shares[:2].sum())[:2])
        before = "no crash"
    except ValueError as e:
        before = f"ValueError ({str(e)[:40]}...)"
    after = srm_test(("a", "b", "x"), (1000, 1000, 50), (0.5, 0.5, 0.0))
    runs = _runs(4000, scale)
    false = np.mean([srm_test(("a", "b"), tuple(rng.multinomial(20_000, [0.5, 0.5])), (0.5, 0.5)).flagged
                     for _ in range(runs)])
    detect = np.mean([srm_test(("a", "b"), tuple(rng.multinomial(200_000, [0.505, 0.495])), (0.5, 0.5)).flagged
                      for _ in range(runs)])
    return [Row("SRM with a share-0 arm holding users", "no crash; share-0 users reported", before,
                f"p = {after.p_value:.2f}, untested {after.untested}", "(1000, 1000, 50) users, shares (0.5, 0.5, 0)"),
            Row("SRM false alarms at p < 0.001", "0.1%", "", _pct(false), f"{runs} A/A splits of 20k users"),
            Row("SRM detects a 50.5/49.5 split", "high", "", _pct(detect), f"{runs} splits of 200k users")]


def _naive_relative_ci(c) -> tuple[float, float]:
    return c.ci_low / c.control, c.ci_high / c.control


def coverage_checks(scale: float) -> list[Row]:
    """Planted +10% click lift: the relative change of every click-driven metric is +10%,
    impressions' 0; CI coverage, CUPED's bias and variance reduction, and the lifts figure."""
    truth = {"impressions_per_user": 0.0, "ctr": 0.10, "engagements_per_user": 0.10, "clicks_per_user": 0.10}
    rows = []
    for label, arms, users, n in (("50/50", ARMS, 1000, 400), ("90/10", (("control", 0.9), ("treatment", 0.1)),
                                                                   2000, 400)):
        runs = _runs(n, scale)
        cover: dict[str, list[bool]] = {}
        naive, fieller, lifts, reduction = [], [], [], []
        for seed in tqdm(range(runs), desc=f"coverage {label}", leave=False):
            plan, log = planted_run(seed, users, arms, click_lift={"treatment": 0.10})
            analysis = analyze(log, ABConfig(plan.experiment, arms, start_ms=plan.start_ms))
            for r in analysis.results:
                if r.metric not in truth:
                    continue
                c, t = r.result, truth[r.metric]
                name = {"ctr": "delta-method ratio"}.get(r.metric, f"{r.metric} (CUPED)")
                cover.setdefault(name, []).append(c.relative_ci_low <= t <= c.relative_ci_high)
                if r.metric == "clicks_per_user":
                    raw = r.raw
                    cover.setdefault("clicks_per_user (Welch, raw)", []).append(
                        raw.relative_ci_low <= t <= raw.relative_ci_high)
                    lo, hi = _naive_relative_ci(c)
                    naive.append(lo <= t <= hi)
                    fieller.append(c.relative_ci_low <= t <= c.relative_ci_high)
                    lifts.append(c.relative)
                    reduction.append(r.variance_reduction)
        for name, c in cover.items():
            rows.append(Row(f"coverage of the relative change, {name}, {label}", "95%", "", _pct(np.mean(c)),
                            f"{runs} runs, {users} users, planted +10% clicks"))
        rows.append(Row(f"lifts figure: relative CI coverage (clicks, CUPED), {label}", "95%",
                        f"{_pct(np.mean(naive))} (CI of delta / control)", f"{_pct(np.mean(fieller))} (Fieller)",
                        f"{runs} runs, {users} users"))
        if label == "50/50":
            rows.append(Row("CUPED lift (clicks), mean over runs", "+10.0%", "", f"{100 * np.mean(lifts):+.2f}%",
                            f"{runs} runs"))
            rows.append(Row("CUPED variance reduction (clicks)", "> 0", "", _pct(np.mean(reduction)), f"{runs} runs"))
    return rows


def family_wise_checks(scale: float) -> list[Row]:
    runs = _runs(500, scale)
    raw = 0
    claims = {"primary": 0, "guardrail": 0, "exploratory": 0, "breached": 0, "report": 0, "any flag": 0,
              "ungated exploratory": 0, "ungated report": 0}
    for seed in tqdm(range(10_000, 10_000 + runs), desc="A/A family-wise", leave=False):
        plan, log = planted_run(seed, 1000, hide_prob={"control": 0.01, "treatment": 0.01})
        analysis = analyze(log, ABConfig(plan.experiment, ARMS, start_ms=plan.start_ms))
        raw += any(r.result.p_value < 0.05 for r in analysis.results)
        f = {role: any(r.significant() for r in analysis.results if r.role == role)
             for role in ("primary", "guardrail", "exploratory")}
        f["breached"] = any(g.breached for g in analysis.guardrails)
        f["report"] = f["primary"] or f["exploratory"] or f["breached"]
        # Without the gate (the previous fix): Benjamini-Hochberg over the exploratory metrics regardless.
        exploratory = np.array([r.result.p_value for r in analysis.results if r.role == "exploratory"])
        f["ungated exploratory"] = bool((benjamini_hochberg(exploratory) < 0.05).any())
        f["ungated report"] = f["primary"] or f["ungated exploratory"] or f["breached"]
        f["any flag"] = f["report"] or f["guardrail"]
        for k, v in f.items():
            claims[k] += v
    setup = f"{runs} A/A runs, 1000 users, 8 metrics"
    return [Row("A/A: at least one metric significant", "<= 7% after correction", _pct(raw / runs),
                _pct(claims["report"] / runs) + " (primary, gated exploratory or a guardrail breached; "
                + _pct(claims["ungated report"] / runs) + " with per-family corrections and no gate)", setup),
            Row("A/A family-wise rate: primary (alpha)", "<= 5%", "", _pct(claims["primary"] / runs), setup),
            Row("A/A family-wise rate: guardrails (Holm, two-sided)", "<= 5%", "", _pct(claims["guardrail"] / runs),
                setup),
            Row("A/A family-wise rate: exploratory (Benjamini-Hochberg, gated by the primary)", "<= 5%",
                _pct(claims["ungated exploratory"] / runs) + " (no gate)", _pct(claims["exploratory"] / runs), setup),
            Row("A/A: a guardrail breached", "<= 2.5%", "", _pct(claims["breached"] / runs), setup),
            Row("A/A: any flag, guardrails' two-sided tests included", "", "", _pct(claims["any flag"] / runs), setup)]


def _old_cuped_clicks(log: pl.DataFrame, plan: PlantedAB, start_ms: int):
    """The old analysis: window from start_ms, pre-period every event before it, whatever its arm."""
    prefix = f"{plan.experiment}/"
    exp = log.filter((pl.col("ts") >= start_ms) & pl.col("experiment_arm").str.starts_with(prefix))
    users = exp.group_by("user_id").agg(arm=pl.col("experiment_arm").first().str.slice(len(prefix)),
                                        clicks=(pl.col("event") == "click").sum().cast(pl.Float64))
    pre = log.filter(pl.col("ts") < start_ms).group_by("user_id").agg(
        pre=(pl.col("event") == "click").sum().cast(pl.Float64))
    users = users.join(pre, on="user_id", how="left").with_columns(pl.col("pre").fill_null(0.0)).sort("arm")
    y, x = users["clicks"].to_numpy(), users["pre"].to_numpy()
    adjusted, _ = cuped(y, x)
    control = (users["arm"] == "control").to_numpy()
    return welch_test(adjusted[control], adjusted[~control])


def cuped_checks(scale: float) -> list[Row]:
    runs = _runs(200, scale)
    before, after, refused = [], [], 0
    for seed in tqdm(range(20_000, 20_000 + runs), desc="CUPED pre-period", leave=False):
        plan, log = planted_run(seed, 2000, click_lift={"treatment": 0.10})
        late = plan.start_ms + 12 * HOUR_MS
        before.append(_old_cuped_clicks(log, plan, late))
        try:
            analyze(log, ABConfig(plan.experiment, ARMS, start_ms=late))
        except ValueError as e:
            refused += "overlaps logged exposure to a treatment arm" in str(e)
        analysis = analyze(log, ABConfig(plan.experiment, ARMS))  # each user's pre-period: before first exposure
        after.append(next(r for r in analysis.results if r.metric == "clicks_per_user").result)

    def summary(cs) -> str:
        lift = np.mean([c.relative for c in cs])
        cover = np.mean([c.relative_ci_low <= 0.10 <= c.relative_ci_high for c in cs])
        return f"{100 * lift:+.2f}%, coverage {_pct(cover)}"

    def naive_summary(cs) -> str:  # the old code's relative interval, for the old path
        lift = np.mean([c.relative for c in cs])
        cover = np.mean([lo <= 0.10 <= hi for lo, hi in map(_naive_relative_ci, cs)])
        return f"{100 * lift:+.2f}%, coverage {_pct(cover)}"

    return [Row("CUPED, --start-ms 12 h after the real start: planted +10% clicks", "+10%, 95% coverage",
                naive_summary(before) + " (pre-period: before start_ms)",
                f"refused in {_pct(refused / runs)} of runs (pre-period overlaps treatment)", f"{runs} runs, 2000 users"),
            Row("CUPED, pre-period per user before first exposure (no --start-ms)", "+10%, 95% coverage",
                "no CUPED without start_ms", summary(after), f"{runs} runs, 2000 users")]


def small_sample_checks(scale: float) -> list[Row]:
    rng = np.random.default_rng(5)
    runs = _runs(6000, scale)
    rows = []
    for sizes in ((20, 20), (20, 180)):
        old = new = welch = 0
        for _ in range(runs):
            n = [rng.poisson(20 * rng.lognormal(0, 0.7, s)) + 1 for s in sizes]
            c = [rng.binomial(k, np.clip(0.08 * rng.lognormal(0, 0.7, len(k)), 0, 1)) for k in n]
            old += ratio_test(c[0], n[0], c[1], n[1], small_arm=0).p_value < 0.05
            new += ratio_test(c[0], n[0], c[1], n[1]).p_value < 0.05
            welch += welch_test(c[0], c[1]).p_value < 0.05
        rows.append(Row(f"ratio test false positives, {sizes[0]} vs {sizes[1]} users", "5%",
                        f"{_pct(old / runs)} (delta method, z)", f"{_pct(new / runs)} (jackknife, Welch t)",
                        f"{runs} A/A draws, heavy-tailed users"))
        rows.append(Row(f"Welch false positives (clicks per user), {sizes[0]} vs {sizes[1]} users", "5%", "",
                        _pct(welch / runs) + " (unchanged; the report warns below 100 users)", f"{runs} A/A draws"))
    plan, log = planted_run(1, 120)
    warned = any("too small" in w for w in analyze(log, ABConfig(plan.experiment, ARMS,
                                                                 start_ms=plan.start_ms)).warnings)
    rows.append(Row("an arm of ~60 users warns", "a warning", "no warning", "warning" if warned else "none",
                    "120 users"))
    return rows


def guardrail_checks(scale: float) -> list[Row]:
    runs = _runs(300, scale)
    old_ok = safe = breached = aa_safe = 0
    for seed in tqdm(range(30_000, 30_000 + runs), desc="guardrails", leave=False):
        # hides +30% (tolerance 5%), 1000 users: too small to show it, so the honest answer is "inconclusive"
        plan, log = planted_run(seed, 1000, hide_prob={"control": 0.01, "treatment": 0.013})
        analysis = analyze(log, ABConfig(plan.experiment, ARMS, start_ms=plan.start_ms))
        g = next(g for g in analysis.guardrails if g.guardrail.metric == "hides_per_user")
        r = next(r for r in analysis.results if r.metric == "hides_per_user").result
        old_ok += not (r.delta > 0 and r.p_value < 0.05)  # the old rule (tolerance 0): "ok" unless shown harmful
        safe += g.verdict == SHOWN_SAFE
        breached += g.verdict == BREACHED
    for seed in tqdm(range(31_000, 31_000 + runs // 3), desc="guardrails A/A", leave=False):
        plan, log = planted_run(seed, 8000)
        aa = analyze(log, ABConfig(plan.experiment, ARMS, start_ms=plan.start_ms))
        aa_safe += next(g for g in aa.guardrails if g.guardrail.metric == "impressions_per_user").verdict == SHOWN_SAFE
    return [Row("guardrail with a real +30% harm called ok / shown safe", "<= 2.5%", f"{_pct(old_ok / runs)} \"ok\"",
                f"{_pct(safe / runs)} shown safe, {_pct(breached / runs)} breached, rest inconclusive",
                f"{runs} runs, 1000 users, hides 1% -> 1.3%"),
            Row("A/A guardrail (impressions, 5% tolerance) shown safe", "high", "",
                _pct(aa_safe / max(runs // 3, 1)), f"{runs // 3} runs, 8000 users")]


def ope_checks(scale: float) -> list[Row]:
    rows = []
    z = float(sps.norm.ppf(0.975))
    for label, requests, temperature, n in (("mild weights", 1000, 0.7, 300), ("heavy weights", 300, 0.05, 400)):
        runs = _runs(n, scale)
        normal: dict[str, list[bool]] = {}
        boot: dict[str, list[bool]] = {}
        ess, warned = [], 0
        clip_normal, clip_bound = [], []
        for seed in tqdm(range(runs), desc=f"OPE {label}", leave=False):
            logs, target, q, v, truth = planted_policy_case(40_000 + seed, requests, temperature)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", OPEWarning)
                estimates = [ips(logs.reward, target, logs.propensity, seed=seed),
                             snips(logs.reward, target, logs.propensity, seed=seed),
                             doubly_robust(logs.reward, target, logs.propensity, q, v, seed=seed)]
                clipped = ips(logs.reward, target, logs.propensity, clip=5.0, seed=seed)
            warned += any(issubclass(w.category, OPEWarning) for w in caught)
            ess.append(estimates[0].effective_pages)
            for e in estimates:
                boot.setdefault(e.estimator, []).append(e.ci_low <= truth <= e.ci_high)
                normal.setdefault(e.estimator, []).append(abs(e.value - truth) <= z * e.se)
            clip_normal.append(abs(clipped.value - truth) <= z * clipped.se)
            clip_bound.append(clipped.ci_low <= truth <= clipped.ci_high)
        setup = f"{runs} logs of {requests} pages, target temperature {temperature}, median ESS {np.median(ess):.0f}"
        for name in boot:
            rows.append(Row(f"OPE {name} coverage, {label}", "95%", f"{_pct(np.mean(normal[name]))} (normal)",
                            f"{_pct(np.mean(boot[name]))} ({'percentile' if name == 'SNIPS' else 'bootstrap-t'})",
                            setup))
        rows.append(Row(f"OPE clipped IPS (clip 5) coverage, {label}", "95%", f"{_pct(np.mean(clip_normal))} (normal)",
                        f"{_pct(np.mean(clip_bound))} (bias-aware bound)", setup))
        rows.append(Row(f"OPE runs warned, {label}", "none" if label == "mild weights" else "all", "0% (no warning)",
                        _pct(warned / runs), setup))
    logging_ = np.full((200, 2), 0.5)
    logging_[0, 0] = 1e-9
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OPEWarning)
        tiny = ips(np.ones((200, 2)), np.full((200, 2), 0.5), logging_)
    checks = []
    for value in (np.nan, 1.5, -0.1):
        bad = np.full((200, 2), 0.5)
        bad[3, 1] = value
        try:
            ips(np.ones((200, 2)), np.full((200, 2), 0.5), bad)
            checks.append(f"{value}: accepted")
        except ValueError:
            checks.append(f"{value}: ValueError")
    rows.append(Row("OPE propensity 1e-9", "a warning", "no check in the old code",
                    f"IPS {tiny.value:.2g}, {len(caught)} warnings", "200 pages"))
    rows.append(Row("OPE propensity NaN / 1.5 / -0.1", "errors", "no check in the old code", "; ".join(checks),
                    "200 pages"))
    return rows


def compare_checks(scale: float) -> list[Row]:
    runs = _runs(300, scale)
    raw = corrected = primary = exploratory = ungated = 0
    for seed in tqdm(range(runs), desc="eval compare A/A", leave=False):
        result = compare_scores(*equal_held_out_models(seed), CompareConfig(resamples=300, seed=seed))
        raw += any(not d.ci_low <= 0 <= d.ci_high for d in result.deltas)
        corrected += any(d.significant() for d in result.deltas)
        primary += any(d.significant() for d in result.deltas if d.role == "primary")
        exploratory += any(d.significant() for d in result.deltas if d.role == "exploratory")
        others = np.array([d.p_value for d in result.deltas if d.role == "exploratory"])
        ungated += any(d.significant() for d in result.deltas if d.role == "primary") or bool(
            (benjamini_hochberg(others) < 0.05).any())
    return [Row("feed eval compare, equal models: at least one delta significant", "<= 7% after correction",
                _pct(raw / runs), f"{_pct(corrected / runs)} (primary {_pct(primary / runs)}, gated exploratory "
                f"{_pct(exploratory / runs)}; {_pct(ungated / runs)} with no gate)",
                f"{runs} runs, 300 users, 24 deltas, 300 resamples")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every number of runs")
    args = parser.parse_args()
    start = time.time()
    rows: list[Row] = []
    for check in tqdm((srm_checks, coverage_checks, family_wise_checks, cuped_checks, small_sample_checks,
                       guardrail_checks, ope_checks, compare_checks), desc="checks"):
        t = time.time()
        rows += check(args.scale)
        tqdm.write(f"{check.__name__}: {time.time() - t:.0f}s")
    width = max(len(r.check) for r in rows)
    print(f"{'check':<{width}} | expected | before | after")
    for r in rows:
        print(f"{r.check:<{width}} | {r.expected} | {r.before or '-'} | {r.after}")
    OUT.write_text(json.dumps({"scale": args.scale, "seconds": round(time.time() - start, 1),
                               "rows": [dataclasses.asdict(r) for r in rows]}, indent=2) + "\n")
    print(f"wrote {OUT} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
