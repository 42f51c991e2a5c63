"""The language model in its own process (generation.remote) against the in-process reference:
same texts, same scores, concurrent calls, and an abandoned stream stops decoding."""

import threading

import numpy as np
import pytest

from feedcore.config import GenerationConfig
from generation.remote import ProcessLanguageModel

TEST_CONFIG = GenerationConfig(threads=1)

PROMPTS = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Say hello to Ana."}]]


@pytest.fixture(scope="module")
def remote(llm_cache):
    lm = ProcessLanguageModel(TEST_CONFIG, llm_cache[0])
    yield lm
    lm.close()


def test_the_process_model_writes_what_the_in_process_model_writes(remote, lm):
    assert remote.model_version == lm.model_version
    assert remote.generate(PROMPTS, 12) == lm.generate(PROMPTS, 12)  # greedy
    sampled = dict(max_new_tokens=12, temperature=0.8, top_p=0.9, seeds=[3, 4])
    assert remote.generate(PROMPTS, **sampled) == lm.generate(PROMPTS, **sampled)
    np.testing.assert_allclose(remote.log_prob(PROMPTS, ["Blue.", "Hello Ana!"]),
                               lm.log_prob(PROMPTS, ["Blue.", "Hello Ana!"]), rtol=1e-4)
    assert "".join(remote.stream(PROMPTS[0], 12)) == lm.generate(PROMPTS[:1], 12)[0]


def test_concurrent_calls_each_get_their_own_answer(remote, lm):
    expected = [lm.generate([p], 10)[0] for p in PROMPTS]
    got: dict[int, str] = {}

    def call(i: int) -> None:
        got[i] = remote.generate([PROMPTS[i % 2]], 10)[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [got[i] for i in range(4)] == [expected[i % 2] for i in range(4)]


def test_an_abandoned_stream_is_cancelled_and_the_model_keeps_serving(remote, lm):
    pieces = remote.stream(PROMPTS[1], 20)
    first = next(pieces)
    pieces.close()  # the reader went away
    assert first
    assert remote.generate(PROMPTS[:1], 8) == lm.generate(PROMPTS[:1], 8)


def test_a_model_that_cannot_load_is_reported(tmp_path):
    import dataclasses

    broken = dataclasses.replace(TEST_CONFIG, model_dir=str(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match="failed to load"):
        ProcessLanguageModel(broken, tmp_path)
