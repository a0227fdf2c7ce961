"""Evaluation metrics over fine-tuning (harm, task accuracy... whatever a history carries)."""

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from revlens.errors import ConfigError
from revlens.plot._common import base_layout, colour, esc, fmt, require_columns

__all__ = ["METRIC_KEYS", "metric_columns", "metrics_figure"]

METRIC_KEYS = ("checkpoint", "role", "run", "kind", "step", "path")
_DASH = {"run": "solid", "control": "dash", "blocked": "dot"}


def metric_columns(metrics: pd.DataFrame) -> list[str]:
    """The numeric metric columns of a metrics table (not its keys)."""
    return [
        c
        for c in metrics.columns
        if c not in METRIC_KEYS and pd.api.types.is_numeric_dtype(metrics[c])
    ]


def _start_rows(metrics: pd.DataFrame) -> dict[str, pd.DataFrame | None]:
    """The aligned row (start of ordinary runs) and the first base row (start of controls)."""
    out: dict[str, pd.DataFrame | None] = {}
    for role in ("aligned", "base"):
        row = (
            metrics[(metrics["role"] == role)].head(1)
            if "role" in metrics.columns
            else metrics.head(0)
        )
        out[role] = row.assign(step=0) if not row.empty else None
    return out


def metrics_figure(
    metrics: pd.DataFrame,
    *,
    columns: Sequence[str] | None = None,
    title: str | None = "behaviour over fine-tuning",
) -> go.Figure:
    """One panel per metric column (e.g. harm rate, harm log-odds, task accuracy) against step,
    one line per run (dashed: control runs, dotted: blocked runs). Runs start at step 0 from the
    aligned model's row, control runs from the base model's, when the table has them.

    ``metrics`` is a history's metrics table (``Report.metrics``): ``run, step`` (and ``role``,
    ``kind``) and numeric metric columns.
    """
    require_columns(metrics, ("run", "step"), "metrics table")
    panels = list(columns) if columns is not None else metric_columns(metrics)
    missing = [c for c in panels if c not in metrics.columns]
    if not panels or missing:
        raise ConfigError(
            f"metrics table: no metric column to plot (asked {panels}); got {list(metrics.columns)}"
        )
    starts = _start_rows(metrics)
    df = metrics.dropna(subset=["run", "step"])
    fig = make_subplots(
        rows=1, cols=len(panels), subplot_titles=[esc(p.replace("_", " ")) for p in panels]
    )
    for ri, run in enumerate(dict.fromkeys(df["run"].tolist())):
        d = df[df["run"] == run]
        kind = str(d["kind"].iloc[0]) if "kind" in d.columns else "run"
        start = starts.get("base" if kind == "control" else "aligned")
        if start is not None and not (d["step"] == 0).any():
            d = pd.concat([start, d])
        d = d.sort_values("step")
        name = esc(run) if kind == "run" else f"{esc(run)} ({esc(kind)})"
        for pi, p in enumerate(panels):
            fig.add_trace(
                go.Scatter(
                    x=d["step"].tolist(),
                    y=d[p].tolist(),
                    mode="lines+markers",
                    name=name,
                    legendgroup=str(run),
                    showlegend=pi == 0,
                    line={"color": colour(ri), "dash": _DASH.get(kind, "dashdot")},
                    marker={"size": 4},
                    text=[
                        f"{name} · step {s}<br>{esc(p)} {fmt(v)}" for s, v in zip(d["step"], d[p])
                    ],
                    hoverinfo="text",
                ),
                row=1,
                col=pi + 1,
            )
            fig.update_xaxes(title_text="fine-tuning step", row=1, col=pi + 1)
    return base_layout(fig, title, height=400)
