"""A/B experiments: arms, deterministic assignment by salted hash, and a config file that reloads live.

The experiment file (TOML; `[serving] experiments_file`) declares one experiment and its arms; an
arm may override the value model's weights and the blender's settings:

    name = "diverse-feed"
    salt = "2026-11"            # change it to reshuffle users between arms
    primary_metric = "engagements_per_user"   # what the experiment is decided on (`feed ab analyze`)
    [[arms]]
    name = "control"
    share = 0.5
    [[arms]]
    name = "diverse"
    share = 0.5
    value_weights = { engage = 1.0, like = 1.0 }
    blend = { diversity = 0.3 }
    [[arms]]                    # an arm may explore: a sampled order, propensities logged
    name = "explore"
    share = 0.0
    exploration = { kind = "plackett_luce", temperature = 0.1, depth = 20 }

A user's arm is a pure function of (salt, user id): SHA-256 of ``"<salt>:<user id>"`` mapped to
[0, 1) and cut by the arms' cumulative shares, so every server assigns the same arm without
shared state. `ExperimentStore` re-reads the file when it changes (checked at most once a second
on the request path); a file that does not parse keeps the previous experiment in force and is
reported in the log, so a typo never takes the service down.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

from feedcore.config import BlendConfig, from_dict
from feedcore.errors import DataError
from serving.mixing.exploration import ExplorationConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    share: float
    value_weights: dict[str, float] | None = None  # None: the server's (per surface)
    blend: BlendConfig | None = None  # None: the server's
    # None: the arm ranks deterministically. Set: it samples its order and logs propensities for
    # off-policy evaluation (`serving.mixing.exploration`, `evaluation.ope`).
    exploration: ExplorationConfig | None = None


@dataclasses.dataclass(frozen=True)
class Experiment:
    """An experiment and its arms. `primary_metric`: the metric it is decided on, declared before
    it runs (`evaluation.ab.METRICS`; "": the analysis default, engagements per user); `feed ab
    analyze` reads it at alpha and tests the other metrics only when it is significant."""

    name: str
    salt: str
    arms: tuple[Arm, ...]
    primary_metric: str = ""

    def __post_init__(self) -> None:
        names = [a.name for a in self.arms]
        if not self.arms or len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name!r}: arms must be non-empty with unique names, got {names}")
        if any(a.share < 0 for a in self.arms) or abs(sum(a.share for a in self.arms) - 1.0) > 1e-6:
            raise ValueError(f"experiment {self.name!r}: arm shares must be >= 0 and sum to 1, got "
                             f"{[a.share for a in self.arms]}")

    def assign(self, user_id: str) -> Arm:
        """The user's arm: deterministic, uniform over users, stable while salt and shares stay."""
        digest = hashlib.sha256(f"{self.salt}:{user_id}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64  # [0, 1)
        total = 0.0
        for arm in self.arms:
            total += arm.share
            if point < total:
                return arm
        return self.arms[-1]

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(f"experiment {self.name!r} has no arm {name!r} (arms: {[a.name for a in self.arms]})")


DEFAULT_EXPERIMENT = Experiment("none", "", (Arm("default", 1.0),))


def load_experiment(path: str | Path) -> Experiment:
    """Parse an experiment file; DataError names the file and the key at fault."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise DataError(path, f"cannot read experiment file: {e}", expected="a TOML experiment file") from e
    return from_dict(Experiment, raw, source=str(path))


class ExperimentStore:
    """The experiment in force, re-read from `path` when the file changes (no restart)."""

    def __init__(self, path: str | Path | None, check_every_s: float = 1.0,
                 validate: Callable[[Experiment], None] | None = None) -> None:
        """`validate` raises ValueError for an experiment the server cannot run (e.g. an arm's
        value weights naming a task the ranker does not predict): refused at startup, and on
        reload the last good experiment stays."""
        self.path = Path(path) if path else None
        self.check_every_s = check_every_s
        self.validate = validate
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._checked = 0.0
        self.experiment = DEFAULT_EXPERIMENT
        self.last_error: str | None = None
        if self.path is not None:
            self.experiment = self._load()  # at startup a bad file is an error
            self._mtime = self.path.stat().st_mtime

    def _load(self) -> Experiment:
        experiment = load_experiment(self.path)
        if self.validate is not None:
            try:
                self.validate(experiment)
            except ValueError as e:
                raise DataError(self.path, str(e)) from e
        return experiment

    def current(self) -> Experiment:
        if self.path is None:
            return self.experiment
        now = time.monotonic()
        if now - self._checked >= self.check_every_s and self._lock.acquire(blocking=False):
            try:
                self._checked = now
                self._reload_if_changed()
            finally:
                self._lock.release()
        return self.experiment

    def _reload_if_changed(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError as e:
            self.last_error = f"experiment file unreadable, keeping {self.experiment.name!r}: {e}"
            logger.error(self.last_error)
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            experiment = self._load()
        except (DataError, ValueError) as e:
            self.last_error = f"experiment file rejected, keeping {self.experiment.name!r}: {e}"
            logger.error(self.last_error)
            return
        self.experiment, self.last_error = experiment, None
        logger.info("experiment reloaded: %s (%s)", experiment.name,
                    ", ".join(f"{a.name} {a.share:.0%}" for a in experiment.arms))
