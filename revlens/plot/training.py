"""Training-time figures: the monitor's cos trajectory and the blocker's blocked quantity."""

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from revlens.plot._common import base_layout, colour, fmt, require_columns

__all__ = ["blocker_figure", "monitor_figure"]


def monitor_figure(
    history: pd.DataFrame,
    *,
    threshold: float | None = None,
    alerts: Sequence[tuple[int, int, float]] = (),
    title: str | None = "reversion monitor: cos(drift, v) per check",
) -> go.Figure:
    """cos(drift, v) at every check, one line per layer; the warning threshold as a dashed line
    and each alert as a marker (``ReversionMonitor.history_`` / ``alerts_``)."""
    df = require_columns(history, ("step", "layer", "cos"), "monitor history")
    fig = go.Figure()
    for i, (layer, d) in enumerate(df.groupby("layer")):
        fig.add_trace(
            go.Scatter(
                x=d["step"].tolist(),
                y=d["cos"].tolist(),
                mode="lines+markers",
                name=f"layer {layer}",
                line={"color": colour(i)},
                text=[
                    f"layer {layer} · step {s}<br>cos {fmt(c)}" for s, c in zip(d["step"], d["cos"])
                ],
                hoverinfo="text",
            )
        )
    if threshold is not None:
        fig.add_hline(
            y=float(threshold),
            line_dash="dash",
            line_color="grey",
            annotation_text=f"threshold {threshold:.3f}",
        )
    if alerts:
        fig.add_trace(
            go.Scatter(
                x=[a[0] for a in alerts],
                y=[a[2] for a in alerts],
                mode="markers",
                name="alert",
                marker={"symbol": "x", "size": 12, "color": "black"},
            )
        )
    fig.update_layout(xaxis={"title": "training step"}, yaxis={"title": "cos(drift, v)"})
    return base_layout(fig, title, height=380)


def blocker_figure(
    history: pd.DataFrame, *, title: str | None = "blocked quantity s_l before each step"
) -> go.Figure:
    """``s_l`` (drift of the probe mean along v_l) before each optimizer step, per layer; measured
    values as markers, first-order predictions between refreshes as lines
    (``ReversionBlocker.history_``)."""
    df = require_columns(history, ("step", "layer", "s"), "blocker history")
    fig = go.Figure()
    for i, (layer, d) in enumerate(df.groupby("layer")):
        fig.add_trace(
            go.Scatter(
                x=d["step"].tolist(),
                y=d["s"].tolist(),
                mode="lines",
                name=f"layer {layer}",
                line={"color": colour(i)},
                legendgroup=str(layer),
            )
        )
        m = d[d["measured"].astype(bool)] if "measured" in d.columns else d
        fig.add_trace(
            go.Scatter(
                x=m["step"].tolist(),
                y=m["s"].tolist(),
                mode="markers",
                showlegend=False,
                marker={"color": colour(i), "size": 5},
                legendgroup=str(layer),
            )
        )
    fig.add_hline(y=0.0, line_color="grey", line_width=1)
    fig.update_layout(
        xaxis={"title": "optimizer step"}, yaxis={"title": "s_l = (μ_l(θ) − μ_l(aligned))·v_l"}
    )
    return base_layout(fig, title, height=380)
