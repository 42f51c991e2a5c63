"""The post writer: prompts → candidates → grounding and guardrails → critic → one post per user.

For a batch of users, `PostWriter.write`:

1. builds each user's prompt (`generation.prompts`) and samples `num_candidates` completions per
   user in one batched `generate` call (seeded by the user, the try and the candidate);
2. checks every candidate against its sources and the whole catalog (`Catalog.check`); one that
   fails is repaired (`repair`: sentences naming other items, repeating or past the length
   removed) and kept if the repaired text passes and still names a source;
3. applies the guardrails (`Guardrails.check`) to what is left;
4. keeps the critic's best survivor per user (method "model" or "repaired");
5. regenerates for users left without one, up to `max_tries` more times, then falls back to
   `template_post` (method "template"), which is grounded by construction; a template refused by
   the guardrails (a source title holding a blocked word) leaves the user without a post.

Every refusal is counted by reason (`PostWriter.stats`) and logged. With temperature 0 (greedy)
every candidate and every try would be the same text, so one candidate and one try are decoded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

from feedcore.config import GenerationConfig
from generation.claims import Claim, ClaimChecker, drop_false_claims
from generation.critic import Critic
from generation.grounding import Catalog, GroundingResult, repair, template_post
from generation.guardrails import Guardrails
from generation.interface import KINDS, GeneratedPost, Kind, LanguageModel, Method, PostRequest, Prompt
from generation.prompts import PROMPTS, answer_opening, build_prompt

logger = logging.getLogger(__name__)


def _hash_int(*parts: object) -> int:
    return int.from_bytes(hashlib.sha1(":".join(map(str, parts)).encode()).digest()[:8], "big")


def post_id(user_id: str, text: str, source_item_ids: Sequence[str]) -> str:
    """A post's stable id: the same user, text and sources always give the same id.

    >>> post_id("42", "Two films.", ["1", "2"])
    'gen:42:9f5b84aa8978'
    """
    digest = hashlib.sha1("\x1f".join([text, *source_item_ids]).encode()).hexdigest()[:12]
    return f"gen:{user_id}:{digest}"


# Sentences that repeat the prompt's instructions instead of writing the post.
_ECHO = re.compile(r"short sentences?|catchy sentence|facts given|the facts\b|as a title|the others\b|"
                   r"first recommendation|tell (?:them|the reader)|the reader|\bwriter\b", re.I)
_SENTENCES = re.compile(r"[^.!?\n]+(?:[.!?]+[\"”')]*|$)")


def _question(prompt: Prompt) -> Prompt:
    """A prompt without the answer's opening (the critic scores whole answers after the question)."""
    return prompt[:-1] if answer_opening(prompt) else prompt


def pick_kind(request: PostRequest, seed: int = 0) -> Kind:
    """The request's kind, or one picked by a seeded hash of the user (so feeds get a mix)."""
    return request.kind or KINDS[_hash_int(seed, "kind", request.user_id) % len(KINDS)]


@dataclasses.dataclass(frozen=True)
class CandidateTrace:
    """What happened to one candidate (for evaluation and debugging; see `PostWriter.write`)."""

    user_id: str
    attempt: int
    text: str
    check: GroundingResult
    served_text: str | None  # the text that passed (repaired or not); None: refused
    method: Method | None
    refused: str | None  # the grounding or guardrail reason it was refused for
    claims: tuple[Claim, ...] = ()  # the attribute claims of the text as written, with their verdicts


class PostWriter:
    """Writes checked, grounded posts for batches of users (a `PostGenerator`).

    Args:
        lm: the language model.
        catalog: every catalog title (the grounding check looks for all of them).
        guardrails: the content rules.
        config: `[generation]`: decoding, candidates, tries, batch size, length, prompt version.
        critic: picks among passing candidates; default: fluency only (no value function).
        clock: wall-clock seconds, for `created_ms`.
        check_claims: check every attribute claim (`generation.claims`); False is the writer before
            issue 20 (names only), kept for the benchmark's comparison.
    """

    def __init__(self, lm: LanguageModel, catalog: Catalog, guardrails: Guardrails, config: GenerationConfig,
                 critic: Critic | None = None, clock: Callable[[], float] = time.time,
                 check_claims: bool = True) -> None:
        if config.prompt_version not in PROMPTS:
            raise ValueError(f"[generation] prompt_version {config.prompt_version!r} is not one of {sorted(PROMPTS)}")
        self.lm, self.catalog, self.guardrails, self.config = lm, catalog, guardrails, config
        self.critic = critic if critic is not None else Critic(lm)
        self.claims = ClaimChecker(catalog.categories)
        self.check_claims = check_claims
        self.clock = clock
        self.model_version = lm.model_version
        self._lock = threading.Lock()
        self._stats: Counter[str] = Counter()

    @property
    def stats(self) -> Counter[str]:
        """Counts so far: "method:<m>" per post written, "refused:<reason>" per refused candidate,
        "no_post" per user left without one."""
        with self._lock:
            return Counter(self._stats)

    def _count(self, *keys: str) -> None:
        with self._lock:
            self._stats.update(keys)

    def _prompt(self, request: PostRequest, kind: Kind, variant: int = 0) -> Prompt:
        return build_prompt(request.sources, request.interests, kind, self.config.prompt_version, variant)

    def _vet(self, request: PostRequest, text: str, attempt: int) -> CandidateTrace:
        """Grounding, repair and guardrails for one candidate."""
        text = text.strip()
        check = self.catalog.check(text, request.sources, request.interests, self.config.max_chars)
        claims = tuple(self.claims.check(text, request.sources, self.catalog, request.interests))
        served, method, refused = text, "model", None
        if not check.ok:
            served, method = repair(check), "repaired"
            refused = check.reason
        false = [c for c in self.claims.check(served, request.sources, self.catalog, request.interests)
                 if not c.true] if served and self.check_claims else []
        if false:
            served, method = drop_false_claims(served, false), "repaired"
            refused = refused or "false_claim"
        if served and _ECHO.search(served):  # the model repeating its instructions
            kept = [m.group().strip() for m in _SENTENCES.finditer(served) if not _ECHO.search(m.group())]
            served, method = " ".join(k for k in kept if k), "repaired"
            refused = refused or "echo"
        if method == "repaired":
            again = self.catalog.check(served, request.sources, request.interests, self.config.max_chars)
            if again.ok and (not self.check_claims or all(
                    c.true for c in self.claims.check(served, request.sources, self.catalog, request.interests))):
                refused = None
            else:
                refused = refused or again.reason or "false_claim"
        if refused is None:
            refused = self.guardrails.check(served, request.surface, request.creator_ids)
        if refused is not None:
            self._count(f"refused:{refused}")
            logger.info("generated post for user %s refused (%s): %r", request.user_id, refused, text[:120])
            return CandidateTrace(request.user_id, attempt, text, check, None, None, refused, claims)
        return CandidateTrace(request.user_id, attempt, text, check, served, method, None, claims)

    def _post(self, request: PostRequest, kind: Kind, text: str, method: Method, score: float) -> GeneratedPost:
        self._count(f"method:{method}")
        return GeneratedPost(post_id(request.user_id, text, request.source_item_ids), request.user_id, text,
                             request.source_item_ids, self.model_version, f"{self.config.prompt_version}/{kind}",
                             method=method, created_ms=int(self.clock() * 1000), kind=kind, score=score)

    def _template(self, request: PostRequest, kind: Kind) -> GeneratedPost | None:
        text = template_post(request.sources, request.interests, kind, request.user_id, self.config.seed)
        refused = self.guardrails.check(text, request.surface, request.creator_ids)
        if refused is not None:
            self._count(f"refused:{refused}", "no_post")
            logger.warning("no post for user %s: even the template is refused (%s)", request.user_id, refused)
            return None
        return self._post(request, kind, text, "template", 0.0)

    def write(self, requests: Sequence[PostRequest], trace: list[CandidateTrace] | None = None) -> list[GeneratedPost]:
        """At most one post per request, in request order, batched `config.batch_size` users at a time.

        Args:
            requests: one per user.
            trace: if given, every candidate's `CandidateTrace` is appended to it.
        """
        posts: list[GeneratedPost] = []
        size = max(1, self.config.batch_size)
        for start in range(0, len(requests), size):
            posts.extend(self._write_batch(requests[start:start + size], trace))
        return posts

    def _write_batch(self, requests: Sequence[PostRequest], trace: list[CandidateTrace] | None) -> list[GeneratedPost]:
        config = self.config
        greedy = config.temperature <= 0
        candidates = 1 if greedy else max(1, config.num_candidates)
        tries = 1 if greedy else 1 + max(0, config.max_tries)
        kinds = [pick_kind(r, config.seed) for r in requests]
        prompts = [self._prompt(r, k) for r, k in zip(requests, kinds, strict=True)]
        chosen: dict[int, GeneratedPost] = {}
        for attempt in range(tries):
            pending = [i for i in range(len(requests)) if i not in chosen]
            if not pending:
                break
            rows = [(i, k) for i in pending for k in range(candidates)]
            row_prompts = [self._prompt(requests[i], kinds[i], _hash_int(config.seed, requests[i].user_id, kinds[i])
                                        + attempt * candidates + k) for i, k in rows]
            texts = self.lm.generate(row_prompts, config.max_new_tokens, config.temperature,
                                     config.top_p, [_hash_int(config.seed, requests[i].user_id, attempt, k)
                                                    for i, k in rows])
            survivors: dict[int, list[CandidateTrace]] = {}
            for (i, _), prompt, text in zip(rows, row_prompts, texts, strict=True):
                vetted = self._vet(requests[i], answer_opening(prompt) + text, attempt)
                if trace is not None:
                    trace.append(vetted)
                if vetted.served_text is not None:
                    survivors.setdefault(i, []).append(vetted)
            order = sorted(survivors)
            scores = self.critic.score([(requests[i].user_id, _question(prompts[i]), [c.served_text for c in survivors[i]],
                                         list(requests[i].sources)) for i in order])
            for i, score in zip(order, scores, strict=True):
                best = int(score.argmax())
                pick = survivors[i][best]
                chosen[i] = self._post(requests[i], kinds[i], pick.served_text, pick.method, float(score[best]))
        for i, request in enumerate(requests):
            if i not in chosen:
                logger.info("user %s: no candidate passed the checks in %d tries; template fallback",
                            request.user_id, tries)
                post = self._template(request, kinds[i])
                if post is not None:
                    chosen[i] = post
        return [chosen[i] for i in range(len(requests)) if i in chosen]

    def _clean(self, request: PostRequest, text: str) -> bool:
        """Whether a draft (a stream's sentences so far) may be shown as written: it names only
        sources (and at least one), states only true claims and passes the guardrails."""
        check = self.catalog.check(text, request.sources, request.interests, self.config.max_chars)
        return (check.ok and not _ECHO.search(text) and all(c.true for c in self.claims.check(text, request.sources, self.catalog,
                                                                    request.interests))
                and self.guardrails.would_refuse(text, request.surface, request.creator_ids) is None)

    def stream(self, request: PostRequest, max_new_tokens: int | None = None) -> Iterator[str | GeneratedPost]:
        """One post written now, sentence by sentence: every piece streamed is served.

        The model's words are held back until their sentence ends; a finished sentence is streamed
        when the post so far, with it, passes every check (names, claims, guardrails), and left out
        otherwise (it is never shown). The post is what was streamed ("model" when nothing was left
        out, "repaired" when something was). If no sentence passes, the template is streamed as one
        piece and served: the stream never shows a draft that is replaced.

        Args:
            request: the user and sources.
            max_new_tokens: at most `config.max_new_tokens`; None or 0: that default.

        Yields:
            str pieces, then exactly one `GeneratedPost` whose text is their concatenation (if the
            guardrails refuse even the template, a `LookupError` is raised instead).
        """
        config = self.config
        limit = min(max_new_tokens or config.max_new_tokens, config.max_new_tokens)
        kind = pick_kind(request, config.seed)
        greedy = config.temperature <= 0
        shown, raw, dropped, prompt = "", "", False, self._prompt(request, kind)
        # While nothing is shown, a failed draft is invisible: decode again (new seed and opening).
        for attempt in range(1 if greedy else 1 + max(0, config.max_tries)):
            if shown:
                break
            variant = 0 if attempt == 0 else _hash_int(config.seed, request.user_id, kind) + attempt
            prompt = self._prompt(request, kind, variant)
            raw = answer_opening(prompt)
            pending, dropped = raw, False

            def sentences() -> Iterator[str]:
                nonlocal pending
                while (end := _sentence_end(pending)) is not None:
                    sentence, pending = pending[:end], pending[end:]
                    yield sentence

            for piece in self.lm.stream(prompt, limit, config.temperature, config.top_p,
                                        _hash_int(config.seed, request.user_id, "stream", attempt, self.clock())):
                raw += piece
                pending += piece
                for sentence in sentences():
                    draft = (shown + sentence) if shown else sentence.lstrip()
                    if self._clean(request, draft):
                        yield draft[len(shown):]
                        shown = draft
                    else:
                        dropped = True
            if pending.strip() and _FINISHED.search(pending.strip()):
                draft = (shown + pending.rstrip()) if shown else pending.strip()
                if self._clean(request, draft):
                    yield draft[len(shown):]
                    shown = draft
        if shown:
            method: Method = "repaired" if dropped or shown.strip() != raw.strip() else "model"
            score = float(self.critic.score([(request.user_id, _question(prompt), [shown], list(request.sources))])[0][0])
            yield self._post(request, kind, shown, method, score)
            return
        self._count("refused:stream")
        post = self._template(request, kind)
        if post is None:
            raise LookupError(f"no post can be written for user {request.user_id!r} from these sources")
        yield post.text
        yield post


_FINISHED = re.compile(r"[.!?…][\"”')\]]*$")


def _sentence_end(text: str) -> int | None:
    """Where the first finished sentence of `text` ends (after its closing mark and the space that
    follows), or None: a full stop inside a quoted title ("Monsters, Inc.") ends nothing."""
    inside = False
    for i, ch in enumerate(text):
        if ch == '"':
            inside = not inside
        elif not inside and ch in ".!?…\n" and i + 1 < len(text) and text[i + 1] in " \n":
            return i + 1
    return None
