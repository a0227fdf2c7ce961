"""Drift heatmap and trajectories: structure, numbers in hover labels, markers, escaping."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from jaxtyping import TypeCheckError

from revlens.errors import ConfigError
from revlens.plot import drift_heatmap, drift_trajectories


def _traces(fig, option, method, markers=False):
    out = [t for t in fig.data if t.meta and t.meta["option"] == option and t.meta["method"] == method
           and bool(t.meta.get("markers")) == markers]  # fmt: skip
    assert len(out) == 1
    return out[0]


def _cell_text(trace, layer, step):
    i, j = list(trace.y).index(layer), list(trace.x).index(str(step))
    return trace.text[i][j], trace.z[i][j]


def test_heatmap_structure_and_diverging_scale(drift):
    fig = drift_heatmap(drift)
    assert isinstance(fig, go.Figure)
    heat = [t for t in fig.data if t.type == "heatmap"]
    runs, methods = drift["run"].nunique(), drift["method"].nunique()
    assert len(heat) == (runs + 1) * methods
    assert {t.type for t in fig.data} == {"heatmap", "scatter"}
    for t in heat:
        assert t.zmid == 0
        assert t.zmin == -t.zmax and t.zmax >= np.abs(drift["cos"]).max()
        assert t.colorscale[0][1] != t.colorscale[-1][1]  # a real (diverging) scale
    assert fig.layout.xaxis.type == "category"


def test_run_selector_buttons(drift):
    fig = drift_heatmap(drift)
    (menu,) = fig.layout.updatemenus
    runs = drift["run"].unique()
    assert len(menu.buttons) == len(runs) + 1
    labels = [b.label for b in menu.buttons]
    assert labels[0] == "mean over runs"
    assert "&lt;b&gt;seed1&lt;/b&gt;" in labels and not any("<b>" in lab for lab in labels)
    assert "ctrl (control)" in labels
    options = [t.meta["option"] for t in fig.data]
    for oi, button in enumerate(menu.buttons):
        visible = button.args[0]["visible"]
        assert len(visible) == len(fig.data)
        wanted = "mean over runs" if oi == 0 else None
        shown = {o for o, v in zip(options, visible) if v}
        assert len(shown) == 1 and (wanted is None or shown == {wanted})
    assert [t.visible for t in fig.data] == list(menu.buttons[0].args[0]["visible"])


def test_hover_shows_the_cells_numbers(drift):
    fig = drift_heatmap(drift)
    row = drift[(drift["run"] == "seed0") & (drift["method"] == "pca") & (drift["layer"] == 2)
                & (drift["step"] == 5)].iloc[0]  # fmt: skip
    text, z = _cell_text(_traces(fig, "seed0", "pca"), 2, 5)
    assert z == pytest.approx(row["cos"])
    assert f"cos {row['cos']:.3f}" in text
    assert f"[{row['cos_lo']:.3f}, {row['cos_hi']:.3f}]" in text
    assert "null p99 iso 0.205 · cov 0.330" in text
    assert f"significant (iso): {'yes' if row['significant'] else 'no'}" in text


def test_mean_averages_ordinary_runs_only(drift):
    fig = drift_heatmap(drift)
    sub = drift[(drift["kind"] == "run") & (drift["method"] == "mean_diff") & (drift["layer"] == 1)
                & (drift["step"] == 20)]  # fmt: skip
    text, z = _cell_text(_traces(fig, "mean over runs", "mean_diff"), 1, 20)
    assert z == pytest.approx(sub["cos"].mean())
    assert f"cos {sub['cos'].mean():.3f} (sd {sub['cos'].std():.3f} over 2 runs)" in text
    assert f"in {int(sub['significant'].sum())}/2 runs" in text


@pytest.mark.parametrize(
    "significance,column", [("iso", "significant"), ("cov", "significant_cov")]
)
def test_markers_exactly_where_significant(drift, significance, column):
    fig = drift_heatmap(drift, significance=significance)
    for run in drift["run"].unique():
        for method in ("mean_diff", "pca"):
            t = _traces(fig, str(run), method, markers=True)
            got = set(zip(t.x, t.y))
            d = drift[(drift["run"] == run) & (drift["method"] == method) & drift[column]]
            assert got == {(str(s), lay) for s, lay in zip(d["step"], d["layer"])}
    ordinary = drift[(drift["kind"] == "run") & (drift["method"] == "pca")]
    every = ordinary.groupby(["step", "layer"])[column].all()
    t = _traces(fig, "mean over runs", "pca", markers=True)
    assert set(zip(t.x, t.y)) == {(str(s), lay) for (s, lay), v in every.items() if v}


def test_method_filter_and_errors(drift):
    fig = drift_heatmap(drift, method="pca")
    assert {t.meta["method"] for t in fig.data} == {"pca"}
    with pytest.raises(ConfigError, match="unknown method.*valid"):
        drift_heatmap(drift, method="nope")
    with pytest.raises(ConfigError, match="missing column.*'cos'"):
        drift_heatmap(drift.drop(columns="cos"))
    with pytest.raises(ConfigError, match="empty"):
        drift_heatmap(drift.iloc[:0])
    with pytest.raises((ConfigError, TypeCheckError)):  # TypeCheckError under the jaxtyping plugin
        drift_heatmap(drift.to_dict())


def test_minimal_columns_and_boolean_control(drift):
    small = drift[["run", "step", "layer", "method", "cos", "control"]]
    fig = drift_heatmap(small)
    assert len(fig.layout.updatemenus[0].buttons) == drift["run"].nunique() + 1
    assert not any(len(t.x) for t in fig.data if t.type == "scatter")  # no flag → no stars


def test_input_not_mutated(drift):
    before = drift.copy()
    drift_heatmap(drift)
    drift_trajectories(drift)
    pd.testing.assert_frame_equal(drift, before)


def test_trajectories(drift):
    fig = drift_trajectories(drift, method="mean_diff")
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert {t.name for t in lines} == {"layer 0", "layer 1", "layer 2",
                                       "layer 0 (control)", "layer 1 (control)", "layer 2 (control)"}  # fmt: skip
    l1 = next(t for t in lines if t.name == "layer 1")
    mean = drift[
        (drift["kind"] == "run") & (drift["method"] == "mean_diff") & (drift["layer"] == 1)
    ]
    np.testing.assert_allclose(l1.y, mean.groupby("step")["cos"].mean().to_numpy())
    assert next(t for t in lines if t.name == "layer 1 (control)").line.dash == "dash"
    band = [t for t in fig.data if t.fill == "tonexty"]
    assert len(band) == 1 and band[0].y[0] == pytest.approx(-0.205)
    assert "0.205" in band[0].name
    fig2 = drift_trajectories(drift, layers=[0])
    assert {t.name for t in fig2.data if t.mode == "lines+markers"} == {
        "layer 0",
        "layer 0 (control)",
    }
