"""The step protocol every training-time defense implements, and its typed measurement records.

A **blocking strategy** is an object that changes how a model fine-tunes. It knows nothing of the
loop that trains the model: a plain PyTorch loop (:meth:`BlockingStrategy.attach` wraps
``optimizer.step``), a Hugging Face ``Trainer`` / TRL ``SFTTrainer`` (one callback for every
strategy, :mod:`revlens.block.trainer`) or a caller that calls the steps by hand all drive it
through the same five calls:

==================  ===================================================================================
``prepare(model,    validate against the model and set every fitted attribute (names end in ``_``:
optimizer=,         the corrected parameters ``params_``, the step counter ``step_``, the records
params=)``          ``records_``...). ``__init__`` only stores (and validates) settings; any step
                    before ``prepare`` raises :class:`~revlens.errors.NotFittedError`.
``install(stack)``  enter what stays in place while attached (forward hooks) on an ``ExitStack``;
                    left on detach, also when training raises.
``before_step()``   just before ``optimizer.step()``, gradients computed: edit ``.grad`` (gradient
                    projection), or add a penalty's gradient to ``.grad`` (a regulariser's loss
                    term, without touching the loss), or note the weights before the step.
``after_step()``    just after ``optimizer.step()``: edit the update or the weights (update
                    projection, restoring terms, projecting onto a subspace, restoring frozen
                    weights); increments ``step_``.
``finish()``        once after the last step, when training ended normally (post-hoc defenses
                    rewrite the fine-tuned weights here); not called when training raised.
==================  ===================================================================================

:meth:`~BlockingStrategy.measurements` returns the last step's :class:`Measurement` records (typed:
step, quantity, layer, value...); the Trainer callback logs them under ``revlens/<log_name>``.

A new method is one subclass registered once (:func:`revlens.block.registry.register`); see
``docs/architecture.md`` ("Blocking strategies") for what SafeLoRA-, AsFT- and freeze-like
defenses implement.
"""

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import pandas as pd
import torch

from revlens._types import ModuleLike, ParamsInput
from revlens.errors import ConfigError, NotFittedError

__all__ = ["BlockingStrategy", "Measurement", "records_frame"]

S = TypeVar("S", bound="BlockingStrategy")


@dataclass(frozen=True)
class Measurement:
    """One measured quantity of a blocking strategy at one optimizer step.

    Attributes:
        step: the strategy's step counter when it was measured (0 = the first optimizer step).
        quantity: what was measured (``"s"``: the blocked coordinate; ``"active_rows"``...).
        value: its value (NaN where it is not tracked).
        layer: the revlens layer it belongs to, or ``None`` (a whole-model quantity).
        source: the strategy family (``"block"``, ``"weights"``...): the log name's prefix.
        measured: ``False`` when the value is a first-order prediction between measurements.
        logged: whether the Trainer callback logs it.
    """

    step: int
    quantity: str
    value: float
    layer: int | None = None
    source: str = "block"
    measured: bool = True
    logged: bool = True

    @property
    def log_name(self) -> str:
        """The name the Trainer callback logs it under, without the ``revlens/`` prefix:
        ``<source>_<quantity>`` and ``_layer<l>`` for a per-layer quantity (``block_s_layer2``)."""
        return f"{self.source}_{self.quantity}" + (
            "" if self.layer is None else f"_layer{self.layer}"
        )


def records_frame(records: list[Measurement], quantity: str, columns: list[str]) -> pd.DataFrame:
    """The records of one quantity as a long table with ``columns`` (``step``, ``layer``,
    ``measured`` are record fields; the quantity's own column is its ``value``)."""
    rows = [
        {c: (r.value if c == quantity else getattr(r, c)) for c in columns}
        for r in records
        if r.quantity == quantity
    ]
    return pd.DataFrame(rows, columns=columns)


class BlockingStrategy:
    """Base of every training-time defense (module docstring: the protocol).

    Subclasses implement :meth:`prepare` (ending with :meth:`_start`) and whichever of
    :meth:`install`, :meth:`before_step`, :meth:`after_step`, :meth:`finish` they need, calling
    ``super()`` for the bookkeeping; they record what they measure with :meth:`_record`.

    Class attributes:
        method: the registered name (set by :func:`~revlens.block.registry.register`).
        source: the prefix of its log names (``"block"``).
        acts_on_step: whether it acts around the optimizer step (``False``: only through
            :meth:`install`, e.g. forward hooks; then ``attach`` wraps nothing).
    """

    method: ClassVar[str] = ""
    source: ClassVar[str] = "block"
    acts_on_step: ClassVar[bool] = True

    _stack: ExitStack | None = None  # the attachment (hooks, wrapped step); not fitted state

    # ------------------------------------------------------------------ the protocol
    def prepare(
        self: S,
        model: ModuleLike,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        params: ParamsInput | None = None,
    ) -> S:
        """Validate against ``model`` and set the fitted state (``optimizer`` / ``params``:
        what is trained and may be corrected). Subclasses end with :meth:`_start`."""
        raise NotImplementedError

    def install(self, stack: ExitStack) -> None:
        """Enter what must stay in place while attached (e.g. forward hooks) on ``stack``."""

    def before_step(self) -> None:
        """Called just before ``optimizer.step()``."""
        self._check()

    def after_step(self) -> None:
        """Called just after ``optimizer.step()``; counts the step."""
        self._check()
        self.step_ += 1

    def finish(self) -> None:
        """Called once after the last step of a training run that ended normally."""
        self._check()

    def measurements(self) -> list[Measurement]:
        """The records of the last step that recorded anything (what the Trainer callback logs)."""
        if not self.is_fitted or not self.records_:
            return []
        last = self.records_[-1].step
        out = []
        for r in reversed(self.records_):
            if r.step != last:
                break
            out.append(r)
        return out[::-1]

    # ------------------------------------------------------------------ shared machinery
    def _start(self) -> None:
        """Reset the per-run state: called at the end of :meth:`prepare`."""
        self.step_ = 0
        self.records_: list[Measurement] = []

    def _record(
        self,
        quantity: str,
        value: float,
        *,
        layer: int | None = None,
        measured: bool = True,
        logged: bool = True,
    ) -> None:
        """Append a :class:`Measurement` at the current step."""
        self.records_.append(
            Measurement(
                self.step_,
                quantity,
                float(value),
                None if layer is None else int(layer),
                self.source,
                measured,
                logged,
            )
        )

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`prepare` has run."""
        return "step_" in vars(self)

    def _check(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"this {type(self).__name__} is not attached; call attach(model, optimizer) "
                "or prepare(model)"
            )

    # ------------------------------------------------------------------ attach / detach
    def attach(
        self: S,
        model: ModuleLike,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        wrap_step: bool = True,
        params: ParamsInput | None = None,
    ) -> S:
        """Start on ``model``: :meth:`prepare`, :meth:`install`, and wrap ``optimizer.step`` so that
        :meth:`before_step` / :meth:`after_step` run around it. ``wrap_step=False``: nothing is
        wrapped, call them yourself (the Trainer callback does). ``params``: the tensors (or
        optimizer param groups) to correct, a subset of what trains. Undo with :meth:`detach`
        (or use :meth:`attached`)."""
        from revlens.block.attach import named_steps, wrapped_step

        self.detach()
        if optimizer is None and wrap_step and self.acts_on_step:
            raise ConfigError(
                f"{type(self).__name__} (method {self.method!r}) acts on the optimizer step: attach(model, optimizer), "
                "or attach(model, wrap_step=False) and call before_step()/after_step() around it yourself"
            )
        self.prepare(model, optimizer=optimizer, params=params)
        stack = ExitStack()
        try:
            self.install(stack)
            if optimizer is not None and wrap_step and self.acts_on_step:
                stack.enter_context(wrapped_step(optimizer, *named_steps(self)))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def detach(self) -> None:
        """Remove every hook and restore ``optimizer.step`` (safe to call twice)."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    @property
    def is_attached(self) -> bool:
        """Whether hooks or a wrapped step are in place."""
        return self._stack is not None

    @contextmanager
    def attached(
        self: S, model: ModuleLike, optimizer: torch.optim.Optimizer | None = None
    ) -> Iterator[S]:
        """Context manager: :meth:`attach` on enter; on a normal exit :meth:`finish`, then
        :meth:`detach` (also on error)."""
        self.attach(model, optimizer)
        try:
            yield self
            self.finish()
        finally:
            self.detach()

    def as_trainer_callback(self) -> Any:
        """A :class:`~revlens.block.BlockingCallback` (``transformers.TrainerCallback``) for it."""
        from revlens.block.trainer import BlockingCallback

        return BlockingCallback(self)
