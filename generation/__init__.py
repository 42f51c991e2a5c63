"""The generative module: short posts written for a user, grounded in the items the feed ranks
highest for them, checked (grounding, guardrails) and stored ahead of time (issue: generation).

The data path: in a feed server, `GenerationWorker` (worker.py) → `PostStore.claim` (store.py) →
`plan(user)` → `RemotePostWriter.write` (remote.py) → gRPC `generation.v1.GenerationService`
(service.py, in `feed serve-generation`'s process) → `PostWriter.write` (writer.py): prompts
(prompts.py) → `LanguageModel.generate` (llm.py) → `Catalog.check` / `repair` / `template_post`
(grounding.py) → `Guardrails.check` (guardrails.py) → `Critic` (critic.py); back in the feed
server, `PostStore.put`, which every feed process's GetFeed reads without waiting.
"""

from generation.interface import GeneratedPost, LanguageModel, PostGenerator, PostRequest, SourceItem

__all__ = ["GeneratedPost", "LanguageModel", "PostGenerator", "PostRequest", "SourceItem"]
