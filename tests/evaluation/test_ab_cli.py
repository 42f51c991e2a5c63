"""`feed ab analyze` on a real event log directory (written by the service's EventLog)."""

import json

import pytest

from evaluation.synthetic import PlantedAB, planted_ab_log
from feedcli.cli import main
from serving.event_log import EventLog
from serving.experiments import load_experiment

EXPERIMENT = """
name = "planted"
salt = "cli"
[[arms]]
name = "control"
share = 0.5
[[arms]]
name = "treatment"
share = 0.5
"""


def _log_dir(tmp_path, **plan):
    (tmp_path / "exp.toml").write_text(EXPERIMENT)
    experiment = load_experiment(tmp_path / "exp.toml")
    plan = PlantedAB(arms=(("control", 0.5), ("treatment", 0.5)), users=6000, **plan)
    log = EventLog(tmp_path / "log")
    log.append(planted_ab_log(plan, lambda u: experiment.assign(u).name).drop("seq").to_dicts())
    log.close()
    return plan


def test_ab_analyze_writes_the_report_and_flags_a_broken_split(tmp_path, capsys):
    plan = _log_dir(tmp_path, lost_users={"treatment": 0.15}, seed=9)
    main(["ab", "analyze", "--experiment", str(tmp_path / "exp.toml"), "--log", str(tmp_path / "log"),
          "--start-ms", str(plan.start_ms), "--out", str(tmp_path / "report")])
    out = json.loads(capsys.readouterr().out)
    assert out["srm_flagged"] is True and out["report"].endswith("report.md")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "SAMPLE RATIO MISMATCH" in text and "SIMULATION" not in text
    assert "CUPED" in text and (tmp_path / "report" / "lifts.png").is_file()


def test_ab_analyze_refuses_a_log_from_another_experiment(tmp_path, capsys):
    plan = _log_dir(tmp_path, seed=10)
    (tmp_path / "other.toml").write_text(EXPERIMENT.replace('"treatment"', '"other"'))
    with pytest.raises(SystemExit) as e:
        main(["ab", "analyze", "--experiment", str(tmp_path / "other.toml"), "--log", str(tmp_path / "log"),
              "--start-ms", str(plan.start_ms), "--out", str(tmp_path / "report")])
    assert e.value.code == 2 and "does not configure" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()
