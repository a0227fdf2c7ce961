"""Hugging Face ``Trainer`` integration of every blocking strategy
(:class:`~revlens.block.strategy.BlockingStrategy`: :class:`~revlens.block.ReversionBlocker`'s
methods, :class:`~revlens.weights.WeightBlocker`, a user's registered method), and the shared
logging of the monitor's callback. Works with any ``Trainer`` subclass, TRL's ``SFTTrainer``
included (tested: trl 1.16, PEFT LoRA).

Three ways, same blocking, one callback class (:class:`BlockingCallback`) for every strategy:

- ``Trainer(..., callbacks=[BlockingCallback(strategy)])`` (or ``strategy.as_trainer_callback()``):
  the callback attaches on ``on_train_begin`` and calls the step protocol on
  ``on_pre_optimizer_step`` (``before_step``) / ``on_optimizer_step`` (``after_step``) (the
  optimizer's ``step`` is not wrapped), and ``finish`` then ``detach`` on ``on_train_end``. A
  ``Trainer`` that raises never calls ``on_train_end``: hooks (``"hook"`` method) would stay until
  ``strategy.detach()``.
- ``add_to_trainer(trainer, blocker, monitor)``: the same callbacks on a built trainer (e.g. an
  ``SFTTrainer``), placed **first** so that the logging integrations (W&B, TensorBoard...) see
  their measurements (below).
- ``BlockingTrainer(blocker=strategy, ...)`` (or a list of strategies): a ``Trainer`` that adds the
  callbacks and detaches in ``finally`` even when training raises.

**Logging.** Whenever the trainer logs (``logging_steps``), the callbacks add their latest
measurements to the log: each strategy's last-step :class:`~revlens.block.strategy.Measurement`
records under ``revlens/<log_name>`` — the activation blocker ``revlens/block_s_layer{l}``
(``s_l`` along the first basis row before the last step, see :attr:`ReversionBlocker.history_`) and
``revlens/block_active_rows``, the weight blocker ``revlens/weights_removed`` and
``revlens/weights_update_norm``;
the monitor (which also makes the trainer log at each of its checks) ``revlens/cos_layer{l}``,
``revlens/proj_layer{l}``, ``revlens/null_p99`` and ``revlens/alerts``. They land in
``trainer.state.log_history`` and in the ``logs`` every later callback receives: callbacks the
trainer runs *before* ours (its report_to integrations, when ours are passed as ``callbacks=``)
do not see them, hence :func:`add_to_trainer`.

``"penalty"`` needs no ``compute_loss`` override: its gradient is added to ``.grad`` before the
optimizer step (gradient clipping, done earlier by the Trainer, does not see it).
"""

from collections.abc import Sequence
from typing import Any, Protocol, no_type_check, runtime_checkable

import torch
from transformers import (
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from revlens._types import ModuleLike
from revlens.block.attach import named_steps
from revlens.block.strategy import BlockingStrategy
from revlens.errors import ConfigError

__all__ = [
    "BlockingCallback",
    "BlockingTrainer",
    "HasTrainerCallback",
    "LoggingCallback",
    "ReversionBlockerCallback",
    "add_to_trainer",
]

PREFIX = "revlens/"


@runtime_checkable
class HasTrainerCallback(Protocol):
    """A tool that plugs into a ``Trainer``: a blocking strategy, a monitor, anything with
    ``as_trainer_callback()``."""

    def as_trainer_callback(self) -> TrainerCallback:
        """Its callback."""


class LoggingCallback(TrainerCallback):
    """A callback whose measurements go into the Trainer's logs: subclasses fill :attr:`pending`
    (``name -> float``, without the ``revlens/`` prefix); ``on_log`` adds them to the logs and to
    the ``state.log_history`` entry just written, then clears them."""

    def __init__(self) -> None:
        self.pending: dict[str, float] = {}

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: object,
    ) -> None:
        """Add the pending measurements to this log."""
        if not self.pending or logs is None:
            return
        values = {PREFIX + k: float(v) for k, v in self.pending.items()}
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)
        self.pending = {}


class BlockingCallback(LoggingCallback):
    """A ``transformers.TrainerCallback`` running any :class:`~revlens.block.strategy.BlockingStrategy`
    inside ``Trainer.train`` and logging its measurements (module docstring)."""

    @no_type_check  # validates its own argument (a typed error), also under the test type-checker
    def __init__(self, strategy: BlockingStrategy) -> None:
        super().__init__()
        if not isinstance(strategy, BlockingStrategy):
            raise ConfigError(
                f"BlockingCallback takes a blocking strategy (ReversionBlocker, WeightBlocker, a "
                f"registered BlockingStrategy), got {type(strategy).__name__}"
            )
        self.strategy = strategy

    @property
    def blocker(self) -> BlockingStrategy:
        """The strategy (the name earlier releases used)."""
        return self.strategy

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: ModuleLike | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: object,
    ) -> None:
        """Attach to the Trainer's model and optimizer (no step wrapping)."""
        self.strategy.attach(model, optimizer, wrap_step=False)

    def on_pre_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: object,
    ) -> None:
        """``before_step``: e.g. measure ``s`` and the per-layer gradients, project the gradient,
        add a penalty's gradient."""
        named_steps(self.strategy)[0]()

    def on_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: object,
    ) -> None:
        """``after_step``: e.g. project the update and restore ``s``; note what to log."""
        named_steps(self.strategy)[1]()
        self.pending = {m.log_name: m.value for m in self.strategy.measurements() if m.logged}

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: object,
    ) -> None:
        """``finish`` (post-hoc defenses act here), then remove hooks."""
        try:
            self.strategy.finish()
        finally:
            self.strategy.detach()


ReversionBlockerCallback = BlockingCallback
"""The earlier name of :class:`BlockingCallback` (kept: one callback serves every strategy)."""


def add_to_trainer(trainer: Trainer, *tools: HasTrainerCallback) -> list[TrainerCallback]:
    """Add the callbacks of ``tools`` (blocking strategies — a :class:`~revlens.block.ReversionBlocker`,
    a :class:`~revlens.weights.WeightBlocker`, a registered method —, a
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
        blocker: a blocking strategy (:class:`~revlens.block.ReversionBlocker`,
            :class:`~revlens.weights.WeightBlocker`, any registered method) or a list of them, all
            acting on the same steps in the order given; every other argument goes to ``Trainer``.

    Example:
        >>> trainer = BlockingTrainer(blocker=ReversionBlocker(v, probes, aligned_dir),  # doctest: +SKIP
        ...                           model=model, args=args, train_dataset=ds)
        >>> trainer.train()                                                               # doctest: +SKIP
    """

    @no_type_check  # validates its own arguments (typed errors), also under the test type-checker
    def __init__(
        self,
        *args: object,
        blocker: BlockingStrategy | Sequence[BlockingStrategy],
        **kwargs: object,
    ) -> None:
        strategies = list(blocker) if isinstance(blocker, (list, tuple)) else [blocker]
        bad = [type(s).__name__ for s in strategies if not isinstance(s, BlockingStrategy)]
        if bad or not strategies:
            raise ConfigError(
                f"BlockingTrainer(blocker=...) takes blocking strategies, got {bad or 'none'}"
            )
        super().__init__(*args, **kwargs)
        self.blocker = blocker
        self.strategies = strategies
        add_to_trainer(self, *strategies)

    def train(self, *args: object, **kwargs: object) -> Any:
        """``Trainer.train``, detaching every strategy in ``finally``."""
        try:
            return super().train(*args, **kwargs)
        finally:
            for s in self.strategies:
                s.detach()
