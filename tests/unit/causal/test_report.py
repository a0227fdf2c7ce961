"""CausalReport: summary statistics on a hand-made effects table, exact save / load."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from revlens.causal import CausalReport
from revlens.causal.report import summarize
from revlens.directions import Directions
from revlens.errors import ConfigError


def _effects() -> pd.DataFrame:
    rows = []
    clean, aligned = 2.0, 0.0
    for layer, v_metric in ((1, 0.4), (2, 1.5)):  # layer 1 removes 80 % of the gap, layer 2 25 %
        ctrl = [1.9, 2.1, 2.0, 1.8]
        for j, m in enumerate([v_metric, *ctrl]):
            rows.append(
                {
                    "run": "s0",
                    "step": 5,
                    "layer": layer,
                    "kind": "clamp",
                    "direction": "v_rev" if j == 0 else f"random_iso_{j - 1}",
                    "control_type": "v_rev" if j == 0 else "iso",
                    "alpha": math.nan,
                    "metric": m,
                    "metric_clean": clean,
                    "metric_aligned": aligned,
                    "effect": clean - m,
                    "mediation_fraction": (clean - m) / (clean - aligned),
                    "n_prompts": 4,
                }
            )
    for alpha, m in ((1.0, 0.5), (2.0, 1.2)):
        for j, mm in enumerate([m, 0.1, -0.1]):
            rows.append(
                {
                    "run": "aligned",
                    "step": 0,
                    "layer": 1,
                    "kind": "steer",
                    "direction": "v_rev" if j == 0 else f"random_cov_{j - 1}",
                    "control_type": "v_rev" if j == 0 else "cov",
                    "alpha": alpha,
                    "metric": mm,
                    "metric_clean": aligned,
                    "metric_aligned": aligned,
                    "effect": aligned - mm,
                    "mediation_fraction": math.nan,
                    "n_prompts": 4,
                }
            )
    return pd.DataFrame(rows)


def test_summary_against_hand_computation():
    s = summarize(_effects())
    clamp = s[s["kind"] == "clamp"].set_index("layer")
    assert clamp.loc[1, "mediation_fraction"] == pytest.approx(0.8)
    ctrl = np.array([0.1, -0.1, 0.0, 0.2]) / 2.0
    assert clamp.loc[1, "ctrl_mediation_mean"] == pytest.approx(ctrl.mean())
    assert clamp.loc[1, "ctrl_mediation_std"] == pytest.approx(ctrl.std(ddof=1))
    assert clamp.loc[1, "ctrl_mediation_p95"] == pytest.approx(np.quantile(ctrl, 0.95))
    effects = ctrl * 2
    assert clamp.loc[1, "z"] == pytest.approx((1.6 - effects.mean()) / effects.std(ddof=1))
    assert clamp.loc[1, "p_value"] == pytest.approx(1 / 5)
    assert bool(clamp.loc[1, "best"]) and not bool(clamp.loc[2, "best"])
    steer = s[s["kind"] == "steer"].set_index("alpha")
    assert steer.loc[2.0, "p_value"] == pytest.approx(1 / 3)
    assert math.isnan(steer.loc[2.0, "mediation_fraction"])


def test_save_load_round_trip_is_exact(tmp_path):
    vec = Directions.from_tensor(torch.randn(2, 8), [1, 2], method="mean_diff")
    rep = CausalReport(
        effects=_effects(),
        config={"metric": "m", "layers": [1, 2], "kinds": ["clamp", "steer"]},
        directions=vec,
        controls={1: torch.randn(3, 8), 2: torch.randn(3, 8)},
        provenance={"model": "tiny"},
    )
    back = CausalReport.load(rep.save(tmp_path / "rep"))
    assert rep.equals(back)
    pd.testing.assert_frame_equal(rep.effects, back.effects, check_exact=True)
    pd.testing.assert_frame_equal(rep.summary(), back.summary(), check_exact=True)
    assert "clamp step 5: best layer 1, mediation 0.800" in repr(back)
    assert "steer" in repr(back)
    d = back.dose_response()
    assert list(d["alpha"]) == [1.0, 2.0] and d["delta"].tolist() == [0.5, 1.2]
    assert back.best_layer("clamp") == 1
    with pytest.raises(ConfigError, match="no 'patch' rows"):
        back.best_layer("patch")
    with pytest.raises(ConfigError, match="causal.json"):
        CausalReport.load(tmp_path)
    import revlens

    assert revlens.load(tmp_path / "rep").equals(rep)
