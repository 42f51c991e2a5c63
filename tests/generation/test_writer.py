"""The post writer on the real model: provenance, checks on real model outputs, repair, template
fallback, refusals counted by reason, the critic's value function, and streaming."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from feedcore.config import GuardrailConfig
from generation.critic import Critic
from generation.grounding import template_post, title_key
from generation.guardrails import Guardrails
from generation.interface import METHODS, GeneratedPost, PostRequest
from generation.prompts import answer_opening, build_prompt
from generation.titles import display_title
from generation.writer import PostWriter, post_id
from tests.generation.conftest import config

USERS = ["1", "2", "3"]
NOW_S = 1_700_000_000.0


def _contains(text: str, title: str) -> bool:
    """Whether the title's words occur, in order, in the text's words (a check independent of
    the catalog's lookup rules)."""
    words, key = title_key(text), title_key(display_title(title))
    return any(words[i:i + len(key)] == key for i in range(len(words) - len(key) + 1))


@pytest.fixture(scope="module")
def requests(user_sources):
    return [PostRequest(u, user_sources(u), interests=("Drama", "Comedy")) for u in USERS]


@pytest.fixture(scope="module")
def written(lm, catalog, requests):
    """Posts for three users (two sampled candidates each, no retry), every candidate traced."""
    calls = []

    def value_fn(user_id, texts, sources):
        calls.append((user_id, list(texts), [s.item_id for s in sources]))
        return np.array([len(t) / 100 for t in texts])

    writer = PostWriter(lm, catalog, Guardrails(GuardrailConfig()), config(max_new_tokens=24, max_tries=0),
                        critic=Critic(lm, value_fn), clock=lambda: NOW_S)
    trace = []
    posts = writer.write(requests, trace)
    return writer, posts, trace, calls


def test_every_user_gets_a_checked_post_with_its_provenance(written, requests, catalog, lm):
    writer, posts, _, _ = written
    assert [p.user_id for p in posts] == USERS
    rails = Guardrails(GuardrailConfig())
    for post, request in zip(posts, requests, strict=True):
        assert post.source_item_ids == request.source_item_ids
        assert post.model_version == lm.model_version
        assert post.prompt_version == f"v2/{post.kind}"
        assert post.method in METHODS and post.created_ms == int(NOW_S * 1000)
        assert post.post_id == post_id(post.user_id, post.text, post.source_item_ids)
        result = catalog.check(post.text, request.sources, request.interests)
        assert result.ok, (post.text, result.reason)
        assert rails.check(post.text, "home", ()) is None
    assert sum(writer.stats[f"method:{m}"] for m in METHODS) == len(posts)


def test_the_check_on_real_model_outputs(written, requests, catalog):
    """On every raw candidate: each source written out is found, each foreign item found is
    really written out, and the refusals are what the writer counted."""
    writer, _, trace, _ = written
    sources = {r.user_id: r.sources for r in requests}
    assert len(trace) >= 2 * len(USERS)
    for candidate in trace:
        check = candidate.check
        for source in sources[candidate.user_id]:
            if display_title(source.title) in candidate.text:
                assert source.item_id in check.named_source_ids, (candidate.text, source.title)
        for item_id in check.foreign_item_ids:
            assert _contains(candidate.text, catalog.titles[item_id]), (candidate.text, item_id)
        if candidate.method == "repaired":  # names, repeats or a false claim (sentences dropped)
            assert candidate.served_text != candidate.text
            assert not check.ok or any(not c.true for c in candidate.claims)
        if candidate.method == "model":
            assert check.ok and candidate.served_text == candidate.text
            assert all(c.true for c in candidate.claims), (candidate.text, candidate.claims)
    refused = [c.refused for c in trace if c.refused]
    assert sum(v for k, v in writer.stats.items() if k.startswith("refused:")) == len(refused)


def test_a_real_output_naming_other_films_is_caught(lm, catalog, user_sources):
    sources = user_sources("1")
    text = lm.generate([[{"role": "user", "content": "List three famous movies directed by Steven Spielberg."}]],
                       32)[0]
    result = catalog.check(text, sources)
    assert not result.ok and result.foreign_names, text
    for item_id in result.foreign_item_ids:
        assert _contains(text, catalog.titles[item_id]), (text, item_id)


def test_the_critic_scores_with_the_feeds_value(written, requests, lm):
    _, posts, _, calls = written
    by_user = {r.user_id: r for r in requests}
    assert calls, "the value function was never asked"
    for user_id, _, source_ids in calls:
        assert source_ids == list(by_user[user_id].source_item_ids)
    for post in posts:
        if post.method == "template":
            continue
        assert any(u == post.user_id and post.text in t for u, t, _ in calls)
        fluency = lm.log_prob([_prompt(by_user[post.user_id], post.kind)], [post.text])[0]
        assert post.score == pytest.approx(len(post.text) / 100 + 0.1 * fluency, abs=1e-3)


def _prompt(request, kind):
    """The question the critic scores a whole post after (the prompt without the answer's opening)."""
    return build_prompt(request.sources, request.interests, kind)[:-1]


def test_unwritable_outputs_fall_back_to_the_template(lm, catalog, requests):
    # Three tokens never make a finished, grounded post: every candidate is refused, regenerated
    # once (new seeds), refused again, and the template is served.
    # (Prompt v1: v2's openings name a source, so a few tokens can finish a post.)
    writer = PostWriter(lm, catalog, Guardrails(GuardrailConfig()),
                        config(max_new_tokens=3, max_tries=1, prompt_version="v1"))
    trace = []
    posts = writer.write(requests[:2], trace)
    assert [p.method for p in posts] == ["template", "template"]
    assert sorted((c.user_id, c.attempt) for c in trace) == sorted(
        (r.user_id, a) for r in requests[:2] for a in (0, 1) for _ in range(2))
    for post, request in zip(posts, requests[:2], strict=True):
        assert post.text == template_post(request.sources, request.interests, post.kind, request.user_id)
        assert catalog.check(post.text, request.sources, request.interests).ok
    assert all(c.refused for c in trace) and writer.stats["method:template"] == 2


def test_a_refused_template_leaves_the_user_without_a_post(lm, catalog, user_sources):
    sources = user_sources("2")
    creator = dataclasses.replace(sources[0], creator_id="studio-x")
    word = title_key(display_title(sources[0].title))[-1]
    rails = Guardrails(GuardrailConfig(creator_blocked_words={"studio-x": (word,)}))
    writer = PostWriter(lm, catalog, rails, config(max_new_tokens=3, max_tries=0))
    request = PostRequest("2", (creator, *sources[1:]), kind="digest")
    assert writer.write([request]) == []
    assert writer.stats["no_post"] == 1 and rails.rejections["blocked_word"] >= 1


def test_streaming_yields_the_served_text_sentence_by_sentence(lm, catalog, requests):
    """Every piece streamed is served: the post's text is the pieces joined, each a finished
    sentence of the model's own output (the plan's opening first) that passed the checks."""
    writer = PostWriter(lm, catalog, Guardrails(GuardrailConfig()), config(temperature=0.0, max_new_tokens=40))
    for request in requests:
        out = list(writer.stream(request, max_new_tokens=40))
        pieces, final = out[:-1], out[-1]
        assert pieces and all(isinstance(p, str) for p in pieces) and isinstance(final, GeneratedPost)
        assert "".join(pieces) == final.text
        assert final.source_item_ids == request.source_item_ids and final.method in METHODS
        assert catalog.check(final.text, request.sources, request.interests).ok
        assert all(c.true for c in writer.claims.check(final.text, request.sources, catalog, request.interests))
        if final.method == "template":
            assert pieces == [final.text]
            continue
        prompt = build_prompt(request.sources, request.interests, final.kind)
        raw = answer_opening(prompt) + lm.generate([prompt], 40)[0]
        assert final.text.startswith(answer_opening(prompt)) or final.method == "repaired"
        assert all(p.strip() in raw for p in pieces), (pieces, raw)
        assert final.method == "repaired" or final.text.strip() == raw.strip()
