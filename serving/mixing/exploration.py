"""Exploration: a randomised feed order whose probabilities are known, for off-policy evaluation.

An arm that explores (`serving.experiments.Arm.exploration`) does not serve the blender's order as
is: it samples the first `depth` positions, and every served item carries its *propensity*, the
probability that the arm's policy put that item at that position **given the items above it**
(positions after `depth` follow the blended order: propensity 1 given the prefix). The product of
a page's propensities is the probability of the whole page, and the ratio of two policies'
propensities position by position is what the cascade estimators of `evaluation.ope` weight with.

Two policies:

- ``plackett_luce``: position by position, item i among the remaining ones with probability
  exp(v_i / T) / Σ_remaining exp(v_j / T), v the value model's scores (the blender's type mix and
  diversity do not apply to sampled positions); sampled in one pass with the Gumbel-top-k trick.
- ``epsilon_greedy``: position by position, the blended order's next item with probability 1 − ε,
  else an item drawn uniformly from the remaining ones (the greedy item included), so the greedy
  item's propensity is 1 − ε + ε / m and any other's ε / m, m the number of remaining items.

Sampling is seeded (`session_seed`: user and session start), so the pages of one session come
from one sampled order and never repeat an item.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Literal

import numpy as np


@dataclasses.dataclass(frozen=True)
class ExplorationConfig:
    """How an experiment arm randomises its feed (``kind = "none"``: it does not)."""

    kind: Literal["none", "plackett_luce", "epsilon_greedy"] = "none"
    temperature: float = 0.1  # Plackett–Luce: on the value model's scale (values are ~0..2)
    epsilon: float = 0.1  # epsilon-greedy: the chance a position is drawn at random
    depth: int = 20  # positions sampled; later ones follow the blended order

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"exploration temperature must be > 0, got {self.temperature}")
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"exploration epsilon must be in [0, 1], got {self.epsilon}")
        if self.depth < 1:
            raise ValueError(f"exploration depth must be >= 1, got {self.depth}")


def session_seed(user_id: str, session_ms: int, salt: str = "") -> int:
    """A 64-bit seed from the user and their session's start: stable across the session's pages."""
    return int.from_bytes(hashlib.sha256(f"{salt}:{user_id}:{session_ms}".encode()).digest()[:8], "big")


def plackett_luce_propensities(scores: np.ndarray, order: np.ndarray, temperature: float) -> np.ndarray:
    """(k,) p(order[j] at position j | order[:j] above it) under Plackett–Luce on `scores`.

    Example:
        >>> plackett_luce_propensities(np.log(np.array([1.0, 2.0, 1.0])), np.array([1, 0]), 1.0).round(3).tolist()
        [0.5, 0.5]
    """
    logits = np.asarray(scores, np.float64) / temperature
    order = np.asarray(order, np.int64)
    out = np.empty(len(order))
    remaining = np.ones(len(logits), bool)
    for j, i in enumerate(order):
        live = logits[remaining]
        top = live.max()
        out[j] = np.exp(logits[i] - top) / np.exp(live - top).sum()
        remaining[i] = False
    return out


def plackett_luce_sample(scores: np.ndarray, temperature: float, k: int,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A Plackett–Luce draw of the top `k` of `scores`: (order (k,), propensities (k,)).

    Gumbel-top-k: adding Gumbel noise to the logits and sorting draws a ranking from exactly the
    Plackett–Luce distribution (Yellott, 1977).
    """
    logits = np.asarray(scores, np.float64) / temperature
    k = min(k, len(logits))
    order = np.argsort(-(logits + rng.gumbel(size=len(logits))), kind="stable")[:k]
    return order, plackett_luce_propensities(scores, order, temperature)


def epsilon_greedy_propensities(ranked: np.ndarray, order: np.ndarray, epsilon: float) -> np.ndarray:
    """(k,) p(order[j] at position j | order[:j]) when each position takes the greedy order's
    next remaining item with probability 1 − ε, else a uniformly drawn remaining item.

    Example:
        >>> epsilon_greedy_propensities(np.array([0, 1, 2, 3]), np.array([0, 2]), 0.2).round(3).tolist()
        [0.85, 0.067]
    """
    ranked, order = np.asarray(ranked, np.int64), np.asarray(order, np.int64)
    placed: set[int] = set()
    cursor = 0
    out = np.empty(len(order))
    for j, item in enumerate(order):
        while ranked[cursor] in placed:
            cursor += 1
        remaining = len(ranked) - j
        out[j] = epsilon / remaining + (1.0 - epsilon) * (item == ranked[cursor])
        placed.add(int(item))
    return out


def epsilon_greedy_sample(ranked: np.ndarray, epsilon: float, k: int,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An epsilon-greedy draw of `k` positions from the greedy order `ranked`: (order, propensities)."""
    ranked = np.asarray(ranked, np.int64)
    k = min(k, len(ranked))
    remaining = list(ranked)
    order = np.empty(k, np.int64)
    for j in range(k):
        pick = int(rng.integers(len(remaining))) if rng.random() < epsilon else 0
        order[j] = remaining.pop(pick)
    return order, epsilon_greedy_propensities(ranked, order, epsilon)


def explore(order: np.ndarray, values: np.ndarray, config: ExplorationConfig,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The served order and per-position propensities, from the blended `order` (indices into
    `values`, the candidates' value scores). With ``kind = "none"``: the order as is, propensities 0
    (the proto's "deterministic / unknown").

    Example:
        >>> o, p = explore(np.array([2, 0, 1]), np.array([0.5, 0.1, 0.9]),
        ...                ExplorationConfig("epsilon_greedy", epsilon=0.0, depth=2), np.random.default_rng(0))
        >>> o.tolist(), p.tolist()
        ([2, 0, 1], [1.0, 1.0, 1.0])
    """
    order = np.asarray(order, np.int64)
    if config.kind == "none" or len(order) == 0:
        return order, np.zeros(len(order))
    if config.kind == "plackett_luce":
        local, head_p = plackett_luce_sample(np.asarray(values, np.float64)[order], config.temperature,
                                             config.depth, rng)
    else:
        local, head_p = epsilon_greedy_sample(np.arange(len(order)), config.epsilon, config.depth, rng)
    rest = np.setdiff1d(np.arange(len(order)), local, assume_unique=True)  # blended order kept
    served = order[np.concatenate([local, rest])]
    return served, np.concatenate([head_p, np.ones(len(rest))])


def explore_session(order: np.ndarray, values: np.ndarray, config: ExplorationConfig | None, user_id: str,
                    session_ms: int, arm: str) -> tuple[np.ndarray, np.ndarray]:
    """The served order of a session's feed and its per-position propensities: `explore`, seeded by
    the session (`session_seed` of the user, the session's start and the arm), so every page of a
    session comes from one draw. Without exploration (None): the blended order, propensities 0."""
    if config is None:
        return order, np.zeros(len(order))
    rng = np.random.default_rng(session_seed(user_id, session_ms, arm))
    return explore(order, values, config, rng)
