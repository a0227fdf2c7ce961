"""What a blocker attaches to: the parameters it corrects (what is trained, optionally narrowed by
name or by hand) and the optimizer step it wraps.

The blocker's per-layer gradients (:class:`~revlens.block.projection.Jacobian`) are stored at the
size of these parameters only, so restricting them to what is trained — the LoRA factors of a
PEFT model (the only parameters with ``requires_grad``), or the groups a user names — is what
keeps blocking within a fraction of one model copy (``docs/scale.md``, "Blocking cost").
"""

import types
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatchcase
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from revlens._types import ParamsInput
from revlens.errors import ConfigError

__all__ = ["Stepped", "named_steps", "trained_parameters", "wrapped_step"]


@runtime_checkable
class Stepped(Protocol):
    """What runs around an optimizer step (a :class:`~revlens.block.strategy.BlockingStrategy`)."""

    def before_step(self) -> None:
        """Before ``optimizer.step()``."""

    def after_step(self) -> None:
        """After ``optimizer.step()``."""


def _flatten(params: ParamsInput) -> list[Tensor]:
    """Tensors from an iterable of tensors and/or optimizer param-group dicts (``{"params": [...]}``)."""
    if isinstance(params, (Tensor, dict)):
        params = [params]
    out: list[Tensor] = []
    for item in params:
        if isinstance(item, dict):
            out.extend(_flatten(item.get("params", [])))
        elif isinstance(item, Tensor):
            out.append(item)
        else:
            raise ConfigError(
                f"params must be tensors or optimizer param groups ({{'params': [...]}}); "
                f"got {type(item).__name__}"
            )
    return out


def trained_parameters(
    module: nn.Module,
    trainable: list[nn.Parameter],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    params: ParamsInput | None = None,
    patterns: Iterable[str] = (),
) -> list[nn.Parameter]:
    """The parameters to correct, in module order, unique.

    Args:
        module: the trained model (its ``named_parameters`` give the names ``patterns`` match).
        trainable: its parameters with ``requires_grad`` (frozen weights are never corrected).
        optimizer: when given, only parameters it steps.
        params: explicit tensors or optimizer param groups (default: all of the above).
        patterns: ``fnmatch`` patterns of parameter names (e.g. ``"*lora_*"``); a parameter is kept
            when any pattern matches.

    Raises:
        ConfigError: a pattern matches no trainable parameter, an explicit tensor is not a trainable
            parameter of the model, or nothing is left.
    """
    keep = {id(p) for p in trainable}
    if optimizer is not None:
        keep &= {id(p) for g in optimizer.param_groups for p in g["params"]}
        if not keep:
            raise ConfigError("no trainable parameter of the model is in the optimizer")
    if params is not None:
        given = _flatten(params)
        stray = [p for p in given if id(p) not in keep]
        if stray:
            raise ConfigError(
                f"params: {len(stray)} of the {len(given)} tensors given are not trainable parameters "
                "of the model (in the optimizer, with requires_grad)"
            )
        keep &= {id(p) for p in given}
    patterns = tuple(patterns)
    if patterns:
        names = [(n, p) for n, p in module.named_parameters() if id(p) in keep]
        for pat in patterns:
            if not any(fnmatchcase(n, pat) for n, _ in names):
                sample = ", ".join(n for n, _ in names[:4])
                raise ConfigError(
                    f"params pattern {pat!r} matches no trainable parameter; names look like: {sample}"
                )
        keep = {id(p) for n, p in names if any(fnmatchcase(n, pat) for pat in patterns)}
    out = [p for p in trainable if id(p) in keep]
    if not out:
        raise ConfigError("no trainable parameter of the model is in the optimizer")
    return out


@contextmanager
def wrapped_step(
    optimizer: torch.optim.Optimizer, before: Callable[[], None], after: Callable[[], None]
) -> Iterator[None]:
    """``optimizer.step`` calls ``before()`` and ``after()`` around itself; restored on exit (also
    when a scheduler wrapped it meanwhile: the instance attribute is put back as it was)."""
    had = "step" in vars(optimizer)
    previous = vars(optimizer).get("step")
    original = optimizer.step

    def step(opt: Any, *args: Any, **kwargs: Any) -> Any:
        before()
        out = original(*args, **kwargs)
        after()
        return out

    optimizer.step = types.MethodType(step, optimizer)
    try:
        yield
    finally:
        if had:
            optimizer.step = previous
        else:
            del optimizer.step


def named_steps(blocker: Stepped) -> tuple[Callable[[], None], Callable[[], None]]:
    """``blocker.before_step`` / ``after_step`` whose errors name the training step, the layers and
    the method (an exception inside the probes' forward becomes a ``RevlensError`` saying so)."""
    from revlens.errors import naming

    def where() -> str:
        return (
            f"blocking training step {getattr(blocker, 'step_', '?')} (layers "
            f"{getattr(blocker, 'layers_', '?')}, method {getattr(blocker, 'method', '?')!r})"
        )

    def before() -> None:
        with naming(where(), "measuring the probes for"):
            blocker.before_step()

    def after() -> None:
        with naming(where(), "correcting the update of"):
            blocker.after_step()

    return before, after
