"""Block weight-space reversion while a model trains: keep every update off (or on) V's top-k
singular subspace, with a true projector (:mod:`revlens.weights.projector`).

The weight-space twin of :class:`revlens.block.ReversionBlocker`: a
:class:`~revlens.block.strategy.BlockingStrategy` registered as ``"weights"`` (same step protocol:
``attach(model, optimizer)`` wraps ``optimizer.step``, :meth:`~WeightBlocker.attached` is a context
manager, :meth:`~WeightBlocker.detach` undoes, the one ``Trainer`` callback
:class:`revlens.block.BlockingCallback` drives it and logs ``revlens/weights_removed`` and
``revlens/weights_update_norm``):

- **full fine-tuning**: after each optimizer step, every blocked weight becomes
  ``W_ref + Q(W − W_ref)`` with ``W_ref`` its value at :meth:`attach` (the run's start) and ``Q``
  the complement projector (``mode="off"``) or the projector (``"onto"``). ``Q`` is idempotent,
  so this equals projecting every step's update, and it cannot drift;
- **LoRA** (a PEFT model): the factors are projected in place, ``B ← Q_left B`` / ``A ← A Q_right``,
  so ``ΔW = s·B·A`` satisfies the same constraint exactly (never multiplied out);
- the **control** (``random=True``): the same projection onto uniformly random subspaces of the
  same rank (a random direction for ``side="direction"``), one per weight.

``V = W_aligned − W_base`` is read from the two checkpoints, per weight, in the oriented frame of
:mod:`revlens.weights.catalog` (``[out, in]``).
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, no_type_check

import pandas as pd
import torch
from torch import Tensor
from typing_extensions import Never

from revlens._config import Config, as_bool, as_int, option
from revlens._seeds import generator
from revlens._types import ModuleLike, ParamsInput, WeightsSource
from revlens.block.registry import register
from revlens.block.strategy import BlockingStrategy, records_frame
from revlens.errors import ConfigError
from revlens.modes import (
    SVD_METHODS,
    WEIGHT_BLOCK_MODES,
    WEIGHT_BLOCK_SIDES,
    SvdMethod,
    WeightBlockMode,
    WeightBlockSide,
    check_mode,
)
from revlens.weights.catalog import Param, build_catalog
from revlens.weights.projector import SubspaceProjector, subspace_projector

__all__ = ["WeightBlocker", "WeightBlockerConfig"]

_PEFT = "base_model.model."


@no_type_check  # validates its own fields (typed errors), also under the test type-checker
@dataclass
class WeightBlockerConfig(Config):
    """Settings of a :class:`WeightBlocker`."""

    k: int = option(16, "rank of V's singular subspace (ignored by side='direction')")
    side: str = option(
        "left",
        "subspace: left (output), right (input), both, direction (V itself)",
        choices=WEIGHT_BLOCK_SIDES,
    )
    mode: str = option(
        "off",
        "remove the update's component in the subspace (off) or keep only it (onto)",
        choices=WEIGHT_BLOCK_MODES,
    )
    params: str = option(
        ".*", "regex (re.search) on Hugging Face weight names: which weights are blocked"
    )
    random: bool = option(False, "the control: random subspaces of the same rank instead of V's")
    seed: int = option(0, "seed of the random subspaces")
    svd: str = option("auto", "top-k singular vectors: full, lowrank or auto", choices=SVD_METHODS)

    def validate(self) -> None:
        """Check every field."""
        self.k = as_int("k", self.k, min=1)
        check_mode("side", self.side, WEIGHT_BLOCK_SIDES)
        check_mode("mode", self.mode, WEIGHT_BLOCK_MODES)
        try:
            re.compile(self.params)
        except (re.error, TypeError) as exc:
            raise ConfigError(
                f"params={self.params!r} is not a regular expression: {exc}"
            ) from None
        self.random = as_bool("random", self.random)
        self.seed = as_int("seed", self.seed)
        check_mode("svd", self.svd, SVD_METHODS)


@dataclass
class _Target:
    """One blocked tensor: a full weight (projected around ``ref``) or a LoRA factor pair."""

    name: str
    projector: SubspaceProjector
    param: Tensor | None = None
    transpose: bool = False
    ref: Tensor | None = None
    lora_a: Tensor | None = None
    lora_b: Tensor | None = None


def _hf_model(model: Any) -> torch.nn.Module:
    return getattr(model, "original_model", model)  # a TransformerBridge wraps the HF model


def _lora_layers(model: torch.nn.Module) -> Iterator[tuple[str, Tensor, Tensor]]:
    """``(HF weight name, A [r, in], B [out, r])`` of every active PEFT LoRA adapter."""
    for name, module in model.named_modules():
        if not (hasattr(module, "lora_A") and hasattr(module, "base_layer")):
            continue
        weight = name.removeprefix(_PEFT) + ".weight"
        for adapter in getattr(module, "active_adapters", ["default"]):
            if adapter in module.lora_A:
                yield weight, module.lora_A[adapter].weight, module.lora_B[adapter].weight
            elif adapter in getattr(module, "lora_embedding_A", {}):
                yield weight, module.lora_embedding_A[adapter], module.lora_embedding_B[adapter]


def _full_weights(model: torch.nn.Module) -> Iterator[tuple[str, Tensor]]:
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        yield name.removeprefix(_PEFT).replace(".base_layer.", "."), p


@register("weights")
class WeightBlocker(BlockingStrategy):
    """Keep fine-tuning updates off (or onto) ``V``'s top-k singular subspaces (module docstring).

    Args:
        base, aligned: the two checkpoints defining ``V = W_aligned − W_base`` (dirs, weight
            files, state dicts or modules, read tensor by tensor with :mod:`revlens.loading`).
        config: a :class:`WeightBlockerConfig`; its fields given as keywords (``k``, ``side``,
            ``mode``, ``params``, ``random``, ``seed``, ``svd``, described there; ``None``: the
            config's) override it, validated here (another keyword: a ``ConfigError`` naming it).

    Fitted attributes (set by :meth:`prepare`): ``targets_`` (the blocked weights or LoRA factor
    pairs, each with its projector and, for full weights, the reference ``W_ref``), ``lora_``,
    ``step_``, ``records_`` (per step ``removed`` and ``update_norm``).
    """

    source = "weights"

    @no_type_check  # validates its own arguments (typed errors), also under the test type-checker
    def __init__(
        self,
        base: WeightsSource,
        aligned: WeightsSource,
        *,
        config: WeightBlockerConfig | None = None,
        k: int | None = None,
        side: WeightBlockSide | None = None,
        mode: WeightBlockMode | None = None,
        params: str | None = None,
        random: bool | None = None,
        seed: int | None = None,
        svd: SvdMethod | None = None,
        **unknown: Never,
    ) -> None:
        given = {"k": k, "side": side, "mode": mode, "params": params, "random": random}
        given |= {"seed": seed, "svd": svd}
        settings = {n: v for n, v in given.items() if v is not None}
        settings.update(unknown)  # refused by WeightBlockerConfig.build, naming them
        self.config = WeightBlockerConfig.build(config, "WeightBlocker", **settings)
        self.base, self.aligned = base, aligned

    # ------------------------------------------------------------------ fitting
    def _projector(self, p: Param, v: Tensor) -> SubspaceProjector | None:
        cfg = self.config
        if v.ndim != 2 or min(v.shape) < 2 or float(v.norm()) == 0.0:
            return None
        k = min(cfg.k, min(v.shape) - 1)
        return subspace_projector(
            v,
            k,
            cfg.side,
            random=cfg.random,
            svd=cfg.svd,
            generator=generator(cfg.seed, "weights-block", p.name),
        )

    def prepare(
        self,
        model: ModuleLike,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        params: ParamsInput | None = None,
    ) -> "WeightBlocker":
        """Read ``V`` for every weight of ``model`` to block and build the projectors (sets
        ``targets_``); the weights at this moment are the reference ``W_ref``. ``optimizer`` /
        ``params``: only the tensors it steps / these tensors (default: every trainable one)."""
        from revlens.weights.readers import FullReader

        if params is None and optimizer is not None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
        cfg, hf = self.config, _hf_model(model)
        catalog = build_catalog(hf.config)
        rx = re.compile(cfg.params)
        allowed = None if params is None else {id(p) for p in params}
        lora = [
            (catalog.leader(n), a, b)
            for n, a, b in _lora_layers(hf)
            if catalog.leader(n) in catalog.params
        ]
        full = (
            {}
            if lora
            else {
                catalog.leader(n): p
                for n, p in _full_weights(hf)
                if catalog.leader(n) in catalog.params and p.requires_grad
            }
        )
        wanted = {n for n, *_ in lora} | set(full)
        wanted = {n for n in wanted if rx.search(n) and catalog.params[n].is_matrix}
        base, aligned = (
            FullReader(self.base, "base", catalog),
            FullReader(self.aligned, "aligned", catalog),
        )
        targets: list[_Target] = []
        try:
            for name in sorted(wanted, key=list(catalog.params).index):
                p = catalog.params[name]
                v = aligned.read(p).double() - base.read(p).double()
                proj = self._projector(p, v)
                if proj is None:
                    continue
                if lora:
                    for n, a, b in lora:
                        if n == name and (allowed is None or id(a) in allowed or id(b) in allowed):
                            proj.project_factors(
                                b.detach(), a.detach(), cfg.mode
                            )  # validates side/mode
                            targets.append(_Target(name, proj, lora_a=a, lora_b=b))
                elif allowed is None or id(full[name]) in allowed:
                    targets.append(
                        _Target(
                            name,
                            proj,
                            param=full[name],
                            transpose=p.transpose,
                            ref=full[name].detach().clone(),
                        )
                    )
        finally:
            base.close()
            aligned.close()
        if not targets:
            raise ConfigError(
                f"no trainable 2-d weight of the model matches params={cfg.params!r} (with V ≠ 0)"
            )
        self.targets_, self.lora_ = targets, bool(lora)
        self._start()
        return self

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def after_step(self) -> None:
        """Project every blocked weight (or LoRA factor pair); records the share of the update removed."""
        self._check()
        mode, removed, total = self.config.mode, 0.0, 0.0
        for t in self.targets_:
            if t.param is not None:
                d = t.param.detach().float() - t.ref.float()
                d = d.T if t.transpose else d
                kept = t.projector.complement(d) if mode == "off" else t.projector(d)
                removed += float(((d - kept) ** 2).sum())
                total += float((d * d).sum())
                t.param.copy_((t.ref.float() + (kept.T if t.transpose else kept)).to(t.param.dtype))
            else:
                b, a = t.lora_b.detach().float(), t.lora_a.detach().float()
                nb, na = t.projector.project_factors(b, a, mode)
                removed += float(((b - nb) ** 2).sum() + ((a - na) ** 2).sum())
                total += float((b * b).sum() + (a * a).sum())
                t.lora_b.copy_(nb.to(t.lora_b.dtype))
                t.lora_a.copy_(na.to(t.lora_a.dtype))
        self._record("removed", removed / total if total > 0 else 0.0)
        self._record("update_norm", total**0.5)
        super().after_step()

    # ------------------------------------------------------------------ views
    @property
    def history_(self) -> pd.DataFrame:
        """Per step: ``removed`` = share of ``‖ΔW‖²`` (full) or of the factors' squared norm (LoRA)
        that the projection took out, and ``update_norm`` before it."""
        records = self.records_ if self.is_fitted else []
        removed = records_frame(records, "removed", ["step", "removed"])
        norm = records_frame(records, "update_norm", ["step", "update_norm"])
        return pd.DataFrame(
            {
                "step": removed["step"],
                "removed": removed["removed"],
                "update_norm": norm["update_norm"],
            },
            columns=["step", "removed", "update_norm"],
        )

    def __repr__(self) -> str:
        c = self.config
        n = len(self.targets_) if self.is_fitted else 0
        lora = " (LoRA)" if self.is_fitted and self.lora_ else ""
        return (
            f"WeightBlocker(side={c.side!r}, k={c.k}, mode={c.mode!r}, random={c.random}, "
            f"{n} weights{lora}, attached={self.is_attached})"
        )
