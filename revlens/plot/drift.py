"""Drift figures: the layer × step heatmap of cos(drift, v_rev) and per-layer trajectories.

Both read ``Report.drift``: one row per (run, step, layer, method) with at least ``run, step,
layer, method, cos``; the optional columns ``kind`` (run | control | blocked; or a boolean
``control``), ``cos_lo, cos_hi, null_iso_p99,
null_cov_p99, p_iso, p_cov, significant, significant_cov`` enrich hover labels and markers.
"""

from typing import Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from revlens.errors import ConfigError
from revlens.plot._common import (
    DIVERGING,
    MEAN_LABEL,
    as_int_columns,
    base_layout,
    colour,
    esc,
    fmt,
    pick,
    require_columns,
    rgba,
    sorted_unique,
    step_label,
)

__all__ = ["drift_heatmap", "drift_trajectories", "position_heatmap"]

_REQUIRED = ("run", "step", "layer", "method", "cos")
Significance = Literal["iso", "cov"]
_DASH = {"run": "solid", "control": "dash", "blocked": "dot"}


def _prepare(drift: pd.DataFrame, significance: Significance) -> tuple[pd.DataFrame, str]:
    df = as_int_columns(require_columns(drift, _REQUIRED, "drift table"), ("step", "layer"))
    if significance not in ("iso", "cov"):
        raise ConfigError(f"significance must be 'iso' or 'cov', got {significance!r}")
    sig_col = "significant" if significance == "iso" else "significant_cov"
    if "kind" in df.columns:
        df["_kind"] = df["kind"].fillna("run").astype(str)
    elif "control" in df.columns:
        df["_kind"] = np.where(df["control"].fillna(False).astype(bool), "control", "run")
    else:
        df["_kind"] = "run"
    for col in ("cos_lo", "cos_hi", "null_iso_p99", "null_cov_p99", "p_iso", "p_cov"):
        if col not in df.columns:
            df[col] = np.nan
    df["_sig"] = df[sig_col].fillna(False).astype(bool) if sig_col in df.columns else False
    return df, sig_col


def _run_order(df: pd.DataFrame) -> tuple[list, list, dict]:
    """(all runs: ordinary first, then controls/blocked; the runs averaged; run -> label)."""
    kinds = df.groupby("run")["_kind"].first()
    ordinary = sorted(kinds.index[kinds.values == "run"].tolist(), key=str)
    others = sorted(kinds.index[kinds.values != "run"].tolist(), key=lambda r: (kinds[r], str(r)))
    labels = {r: str(r) if kinds[r] == "run" else f"{r} ({kinds[r]})" for r in kinds.index}
    return ordinary + others, (ordinary or others), labels


def _cell_table(df: pd.DataFrame, option: object, averaged: list) -> pd.DataFrame:
    """One row per (method, step, layer) with the values shown for ``option`` (a run or mean)."""
    if option is not MEAN_LABEL:
        out = df[df["run"] == option].copy()
        out["sd"], out["n_sig"], out["n_runs"] = np.nan, out["_sig"].astype(int), 1
        return out
    sub = df[df["run"].isin(averaged)]
    g = sub.groupby(["method", "step", "layer"], sort=True)
    out = g[["cos", "cos_lo", "cos_hi", "null_iso_p99", "null_cov_p99", "p_iso", "p_cov"]].mean()
    out["sd"] = g["cos"].std(ddof=1)
    out["n_sig"] = g["_sig"].sum().astype(int)
    out["n_runs"] = g["cos"].count()
    out = out.reset_index()
    out["_sig"] = (out["n_sig"] == out["n_runs"]) & (out["n_runs"] > 0)
    return out


def _hover(row: pd.Series, label: str, sig_name: str) -> str:
    mean = label == MEAN_LABEL
    lines = [f"{esc(label)} · layer {row['layer']} · step {row['step']}"]
    cos = f"cos {fmt(row['cos'])}"
    if mean and row["n_runs"] > 1:
        cos += f" (sd {fmt(row['sd'])} over {int(row['n_runs'])} runs)"
    lines.append(cos)
    if not (np.isnan(row["cos_lo"]) and np.isnan(row["cos_hi"])):
        lines.append(f"CI{' (mean)' if mean else ''} [{fmt(row['cos_lo'])}, {fmt(row['cos_hi'])}]")
    lines.append(f"null p99 iso {fmt(row['null_iso_p99'])} · cov {fmt(row['null_cov_p99'])}")
    lines.append(f"p iso {fmt(row['p_iso'])} · p cov {fmt(row['p_cov'])}")
    if mean:
        lines.append(f"significant ({sig_name}) in {int(row['n_sig'])}/{int(row['n_runs'])} runs")
    else:
        lines.append(f"significant ({sig_name}): {'yes' if row['_sig'] else 'no'}")
    return "<br>".join(lines)


def _vmax(cos: pd.Series) -> float:
    vmax = float(np.nanmax(np.abs(cos.to_numpy(dtype=float)))) if cos.notna().any() else 1.0
    return max(min(np.ceil(vmax * 10) / 10, 1.0), 0.1)


def _cell_traces(
    c: pd.DataFrame,
    layers: list,
    step_vals: list,
    label: str,
    significance: str,
    vmax: float,
    *,
    first: bool,
    showscale: bool,
    meta: dict,
) -> tuple[go.Heatmap, go.Scatter]:
    """The heatmap of one (option, method) and its star markers of significant cells."""
    z = c.pivot_table(index="layer", columns="step", values="cos", aggfunc="first", dropna=False)
    z = z.reindex(index=layers, columns=step_vals)
    text = np.full(z.shape, "", dtype=object)
    pos = {(lay, st): (i, j) for i, lay in enumerate(z.index) for j, st in enumerate(z.columns)}
    for _, row in c.iterrows():
        text[pos[(row["layer"], row["step"])]] = _hover(row, label, significance)
    heat = go.Heatmap(
        z=z.to_numpy(dtype=float),
        x=[step_label(s) for s in step_vals],
        y=layers,
        text=text,
        hoverinfo="text",
        hovertemplate="%{text}<extra></extra>",
        colorscale=DIVERGING,
        zmid=0.0,
        zmin=-vmax,
        zmax=vmax,
        xgap=1,
        ygap=1,
        visible=first,
        name=f"{esc(label)} · {esc(meta['method'])}",
        showscale=showscale,
        colorbar={"title": {"text": "cos"}, "len": 0.9},
        meta=meta,
    )
    sig = c[c["_sig"]]
    stars = go.Scatter(
        x=[step_label(s) for s in sig["step"]],
        y=sig["layer"].tolist(),
        mode="markers",
        marker={
            "symbol": "star",
            "size": 9,
            "color": "black",
            "line": {"color": "white", "width": 1},
        },
        hoverinfo="skip",
        name=f"significant ({significance} p99)",
        showlegend=first and showscale,
        legendgroup="sig",
        visible=first,
        meta={**meta, "markers": True},
    )
    return heat, stars


def _selector(fig: go.Figure, labels: list[str], owner: list[int]) -> None:
    """A dropdown showing the traces of one option at a time."""
    buttons = [
        {"label": esc(label), "method": "update", "args": [{"visible": [k == oi for k in owner]}]}
        for oi, label in enumerate(labels)
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
                "showactive": True,
            }
        ],
        legend={"orientation": "h", "x": 0.0, "xanchor": "left", "y": 1.0, "yanchor": "bottom"},
        margin={"t": 110},
    )


def drift_heatmap(
    drift: pd.DataFrame,
    *,
    method: str | list[str] | None = None,
    significance: Significance = "iso",
    title: str | None = "cos(drift, v_rev) by layer and fine-tuning step",
) -> go.Figure:
    """Layer × step heatmap of cos(drift, v_rev), one panel per method, with a run selector.

    The colour scale is diverging and centred on 0 (``zmid=0``, symmetric range). A dropdown
    chooses "mean over runs" (ordinary runs; control/blocked runs are listed, not averaged) or one
    run. Hover shows cos, its bootstrap CI, the nulls' p99, p-values and significance; cells
    significant against the chosen null (``significance``: ``"iso"`` → column ``significant``,
    ``"cov"`` → ``significant_cov``) carry a star (for the mean: significant in every run).

    Args:
        drift: ``Report.drift``.
        method: one method, several, or None for all.
        significance: which null's significance flag marks cells.
        title: figure title (None for none).
    """
    df, _ = _prepare(drift, significance)
    methods = pick(sorted_unique(df["method"]), method, "method")
    df = df[df["method"].isin(methods)]
    runs, averaged, run_labels = _run_order(df)
    options = [MEAN_LABEL, *runs]
    labels = [str(o) if o is MEAN_LABEL else run_labels[o] for o in options]
    step_vals, layers, vmax = (
        sorted_unique(df["step"]),
        sorted_unique(df["layer"]),
        _vmax(df["cos"]),
    )
    fig = make_subplots(
        rows=len(methods),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=[esc(m) for m in methods],
    )
    owner: list[int] = []  # option index of every trace, for the selector
    for oi, option in enumerate(options):
        cells = _cell_table(df, option, averaged)
        for mi, m in enumerate(methods):
            traces = _cell_traces(
                cells[cells["method"] == m],
                layers,
                step_vals,
                labels[oi],
                significance,
                vmax,
                first=oi == 0,
                showscale=mi == 0,
                meta={"option": str(option), "method": str(m)},
            )
            for trace in traces:
                fig.add_trace(trace, row=mi + 1, col=1)
                owner.append(oi)
    _selector(fig, labels, owner)
    fig.update_xaxes(type="category")
    fig.update_xaxes(title_text="fine-tuning step", row=len(methods), col=1)
    fig.update_yaxes(type="category", title_text="layer")
    return base_layout(fig, title, height=220 + 230 * len(methods))


def _null_band(fig: go.Figure, steps: list, p99: float, row: int, show: bool) -> None:
    """The isotropic null's ±p99 as a grey band."""
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=[p99] * len(steps),
            mode="lines",
            line={"width": 0},
            hoverinfo="skip",
            showlegend=False,
            legendgroup="null",
        ),
        row=row,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=[-p99] * len(steps),
            mode="lines",
            line={"width": 0},
            fill="tonexty",
            fillcolor="rgba(128,128,128,0.18)",
            name=f"isotropic null ±p99 ({fmt(p99)})",
            hoverinfo="skip",
            showlegend=show,
            legendgroup="null",
        ),
        row=row,
        col=1,
    )


def _layer_traces(dl: pd.DataFrame, lay: int, li: int, show: bool) -> list[go.Scatter]:
    """Mean ± sd over runs of one layer, per run kind, and its covariance-matched null p99."""
    out = []
    for kind in sorted_unique(dl["_kind"]):
        part = dl[dl["_kind"] == kind]
        g = part.groupby("step")
        mean, sd, n = g["cos"].mean(), g["cos"].std(ddof=1), g["cos"].count()
        name = f"layer {lay}{'' if kind == 'run' else f' ({esc(kind)})'}"
        hover = [
            f"{name} · step {s}<br>cos {fmt(mean[s])}"
            + (f" ± {fmt(sd[s])} (sd, {n[s]} runs)" if n[s] > 1 else "")
            for s in mean.index
        ]
        out.append(
            go.Scatter(
                x=mean.index.tolist(),
                y=mean.to_numpy(),
                mode="lines+markers",
                name=name,
                line={"color": colour(li), "dash": _DASH.get(kind, "dashdot")},
                text=hover,
                hoverinfo="text",
                error_y={
                    "type": "data",
                    "array": sd.fillna(0).to_numpy(),
                    "visible": bool((n > 1).any()),
                    "color": rgba(colour(li), 0.5),
                },
                legendgroup=f"layer{lay}",
                showlegend=show,
            )
        )
    cov = dl[dl["_kind"] == "run"].groupby("step")["null_cov_p99"].mean()
    if cov.notna().any():
        out.append(
            go.Scatter(
                x=cov.index.tolist(),
                y=cov.to_numpy(),
                mode="lines",
                name=f"layer {lay} cov-null p99",
                line={"color": colour(li), "dash": "dot", "width": 1},
                legendgroup=f"layer{lay}",
                showlegend=False,
                hovertemplate=f"layer {lay} cov-matched null p99 %{{y:.3f}}<extra></extra>",
            )
        )
    return out


def drift_trajectories(
    drift: pd.DataFrame,
    *,
    method: str | list[str] | None = None,
    layers: list[int] | None = None,
    title: str | None = "cos(drift, v_rev) over fine-tuning, per layer",
) -> go.Figure:
    """cos(drift, v_rev) against step, one line per layer (mean over runs, ± sd), per method.

    The grey band is the isotropic null's ±p99; the dotted line in a layer's colour is the
    covariance-matched null's p99 at that layer; dashed lines are control runs, dotted lines
    blocked runs (if any).
    """
    df, _ = _prepare(drift, "iso")
    methods = pick(sorted_unique(df["method"]), method, "method")
    chosen = pick(sorted_unique(df["layer"]), layers, "layer")
    df = df[df["method"].isin(methods) & df["layer"].isin(chosen)]
    fig = make_subplots(
        rows=len(methods),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=[esc(m) for m in methods],
    )
    steps = sorted_unique(df["step"])
    for mi, m in enumerate(methods):
        dm = df[df["method"] == m]
        if dm["null_iso_p99"].notna().any():
            _null_band(fig, steps, float(dm["null_iso_p99"].max()), mi + 1, mi == 0)
        for li, lay in enumerate(chosen):
            for trace in _layer_traces(dm[dm["layer"] == lay], lay, li, mi == 0):
                fig.add_trace(trace, row=mi + 1, col=1)
        fig.add_hline(y=0, line={"color": "#444", "width": 1}, row=mi + 1, col=1)
        fig.update_yaxes(title_text="cos", row=mi + 1, col=1)
    fig.update_xaxes(title_text="fine-tuning step", row=len(methods), col=1)
    return base_layout(fig, title, height=200 + 260 * len(methods))


def position_heatmap(
    table: pd.DataFrame,
    *,
    method: str = "mean_diff",
    title: str | None = "cos(drift, v) per position × layer",
) -> go.Figure:
    """Layer × post-instruction position heatmap of the mean cos(drift, v) over runs (one direction
    per (position, layer)), from :meth:`revlens.Report.position_table`; stars mark cells whose
    runs are all above the isotropic p99."""
    require_columns(table, ("position", "layer", "base_method", "cos"), "position table")
    df = table[table["base_method"] == method]
    if df.empty:
        raise ConfigError(
            f"no method {method!r} in the position table; methods: {sorted_unique(table['base_method'])}"
        )
    positions, layers = sorted_unique(df["position"]), sorted_unique(df["layer"])
    grid = df.pivot(index="position", columns="layer", values="cos").reindex(
        index=positions, columns=layers
    )
    above = df.pivot(index="position", columns="layer", values="above_iso_p99").reindex(
        index=positions, columns=layers
    )
    vmax = _vmax(df["cos"])
    fig = go.Figure(
        go.Heatmap(
            z=grid.values.tolist(),
            x=[str(v) for v in layers],
            y=[str(p) for p in positions],
            zmin=-vmax,
            zmax=vmax,
            colorscale=DIVERGING,
            colorbar={"title": "cos"},
            hoverongaps=False,
            text=[
                [f"position {p} · layer {lay}<br>cos {fmt(grid.loc[p, lay])}" for lay in layers]
                for p in positions
            ],
            hoverinfo="text",
        )
    )
    xs, ys = [], []
    for p in positions:
        for lay in layers:
            if above.loc[p, lay] == 1.0:
                xs.append(str(lay))
                ys.append(str(p))
    fig.add_trace(
        go.Scatter(
            x=xs, y=ys, mode="text", text=["★"] * len(xs), hoverinfo="skip", showlegend=False
        )
    )
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(title_text="position (from the end)")
    return base_layout(fig, title, height=240 + 40 * len(positions))
