"""The weights a weight-space defense acts on, each with its alignment matrix ``V = W_aligned − W_base``.

A *target* is one 2-d weight of the model being fine-tuned, in the oriented ``[out, in]`` frame of
:mod:`revlens.weights.catalog`: either a PEFT LoRA pair (``ΔW = scale · B · A``, ``B [out, r]``,
``A [r, in]``) or a full weight (``ΔW = W − W_ref``, ``W_ref`` its value when the defense was
prepared). ``V`` is read tensor by tensor from the two checkpoints with
:class:`revlens.weights.readers.FullReader` (never a whole state dict).
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from revlens._seeds import generator
from revlens.block.strategy import BlockingStrategy
from revlens.errors import CheckpointError, ConfigError
from revlens.weights.catalog import Param, build_catalog

__all__ = ["Target", "check_source", "hf_model", "read_targets"]

_PEFT = "base_model.model."


@dataclass
class Target:
    """One weight a defense acts on (module docstring)."""

    name: str
    param: Param
    v: Tensor  # [out, in] float64
    lora_a: Tensor | None = None
    lora_b: Tensor | None = None
    scale: float = 1.0
    weight: Tensor | None = None
    ref: Tensor | None = None

    @property
    def layer(self) -> int:
        """The block index (``-1`` outside the blocks)."""
        return self.param.layer

    @property
    def is_lora(self) -> bool:
        """Whether it is a LoRA factor pair."""
        return self.lora_a is not None

    def delta(self) -> Tensor:
        """``ΔW`` (oriented, float64, differentiable where the model's tensors are)."""
        if self.is_lora:
            return self.scale * (self.lora_b.double() @ self.lora_a.double())
        d = self.weight.double() - self.ref.double()
        return d.T if self.param.transpose else d


def hf_model(model: Any) -> torch.nn.Module:
    """The Hugging Face module under a ``TransformerBridge`` (or ``model`` itself)."""
    return getattr(model, "original_model", model)


def check_source(value: Any, field: str) -> None:
    """Refuse a missing checkpoint before any work (:class:`CheckpointError` naming ``field``)."""
    if value is None:
        raise CheckpointError(
            f"{field}: the {field} weights are required (a dir, weight file, state dict or module)"
        )
    if isinstance(value, (str, Path)) and not Path(value).exists():
        raise CheckpointError(f"{field}={str(value)!r} does not exist")


def _lora_modules(model: torch.nn.Module) -> Iterator[tuple[str, Tensor, Tensor, float]]:
    for name, module in model.named_modules():
        if not (hasattr(module, "lora_A") and hasattr(module, "base_layer")):
            continue
        for adapter in getattr(module, "active_adapters", ["default"]):
            if adapter in module.lora_A:
                yield (
                    name.removeprefix(_PEFT) + ".weight",
                    module.lora_A[adapter].weight,
                    module.lora_B[adapter].weight,
                    float(module.scaling[adapter]),
                )


def read_targets(
    model: Any,
    base: Any,
    aligned: Any,
    params: str,
    *,
    trainable: set[int] | None = None,
    random_seed: int | None = None,
) -> list[Target]:
    """Every LoRA pair (a PEFT model) or trainable 2-d weight (full fine-tuning) of ``model`` whose
    Hugging Face name matches ``params`` (``re.search``), with its ``V``.

    ``random_seed`` (the control): ``V`` is replaced by a Gaussian matrix of the same shape and
    Frobenius norm, drawn per weight from ``(random_seed, name)``.

    Raises:
        CheckpointError: ``base`` or ``aligned`` does not hold a weight the model trains.
        ConfigError: nothing matches.
    """
    from revlens.weights.readers import FullReader

    hf = hf_model(model)
    catalog = build_catalog(hf.config)
    rx = re.compile(params)
    found: list[tuple[str, dict[str, Any]]] = []
    lora = [t for t in _lora_modules(hf) if catalog.leader(t[0]) in catalog.params]
    for name, a, b, scale in lora:
        if trainable is None or id(a) in trainable or id(b) in trainable:
            found.append((catalog.leader(name), {"lora_a": a, "lora_b": b, "scale": scale}))
    if not lora:
        for name, p in hf.named_parameters():
            leader = catalog.leader(name.removeprefix(_PEFT))
            if (
                leader in catalog.params
                and p.requires_grad
                and (trainable is None or id(p) in trainable)
            ):
                found.append((leader, {"weight": p, "ref": p.detach().clone()}))
    found = [(n, kw) for n, kw in found if rx.search(n) and catalog.params[n].is_matrix]
    if not found:
        raise ConfigError(
            f"no trainable 2-d weight (or LoRA pair) of the model matches params={params!r}"
        )
    base_r, aligned_r = FullReader(base, "base", catalog), FullReader(aligned, "aligned", catalog)
    out = []
    try:
        for name, kw in found:
            p = catalog.params[name]
            v = aligned_r.read(p).double() - base_r.read(p).double()
            if tuple(v.shape) != p.shape:
                raise CheckpointError(
                    f"{name}: base/aligned shape {tuple(v.shape)} != the model's {p.shape}"
                )
            if random_seed is not None:
                g = generator(random_seed, "defense-random", name)
                r = torch.randn(v.shape, generator=g, dtype=torch.float64)
                v = r * (v.norm() / r.norm())
            out.append(Target(name, p, v, **kw))
    finally:
        base_r.close()
        aligned_r.close()
    return out


PROJECTIONS = ("safelora", "projector")
"""How a ``V``-based defense maps an update: SafeLoRA's ``C = V Vᵀ/‖V‖_F`` or a true projector."""


def check_delta_fields(config: Any) -> None:
    """Validate (and normalise) the fields every ``V``-based defense's config shares: ``projection``,
    ``k``, ``random``, ``seed``, ``params`` (typed errors naming the field)."""
    from revlens._config import as_bool, as_int
    from revlens.modes import check_mode

    check_mode("projection", config.projection, PROJECTIONS)
    config.k = as_int("k", config.k, min=1)
    config.random = as_bool("random", config.random)
    config.seed = as_int("seed", config.seed)
    if not isinstance(config.params, str):
        raise ConfigError(f"params must be a regular expression string, got {config.params!r}")


class DeltaDefense(BlockingStrategy):
    """A defense defined by the alignment delta ``V = W_aligned − W_base`` of each weight (SafeLoRA,
    AsFT): stores the two checkpoints and its validated config (the subclass's ``config_class``),
    and reads the weights it may change with :func:`read_targets`."""

    config_class: Any

    def __init__(self, base: Any, aligned: Any, *, config: Any = None, **settings: Any) -> None:
        self.config = self.config_class.build(config, type(self).__name__, **settings)
        check_source(base, "base")
        check_source(aligned, "aligned")
        self.base, self.aligned = base, aligned

    def _read_targets(self, model: Any, optimizer: Any, params: Any) -> list[Target]:
        """The weights this defense acts on: those of ``params`` (or the optimizer's) that match the
        config's patterns, each with its ``V`` (a random one of the same norm for the control)."""
        if params is None and optimizer is not None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
        trainable = None if params is None else {id(p) for p in params}
        return read_targets(
            model,
            self.base,
            self.aligned,
            self.config.params,
            trainable=trainable,
            random_seed=self.config.seed if self.config.random else None,
        )
