"""Streaming per-layer statistics of a training history (see :func:`collect`)."""

from revlens.collect.collector import collect, collect_checkpoint, resolve_probes
from revlens.collect.executors import dask_executor, process_pool, ray_executor
from revlens.collect.stats import CheckpointStats, HistoryStats
from revlens.collect.store import MemoryBudget, ReferenceStore

__all__ = ["CheckpointStats", "HistoryStats", "MemoryBudget", "ReferenceStore", "collect", "collect_checkpoint",
           "dask_executor", "process_pool", "ray_executor", "resolve_probes"]

from revlens._callable import make_callable

make_callable(__name__, collect)  # revlens.collect(...) works whether it names the module or the function
