"""`revlens ablate`'s default subset reaches the full sweep's conclusion at the last step, on a lab.

The full sweep intervenes at every layer; the default studies log-spaced steps and the layers
that moved furthest along v_rev. Both must name the same best layer at the last step (the highest
mean clamp mediation over runs, v_rev) with the same mediation fraction (within 0.02). Controls
are cut to one per kind here: v_rev's own rows do not depend on them.
"""

import pytest

from revlens.causal import ablation_study
from revlens.cli import main
from revlens.history import History
from revlens.lab.cli import main as lab_main


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab-defaults") / "lab"
    assert (
        lab_main(
            ["--out", str(out), "--seeds", "0", "1", "--steps", "30", "--no-control", "--quiet"]
        )
        == 0
    )
    return out


def _best_at_last(report):
    e = report.effects
    e = e[(e.direction == "v_rev") & (e.kind == "clamp")]
    last = e[e.step == e.groupby("run").step.transform("max")]
    per_layer = last.groupby("layer").mediation_fraction.mean()
    return int(per_layer.idxmax()), float(per_layer.max()), per_layer


@pytest.mark.slow
def test_default_subset_reaches_the_full_sweeps_conclusion(lab):
    history = History.load(lab)
    lm = history.boot()
    full = ablation_study(history, model=lm, steps="last", layers="all", controls=1, progress=False)
    default = ablation_study(history, model=lm, controls=1, progress=False)
    steps = sorted(set(default.effects.step))
    assert (
        len(steps) == 3 and steps[0] == 1 and steps[-1] == 30 and 4 <= steps[1] <= 8
    )  # log-spaced, last included
    assert len(set(default.effects.layer)) == 2 < len(set(full.effects.layer))
    layer_full, med_full, table = _best_at_last(full)
    layer_default, med_default, _ = _best_at_last(default)
    assert layer_default == layer_full, table
    assert abs(med_default - med_full) <= 0.02
    assert med_full > 0.05  # there is something to mediate: not a vacuous agreement


@pytest.mark.slow
def test_cli_prints_the_plan_before_starting(lab, tmp_path, capsys):
    out = tmp_path / "ablate"
    code = main(
        [
            "ablate",
            "--history",
            str(lab),
            "--out",
            str(out),
            "--controls",
            "1",
            "--steps",
            "last",
            "--auto-layers",
            "1",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0 and captured.out.strip() == str(out / "report.html")
    plan = captured.err.split("ablation:")[0]  # printed before the progress bar starts
    assert "ablation plan: 2 checkpoint(s)" in plan and "planned:" in plan and "ETA ~" in plan
    assert "--layers all for every layer" in plan and "the full sweep" in plan
