"""``collect_positions``: the old name of :func:`~revlens.collect.collect` at several positions
(deprecated; positions are an axis of the one ``collect``)."""

import warnings
from concurrent.futures import Executor
from typing import Any

import torch

from revlens.collect.collector import _collect
from revlens.collect.stats import HistoryStats
from revlens.collect.store import DEFAULT_MEMORY_BUDGET
from revlens.history import History
from revlens.modes import SiteKind, Which
from revlens.probes import PositionRule
from revlens.sites import LayerSpec

__all__ = ["collect_positions"]


def collect_positions(history: History | Any, probes: Any = None, *, position: PositionRule = ("post_instruction", None),
                      model: Any = None, layers: LayerSpec = "all", site: SiteKind = "resid_post", batch_size: int = 32,
                      cache_dir: Any = None, moments: Which = "reference", keep: Which = "reference",
                      n_bootstrap: int = 100, bootstrap_seed: int = 0, device: Any = None,
                      dtype: torch.dtype | None = None, executor: Executor | None = None,
                      keep_layers: Any = None, memory_budget: int | None = DEFAULT_MEMORY_BUDGET,
                      spill_dir: Any = None, progress: bool = True) -> dict[str, HistoryStats]:
    """Deprecated: use ``collect(history, probes, position=...)``, which returns one
    :class:`HistoryStats` per position label for a rule that reads several positions. This alias
    always returns the dict (one entry for a single position) and goes away in the next release."""
    warnings.warn("collect_positions(...) is deprecated: collect(history, probes, position=...) reads every "
                  "position in the same forward passes and returns one HistoryStats per position label",
                  DeprecationWarning, stacklevel=2)
    by_position, _ = _collect(history, probes, model=model, layers=layers, site=site, position=position,
                              batch_size=batch_size, cache_dir=cache_dir, moments=moments, keep=keep,
                              n_bootstrap=n_bootstrap, bootstrap_seed=bootstrap_seed, device=device, dtype=dtype,
                              executor=executor, progress=progress, keep_layers=keep_layers,
                              memory_budget=memory_budget, spill_dir=spill_dir)
    return by_position
