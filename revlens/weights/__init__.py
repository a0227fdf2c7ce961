"""Weight-space reversion: the history read from the weights, with no forward pass.

Per module, ``V = W_aligned − W_base`` is what alignment moved and ``ΔW_t = W_t − W_start`` what
fine-tuning moved (from aligned; from base for control runs). :func:`weight_reversion` streams a
history's checkpoints (full weights and PEFT LoRA adapters, the latter in factor form) one module at
a time and measures cos(ΔW, −V), the reverted fraction −⟨ΔW, V⟩/‖V‖² and the share of ‖ΔW‖² in V's
top-k singular subspaces, each beside its exact and random-subspace nulls (:mod:`revlens.weights.nulls`).
:class:`WeightBlocker` keeps updates off (or on) those subspaces while a model trains, with true
projectors (:mod:`revlens.weights.projector`). ``WeightBlockerCallback`` (a ``transformers``
``TrainerCallback``) is imported lazily.
"""

from typing import Any

from revlens.weights.config import WeightsConfig
from revlens.weights.report import WeightReport

__all__ = [
    "WeightBlocker",
    "WeightBlockerCallback",
    "WeightBlockerConfig",
    "WeightReport",
    "WeightsConfig",
    "safelora_projection",
    "subspace_projector",
    "weight_reversion",
]

_LAZY = {
    "weight_reversion": "revlens.weights.stream",
    "WeightBlocker": "revlens.weights.blocker",
    "WeightBlockerConfig": "revlens.weights.blocker",
    "WeightBlockerCallback": "revlens.weights.trainer",
    "subspace_projector": "revlens.weights.projector",
    "safelora_projection": "revlens.weights.projector",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'revlens.weights' has no attribute {name!r}")
