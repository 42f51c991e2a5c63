"""The sharded (DMP) ranker is the unsharded ranker: loss, per-task losses, predictions and dense
gradients agree on the same weights and batch, for every experts mode, task kind and optional feature."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dmp_parity import CASES, TOLERANCE, case, max_differences

from feedcore.distributed import process_group
from ranker.model import MultiTaskRanker

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("experts", "features"), CASES)
def test_dmp_matches_the_unsharded_model_in_one_process(experts, features):
    with process_group("cpu") as (_, world_size):
        diffs = max_differences(experts, features, world_size)
    assert max(diffs.values()) <= TOLERANCE, diffs


def test_dmp_matches_the_unsharded_model_on_two_torchrun_ranks():
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                             str(Path(__file__).with_name("dmp_parity.py"))], cwd=REPO, capture_output=True, text=True, timeout=480)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["world_size"] == 2 and len(report["results"]) == len(CASES)
    worst = {name: max(diffs.values()) for name, diffs in report["results"].items()}
    assert max(worst.values()) <= TOLERANCE, worst


def test_the_losses_are_the_task_kinds_own():
    """Closed form: each task's loss is its kind's (log loss, Poisson NLL, squared error) of its
    logits over the labels present; the bug this guards against trained every task as MSE."""
    from ranker.model import MultiTaskRankerTrain

    args, batch = case("ple", "base")
    torch.manual_seed(0)
    model = MultiTaskRanker(args)
    _, per_task, logits = MultiTaskRankerTrain(model)(batch.dense, batch.sparse, batch.labels)
    present = ~torch.isnan(batch.labels)
    expected = []
    for t, kind in enumerate(["binary", "binary", "count", "regression"]):
        x, y = logits[present[:, t], t], batch.labels[present[:, t], t]
        expected.append({"binary": torch.nn.functional.binary_cross_entropy_with_logits(x, y),
                         "count": (torch.exp(x) - y * x).mean(),
                         "regression": ((x - y) ** 2).mean()}[kind])
    assert torch.allclose(per_task, torch.stack(expected), atol=1e-6)


def test_no_state_is_left_for_a_wrapper_to_drop():
    """A model built on meta is materialised from parameters alone: it has no buffers at all."""
    for experts, features in CASES:
        args, _ = case(experts, features)
        assert list(MultiTaskRanker(args, device=torch.device("meta")).named_buffers()) == []
