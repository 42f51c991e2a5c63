"""Off-policy evaluation of ranking policies from logs with propensities.

A page is a ranking of K positions; an exploring arm (`ranker.exploration`) logs, for each served
item, its propensity p0(a_k | a_1..a_{k-1}): the logging policy's probability of that item at that
position given the items above it. A candidate (target) policy π gives the same conditional
probabilities for the logged items; their ratio at position k is w_k = π(a_k | prefix) / p0(a_k | prefix)
and the cumulative weight W_k = w_1 ··· w_k is the likelihood ratio of the page's first k items.

The value estimated is V(π) = E[Σ_k r_k], the expected reward (e.g. clicks) summed over the K
positions of a page. Estimators, each returning a point estimate, a standard error and a
confidence interval:

- **IPS** (cascade inverse propensity scoring): mean over pages of Σ_k W_k r_k. Unbiased when the
  reward at position k depends only on the items at positions 1..k (the cascade assumption,
  Kiyohara et al., WSDM 2022) and p0 > 0 wherever π > 0. CI: normal, from the per-page sums.
- **SNIPS** (self-normalised IPS): Σ_k Σ_i W_ik r_ik / Σ_i W_ik, per position. Slightly biased,
  much less variable when weights are heavy. CI: percentile bootstrap over pages.
- **DR** (cascade doubly robust): mean of Σ_k [W_k (r_k − q̂_k(a_k)) + W_{k−1} V̂_k], V̂_k =
  Σ_a π(a | prefix) q̂_k(a), W_0 = 1, with q̂ a reward model. Unbiased under the same assumption
  whatever q̂ is; the better q̂, the smaller its variance. CI: normal.

**Clipping**: with `clip`, every cumulative weight is capped at `clip` before use. This bounds the
variance at the price of a bias (towards the logging policy's value, downward for rewards ≥ 0)
that grows with the share of clipped weights, reported as `clipped_share`; `None` (default)
clips nothing. The effective sample size (Σ W)² / Σ W² of the last position's weights says how
many pages the estimate is effectively worth.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats as sps

from evaluation.stats import bootstrap_weights, percentile_ci


@dataclasses.dataclass(frozen=True)
class OPEEstimate:
    """One estimator's estimate of the target policy's value (reward summed over K positions)."""

    estimator: str
    value: float
    se: float
    ci_low: float
    ci_high: float
    pages: int
    effective_pages: float
    clipped_share: float


def cumulative_weights(target_propensity: np.ndarray, logging_propensity: np.ndarray,
                       clip: float | None = None) -> tuple[np.ndarray, float]:
    """(R, K) cumulative importance weights W_k and the share of them that `clip` capped.

    Example:
        >>> w, clipped = cumulative_weights(np.array([[0.5, 1.0]]), np.array([[0.25, 0.5]]))
        >>> w.tolist(), clipped
        ([[2.0, 4.0]], 0.0)
    """
    target = np.asarray(target_propensity, np.float64)
    logging_ = np.asarray(logging_propensity, np.float64)
    if (logging_ <= 0).any():
        raise ValueError("logging propensities must be > 0: a deterministic or unknown (0) propensity "
                         "cannot be importance-weighted; use the exploring arm's pages only")
    weights = np.cumprod(target / logging_, axis=1)
    if clip is None:
        return weights, 0.0
    return np.minimum(weights, clip), float((weights > clip).mean())


def _normal(name: str, per_page: np.ndarray, weights: np.ndarray, clipped: float, alpha: float) -> OPEEstimate:
    n = len(per_page)
    value = float(per_page.mean())
    se = float(per_page.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    z = float(sps.norm.ppf(1 - alpha / 2))
    return OPEEstimate(name, value, se, value - z * se, value + z * se, n, _ess(weights), clipped)


def _ess(weights: np.ndarray) -> float:
    last = weights[:, -1] if weights.ndim == 2 and weights.shape[1] else weights
    return float(last.sum() ** 2 / (last**2).sum()) if (last**2).sum() > 0 else 0.0


def ips(reward: np.ndarray, target_propensity: np.ndarray, logging_propensity: np.ndarray,
        clip: float | None = None, alpha: float = 0.05) -> OPEEstimate:
    """Cascade IPS: mean over pages of Σ_k W_k r_k (shapes (R, K))."""
    weights, clipped = cumulative_weights(target_propensity, logging_propensity, clip)
    return _normal("IPS", (weights * np.asarray(reward, np.float64)).sum(axis=1), weights, clipped, alpha)


def snips(reward: np.ndarray, target_propensity: np.ndarray, logging_propensity: np.ndarray,
          clip: float | None = None, alpha: float = 0.05, resamples: int = 500, seed: int = 0) -> OPEEstimate:
    """Self-normalised cascade IPS, Σ_k (Σ_i W_ik r_ik / Σ_i W_ik), CI by bootstrap over pages."""
    weights, clipped = cumulative_weights(target_propensity, logging_propensity, clip)
    reward = np.asarray(reward, np.float64)
    value = float(((weights * reward).sum(axis=0) / weights.sum(axis=0)).sum())
    boot = bootstrap_weights(len(reward), resamples, np.random.default_rng(seed))  # (B, R)
    samples = ((boot @ (weights * reward)) / (boot @ weights)).sum(axis=1)  # (B,)
    low, high = percentile_ci(samples, alpha)
    return OPEEstimate("SNIPS", value, float(np.nanstd(samples, ddof=1)), low, high, len(reward), _ess(weights),
                       clipped)


def doubly_robust(reward: np.ndarray, target_propensity: np.ndarray, logging_propensity: np.ndarray,
                  q_logged: np.ndarray, v_target: np.ndarray, clip: float | None = None,
                  alpha: float = 0.05) -> OPEEstimate:
    """Cascade doubly robust estimate.

    Args:
        reward, target_propensity, logging_propensity: (R, K) as for `ips`.
        q_logged: (R, K) the reward model's prediction for the logged item at each position.
        v_target: (R, K) the reward model's expected reward at each position under the target
            policy given the logged items above it, Σ_a π(a | prefix) q̂_k(a).
    """
    weights, clipped = cumulative_weights(target_propensity, logging_propensity, clip)
    previous = np.concatenate([np.ones((len(weights), 1)), weights[:, :-1]], axis=1)  # W_{k-1}, W_0 = 1
    reward = np.asarray(reward, np.float64)
    per_page = (weights * (reward - q_logged) + previous * v_target).sum(axis=1)
    return _normal("DR", per_page, weights, clipped, alpha)


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
