"""The value model: task predictions → one score per candidate (the blender, `serving.mixing.blender`,
orders them).

score = Σ_t weight_t · prediction_t, with weights per surface / experiment arm coming from config
(negative weights for negative feedback such as hide or report).
"""

from __future__ import annotations

import numpy as np


def value_scores(predictions: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """(B,) weighted sum of the task predictions named in `weights`.

    Raises KeyError naming a weighted task the model does not predict: a value model that silently
    ignores a task would serve the wrong objective.
    """
    missing = sorted(set(weights) - set(predictions))
    if missing:
        raise KeyError(f"value model weights name task(s) {missing} that the ranker does not predict "
                       f"(it predicts {sorted(predictions)})")
    n = len(next(iter(predictions.values()))) if predictions else 0
    score = np.zeros(n, np.float64)
    for task, weight in weights.items():
        score += weight * np.asarray(predictions[task], np.float64)
    return score
