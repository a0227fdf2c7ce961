"""Streaming per-layer statistics of a training history (see :func:`collect`)."""

from revlens.collect.collector import (
    collect,
    collect_checkpoint,
    collect_positions,
    history_template,
    resolve_probes,
)
from revlens.collect.stats import CheckpointStats, HistoryStats

__all__ = [
    "CheckpointStats",
    "HistoryStats",
    "collect",
    "collect_checkpoint",
    "collect_positions",
    "history_template",
    "resolve_probes",
]

from revlens._callable import make_callable

make_callable(__name__, collect)  # revlens.collect(...) works whether it names the module or the function
