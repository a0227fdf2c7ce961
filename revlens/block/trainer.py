"""Hugging Face ``Trainer`` integration of :class:`~revlens.block.ReversionBlocker`.

Two ways, same effect:

- ``Trainer(..., callbacks=[ReversionBlockerCallback(blocker)])``: the callback attaches on
  ``on_train_begin`` and acts on ``on_pre_optimizer_step`` / ``on_optimizer_step`` (the
  optimizer's ``step`` is not wrapped), and detaches on ``on_train_end``. A ``Trainer`` that
  raises never calls ``on_train_end``: ``"hook"``-method hooks would stay until
  ``blocker.detach()``.
- ``BlockingTrainer(blocker=blocker, ...)``: a ``Trainer`` that adds the callback and detaches
  in ``finally`` even when training raises. Prefer it.

``"penalty"`` needs no ``compute_loss`` override: its gradient is added to ``.grad`` before the
optimizer step (gradient clipping, done earlier by the Trainer, does not see it).
"""

from typing import Any

from transformers import Trainer, TrainerCallback

from revlens.block.blocker import ReversionBlocker

__all__ = ["BlockingTrainer", "ReversionBlockerCallback"]


class ReversionBlockerCallback(TrainerCallback):
    """A ``transformers.TrainerCallback`` running a :class:`ReversionBlocker` inside ``Trainer.train``."""

    def __init__(self, blocker: ReversionBlocker) -> None:
        self.blocker = blocker

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        """Attach to the Trainer's model and optimizer (no step wrapping)."""
        self.blocker.attach(model, optimizer, wrap_step=False)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Measure ``s`` and the per-layer gradients; project the gradient / add the penalty."""
        self.blocker.before_step()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Project the update and restore ``s`` (update method)."""
        self.blocker.after_step()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Remove hooks."""
        self.blocker.detach()


class BlockingTrainer(Trainer):
    """A ``transformers.Trainer`` that blocks reversion while it trains.

    Args:
        blocker: the :class:`ReversionBlocker`; every other argument goes to ``Trainer``.

    Example:
        >>> trainer = BlockingTrainer(blocker=ReversionBlocker(v, probes, aligned_dir),  # doctest: +SKIP
        ...                           model=model, args=args, train_dataset=ds)
        >>> trainer.train()                                                               # doctest: +SKIP
    """

    def __init__(self, *args: Any, blocker: ReversionBlocker, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.blocker = blocker
        self.add_callback(ReversionBlockerCallback(blocker))

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``, detaching the blocker in ``finally``."""
        try:
            return super().train(*args, **kwargs)
        finally:
            self.blocker.detach()
