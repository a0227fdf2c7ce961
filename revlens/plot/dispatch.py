"""``report_figure`` / ``causal_figure``: the figure a report object draws, chosen by name."""

from typing import Any

import plotly.graph_objects as go

from revlens.errors import ConfigError
from revlens.plot.causal import control_bands, mediation_heatmap, steer_dose_response
from revlens.plot.directions import direction_agreement, direction_stability
from revlens.plot.drift import drift_heatmap, drift_trajectories

__all__ = ["CAUSAL_KINDS", "REPORT_KINDS", "causal_figure", "report_figure"]

REPORT_KINDS = ("heatmap", "trajectories", "stability", "agreement")
CAUSAL_KINDS = ("mediation", "controls", "steer")


def _table(obj: Any, attr: str, what: str) -> Any:
    if not hasattr(obj, attr):
        raise ConfigError(f"{what} has no .{attr} table (got a {type(obj).__name__})")
    return getattr(obj, attr)


def report_figure(report: Any, kind: str = "heatmap", **kwargs: Any) -> go.Figure:
    """A figure of a drift ``Report``.

    Args:
        report: anything with ``.drift`` (and ``.directions`` for "stability"/"agreement").
        kind: "heatmap" (:func:`drift_heatmap`), "trajectories" (:func:`drift_trajectories`),
            "stability" (:func:`direction_stability`) or "agreement" (:func:`direction_agreement`).
        **kwargs: passed to the figure function.
    """
    if kind == "heatmap":
        return drift_heatmap(_table(report, "drift", "report"), **kwargs)
    if kind == "trajectories":
        return drift_trajectories(_table(report, "drift", "report"), **kwargs)
    if kind == "stability":
        return direction_stability(_table(report, "directions", "report"), **kwargs)
    if kind == "agreement":
        return direction_agreement(_table(report, "directions", "report"), **kwargs)
    raise ConfigError(f"unknown figure kind {kind!r}; valid kinds: {list(REPORT_KINDS)}")


def causal_figure(report: Any, kind: str = "mediation", **kwargs: Any) -> go.Figure:
    """A figure of a ``CausalReport`` (anything with ``.effects``).

    ``kind``: "mediation" (:func:`mediation_heatmap`), "controls" (:func:`control_bands`) or
    "steer" (:func:`steer_dose_response`); ``**kwargs`` go to that function.
    """
    if kind == "mediation":
        return mediation_heatmap(_table(report, "effects", "causal report"), **kwargs)
    if kind == "controls":
        return control_bands(_table(report, "effects", "causal report"), **kwargs)
    if kind == "steer":
        return steer_dose_response(_table(report, "effects", "causal report"), **kwargs)
    raise ConfigError(f"unknown figure kind {kind!r}; valid kinds: {list(CAUSAL_KINDS)}")
