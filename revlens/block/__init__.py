"""Block reversion while fine-tuning.

Every training-time defense is a :class:`BlockingStrategy` (the step protocol ``prepare`` /
``install`` / ``before_step`` / ``after_step`` / ``finish`` / ``measurements``, with typed
:class:`Measurement` records; :mod:`revlens.block.strategy`) registered once by name
(:func:`register`, :mod:`revlens.block.registry`). The activation-space methods are
:class:`ReversionBlocker` subclasses (settings: :class:`BlockerConfig`; ``ReversionBlocker(...,
method=name)`` builds the registered one; :data:`METHODS` lists them);
:class:`revlens.weights.WeightBlocker` is the weight-space one. One Hugging Face ``Trainer``
integration serves them all (:class:`BlockingCallback`, :class:`BlockingTrainer`,
:func:`add_to_trainer` for a built trainer such as TRL's ``SFTTrainer``; imported lazily:
``import revlens.block`` does not import ``transformers.Trainer``). A new blocking method is one
registered subclass (``docs/architecture.md``, "Blocking strategies").
"""

from typing import Any

from revlens.block import methods as _methods  # noqa: F401 (registers the built-in methods)
from revlens.block.blocker import METHODS, ReversionBlocker
from revlens.block.config import BlockerConfig
from revlens.block.registry import method_class, method_names, register, unregister
from revlens.block.strategy import BlockingStrategy, Measurement

__all__ = [
    "METHODS",
    "BlockerConfig",
    "BlockingCallback",
    "BlockingStrategy",
    "BlockingTrainer",
    "Measurement",
    "ReversionBlocker",
    "ReversionBlockerCallback",
    "add_to_trainer",
    "method_class",
    "method_names",
    "register",
    "unregister",
]

_TRAINER = ("BlockingCallback", "BlockingTrainer", "ReversionBlockerCallback", "add_to_trainer")


def __getattr__(name: str) -> Any:
    if name in _TRAINER:
        from revlens.block import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'revlens.block' has no attribute {name!r}")
