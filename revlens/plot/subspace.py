"""The drift's energy in rank-k subspaces against k, beside its nulls (from
``revlens.drift.subspace_drift_table`` / ``Report.subspace_drift``)."""

import pandas as pd
import plotly.graph_objects as go

from revlens.errors import ConfigError
from revlens.plot._common import (
    as_int_columns,
    base_layout,
    colour,
    esc,
    layer_panels,
    require_columns,
    sorted_unique,
)

__all__ = ["subspace_energy"]

_NULLS = (
    ("null_iso_mean", "isotropic null mean k/d", "#7f7f7f", "dash"),
    ("null_iso_q", "isotropic null p99 (exact Beta)", "#7f7f7f", "dot"),
    ("null_cov_mean", "covariance-matched null mean", "#ff7f0e", "dash"),
    ("null_cov_q", "covariance-matched null p99", "#ff7f0e", "dot"),
)


def subspace_energy(
    table: pd.DataFrame,
    *,
    step: int | None = None,
    method: str | None = None,
    title: str | None = None,
) -> go.Figure:
    """Energy fraction ``‖B_k d‖²/‖d‖²`` against k, one panel per layer, at ``step`` (default: each
    run's last): the mean over runs of each kind (± std) and the nulls' mean and p99."""
    df = require_columns(
        table, ("run", "step", "layer", "method", "rank", "energy", "kind"), "subspace drift table"
    )
    methods = sorted_unique(df["method"])
    method = methods[0] if method is None else method
    if method not in methods:
        raise ConfigError(f"method {method!r} is not in the subspace table; methods: {methods}")
    df = as_int_columns(df[df["method"] == method], ("step", "layer", "rank"))
    if step is None:
        df = df[df["step"] == df.groupby("run")["step"].transform("max")]
    else:
        df = df[df["step"] == int(step)]
        if df.empty:
            raise ConfigError(f"step {step} is not in the subspace table")
    layers = sorted_unique(df["layer"])
    fig, cells = layer_panels(layers)
    for li, lay in enumerate(layers):
        r, c = cells[li]
        d = df[df["layer"] == lay]
        nulls = d.groupby("rank")[[n for n, *_ in _NULLS]].mean()
        for col, label, col_hex, dash in _NULLS:
            if nulls[col].notna().any():
                fig.add_trace(
                    go.Scatter(
                        x=nulls.index.tolist(),
                        y=nulls[col],
                        mode="lines",
                        name=label,
                        line={"color": col_hex, "dash": dash},
                        legendgroup=col,
                        showlegend=li == 0,
                    ),
                    row=r,
                    col=c,
                )
        for ki, (kind, g) in enumerate(d.groupby("kind", sort=True)):
            agg = g.groupby("rank")["energy"].agg(["mean", "std", "count"])
            fig.add_trace(
                go.Scatter(
                    x=agg.index.tolist(),
                    y=agg["mean"],
                    mode="lines+markers",
                    name=f"{esc(kind)} runs",
                    line={"color": "#d62728" if kind == "run" else colour(ki + 3)},
                    legendgroup=f"k-{kind}",
                    showlegend=li == 0,
                    error_y={
                        "type": "data",
                        "array": agg["std"].fillna(0).to_numpy(),
                        "visible": bool((agg["count"] > 1).any()),
                    },
                    hovertemplate=f"{esc(kind)} · layer {lay} · k %{{x}}<br>energy %{{y:.3f}}<extra></extra>",
                ),
                row=r,
                col=c,
            )
        ks = sorted_unique(d["rank"])
        fig.update_xaxes(
            type="log", tickvals=ks, ticktext=[str(k) for k in ks], title_text="k", row=r, col=c
        )
    fig.update_yaxes(title_text="energy fraction in the subspace", col=1)
    default = f"drift energy in the rank-k {esc(method)} subspace against its nulls"
    return base_layout(fig, default if title is None else title, height=150 + 320 * cells[-1][0])
