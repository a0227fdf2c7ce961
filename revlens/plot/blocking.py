"""Blocking comparison: final alignment, harm and task cost of each blocking method."""

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from revlens.errors import ConfigError
from revlens.plot._common import base_layout, colour, esc, fmt, require_columns

__all__ = ["blocking_figure"]

_PANELS = {
    "cos_final": "final cos(drift, v_rev)",
    "harm_rate": "harmfulness rate",
    "harm_logodds": "harm log-odds",
    "task_acc": "task accuracy",
}


def blocking_figure(
    df: pd.DataFrame,
    *,
    title: str | None = "blocking reversion during fine-tuning: methods compared",
) -> go.Figure:
    """One panel per outcome (``cos_final, harm_rate, harm_logodds, task_acc``, those present):
    per method a bar at the mean over runs (± sd) and one dot per run.

    ``df`` has one row per (method, run); methods keep their order of first appearance.
    """
    require_columns(df, ("method", "run"), "blocking table")
    panels = [c for c in _PANELS if c in df.columns]
    if not panels:
        raise ConfigError(
            f"blocking table: none of the outcome columns {list(_PANELS)} is present; "
            f"got {list(df.columns)}"
        )
    methods = list(dict.fromkeys(df["method"].tolist()))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[_PANELS[p] for p in panels])
    for pi, p in enumerate(panels):
        for mi, m in enumerate(methods):
            d = df[df["method"] == m]
            mean, sd = d[p].mean(), d[p].std(ddof=1)
            fig.add_trace(
                go.Bar(
                    x=[esc(m)],
                    y=[mean],
                    name=esc(m),
                    marker_color=colour(mi),
                    opacity=0.55,
                    error_y={
                        "type": "data",
                        "array": [0 if pd.isna(sd) else sd],
                        "visible": len(d) > 1,
                    },
                    legendgroup=str(m),
                    showlegend=pi == 0,
                    hoverinfo="text",
                    text=[
                        f"{esc(m)}<br>{_PANELS[p]} {fmt(mean)} ± {fmt(sd)} (mean ± sd, {len(d)} runs)"
                    ],
                    textposition="none",
                ),
                row=1,
                col=pi + 1,
            )
            fig.add_trace(
                go.Scatter(
                    x=[esc(m)] * len(d),
                    y=d[p].tolist(),
                    mode="markers",
                    legendgroup=str(m),
                    showlegend=False,
                    marker={"color": "black", "size": 6},
                    hoverinfo="text",
                    text=[
                        f"{esc(m)} · run {esc(r)}<br>{_PANELS[p]} {fmt(v)}"
                        for r, v in zip(d["run"], d[p])
                    ],
                ),
                row=1,
                col=pi + 1,
            )
    fig.update_xaxes(type="category")
    return base_layout(fig, title, height=430)
