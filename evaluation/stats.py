"""Experiment statistics as pure functions over per-unit arrays.

The randomisation unit is the user, so every test here takes one value per user (or, for a ratio
metric such as CTR, one numerator and one denominator per user) and treats users as independent:
events of one user are correlated and must never be treated as independent draws.

- `welch_test`: difference of means with Welch's unequal-variance standard error, a two-sided
  p-value from Student's t with Welch–Satterthwaite degrees of freedom, and its confidence interval.
- `ratio_test`: a ratio of sums (Σ clicks / Σ impressions) per arm, its variance by the delta method
  over user clusters (Deng, Knoblich & Lu, 2018), and a normal test of the difference.
- `cuped`: CUPED variance reduction (Deng, Xu, Kohavi & Walker, 2013): Y − θ (X − mean X) with
  θ = cov(Y, X) / var(X) estimated on both arms pooled, X a pre-period covariate the treatment
  cannot have changed, so the adjusted means keep their expected difference.
- `srm_test`: the sample-ratio-mismatch check, a chi-square goodness of fit of the users per arm
  against the configured shares; flagged at p < 0.001 (a broken split, not bad luck).
- `bootstrap_weights`, `percentile_ci`, `bootstrap_p_value`: the paired bootstrap used by offline
  comparisons (resample users with replacement, apply the same resample to both models).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats as sps

SRM_ALPHA = 0.001


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Treatment minus control for one metric.

    `relative` is delta / control (NaN when the control value is 0); the CI is for `delta`.
    """

    control: float
    treatment: float
    delta: float
    relative: float
    se: float
    ci_low: float
    ci_high: float
    p_value: float
    n_control: int
    n_treatment: int

    def significant(self, alpha: float = 0.05) -> bool:
        return bool(self.p_value < alpha)


def _relative(delta: float, control: float) -> float:
    return delta / control if control != 0 else float("nan")


def welch_test(control: np.ndarray, treatment: np.ndarray, alpha: float = 0.05) -> Comparison:
    """Difference of the means of two independent samples (one value per user).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> r = welch_test(rng.normal(1.0, 1, 4000), rng.normal(1.1, 1, 4000))
        >>> bool(r.ci_low < 0.1 < r.ci_high), r.p_value < 0.001
        (True, True)
    """
    c, t = np.asarray(control, np.float64), np.asarray(treatment, np.float64)
    nc, nt = len(c), len(t)
    if nc < 2 or nt < 2:
        nan = float("nan")
        return Comparison(float(c.mean()) if nc else nan, float(t.mean()) if nt else nan, nan, nan, nan, nan, nan,
                          nan, nc, nt)
    mc, mt = float(c.mean()), float(t.mean())
    vc, vt = float(c.var(ddof=1)) / nc, float(t.var(ddof=1)) / nt
    se = float(np.sqrt(vc + vt))
    delta = mt - mc
    if se == 0:
        p = 1.0 if delta == 0 else 0.0
        return Comparison(mc, mt, delta, _relative(delta, mc), 0.0, delta, delta, p, nc, nt)
    df = (vc + vt) ** 2 / (vc**2 / (nc - 1) + vt**2 / (nt - 1)) if vc + vt > 0 else nc + nt - 2
    q = float(sps.t.ppf(1 - alpha / 2, df))
    p = float(2 * sps.t.sf(abs(delta) / se, df))
    return Comparison(mc, mt, delta, _relative(delta, mc), se, delta - q * se, delta + q * se, p, nc, nt)


def ratio_mean_and_variance(numerator: np.ndarray, denominator: np.ndarray) -> tuple[float, float]:
    """R = Σ numerator / Σ denominator over users, and Var(R) by the delta method.

    Var(R) ≈ (σ²_N − 2 R σ_ND + R² σ²_D) / (n μ_D²), with per-user means, variances and covariance:
    the first-order Taylor expansion of mean(N) / mean(D) around the true means.

    Example:
        >>> r, v = ratio_mean_and_variance(np.array([1.0, 0, 2, 1]), np.array([10.0, 5, 10, 5]))
        >>> round(r, 4), v > 0
        (0.1333, True)
    """
    n_ = np.asarray(numerator, np.float64)
    d_ = np.asarray(denominator, np.float64)
    users = len(n_)
    if users < 2 or d_.sum() == 0:
        return float("nan"), float("nan")
    mu_n, mu_d = n_.mean(), d_.mean()
    ratio = mu_n / mu_d
    cov = np.cov(n_, d_, ddof=1)
    var = (cov[0, 0] - 2 * ratio * cov[0, 1] + ratio**2 * cov[1, 1]) / (users * mu_d**2)
    return float(ratio), float(max(var, 0.0))


def ratio_test(num_control: np.ndarray, den_control: np.ndarray, num_treatment: np.ndarray,
               den_treatment: np.ndarray, alpha: float = 0.05) -> Comparison:
    """Difference of two ratio metrics (e.g. CTR = clicks / impressions), users as clusters.

    Each arm's variance comes from `ratio_mean_and_variance` (delta method); the arms are
    independent, so the variance of the difference is their sum; the test is normal (z).
    """
    rc, vc = ratio_mean_and_variance(num_control, den_control)
    rt, vt = ratio_mean_and_variance(num_treatment, den_treatment)
    return _normal_comparison(rc, rt, vc + vt, len(num_control), len(num_treatment), alpha)


def _normal_comparison(control: float, treatment: float, variance: float, nc: int, nt: int,
                       alpha: float) -> Comparison:
    delta = treatment - control
    se = float(np.sqrt(variance)) if np.isfinite(variance) else float("nan")
    if not np.isfinite(se) or se == 0:
        p = float("nan") if not np.isfinite(se) else (1.0 if delta == 0 else 0.0)
        return Comparison(control, treatment, delta, _relative(delta, control), se, delta, delta, p, nc, nt)
    z = float(sps.norm.ppf(1 - alpha / 2))
    p = float(2 * sps.norm.sf(abs(delta) / se))
    return Comparison(control, treatment, delta, _relative(delta, control), se, delta - z * se, delta + z * se,
                      p, nc, nt)


def cuped_theta(y: np.ndarray, x: np.ndarray) -> float:
    """θ = cov(Y, X) / var(X) over the pooled users of all arms (0 when X is constant)."""
    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    if len(x) < 2:
        return 0.0
    var_x = float(x.var(ddof=1))
    return float(np.cov(y, x, ddof=1)[0, 1] / var_x) if var_x > 0 else 0.0


def cuped(y: np.ndarray, x: np.ndarray, theta: float | None = None) -> tuple[np.ndarray, float]:
    """CUPED-adjusted values Y − θ (X − mean X), and θ (pooled, `cuped_theta`, unless given).

    Centering on the pooled mean of X keeps the adjusted grand mean equal to the raw one; because
    X is measured before the experiment, E[X] is the same in every arm and the expected
    difference between arms is unchanged, while the variance drops by the share ρ²(Y, X).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(0, 1, 1000); y = x + rng.normal(0, 0.5, 1000)
        >>> adjusted, theta = cuped(y, x)
        >>> round(theta, 1), bool(adjusted.var() < 0.3 * y.var())
        (1.0, True)
    """
    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    theta = cuped_theta(y, x) if theta is None else theta
    return y - theta * (x - x.mean()), theta


@dataclasses.dataclass(frozen=True)
class SRMResult:
    """Users observed per arm against the configured shares."""

    arms: tuple[str, ...]
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    chi2: float
    p_value: float
    alpha: float = SRM_ALPHA

    @property
    def flagged(self) -> bool:
        """True when the split is broken: p below `alpha` (0.001 by default)."""
        return bool(self.p_value < self.alpha)


def srm_test(arms: tuple[str, ...], observed: tuple[int, ...], shares: tuple[float, ...],
             alpha: float = SRM_ALPHA) -> SRMResult:
    """Chi-square goodness of fit of users per arm against the configured shares.

    Arms with a configured share of 0 are left out of the test (they expect no users).

    Example:
        >>> srm_test(("a", "b"), (5000, 5000), (0.5, 0.5)).flagged
        False
        >>> srm_test(("a", "b"), (4800, 5200), (0.5, 0.5)).flagged
        True
    """
    obs = np.asarray(observed, np.float64)
    shares_ = np.asarray(shares, np.float64)
    live = shares_ > 0
    total = obs.sum()
    expected = total * shares_ / shares_[live].sum() if live.any() else np.zeros_like(obs)
    if total == 0 or live.sum() < 2:
        return SRMResult(arms, tuple(int(o) for o in observed), tuple(map(float, expected)), 0.0, 1.0, alpha)
    chi2, p = sps.chisquare(obs[live], expected[live])
    return SRMResult(arms, tuple(int(o) for o in observed), tuple(map(float, expected)), float(chi2), float(p), alpha)


def bootstrap_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(R, n) multiplicities of a nonparametric bootstrap: how often each unit is drawn in each
    resample (rows sum to n). The same matrix applied to two models makes the bootstrap paired."""
    draws = rng.integers(0, n, size=(resamples, n))
    weights = np.zeros((resamples, n), np.float64)
    np.add.at(weights, (np.arange(resamples)[:, None], draws), 1.0)
    return weights


def percentile_ci(samples: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """The percentile bootstrap interval of `samples` (NaN resamples ignored)."""
    s = np.asarray(samples, np.float64)
    s = s[np.isfinite(s)]
    if not len(s):
        return float("nan"), float("nan")
    return float(np.quantile(s, alpha / 2)), float(np.quantile(s, 1 - alpha / 2))


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided bootstrap p-value of H0: difference = 0, from the resampled differences:
    twice the smaller share of resamples on either side of 0 (at least 1 / (R + 1))."""
    d = np.asarray(differences, np.float64)
    d = d[np.isfinite(d)]
    if not len(d):
        return float("nan")
    share = min((d <= 0).mean(), (d >= 0).mean())
    return float(min(1.0, max(2 * share, 1.0 / (len(d) + 1))))
