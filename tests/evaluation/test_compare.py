"""Offline comparison: the paired user bootstrap detects a real difference and none between equals."""

import numpy as np
import pytest

from evaluation.compare import (
    CompareConfig,
    HeldOut,
    HeldOutScores,
    compare_engines,
    compare_figures,
    compare_markdown,
    compare_scores,
)
from evaluation.report import write_report
from feedcore.metrics import auc, weighted_auc


def _held(users=400, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.tile([1.0, 0.0, 0.0], users)
    held = HeldOut(row_user=np.arange(users), row_group=np.where(np.arange(users) % 2, "movie", "post"),
                   example_user=np.repeat(np.arange(users), 3), example_group=np.full(3 * users, "movie"),
                   labels={"engage": labels}, users=users)
    return held, rng, labels


def test_a_better_model_is_found_better_and_equal_models_equal():
    held, rng, labels = _held()
    ranks_a = rng.integers(0, 100, 400)
    ranks_b = np.maximum(ranks_a - rng.integers(0, 30, 400), 0)  # B ranks every held-out item higher
    noise = rng.normal(0, 1, len(labels))
    a = HeldOutScores("A", ranks_a, {"engage": 1 / (1 + np.exp(-(noise + 0.5 * labels)))})
    b = HeldOutScores("B", ranks_b, {"engage": 1 / (1 + np.exp(-(noise + 1.5 * labels)))})
    result = compare_scores(held, a, b, CompareConfig(resamples=300))
    by = {(d.metric, d.group): d for d in result.deltas}
    for key in (("hr@50", "all"), ("ndcg@10", "all"), ("engage/auc", "all"), ("engage/gauc", "all")):
        assert by[key].ci_low > 0 and by[key].p_value < 0.01, by[key]
    assert ("hr@10", "movie") in by and ("hr@10", "post") in by  # per content type
    same = compare_scores(held, a, HeldOutScores("A2", ranks_a, a.predictions), CompareConfig(resamples=100))
    assert all(d.delta == 0 and d.ci_low == 0 == d.ci_high for d in same.deltas)


def test_bootstrap_weights_mean_duplicated_users():
    y = np.array([1, 0, 0, 1, 0, 1])
    s = np.array([0.9, 0.2, 0.6, 0.4, 0.5, 0.7])
    w = np.array([2.0, 1, 0, 3, 1, 1])
    assert weighted_auc(y, s, w) == pytest.approx(auc(np.repeat(y, w.astype(int)), np.repeat(s, w.astype(int))))


def test_two_real_engines_on_the_same_held_out_data(sim_engine, tmp_path):
    config = sim_engine[0]
    result = compare_engines(config, config, config, CompareConfig(split="test", resamples=50), names=("A", "A'"))
    by = {(d.metric, d.group): d for d in result.deltas}
    assert result.rows > 100 and result.examples == 3 * result.rows  # one held-out item and 2 negatives each
    assert 0 < by[("hr@50", "all")].a <= 1 and 0.5 < by[("engage/auc", "all")].a <= 1
    assert all(d.delta == 0 for d in result.deltas)  # the same engine twice: identical scores
    path = write_report(tmp_path / "cmp", compare_markdown(result), compare_figures(result))
    assert "paired bootstrap over users" in path.read_text()
    assert {p.name for p in (tmp_path / "cmp").iterdir()} == {"report.md", "metrics.png", "deltas.png",
                                                              "calibration.png"}


def test_feed_eval_compare_command(sim_engine, tmp_path, capsys):
    import json

    from feedcli.cli import main

    config = sim_engine[0]
    toml = tmp_path / "a.toml"
    toml.write_text(f'artifacts_dir = "{config.artifacts_dir}"\n[data]\ndataset = "canonical"\n'
                    f'raw_root = "{config.data.raw_root}"\nmax_history = {config.data.max_history}\n'
                    'history_events = ["rating"]\n')
    main(["eval", "compare", str(toml), str(toml), "--dataset", str(toml), "--split", "valid", "--resamples", "30",
          "--out", str(tmp_path / "report")])
    out = json.loads(capsys.readouterr().out)
    assert "hr@10[all]" in out["deltas"] and (tmp_path / "report" / "deltas.png").is_file()
    other = tmp_path / "other.toml"  # an engine trained on other data is refused, naming the command to run
    other.write_text(toml.read_text().replace(config.artifacts_dir, str(tmp_path / "none")))
    with pytest.raises(SystemExit) as e:
        main(["eval", "compare", str(toml), str(other), "--dataset", str(toml), "--out", str(tmp_path / "r2")])
    assert e.value.code == 2
