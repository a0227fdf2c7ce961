"""Streaming per-layer statistics of a training history (see :func:`collect`)."""

from revlens.collect.collector import (
    collect,
    collect_checkpoint,
    collect_positions,
    history_template,
    resolve_probes,
)
from revlens.collect.degenerate import (
    DegenerateLayerWarning,
    degenerate_layers,
    select_layers,
    without_degenerate,
)
from revlens.collect.stats import CheckpointStats, HistoryStats

__all__ = [
    "CheckpointStats",
    "DegenerateLayerWarning",
    "HistoryStats",
    "collect",
    "collect_checkpoint",
    "collect_positions",
    "degenerate_layers",
    "history_template",
    "resolve_probes",
    "select_layers",
    "without_degenerate",
]

from revlens._callable import make_callable

make_callable(__name__, collect)  # revlens.collect(...) works whether it names the module or the function
