"""Figures of direction candidates: two compared per layer (:func:`revlens.drift.compare_directions`), and the
refusal-direction candidates of a selection (:func:`revlens.causal.select_refusal_direction`)."""

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from revlens.plot._common import esc, require_columns

__all__ = ["cosine_profile", "selection_heatmap"]


def _band(
    fig: go.Figure, layers: list, lo: pd.Series, hi: pd.Series, name: str, color: str
) -> None:
    fig.add_trace(
        go.Scatter(
            x=layers,
            y=list(hi),
            mode="lines",
            line={"width": 0},
            showlegend=False,
            hoverinfo="skip",
            legendgroup=name,
        )
    )
    fig.add_trace(
        go.Scatter(
            x=layers,
            y=list(lo),
            mode="lines",
            line={"width": 0},
            fill="tonexty",
            fillcolor=color,
            name=name,
            legendgroup=name,
            hoverinfo="skip",
        )
    )


def cosine_profile(
    table: pd.DataFrame,
    *,
    a: str = "a",
    b: str = "b",
    level: float = 0.99,
    title: str | None = None,
) -> Any:
    """``cos(a_l, b_l)`` per layer (markers filled where outside the isotropic band) over the
    isotropic null's central ``level`` band and, where present, the covariance-matched one."""
    df = require_columns(table, ["layer", "cos", "iso_lo", "iso_hi"], "cosine_profile")
    layers = [int(x) for x in df["layer"]]
    fig = go.Figure()
    pct = f"{100 * level:g} %"
    _band(
        fig,
        layers,
        df["iso_lo"],
        df["iso_hi"],
        f"isotropic null, central {pct}",
        "rgba(127,127,127,0.25)",
    )
    if "cov_lo" in df and bool(df["cov_lo"].notna().any()):
        _band(
            fig,
            layers,
            df["cov_lo"],
            df["cov_hi"],
            f"covariance-matched null, central {pct}",
            "rgba(255,127,14,0.25)",
        )
    outside = df["outside_iso"] if "outside_iso" in df else pd.Series(False, index=df.index)
    fig.add_trace(
        go.Scatter(
            x=layers,
            y=list(df["cos"]),
            mode="lines+markers",
            name=f"cos({esc(a)}, {esc(b)})",
            line={"color": "#1f77b4"},
            marker={
                "size": 9,
                "symbol": ["circle" if o else "circle-open" for o in outside],
                "color": "#1f77b4",
            },
            hovertemplate="layer %{x}<br>cos %{y:.3f}<extra></extra>",
        )
    )
    fig.add_hline(y=0.0, line={"color": "black", "width": 1, "dash": "dot"})
    fig.update_layout(
        title=title or f"cos({esc(a)}, {esc(b)}) per layer beside its nulls",
        xaxis_title="layer",
        yaxis_title="cosine",
        template="plotly_white",
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def selection_heatmap(
    table: pd.DataFrame, *, value: str = "score", title: str | None = None
) -> Any:
    """A (position × layer) heatmap of one column of a refusal-direction selection table
    (:func:`revlens.causal.select_refusal_direction`), the chosen cell marked, ineligible cells
    hatched by a dot."""
    df = require_columns(
        table, ["position", "layer", value, "eligible", "selected"], "selection_heatmap"
    )
    grid = df.pivot(index="position", columns="layer", values=value)
    fig = go.Figure(
        go.Heatmap(
            z=grid.values,
            x=[int(c) for c in grid.columns],
            y=[str(i) for i in grid.index],
            colorscale="Viridis",
            colorbar={"title": esc(value)},
            hovertemplate="position %{y}, layer %{x}<br>" + esc(value) + " %{z:.3f}<extra></extra>",
        )
    )
    off = df[~df["eligible"]]
    fig.add_trace(
        go.Scatter(
            x=list(off["layer"]),
            y=[str(p) for p in off["position"]],
            mode="markers",
            marker={"symbol": "x-thin", "size": 10, "color": "white", "line": {"width": 1}},
            name="filtered out",
            hoverinfo="skip",
        )
    )
    best = df[df["selected"]]
    fig.add_trace(
        go.Scatter(
            x=list(best["layer"]),
            y=[str(p) for p in best["position"]],
            mode="markers",
            marker={"symbol": "star", "size": 16, "color": "red"},
            name="chosen",
        )
    )
    fig.update_layout(
        title=title or f"refusal-direction candidates: {esc(value)}",
        xaxis_title="layer",
        yaxis_title="position",
        template="plotly_white",
    )
    return fig
