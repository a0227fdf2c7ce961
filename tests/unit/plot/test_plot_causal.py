"""Causal, direction, blocking and metrics figures, and the results' named figure methods."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from jaxtyping import TypeCheckError

from revlens.errors import ConfigError
from revlens.plot import (
    blocking_figure,
    control_bands,
    direction_agreement,
    direction_stability,
    mediation_heatmap,
    metrics_figure,
    steer_dose_response,
)


def test_mediation_heatmap_values_hover_and_stars(effects):
    fig = mediation_heatmap(effects, intervention="patch")
    heat, stars = fig.data
    assert heat.type == "heatmap" and heat.zmid == 0 and heat.zmin == -heat.zmax
    e = effects[effects["kind"] == "patch"]
    v = e[e["control_type"] == "v_rev"].groupby(["layer", "step"])["mediation_fraction"].mean()
    i, j = list(heat.y).index(2), list(heat.x).index("20")
    assert heat.z[i][j] == pytest.approx(v[(2, 20)])
    text = heat.text[i][j]
    iso = e[(e["control_type"] == "iso") & (e["layer"] == 2) & (e["step"] == 20)][
        "mediation_fraction"
    ]
    assert f"v_rev mediation fraction {v[(2, 20)]:.3f}" in text
    assert f"iso controls ({len(iso)}): mean {iso.mean():.3f}" in text
    assert f"p95 {iso.quantile(0.95):.3f}" in text
    # v_rev 0.9 / 0.6 / 0.3 against controls ~N(0, 0.05): every cell beats its controls
    assert set(zip(stars.x, stars.y)) == {(str(s), lay) for s in (5, 20) for lay in (0, 1, 2)}


def test_mediation_star_only_where_v_rev_beats_controls(effects):
    e = effects.copy()
    weak = (e["control_type"] == "v_rev") & (e["layer"] == 1) & (e["step"] == 5)
    e.loc[weak, "mediation_fraction"] = -1.0
    _, stars = mediation_heatmap(e).data
    assert ("5", 1) not in set(zip(stars.x, stars.y)) and ("20", 1) in set(zip(stars.x, stars.y))


def test_mediation_errors(effects):
    with pytest.raises((ConfigError, TypeCheckError)):  # TypeCheckError under the jaxtyping plugin
        mediation_heatmap(effects, intervention="steer")
    with pytest.raises(ConfigError, match="no 'patch' rows; kinds present"):
        mediation_heatmap(effects[effects["kind"] != "patch"], intervention="patch")
    with pytest.raises(ConfigError, match="missing column"):
        mediation_heatmap(effects.drop(columns="control_type"))


def test_float_steps_and_layers_read_back_from_csv(effects, tmp_path):
    effects.to_csv(tmp_path / "e.csv", index=False)
    e = pd.read_csv(tmp_path / "e.csv")
    e["step"] = e["step"].astype(float)
    heat, stars = mediation_heatmap(e).data
    assert list(heat.x) == ["5", "20"] and list(heat.y) == [0, 1, 2]
    assert set(stars.x) <= set(heat.x)


def test_control_bands(effects):
    fig = control_bands(effects, step=5)
    boxes = [t for t in fig.data if t.type == "box"]
    assert {t.name for t in boxes} == {"iso random directions", "cov random directions"}
    (v,) = [t for t in fig.data if t.name == "v_rev"]
    want = effects[(effects["kind"] == "clamp") & (effects["control_type"] == "v_rev")
                   & (effects["step"] == 5)].groupby("layer")["mediation_fraction"].mean()  # fmt: skip
    np.testing.assert_allclose(v.y, want.to_numpy())
    with pytest.raises(ConfigError, match="steps present"):
        control_bands(effects, step=7)


def test_steer_dose_response(effects):
    fig = steer_dose_response(effects)
    v = [t for t in fig.data if t.name == "v_rev"]
    assert len(v) == 3  # one panel per layer
    assert list(v[0].x) == [0.0, 1.0, 2.0, 4.0]
    np.testing.assert_allclose(v[0].y, [0.0, 0.5, 1.0, 2.0])
    bands = [t for t in fig.data if t.fill == "toself"]
    assert len(bands) == 3 and all(t.mode == "lines" for t in bands)


def test_direction_figures(directions):
    fig = direction_stability(directions)
    assert [t.type for t in fig.data] == ["bar", "bar"]
    md = next(t for t in fig.data if t.name == "mean_diff")
    np.testing.assert_allclose(md.y, [0.9, 0.8, 0.7])
    assert "permutation p 0.001" in md.text[0]
    agree = direction_agreement(directions)
    (heat,) = agree.data
    assert list(heat.y) == ["mean_diff · pca"] and heat.zmid == 0
    np.testing.assert_allclose(heat.z[0], [0.8, 0.6, 0.4])
    with pytest.raises(ConfigError, match="at least two methods"):
        direction_agreement(directions[directions["method"] == "pca"])


def test_results_draw_themselves_with_named_methods(drift, directions, effects):
    from revlens.causal import CausalReport
    from revlens.report import Report

    rep = Report(drift=drift, directions={}, directions_table=directions, config={}, provenance={})
    for name in ("heatmap", "trajectories", "stability", "agreement"):
        assert isinstance(getattr(rep, name)(), go.Figure)
    with pytest.raises(ConfigError, match="no metrics table"):
        rep.behaviour()
    with pytest.raises(ConfigError, match="unknown figure kind 'pie'.*heatmap"):
        rep.figure("pie")
    with pytest.deprecated_call():
        assert isinstance(rep.figure("heatmap"), go.Figure)
    causal = CausalReport(effects=effects)
    for name in ("mediation_heatmap", "control_bands", "steer_dose_response"):
        assert isinstance(getattr(causal, name)(), go.Figure)
    assert causal.mediation_heatmap(intervention="patch").data[0].type == "heatmap"


def test_blocking_figure():
    df = pd.DataFrame({
        "method": ["none", "none", "update_projection", "update_projection"], "run": [0, 1, 0, 1],
        "cos_final": [0.6, 0.5, 0.0, 0.02], "harm_rate": [0.8, 0.7, 0.03, 0.05],
        "harm_logodds": [1.0, 2.0, -1.0, -2.0], "task_acc": [1.0, 1.0, 1.0, 0.98],
    })  # fmt: skip
    fig = blocking_figure(df)
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 2 * 4
    harm = [t for t in bars if "harmfulness" in t.text[0]]
    assert [t.x[0] for t in harm] == ["none", "update_projection"]  # order of appearance
    assert harm[0].y[0] == pytest.approx(0.75) and harm[1].y[0] == pytest.approx(0.04)
    assert len(blocking_figure(df[["method", "run", "harm_rate"]]).data) == 4
    with pytest.raises(ConfigError, match="none of the outcome columns"):
        blocking_figure(df[["method", "run"]])


def test_metrics_figure():
    # a history's metrics table: base / aligned rows have no run; runs start from aligned (step 0)
    df = pd.DataFrame({
        "checkpoint": ["base", "aligned", "s0/step-1", "s0/step-2", "c0/step-1", "c0/step-2"],
        "role": ["base", "aligned"] + ["run"] * 4, "kind": ["base", "aligned", "run", "run", "control", "control"],
        "run": [None, None, "s0", "s0", "c0", "c0"], "step": [np.nan, 0, 1, 2, 1, 2],
        "harm_rate": [1.0, 0.0, 0.4, 0.8, 0.9, 0.95], "task_acc": [0.0, 0.0, 0.5, 1.0, 0.5, 1.0],
    })  # fmt: skip
    fig = metrics_figure(df)
    assert len(fig.data) == 4  # 2 runs × 2 panels
    s0 = next(t for t in fig.data if t.name == "s0" and "harm" in t.text[0])
    assert list(s0.x) == [0, 1, 2] and list(s0.y) == [0.0, 0.4, 0.8]  # from aligned
    ctrl = [t for t in fig.data if t.name == "c0 (control)"]
    assert ctrl and all(t.line.dash == "dash" for t in ctrl)
    assert next(t for t in ctrl if "harm" in t.text[0]).y[0] == 1.0  # from base
