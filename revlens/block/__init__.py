"""Block reversion while fine-tuning: :class:`ReversionBlocker` (settings:
:class:`BlockerConfig`) and its Hugging Face ``Trainer`` integration (:class:`BlockingTrainer`,
:class:`ReversionBlockerCallback`, imported lazily: ``import revlens.block`` does not import
``transformers.Trainer``). A new blocking method goes into :data:`revlens.modes.BlockMethod`
and :class:`ReversionBlocker`'s ``before_step`` / ``after_step``."""

from typing import Any

from revlens.block.blocker import METHODS, ReversionBlocker
from revlens.block.config import BlockerConfig

__all__ = ["METHODS", "BlockerConfig", "BlockingTrainer", "ReversionBlocker", "ReversionBlockerCallback"]


def __getattr__(name: str) -> Any:
    if name in ("BlockingTrainer", "ReversionBlockerCallback"):
        from revlens.block import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'revlens.block' has no attribute {name!r}")
