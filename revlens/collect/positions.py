"""``collect_positions``: the old name of :func:`~revlens.collect.collect` at several positions
(deprecated; positions are an axis of the one ``collect``)."""

import warnings
from collections.abc import Sequence
from concurrent.futures import Executor

import torch

from revlens._types import Device, PathLike
from revlens.collect.collector import _collect
from revlens.collect.stats import HistoryStats
from revlens.collect.store import DEFAULT_MEMORY_BUDGET
from revlens.history import HistoryInput
from revlens.model import ModelInput
from revlens.modes import SiteKind, Which
from revlens.probes import PositionRule, ProbesInput
from revlens.sites import LayerSpec

__all__ = ["collect_positions"]


def collect_positions(
    history: HistoryInput,
    probes: ProbesInput | None = None,
    *,
    position: PositionRule = ("post_instruction", None),
    model: ModelInput | None = None,
    layers: LayerSpec = "all",
    site: SiteKind = "resid_post",
    batch_size: int = 32,
    cache_dir: PathLike | None = None,
    moments: Which = "reference",
    keep: Which = "reference",
    n_bootstrap: int = 100,
    bootstrap_seed: int = 0,
    device: Device | None = None,
    dtype: torch.dtype | None = None,
    executor: Executor | None = None,
    keep_layers: Sequence[int] | None = None,
    memory_budget: int | None = DEFAULT_MEMORY_BUDGET,
    spill_dir: PathLike | None = None,
    progress: bool = True,
) -> dict[str, HistoryStats]:
    """Deprecated: use ``collect(history, probes, position=...)``, which returns one
    :class:`HistoryStats` per position label for a rule that reads several positions. This alias
    always returns the dict (one entry for a single position) and goes away in the next release."""
    warnings.warn(
        "collect_positions(...) is deprecated: collect(history, probes, position=...) reads every "
        "position in the same forward passes and returns one HistoryStats per position label",
        DeprecationWarning,
        stacklevel=2,
    )
    by_position, _ = _collect(
        history,
        probes,
        model=model,
        layers=layers,
        site=site,
        position=position,
        batch_size=batch_size,
        cache_dir=cache_dir,
        moments=moments,
        keep=keep,
        n_bootstrap=n_bootstrap,
        bootstrap_seed=bootstrap_seed,
        device=device,
        dtype=dtype,
        executor=executor,
        progress=progress,
        keep_layers=keep_layers,
        memory_budget=memory_budget,
        spill_dir=spill_dir,
    )
    return by_position
