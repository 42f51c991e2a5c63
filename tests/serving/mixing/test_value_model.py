"""The value model: task predictions weighted into one score per candidate."""

import numpy as np
import pytest

from serving.mixing.value_model import value_scores


def test_value_model_weights_tasks_and_refuses_unknown_ones():
    preds = {"click": np.array([0.2, 0.9]), "hide": np.array([0.5, 0.1])}
    scores = value_scores(preds, {"click": 1.0, "hide": -2.0})
    assert scores.tolist() == pytest.approx([-0.8, 0.7])
    with pytest.raises(KeyError, match="follow"):
        value_scores(preds, {"follow": 1.0})
