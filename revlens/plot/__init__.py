"""Interactive plotly figures of revlens results (plain ``plotly.graph_objects.Figure``s).

Pure functions of the result tables: they work in a notebook, in the offline HTML report
(:mod:`revlens.report.html`) and from the command line.
"""

from revlens.plot.blocking import blocking_figure
from revlens.plot.causal import control_bands, mediation_heatmap, steer_dose_response
from revlens.plot.directions import direction_agreement, direction_stability
from revlens.plot.dispatch import CAUSAL_KINDS, REPORT_KINDS, causal_figure, report_figure
from revlens.plot.drift import drift_heatmap, drift_trajectories
from revlens.plot.lab import lab_metrics_figure

__all__ = [
    "CAUSAL_KINDS",
    "REPORT_KINDS",
    "blocking_figure",
    "causal_figure",
    "control_bands",
    "direction_agreement",
    "direction_stability",
    "drift_heatmap",
    "drift_trajectories",
    "lab_metrics_figure",
    "mediation_heatmap",
    "report_figure",
    "steer_dose_response",
]
