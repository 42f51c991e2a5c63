"""A language model in a process of its own, so decoding never competes for the server's GIL.

Decoding a 135M-parameter model on a CPU is many small tensor operations glued by Python: in the
serving process that Python holds the GIL for a good share of every token, and each GetFeed
request would then wait for the interpreter (up to the 5 ms switch interval at a time) behind
the generation worker. `ProcessLanguageModel` runs the backend (`generation.llm`) in a child
process started with ``spawn`` and forwards `generate`, `stream` and `log_prob` to it over a
pipe, so the server keeps its interpreter and only shares the cores. Calls are concurrent: the
child serves each one in a thread of its own (a StreamPost does not wait for the worker's
batch), and a stream the reader abandons is cancelled in the child at the next token.

`[generation] isolation = "process"` (the default) uses it; ``"thread"`` runs the model in the
serving process itself (tests and notebooks that want one process).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from feedcore.config import GenerationConfig
from generation.interface import Prompt

logger = logging.getLogger(__name__)
START_TIMEOUT_S = 600.0  # the first start converts the GGUF (~20 s on 2 cores; more on a busy machine)


def _child(conn, config: GenerationConfig, cache_dir: str) -> None:
    """The child's loop: load the model, then serve each request in its own thread."""
    from generation.llm import BACKENDS

    send_lock = threading.Lock()

    def send(message: tuple) -> None:
        with send_lock:
            conn.send(message)

    try:
        lm = BACKENDS[config.backend](config, Path(cache_dir))
    except BaseException as e:  # reported to the parent, which raises it
        send(("error", -1, f"{type(e).__name__}: {e}"))
        return
    send(("ready", -1, lm.model_version))
    cancelled: dict[int, threading.Event] = {}

    def run(request_id: int, method: str, args: tuple, kwargs: dict) -> None:
        try:
            if method == "stream":
                pieces = lm.stream(*args, **kwargs)
                try:
                    for piece in pieces:
                        if cancelled[request_id].is_set():
                            break
                        send(("piece", request_id, piece))
                finally:
                    pieces.close()  # stops decoding at the next token
                send(("done", request_id, None))
            else:
                send(("result", request_id, getattr(lm, method)(*args, **kwargs)))
        except BaseException as e:  # noqa: BLE001 (the parent raises it in the caller)
            send(("error", request_id, f"{type(e).__name__}: {e}"))
        finally:
            cancelled.pop(request_id, None)

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message is None:
            break
        request_id, method, args, kwargs = message
        if method == "cancel":
            if args[0] in cancelled:
                cancelled[args[0]].set()
            continue
        cancelled[request_id] = threading.Event()
        threading.Thread(target=run, args=(request_id, method, args, kwargs), name=f"llm-{method}",
                         daemon=True).start()


class ProcessLanguageModel:
    """The `LanguageModel` of `config.backend`, run in a child process (see the module doc).

    Args:
        config: `[generation]` (backend, model_dir, device, threads): what the child loads.
        cache_dir: the converted-weights cache (`EngineConfig.llm_cache_dir`).

    Call `close()` to stop the child (it also stops when this process exits).
    """

    def __init__(self, config: GenerationConfig, cache_dir: Path, start_timeout_s: float = START_TIMEOUT_S) -> None:
        context = mp.get_context("spawn")  # a fresh interpreter: no copied locks or threads
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=_child, args=(child_conn, config, str(cache_dir)), name="llm",
                                        daemon=True)
        self._process.start()
        child_conn.close()
        if not self._conn.poll(start_timeout_s):
            self._process.kill()
            raise RuntimeError(f"the language model process did not start within {start_timeout_s:.0f} s")
        kind, _, value = self._conn.recv()
        if kind != "ready":
            self._process.join(10)
            raise RuntimeError(f"the language model process failed to load the model: {value}")
        self.model_version: str = value
        self._ids = itertools.count()
        self._send_lock = threading.Lock()
        self._pending: dict[int, queue.Queue] = {}
        self._pending_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="llm-replies", daemon=True)
        self._reader.start()

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seeds: int | Sequence[int] = 0) -> list[str]:
        return self._result("generate", list(prompts), max_new_tokens, temperature, top_p,
                            seeds if isinstance(seeds, int) else list(seeds))

    def log_prob(self, prompts: Sequence[Prompt], texts: Sequence[str]) -> np.ndarray:
        return self._result("log_prob", list(prompts), list(texts))

    def stream(self, prompt: Prompt, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               seed: int = 0) -> Iterator[str]:
        request_id, replies = self._call("stream", prompt, max_new_tokens, temperature, top_p, seed)
        finished = False
        try:
            while True:
                kind, value = replies.get()
                if kind == "piece":
                    yield value
                elif kind == "done":
                    finished = True
                    return
                else:
                    finished = True
                    raise RuntimeError(f"language model process: {value}")
        finally:
            if finished:
                with self._pending_lock:
                    self._pending.pop(request_id, None)
            else:  # the reader stopped early: stop decoding for it
                self._send((next(self._ids), "cancel", (request_id,), {}))
                self._drain(request_id, replies)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the child: it exits after its loop ends; one still decoding after `timeout_s` is
        killed. Calls still waiting get an error."""
        try:
            self._send(None)
        except (OSError, BrokenPipeError):
            pass
        self._process.join(timeout_s)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout_s)

    # -- the pipe --

    def _send(self, message: tuple | None) -> None:
        with self._send_lock:
            self._conn.send(message)

    def _call(self, method: str, *args) -> tuple[int, queue.Queue]:
        request_id = next(self._ids)
        replies: queue.Queue = queue.Queue()
        with self._pending_lock:
            self._pending[request_id] = replies
        self._send((request_id, method, args, {}))
        return request_id, replies

    def _result(self, method: str, *args):
        request_id, replies = self._call(method, *args)
        kind, value = replies.get()
        with self._pending_lock:
            self._pending.pop(request_id, None)
        if kind == "error":
            raise RuntimeError(f"language model process: {value}")
        return value

    def _drain(self, request_id: int, replies: queue.Queue) -> None:
        """Forget a cancelled stream once the child confirms it ended (in the background)."""
        def wait() -> None:
            while replies.get()[0] == "piece":  # until "done" or "error"
                pass
            with self._pending_lock:
                self._pending.pop(request_id, None)

        threading.Thread(target=wait, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                kind, request_id, value = self._conn.recv()
            except (EOFError, OSError):
                break
            with self._pending_lock:
                replies = self._pending.get(request_id)
            if replies is not None:
                replies.put((kind, value))
        with self._pending_lock:  # the child is gone: fail whatever still waits
            waiting, self._pending = list(self._pending.values()), {}
        for replies in waiting:
            replies.put(("error", "the process exited"))
