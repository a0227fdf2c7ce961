"""Hugging Face ``Trainer`` integration of :class:`~revlens.block.ReversionBlocker` (and the
shared logging of the monitor's callback). Works with any ``Trainer`` subclass, TRL's
``SFTTrainer`` included (tested: trl 1.16, PEFT LoRA).

Three ways, same blocking:

- ``Trainer(..., callbacks=[ReversionBlockerCallback(blocker)])`` (or
  ``blocker.as_trainer_callback()``): the callback attaches on ``on_train_begin`` and acts on
  ``on_pre_optimizer_step`` / ``on_optimizer_step`` (the optimizer's ``step`` is not wrapped), and
  detaches on ``on_train_end``. A ``Trainer`` that raises never calls ``on_train_end``:
  ``"hook"``-method hooks would stay until ``blocker.detach()``.
- ``add_to_trainer(trainer, blocker, monitor)``: the same callbacks on a built trainer (e.g. an
  ``SFTTrainer``), placed **first** so that the logging integrations (W&B, TensorBoard...) see
  their measurements (below).
- ``BlockingTrainer(blocker=blocker, ...)``: a ``Trainer`` that adds the callback and detaches
  in ``finally`` even when training raises.

**Logging.** Whenever the trainer logs (``logging_steps``), the callbacks add their latest
measurements to the log: the blocker ``revlens/block_s_layer{l}`` (``s_l`` along the first basis
row before the last step, see :attr:`ReversionBlocker.history_`) and ``revlens/block_active_rows``;
the monitor (which also makes the trainer log at each of its checks) ``revlens/cos_layer{l}``,
``revlens/proj_layer{l}``, ``revlens/null_p99`` and ``revlens/alerts``. They land in
``trainer.state.log_history`` and in the ``logs`` every later callback receives: callbacks the
trainer runs *before* ours (its report_to integrations, when ours are passed as ``callbacks=``)
do not see them, hence :func:`add_to_trainer`.

``"penalty"`` needs no ``compute_loss`` override: its gradient is added to ``.grad`` before the
optimizer step (gradient clipping, done earlier by the Trainer, does not see it).
"""

from typing import Any

from transformers import Trainer, TrainerCallback

from revlens.block.attach import named_steps
from revlens.block.blocker import ReversionBlocker

__all__ = ["BlockingTrainer", "LoggingCallback", "ReversionBlockerCallback", "add_to_trainer"]

PREFIX = "revlens/"


class LoggingCallback(TrainerCallback):
    """A callback whose measurements go into the Trainer's logs: subclasses fill :attr:`pending`
    (``name -> float``, without the ``revlens/`` prefix); ``on_log`` adds them to the logs and to
    the ``state.log_history`` entry just written, then clears them."""

    def __init__(self) -> None:
        self.pending: dict[str, float] = {}

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        """Add the pending measurements to this log."""
        if not self.pending or logs is None:
            return
        values = {PREFIX + k: float(v) for k, v in self.pending.items()}
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)
        self.pending = {}


class ReversionBlockerCallback(LoggingCallback):
    """A ``transformers.TrainerCallback`` running a :class:`ReversionBlocker` inside ``Trainer.train``
    and logging its ``s_l`` (module docstring)."""

    def __init__(self, blocker: ReversionBlocker) -> None:
        super().__init__()
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
        named_steps(self.blocker)[0]()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Project the update and restore ``s`` (update method); note what to log."""
        named_steps(self.blocker)[1]()
        self.pending = self.blocker.measurements()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Remove hooks."""
        self.blocker.detach()


def add_to_trainer(trainer: Any, *tools: Any) -> list[TrainerCallback]:
    """Add the callbacks of ``tools`` (a :class:`ReversionBlocker`, a
    :class:`~revlens.monitor.ReversionMonitor`, anything with ``as_trainer_callback()``) to a built
    ``trainer`` (``Trainer``, TRL's ``SFTTrainer``...), ahead of its other callbacks so that its
    logging integrations receive their measurements. Returns the callbacks."""
    callbacks = [t.as_trainer_callback() for t in tools]
    handler = trainer.callback_handler
    for cb in reversed(callbacks):
        handler.callbacks.insert(0, cb)
    return callbacks


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
        add_to_trainer(self, blocker)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``, detaching the blocker in ``finally``."""
        try:
            return super().train(*args, **kwargs)
        finally:
            self.blocker.detach()
