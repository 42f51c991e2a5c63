"""`feed serve --processes N`: N server processes on one port, one per core.

gRPC binds the port with SO_REUSEPORT, so the kernel spreads incoming connections over the
processes per connection: a client with one channel talks to one process, so a client spreads
its requests over several channels (per-request balancing, gRPC's client-side ``round_robin``
over several ports, needs separate `feed serve` processes, each with its own port and
``event_log_dir``). Each process has its own event log (``<event_log_dir>/process-<i>``;
`feed train ranker --from-logs <event_log_dir>` reads them all) and metrics port
(``metrics_port + i`` when a fixed one is set, so keep the ports above it free). The launcher
(`serve_processes`) loads no model; it holds the lock of ``<event_log_dir>`` (a second `feed
serve` on the same config is refused at start, rather than sharing the port), reads the config
once (the processes, restarted ones too, run a copy of it), starts process 0 (which picks the port when it is 0), then the others on that port, prints the
ready line once all serve, and on SIGTERM / SIGINT passes the signal on and waits for each to
drain. A process that fails to start stops the launch; one that dies while serving is restarted
on its log (with a doubling delay when it keeps dying) while the others serve on. A process whose
launcher dies (even by kill -9) gets LAUNCHER_GONE from the kernel and drains too.

With generation on and no ``[generation] service`` configured, the launcher first starts one
generation service for all the processes (`GenerationProcess`: `feed serve-generation` on a Unix
socket in its private scratch directory), restarted like a process when it dies; the processes
call it over gRPC (which reconnects by itself) and keep their posts in the post store they share
(`generation.store`), so any process serves a post another wrote. A lone `feed serve` starts its
own the same way.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from feedcore.config import EngineConfig

logger = logging.getLogger(__name__)
LAUNCHER_PID = "FEED_LAUNCHER_PID"  # in a process's environment: the launcher it belongs to
# What the kernel sends a process when its launcher dies: a drain, never the "second SIGTERM, exit
# now" of an operator. Not SIGTERM: the kernel sends the parent-death signal again each time the
# process is handed to another of the dying launcher's threads, so a kill -9 can deliver it twice.
LAUNCHER_GONE = signal.SIGUSR1
RESTART_DELAY_S = 1.0  # before restarting a process that died; doubled per restart in a crash loop
MAX_RESTART_DELAY_S = 60.0
STABLE_S = 60.0  # a process that served this long before dying is restarted after RESTART_DELAY_S again


def stop_with_launcher() -> None:
    """In a process of `serve_processes`: have the kernel send it LAUNCHER_GONE (a graceful drain,
    however often it comes) when the launcher dies, even by kill -9, so no process is left serving
    alone (Linux only). Until the process serves, the signal's default action ends it."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, LAUNCHER_GONE, 0, 0, 0) != 0:
        logger.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): this process outlives its launcher", ctypes.get_errno())
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher and os.getppid() != int(launcher):  # the launcher died before the call
        os.kill(os.getpid(), LAUNCHER_GONE)


class GenerationProcess:
    """`feed serve-generation` as a child of this process, on a Unix socket in `scratch`: `start()`
    waits until it serves (RuntimeError when it exits first); once started it is restarted, with
    a doubling delay, each time it dies, until `stop()`."""

    READY = "GENERATION_SERVER_READY"

    def __init__(self, config_path: str, scratch: Path, verbose: bool = False) -> None:
        self.command = [sys.executable, "-m", "feedcli", *(["-v"] if verbose else []), "serve-generation",
                        "--config", config_path, "--address", f"unix://{scratch / 'generation.sock'}"]
        self.address = f"unix://{scratch / 'generation.sock'}"
        self.process: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self._lock = threading.Lock()  # a start and the stop never cross

    def start(self) -> str:
        with self._lock:
            if self.stopping.is_set():
                raise RuntimeError("not starting the generation service: stopping")
            # Its own session: a Ctrl-C is this process's to handle (it stops the service last).
            self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True, start_new_session=True,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1", LAUNCHER_PID: str(os.getpid())})
        for line in self.process.stdout:
            if line.startswith(self.READY):
                threading.Thread(target=_forward, args=(self.process.stdout,), daemon=True).start()
                logger.info("generation service (pid %d) on %s", self.process.pid, self.address)
                return self.address
        raise RuntimeError(f"the generation service exited before serving (code {self.process.wait()})")

    def keep_running(self) -> GenerationProcess:
        """Restart it each time it dies, in a thread of its own (the feed serves on meanwhile)."""
        threading.Thread(target=keep_running, name="keep-generation", daemon=True,
                         args=(self.stopping, self._exited, self.start, "the feed serves on without new posts")).start()
        return self

    def _exited(self) -> str:
        process = self.process
        return f"the generation service (pid {process.pid}) exited with code {process.wait()}"

    def stop(self) -> None:
        with self._lock:
            self.stopping.set()
            if self.process is None or self.process.poll() is not None:
                return
            self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def process_command(config_path: str, port: int, index: int, verbose: bool = False,
                    generation: str = "") -> list[str]:
    """The command line of server process `index` (a `feed serve` of one process), with the
    launcher's generation service at `generation` when given."""
    return [sys.executable, "-m", "feedcli", *(["-v"] if verbose else []), "serve", "--config", config_path,
            "--port", str(port), "--process-index", str(index),
            *(["--generation-service", generation] if generation else [])]


def process_event_log(event_log_dir: str | Path, index: int) -> Path:
    return Path(event_log_dir) / f"process-{index}"


def serve_processes(config: EngineConfig, config_path: str, processes: int, port: int, ready_line: str,
                    verbose: bool = False) -> int:
    """Run `processes` server processes on one port until SIGTERM / SIGINT; returns the exit
    status: 0 when every process drained cleanly, 1 when the launch failed, else the worst
    process's (128 + signal for one killed by a signal)."""
    from serving.event_log import take_lock

    log_dir = Path(config.event_log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    lock = take_lock(log_dir)  # noqa: F841 (held, like the processes' own, until this process exits)
    with tempfile.TemporaryDirectory(prefix="feed-serve-") as scratch:
        snapshot = Path(scratch) / Path(config_path).name  # relative paths in it stay relative to the cwd
        snapshot.write_bytes(Path(config_path).read_bytes())

        generation = None
        if config.generation.enabled and not config.generation.service:
            generation = GenerationProcess(str(snapshot), Path(scratch), verbose)

        def command(index: int, bind_port: int) -> list[str]:
            return process_command(str(snapshot), bind_port, index, verbose, generation.address if generation else "")

        try:
            return _supervise(config, command, processes, port, ready_line, generation)
        finally:
            if generation is not None:
                generation.stop()


def _supervise(config: EngineConfig, command, processes: int, port: int, ready_line: str,
               generation: GenerationProcess | None = None) -> int:
    environ = {**os.environ, "PYTHONUNBUFFERED": "1", LAUNCHER_PID: str(os.getpid())}
    stopping = threading.Event()
    children: list[subprocess.Popen | None] = [None] * processes
    starting = threading.RLock()  # a start and a stop's signal never cross (re-entrant: the signal handler's thread starts too)

    def start(index: int, bind_port: int) -> int:
        """Start process `index` (into `children`, so a stop reaches it while it loads) and wait
        for its ready line; returns its port."""
        with starting:
            if stopping.is_set():
                raise RuntimeError(f"not starting server process {index}: stopping")
            child = children[index] = subprocess.Popen(command(index, bind_port), stdout=subprocess.PIPE,
                                                       text=True, env=environ)
        for line in child.stdout:  # its log goes to our stderr; stdout carries the ready line
            if line.startswith(ready_line):
                threading.Thread(target=_forward, args=(child.stdout,), daemon=True).start()
                logger.info("process %d (pid %d) serving on port %s", index, child.pid, line.rsplit(":", 1)[1].strip())
                return int(line.rsplit(":", 1)[1])
        raise RuntimeError(f"server process {index} exited before serving (code {child.wait()})")

    signalled: set[int] = set()  # once each: a second SIGTERM tells a process to exit without draining

    def signal_all() -> None:
        with starting:
            for child in children:
                if child is not None and child.poll() is None and child.pid not in signalled:
                    signalled.add(child.pid)
                    child.send_signal(signal.SIGTERM)

    def stop_all() -> int:
        signal_all()
        codes = [child.wait() for child in children if child is not None]
        return max((c if c >= 0 else 128 - c for c in codes), default=0)

    def on_signal(signum, _frame) -> None:
        logger.info("signal %s: stopping %d server processes", signal.Signals(signum).name, processes)
        stopping.set()
        signal_all()  # processes still loading stop too

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if generation is not None:
            generation.start()  # before the processes, which call it once they serve
            generation.keep_running()
            if stopping.is_set():  # stopped while it loaded
                return stop_all()
        port = start(0, port)  # picks the port when it is 0; the others share it
        for index in range(1, processes):
            if stopping.is_set():
                break
            start(index, port)
    except RuntimeError as e:
        if stopping.is_set():  # stopped while loading
            return stop_all()
        logger.error("%s; stopping the others", e)
        stop_all()
        return 1
    if stopping.is_set():
        return stop_all()
    print(f"{ready_line} {config.serving.host}:{port}", flush=True)

    def process_exited(index: int) -> str:
        child = children[index]
        child.wait()
        return f"server process {index} (pid {child.pid}) exited with code {child.returncode}"

    keepers = [threading.Thread(target=keep_running, name=f"keep-process-{index}", daemon=True,
                                args=(stopping, lambda i=index: process_exited(i), lambda i=index: start(i, port),
                                      "the other processes keep serving"))
               for index in range(processes)]
    for keeper in keepers:
        keeper.start()
    while not stopping.wait(0.5):
        pass
    signal_all()
    for keeper in keepers:  # each ends once its process has (one restarting is signalled when it is up)
        keeper.join()
    return stop_all()


def keep_running(stopping: threading.Event, exited: Callable[[], str], restart: Callable[[], object],
                 meanwhile: str) -> None:
    """Restart one child each time it dies, until `stopping`, in the calling thread (one per
    child: a restart that loads for seconds, or a model for a minute, holds up no other).
    `exited()` waits for the child's end and says what ended; a `restart()` that fails is logged
    (with what goes on `meanwhile`) and retried, with a doubling delay."""
    restarts = _Restarts()
    while True:
        ended = exited()
        if stopping.is_set():
            return
        delay = restarts.next_delay()
        logger.error("%s: restarting it in %.0f s", ended, delay)
        if stopping.wait(delay):
            return
        try:
            restart()
        except RuntimeError as e:  # say, the artifacts on disk no longer load
            if not stopping.is_set():
                logger.error("%s; %s", e, meanwhile)
        except Exception:  # noqa: BLE001 (say, no memory to fork: this thread must go on watching)
            logger.exception("restarting failed; %s", meanwhile)
        restarts.started()


class _Restarts:
    """The wait before restarting something that died: RESTART_DELAY_S, doubled (up to
    MAX_RESTART_DELAY_S) each time it dies again within STABLE_S of its last start."""

    def __init__(self) -> None:
        self.delay, self.since = RESTART_DELAY_S, time.monotonic()

    def next_delay(self) -> float:
        if time.monotonic() - self.since > STABLE_S:  # it had been serving: no crash loop
            self.delay = RESTART_DELAY_S
        delay, self.delay = self.delay, min(2 * self.delay, MAX_RESTART_DELAY_S)
        return delay

    def started(self) -> None:
        self.since = time.monotonic()


def _forward(stream) -> None:
    """A process's standard output after its ready line, passed on to ours."""
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
