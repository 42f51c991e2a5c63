"""Saving and loading model artifacts that carry everything needed to rebuild them.

A checkpoint is one file: ``{"format", "kind", "version", "config", "feature_spec",
"data_fingerprint", "state_dict", "weights_sha256", "extras"}`` (like nanoGPT's checkpoint dict).
Serving rebuilds the exact model training produced from it; a missing, truncated or foreign file
raises ArtifactError with a message saying what to run, and so does one whose weights no longer
match their SHA-256 (bytes garbled on disk can still unpickle into wrong weights).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from feedcore.errors import ArtifactError
from feedcore.features import FeatureSpec, item_features_to_dict
from feedcore.io import atomic_write_bytes

if TYPE_CHECKING:
    from feedcore.prepare import TrainingInputs

FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    kind: str
    version: str
    config: dict[str, Any]
    feature_spec: FeatureSpec
    data_fingerprint: str
    state_dict: dict[str, torch.Tensor]
    extras: dict[str, Any]


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        h.update(state_dict[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def new_version(kind: str, state_dict: dict[str, torch.Tensor]) -> str:
    """``<kind>-<UTC time>-<content hash>``: sortable, and unique to the weights."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{kind}-{stamp}-{weights_digest(state_dict)[:8]}"


def save_checkpoint(
    path: str | Path,
    *,
    kind: str,
    config: dict[str, Any],
    feature_spec: FeatureSpec,
    data_fingerprint: str,
    state_dict: dict[str, torch.Tensor],
    extras: dict[str, Any] | None = None,
) -> Checkpoint:
    """Write a checkpoint atomically and return it (with its new version)."""
    state_dict = {k: v.detach().cpu() for k, v in state_dict.items()}
    ckpt = Checkpoint(kind, new_version(kind, state_dict), config, feature_spec, data_fingerprint,
                      state_dict, extras or {})
    buffer = io.BytesIO()
    torch.save(
        {
            "format": FORMAT,
            "kind": kind,
            "version": ckpt.version,
            "config": config,
            "feature_spec": feature_spec.to_dict(),
            "data_fingerprint": data_fingerprint,
            "state_dict": state_dict,
            "weights_sha256": weights_digest(state_dict),
            "extras": ckpt.extras,
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())
    return ckpt


def load_checkpoint(path: str | Path, kind: str) -> Checkpoint:
    """Load a checkpoint of `kind`; raise ArtifactError naming the file and the command to run."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no {kind} model found; run `feed train {kind}` first")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise ArtifactError(f"{path}: corrupt or unreadable {kind} checkpoint ({e}); retrain with "
                            f"`feed train {kind}`") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("kind") != kind:
        found = raw.get("kind") if isinstance(raw, dict) else type(raw).__name__
        raise ArtifactError(f"{path}: expected a {kind} checkpoint of format {FORMAT}, found {found!r}")
    missing = sorted({"version", "config", "feature_spec", "data_fingerprint", "state_dict", "extras"} - set(raw))
    if missing:
        raise ArtifactError(f"{path}: incomplete {kind} checkpoint, missing {missing}; retrain with `feed train {kind}`")
    if "weights_sha256" in raw and weights_digest(raw["state_dict"]) != raw["weights_sha256"]:
        raise ArtifactError(f"{path}: corrupt {kind} checkpoint: its weights do not match their SHA-256; retrain "
                            f"with `feed train {kind}`")
    return Checkpoint(
        kind=raw["kind"],
        version=raw["version"],
        config=raw["config"],
        feature_spec=FeatureSpec.from_dict(raw["feature_spec"]),
        data_fingerprint=raw["data_fingerprint"],
        state_dict=raw["state_dict"],
        extras=raw["extras"],
    )


def save_model(
    path: str | Path,
    *,
    kind: str,
    model: torch.nn.Module,
    config: Any,
    inputs: TrainingInputs,
    history_events: tuple[str, ...],
    metrics: dict[str, Any],
    extras: dict[str, Any] | None = None,
) -> Checkpoint:
    """Save a trained model with everything serving needs to rebuild it: its constructor args
    (`model.args`), the component config, vocabularies, item features, history event types,
    the data fingerprint and its validation metrics (and any `extras` of the model's own)."""
    return save_checkpoint(
        path,
        kind=kind,
        config=dataclasses.asdict(config),
        feature_spec=inputs.spec,
        data_fingerprint=inputs.data_fingerprint,
        state_dict=model.state_dict(),
        extras={"model_args": dataclasses.asdict(model.args), "item_features": item_features_to_dict(inputs.item_features),
                "history_events": list(history_events), "metrics": metrics, **(extras or {})},
    )
