"""Causal figures from ``CausalReport.effects``: mediation heatmap, control bands, steering.

``effects`` has one row per (run, step, layer, kind, direction, alpha) with columns ``run, step,
layer, kind`` (clamp | patch | steer), ``direction`` ("v_rev" or "random_iso_k" ...),
``control_type`` ("v_rev" | "iso" | "cov"), ``alpha, metric, metric_clean, metric_aligned,
effect, mediation_fraction``. Every v_rev number is drawn against the same intervention along
random control directions.
"""

import math
from typing import Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from revlens.errors import ConfigError
from revlens.plot._common import (
    DIVERGING,
    as_int_columns,
    base_layout,
    colour,
    esc,
    fmt,
    layer_panels,
    require_columns,
    rgba,
    sorted_unique,
    step_label,
)

__all__ = ["control_bands", "mediation_heatmap", "mediation_vs_k", "steer_dose_response"]

_REQUIRED = ("run", "step", "layer", "kind", "control_type")
Value = Literal["mediation_fraction", "effect"]
_CONTROL_COLOURS = {"iso": "#7f7f7f", "cov": "#ff7f0e"}


def _select(effects: pd.DataFrame, kind: str, value: str, *, dose: bool) -> pd.DataFrame:
    """The rows of intervention ``kind``: a dose–response kind (a sufficiency test such as steer:
    its rows carry ``alpha``) when ``dose``, else a mediation kind (clamp, patch: ``alpha`` NaN)."""
    df = require_columns(effects, (*_REQUIRED, value), "effects table")
    present = sorted_unique(df["kind"])
    if kind not in present:
        raise ConfigError(f"the effects table has no {kind!r} rows; kinds present: {present}")
    rows = df[df["kind"] == kind]
    scaled = "alpha" in rows.columns and bool(rows["alpha"].notna().any())
    if scaled != dose:
        raise ConfigError(
            f"intervention {kind!r} is a {'dose–response (alpha)' if scaled else 'mediation'} kind; "
            f"draw it with {'steer_dose_response' if scaled else 'mediation_heatmap / control_bands'}"
        )
    return as_int_columns(rows, ("step", "layer"))


def _controls(df: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    ctrl = df[df["control_type"] != "v_rev"]
    if ctrl.empty:
        return pd.DataFrame(columns=[*keys, "control_type", "mean", "sd", "p95", "n"])
    g = ctrl.groupby([*keys, "control_type"])[value]
    out = pd.DataFrame(
        {"mean": g.mean(), "sd": g.std(ddof=1), "p95": g.quantile(0.95), "n": g.count()}
    )
    return out.reset_index()


def _cell_hover(row: pd.Series, here: pd.DataFrame, kind: str, value: str) -> tuple[str, bool]:
    """Hover text of one (layer, step) cell and whether v_rev beats every control's p95 there."""
    lines = [
        f"{kind} · layer {row['layer']} · step {row['step']}",
        f"v_rev {value.replace('_', ' ')} {fmt(row[value])} (mean of {int(row['n_runs'])} runs)",
    ]
    if "effect" in row.index and value != "effect":
        lines.append(f"v_rev effect {fmt(row['effect'])}")
    for _, c in here.iterrows():
        lines.append(
            f"{esc(c['control_type'])} controls ({int(c['n'])}): mean {fmt(c['mean'])} "
            f"± {fmt(c['sd'])}, p95 {fmt(c['p95'])}"
        )
    beats = not here.empty and bool((row[value] > here["p95"]).all())
    lines.append(f"exceeds control p95: {'yes' if beats else 'no' if not here.empty else 'n/a'}")
    return "<br>".join(lines), beats


def _v_rev_cells(df: pd.DataFrame, kind: str, value: str) -> pd.DataFrame:
    v = df[df["control_type"] == "v_rev"]
    if v.empty:
        raise ConfigError(f"the effects table has no v_rev rows for kind {kind!r}")
    agg = {value: "mean"}
    if "effect" in df.columns and value != "effect":
        agg["effect"] = "mean"
    cells = v.groupby(["step", "layer"]).agg(agg)
    cells["n_runs"] = v.groupby(["step", "layer"])["run"].nunique()
    return cells.reset_index()


def mediation_heatmap(
    effects: pd.DataFrame,
    *,
    intervention: str = "clamp",
    value: Value = "mediation_fraction",
    title: str | None = None,
) -> go.Figure:
    """Layer × step heatmap of v_rev's mediation fraction (or effect), mean over runs.

    Hover shows the v_rev value and effect beside the control directions' mean ± sd and p95
    (isotropic and covariance-matched); a star marks cells where v_rev exceeds the p95 of every
    control type present.
    """
    kind = intervention
    df = _select(effects, kind, value, dose=False)
    cells = _v_rev_cells(df, kind, value)
    ctrl = _controls(df, ["step", "layer"], value)
    steps, layers = sorted_unique(cells["step"]), sorted_unique(cells["layer"])
    z = cells.pivot(index="layer", columns="step", values=value).reindex(
        index=layers, columns=steps
    )
    text = np.full(z.shape, "", dtype=object)
    star_x, star_y = [], []
    for _, row in cells.iterrows():
        here = ctrl[(ctrl["step"] == row["step"]) & (ctrl["layer"] == row["layer"])]
        text[layers.index(row["layer"]), steps.index(row["step"])], beats = _cell_hover(
            row, here, kind, value
        )
        if beats:
            star_x.append(step_label(row["step"]))
            star_y.append(row["layer"])
    zvals = z.to_numpy(dtype=float)
    vmax = float(np.nanmax(np.abs(zvals))) if np.isfinite(zvals).any() else 1.0
    vmax = max(math.ceil(vmax * 10) / 10, 0.1)
    fig = go.Figure(
        go.Heatmap(
            z=zvals,
            x=[step_label(s) for s in steps],
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
            colorbar={"title": {"text": value.replace("_", " ")}},
            name=f"v_rev {kind}",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=star_x,
            y=star_y,
            mode="markers",
            hoverinfo="skip",
            name="v_rev > control p95",
            marker={
                "symbol": "star",
                "size": 9,
                "color": "black",
                "line": {"color": "white", "width": 1},
            },
        )
    )
    fig.update_xaxes(type="category", title_text="fine-tuning step")
    fig.update_yaxes(type="category", title_text="layer")
    fig.update_layout(
        legend={"orientation": "h", "x": 1.0, "xanchor": "right", "y": 1.0, "yanchor": "bottom"}
    )
    default = (
        f"{kind}: v_rev {value.replace('_', ' ')} by layer and step (★ beats every control's p95)"
    )
    return base_layout(fig, default if title is None else title, height=200 + 45 * len(layers))


def control_bands(
    effects: pd.DataFrame,
    *,
    intervention: str = "clamp",
    step: int | None = None,
    value: Value = "mediation_fraction",
    title: str | None = None,
) -> go.Figure:
    """At one step (default: the last), v_rev's value per layer against box plots of controls."""
    kind = intervention
    df = _select(effects, kind, value, dose=False)
    steps = sorted_unique(df["step"])
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ConfigError(f"no {kind!r} rows at step {step}; steps present: {steps}")
    df = df[df["step"] == step]
    layers = [str(x) for x in sorted_unique(df["layer"])]
    fig = go.Figure()
    for ct in sorted_unique(df.loc[df["control_type"] != "v_rev", "control_type"]):
        c = df[df["control_type"] == ct]
        fig.add_trace(
            go.Box(
                x=c["layer"].astype(str),
                y=c[value],
                name=f"{esc(ct)} random directions",
                boxpoints="all",
                jitter=0.4,
                pointpos=0,
                marker={"color": _CONTROL_COLOURS.get(ct, "#17becf"), "size": 4},
                line={"color": _CONTROL_COLOURS.get(ct, "#17becf")},
                offsetgroup=str(ct),
            )
        )
    v = df[df["control_type"] == "v_rev"].groupby("layer")[value].agg(["mean", "std", "count"])
    fig.add_trace(
        go.Scatter(
            x=[str(x) for x in v.index],
            y=v["mean"],
            mode="markers",
            name="v_rev",
            marker={
                "symbol": "diamond",
                "size": 13,
                "color": "#d62728",
                "line": {"color": "black", "width": 1},
            },
            error_y={
                "type": "data",
                "array": v["std"].fillna(0).to_numpy(),
                "visible": bool((v["count"] > 1).any()),
            },
            text=[
                f"v_rev · layer {lay}<br>{value.replace('_', ' ')} {fmt(r['mean'])} (mean of {int(r['count'])} runs)"
                for lay, r in v.iterrows()
            ],
            hoverinfo="text",
        )
    )
    fig.update_layout(
        boxmode="group",
        xaxis={
            "title": "layer",
            "type": "category",
            "categoryorder": "array",
            "categoryarray": layers,
        },
        yaxis={"title": value.replace("_", " ")},
    )
    fig.add_hline(y=0, line={"color": "#444", "width": 1})
    default = f"{kind} at step {step}: v_rev against random-direction controls"
    return base_layout(fig, default if title is None else title, height=440)


def _control_band(d: pd.DataFrame, ct: str, ci: int, value: str, show: bool) -> list[go.Scatter]:
    """One control type's 5–95 % band and mean against α."""
    g = d[d["control_type"] == ct].groupby("alpha")[value]
    lo, hi, mean = g.quantile(0.05), g.quantile(0.95), g.mean()
    col = _CONTROL_COLOURS.get(ct, colour(ci + 2))
    x = lo.index.tolist()
    return [
        go.Scatter(
            x=x + x[::-1],
            y=[*hi.tolist(), *lo.tolist()[::-1]],
            fill="toself",
            mode="lines",
            fillcolor=rgba(col, 0.2),
            line={"width": 0},
            hoverinfo="skip",
            name=f"{esc(ct)} controls 5–95 %",
            legendgroup=str(ct),
            showlegend=show,
        ),
        go.Scatter(
            x=x,
            y=mean.to_numpy(),
            mode="lines",
            line={"color": col, "dash": "dash"},
            name=f"{esc(ct)} controls mean",
            legendgroup=str(ct),
            showlegend=show,
            hovertemplate=f"{esc(ct)} controls mean · α %{{x}}<br>{value} %{{y:.3f}}<extra></extra>",
        ),
    ]


def steer_dose_response(
    effects: pd.DataFrame,
    *,
    value: Literal["metric", "effect"] = "metric",
    title: str | None = "steering the aligned model along v_rev: dose–response",
    intervention: str = "steer",
) -> go.Figure:
    """Metric against steering strength α, one panel per layer: v_rev (mean over runs) against
    the controls' mean and 5–95 % band; the aligned model's metric as a dotted reference."""
    df = _select(effects, intervention, value, dose=True)
    require_columns(df, ("alpha",), "effects table (steer rows)")
    layers = sorted_unique(df["layer"])
    fig, cells = layer_panels(layers)
    for li, lay in enumerate(layers):
        r, c = cells[li]
        d = df[df["layer"] == lay]
        for ci, ct in enumerate(sorted_unique(d.loc[d["control_type"] != "v_rev", "control_type"])):
            for trace in _control_band(d, ct, ci, value, li == 0):
                fig.add_trace(trace, row=r, col=c)
        v = d[d["control_type"] == "v_rev"].groupby("alpha")[value].mean()
        fig.add_trace(
            go.Scatter(
                x=v.index.tolist(),
                y=v.to_numpy(),
                mode="lines+markers",
                name="v_rev",
                line={"color": "#d62728"},
                legendgroup="v_rev",
                showlegend=li == 0,
                hovertemplate=f"v_rev · layer {lay} · α %{{x}}<br>{value} %{{y:.3f}}<extra></extra>",
            ),
            row=r,
            col=c,
        )
        if (
            value == "metric"
            and "metric_aligned" in d.columns
            and d["metric_aligned"].notna().any()
        ):
            fig.add_hline(
                y=float(d["metric_aligned"].mean()),
                line={"dash": "dot", "color": "#444"},
                row=r,
                col=c,
            )
        fig.update_xaxes(title_text="α", row=r, col=c)
    fig.update_yaxes(title_text=value, col=1)
    return base_layout(fig, title, height=150 + 300 * cells[-1][0])


def mediation_vs_k(
    table: pd.DataFrame,
    *,
    choice: dict | None = None,
    split: str | None = None,
    title: str | None = None,
) -> go.Figure:
    """Mediation fraction against the subspace rank k, one panel per layer: the subspace (mean ± std
    over runs) inside each control type's band (random k-dim subspaces: the 5–95 % quantiles and
    the mean, averaged over runs), from a ``CausalReport.rank_table()``. ``split`` defaults to
    ``"test"`` when the study held prompts out (else ``"all"``); ``choice`` (a ``rank_choice()``)
    marks the chosen k with a star."""
    df = require_columns(table, ("split", "layer", "rank", "mediation_mean"), "rank table")
    splits = sorted_unique(df["split"])
    split = split or ("test" if "test" in splits else "all")
    if split not in splits:
        raise ConfigError(f"split {split!r} is not in the rank table; splits: {splits}")
    df = as_int_columns(df[df["split"] == split], ("layer", "rank"))
    layers = sorted_unique(df["layer"])
    fig, cells = layer_panels(layers)
    types = [
        c[: -len("_mean")] for c in df.columns if c.endswith("_mean") and c != "mediation_mean"
    ]
    for li, lay in enumerate(layers):
        r, c = cells[li]
        d = df[df["layer"] == lay].sort_values("rank")
        x = d["rank"].tolist()
        for ti, ct in enumerate(types):
            col = _CONTROL_COLOURS.get(ct, colour(ti + 2))
            if f"{ct}_p95" in d.columns:
                fig.add_trace(
                    go.Scatter(
                        x=x + x[::-1],
                        y=[*d[f"{ct}_p95"].tolist(), *d[f"{ct}_p05"].tolist()[::-1]],
                        fill="toself",
                        mode="lines",
                        fillcolor=rgba(col, 0.2),
                        line={"width": 0},
                        hoverinfo="skip",
                        name=f"{esc(ct)} random k-subspaces 5–95 %",
                        legendgroup=ct,
                        showlegend=li == 0,
                    ),
                    row=r,
                    col=c,
                )
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=d[f"{ct}_mean"],
                    mode="lines",
                    line={"color": col, "dash": "dash"},
                    legendgroup=ct,
                    name=f"{esc(ct)} random k-subspaces mean",
                    showlegend=li == 0,
                    hovertemplate=f"{esc(ct)} controls · k %{{x}}<br>mediation %{{y:.3f}}<extra></extra>",
                ),
                row=r,
                col=c,
            )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=d["mediation_mean"],
                mode="lines+markers",
                name="reversion subspace",
                legendgroup="v",
                line={"color": "#d62728"},
                showlegend=li == 0,
                error_y={
                    "type": "data",
                    "array": d["mediation_std"].fillna(0).to_numpy(),
                    "visible": bool((d.get("n_runs", pd.Series([1])) > 1).any()),
                },
                hovertemplate=f"subspace · layer {lay} · k %{{x}}<br>mediation %{{y:.3f}}<extra></extra>",
            ),
            row=r,
            col=c,
        )
        if choice is not None and int(choice.get("layer", -1)) == lay:
            pick = d[d["rank"] == int(choice["rank"])]
            fig.add_trace(
                go.Scatter(
                    x=pick["rank"],
                    y=pick["mediation_mean"],
                    mode="markers",
                    name=f"chosen k ({choice.get('rule')})",
                    marker={
                        "symbol": "star",
                        "size": 15,
                        "color": "black",
                        "line": {"color": "white", "width": 1},
                    },
                    hoverinfo="skip",
                ),
                row=r,
                col=c,
            )
        fig.update_xaxes(
            type="log", tickvals=x, ticktext=[str(k) for k in x], title_text="k", row=r, col=c
        )
        fig.add_hline(y=0, line={"color": "#444", "width": 1}, row=r, col=c)
    fig.update_yaxes(title_text="mediation fraction", col=1)
    held = {"test": "held-out test prompts", "select": "selection prompts", "all": "all prompts"}[
        split
    ]
    default = f"mediation vs subspace rank k ({held}) against random k-dim subspaces"
    return base_layout(fig, default if title is None else title, height=150 + 320 * cells[-1][0])
