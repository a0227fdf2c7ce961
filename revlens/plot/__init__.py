"""Interactive plotly figures of revlens results (plain ``plotly.graph_objects.Figure``s).

Pure functions of result tables — they work in a notebook, in the offline HTML page
(:mod:`revlens.plot.html`) and from the command line; result objects call them from their named
figure methods (``report.heatmap()``, ``causal.mediation_heatmap()``, ``monitor.trajectory()``...).
"""

from revlens.plot.blocking import blocking_figure
from revlens.plot.causal import (
    control_bands,
    mediation_heatmap,
    mediation_vs_k,
    steer_dose_response,
)
from revlens.plot.directions import direction_agreement, direction_stability
from revlens.plot.drift import drift_heatmap, drift_trajectories, position_heatmap
from revlens.plot.metrics import metrics_figure
from revlens.plot.subspace import subspace_energy
from revlens.plot.training import blocker_figure, monitor_figure
from revlens.plot.weights import (
    weights_heatmap,
    weights_spectrum,
    weights_subspaces,
    weights_trajectories,
)

__all__ = [
    "blocker_figure",
    "blocking_figure",
    "control_bands",
    "direction_agreement",
    "direction_stability",
    "drift_heatmap",
    "drift_trajectories",
    "mediation_heatmap",
    "mediation_vs_k",
    "metrics_figure",
    "monitor_figure",
    "position_heatmap",
    "steer_dose_response",
    "subspace_energy",
    "weights_heatmap",
    "weights_spectrum",
    "weights_subspaces",
    "weights_trajectories",
]
