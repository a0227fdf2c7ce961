"""Helpers shared by the figure modules: input checks, escaping, number formatting, palettes."""

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from revlens.errors import ConfigError

# Diverging, centred on 0 (blue = toward aligned / negative, red = toward base / positive).
DIVERGING = "RdBu_r"
PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
MEAN_LABEL = "mean over runs"


def require_columns(df: Any, columns: Iterable[str], what: str) -> pd.DataFrame:
    """Check that ``df`` is a non-empty DataFrame holding ``columns``; raise ConfigError if not."""
    if not isinstance(df, pd.DataFrame):
        raise ConfigError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ConfigError(
            f"{what}: missing column(s) {missing}; expected at least {sorted(columns)}, "
            f"got {list(df.columns)}"
        )
    if df.empty:
        raise ConfigError(f"{what}: the table is empty (no rows to plot)")
    return df


def esc(value: Any) -> str:
    """HTML-escape a name for plotly's pseudo-HTML labels (a run called ``<b>`` stays literal)."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a hover label: fixed digits, small p-values in scientific notation, n/a."""
    if value is None:
        return "n/a"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return esc(value)
    if math.isnan(x):
        return "n/a"
    if x != 0 and abs(x) < 10 ** (-digits):
        return f"{x:.1e}"
    return f"{x:.{digits}f}"


def pick(values: Sequence[Any], chosen: Any, what: str) -> list[Any]:
    """Restrict ``values`` to ``chosen`` (one value, a list, or None for all); unknown → error."""
    if chosen is None:
        return list(values)
    wanted = [chosen] if isinstance(chosen, (str, int)) else list(chosen)
    unknown = [w for w in wanted if w not in list(values)]
    if unknown:
        raise ConfigError(f"unknown {what} {unknown}; valid: {list(values)}")
    return wanted


def sorted_unique(series: pd.Series) -> list[Any]:
    """The distinct values of ``series`` in sorted order (plain Python scalars)."""
    return sorted(pd.unique(series).tolist())


def as_int_columns(df: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """A copy with integer-valued float columns (steps, layers read back from CSV) as ints."""
    out = df.copy()
    for c in columns:
        if c in out.columns and pd.api.types.is_float_dtype(out[c]):
            vals = out[c].dropna()
            if len(vals) == len(out) and (vals == vals.round()).all():
                out[c] = out[c].astype("int64")
    return out


def step_label(step: Any) -> str:
    """A step as a category label: ``3``, never ``3.0`` (tables may hold steps as floats)."""
    try:
        x = float(step)
    except (TypeError, ValueError):
        return str(step)
    return str(int(x)) if x.is_integer() else str(x)


def colour(i: int) -> str:
    """The i-th colour of the palette (cycling)."""
    return PALETTE[i % len(PALETTE)]


def base_layout(fig: go.Figure, title: str | None, *, height: int | None = None) -> go.Figure:
    """Common layout: white template, title, hover label font."""
    fig.update_layout(
        template="plotly_white",
        title=None if title is None else {"text": esc(title)},
        hoverlabel={"font": {"family": "monospace", "size": 12}},
    )
    fig.update_layout(margin={"l": 70, "r": 30, "b": 60, "t": fig.layout.margin.t or 80})
    if height is not None:
        fig.update_layout(height=height)
    return fig


def rgba(hex_colour: str, alpha: float) -> str:
    """``#rrggbb`` → ``rgba(r,g,b,alpha)`` for translucent bands."""
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def layer_panels(
    layers: Sequence[Any], *, ncols: int = 3
) -> tuple[go.Figure, list[tuple[int, int]]]:
    """A grid of panels titled ``layer L`` (at most ``ncols`` per row, shared y axes) and each
    layer's ``(row, col)`` in it."""
    from plotly.subplots import make_subplots

    ncols = min(len(layers), ncols)
    nrows = math.ceil(len(layers) / ncols)
    fig = make_subplots(
        rows=nrows, cols=ncols, shared_yaxes=True, subplot_titles=[f"layer {lay}" for lay in layers]
    )
    return fig, [(i // ncols + 1, i % ncols + 1) for i in range(len(layers))]
