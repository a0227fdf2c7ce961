"""Block reversion while fine-tuning: :class:`ReversionBlocker` (settings:
:class:`BlockerConfig`) and its Hugging Face ``Trainer`` integration (:class:`BlockingTrainer`,
:class:`ReversionBlockerCallback`, :func:`add_to_trainer` for a built trainer such as TRL's
``SFTTrainer``; imported lazily: ``import revlens.block`` does not import
``transformers.Trainer``). A new blocking method goes into :data:`revlens.modes.BlockMethod`
and :class:`ReversionBlocker`'s ``before_step`` / ``after_step``."""

from typing import Any

from revlens.block.blocker import METHODS, ReversionBlocker
from revlens.block.config import BlockerConfig

__all__ = ["METHODS", "BlockerConfig", "BlockingTrainer", "ReversionBlocker", "ReversionBlockerCallback",
           "add_to_trainer"]


def __getattr__(name: str) -> Any:
    if name in ("BlockingTrainer", "ReversionBlockerCallback", "add_to_trainer"):
        from revlens.block import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'revlens.block' has no attribute {name!r}")
