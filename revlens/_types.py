"""Type aliases of what the public API accepts at its boundary (stage 0: no revlens import).

Inputs are converted once, where they enter, by the stage that owns them
(:func:`revlens.history.as_history`, :func:`revlens.collect.as_probes`, :func:`revlens.model.as_model`);
these aliases name the forms each accepts, so a signature says what it takes instead of ``Any``.
"""

import os
from collections.abc import Iterable, Mapping
from typing import Protocol, TypeAlias, runtime_checkable

import torch

__all__ = [
    "Device",
    "HasBridge",
    "HasModule",
    "MetricBatch",
    "ModuleLike",
    "ParamGroup",
    "ParamsInput",
    "PathLike",
    "TokenizerInput",
    "TokenizerLike",
    "WeightsSource",
]

PathLike: TypeAlias = str | os.PathLike
"""A file or folder: a ``str`` or any ``os.PathLike`` (``pathlib.Path``)."""

Device: TypeAlias = str | int | torch.device
"""Where a model runs: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a CUDA index or a ``torch.device``."""


@runtime_checkable
class TokenizerLike(Protocol):
    """What revlens needs of a tokenizer at the least (a Hugging Face tokenizer has it; so do the
    stand-ins for token-id probes): its vocabulary."""

    def get_vocab(self) -> dict[str, int]:
        """Token string -> id."""


TokenizerInput: TypeAlias = TokenizerLike | str | os.PathLike
"""A tokenizer, or the folder / hub name of one (``AutoTokenizer.from_pretrained``)."""


@runtime_checkable
class MetricBatch(Protocol):
    """What a metric reads of a batch of right-padded prompts: its token ids ``tokens``
    ``[batch, pos]`` and each prompt's last real token ``last_index`` ``[batch]``
    (:class:`revlens.probes.ProbeBatch`, the lab's ``PromptBatch``)."""

    tokens: torch.Tensor
    last_index: torch.Tensor


@runtime_checkable
class HasBridge(Protocol):
    """An object holding a booted ``TransformerBridge`` (a :class:`revlens.LensModel`)."""

    bridge: torch.nn.Module


@runtime_checkable
class HasModule(Protocol):
    """An object wrapping a model it exposes as ``module`` (a :class:`revlens.sites.SiteAccess`)."""

    module: torch.nn.Module


ModuleLike: TypeAlias = torch.nn.Module | HasBridge | HasModule
"""A model in memory: a ``torch.nn.Module`` (a ``TransformerBridge``, a Hugging Face model), a
:class:`revlens.LensModel` or a :class:`revlens.sites.SiteAccess`."""


ParamGroup: TypeAlias = Mapping[str, object]
"""An optimizer parameter group: ``{"params": [...], ...}`` (``torch.optim.Optimizer.param_groups``)."""

ParamsInput: TypeAlias = torch.Tensor | ParamGroup | Iterable[torch.Tensor | ParamGroup]
"""Parameters to act on: a tensor, a parameter group, or an iterable of either (``model.parameters()``,
``optimizer.param_groups``)."""

WeightsSource: TypeAlias = str | os.PathLike | Mapping[str, torch.Tensor] | torch.nn.Module
"""Where weights are read from: a ``save_pretrained`` / adapter folder or a weights file, an
in-memory state dict, or a module (its ``state_dict()``)."""
