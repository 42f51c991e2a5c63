"""Configs are read once, strictly: unknown keys and wrong types are named."""

from pathlib import Path

import pytest

from feedcore.config import TaskConfig, load_config
from feedcore.errors import DataError


def test_demo_config_loads():
    config = load_config("configs/demo.toml")
    assert config.data.dataset == "ml-latest-small"
    assert config.ranker.tasks[1] == TaskConfig("like", "binary", 1.0, "rating", 4.0)


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[ranker]\nepochz = 3\n")
    with pytest.raises(DataError, match=r"c\.toml, column 'ranker\.': unknown key\(s\) \['epochz'\]"):
        load_config(path)


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[retrieval]\nepochs = 'three'\n")
    with pytest.raises(DataError, match=r"column 'retrieval\.epochs': wrong type \(got 'three'\); expected int"):
        load_config(path)


def test_task_kind_is_checked(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[ranker]\ntasks = [{ name = 'x', kind = 'ordinal' }]\n")
    with pytest.raises(DataError, match="unsupported value.*'ordinal'.*binary"):
        load_config(path)


def test_bool_is_not_an_int_and_tasks_need_names(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[retrieval]\nepochs = true\n")
    with pytest.raises(DataError, match="retrieval.epochs': wrong type"):
        load_config(path)
    path.write_text("[ranker]\ntasks = [{ kind = 'binary' }]\n")
    with pytest.raises(DataError, match=r"missing key\(s\) \['name'\]"):
        load_config(path)


def test_tasks_and_value_weights_must_agree(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[ranker]\ntasks = [{ name = 'click' }, { name = 'click' }]\n")
    with pytest.raises(DataError, match="duplicate task name"):
        load_config(path)
    path.write_text("[ranker]\ntasks = [{ name = 'click' }]\n[serving]\nvalue_weights = { click = 1.0, follow = 2.0 }\n")
    with pytest.raises(DataError, match=r"serving.value_weights': value-model weights name undeclared task\(s\) \(got \['follow'\]\)"):
        load_config(path)


@pytest.mark.parametrize("path", sorted(str(p) for p in (Path(__file__).parents[2] / "configs").glob("*.toml")))
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert config.ranker.tasks and config.serving.value_weights


def test_the_shipped_experiments_load():
    from serving.experiments import load_experiment

    paths = sorted((Path(__file__).parents[2] / "configs" / "experiments").glob("*.toml"))
    assert paths
    for path in paths:
        experiment = load_experiment(path)
        assert abs(sum(a.share for a in experiment.arms) - 1) < 1e-9
