"""Direction figures: bootstrap stability per layer and agreement between methods.

Both read ``Report.directions``: one row per (layer, method) with ``stability`` and optionally
``perm_p``, ``norm`` and ``agree_<method>`` (cosine between this method's direction and
``<method>``'s at the same layer).
"""

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from revlens.errors import ConfigError
from revlens.plot._common import (
    DIVERGING,
    base_layout,
    colour,
    esc,
    fmt,
    pick,
    require_columns,
    sorted_unique,
)

__all__ = ["direction_agreement", "direction_stability"]


def direction_stability(
    directions: pd.DataFrame,
    *,
    method: str | list[str] | None = None,
    title: str | None = "direction stability per layer (bootstrap over prompts)",
) -> go.Figure:
    """Grouped bars: each method's bootstrap stability at every layer (hover: perm p, norm)."""
    df = require_columns(directions, ("layer", "method", "stability"), "directions table")
    methods = pick(sorted_unique(df["method"]), method, "method")
    layers = sorted_unique(df["layer"])
    fig = go.Figure()
    for mi, m in enumerate(methods):
        dm = df[df["method"] == m].set_index("layer").reindex(layers)
        hover = [
            f"{esc(m)} · layer {lay}<br>stability {fmt(r.get('stability'))}"
            f"<br>permutation p {fmt(r.get('perm_p'))}<br>‖μ_base − μ_aligned‖ {fmt(r.get('norm'))}"
            for lay, r in dm.iterrows()
        ]
        fig.add_trace(
            go.Bar(
                x=[str(x) for x in layers],
                y=dm["stability"].to_numpy(dtype=float),
                name=esc(m),
                marker_color=colour(mi),
                text=hover,
                hoverinfo="text",
                textposition="none",
            )
        )
    fig.update_layout(
        barmode="group",
        yaxis={"title": "stability", "range": [0, 1.05]},
        xaxis={"title": "layer", "type": "category"},
    )
    return base_layout(fig, title, height=420)


def direction_agreement(
    directions: pd.DataFrame,
    *,
    title: str | None = "agreement between direction methods (cosine)",
) -> go.Figure:
    """Heatmap: method pair × layer, colour = cosine between the two methods' directions.

    Needs at least two methods and their ``agree_<method>`` columns.
    """
    df = require_columns(directions, ("layer", "method"), "directions table")
    methods = sorted_unique(df["method"])
    layers = sorted_unique(df["layer"])
    pairs, rows = [], []
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            col = f"agree_{b}"
            if col not in df.columns:
                continue
            vals = df[df["method"] == a].set_index("layer")[col].reindex(layers)
            pairs.append(f"{esc(a)} · {esc(b)}")
            rows.append(vals.to_numpy(dtype=float))
    if not pairs:
        raise ConfigError(
            f"direction agreement needs at least two methods with agree_<method> columns; "
            f"got methods {methods} and columns {list(df.columns)}"
        )
    z = np.vstack(rows)
    text = [
        [f"{p} · layer {lay}<br>cos {fmt(v)}" for lay, v in zip(layers, row)]
        for p, row in zip(pairs, z)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[str(x) for x in layers],
            y=pairs,
            colorscale=DIVERGING,
            zmid=0.0,
            zmin=-1,
            zmax=1,
            text=text,
            hoverinfo="text",
            hovertemplate="%{text}<extra></extra>",
            texttemplate="%{z:.2f}",
            xgap=1,
            ygap=1,
            colorbar={"title": {"text": "cos"}},
        )
    )
    fig.update_xaxes(title_text="layer", type="category")
    fig.update_yaxes(type="category")
    return base_layout(fig, title, height=220 + 45 * len(pairs))
