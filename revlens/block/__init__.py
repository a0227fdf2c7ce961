"""Block reversion while fine-tuning: :class:`ReversionBlocker`, its Trainer integration, and
blocked runs in a reversion lab (:func:`run_blocked`)."""

from revlens.block.blocker import METHODS, ReversionBlocker
from revlens.block.lab_runs import run_blocked
from revlens.block.trainer import BlockingTrainer, ReversionBlockerCallback

__all__ = [
    "METHODS",
    "BlockingTrainer",
    "ReversionBlocker",
    "ReversionBlockerCallback",
    "run_blocked",
]
