"""Figures and the HTML section of a defense comparison (:class:`revlens.defenses.DefenseComparison`):
harm against task cost, one point per defense and one per random control, ± std over seeds."""

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pandas as pd
import plotly.graph_objects as go

from revlens._types import PathLike
from revlens.plot._common import PALETTE, esc, require_columns


@runtime_checkable
class ComparisonLike(Protocol):
    """What the "Defenses" section reads of a comparison (a
    :class:`revlens.defenses.DefenseComparison`): its printed table, figure, harm trajectories
    and settings."""

    trajectories: pd.DataFrame
    meta: Mapping[str, Any]

    def printed(self) -> str:
        """The table as text."""

    def figure(self) -> go.Figure:
        """Harm against cost."""


@runtime_checkable
class PageLike(Protocol):
    """An HTML page being assembled (:mod:`revlens.plot.html`)."""

    def add(self, html: str) -> None:
        """Append a fragment."""

    def try_figure(self, make: Callable[[], go.Figure], caption: str = "") -> None:
        """Append a figure, or the reason it could not be drawn."""


__all__ = ["defenses_section", "harm_trajectories", "harm_vs_cost", "write_defenses_report"]


def harm_vs_cost(summary: pd.DataFrame, cost: str = "task_loss") -> go.Figure:
    """Harm rate (mean ± std over seeds) against ``cost`` (``<cost>_mean`` / ``_std``): filled
    markers the defenses, open markers their random controls, the undefended run a black cross; a
    dotted line joins each defense to its control."""
    df = require_columns(
        summary,
        ["defense", "control", "harm_rate_mean", "harm_rate_std", f"{cost}_mean", f"{cost}_std"],
        "harm_vs_cost",
    )
    fig = go.Figure()
    names = [n for n in dict.fromkeys(df["defense"]) if n != "none"]
    for i, name in enumerate(["none", *names]):
        color = "black" if name == "none" else PALETTE[(i - 1) % len(PALETTE)]
        part = df[df["defense"] == name]
        for control in (False, True):
            row = part[part["control"] == control]
            if row.empty:
                continue
            r = row.iloc[0]
            label = esc(name) + (" (random control)" if control else "")
            fig.add_trace(
                go.Scatter(
                    x=[r[f"{cost}_mean"]],
                    y=[r["harm_rate_mean"]],
                    mode="markers",
                    name=label,
                    legendgroup=name,
                    marker={
                        "color": color,
                        "size": 11,
                        "symbol": "x"
                        if name == "none"
                        else ("circle-open" if control else "circle"),
                    },
                    error_x={"type": "data", "array": [r[f"{cost}_std"]], "visible": True},
                    error_y={"type": "data", "array": [r["harm_rate_std"]], "visible": True},
                )
            )
        if len(part) == 2:
            fig.add_trace(
                go.Scatter(
                    x=part[f"{cost}_mean"],
                    y=part["harm_rate_mean"],
                    mode="lines",
                    line={"color": color, "dash": "dot", "width": 1},
                    legendgroup=name,
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
    fig.update_layout(
        title="Defenses: harm at T vs task cost (mean ± std over seeds)",
        xaxis_title=f"{cost} (mean over seeds)",
        yaxis_title="harm rate at T",
        width=820,
        height=520,
        template="plotly_white",
    )
    return fig


def harm_trajectories(trajectories: pd.DataFrame) -> go.Figure:
    """Harm rate over fine-tuning steps, mean over seeds, one line per defense (dashed: controls)."""
    df = require_columns(
        trajectories, ["defense", "control", "step", "harm_rate"], "harm_trajectories"
    )
    mean = df.groupby(["defense", "control", "step"], sort=False)["harm_rate"].mean().reset_index()
    fig = go.Figure()
    for i, ((name, control), part) in enumerate(mean.groupby(["defense", "control"], sort=False)):
        fig.add_trace(
            go.Scatter(
                x=part["step"],
                y=part["harm_rate"],
                mode="lines+markers",
                name=esc(name) + (" (control)" if control else ""),
                line={
                    "dash": "dash" if control else "solid",
                    "color": PALETTE[i // 2 % len(PALETTE)],
                },
            )
        )
    fig.update_layout(
        title="Harm along fine-tuning (mean over seeds)",
        xaxis_title="step",
        yaxis_title="harm rate",
        width=820,
        height=480,
        template="plotly_white",
    )
    return fig


_INTRO = (
    "Each defense run on the same fine-tuning runs (same seeds, same data order) beside the same defense "
    "along random directions / subspaces (its control) and the undefended run. Harm: count over the held-out "
    "harmful prompts pooled over seeds with its Wilson 95 % interval; other columns mean ± std over seeds; "
    "time and memory as multiples of the undefended run of the same seed."
)


def defenses_section(page: PageLike, comparison: ComparisonLike) -> None:
    """Add the "Defenses" section (table, harm vs cost, trajectories) to an HTML page."""
    from revlens.plot.html import _e

    page.add(f'<h2>Defenses</h2><p class="note">{_INTRO}</p>')
    page.add(f"<pre>{_e(comparison.printed())}</pre>")
    page.try_figure(
        comparison.figure, "Filled: the defense; open: its random control; cross: undefended."
    )
    page.try_figure(lambda: harm_trajectories(comparison.trajectories))
    meta = comparison.meta
    page.add(
        f'<p class="note">harm metric: {_e(meta.get("harm_metric"))}; machine: {_e(meta.get("machine"))}; '
        f"{_e(meta.get('date'))}; settings: <code>{_e(meta.get('config'))}</code></p>"
    )


def write_defenses_report(
    comparison: ComparisonLike, path: PathLike, *, title: str | None = None
) -> Path:
    """One self-contained HTML file with the "Defenses" section."""
    from revlens.plot.html import _Page, _write_page

    page = _Page(title or "revlens: defenses compared")
    defenses_section(page, comparison)
    return _write_page(path, page.render())
