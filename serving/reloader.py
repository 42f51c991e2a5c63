"""Hot reload: new models and index written by the training jobs replace the served ones, live.

`ModelReloader` polls the artifacts the pipeline is built from (retrieval and ranker checkpoints,
the index's metadata). When any changes, it builds a complete new `FeedPipeline` in a background
thread, with every check `FeedPipeline.from_artifacts` makes, and only then swaps it into the
servicer with one reference assignment: a request runs entirely on the old pipeline or entirely
on the new one, and none waits or fails during the swap. A new set that does not load (a job still
writing, a mismatched index) keeps the old pipeline serving and marks the health service's
`feed.v1.FeedService/reload` NOT_SERVING until a later poll loads one.
"""

from __future__ import annotations

import gc
import logging
import threading
from pathlib import Path

from feedcore.config import EngineConfig
from serving.pipeline import FeedPipeline
from serving.servicer import FeedServicer

logger = logging.getLogger(__name__)


def artifact_stamp(config: EngineConfig, watch: tuple[Path, ...] = ()) -> tuple:
    """What changes when a training job writes a new model or index (mtime and size of each file),
    or one of the `watch` files the servicer also loads (the generation service's critic)."""
    paths = [config.retrieval_path, config.ranker_path, Path(config.index_dir) / "meta.json", *watch]
    stamp = []
    for path in paths:
        try:
            st = Path(path).stat()
            stamp.append((str(path), st.st_mtime_ns, st.st_size))
        except OSError:
            stamp.append((str(path), None, None))
    return tuple(stamp)


def freeze_heap(collect: bool = True) -> None:
    """Take every object alive now out of the cyclic garbage collector's sight (`gc.freeze`): a
    served pipeline holds millions of long-lived objects (at 1M items a full collection scans them
    for ~230 ms, a stall for every request in flight). Frozen objects are still freed by reference
    counting when released. `collect` first frees what is garbage already (at start-up; a reload
    skips it, so swapping in a model never stalls the requests being served)."""
    if collect:
        gc.collect()
    gc.freeze()


class ModelReloader:
    """Polls every `interval_s`; `watch`: more files whose change swaps in a new pipeline (the
    servicer's pipeline setter reloads what else it serves from them)."""

    def __init__(self, config: EngineConfig, servicer: FeedServicer, interval_s: float = 5.0,
                 watch: tuple[Path, ...] = ()) -> None:
        self.config = config
        self.servicer = servicer
        self.interval_s = interval_s
        self.watch = watch
        self.stamp = artifact_stamp(config, watch)
        self.reloads = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_once(self) -> bool:
        """Load and swap in a new pipeline if the artifacts changed; True if it swapped."""
        stamp = artifact_stamp(self.config, self.watch)
        if stamp == self.stamp:
            return False
        try:
            pipeline = FeedPipeline.from_artifacts(self.config)
        except Exception as e:  # noqa: BLE001 (keep serving the old models, whatever went wrong)
            logger.error("reload: new artifacts do not load, still serving %s: %s",
                         self.servicer.pipeline.model_version, e)
            self.servicer.report_component("reload", False)
            return False
        if artifact_stamp(self.config, self.watch) != stamp:  # written again while loading: load the newest next time
            return False
        old = self.servicer.pipeline.model_version
        self.servicer.pipeline = pipeline  # the swap: one reference assignment
        freeze_heap(collect=False)
        self.stamp = stamp
        self.reloads += 1
        self.servicer.report_component("reload", True)
        logger.info("reload: now serving %s (was %s)", pipeline.model_version, old)
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-reloader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check_once()
