"""The critic: which of a user's candidate posts to keep.

Several candidates are sampled per user; those that pass the checks are scored and the best is
kept. The score is

    value_weight * value(user, post) + fluency_weight * mean token log-prob(post | prompt)

- value: the feed's predicted value of the post for this user (the lead's `value_fn`: the ranker
  and value model scoring the post as an item, in the value model's own units). Without one it is
  0 and fluency alone decides.
- fluency: the language model's mean log-probability per token of the post after its prompt
  (nats, typically -0.5 to -3 for this model; higher reads more naturally). Its weight, 0.1, makes
  a difference of 1 nat per token worth 0.1 of value: fluency breaks ties between posts the feed
  values alike, and a clearly more valuable post wins even if it reads a little less smoothly.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import numpy as np

from generation.interface import LanguageModel, Prompt, SourceItem

logger = logging.getLogger(__name__)

ValueFn = Callable[[str, list[str], list[SourceItem]], np.ndarray]
"""value_fn(user_id, texts, sources) -> (n,) the feed's predicted value of each text for the user."""


@dataclasses.dataclass(frozen=True)
class CriticConfig:
    """The weights of the critic's score (see the module doc)."""

    value_weight: float = 1.0
    fluency_weight: float = 0.1


class Critic:
    """Scores candidate posts: the feed's value of a post for its user plus a fluency term.

    Args:
        lm: scores fluency (`LanguageModel.log_prob`); None leaves fluency out.
        value_fn: the feed's value of posts for a user; None counts value as 0.
        config: the weights.

    Example:
        >>> critic = Critic(None, lambda user, texts, sources: np.array([len(t) for t in texts], float))
        >>> critic.score([("u1", "prompt", ["short", "a longer one"], [])])
        [array([ 5., 12.])]
        >>> broken = Critic(None, lambda user, texts, sources: 1 / 0)
        >>> broken.score([("u1", "prompt", ["short"], [])]), broken.value_errors
        ([array([0.])], 1)
    """

    def __init__(self, lm: LanguageModel | None = None, value_fn: ValueFn | None = None,
                 config: CriticConfig = CriticConfig()) -> None:
        self.lm, self.value_fn, self.config = lm, value_fn, config
        self.value_errors = 0  # value_fn calls that raised (their candidates scored by fluency only)

    def score(self, groups: Sequence[tuple[str, Prompt, list[str], list[SourceItem]]]) -> list[np.ndarray]:
        """The score of every candidate, per group of one user's candidates.

        Args:
            groups: (user_id, prompt, candidate texts, sources) per user.

        Returns:
            One (n_i,) float array per group; fluency is computed in one batch over all groups.
        """
        flat_prompts = [prompt for _, prompt, texts, _ in groups for _ in texts]
        flat_texts = [t for _, _, texts, _ in groups for t in texts]
        fluency = np.zeros(len(flat_texts))
        if self.lm is not None and self.config.fluency_weight and flat_texts:
            fluency = np.asarray(self.lm.log_prob(flat_prompts, flat_texts), dtype=np.float64)
        out, at = [], 0
        for user_id, _, texts, sources in groups:
            value = np.zeros(len(texts))
            if self.value_fn is not None and texts:
                try:
                    value = np.asarray(self.value_fn(user_id, list(texts), list(sources)),
                                       dtype=np.float64).reshape(len(texts))
                except Exception:
                    # A failing ranker must not cost the user their post: fluency alone decides.
                    self.value_errors += 1
                    logger.exception("critic: value_fn failed for user %s; scoring by fluency only", user_id)
            out.append(self.config.value_weight * value
                       + self.config.fluency_weight * fluency[at:at + len(texts)])
            at += len(texts)
        return out
