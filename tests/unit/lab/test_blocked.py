"""run_blocked writes blocked runs into a lab dir (runs of kind "blocked") that History.load reads."""

import json

import pytest
from unit.block.tinyrev import one_thread  # noqa: F401 (autouse fixture)

from revlens.errors import CheckpointError, ConfigError
from revlens.history import History
from revlens.lab.blocked import lab_probes, run_blocked


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory):
    from revlens.lab import LabConfig, asset_dir, run_lab

    if not (asset_dir() / "pair0" / "pair.json").is_file():
        pytest.skip("the shipped lab pair assets/lab/pair0 is missing")
    out = tmp_path_factory.mktemp("lab") / "lab"
    cfg = LabConfig(ft_seeds=(0,), ft_steps=3, checkpoint_steps=(1, 3), control=False)
    return run_lab(out, cfg, progress=False).lab_dirs["pair0"]


def _probes():
    from revlens.probes import Probes

    return Probes(lab_probes().prompts[::12])  # 16 prompts: fast


@pytest.mark.slow
def test_blocked_runs_land_in_manifest_metrics_and_history(lab_dir):
    table = run_blocked(lab_dir, "update", refresh_every=2, probes=_probes(), progress=False)
    again = run_blocked(
        lab_dir, "update", refresh_every=2, probes=_probes(), random_directions=True, progress=False
    )
    assert table.run.tolist() == ["update/seed0"] and again.run.tolist() == ["update-random/seed0"]
    spec = json.loads((lab_dir / "history.json").read_text())
    entry = spec["runs"]["update/seed0"]
    assert entry["steps"] == {
        "1": "blocked/update/seed0/step-1",
        "3": "blocked/update/seed0/step-3",
    }
    assert entry["kind"] == "blocked" and entry["start"] == "aligned"
    assert entry["info"]["settings"] == {"refresh_every": 2} and entry["info"]["seconds"] > 0
    hist = History.load(lab_dir)
    assert (
        list(hist.runs["update/seed0"].steps) == [1, 3]
        and hist.runs["update/seed0"].kind == "blocked"
    )
    m = hist.metrics[hist.metrics["kind"] == "blocked"]
    assert sorted(zip(m["run"], m["step"])) == [
        ("update-random/seed0", 1),
        ("update-random/seed0", 3),
        ("update/seed0", 1),
        ("update/seed0", 3),
    ]
    assert {"harm_rate", "harm_logodds", "task_acc"} <= set(m.columns)
    run_blocked(lab_dir, "update", refresh_every=2, probes=_probes(), progress=False)  # replaces
    recs = [
        r
        for r in json.loads((lab_dir / "metrics.json").read_text())
        if r["checkpoint"].startswith("update/seed0/")
    ]
    assert len(recs) == 2


@pytest.mark.slow
def test_bad_lab_inputs(lab_dir, tmp_path):
    with pytest.raises(ConfigError, match="method"):
        run_blocked(lab_dir, "freeze")
    with pytest.raises(CheckpointError, match="history.json"):
        run_blocked(tmp_path, "update")
