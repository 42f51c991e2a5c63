"""Checkpoints: what is saved comes back; a file whose weights were garbled is refused."""

import pytest
import torch

from feedcore.artifacts import load_checkpoint, save_checkpoint
from feedcore.errors import ArtifactError
from feedcore.features import FeatureSpec, Vocabulary


def _save(path):
    spec = FeatureSpec(Vocabulary(("u",)), Vocabulary(("i",)), Vocabulary(("movie",)), Vocabulary(()), 5)
    weights = {"table": torch.arange(50_000, dtype=torch.float32).reshape(500, 100), "step": torch.tensor(3)}
    return save_checkpoint(path, kind="ranker", config={"a": 1}, feature_spec=spec, data_fingerprint="f",
                           state_dict=weights, extras={"e": [1]})


def test_a_checkpoint_loads_back_as_saved(tmp_path):
    saved = _save(tmp_path / "model.pt")
    loaded = load_checkpoint(tmp_path / "model.pt", "ranker")
    assert loaded.version == saved.version and loaded.extras == {"e": [1]}
    torch.testing.assert_close(loaded.state_dict["table"], saved.state_dict["table"])


def test_weights_that_no_longer_match_their_checksum_are_refused(tmp_path):
    path = tmp_path / "model.pt"
    _save(path)
    raw = torch.load(path, weights_only=True)
    raw["state_dict"]["table"][17, 3] += 1.0  # one weight changed, the file otherwise intact
    torch.save(raw, path)
    with pytest.raises(ArtifactError, match="weights do not match their SHA-256; retrain with `feed train ranker`"):
        load_checkpoint(path, "ranker")


def test_bytes_garbled_on_disk_are_refused(tmp_path):
    path = tmp_path / "model.pt"
    _save(path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(range(256)) * 16  # inside the table's storage
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupt"):
        load_checkpoint(path, "ranker")
