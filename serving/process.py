"""The server's processes: malloc on huge pages, and one server process per core.

`use_huge_pages` restarts `feed serve` once (same pid, same arguments) with glibc's malloc on
transparent huge pages (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, read only at process start).
A served request touches a 1M-item index, catalogue and model at random: with 4 KiB pages most of
those touches miss the TLB, and a miss costs most inside a VM (a two-level page walk). Measured
on this repository's 2-vCPU VM: in-process GetFeed at 1M items 8.7 → 6.7 ms, and p99 at 100
req/s over gRPC 92 → 68 ms (benchmarks/serving_scale.py).

`serve_processes` is `feed serve --processes N`: N server processes on one port. gRPC binds it
with SO_REUSEPORT, so the kernel spreads incoming connections over the processes (per
connection: a client with one channel talks to one process; spread requests over several
channels, or balance per request with gRPC's client-side ``round_robin``). Each process has its own
event log (``<event_log_dir>/process-<i>``; `feed train ranker --from-logs <event_log_dir>` reads
them all) and metrics port (``metrics_port + i`` when one is set). The launcher loads no model:
it starts process 0 (which picks the port when it is 0), then the others on that port, prints
the ready line once all serve, restarts a process that dies while serving, and on SIGTERM /
SIGINT passes the signal on and waits for each to drain.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from feedcore.config import EngineConfig

logger = logging.getLogger(__name__)
HUGE_PAGES = "glibc.malloc.hugetlb"
RESTART_DELAY_S = 1.0


def huge_pages_environment(environ: dict[str, str]) -> dict[str, str]:
    """`environ` with glibc's malloc on transparent huge pages, unless its GLIBC_TUNABLES already
    say something of huge pages (a setting of the operator's, kept as it is)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if HUGE_PAGES in tunables:
        return environ
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, f"{HUGE_PAGES}=1"]))}


def use_huge_pages(config: EngineConfig) -> None:
    """Re-execute this process with malloc on huge pages when `[serving] huge_pages` is on and it
    is not yet (Linux with glibc only; elsewhere, and on a kernel with THP off, nothing changes).
    Call it first thing: whatever was loaded before is loaded again."""
    if (not config.serving.huge_pages or sys.platform != "linux" or platform.libc_ver()[0] != "glibc"
            or HUGE_PAGES in os.environ.get("GLIBC_TUNABLES", "")):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], huge_pages_environment(dict(os.environ)))


def process_command(config_path: str, port: int, index: int) -> list[str]:
    """The command line of server process `index` (a `feed serve` of one process)."""
    return [sys.executable, "-m", "feedcore.cli", "serve", "--config", config_path, "--port", str(port),
            "--process-index", str(index)]


def process_event_log(event_log_dir: str | Path, index: int) -> Path:
    return Path(event_log_dir) / f"process-{index}"


def serve_processes(config: EngineConfig, config_path: str, processes: int, port: int, ready_line: str) -> int:
    """Run `processes` server processes on one port until SIGTERM / SIGINT; returns the exit
    status (0 when every process drained cleanly). A process that fails to start stops them all."""
    environ = huge_pages_environment(dict(os.environ)) if config.serving.huge_pages else dict(os.environ)
    environ["PYTHONUNBUFFERED"] = "1"
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
    while not stopping.wait(0.5):
        for index, child in enumerate(children):
            if child.poll() is not None and not stopping.is_set():
                logger.error("server process %d (pid %d) exited with code %s: restarting it", index, child.pid,
                             child.returncode)
                time.sleep(RESTART_DELAY_S)
                try:
                    children[index], _ = start(index, port)
                except RuntimeError as e:
                    logger.error("%s; stopping the others", e)
                    stop_all()
                    return 1
    return stop_all()
