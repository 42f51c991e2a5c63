"""The generative module: short posts written for a user, grounded in the items the feed ranks
highest for them, checked (grounding, guardrails) and cached ahead of time (issue: generation).

The data path: `GenerationWorker` (worker.py) → `plan(user)` → `PostWriter.write` (writer.py):
prompts (prompts.py) → `LanguageModel.generate` (llm.py) → `Catalog.check` / `repair` /
`template_post` (grounding.py) → `Guardrails.check` (guardrails.py) → `Critic` (critic.py) →
`PostCache` (cache.py), which GetFeed reads without waiting.
"""

from generation.interface import GeneratedPost, LanguageModel, PostGenerator, PostRequest, SourceItem

__all__ = ["GeneratedPost", "LanguageModel", "PostGenerator", "PostRequest", "SourceItem"]
