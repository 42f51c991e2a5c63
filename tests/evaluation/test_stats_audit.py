"""The experiment statistics audited by simulation against known answers, through the public
functions (`analyze`, `srm_test`, `ratio_test`, the OPE estimators, `compare_scores`): A/A and
planted-lift coverage, family-wise false positives after correction, CUPED's pre-period, small
arms, guardrail verdicts and off-policy intervals. Small and seeded (benchmarks/stats_audit.py
runs the same checks at the sizes of the audit's table)."""


import numpy as np
import polars as pl
import pytest

from evaluation.ab import BREACHED, INCONCLUSIVE, SHOWN_SAFE, ABConfig, ab_markdown, analyze
from evaluation.compare import CompareConfig, compare_scores
from evaluation.ope import (
    OPEWarning,
    cumulative_weights,
    doubly_robust,
    ips,
    snips,
)
from evaluation.stats import benjamini_hochberg, holm, ratio_test, srm_test
from evaluation.synthetic import equal_held_out_models, planted_policy_case, planted_run

ARMS = (("control", 0.5), ("treatment", 0.5))


def test_srm_with_a_share_zero_arm_does_not_crash():
    result = srm_test(("a", "b", "x"), (1000, 1000, 50), (0.5, 0.5, 0.0))
    assert not result.flagged and result.untested == (("x", 50),) and result.expected == (1000.0, 1000.0, 0.0)
    assert srm_test(("a", "b", "x"), (1100, 900, 50), (0.5, 0.5, 0.0)).flagged  # the live arms are still tested
    # analyze() on a log where per-request overrides put 10% of users in a share-0 exploring arm
    plan, log = planted_run(1, users=3000, arms=(("control", 0.45), ("treatment", 0.45), ("explore", 0.1)))
    analysis = analyze(log, ABConfig(plan.experiment, (("control", 0.5), ("treatment", 0.5), ("explore", 0.0)),
                                     start_ms=plan.start_ms))
    assert not analysis.srm.flagged and analysis.srm.untested[0][0] == "explore"
    assert {r.arm for r in analysis.results} == {"treatment"}  # not randomised: not compared
    assert any("`explore` has share 0" in w for w in analysis.warnings)
    assert "not randomised" in ab_markdown(analysis)


def test_corrections_match_their_definitions():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.5])
    np.testing.assert_allclose(holm(p), [0.04, 0.09, 0.09, np.nan, 0.5])
    np.testing.assert_allclose(benjamini_hochberg(p), [0.04, 0.0533333, 0.0533333, np.nan, 0.5], rtol=1e-5)


@pytest.fixture(scope="module")
def planted_runs():
    """250 seeded runs of analyze() on 1000 users: a +10% click lift planted, so every
    click-driven metric's true relative change is +10% and impressions' is 0."""
    return [analyze(log, ABConfig(plan.experiment, ARMS, start_ms=plan.start_ms))
            for plan, log in (planted_run(seed, click_lift={"treatment": 0.10}) for seed in range(250))]


def test_coverage_of_the_relative_change_and_the_planted_lift_within_its_ci(planted_runs):
    truth = {"impressions_per_user": 0.0, "ctr": 0.10, "engagements_per_user": 0.10, "clicks_per_user": 0.10,
             "watch_dwell_s_per_user": 0.10, "generated_engagement_rate": 0.10}
    covered: dict[str, list[bool]] = {}
    for analysis in planted_runs:
        for r in analysis.results:
            if r.metric in truth:
                c = r.result
                covered.setdefault(f"{r.metric} ({'CUPED' if r.adjusted else r.kind})", []).append(
                    c.relative_ci_low <= truth[r.metric] <= c.relative_ci_high)
    rates = {k: float(np.mean(v)) for k, v in covered.items()}
    assert {"clicks_per_user (CUPED)", "ctr (ratio)", "impressions_per_user (CUPED)"} <= set(rates)
    assert all(0.92 <= v <= 0.98 for v in rates.values()), rates
    # One run at the sizes of a real test finds the planted lift, within its interval.
    plan, log = planted_run(7, users=10_000, click_lift={"treatment": 0.10})
    primary = next(r for r in analyze(log, ABConfig(plan.experiment, ARMS, start_ms=plan.start_ms)).results
                   if r.role == "primary")
    assert primary.metric == "engagements_per_user" and primary.significant()
    assert primary.result.relative_ci_low <= 0.10 <= primary.result.relative_ci_high


def test_family_wise_false_positives_after_correction():
    """A/A with 8 live metrics (hides included): at least one uncorrected p < 0.05 in ~24% of runs.
    After correction each family (the primary; the guardrails, Holm; the exploratory metrics,
    Benjamini-Hochberg, gated by the primary) errs at most at about alpha, and so does the whole
    report (the primary significant, an exploratory discovery or a guardrail breached): the issue's
    bar of 7%. Without the gate the whole report erred in ~8% of runs."""
    raw, runs = 0, 250
    claims = {"primary": 0, "guardrail": 0, "exploratory": 0, "breached": 0, "report": 0}
    for seed in range(1000, 1000 + runs):
        plan, log = planted_run(seed, hide_prob={"control": 0.01, "treatment": 0.01})
        analysis = analyze(log, ABConfig(plan.experiment, ARMS, start_ms=plan.start_ms))
        assert len(analysis.results) == 8
        raw += any(r.result.p_value < 0.05 for r in analysis.results)
        flagged = {role: any(r.significant() for r in analysis.results if r.role == role)
                   for role in ("primary", "guardrail", "exploratory")}
        flagged["breached"] = any(g.breached for g in analysis.guardrails)
        flagged["report"] = flagged["primary"] or flagged["exploratory"] or flagged["breached"]
        for k, v in flagged.items():
            claims[k] += v
    rates = {k: v / runs for k, v in claims.items()}
    assert raw / runs > 0.15
    assert all(rates[k] <= 0.07 for k in ("primary", "guardrail", "exploratory", "breached", "report")), rates
    assert rates["exploratory"] <= rates["primary"], rates  # gated: only where the primary was significant


def test_cuped_pre_period_ends_at_each_users_first_exposure_and_a_treated_one_is_refused():
    plan, log = planted_run(3, users=4000, click_lift={"treatment": 0.10})
    # The analyst's start is 12 h late: treated events precede it, and a pre-period there absorbs the lift.
    late = ABConfig(plan.experiment, ARMS, start_ms=plan.start_ms + 12 * 3_600_000)
    with pytest.raises(ValueError, match="overlaps logged exposure to a treatment arm"):
        analyze(log, late)
    assert not analyze(log, ABConfig(plan.experiment, ARMS, start_ms=late.start_ms, cuped=False)).results[0].adjusted
    # No start at all: each user's pre-period is the events before their first exposure.
    whole = analyze(log, ABConfig(plan.experiment, ARMS))
    clicks = next(r for r in whole.results if r.metric == "clicks_per_user")
    assert whole.pre_period_users > 3900 and clicks.variance_reduction > 0.2
    assert clicks.adjusted.relative_ci_low <= 0.10 <= clicks.adjusted.relative_ci_high
    # A pre-period run on the control arm (as `feed ab simulate` does) is a clean one.
    pre = log.filter(pl.col("ts") < plan.start_ms).with_columns(experiment_arm=pl.lit(f"{plan.experiment}/control"))
    relabelled = pl.concat([pre, log.filter(pl.col("ts") >= plan.start_ms)])
    assert analyze(relabelled, ABConfig(plan.experiment, ARMS, start_ms=plan.start_ms)).pre_period_users > 3900


def test_small_arms_hold_their_level_and_warn():
    rng = np.random.default_rng(0)
    rejects, reps = 0, 3000
    for _ in range(reps):
        n = rng.poisson(20 * rng.lognormal(0, 0.7, (2, 20))) + 1  # 20 heavy-tailed users per arm
        clicks = rng.binomial(n, np.clip(0.08 * rng.lognormal(0, 0.7, (2, 20)), 0, 1))
        rejects += ratio_test(clicks[0], n[0], clicks[1], n[1]).p_value < 0.05
    assert 0.03 <= rejects / reps <= 0.06, rejects / reps
    plan, log = planted_run(4, users=120)
    analysis = analyze(log, ABConfig(plan.experiment, ARMS, start_ms=plan.start_ms))
    assert any("too small to read" in w for w in analysis.warnings)
    assert next(r for r in analysis.results if r.metric == "ctr").result.df < 200  # Student's t, not z


def test_guardrail_verdicts_are_non_inferiority_tests():
    plan, log = planted_run(5, users=8000, hide_prob={"control": 0.01, "treatment": 0.02})
    by = {g.guardrail.metric: g for g in analyze(log, ABConfig(plan.experiment, ARMS,
                                                                start_ms=plan.start_ms)).guardrails}
    assert by["impressions_per_user"].verdict == SHOWN_SAFE  # within 5% at 8000 users
    assert by["hides_per_user"].verdict == BREACHED and by["hides_per_user"].relative_ci_low > 0.05
    plan, log = planted_run(6, users=300, hide_prob={"control": 0.01, "treatment": 0.01})
    small = {g.guardrail.metric: g for g in analyze(log, ABConfig(plan.experiment, ARMS,
                                                                   start_ms=plan.start_ms)).guardrails}
    assert small["hides_per_user"].verdict == INCONCLUSIVE  # too few users to show anything


# -- off-policy estimates ---------------------------------------------------------------------------------
def test_ope_intervals_cover_on_a_mild_log_and_warn_on_a_heavy_one():
    covered: dict[str, list[bool]] = {"IPS": [], "SNIPS": [], "DR": []}
    for seed in range(150):
        logs, target, q, v, truth = planted_policy_case(seed, 500, 0.7)
        for est in (ips(logs.reward, target, logs.propensity, resamples=400, seed=seed),
                    snips(logs.reward, target, logs.propensity, resamples=400, seed=seed),
                    doubly_robust(logs.reward, target, logs.propensity, q, v, resamples=400, seed=seed)):
            assert not est.warnings and est.effective_pages > 100
            covered[est.estimator].append(est.ci_low <= truth <= est.ci_high)
    rates = {k: float(np.mean(c)) for k, c in covered.items()}
    assert all(0.90 <= r <= 0.98 for r in rates.values()), rates
    logs, target, q, v, truth = planted_policy_case(0, 300, 0.05)  # a greedy target: heavy weights
    with pytest.warns(OPEWarning, match="effective pages"):
        heavy = ips(logs.reward, target, logs.propensity)
    assert heavy.effective_pages < 100 and heavy.warnings


def test_clipped_estimates_carry_their_bias_in_the_interval():
    logs, target, q, v, truth = planted_policy_case(1, 2000, 0.2)
    plain = ips(logs.reward, target, logs.propensity)
    clipped = ips(logs.reward, target, logs.propensity, clip=3.0)
    assert clipped.clipped_share > 0.05 and clipped.value < plain.value  # biased down
    assert "bias bound" in clipped.interval and clipped.ci_low <= truth <= clipped.ci_high
    dr = doubly_robust(logs.reward, target, logs.propensity, q, v, clip=3.0)
    assert dr.ci_low <= truth <= dr.ci_high


@pytest.mark.parametrize(("value", "message"), [(np.nan, "finite"), (1.5, r"\[0, 1\]"), (-0.1, r"\[0, 1\]")])
def test_propensities_that_are_not_probabilities_are_refused(value, message):
    target, logging_ = np.full((4, 2), 0.5), np.full((4, 2), 0.5)
    bad = logging_.copy()
    bad[2, 1] = value
    with pytest.raises(ValueError, match=message):
        cumulative_weights(target, bad)
    with pytest.raises(ValueError, match=message):
        ips(np.ones((4, 2)), bad, logging_)


def test_a_tiny_propensity_warns():
    logging_ = np.full((200, 2), 0.5)
    logging_[0, 0] = 1e-9
    with pytest.warns(OPEWarning) as record:
        est = ips(np.ones((200, 2)), np.full((200, 2), 0.5), logging_)
    assert any("below 1e-06" in str(w.message) for w in record) and est.value > 1e6
    assert any("effective pages" in w for w in est.warnings)


# -- offline comparison -----------------------------------------------------------------------------------
def test_feed_eval_compare_family_wise_false_positives_after_correction():
    """Equal models, 24 deltas: most runs had a 'significant' one; after correction (the primary at
    alpha, the others Benjamini-Hochberg only when the primary is significant) the whole report errs
    at about alpha: the issue's bar of 7%."""
    raw, runs = 0, 100
    claims = {"primary": 0, "exploratory": 0, "report": 0}
    for seed in range(runs):
        result = compare_scores(*equal_held_out_models(seed), CompareConfig(resamples=200, seed=seed))
        assert len(result.deltas) == 24 and [d.metric for d in result.deltas if d.role == "primary"] == ["ndcg@10"]
        raw += any(not d.ci_low <= 0 <= d.ci_high for d in result.deltas)
        flagged = {role: any(d.significant() for d in result.deltas if d.role == role)
                   for role in ("primary", "exploratory")}
        flagged["report"] = flagged["primary"] or flagged["exploratory"]
        # the gate: no exploratory delta is tested unless the primary is significant
        assert all(d.tested == flagged["primary"] for d in result.deltas if d.role == "exploratory")
        for k, v in flagged.items():
            claims[k] += v
    rates = {k: v / runs for k, v in claims.items()}
    assert raw / runs > 0.3
    assert rates["report"] <= 0.07 and rates["exploratory"] <= rates["primary"], rates
