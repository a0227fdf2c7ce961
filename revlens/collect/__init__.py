"""Streaming per-layer statistics of a training history (see :func:`collect`)."""

from revlens.collect.collector import (
    as_probes,
    collect,
    collect_checkpoint,
    history_template,
    resolve_probes,
)
from revlens.collect.degenerate import (
    DegenerateLayerWarning,
    degenerate_layers,
    select_layers,
    without_degenerate,
)
from revlens.collect.executors import dask_executor, process_pool, ray_executor
from revlens.collect.models import collect_model, collect_models
from revlens.collect.positions import collect_positions
from revlens.collect.stats import CheckpointStats, HistoryStats
from revlens.collect.store import MemoryBudget, ReferenceStore

__all__ = [
    "CheckpointStats",
    "DegenerateLayerWarning",
    "HistoryStats",
    "MemoryBudget",
    "ReferenceStore",
    "as_probes",
    "collect",
    "collect_checkpoint",
    "collect_model",
    "collect_models",
    "collect_positions",
    "dask_executor",
    "degenerate_layers",
    "history_template",
    "process_pool",
    "ray_executor",
    "resolve_probes",
    "select_layers",
    "without_degenerate",
]

from revlens._callable import make_callable

make_callable(
    __name__, collect
)  # revlens.collect(...) works whether it names the module or the function
