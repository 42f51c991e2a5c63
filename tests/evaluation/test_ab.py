"""A/B analysis on logs with a planted effect, a planted sample-ratio mismatch and a null (A/A)."""

import numpy as np
import polars as pl
import pytest

from evaluation.ab import ABConfig, ab_figures, ab_markdown, analyze
from evaluation.report import write_report
from evaluation.stats import ratio_mean_and_variance, ratio_test, srm_test, welch_test
from evaluation.synthetic import PlantedAB, planted_ab_log
from serving.experiments import Arm, Experiment

ARMS = (("control", 0.5), ("treatment", 0.5))
EXPERIMENT = Experiment("planted", "s", tuple(Arm(a, s) for a, s in ARMS))


def _log(**plan):
    plan = PlantedAB(arms=ARMS, **plan)
    return plan, planted_ab_log(plan, lambda u: EXPERIMENT.assign(u).name)


def _config(plan, **kw):
    return ABConfig(plan.experiment, plan.arms, start_ms=plan.start_ms, **kw)


def _result(analysis, metric):
    return next(r for r in analysis.results if r.metric == metric)


def test_a_planted_lift_is_detected_and_cuped_shrinks_the_interval():
    plan, log = _log(users=10_000, click_lift={"treatment": 0.10}, seed=1)
    analysis = analyze(log, _config(plan))
    assert not analysis.srm.flagged
    assert analysis.crossovers == 0 and analysis.pre_period_users > 9900
    ctr = _result(analysis, "ctr").result
    assert ctr.significant() and ctr.ci_low <= 0.10 * ctr.control <= ctr.ci_high
    clicks = _result(analysis, "clicks_per_user")
    assert clicks.adjusted is not None and clicks.result.significant()
    assert clicks.variance_reduction > 0.2  # pre-period clicks predict experiment clicks
    assert clicks.adjusted.se < 0.9 * clicks.raw.se
    assert clicks.adjusted.ci_low <= 0.10 * clicks.raw.control <= clicks.adjusted.ci_high
    assert 0.3 < clicks.theta < 1.5
    assert not _result(analysis, "impressions_per_user").result.significant()  # the lift is on clicks only
    assert not any(g.breached for g in analysis.guardrails)


def test_an_a_a_split_flags_nothing():
    plan, log = _log(users=3000, seed=2)
    analysis = analyze(log, _config(plan))
    assert not analysis.srm.flagged
    assert not [r.metric for r in analysis.results if r.result.significant()]
    assert not any(g.breached for g in analysis.guardrails)


def test_null_rejection_rate_is_about_alpha():
    """Welch and the delta method hold their level on clustered data (500 seeded A/A splits)."""
    rng = np.random.default_rng(0)
    welch_rejects = ratio_rejects = naive_rejects = 0
    reps = 500
    for _ in range(reps):
        n = rng.poisson(20 * rng.lognormal(0, 0.7, (2, 400))) + 1  # heavy-tailed impressions per user
        clicks = rng.binomial(n, np.clip(0.08 * rng.lognormal(0, 0.7, (2, 400)), 0, 1))
        welch_rejects += welch_test(clicks[0], clicks[1]).p_value < 0.05
        ratio_rejects += ratio_test(clicks[0], n[0], clicks[1], n[1]).p_value < 0.05
        # the wrong analysis: impressions as independent Bernoulli trials
        p = clicks.sum(axis=1) / n.sum(axis=1)
        se = np.sqrt((p * (1 - p) / n.sum(axis=1)).sum())
        naive_rejects += abs(p[1] - p[0]) / se > 1.96
    assert 0.025 < welch_rejects / reps < 0.08
    assert 0.025 < ratio_rejects / reps < 0.08
    assert naive_rejects / reps > 0.15  # ignoring user clusters over-rejects: what the delta method fixes


def test_delta_method_variance_matches_the_sampling_variance():
    rng = np.random.default_rng(1)
    ratios, variances = [], []
    for _ in range(400):
        n = rng.poisson(15 * rng.lognormal(0, 0.8, 500)) + 1
        c = rng.binomial(n, np.clip(0.1 * rng.lognormal(0, 0.6, 500), 0, 1))
        r, v = ratio_mean_and_variance(c, n)
        ratios.append(r)
        variances.append(v)
    assert np.mean(variances) == pytest.approx(np.var(ratios, ddof=1), rel=0.15)


def test_a_planted_sample_ratio_mismatch_is_flagged_loudly(tmp_path):
    plan, log = _log(users=6000, lost_users={"treatment": 0.06}, seed=3)
    analysis = analyze(log, _config(plan))
    assert analysis.srm.flagged and analysis.srm.p_value < 1e-3
    markdown = ab_markdown(analysis)
    assert "SAMPLE RATIO MISMATCH" in markdown.splitlines()[2]  # at the top, before any metric
    assert not srm_test(("a", "b"), (3010, 2990), (0.5, 0.5)).flagged


def test_a_guardrail_breach_is_reported():
    plan, log = _log(users=3000, hide_prob={"treatment": 0.02}, seed=4)
    analysis = analyze(log, _config(plan))
    breached = [g for g in analysis.guardrails if g.breached]
    assert [g.guardrail.metric for g in breached] == ["hides_per_user"] and breached[0].arm == "treatment"
    assert "GUARDRAIL BREACHED" in ab_markdown(analysis)


def test_crossover_users_are_left_out_and_unknown_arms_refused():
    plan, log = _log(users=500, seed=5)
    user = log.filter(pl.col("experiment_arm") == "planted/control")["user_id"][0]
    extra = log.filter((pl.col("user_id") == user) & (pl.col("experiment_arm") == "planted/control")).head(1)
    log2 = pl.concat([log, extra.with_columns(experiment_arm=pl.lit("planted/treatment"))])
    analysis = analyze(log2, _config(plan))
    assert analysis.crossovers == 1
    assert sum(a.users for a in analysis.arms) == analyze(log, _config(plan)).srm.observed[0] + \
        analyze(log, _config(plan)).srm.observed[1] - 1
    with pytest.raises(ValueError, match="does not configure"):
        analyze(log, ABConfig(plan.experiment, (("control", 0.5), ("other", 0.5)), start_ms=plan.start_ms))


def test_the_report_is_written_with_its_figures(tmp_path):
    plan, log = _log(users=1000, click_lift={"treatment": 0.2}, seed=6)
    analysis = analyze(log, _config(plan))
    path = write_report(tmp_path / "report", ab_markdown(analysis, simulated=True), ab_figures(analysis))
    text = path.read_text()
    assert "SIMULATION" in text.splitlines()[2]
    for name in ("lifts", "arms", "srm"):
        png = tmp_path / "report" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"({name}.png)" in text
    assert sorted(p.name for p in (tmp_path).iterdir()) == ["report"]  # nothing temporary left
