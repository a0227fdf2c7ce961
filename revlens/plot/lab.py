"""Lab metrics over fine-tuning: harmfulness and task accuracy per run."""

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from revlens.errors import ConfigError
from revlens.plot._common import base_layout, colour, esc, fmt, require_columns

__all__ = ["lab_metrics_figure"]

_PANELS = {
    "harm_rate": "harmfulness rate",
    "harm_logodds": "harm log-odds",
    "task_acc": "task accuracy",
}
_DASH = {"run": "solid", "control": "dash", "blocked": "dot"}


def lab_metrics_figure(
    metrics: pd.DataFrame,
    *,
    title: str | None = "lab behaviour over fine-tuning",
) -> go.Figure:
    """One panel per lab metric present (harm rate, harm log-odds, task accuracy) against step,
    one line per run (dashed: control runs, dotted: blocked runs). Runs start at step 0 from the
    aligned model's row, control runs from the base model's (rows with ``role`` aligned / base
    and no run), when the table has them.

    ``metrics`` is ``Report.lab_metrics``: columns ``run, step`` and some of ``harm_rate,
    harm_logodds, task_acc`` (optional ``role``).
    """
    require_columns(metrics, ("run", "step"), "lab metrics table")
    panels = [p for p in _PANELS if p in metrics.columns]
    if not panels:
        raise ConfigError(
            f"lab metrics table has none of {list(_PANELS)}; got {list(metrics.columns)}"
        )
    roles = metrics["role"].astype(str) if "role" in metrics.columns else None
    starts = {}  # a run starts from aligned (step 0), a control run from base
    if roles is not None:
        for role in ("aligned", "base"):
            row = metrics[(roles == role) & metrics["run"].isna()].head(1)
            starts[role] = row.assign(step=0) if not row.empty else None
    df = metrics.dropna(subset=["run", "step"])
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[_PANELS[p] for p in panels])
    runs = list(dict.fromkeys(df["run"].tolist()))
    for ri, run in enumerate(runs):
        d = df[df["run"] == run]
        role = str(d["role"].iloc[0]) if "role" in d.columns else "run"
        start = starts.get("base" if role == "control" else "aligned")
        if start is not None and not (d["step"] == 0).any():
            d = pd.concat([start, d])
        d = d.sort_values("step")
        name = esc(run) if role == "run" else f"{esc(run)} ({esc(role)})"
        for pi, p in enumerate(panels):
            fig.add_trace(
                go.Scatter(
                    x=d["step"].tolist(),
                    y=d[p].tolist(),
                    mode="lines+markers",
                    name=name,
                    legendgroup=str(run),
                    showlegend=pi == 0,
                    line={"color": colour(ri), "dash": _DASH.get(role, "dashdot")},
                    marker={"size": 4},
                    text=[
                        f"{name} · step {s}<br>{_PANELS[p]} {fmt(v)}"
                        for s, v in zip(d["step"], d[p])
                    ],
                    hoverinfo="text",
                ),
                row=1,
                col=pi + 1,
            )
            fig.update_xaxes(title_text="fine-tuning step", row=1, col=pi + 1)
    return base_layout(fig, title, height=400)
