"""Off-policy evaluation of ranking policies from logs with propensities.

A page is a ranking of K positions; an exploring arm (`serving.mixing.exploration`) logs, for each served
item, its propensity p0(a_k | a_1..a_{k-1}): the logging policy's probability of that item at that
position given the items above it. A candidate (target) policy π gives the same conditional
probabilities for the logged items; their ratio at position k is w_k = π(a_k | prefix) / p0(a_k | prefix)
and the cumulative weight W_k = w_1 ··· w_k is the likelihood ratio of the page's first k items.

The value estimated is V(π) = E[Σ_k r_k], the expected reward (e.g. clicks) summed over the K
positions of a page. Estimators, each returning a point estimate, a standard error, a confidence
interval and the effective number of pages it rests on:

- **IPS** (cascade inverse propensity scoring): mean over pages of Σ_k W_k r_k. Unbiased when the
  reward at position k depends only on the items at positions 1..k (the cascade assumption,
  Kiyohara et al., WSDM 2022) and p0 > 0 wherever π > 0.
- **SNIPS** (self-normalised IPS): Σ_k Σ_i W_ik r_ik / Σ_i W_ik, per position. Slightly biased,
  much less variable when weights are heavy.
- **DR** (cascade doubly robust): mean of Σ_k [W_k (r_k − q̂_k(a_k)) + W_{k−1} V̂_k], V̂_k =
  Σ_a π(a | prefix) q̂_k(a), W_0 = 1, with q̂ a reward model. Unbiased under the same assumption
  whatever q̂ is; the better q̂, the smaller its variance.

**Intervals**: a bootstrap over pages, studentized (bootstrap-t, `evaluation.stats.studentized_ci`)
for IPS and DR, whose per-page terms are heavy-tailed when weights are; percentile for SNIPS. It
helps IPS a little and DR not at all on heavy weights (benchmarks/stats_audit.py: at a median of
16 effective pages IPS covers 92.2% with a normal interval and 94.0% so, DR 92.2% and 91.5%), so
no interval is to be trusted on a handful of effective pages: every estimate
carries the effective sample size (Σ W)² / Σ W² of the last position's weights (`effective_pages`)
and a warning (`OPEWarning`, and in `warnings`) below `MIN_EFFECTIVE_PAGES`.

**Clipping**: with `clip`, every cumulative weight is capped at `clip` before use. This bounds the
variance at the price of a bias the sampling interval knows nothing of (its coverage falls to ~0).
The interval of a clipped estimate is therefore bias-aware: since E[W_k] = 1 under the logging
policy, the mass clipping removed at position k is m_k = 1 − E[min(W_k, clip)], estimated (with
its sampling error) from the bounded clipped weights; with rewards in [0, `reward_max`] the bias of
clipped IPS lies in [−reward_max Σ m_k, 0], of SNIPS within ±reward_max Σ m_k and of DR in
[−reward_max Σ m_k, reward_max Σ (m_k + m_{k−1})], and the interval is widened by it.
`clipped_share` is the share of weights capped; `None` (default) clips nothing.

**Validation**: propensities must be finite probabilities (NaN, negative or > 1 raise ValueError,
as does a logging propensity of 0); a logging propensity below `TINY_PROPENSITY` warns (its weight
alone can carry the estimate).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from scipy import stats as sps

from evaluation.stats import bootstrap_weights, percentile_ci, studentized_ci

MIN_EFFECTIVE_PAGES = 100.0  # below this effective sample the estimate warns
TINY_PROPENSITY = 1e-6  # a logging propensity below this warns
RESAMPLES = 1000


class OPEWarning(UserWarning):
    """An off-policy estimate that rests on few effective pages or on tiny propensities."""


@dataclasses.dataclass(frozen=True)
class OPEEstimate:
    """One estimator's estimate of the target policy's value (reward summed over K positions).

    `interval` names how [ci_low, ci_high] was made; `warnings` says why not to trust it (empty
    when nothing is known against it).
    """

    estimator: str
    value: float
    se: float
    ci_low: float
    ci_high: float
    pages: int
    effective_pages: float
    clipped_share: float
    interval: str = ""
    warnings: tuple[str, ...] = ()


def _validate(name: str, p: np.ndarray, positive: bool) -> None:
    bad = ~np.isfinite(p)
    if bad.any():
        raise ValueError(f"{name} propensities must be finite: {int(bad.sum())} are NaN or inf (first at page "
                         f"{int(np.argwhere(bad)[0][0])}): a missing propensity cannot be importance-weighted")
    if (p < 0).any() or (p > 1).any():
        v = float(p[(p < 0) | (p > 1)][0])
        raise ValueError(f"{name} propensities must be probabilities in [0, 1], got {v!r} "
                         f"({int(((p < 0) | (p > 1)).sum())} outside): they are p(item at k | items above)")
    if positive and (p <= 0).any():
        raise ValueError("logging propensities must be > 0: a deterministic or unknown (0) propensity "
                         "cannot be importance-weighted; use the exploring arm's pages only")


def cumulative_weights(target_propensity: np.ndarray, logging_propensity: np.ndarray,
                       clip: float | None = None) -> tuple[np.ndarray, float]:
    """(R, K) cumulative importance weights W_k and the share of them that `clip` capped.

    Raises ValueError for propensities that are not probabilities (NaN, < 0, > 1) and for logging
    propensities of 0; warns (`OPEWarning`) for logging propensities below `TINY_PROPENSITY`.

    Example:
        >>> w, clipped = cumulative_weights(np.array([[0.5, 1.0]]), np.array([[0.25, 0.5]]))
        >>> w.tolist(), clipped
        ([[2.0, 4.0]], 0.0)
    """
    target = np.asarray(target_propensity, np.float64)
    logging_ = np.asarray(logging_propensity, np.float64)
    _validate("target", target, positive=False)
    _validate("logging", logging_, positive=True)
    weights = np.cumprod(target / logging_, axis=1)
    if clip is None:
        return weights, 0.0
    return np.minimum(weights, clip), float((weights > clip).mean())


def _ess(weights: np.ndarray) -> float:
    last = weights[:, -1] if weights.ndim == 2 and weights.shape[1] else weights
    return float(last.sum() ** 2 / (last**2).sum()) if (last**2).sum() > 0 else 0.0


def _warnings(name: str, weights: np.ndarray, logging_propensity: np.ndarray) -> tuple[str, ...]:
    """Why `name`'s interval should not be trusted, each also issued as an `OPEWarning`."""
    out = []
    ess, pages = _ess(weights), len(weights)
    if ess < MIN_EFFECTIVE_PAGES:
        out.append(f"{name}: {ess:.1f} effective pages of {pages} (< {MIN_EFFECTIVE_PAGES:.0f}): the importance "
                   f"weights are heavy (largest {float(weights.max()):.3g}) and the interval is not to be trusted; "
                   "log more pages of an arm closer to the target policy, or use SNIPS / clipping")
    tiny = np.asarray(logging_propensity, np.float64) < TINY_PROPENSITY
    if tiny.any():
        out.append(f"{name}: {int(tiny.sum())} logging propensities below {TINY_PROPENSITY:g} (smallest "
                   f"{float(np.min(logging_propensity)):.3g}): a float underflow or a mislogged item? each such "
                   "item's weight alone can carry the estimate")
    for message in out:
        warnings.warn(message, OPEWarning, stacklevel=3)
    return tuple(out)


def _rewards(reward: np.ndarray, clip: float | None, reward_max: float) -> np.ndarray:
    r = np.asarray(reward, np.float64)
    if not np.isfinite(r).all():
        raise ValueError("rewards must be finite (a NaN reward is a missing label: drop its page)")
    if clip is not None and ((r < 0) | (r > reward_max)).any():
        raise ValueError(f"a clipped estimate's bias bound needs rewards in [0, reward_max={reward_max}], got "
                         f"[{r.min()}, {r.max()}]: pass reward_max")
    return r


def _clipped_mass(target: np.ndarray, logging_: np.ndarray, clip: float, alpha: float) -> np.ndarray:
    """(K,) an upper confidence bound of m_k = 1 − E[min(W_k, clip)], the weight mass clipping
    removed at each position (E[W_k] = 1), from the bounded clipped weights."""
    capped = np.minimum(np.cumprod(target / logging_, axis=1), clip)  # (R, K)
    z = float(sps.norm.ppf(1 - alpha / 2))
    se = capped.std(axis=0, ddof=1) / np.sqrt(len(capped)) if len(capped) > 1 else np.zeros(capped.shape[1])
    return np.clip(1.0 - capped.mean(axis=0) + z * se, 0.0, None)


def _mean_estimate(name: str, per_page: np.ndarray, weights: np.ndarray, clipped: float, alpha: float,
                   resamples: int, seed: int, bias: tuple[float, float], warned: tuple[str, ...]) -> OPEEstimate:
    """A mean over pages with its bootstrap-t interval, widened by `bias` = (below, above)."""
    n = len(per_page)
    value = float(per_page.mean())
    se = float(per_page.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    boot = bootstrap_weights(n, resamples, np.random.default_rng(seed))  # (B, R)
    means = boot @ per_page / n
    ses = np.sqrt(np.maximum(boot @ per_page**2 / n - means**2, 0.0) / max(n - 1, 1))
    low, high = studentized_ci(value, se, means, ses, alpha)
    kind = "bootstrap-t over pages"
    if bias != (0.0, 0.0):
        low, high, kind = low - bias[0], high + bias[1], kind + " + clipping bias bound"
    return OPEEstimate(name, value, se, low, high, n, _ess(weights), clipped, kind, warned)


def ips(reward: np.ndarray, target_propensity: np.ndarray, logging_propensity: np.ndarray,
        clip: float | None = None, alpha: float = 0.05, resamples: int = RESAMPLES, seed: int = 0,
        reward_max: float = 1.0) -> OPEEstimate:
    """Cascade IPS: mean over pages of Σ_k W_k r_k (shapes (R, K)); rewards in [0, reward_max]
    per position for a clipped estimate's bias bound."""
    weights, clipped = cumulative_weights(target_propensity, logging_propensity, clip)
    reward = _rewards(reward, clip, reward_max)
    bias = (0.0, 0.0)
    if clip is not None:
        bias = (0.0, reward_max * float(_clipped_mass(target_propensity, logging_propensity, clip, alpha).sum()))
    return _mean_estimate("IPS", (weights * reward).sum(axis=1), weights, clipped, alpha, resamples, seed, bias,
                          _warnings("IPS", weights, logging_propensity))


def snips(reward: np.ndarray, target_propensity: np.ndarray, logging_propensity: np.ndarray,
          clip: float | None = None, alpha: float = 0.05, resamples: int = RESAMPLES, seed: int = 0,
          reward_max: float = 1.0) -> OPEEstimate:
    """Self-normalised cascade IPS, Σ_k (Σ_i W_ik r_ik / Σ_i W_ik), CI by percentile bootstrap over pages."""
    weights, clipped = cumulative_weights(target_propensity, logging_propensity, clip)
    reward = _rewards(reward, clip, reward_max)
    warned = _warnings("SNIPS", weights, logging_propensity)
    value = float(((weights * reward).sum(axis=0) / weights.sum(axis=0)).sum())
    boot = bootstrap_weights(len(reward), resamples, np.random.default_rng(seed))  # (B, R)
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = ((boot @ (weights * reward)) / (boot @ weights)).sum(axis=1)  # (B,)
    low, high = percentile_ci(samples, alpha)
    kind = "percentile bootstrap over pages"
    if clip is not None:
        mass = reward_max * float(_clipped_mass(target_propensity, logging_propensity, clip, alpha).sum())
        low, high, kind = low - mass, high + mass, kind + " + clipping bias bound"
    return OPEEstimate("SNIPS", value, float(np.nanstd(samples, ddof=1)), low, high, len(reward), _ess(weights),
                       clipped, kind, warned)


def doubly_robust(reward: np.ndarray, target_propensity: np.ndarray, logging_propensity: np.ndarray,
                  q_logged: np.ndarray, v_target: np.ndarray, clip: float | None = None,
                  alpha: float = 0.05, resamples: int = RESAMPLES, seed: int = 0,
                  reward_max: float = 1.0) -> OPEEstimate:
    """Cascade doubly robust estimate.

    Args:
        reward, target_propensity, logging_propensity: (R, K) as for `ips`.
        q_logged: (R, K) the reward model's prediction for the logged item at each position.
        v_target: (R, K) the reward model's expected reward at each position under the target
            policy given the logged items above it, Σ_a π(a | prefix) q̂_k(a).
        reward_max: rewards (and q̂) lie in [0, reward_max] per position (the clipping bias bound).
    """
    weights, clipped = cumulative_weights(target_propensity, logging_propensity, clip)
    reward = _rewards(reward, clip, reward_max)
    previous = np.concatenate([np.ones((len(weights), 1)), weights[:, :-1]], axis=1)  # W_{k-1}, W_0 = 1
    per_page = (weights * (reward - q_logged) + previous * v_target).sum(axis=1)
    bias = (0.0, 0.0)
    if clip is not None:
        m = _clipped_mass(target_propensity, logging_propensity, clip, alpha)  # (K,)
        bias = (reward_max * float(m.sum()), reward_max * float(m.sum() + m[:-1].sum()))
    return _mean_estimate("DR", per_page, weights, clipped, alpha, resamples, seed, bias,
                          _warnings("DR", weights, logging_propensity))


def plackett_luce_conditionals(scores: np.ndarray, order: np.ndarray, temperature: float) -> np.ndarray:
    """(R, K, N) a Plackett–Luce policy's distribution over the N candidates at each position,
    given the logged items above it (a placed item has probability 0 further down).

    Example:
        >>> p = plackett_luce_conditionals(np.zeros((1, 3)), np.array([[2, 0]]), 1.0)
        >>> p[0].round(2).tolist()
        [[0.33, 0.33, 0.33], [0.5, 0.5, 0.0]]
    """
    logits = np.asarray(scores, np.float64) / temperature  # (R, N)
    order = np.asarray(order, np.int64)
    r, k = order.shape
    out = np.empty((r, k, logits.shape[1]))
    live = np.ones_like(logits, bool)
    rows = np.arange(r)
    for j in range(k):
        masked = np.where(live, logits, -np.inf)
        masked = np.exp(masked - masked.max(axis=1, keepdims=True))
        out[:, j] = masked / masked.sum(axis=1, keepdims=True)
        live[rows, order[:, j]] = False
    return out


def policy_inputs(conditionals: np.ndarray, order: np.ndarray, q_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                             np.ndarray]:
    """From a target policy's (R, K, N) conditionals and a reward model's (R, N, K) predictions:
    the target propensities of the logged items, q̂ of the logged items and V̂ (all (R, K))."""
    r, k = order.shape
    rows, cols = np.arange(r)[:, None], np.arange(k)[None, :]
    target = conditionals[rows, cols, order]
    q_logged = q_hat[rows, order, cols]
    v_target = np.einsum("rkn,rnk->rk", conditionals, q_hat)
    return target, q_logged, v_target


def plackett_luce_value(scores: np.ndarray, temperature: float, click_prob: np.ndarray) -> float:
    """The exact value E[Σ_k r_k] of a Plackett–Luce policy over (R, N) `scores` under a known
    (R, N, K) per-position click model, by enumerating its ordered top-K (N!/(N−K)! orders: for the
    small N, K of a check against the truth, not for production sizes).

    Example:
        >>> v = plackett_luce_value(np.zeros((1, 2)), 1.0, np.array([[[1.0, 0.0], [0.0, 1.0]]]))
        >>> round(v, 3)  # half the time items 0, 1 (both clicked), half 1, 0 (neither): 1 click
        1.0
    """
    import itertools

    logits = np.asarray(scores, np.float64) / temperature
    e = np.exp(logits - logits.max(axis=1, keepdims=True))  # (R, N)
    r, n = e.shape
    k = click_prob.shape[2]
    rows = np.arange(r)
    value = np.zeros(r)
    for order in itertools.permutations(range(n), k):
        prob, left, reward = np.ones(r), e.sum(axis=1), np.zeros(r)
        for j, item in enumerate(order):
            # Items whose weight underflowed to 0 (a very low temperature) are never drawn.
            prob = np.where(left > 0, prob * e[:, item] / np.where(left > 0, left, 1.0), 0.0)
            left = left - e[:, item]
            reward = reward + click_prob[rows, item, j]
        value += prob * reward
    return float(value.mean())
