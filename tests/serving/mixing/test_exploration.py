"""Exploration policies: sampled orders whose propensities are the policies' probabilities."""

import numpy as np
import pytest

from serving.mixing.exploration import ExplorationConfig, epsilon_greedy_sample, explore


def test_epsilon_greedy_draws_match_their_propensities():
    rng = np.random.default_rng(0)
    draws = [epsilon_greedy_sample(np.arange(4), 0.5, 2, rng) for _ in range(8000)]
    first = np.bincount([o[0] for o, _ in draws], minlength=4) / len(draws)
    np.testing.assert_allclose(first, [0.5 + 0.125, 0.125, 0.125, 0.125], atol=0.015)
    # p(0 then 1) = 0.625 * (0.5 + 0.5/3): the product of the logged conditionals
    pair = np.mean([o[0] == 0 and o[1] == 1 for o, _ in draws])
    assert pair == pytest.approx(0.625 * (0.5 + 0.5 / 3), abs=0.015)
    logged = next(p for o, p in draws if o[0] == 0 and o[1] == 1)
    assert logged.prod() == pytest.approx(0.625 * (0.5 + 0.5 / 3))


def test_explore_keeps_every_item_once_and_the_blended_tail():
    order = np.array([4, 2, 0, 1, 3, 5])
    served, p = explore(order, np.arange(6.0), ExplorationConfig("plackett_luce", temperature=1.0, depth=2),
                        np.random.default_rng(1))
    assert sorted(served) == list(range(6)) and np.all(p[2:] == 1.0) and np.all((p[:2] > 0) & (p[:2] < 1))
    assert [i for i in order if i not in served[:2]] == served[2:].tolist()
