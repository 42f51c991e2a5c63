"""Off-policy estimators recover a known target policy's value from a known logging policy's logs."""

import numpy as np
import pytest

from evaluation.ope import (
    OPEWarning,
    cumulative_weights,
    doubly_robust,
    ips,
    plackett_luce_conditionals,
    policy_inputs,
    snips,
)
from evaluation.synthetic import planted_ranking_logs
from serving.mixing.exploration import plackett_luce_propensities, plackett_luce_sample

TARGET_T = 0.5


def _true_value(logs, target_scores, samples=400, seed=1):
    """Monte Carlo value of Plackett-Luce(target_scores / T) under the logs' true click model."""
    rng = np.random.default_rng(seed)
    r, n = target_scores.shape
    k = logs.order.shape[1]
    noise = rng.gumbel(size=(samples, r, n))
    tops = np.argsort(-(target_scores[None] / TARGET_T + noise), axis=2)[:, :, :k]  # (S, R, K)
    probs = logs.click_prob[np.arange(r)[None, :, None], tops, np.arange(k)[None, None, :]]
    return float(probs.sum(axis=2).mean())


@pytest.fixture(scope="module")
def setting():
    logs = planted_ranking_logs(requests=4000, candidates=8, positions=3, temperature=1.0, seed=0)
    # The target knows the attractiveness better (less noise) and is greedier (lower temperature).
    rng = np.random.default_rng(7)
    attractiveness = logs.click_prob[:, :, 0]
    target_scores = np.log(attractiveness + 1e-3) + rng.normal(0, 0.2, attractiveness.shape)
    conditionals = plackett_luce_conditionals(target_scores, logs.order, TARGET_T)
    return logs, target_scores, conditionals, _true_value(logs, target_scores)


def test_logged_propensities_are_the_logging_policys(setting):
    logs, *_ = setting
    for r in range(5):
        np.testing.assert_allclose(logs.propensity[r], plackett_luce_propensities(logs.scores[r], logs.order[r], 1.0))
    # Gumbel-top-k draws from Plackett-Luce: the first position's frequencies match the softmax.
    scores = np.array([0.0, 1.0, 2.0])
    rng = np.random.default_rng(0)
    firsts = np.bincount([plackett_luce_sample(scores, 1.0, 1, rng)[0][0] for _ in range(6000)], minlength=3)
    softmax = np.exp(scores) / np.exp(scores).sum()
    np.testing.assert_allclose(firsts / 6000, softmax, atol=0.02)


@pytest.mark.parametrize("estimator", ["IPS", "SNIPS", "DR"])
def test_estimators_recover_the_target_value_within_their_ci(setting, estimator):
    logs, _, conditionals, truth = setting
    on_policy = logs.reward.sum(axis=1).mean()
    assert truth > on_policy * 1.1  # the target is really different from the logging policy
    target, q_logged, v_target = policy_inputs(conditionals, logs.order, logs.click_prob)
    if estimator == "IPS":
        est = ips(logs.reward, target, logs.propensity)
    elif estimator == "SNIPS":
        est = snips(logs.reward, target, logs.propensity)
    else:
        est = doubly_robust(logs.reward, target, logs.propensity, q_logged, v_target)
    assert est.ci_low <= truth <= est.ci_high, (est, truth)
    assert est.ci_high < on_policy or est.ci_low > on_policy  # and tells the two policies apart


def test_dr_with_a_good_reward_model_has_lower_variance_than_ips(setting):
    logs, _, conditionals, truth = setting
    rng = np.random.default_rng(3)
    good = np.clip(logs.click_prob * rng.lognormal(0, 0.1, logs.click_prob.shape), 0, 1)  # near the truth
    target, q_good, v_good = policy_inputs(conditionals, logs.order, good)
    constant = np.full_like(logs.click_prob, logs.reward.mean())  # a useless reward model
    _, q_bad, v_bad = policy_inputs(conditionals, logs.order, constant)
    est_ips = ips(logs.reward, target, logs.propensity)
    dr_good = doubly_robust(logs.reward, target, logs.propensity, q_good, v_good)
    dr_bad = doubly_robust(logs.reward, target, logs.propensity, q_bad, v_bad)
    # Bernoulli click noise stays in every estimator; what DR removes is the variance of the weights.
    assert dr_good.se < 0.9 * est_ips.se and dr_good.se < dr_bad.se
    assert dr_good.ci_low <= truth <= dr_good.ci_high
    assert dr_bad.ci_low <= truth <= dr_bad.ci_high  # a bad model costs variance, not bias


def test_clipping_caps_weights_and_reports_how_many():
    target = np.array([[0.9, 0.9], [0.1, 0.1]])
    logging_ = np.array([[0.1, 0.1], [0.5, 0.5]])
    weights, clipped = cumulative_weights(target, logging_, clip=10.0)
    assert weights.max() == 10.0 and clipped == 0.25  # 81 capped, 9 kept
    with pytest.warns(OPEWarning, match="effective pages"):  # two pages: nothing to read
        est = ips(np.ones((2, 2)), target, logging_, clip=10.0)
    assert est.clipped_share == 0.25 and est.value == pytest.approx((9 + 10 + 0.2 + 0.04) / 2)
    with pytest.raises(ValueError, match="deterministic"):
        cumulative_weights(target, np.zeros((2, 2)))
