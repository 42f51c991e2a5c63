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
serving process itself (tests and notebooks that want one process). Under `feed serve --processes
N` the launcher runs one model for all N processes (`serve_shared`, on a Unix socket with a key
of its own), and each process connects to it (`ProcessLanguageModel.connect`) instead of
starting one: one copy of the weights, and one decoder competing with the feed for the cores.
The same connections carry the processes' posts (`generation.post_exchange`).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from feedcore.config import GenerationConfig
from generation.interface import GeneratedPost, LanguageModel, Prompt
from generation.post_exchange import REQUESTS, PostExchange

logger = logging.getLogger(__name__)
START_TIMEOUT_S = 600.0  # the first start converts the GGUF (~20 s on 2 cores; more on a busy machine)


def _child(conn, config: GenerationConfig, cache_dir: str) -> None:
    """The child's loop: load the model, then serve each request in its own thread."""
    try:
        lm = _load(config, cache_dir)
    except BaseException as e:  # reported to the parent, which raises it
        conn.send(("error", -1, f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", -1, lm.model_version))
    _serve(conn, lm)


def _load(config: GenerationConfig, cache_dir: str) -> LanguageModel:
    from generation.llm import BACKENDS

    return BACKENDS[config.backend](config, Path(cache_dir))


def _serve(conn: Connection, lm, exchange: PostExchange | None = None) -> None:
    """One connection's requests, each model call in a thread of its own, until it closes; the
    post exchange's calls (a shared model's) are answered at once, in order."""
    send_lock = threading.Lock()

    def send(message: tuple) -> None:
        with send_lock:
            try:
                conn.send(message)
            except OSError:  # the client went away; its reader fails what it still waits for
                pass

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
        if method in REQUESTS:
            try:
                if exchange is None:
                    raise RuntimeError("posts are exchanged only by a shared model")
                send(("result", request_id, exchange.call(send, method, args)))
            except Exception as e:  # noqa: BLE001 (the caller raises it; the connection serves on)
                send(("error", request_id, f"{type(e).__name__}: {e}"))
            continue
        cancelled[request_id] = threading.Event()
        threading.Thread(target=run, args=(request_id, method, args, kwargs), name=f"llm-{method}",
                         daemon=True).start()
    for event in list(cancelled.values()):  # nobody reads the streams any more: stop decoding them
        event.set()
    if exchange is not None:
        exchange.leave(send)
    conn.close()


def serve_shared(ready: Connection, config: GenerationConfig, cache_dir: str, address: str, authkey: bytes) -> None:
    """A language model for several server processes (`feed serve --processes N`): load it once,
    then serve every process that connects to the Unix socket `address` (with `authkey`) as
    `_child` serves its one parent, each connection in a thread of its own. Reports on `ready`
    as `_child` does (`spawn_model_process` waits for it); runs until killed (by its launcher,
    `serving.process`)."""
    from multiprocessing.connection import Listener

    try:
        lm = _load(config, cache_dir)
        exchange = PostExchange(config)
        Path(address).unlink(missing_ok=True)  # a socket left by a predecessor that died
        listener = Listener(address, family="AF_UNIX")  # the key is checked per connection, below
    except BaseException as e:  # reported to the launcher, which stops the launch
        ready.send(("error", -1, f"{type(e).__name__}: {e}"))
        return
    ready.send(("ready", -1, lm.model_version))
    ready.close()
    while True:
        conn = listener.accept()
        threading.Thread(target=_greet_and_serve, args=(conn, lm, authkey, exchange), name="llm-connection",
                         daemon=True).start()


def _greet_and_serve(conn: Connection, lm, authkey: bytes, exchange: PostExchange) -> None:
    """Check a connection's key (what `Listener(authkey=...)` does in `accept`, here in the
    connection's own thread, so a client that stalls holds up no other), then serve it."""
    from multiprocessing.connection import answer_challenge, deliver_challenge

    try:
        deliver_challenge(conn, authkey)
        answer_challenge(conn, authkey)
        conn.send(("ready", -1, lm.model_version))
    except (OSError, EOFError, mp.AuthenticationError) as e:  # a bad or vanished client: refused, the rest served
        logger.warning("language model server: refused a connection (%s)", e)
        conn.close()
        return
    _serve(conn, lm, exchange)


def spawn_model_process(target, args: tuple, name: str, what: str, timeout_s: float = START_TIMEOUT_S):
    """Start `target(conn, *args)` in a fresh (spawned: no copied locks or threads) daemon process
    and wait for its ("ready", -1, model version) on `conn`; returns (process, conn, version).
    RuntimeError, naming `what`, when it reports an error, dies or says nothing in `timeout_s`."""
    context = mp.get_context("spawn")
    conn, child_conn = context.Pipe()
    process = context.Process(target=target, args=(child_conn, *args), name=name, daemon=True)
    process.start()
    child_conn.close()
    if not conn.poll(timeout_s):
        process.kill()
        raise RuntimeError(f"{what} did not start within {timeout_s:.0f} s")
    try:
        kind, _, value = conn.recv()
    except EOFError:  # it died before a word
        process.join(10)
        kind, value = "error", f"it exited with code {process.exitcode}"
    if kind != "ready":
        process.join(10)
        raise RuntimeError(f"{what} failed to load the model: {value}")
    return process, conn, value


class ModelUnavailable(RuntimeError):
    """The language model's process or connection is gone (a shared one is being restarted):
    the call can be retried."""


class ProcessLanguageModel:
    """The `LanguageModel` of `config.backend`, run in a child process (see the module doc).

    Args:
        config: `[generation]` (backend, model_dir, device, threads): what the child loads.
        cache_dir: the converted-weights cache (`EngineConfig.llm_cache_dir`).

    Call `close()` to stop the child (it also stops when this process exits). `connect` gives
    the same model of a shared server instead, whose `close()` closes only its connection.
    """

    def __init__(self, config: GenerationConfig, cache_dir: Path, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self._process, conn, version = spawn_model_process(_child, (config, str(cache_dir)), "llm",
                                                           "the language model process", start_timeout_s)
        self._address: tuple[str, bytes] | None = None
        self._attach(conn, version)

    @classmethod
    def connect(cls, address: str, authkey: bytes, wait_s: float = 0.0) -> ProcessLanguageModel:
        """The model of a `serve_shared` server at the Unix socket `address`: the same calls, over
        a connection of this process's own; `close()` closes the connection, not the server. A
        server not (yet, or again) there is waited for up to `wait_s`, then OSError. A call after
        the server went away reconnects (the launcher restarts it) or fails."""
        deadline = time.monotonic() + wait_s
        for attempt in itertools.count():
            try:
                conn, version = _connect(address, authkey)
                break
            except (OSError, EOFError) as e:
                if time.monotonic() >= deadline:
                    raise
                (logger.info if attempt == 0 else logger.debug)("waiting for the shared language model at %s (%s)",
                                                                address, e)
                time.sleep(1.0)
        lm = cls.__new__(cls)
        lm._process = None
        lm._address = (address, authkey)
        lm._attach(conn, version)
        return lm

    def _attach(self, conn, model_version: str) -> None:
        self._on_post: Callable[[GeneratedPost], None] | None = None
        self._known_posts: Callable[[], list[GeneratedPost]] = list
        self._conn = conn
        self.model_version: str = model_version
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
                    raise _failure(kind, value)
        finally:
            if finished:
                with self._pending_lock:
                    self._pending.pop(request_id, None)
            else:  # the reader stopped early: stop decoding for it (a connection since lost has stopped already)
                try:
                    self._send((next(self._ids), "cancel", (request_id,), {}), reconnect=False)
                except OSError:
                    pass
                self._drain(request_id, replies)

    # -- a shared model's post exchange (`PostExchange`) --

    def subscribe_posts(self, on_post: Callable[[GeneratedPost], None],
                        known: Callable[[], list[GeneratedPost]]) -> int:
        """Hand the exchange the posts this process has (`known()`), then call `on_post(post)`
        (in the reply reader's thread: it must not block) with each post another process
        publishes, first with those this process lacks (how many); again after each reconnect.
        A shared model's only, as are the three below."""
        self._on_post, self._known_posts = on_post, known
        return self._result("subscribe_posts", known())

    def claim_post(self, user_id: str, known_ms: int) -> bool:
        """True when this process is to write the user's background post: no other is, and none
        newer than its own newest (written at `known_ms`, 0 for none) is on its way here."""
        return self._result("claim_post", user_id, known_ms)

    def release_post(self, user_id: str) -> None:
        """This process's claimed write of the user's post ended without one."""
        self._result("release_post", user_id)

    def publish_post(self, post: GeneratedPost) -> None:
        """Send `post` to every other subscribed process."""
        self._result("publish_post", post)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the child: it exits after its loop ends; one still decoding after `timeout_s` is
        killed. Calls still waiting get an error. A connected model closes its connection only."""
        try:
            self._send(None, reconnect=False)
        except OSError:
            pass
        if self._process is None:
            with self._send_lock:
                self._address = None  # no reconnecting after close
            self._reader.join(timeout_s)  # the server ends the connection on None; then it is safe to close
            self._conn.close()
            return
        self._process.join(timeout_s)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout_s)

    # -- the pipe --

    def _send(self, message: tuple | None, reconnect: bool = True) -> None:
        with self._send_lock:
            if reconnect and self._address is not None and not self._reader.is_alive():
                self._reconnect()
            self._conn.send(message)

    def _reconnect(self) -> None:
        """A new connection to the shared server, which its launcher restarts when it dies."""
        try:
            conn, version = _connect(*self._address)
        except (OSError, EOFError) as e:
            raise ModelUnavailable(f"the shared language model at {self._address[0]} is not reachable: {e}") from e
        logger.info("reconnected to the shared language model at %s", self._address[0])
        self._conn, self.model_version = conn, version
        self._reader = threading.Thread(target=self._read, name="llm-replies", daemon=True)
        self._reader.start()
        if self._on_post is not None:  # the restarted server knows nobody and no post: subscribe again
            self._conn.send((next(self._ids), "subscribe_posts", (self._known_posts(),), {}))  # no reply awaited

    def _keep_connected(self, lost: threading.Thread) -> None:
        """After the shared server's connection is lost: reconnect as soon as the launcher has
        restarted it, so posts the other processes publish meanwhile keep arriving (a call
        reconnects too, but a process may make none for a long while)."""
        lost.join()
        delay = 0.5
        while True:
            time.sleep(delay)
            with self._send_lock:
                if self._address is None or self._reader is not lost:  # closed, or a call reconnected
                    return
                try:
                    self._reconnect()
                    return
                except (ModelUnavailable, OSError):  # not back yet
                    delay = min(5.0, 2 * delay)
                except Exception:  # noqa: BLE001 (keep trying: the processes' posts depend on it)
                    logger.exception("reconnecting to the shared language model failed")
                    delay = min(5.0, 2 * delay)

    def _call(self, method: str, *args) -> tuple[int, queue.Queue]:
        request_id = next(self._ids)
        replies: queue.Queue = queue.Queue()
        with self._pending_lock:
            self._pending[request_id] = replies
        try:
            self._send((request_id, method, args, {}))
        except (OSError, RuntimeError) as e:  # the process or server is gone (and, shared, not back)
            with self._pending_lock:
                self._pending.pop(request_id, None)
            raise ModelUnavailable(f"language model process: {e}") from e
        return request_id, replies

    def _result(self, method: str, *args):
        request_id, replies = self._call(method, *args)
        kind, value = replies.get()
        with self._pending_lock:
            self._pending.pop(request_id, None)
        if kind in ("error", "gone"):
            raise _failure(kind, value)
        return value

    def _drain(self, request_id: int, replies: queue.Queue) -> None:
        """Forget a cancelled stream once the child confirms it ended (in the background)."""
        def wait() -> None:
            while replies.get()[0] == "piece":  # until "done", "error" or "gone"
                pass
            with self._pending_lock:
                self._pending.pop(request_id, None)

        threading.Thread(target=wait, daemon=True).start()

    def _read(self) -> None:
        conn = self._conn
        try:
            while True:
                try:
                    kind, request_id, value = conn.recv()
                except (EOFError, OSError, TypeError):  # TypeError: closed under a recv in progress
                    break
                if kind == "post":
                    self._receive_post(value)
                    continue
                with self._pending_lock:
                    replies = self._pending.get(request_id)
                if replies is not None:
                    replies.put((kind, value))
        finally:
            with self._pending_lock:  # the model's process or connection is gone: fail whatever still waits
                waiting, self._pending = list(self._pending.values()), {}
            for replies in waiting:
                replies.put(("gone", "the language model's process or connection is gone"))
            if self._address is not None and self._on_post is not None:  # shared, not closed, subscribed
                threading.Thread(target=self._keep_connected, args=(threading.current_thread(),),
                                 name="llm-reconnect", daemon=True).start()

    def _receive_post(self, post: GeneratedPost) -> None:
        if self._on_post is None:
            return
        try:
            self._on_post(post)
        except Exception:  # noqa: BLE001 (the reader must outlive any one post)
            logger.exception("receiving post %s from another process failed", post.post_id)


def _failure(kind: str, message: str) -> RuntimeError:
    """The exception of a failed call: the model's own error, or ModelUnavailable when it is gone."""
    return (ModelUnavailable if kind == "gone" else RuntimeError)(f"language model process: {message}")


def _connect(address: str, authkey: bytes) -> tuple[Connection, str]:
    """A connection to a `serve_shared` server and the model version it greets with."""
    from multiprocessing.connection import Client

    conn = Client(address, family="AF_UNIX", authkey=authkey)
    _, _, version = conn.recv()
    return conn, version
