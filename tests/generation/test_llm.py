"""The language model on the real SmolLM2-135M weights: the converted-weights cache, batched vs
single-stream decoding (the fast path and its reference), streaming, seeded sampling, scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generation.llm import converted_weights, file_digest, packaged_gguf

PROMPTS = [
    [{"role": "user", "content": "Name one fruit."}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": 'Write one sentence about the film "Heat".'}],
    "The capital of France is",
]
TOKENS = 12


@pytest.fixture(scope="module")
def single(lm):
    """Each prompt decoded greedily on its own: the reference of the batched path."""
    return [lm.generate([p], TOKENS)[0] for p in PROMPTS]


def test_the_gguf_is_converted_once_and_the_cache_is_used(llm_cache, lm):
    cache_dir, folder, _ = llm_cache
    again, converted = converted_weights(packaged_gguf(), cache_dir)
    assert (again, converted) == (folder, False)
    assert folder.name.endswith(file_digest(packaged_gguf())[:16])  # a changed GGUF gets a new copy
    assert lm.model.name_or_path == str(folder)  # loaded from the copy, not the GGUF
    assert (folder / "model.safetensors").is_file()
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")]  # no temporary left behind
    assert lm.model_version.startswith("smollm2-135m-instruct-q4_1@")


def test_batched_greedy_decoding_matches_single_streams(lm, single):
    batched = lm.generate(PROMPTS, TOKENS)
    assert batched == single
    assert all(t.strip() for t in batched)


def test_streamed_pieces_concatenate_to_the_greedy_text(lm, single):
    pieces = list(lm.stream(PROMPTS[1], TOKENS))
    assert len(pieces) > 1
    assert "".join(pieces) == single[1]


def test_seeded_sampling_is_reproducible_in_any_batch(lm):
    prompt = PROMPTS[1]
    together = lm.generate([prompt, PROMPTS[0], prompt], TOKENS, temperature=1.0, top_p=0.95, seeds=[5, 6, 7])
    alone = [lm.generate([p], TOKENS, temperature=1.0, top_p=0.95, seeds=[s])[0]
             for p, s in ((prompt, 5), (prompt, 7))]
    assert [together[0], together[2]] == alone
    assert together[0] != together[2]  # different seeds, different draws of the same prompt


def test_log_prob_prefers_fluent_text_and_restores_threads(lm):
    before = torch.get_num_threads()
    scores = lm.log_prob([PROMPTS[2]] * 2, [" Paris.", " purple elephant sandwich ladder."])
    assert scores.shape == (2,) and np.isfinite(scores).all()
    assert scores[0] > scores[1]
    assert torch.get_num_threads() == before
    # More rows than one forward pass takes: chunked, each row as it scores alone.
    texts = [" Paris.", " purple elephant sandwich ladder.", " Rome", " a city in France."] * 3  # 12 > 8 rows
    many = lm.log_prob([PROMPTS[2]] * len(texts), texts)
    np.testing.assert_allclose(many, [lm.log_prob([PROMPTS[2]], [t])[0] for t in texts], atol=2e-3)
