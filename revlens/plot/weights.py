"""Weight-space reversion figures (tables of :class:`revlens.weights.WeightReport`).

- :func:`weights_heatmap`: layer × step per module type (and the whole block), a run selector;
- :func:`weights_trajectories`: a model-level measure against step per run, beside its null;
- :func:`weights_subspaces`: share of ‖ΔW‖² in V's top-k subspaces vs random subspaces and chance;
- :func:`weights_spectrum`: cumulative share of ‖V‖² in its top singular directions.
"""

import math
from typing import no_type_check

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from revlens.errors import ConfigError
from revlens.modes import WeightSide
from revlens.plot._common import (
    DIVERGING,
    MEAN_LABEL,
    base_layout,
    colour,
    esc,
    fmt,
    require_columns,
    rgba,
    step_label,
)

__all__ = ["weights_heatmap", "weights_spectrum", "weights_subspaces", "weights_trajectories"]

_BASIC = ("cos", "revert")
_LABEL = {
    "cos": "cos(ΔW, −V)",
    "revert": "reverted fraction −⟨ΔW,V⟩/‖V‖²",
    "frac_left": "share of ‖ΔW‖² in V's top-k left subspace",
    "frac_right": "… top-k right subspace",
    "frac_both": "… top-k left × right subspace",
}
_NULL = {"cos": "null_iso_p99", "revert": "revert_null_p99"}
_DASH = {"run": "solid", "control": "dash", "blocked": "dot"}
WHOLE = "(whole block)"


def _check_measure(measure: str) -> None:
    if measure not in _LABEL:
        raise ConfigError(f"measure must be one of {list(_LABEL)}, got {measure!r}")


def _at_k(df: pd.DataFrame, measure: str, k: int | None) -> tuple[pd.DataFrame, int | None]:
    """Rows of one k (fractions), or one row per (run, step, unit) for the k-free measures."""
    if measure in _BASIC:
        keys = [c for c in ("run", "step", "layer", "module") if c in df.columns]
        return df.sort_values("k").drop_duplicates(keys), None
    ks = sorted(int(x) for x in df["k"].unique() if x > 0)
    if not ks:
        raise ConfigError("no row has a singular subspace (k > 0)")
    k = ks[-1] if k is None else int(k)
    if k not in ks:
        raise ConfigError(f"k={k} was not measured; measured: {ks}")
    return df[df["k"] == k], k


def _options(df: pd.DataFrame) -> tuple[list, list, dict]:
    kinds = df.groupby("run")["kind"].first().astype(str)
    ordinary = [r for r in dict.fromkeys(df["run"]) if kinds[r] == "run"]
    others = [r for r in dict.fromkeys(df["run"]) if kinds[r] != "run"]
    labels = {r: str(r) if kinds[r] == "run" else f"{r} ({kinds[r]})" for r in kinds.index}
    return ([MEAN_LABEL] if ordinary else []) + ordinary + others, ordinary, labels


def _cells(df: pd.DataFrame, option: object, ordinary: list, measure: str) -> pd.DataFrame:
    if option is not MEAN_LABEL:
        return df[df["run"] == option]
    cols = [c for c in (measure, _NULL.get(measure, f"rand_{measure[5:]}_p99")) if c in df.columns]
    return (
        df[df["run"].isin(ordinary)].groupby(["unit", "step", "layer"], as_index=False)[cols].mean()
    )


def weights_heatmap(
    table: pd.DataFrame,
    *,
    layers: pd.DataFrame | None = None,
    measure: str = "revert",
    k: int | None = None,
    module_types: list[str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Layer × step heatmap of ``measure`` per module type (first panel: the whole block, from
    ``layers``), for the mean over ordinary runs and for each run (dropdown). Hover: the value and
    its null p99 (isotropic for ``cos`` / ``revert``; random subspaces for fractions)."""
    _check_measure(measure)
    require_columns(
        table, ("run", "kind", "step", "layer", "module_type", "k", measure), "weights table"
    )
    df, k = _at_k(table[table["layer"] >= 0], measure, k)
    df = df.assign(unit=df["module_type"])
    if layers is not None:
        lay, _ = _at_k(layers[layers["layer"] >= 0], measure, k)
        df = pd.concat([lay.assign(unit=WHOLE, module_type=WHOLE), df], ignore_index=True)
    units = list(dict.fromkeys(df["unit"]))
    if module_types is not None:
        units = [u for u in units if u == WHOLE or u in module_types]
    if df.empty or not units:
        raise ConfigError("weights table: no block parameter to draw")
    options, ordinary, labels = _options(df)
    cols = min(3, len(units))
    nrows = math.ceil(len(units) / cols)
    fig = make_subplots(
        rows=nrows,
        cols=cols,
        subplot_titles=[esc(u) for u in units],
        shared_xaxes=True,
        vertical_spacing=min(0.12, 0.5 / nrows),
        horizontal_spacing=0.06,
    )
    vals = df[measure].to_numpy(dtype=float)
    vmax = float(np.nanquantile(np.abs(vals), 0.99)) if np.isfinite(vals).any() else 1.0
    steps = sorted(df["step"].unique().tolist())
    null_col = _NULL.get(measure, f"rand_{measure[5:]}_p99")
    owner = []
    for oi, option in enumerate(options):
        cells = _cells(df, option, ordinary, measure)
        label = labels.get(option, MEAN_LABEL)
        for ui, unit in enumerate(units):
            c = cells[cells["unit"] == unit]
            z = c.pivot_table(index="layer", columns="step", values=measure, aggfunc="first")
            z = z.reindex(columns=steps)
            nz = (
                c.pivot_table(
                    index="layer", columns="step", values=null_col, aggfunc="first"
                ).reindex(index=z.index, columns=steps)
                if null_col in c.columns
                else z * np.nan
            )
            text = [
                [
                    f"{esc(label)} · {esc(unit)} · layer {lay} · step {step_label(s)}<br>{measure} "
                    f"{fmt(z.loc[lay, s], 4)} · null p99 {fmt(nz.loc[lay, s], 4)}"
                    for s in steps
                ]
                for lay in z.index
            ]
            fig.add_trace(
                go.Heatmap(
                    z=z.to_numpy(dtype=float),
                    x=[step_label(s) for s in steps],
                    y=list(z.index),
                    text=text,
                    hovertemplate="%{text}<extra></extra>",
                    colorscale=DIVERGING if measure in _BASIC else "Viridis",
                    zmid=0.0 if measure in _BASIC else None,
                    zmin=-vmax if measure in _BASIC else 0.0,
                    zmax=vmax,
                    showscale=ui == 0,
                    visible=oi == 0,
                    xgap=1,
                    ygap=1,
                    colorbar={"title": {"text": esc(measure)}, "len": 0.9},
                ),
                row=ui // cols + 1,
                col=ui % cols + 1,
            )
            owner.append(oi)
    buttons = [
        {
            "label": esc(labels.get(o, MEAN_LABEL)),
            "method": "update",
            "args": [{"visible": [w == oi for w in owner]}],
        }
        for oi, o in enumerate(options)
    ]
    fig.update_layout(
        updatemenus=[
            {
                "type": "dropdown",
                "buttons": buttons,
                "active": 0,
                "x": 1.0,
                "xanchor": "right",
                "y": 1.0,
                "yanchor": "bottom",
                "pad": {"b": 30},
            }
        ],
        margin={"t": 110},
    )
    fig.update_xaxes(title_text="step", row=nrows)
    fig.update_yaxes(title_text="block", col=1)
    label = _LABEL[measure].replace("top-k", f"top-{k}") if k else _LABEL[measure]
    return base_layout(fig, title or f"weight space: {label}", height=260 * nrows + 120)


def weights_trajectories(
    model: pd.DataFrame, *, measure: str = "revert", k: int | None = None, title: str | None = None
) -> go.Figure:
    """A model-level ``measure`` against step, one line per run (dashed: control, dotted: blocked),
    with its null: the isotropic p99 (``cos``, ``revert``: per run, dotted grey) or the
    random-subspace mean–p99 band of the ordinary runs (fractions)."""
    _check_measure(measure)
    require_columns(model, ("run", "kind", "step", measure), "weights model table")
    df, k = _at_k(model, measure, k)
    fig = go.Figure()
    runs = list(dict.fromkeys(df["run"]))
    for i, run in enumerate(runs):
        d = df[df["run"] == run].sort_values("step")
        kind = str(d["kind"].iloc[0])
        name = esc(run) + ("" if kind == "run" else f" ({esc(kind)})")
        fig.add_trace(
            go.Scatter(
                x=d["step"],
                y=d[measure],
                mode="lines+markers",
                name=name,
                line={"color": colour(i), "dash": _DASH.get(kind, "dashdot")},
                marker={"size": 4},
            )
        )
        if measure in _NULL:
            fig.add_trace(
                go.Scatter(
                    x=d["step"],
                    y=d[_NULL[measure]],
                    mode="lines",
                    name=f"{name}: null p99",
                    line={"color": rgba(colour(i), 0.45), "dash": "dot", "width": 1},
                    showlegend=i == 0,
                    legendgroup="null",
                )
            )
    if measure not in _NULL:
        side = measure[5:]
        band = (
            df[df["kind"] == "run"]
            .groupby("step")[[f"rand_{side}_mean", f"rand_{side}_p99"]]
            .mean()
        )
        fig.add_trace(
            go.Scatter(
                x=list(band.index) + list(band.index[::-1]),
                y=list(band[f"rand_{side}_p99"]) + list(band[f"rand_{side}_mean"][::-1]),
                fill="toself",
                fillcolor="rgba(120,120,120,0.2)",
                line={"width": 0},
                name="random subspaces: mean – p99",
                hoverinfo="skip",
            )
        )
    fig.add_hline(y=0, line={"color": "#999", "width": 1})
    fig.update_xaxes(title_text="fine-tuning step")
    label = _LABEL[measure].replace("top-k", f"top-{k}") if k else _LABEL[measure]
    fig.update_yaxes(title_text=esc(label))
    return base_layout(fig, title or f"whole model: {label}", height=420)


@no_type_check  # validates its own arguments (typed errors)
def weights_subspaces(
    model: pd.DataFrame, *, side: WeightSide = "left", title: str | None = None
) -> go.Figure:
    """One panel per k: the share of ‖ΔW‖² in V's top-k ``side`` subspace against step per run,
    the random-subspace mean and p99 (grey) and chance (``k/m``, dotted)."""
    if side not in ("left", "right", "both"):
        raise ConfigError(f"side must be 'left', 'right' or 'both', got {side!r}")
    require_columns(model, ("run", "kind", "step", "k", f"frac_{side}"), "weights model table")
    ks = sorted(int(x) for x in model["k"].unique() if x > 0)
    if not ks:
        raise ConfigError("no row has a singular subspace (k > 0)")
    fig = make_subplots(
        rows=1, cols=len(ks), subplot_titles=[f"k = {k}" for k in ks], shared_yaxes=False
    )
    runs = list(dict.fromkeys(model["run"]))
    for ci, k in enumerate(ks):
        d = model[model["k"] == k]
        for i, run in enumerate(runs):
            r = d[d["run"] == run].sort_values("step")
            kind = str(r["kind"].iloc[0]) if len(r) else "run"
            fig.add_trace(
                go.Scatter(
                    x=r["step"],
                    y=r[f"frac_{side}"],
                    mode="lines",
                    name=esc(run),
                    legendgroup=str(run),
                    showlegend=ci == 0,
                    line={"color": colour(i), "dash": _DASH.get(kind, "dashdot")},
                ),
                row=1,
                col=ci + 1,
            )
        ref = d.groupby("step")[[f"rand_{side}_mean", f"rand_{side}_p99", f"chance_{side}"]].mean()
        for col, name, dash in (
            (f"rand_{side}_mean", "random: mean", "dash"),
            (f"rand_{side}_p99", "random: p99", "solid"),
            (f"chance_{side}", "chance", "dot"),
        ):
            fig.add_trace(
                go.Scatter(
                    x=ref.index,
                    y=ref[col],
                    mode="lines",
                    name=name,
                    legendgroup=name,
                    showlegend=ci == 0,
                    line={"color": "#777", "dash": dash, "width": 1},
                ),
                row=1,
                col=ci + 1,
            )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text=f"share of ‖ΔW‖² ({side})", col=1)
    return base_layout(
        fig,
        title or f"whole model: ΔW inside V's top-k {side} singular subspace vs random subspaces",
        height=400,
    )


def weights_spectrum(
    spectrum: pd.DataFrame, *, title: str | None = "how low-rank is V = W_aligned − W_base?"
) -> go.Figure:
    """Cumulative share of ‖V‖² in its top-i singular directions, per module type (mean over
    blocks; min–max as error bars)."""
    require_columns(spectrum, ("module_type", "i", "cum_energy"), "spectrum table")
    fig = go.Figure()
    for j, (mt, d) in enumerate(spectrum.groupby("module_type", sort=False)):
        g = d.groupby("i")["cum_energy"]
        mean, lo, hi = g.mean(), g.min(), g.max()
        fig.add_trace(
            go.Scatter(
                x=mean.index,
                y=mean,
                mode="lines+markers",
                name=esc(mt),
                line={"color": colour(j)},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": hi - mean,
                    "arrayminus": mean - lo,
                    "thickness": 1,
                },
            )
        )
    fig.update_xaxes(title_text="i (top singular directions of V)", type="log")
    fig.update_yaxes(title_text="share of ‖V‖²", range=[0, 1.02])
    return base_layout(fig, title, height=420)
