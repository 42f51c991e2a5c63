"""`feed serve --processes N`: N server processes on one port, one per core.

gRPC binds the port with SO_REUSEPORT, so the kernel spreads incoming connections over the
processes (per connection: a client with one channel talks to one process; spread requests over
several channels, or name the processes' own ports and balance per request with gRPC's
client-side ``round_robin``). Each process has its own event log (``<event_log_dir>/process-<i>``;
`feed train ranker --from-logs <event_log_dir>` reads them all) and metrics port
(``metrics_port + i`` when one is set). The launcher (`serve_processes`) loads no model: it
starts process 0 (which picks the port when it is 0), then the others on that port, prints the
ready line once all serve, and on SIGTERM / SIGINT passes the signal on and waits for each to
drain. A process that fails to start stops the launch; one that dies while serving is restarted
on its log (with a doubling delay when it keeps dying) while the others serve on. A process whose
launcher dies (even by kill -9) gets SIGTERM from the kernel and drains too.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from feedcore.config import EngineConfig

logger = logging.getLogger(__name__)
RESTART_DELAY_S = 1.0  # before restarting a process that died; doubled per restart in a crash loop
MAX_RESTART_DELAY_S = 60.0
STABLE_S = 60.0  # a process that served this long before dying is restarted after RESTART_DELAY_S again


def stop_with_launcher() -> None:
    """In a process of `serve_processes`: have the kernel send it SIGTERM (a graceful drain) when
    the launcher dies, even by kill -9, so no process is left serving alone (Linux only)."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # the launcher died before the call
        os.kill(os.getpid(), signal.SIGTERM)


def process_command(config_path: str, port: int, index: int) -> list[str]:
    """The command line of server process `index` (a `feed serve` of one process)."""
    return [sys.executable, "-m", "feedcore.cli", "serve", "--config", config_path, "--port", str(port),
            "--process-index", str(index)]


def process_event_log(event_log_dir: str | Path, index: int) -> Path:
    return Path(event_log_dir) / f"process-{index}"


def serve_processes(config: EngineConfig, config_path: str, processes: int, port: int, ready_line: str) -> int:
    """Run `processes` server processes on one port until SIGTERM / SIGINT; returns the exit
    status (0 when every process drained cleanly). A process that fails to start stops them all."""
    environ = {**os.environ, "PYTHONUNBUFFERED": "1"}
    stopping = threading.Event()
    children: list[subprocess.Popen | None] = [None] * processes

    def start(index: int, bind_port: int) -> tuple[subprocess.Popen, int]:
        child = subprocess.Popen(process_command(config_path, bind_port, index), stdout=subprocess.PIPE,
                                 text=True, env=environ)
        for line in child.stdout:  # its log goes to our stderr; stdout carries the ready line
            if line.startswith(ready_line):
                chosen = int(line.rsplit(":", 1)[1])
                threading.Thread(target=child.stdout.read, daemon=True).start()  # drain the rest
                logger.info("process %d (pid %d) serving on port %d", index, child.pid, chosen)
                return child, chosen
        raise RuntimeError(f"server process {index} exited before serving (code {child.wait()})")

    def stop_all(signum: int = signal.SIGTERM) -> int:
        for child in children:
            if child is not None and child.poll() is None:
                child.send_signal(signum)
        codes = [child.wait() for child in children if child is not None]
        return max((abs(c) for c in codes), default=0)

    def on_signal(signum, _frame) -> None:
        logger.info("signal %s: stopping %d server processes", signal.Signals(signum).name, processes)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        children[0], port = start(0, port)  # picks the port when it is 0; the others share it
        for index in range(1, processes):
            children[index], _ = start(index, port)
    except RuntimeError as e:
        logger.error("%s; stopping the others", e)
        stop_all()
        return 1
    print(f"{ready_line} {config.serving.host}:{port}", flush=True)
    started = [time.monotonic()] * processes
    delay = [RESTART_DELAY_S] * processes
    while not stopping.wait(0.5):
        for index, child in enumerate(children):
            if child.poll() is None or stopping.is_set():
                continue
            if time.monotonic() - started[index] > STABLE_S:  # it had been serving: no crash loop
                delay[index] = RESTART_DELAY_S
            logger.error("server process %d (pid %d) exited with code %s: restarting it in %.0f s", index, child.pid,
                         child.returncode, delay[index])
            if stopping.wait(delay[index]):
                break
            started[index] = time.monotonic()
            delay[index] = min(2 * delay[index], MAX_RESTART_DELAY_S)
            try:
                children[index], _ = start(index, port)
            except RuntimeError as e:  # say, the artifacts on disk no longer load: the others keep serving
                logger.error("%s; the other processes keep serving", e)
    return stop_all()
