"""Hugging Face ``Trainer`` integration of :class:`~revlens.weights.WeightBlocker`.

``Trainer(..., callbacks=[WeightBlockerCallback(blocker)])`` attaches on ``on_train_begin``
(to the Trainer's model, a PEFT model included, and its optimizer), projects after every
optimizer step (``on_optimizer_step``) and detaches on ``on_train_end``. Nothing is wrapped, so a
Trainer that raises leaves nothing behind.
"""

from typing import Any

from transformers import TrainerCallback

from revlens.weights.blocker import WeightBlocker

__all__ = ["WeightBlockerCallback"]


class WeightBlockerCallback(TrainerCallback):
    """A ``transformers.TrainerCallback`` running a :class:`WeightBlocker` inside ``Trainer.train``."""

    def __init__(self, blocker: WeightBlocker) -> None:
        self.blocker = blocker

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        """Read V and build the projectors for the Trainer's model (the reference is its weights now)."""
        self.blocker.attach(model, optimizer, wrap_step=False)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Project the weights (or LoRA factors) the optimizer just changed."""
        self.blocker.after_step()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Nothing is wrapped; kept for symmetry with the activation-space callback."""
        self.blocker.detach()
