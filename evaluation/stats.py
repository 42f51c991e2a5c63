"""Experiment statistics as pure functions over per-unit arrays.

The randomisation unit is the user, so every test here takes one value per user (or, for a ratio
metric such as CTR, one numerator and one denominator per user) and treats users as independent:
events of one user are correlated and must never be treated as independent draws.

- `welch_test`: difference of means with Welch's unequal-variance standard error, a two-sided
  p-value from Student's t with Welch–Satterthwaite degrees of freedom, and its confidence interval.
- `ratio_test`: a ratio of sums (Σ clicks / Σ impressions) per arm, its variance by the delta method
  over user clusters (Deng, Knoblich & Lu, 2018), and a normal test of the difference. Below
  `SMALL_ARM_USERS` users in an arm the delta method's variance runs low and the normal quantile is
  too narrow (7% false positives at 20 users): there the variance is the jackknife's over users and
  the test is Student's t with Welch–Satterthwaite degrees of freedom.
- Every `Comparison` carries a **Fieller interval of the relative change** treatment / control − 1
  (`fieller_interval`): the control mean is an estimate too, so the difference's interval divided by
  it is not an interval of the relative change. Unbounded (±inf) when the control mean is not
  distinguishable from 0. `relative_p` tests the relative change against a bound (non-inferiority).
- `holm`, `benjamini_hochberg`: p-values adjusted for multiple comparisons, family-wise (Holm's
  step-down) and false-discovery-rate (Benjamini–Hochberg step-up).
- `cuped`: CUPED variance reduction (Deng, Xu, Kohavi & Walker, 2013): Y − θ (X − mean X) with
  θ = cov(Y, X) / var(X) estimated on both arms pooled, X a pre-period covariate the treatment
  cannot have changed, so the adjusted means keep their expected difference.
- `srm_test`: the sample-ratio-mismatch check, a chi-square goodness of fit of the users per arm
  against the configured shares; flagged at p < 0.001 (a broken split, not bad luck). Arms with a
  configured share of 0 (users put there by per-request overrides) are not part of the test; their
  users are reported beside it.
- `bootstrap_weights`, `percentile_ci`, `studentized_ci`, `bootstrap_p_value`: the bootstrap of
  offline comparisons (resample users with replacement, the same resample for both models, paired)
  and of off-policy estimates (resample pages).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats as sps

SRM_ALPHA = 0.001
SMALL_ARM_USERS = 100  # below this many users in an arm: jackknife + Student's t for ratios


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Treatment minus control for one metric.

    `relative` is delta / control (NaN when the control value is 0); `ci_low`, `ci_high` are for
    `delta`, `relative_ci_low`, `relative_ci_high` the Fieller interval of `relative`.
    `control_se`, `treatment_se` are the standard errors of the two arms' values and `df` the
    degrees of freedom of the test (inf: normal).
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
    relative_ci_low: float = float("nan")
    relative_ci_high: float = float("nan")
    control_se: float = float("nan")
    treatment_se: float = float("nan")
    df: float = float("inf")

    def significant(self, alpha: float = 0.05) -> bool:
        return bool(self.p_value < alpha)


def _relative(delta: float, control: float) -> float:
    return delta / control if control != 0 else float("nan")


def fieller_interval(control: float, treatment: float, control_var: float, treatment_var: float,
                     quantile: float) -> tuple[float, float]:
    """Fieller's interval of the ratio treatment / control of two independent estimates.

    The set of ρ with (T − ρC)² ≤ q² (var T + ρ² var C): exact for normal estimates, unlike the
    difference's interval divided by C, which treats C as known. (−inf, inf) when C is not
    distinguishable from 0 at this level (the set is then not an interval).

    Example:
        >>> low, high = fieller_interval(10.0, 11.0, 0.25, 0.25, 1.96)
        >>> round(low, 3), round(high, 3)
        (0.964, 1.257)
    """
    c, t, q2 = float(control), float(treatment), float(quantile) ** 2
    a = c * c - q2 * control_var
    if not np.isfinite(a) or not np.isfinite(treatment_var) or a <= 0:
        return -math.inf, math.inf
    root = math.sqrt(max(q2 * (t * t * control_var + treatment_var * a), 0.0))
    return (t * c - root) / a, (t * c + root) / a


def relative_p(comparison: Comparison, bound: float, greater: bool) -> float:
    """One-sided p-value of H1: relative change > `bound` (`greater`) or < `bound`, by Fieller's
    statistic (T − ρ₀C) / √(var T + ρ₀² var C), ρ₀ = 1 + bound, on the comparison's t (or normal)
    distribution: the test a non-inferiority margin needs, consistent with the relative CI."""
    c = comparison
    rho = 1.0 + bound
    scale = math.sqrt(c.treatment_se**2 + rho**2 * c.control_se**2) if np.isfinite(c.control_se) else math.nan
    if not np.isfinite(scale) or not np.isfinite(c.control) or not np.isfinite(c.treatment):
        return float("nan")
    stat = (c.treatment - rho * c.control) * (1.0 if c.control >= 0 else -1.0)
    if scale == 0:
        return 0.0 if (stat > 0) == greater and stat != 0 else 1.0
    dist = sps.norm if not np.isfinite(c.df) else sps.t(c.df)
    return float(dist.sf(stat / scale) if greater else dist.cdf(stat / scale))


def _welch_df(var_control: float, var_treatment: float, nc: int, nt: int) -> float:
    """Welch–Satterthwaite degrees of freedom of the difference (variances of the two means)."""
    total = var_control + var_treatment
    if total <= 0:
        return float(nc + nt - 2)
    return total**2 / (var_control**2 / (nc - 1) + var_treatment**2 / (nt - 1))


def _comparison(control: float, treatment: float, var_control: float, var_treatment: float, nc: int, nt: int,
                df: float, alpha: float) -> Comparison:
    """Treatment − control from the two estimates and the variances of those estimates; Student's t
    with `df` degrees of freedom (normal when inf), and Fieller's interval of the relative change."""
    delta = treatment - control
    variance = var_control + var_treatment
    se = float(np.sqrt(variance)) if np.isfinite(variance) else float("nan")
    sc, st = (float(np.sqrt(v)) if np.isfinite(v) else float("nan") for v in (var_control, var_treatment))
    if not np.isfinite(se) or se == 0:
        p = float("nan") if not np.isfinite(se) else (1.0 if delta == 0 else 0.0)
        rel = _relative(delta, control)
        return Comparison(control, treatment, delta, rel, se, delta, delta, p, nc, nt, rel, rel, sc, st, df)
    dist = sps.norm if not np.isfinite(df) else sps.t(df)
    q = float(dist.ppf(1 - alpha / 2))
    p = float(2 * dist.sf(abs(delta) / se))
    low, high = fieller_interval(control, treatment, var_control, var_treatment, q)
    return Comparison(control, treatment, delta, _relative(delta, control), se, delta - q * se, delta + q * se, p,
                      nc, nt, low - 1.0, high - 1.0, sc, st, float(df))


def welch_test(control: np.ndarray, treatment: np.ndarray, alpha: float = 0.05) -> Comparison:
    """Difference of the means of two independent samples (one value per user).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> r = welch_test(rng.normal(1.0, 1, 4000), rng.normal(1.1, 1, 4000))
        >>> bool(r.ci_low < 0.1 < r.ci_high), r.p_value < 0.001, bool(r.relative_ci_low < 0.1 < r.relative_ci_high)
        (True, True, True)
    """
    c, t = np.asarray(control, np.float64), np.asarray(treatment, np.float64)
    nc, nt = len(c), len(t)
    if nc < 2 or nt < 2:
        nan = float("nan")
        return Comparison(float(c.mean()) if nc else nan, float(t.mean()) if nt else nan, nan, nan, nan, nan, nan,
                          nan, nc, nt)
    vc, vt = float(c.var(ddof=1)) / nc, float(t.var(ddof=1)) / nt
    return _comparison(float(c.mean()), float(t.mean()), vc, vt, nc, nt, _welch_df(vc, vt, nc, nt), alpha)


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


def ratio_jackknife_variance(numerator: np.ndarray, denominator: np.ndarray) -> float:
    """Var(Σ numerator / Σ denominator) by the delete-one-user jackknife: larger than the delta
    method's at small n, where the delta method runs low. NaN when a leave-one-out ratio is undefined."""
    n_ = np.asarray(numerator, np.float64)
    d_ = np.asarray(denominator, np.float64)
    users = len(n_)
    if users < 2:
        return float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        loo = (n_.sum() - n_) / (d_.sum() - d_)  # (n,) the ratio without each user
    if not np.isfinite(loo).all():
        return float("nan")
    return float((users - 1) / users * ((loo - loo.mean()) ** 2).sum())


def ratio_test(num_control: np.ndarray, den_control: np.ndarray, num_treatment: np.ndarray,
               den_treatment: np.ndarray, alpha: float = 0.05, small_arm: int = SMALL_ARM_USERS) -> Comparison:
    """Difference of two ratio metrics (e.g. CTR = clicks / impressions), users as clusters.

    Each arm's variance comes from `ratio_mean_and_variance` (delta method) and the test is normal
    (z), unless an arm has fewer than `small_arm` users: then both arms' variances are the
    jackknife's (`ratio_jackknife_variance`) and the test is Student's t with Welch–Satterthwaite
    degrees of freedom (A/A false positives with heavy-tailed users, 20 vs 20: 6.4% with z, 4.7% so;
    20 vs 180: 9.3% and 7.7%, still too many: the skew of the small arm; see
    benchmarks/stats_audit.py). The arms are independent, so the variance of the difference is
    their sum.
    """
    rc, vc = ratio_mean_and_variance(num_control, den_control)
    rt, vt = ratio_mean_and_variance(num_treatment, den_treatment)
    nc, nt = len(num_control), len(num_treatment)
    df = float("inf")
    if min(nc, nt) < small_arm:
        jc, jt = ratio_jackknife_variance(num_control, den_control), ratio_jackknife_variance(num_treatment,
                                                                                             den_treatment)
        if np.isfinite(jc) and np.isfinite(jt):
            vc, vt = jc, jt
        if np.isfinite(vc) and np.isfinite(vt) and nc > 1 and nt > 1:
            df = _welch_df(vc, vt, nc, nt)
    return _comparison(rc, rt, vc, vt, nc, nt, df, alpha)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error rate), NaN kept as NaN and not counted.

    Example:
        >>> holm(np.array([0.01, 0.04, 0.03])).round(3).tolist()
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, np.float64)
    out = np.full(p.shape, np.nan)
    live = np.flatnonzero(np.isfinite(p))
    m = len(live)
    if not m:
        return out
    order = live[np.argsort(p[live], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg step-up adjusted p-values (false discovery rate), NaN kept as NaN.

    Example:
        >>> benjamini_hochberg(np.array([0.01, 0.04, 0.03])).round(3).tolist()
        [0.03, 0.04, 0.04]
    """
    p = np.asarray(p_values, np.float64)
    out = np.full(p.shape, np.nan)
    live = np.flatnonzero(np.isfinite(p))
    m = len(live)
    if not m:
        return out
    order = live[np.argsort(p[live], kind="stable")]
    scaled = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return out


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
    """Users observed per arm against the configured shares.

    `expected` is 0 for an arm with share 0: such an arm takes no part in the test, and the users
    it has anyway (per-request overrides) are listed in `untested` as (arm, users).
    """

    arms: tuple[str, ...]
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    chi2: float
    p_value: float
    alpha: float = SRM_ALPHA
    untested: tuple[tuple[str, int], ...] = ()

    @property
    def flagged(self) -> bool:
        """True when the split is broken: p below `alpha` (0.001 by default)."""
        return bool(self.p_value < self.alpha)


def srm_test(arms: tuple[str, ...], observed: tuple[int, ...], shares: tuple[float, ...],
             alpha: float = SRM_ALPHA) -> SRMResult:
    """Chi-square goodness of fit of users per arm against the configured shares.

    Arms with a configured share of 0 are left out of the test: it compares the users of the live
    arms with their shares renormalised over the live arms, and the share-0 arms' users (put there
    by per-request overrides, not by the split) are reported in `untested`.

    Example:
        >>> srm_test(("a", "b"), (5000, 5000), (0.5, 0.5)).flagged
        False
        >>> srm_test(("a", "b"), (4800, 5200), (0.5, 0.5)).flagged
        True
        >>> srm_test(("a", "b", "x"), (1000, 1000, 50), (0.5, 0.5, 0.0)).untested
        (('x', 50),)
    """
    obs = np.asarray(observed, np.float64)
    shares_ = np.asarray(shares, np.float64)
    live = shares_ > 0
    total = obs[live].sum()
    expected = np.where(live, total * shares_ / shares_[live].sum(), 0.0) if live.any() else np.zeros_like(obs)
    untested = tuple((a, int(o)) for a, o, keep in zip(arms, observed, live, strict=True) if not keep and o > 0)
    counts, means = tuple(int(o) for o in observed), tuple(map(float, expected))
    if total == 0 or live.sum() < 2:
        return SRMResult(arms, counts, means, 0.0, 1.0, alpha, untested)
    chi2, p = sps.chisquare(obs[live], expected[live])
    return SRMResult(arms, counts, means, float(chi2), float(p), alpha, untested)


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


def studentized_ci(estimate: float, se: float, samples: np.ndarray, sample_ses: np.ndarray,
                   alpha: float = 0.05) -> tuple[float, float]:
    """The studentized (bootstrap-t) interval: [θ̂ − t*_{1−α/2} se, θ̂ − t*_{α/2} se] with t* the
    quantiles of (θ*_b − θ̂) / se*_b over resamples. Unlike the normal and percentile intervals it
    follows the skew of a mean of heavy-tailed values (importance weights), where those cover too
    little. Resamples with no finite t* are ignored; NaNs when none is left."""
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (np.asarray(samples, np.float64) - estimate) / np.asarray(sample_ses, np.float64)
    t = t[np.isfinite(t)]
    if not len(t) or not np.isfinite(se):
        return float("nan"), float("nan")
    low_q, high_q = np.quantile(t, [alpha / 2, 1 - alpha / 2])
    return float(estimate - high_q * se), float(estimate - low_q * se)
