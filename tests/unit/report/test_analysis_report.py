"""Report: exact save/load round trip, summary, repr (synthetic statistics, no model)."""

import json

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest
import torch

from revlens.analyze import analyze
from revlens.collect.stats import CheckpointStats, HistoryStats
from revlens.errors import ConfigError, HistoryError
from revlens.report import Report


def _stats() -> HistoryStats:
    g = torch.Generator().manual_seed(0)
    n, d = 24, 12
    u = torch.eye(d, dtype=torch.float64)[0]
    aligned = torch.randn(n, 2, d, generator=g, dtype=torch.float64)

    def noisy(x):
        return x + 0.02 * torch.randn(x.shape, generator=g, dtype=torch.float64)

    acts = {"base": noisy(aligned + u), "aligned": aligned}
    roles = {"base": ("base", None, None), "aligned": ("aligned", None, 0)}
    for run in ("s0", "s1"):
        for step in (1, 20):
            acts[f"{run}/{step}"] = noisy(aligned + 0.05 * step * u)
            roles[f"{run}/{step}"] = ("run", run, step)
    for step in (1, 20):
        acts[f"ctl/{step}"] = noisy(acts["base"])
        roles[f"ctl/{step}"] = ("run", "ctl", step)
    cks = {}
    for name, x in acts.items():
        st = CheckpointStats(name, [1, 2])
        ref = name in ("base", "aligned")
        st.update(x, torch.arange(n), n_bootstrap=10, seed=0, second=ref, keep=ref)
        cks[name] = st.finalize()
    return HistoryStats(
        layers=[1, 2],
        site="resid_post",
        position="last",
        d_model=d,
        checkpoints=cks,
        roles=roles,
        run_starts={"s0": "aligned", "s1": "aligned", "ctl": "base"},
        controls=["ctl"],
        meta={"n_prompts": n, "prompts": [f"p{i}" for i in range(n)]},
    )


@pytest.fixture(scope="module")
def report() -> Report:
    return analyze(
        _stats(),
        methods=("mean_diff", "pca", "whitened"),
        n_bootstrap=10,
        n_null=50,
        progress=False,
    )


def test_tables(report):
    assert report.methods == ["mean_diff", "pca", "whitened"] and report.layers == [1, 2]
    assert report.runs == ["s0", "s1", "ctl"]
    assert len(report.drift) == 3 * 2 * 2 * 3
    for col in (
        "run",
        "step",
        "layer",
        "method",
        "control",
        "cos",
        "cos_lo",
        "cos_hi",
        "proj",
        "frac",
        "norm",
        "null_iso_p99",
        "null_cov_p99",
        "p_iso",
        "p_cov",
        "significant",
        "significant_cov",
    ):
        assert col in report.drift.columns
    t = report.directions_table
    assert list(report.directions) == report.methods
    assert list(t.columns) == [
        "layer",
        "method",
        "stability",
        "perm_p",
        "norm",
        "agree_mean_diff",
        "agree_pca",
        "agree_whitened",
    ]
    assert len(t) == 2 * 3 and np.allclose(t.loc[t.method == "pca", "agree_pca"], 1.0)
    assert (t["stability"] > 0.7).all() and (t["perm_p"] < 0.05).all()
    assert report.config["base_combination"] == "mean of bases"
    assert report.provenance["n_prompts"] == 24 and report.provenance["prompts"][0] == "p0"


def test_headline_summary_and_repr(report):
    s = report.headline()
    assert s["method"] == "mean_diff" and s["step"] == 20 and s["best_layer"] in (1, 2)
    assert s["runs"]["cos_step20"]["mean"] > 0.9
    assert s["runs"]["above_iso_p99"] == {"count": 4, "total": 4}
    assert s["control"]["above_iso_p99"]["count"] == 0
    assert set(s["paper"]) >= {"cos_first", "cos_step20", "above_iso_p99", "final_cos"}
    assert report.headline("pca")["method"] == "pca"
    table = report.summary()
    row = table[(table["group"] == "runs") & (table["quantity"] == "above_iso_p99")].iloc[0]
    assert (row["count"], row["total"]) == (4, 4) and row["paper_mean"] != row[
        "paper_mean"
    ]  # NaN: a count
    cos20 = table[(table["group"] == "runs") & (table["quantity"] == "cos_step20")].iloc[0]
    assert cos20["mean"] == s["runs"]["cos_step20"]["mean"] and cos20["paper_mean"] == 0.647
    text = repr(report)
    for part in ("s0", "ctl (control)", "[1, 2]", "mean_diff", "above iso p99 4/4", "control:"):
        assert part in text


def test_save_load_round_trip_is_exact(report, tmp_path):
    lab = pd.DataFrame(
        {"name": ["a", "b"], "harm": [0.1, float("nan")], "step": [1, 2], "ok": [True, False]}
    )
    rep = Report(
        drift=report.drift,
        directions=report.directions,
        directions_table=report.directions_table,
        config=report.config,
        provenance=report.provenance,
        metrics=lab,
    )
    rep.save(tmp_path / "r")
    back = Report.load(tmp_path / "r")
    pdt.assert_frame_equal(back.drift, rep.drift, check_exact=True)
    pdt.assert_frame_equal(back.directions_table, rep.directions_table, check_exact=True)
    pdt.assert_frame_equal(back.metrics, lab, check_exact=True)
    assert list(back.directions) == list(rep.directions)
    for m, v in rep.directions.items():
        assert (
            torch.equal(back.directions[m].basis, v.basis) and back.directions[m].layers == v.layers
        )
    assert back.config == json.loads(json.dumps(rep.config))
    assert back.provenance == rep.provenance
    assert back.headline()["runs"] == rep.headline()["runs"]
    assert (tmp_path / "r" / "drift.csv").is_file()
    report.save(tmp_path / "r2")
    assert Report.load(tmp_path / "r2").metrics is None
    import revlens

    assert isinstance(revlens.load(tmp_path / "r"), Report)


def test_load_errors(report, tmp_path):
    with pytest.raises(ConfigError, match="no saved Report"):
        Report.load(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ConfigError, match="incomplete"):
        Report.load(tmp_path)
    report.save(tmp_path / "ok")
    meta = json.loads((tmp_path / "ok" / "report.json").read_text())
    meta["format"] = "other"
    (tmp_path / "ok" / "report.json").write_text(json.dumps(meta, indent=1))
    with pytest.raises(ConfigError, match="changed|format"):
        Report.load(tmp_path / "ok")


def test_analyze_on_stats_bad_input():
    stats = _stats()
    with pytest.raises(ConfigError, match="valid methods: mean_diff, pca, probe, whitened"):
        analyze(stats, methods=("mean-diff",), progress=False)
    with pytest.raises(ConfigError, match="methods is empty"):
        analyze(stats, methods=(), progress=False)
    one_step = _stats()
    del one_step.roles["s1/20"]
    with pytest.raises(HistoryError, match="run 's1' has 1 step"):
        analyze(one_step, progress=False)
