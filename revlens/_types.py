"""Type aliases of what the public API accepts at its boundary (stage 0: no revlens import).

Inputs are converted once, where they enter, by the stage that owns them
(:func:`revlens.history.as_history`, :func:`revlens.collect.as_probes`, :func:`revlens.model.as_model`);
these aliases name the forms each accepts, so a signature says what it takes instead of ``Any``.
"""

import os
from typing import TypeAlias

import torch

__all__ = ["Device", "PathLike"]

PathLike: TypeAlias = str | os.PathLike
"""A file or folder: a ``str`` or any ``os.PathLike`` (``pathlib.Path``)."""

Device: TypeAlias = str | int | torch.device
"""Where a model runs: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a CUDA index or a ``torch.device``."""
