"""The boundary of every entry point that takes a history: a history and a model argument are
converted here, once, where they enter (:func:`as_history`, :func:`as_model`); the stages inside
take the typed objects. Probes: :func:`revlens.collect.as_probes` (it needs the history's default set
and chat template)."""

import os
import warnings
from collections.abc import Mapping
from typing import Any, TypeAlias, no_type_check

import torch

from revlens._types import Device, PathLike
from revlens.errors import ConfigError
from revlens.history.history import History
from revlens.model import LensModel, ModelInput
from revlens.probes import Probes, ProbesInput

__all__ = ["HistoryInput", "as_history", "as_model", "model_first_call"]

HistoryInput: TypeAlias = History | PathLike | Mapping[str, Any]
"""What :func:`as_history` accepts: a :class:`History`, a ``history.json`` / ``histories.json`` or a
folder holding one (a lab dir), a folder of ``base/``, ``aligned/`` and run sub-folders, or a mapping
with ``base`` / ``aligned`` / ``runs``."""


@no_type_check  # validates its own argument (typed errors), also under the test type-checker
def as_history(history: HistoryInput, *, name: str | None = None) -> History:
    """A history argument as a :class:`History` (:meth:`History.load`; a History is returned as is).

    Raises:
        HistoryError: anything that is not a history (named)."""
    return (
        history
        if isinstance(history, History) and name is None
        else History.load(history, name=name)
    )


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def as_model(
    model: ModelInput | None,
    history: History | None = None,
    *,
    device: Device | None = None,
    dtype: torch.dtype | None = None,
) -> LensModel:
    """A model argument as a :class:`LensModel`: with a ``history``, :meth:`LensModel.for_history`
    (``None`` boots the history's architecture; the architecture is checked against the history's);
    without, :meth:`LensModel.boot`.

    Raises:
        ConfigError: ``model`` runs on another device or dtype than asked.
        ShapeMismatchError: another architecture than the history's."""
    if history is not None:
        return LensModel.for_history(history, model, device=device, dtype=dtype)
    return LensModel.boot(model, device=device, dtype=dtype or torch.float32)


def _is_model(x: object) -> bool:
    """A model object (a ``LensModel``, a bridge or a Hugging Face model) — by type, never by the filesystem."""
    return isinstance(x, (LensModel, torch.nn.Module))


def _is_probes(x: object) -> bool:
    """A probe set by its form: a :class:`Probes`, a list / tuple of prompts, or a ``.jsonl`` file."""
    return isinstance(x, (Probes, list, tuple)) or (
        isinstance(x, (str, os.PathLike)) and str(x).endswith(".jsonl")
    )


@no_type_check  # tells the call form by the arguments' types (typed errors), also under the test type-checker
def model_first_call(
    where: str,
    history: HistoryInput | ModelInput | None,
    probes: ProbesInput | HistoryInput | None,
    legacy: tuple[Any, ...],
    model: ModelInput | None,
    checkpoints: HistoryInput | None,
) -> tuple[Any, Any, Any]:
    """``(model, history, probes)`` of an entry point called ``where(history, probes, *legacy, model=...,
    checkpoints=...)``, decided by the arguments' types — never by what is on disk. The form is
    ``where(history, probes, model=...)``; the old positional form ``where(model, history[, probes])``
    (a model object first, ``None`` first, a third positional argument, ``checkpoints=``, or a path
    first and a history second) still works for one release, with a ``DeprecationWarning``.

    Raises:
        ConfigError: too many positional arguments, or a model both first and as ``model=``."""
    if len(legacy) > 1:
        raise ConfigError(
            f"{where} takes (history, probes) positionally; got {2 + len(legacy)} positional arguments"
        )
    old = (
        checkpoints is not None
        or bool(legacy)
        or history is None
        or _is_model(history)
        or (
            isinstance(history, (str, os.PathLike))
            and probes is not None
            and not _is_probes(probes)
        )
    )
    if not old:
        return model, history, probes
    if model is not None:
        raise ConfigError(
            f"{where}: model= is given and so is a model in the first position; pass the history "
            f"first: {where}(history, probes, model=model)"
        )
    if checkpoints is not None:  # where(model, checkpoints=history[, probes])
        held, hist, pr = (
            history,
            checkpoints,
            probes if probes is not None else (legacy[0] if legacy else None),
        )
    else:  # where(model, history[, probes])
        held, hist, pr = history, probes, legacy[0] if legacy else None
    warnings.warn(
        f"{where}(model, history, probes) is deprecated: call {where}(history, probes, model=model) (or "
        f"{where}(history, probes) to boot the history's architecture)",
        DeprecationWarning,
        stacklevel=3,
    )
    return held, hist, pr
