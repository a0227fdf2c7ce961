"""The weight-space blocker on the lab: run_blocked(method="weights") writes blocked runs that keep
ΔW off V's subspace, and revlens.lab.weights turns the lab into the comparison table and rows."""

import json

import pytest
from unit.block.tinyrev import one_thread  # noqa: F401 (autouse fixture)

from revlens.history import History
from revlens.lab.blocked import run_blocked
from revlens.lab.weights import weight_blocking_table, weight_rows
from revlens.weights import weight_reversion


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory):
    from revlens.lab import LabConfig, asset_dir, run_lab

    if not (asset_dir() / "pair0" / "pair.json").is_file():
        pytest.skip("the shipped lab pair assets/lab/pair0 is missing")
    out = tmp_path_factory.mktemp("lab-weights") / "lab"
    cfg = LabConfig(ft_seeds=(0,), ft_steps=3, checkpoint_steps=(1, 3), control=True)
    return run_lab(out, cfg, progress=False).lab_dirs["pair0"]


@pytest.mark.slow
def test_weight_blocking_on_the_lab(lab_dir):
    t = run_blocked(lab_dir, "weights", k=4, side="left", progress=False)
    r = run_blocked(lab_dir, "weights", k=4, side="left", random_directions=True, progress=False)
    assert t.run.tolist() == ["weights/seed0"] and r.run.tolist() == ["weights-random/seed0"]
    spec = json.loads((lab_dir / "history.json").read_text())["runs"]["weights/seed0"]
    assert spec["kind"] == "blocked" and spec["info"]["method"] == "weights"
    assert spec["info"]["settings"] == {"k": 4, "side": "left"}
    hist = History.load(lab_dir)
    assert hist.runs["weights-random/seed0"].kind == "blocked"
    w = weight_reversion(lab_dir, ks=(4,), n_random=8, progress=False)
    m = w.model.set_index("run")
    assert m.loc["weights/seed0", "frac_left"].max() < 1e-8  # the constraint holds at every step
    assert (
        m.loc["weights-random/seed0", "frac_left"] > 1e-3
    ).all()  # the control leaves V's subspace alone
    assert set(w.headline()["groups"]) == {"runs", "control", "blocked"}
    table = weight_blocking_table(lab_dir, variants=("weights",), progress=False)
    assert table["group"].tolist() == ["unblocked", "weights", "weights-random"]
    assert {"harm_rate", "task_acc", "cos_act", "revert_w", "cos_w"} <= set(table.columns)
    rows = weight_rows(w, table)
    assert [r["claim"].split(":")[0] for r in rows][-1] == "weight-space blocking (weights)"
    assert all(set(r) == {"claim", "paper", "revlens_lab", "shape_holds", "note"} for r in rows)
