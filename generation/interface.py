"""What the generative module takes and returns, and the backend interfaces behind it.

A writer turns a `PostRequest` (a user, 2-4 source items with their titles and categories, the
user's interests) into a short `GeneratedPost` with its provenance, so every generated item in a
feed can be traced back to the items it was grounded in, the model that wrote it, the prompt
version and how it passed the checks (`method`).

Two protocols keep the backends swappable by config: a `LanguageModel` (SmolLM2-135M on CPU
today, a larger model on a GPU tomorrow) and a `PostGenerator` (what the feed calls).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np

MIN_SOURCES, MAX_SOURCES = 2, 4
METHODS = ("model", "repaired", "template")
KINDS = ("digest", "because", "caption")
Method = Literal["model", "repaired", "template"]
Kind = Literal["digest", "because", "caption"]
ChatMessage = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}
Prompt = str | list[ChatMessage]  # chat messages (the chat template is applied) or raw text


@dataclasses.dataclass(frozen=True)
class SourceItem:
    """A catalog item a post is written from: what the prompt and the checks need to know of it.

    Args:
        item_id: the catalog id (provenance names it).
        title: the catalog title as stored ("Matrix, The (1999)"); prompts show its display form.
        content_type: "movie", "arts_product", ...
        categories: genres or product categories.
        creator_id: who made it, when the catalog knows (creator-specific blocked words apply).
    """

    item_id: str
    title: str
    content_type: str
    categories: tuple[str, ...] = ()
    creator_id: str | None = None


@dataclasses.dataclass(frozen=True)
class PostRequest:
    """One post to write for one user.

    Args:
        user_id: whom it is for (seeds the sampling and the template choice).
        sources: the 2-4 items the post is grounded in (the user's top ranked items).
        surface: where it is shown; surface-specific blocked words apply.
        interests: the user's interests in words (top genres or categories), for the prompt.
        kind: "digest", "because" (sources[0] is what the user liked, the rest follow from it)
            or "caption"; None lets the writer pick one per user (a seeded hash of the user).
    """

    user_id: str
    sources: tuple[SourceItem, ...]
    surface: str = "home"
    interests: tuple[str, ...] = ()
    kind: Kind | None = None

    def __post_init__(self) -> None:
        if not MIN_SOURCES <= len(self.sources) <= MAX_SOURCES:
            raise ValueError(f"a post is grounded in {MIN_SOURCES}..{MAX_SOURCES} source items, "
                             f"got {len(self.sources)}")
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def source_item_ids(self) -> tuple[str, ...]:
        return tuple(s.item_id for s in self.sources)

    @property
    def creator_ids(self) -> tuple[str, ...]:
        return tuple(s.creator_id for s in self.sources if s.creator_id)


@dataclasses.dataclass(frozen=True)
class GeneratedPost:
    """A generated post (content type ``generated``) and its provenance.

    `method` says how its text passed the checks: "model" (as the model wrote it), "repaired"
    (sentences naming other items, repeating or running over length removed) or "template"
    (the deterministic fallback built from the same sources). `created_ms` is wall-clock ms.
    """

    post_id: str
    user_id: str
    text: str
    source_item_ids: tuple[str, ...]
    model_version: str
    prompt_version: str
    method: Method = "model"
    created_ms: int = 0
    kind: Kind = "digest"
    score: float = 0.0  # the critic's score of the chosen candidate (0 for templates)

    def __post_init__(self) -> None:
        if not self.source_item_ids:
            raise ValueError("a generated post must name the source items it is grounded in")
        if not self.text.strip():
            raise ValueError("a generated post must have text")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")


@runtime_checkable
class LanguageModel(Protocol):
    """A causal language model that writes text for prompts (see `generation.llm`).

    `temperature` 0 means greedy decoding; `seeds` (one per prompt, or one for all) make sampling
    reproducible and independent of the batch a prompt is decoded in.
    """

    model_version: str

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seeds: int | Sequence[int] = 0) -> list[str]:
        """One completion per prompt, decoded together as a batch."""
        ...

    def stream(self, prompt: Prompt, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               seed: int = 0) -> Iterator[str]:
        """The completion of one prompt, piece by piece as it is decoded."""
        ...

    def log_prob(self, prompts: Sequence[Prompt], texts: Sequence[str]) -> np.ndarray:
        """(B,) mean log-probability per token of each text following its prompt."""
        ...


@runtime_checkable
class PostGenerator(Protocol):
    """What the feed calls: posts for a batch of users (see `generation.writer.PostWriter`)."""

    model_version: str

    def write(self, requests: Sequence[PostRequest]) -> list[GeneratedPost]:
        """At most one post per request (batched across users where the backend can)."""
        ...
