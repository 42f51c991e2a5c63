"""What a post generator takes and returns.

A generator writes a short post for a user from 2-4 source items (their titles and categories)
and returns it with its provenance, so every generated item in a feed can be traced back to the
items it was grounded in, the model that wrote it and the prompt version.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

MIN_SOURCES, MAX_SOURCES = 2, 4


@dataclasses.dataclass(frozen=True)
class PostRequest:
    user_id: str
    source_item_ids: tuple[str, ...]
    surface: str = "home"

    def __post_init__(self) -> None:
        if not MIN_SOURCES <= len(self.source_item_ids) <= MAX_SOURCES:
            raise ValueError(f"a post is grounded in {MIN_SOURCES}..{MAX_SOURCES} source items, "
                             f"got {len(self.source_item_ids)}")


@dataclasses.dataclass(frozen=True)
class GeneratedPost:
    """A generated post (content type ``generated``) and its provenance."""

    post_id: str
    user_id: str
    text: str
    source_item_ids: tuple[str, ...]
    model_version: str
    prompt_version: str

    def __post_init__(self) -> None:
        if not self.source_item_ids:
            raise ValueError("a generated post must name the source items it is grounded in")
        if not self.text.strip():
            raise ValueError("a generated post must have text")


@runtime_checkable
class PostGenerator(Protocol):
    """Backend interface: a small local model on CPU, or a larger one on a GPU, chosen by config."""

    model_version: str

    def generate(self, requests: list[PostRequest]) -> list[GeneratedPost]:
        """One post per request (batched across users where the backend can)."""
        ...
