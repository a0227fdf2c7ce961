"""The paper's headline quantities from a drift table."""

import math

import pandas as pd
import pytest

from revlens.drift import PAPER, headline
from revlens.errors import ConfigError


def _table() -> pd.DataFrame:
    rows = []
    cos = {  # (run, kind) -> {layer: [cos at steps 1, 10, 18, 40]}
        ("s0", "run"): {1: [0.1, 0.3, 0.5, 0.6], 2: [0.2, 0.2, 0.3, 0.1]},
        ("s1", "run"): {1: [0.3, 0.3, 0.7, 0.8], 2: [0.0, 0.1, 0.1, 0.1]},
        ("ctl", "control"): {1: [0.0, 0.05, 0.1, 0.0], 2: [0.0, 0.0, 0.0, 0.0]},
    }
    for (run, kind), layers in cos.items():
        for layer, values in layers.items():
            for step, c in zip((1, 10, 18, 40), values):
                for method in ("mean_diff", "pca"):
                    rows.append(
                        {
                            "run": run,
                            "step": step,
                            "layer": layer,
                            "method": method,
                            "control": kind == "control",
                            "kind": kind,
                            "cos": c,
                            "significant": c > 0.25,
                            "significant_cov": c > 0.45,
                        }
                    )
    return pd.DataFrame(rows)


def test_headline_values():
    s = headline(_table(), method="mean_diff", step=20)
    assert set(s) == {"method", "step", "best_layer", "runs", "control", "blocked", "paper"}
    assert s["step"] == 18 and s["best_layer"] == 1 and s["blocked"] is None
    r = s["runs"]
    assert set(r) >= {
        "cos_first",
        "cos_step20",
        "final_cos",
        "above_iso_p99",
        "above_iso_p99_all_layers",
        "above_cov_p99",
        "runs",
    }
    assert r["cos_first"]["mean"] == pytest.approx(0.2) and r["cos_first"]["std"] == pytest.approx(
        0.1414213, 1e-5
    )
    assert r["cos_step20"]["mean"] == pytest.approx(0.6)
    assert r["final_cos"]["mean"] == pytest.approx(0.7)
    assert r["cos_step20"]["per_layer"][2]["mean"] == pytest.approx(0.2)
    assert r["above_iso_p99"] == {"count": 7, "total": 8}
    assert r["above_iso_p99_all_layers"] == {"count": 8, "total": 16}
    assert r["above_cov_p99"] == {"count": 4, "total": 8}
    assert r["runs"] == ["s0", "s1"]
    c = s["control"]
    assert c["cos_step20"]["mean"] == pytest.approx(0.1) and math.isnan(c["cos_step20"]["std"])
    assert c["above_iso_p99"] == {"count": 0, "total": 4}
    assert s["paper"] is PAPER and PAPER["cos_step20"]["mean"] == 0.647
    assert PAPER["above_iso_p99"] == {"count": 24, "total": 24}


def test_headline_errors():
    with pytest.raises(ConfigError, match="methods: \\['mean_diff', 'pca'\\]"):
        headline(_table(), method="probe")
    only_ctl = _table()
    only_ctl = only_ctl[only_ctl.kind == "control"]
    with pytest.raises(ConfigError, match="no ordinary"):
        headline(only_ctl)
