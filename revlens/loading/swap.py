"""Execute a :class:`~revlens.loading.plan.Plan`: stream tensors into the model, in place.

One entry at a time: a plain entry reads one tensor and ``copy_``-s it into the parameter (the
copy casts to the parameter's dtype and moves it to its device); a converter group reads its
keys (e.g. one layer's experts), runs transformers' converter and copies each output. Peak
extra memory is one tensor, or one converter group and its output.
"""

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor

from revlens.errors import NonFiniteError
from revlens.loading.plan import Entry, Plan
from revlens.loading.sources import TensorSource
from revlens.loading.targets import Targets

__all__ = ["check_finite", "copy_checked", "execute"]


def check_finite(
    value: Tensor, *, checkpoint: str, name: str, fits: torch.dtype | None = None
) -> None:
    """Raise :class:`NonFiniteError` naming ``checkpoint`` and ``name`` if ``value`` holds NaN/inf,
    or (with ``fits``) values that overflow that narrower float dtype (e.g. float32 -> float16).

    One ``aminmax`` reduction (NaN propagates into it): no temporary the size of ``value``.
    """
    if not value.is_floating_point() or value.numel() == 0:
        return
    lo, hi = (float(v) for v in torch.aminmax(value))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise NonFiniteError(f"checkpoint {checkpoint}: parameter {name!r} holds NaN or inf")
    if fits is not None and fits.is_floating_point:
        limit = torch.finfo(fits).max
        if limit < torch.finfo(value.dtype).max and (hi > limit or lo < -limit):
            raise NonFiniteError(
                f"checkpoint {checkpoint}: parameter {name!r} overflows {fits} (range [{lo:.4g}, {hi:.4g}])"
            )


@torch.no_grad()
def copy_checked(dst: Tensor, value: Tensor, *, checkpoint: str, name: str) -> None:
    """Validate ``value`` (finite, fits ``dst``'s dtype) then copy it into ``dst`` in place."""
    check_finite(value, checkpoint=checkpoint, name=name, fits=dst.dtype)
    if value.data_ptr() != dst.data_ptr() or value.dtype != dst.dtype or value.shape != dst.shape:
        dst.copy_(value)  # (a source that read straight into dst only needed the check)


def _convert(
    entry: Entry, source: TensorSource, targets: Targets, model: torch.nn.Module
) -> dict[str, Tensor]:
    first = targets.get(entry.targets[0])
    conv = copy.deepcopy(entry.converter)

    def reader(key: str) -> Callable[[], Tensor]:
        # Cast before the converter's ops, as from_pretrained does (so fused values round alike).
        return lambda: source.read(key).to(dtype=first.dtype)

    for key, pattern in zip(entry.keys, entry.patterns):
        conv.add_tensor(entry.targets[0], key, pattern, reader(key))
    out = conv.convert(entry.targets[0], model=model, config=getattr(model, "config", None))
    return {name: (t[0] if isinstance(t, list) else t) for name, t in out.items()}


def _write(
    entry: Entry, source: TensorSource, targets: Targets, model: torch.nn.Module
) -> list[str]:
    """Read, convert and copy one entry; its tensors are freed when this returns."""
    if entry.converter is None:
        name = entry.targets[0]
        source.copy_into(
            entry.keys[0],
            targets.get(name),
            lambda dst, value: copy_checked(dst, value, checkpoint=source.name, name=name),
        )
        return [name]
    values = _convert(entry, source, targets, model)
    for name, value in values.items():
        copy_checked(targets.get(name), value, checkpoint=source.name, name=name)
    return list(values)


@torch.no_grad()
def execute(
    plan: Plan, source: TensorSource, targets: Targets, model: torch.nn.Module
) -> list[str]:
    """Copy every entry of ``plan`` from ``source`` into ``targets``; returns the names written.

    Raises:
        NonFiniteError: a tensor holds NaN/inf or overflows the parameter's dtype. Entries before
            it have been written by then (the caller restores, see ``Swapper``).
        CheckpointError: a tensor cannot be read.
    """
    written: list[str] = []
    for entry in plan.entries:
        written += _write(entry, source, targets, model)
    return written
