"""The language model in its own process (generation.remote) against the in-process reference:
same texts, same scores, concurrent calls, and an abandoned stream stops decoding."""

import threading
import time

import numpy as np
import pytest

from feedcore.config import GenerationConfig
from generation.remote import ModelUnavailable, ProcessLanguageModel

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


def test_one_shared_model_serves_several_connections_and_refuses_a_wrong_key(llm_cache, lm, tmp_path):
    import multiprocessing as mp
    from multiprocessing.connection import Client

    from generation.remote import serve_shared, spawn_model_process

    address, key = str(tmp_path / "llm.sock"), b"k" * 32
    server, ready, version = spawn_model_process(serve_shared, (TEST_CONFIG, str(llm_cache[0]), address, key),
                                                 "llm-shared", "the shared model", 300)
    ready.close()
    try:
        assert version == lm.model_version
        first, second = ProcessLanguageModel.connect(address, key), ProcessLanguageModel.connect(address, key)
        assert first.model_version == second.model_version == lm.model_version
        assert first.generate(PROMPTS[:1], 8) == second.generate(PROMPTS[:1], 8) == lm.generate(PROMPTS[:1], 8)
        first.close()  # one process's connection ends; the server serves the others on
        assert "".join(second.stream(PROMPTS[1], 8)) == lm.generate(PROMPTS[1:], 8)[0]
        with pytest.raises(mp.AuthenticationError):
            Client(address, family="AF_UNIX", authkey=b"wrong" * 8)
        silent = Client(address, family="AF_UNIX")  # connects, never answers the key check
        assert second.generate(PROMPTS[:1], 4) == lm.generate(PROMPTS[:1], 4)  # still serving
        third = ProcessLanguageModel.connect(address, key)  # and new connections too
        assert third.generate(PROMPTS[:1], 4) == lm.generate(PROMPTS[:1], 4)
        silent.close()
        third.close()
        with pytest.raises(RuntimeError):  # a closed model does not reconnect
            third.generate(PROMPTS[:1], 4)
        server.kill()
        server.join()
        with pytest.raises(ModelUnavailable):  # gone, and no server to reconnect to: retry later
            second.generate(PROMPTS[:1], 4)
        second.close()
    finally:
        server.kill()
        server.join()


def _wait_for(condition, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_processes_on_a_shared_model_exchange_their_posts_and_keep_them_across_its_restart(llm_cache, tmp_path):
    from generation.interface import GeneratedPost
    from generation.remote import serve_shared, spawn_model_process

    address, key = str(tmp_path / "llm.sock"), b"k" * 32

    def start():
        server, ready, _ = spawn_model_process(serve_shared, (TEST_CONFIG, str(llm_cache[0]), address, key),
                                               "llm-shared", "the shared model", 300)
        ready.close()
        return server

    now_ms = int(time.time() * 1000)
    u1, v2 = (GeneratedPost(f"gen:{user}:{n}", user, f"Post {n}.", ("1", "2"), "m", "v1/digest", created_ms=now_ms)
              for user, n in (("u", 1), ("v", 2)))
    server = start()
    try:
        first, second = ProcessLanguageModel.connect(address, key), ProcessLanguageModel.connect(address, key)
        written, got_first, got_second = [], [], []  # the first's own posts; what each received
        assert first.subscribe_posts(got_first.append, lambda: list(written)) == 0
        assert second.subscribe_posts(got_second.append, lambda: list(got_second)) == 0
        assert first.claim_post("u", 0) and not second.claim_post("u", 0)  # one writer for a user's post
        written.append(u1)
        first.publish_post(u1)
        assert _wait_for(lambda: got_second == [u1]) and got_first == []  # not sent back to its writer
        assert not second.claim_post("u", 0)  # a post it had not seen yet came: no copy to write
        assert second.claim_post("u", u1.created_ms)  # it has seen it: a rewrite (say, stale) is its to make
        second.release_post("u")
        late, got_late = ProcessLanguageModel.connect(address, key), []
        assert late.subscribe_posts(got_late.append, list) == 1 and got_late == [u1]  # caught up at once
        late.close()

        server.kill()
        server.join()
        waiting: list = []  # a process starting while the model is down waits for it
        connecting = threading.Thread(target=lambda: waiting.append(ProcessLanguageModel.connect(address, key, 120)))
        connecting.start()
        time.sleep(1.0)
        server = start()  # the launcher's restart: an empty exchange at the same address
        connecting.join(120)
        assert waiting and waiting[0].model_version == first.model_version
        # The first and second reconnect and subscribe again by themselves, handing over their
        # posts, so a post from before the restart reaches a process that subscribes after it.
        got_new: list = []
        waiting[0].subscribe_posts(got_new.append, list)  # caught up now, or sent it when they hand it over
        assert _wait_for(lambda: got_new == [u1]), got_new
        assert _wait_for(lambda: first._reader.is_alive())
        first.publish_post(v2)
        assert _wait_for(lambda: got_second[-1:] == [v2] and got_new[-1:] == [v2]), (got_second, got_new)
        for lm in (first, second, waiting[0]):
            lm.close()
    finally:
        server.kill()
        server.join()
