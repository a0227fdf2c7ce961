"""AsFT, Anchoring Safety in Fine-Tuning (Yang et al. 2025, arXiv 2506.08473): a regulariser that
penalises the part of the fine-tuning update orthogonal to the alignment direction.

Per weight ``l`` with ``V_l = W_aligned − W_base`` and the update ``ΔW_l`` (LoRA: ``s·B·A``; full
fine-tuning: ``W − W_ref``, ``W_ref`` the weights when attached), the training loss becomes

    L = L_task + λ · Σ_l ‖(I − C_l) ΔW_l‖²_F,        C_l = V_l V_lᵀ / ‖V_l‖_F

(``projection="safelora"``: the paper builds its anchor from SafeLoRA's alignment matrix), or
with ``C_l`` the true orthogonal projector onto ``V_l``'s top-``k`` left singular subspace
(``projection="projector"``, revlens' convention). As revlens' ``penalty`` method does, the
term's gradient is added to ``.grad`` just before the optimizer step (the loss is not touched;
clipping done earlier by a ``Trainer`` does not see it).

``lam`` defaults to 1.0. *Not verified against the paper*: this reimplementation was written
offline without the paper's hyper-parameter table at hand; set ``lam`` to the value the paper
reports for your setting.
"""

from dataclasses import dataclass
from typing import Any, no_type_check

import torch

from revlens._config import Config, as_float, option
from revlens.block.registry import register
from revlens.defenses._targets import PROJECTIONS, DeltaDefense, check_delta_fields
from revlens.weights.projector import subspace_projector

__all__ = ["AsFT", "AsFTConfig", "asft_lora_term", "asft_penalty"]


@no_type_check  # validates its own fields (typed errors)
@dataclass
class AsFTConfig(Config):
    """Settings of :class:`AsFT`."""

    lam: float = option(1.0, "λ, the regulariser's weight (>= 0)")
    projection: str = option(
        "safelora",
        "the anchor: C = V Vᵀ/‖V‖_F (safelora) or a true projector onto "
        "V's top-k left singular subspace (projector)",
        choices=PROJECTIONS,
    )
    k: int = option(16, "projection='projector': the subspace's rank (capped at min(out, in) − 1)")
    random: bool = option(False, "the control: a Gaussian V of the same shape and norm per weight")
    seed: int = option(0, "seed of the random control's V")
    params: str = option(
        ".*", "regex (re.search) on Hugging Face weight names: which weights are regularised"
    )

    def validate(self) -> None:
        """Check every field."""
        self.lam = as_float("lam", self.lam, min=0.0)
        check_delta_fields(self)


def asft_penalty(
    dws: list[torch.Tensor], anchors: list[tuple[torch.Tensor, float]], lam: float
) -> torch.Tensor:
    """``λ Σ_l ‖(I − C_l) ΔW_l‖²_F`` with ``C_l x = W_l (W_lᵀ x) / c_l`` for each anchor
    ``(W_l [out, m], c_l)``: ``(V_l, ‖V_l‖_F)`` for the paper's ``C``, ``(U_k, 1)`` for the
    projector (no ``out × out`` matrix is formed)."""
    total = dws[0].new_zeros(())
    for dw, (w, c) in zip(dws, anchors, strict=True):
        w = w.to(dw.dtype)
        total = total + ((dw - w @ (w.T @ dw) / c) ** 2).sum()
    return lam * total


def asft_lora_term(
    lora_b: torch.Tensor, lora_a: torch.Tensor, scale: float, anchor: tuple[torch.Tensor, float]
) -> torch.Tensor:
    """``‖(I − C)(s·B·A)‖²_F`` for a LoRA pair without forming ``B·A``: with ``B̃ = B − W (Wᵀ B) / c``
    it is ``s² Σ (B̃ᵀB̃) ∘ (A Aᵀ)`` (``r × r`` matrices; equal to :func:`asft_penalty` on ``ΔW = s·B·A``,
    tested), so the regulariser costs ``O(out·m·r)`` per weight instead of ``O(out·m·in)``."""
    w, c = anchor
    b, a = lora_b.double(), lora_a.double()
    w = w.to(b.dtype)
    bt = b - w @ (w.T @ b) / c
    return (scale**2) * ((bt.T @ bt) * (a @ a.T)).sum()


@register("asft")
class AsFT(DeltaDefense):
    """AsFT's regulariser (module docstring; arXiv 2506.08473). Full and LoRA fine-tuning.

    Args:
        base, aligned: the checkpoints defining ``V`` (a missing one: :class:`CheckpointError`).
        config: an :class:`AsFTConfig`; ``**settings`` override it.

    Fitted attributes: ``targets_``, ``anchors_`` (per weight ``(V_l, ‖V_l‖_F)`` or ``(U_k, 1)``:
    ``C_l`` applied without forming it), records ``penalty``
    (the term's value before each step).
    """

    source = "asft"

    config_class = AsFTConfig

    def prepare(self, model: Any, *, optimizer: Any = None, params: Any = None) -> "AsFT":
        """Read ``V`` and build each weight's anchor ``C_l`` (float32)."""
        targets = self._read_targets(model, optimizer, params)
        anchors = []
        for t in targets:
            if self.config.projection == "safelora":
                anchors.append((t.v.float(), float(t.v.norm())))
            else:
                proj = subspace_projector(t.v, min(self.config.k, min(t.v.shape) - 1), "left")
                anchors.append((proj.u.float(), 1.0))
            t.v = t.v.new_empty(0)  # kept in the anchor (float32) where needed
        self.targets_, self.anchors_ = targets, anchors
        self._start()
        return self

    def penalty(self) -> torch.Tensor:
        """The regulariser's current value (differentiable in the trained tensors)."""
        self._check()
        total = None
        for t, anchor in zip(self.targets_, self.anchors_, strict=True):
            term = (
                asft_lora_term(t.lora_b, t.lora_a, t.scale, anchor)
                if t.is_lora
                else asft_penalty([t.delta()], [anchor], 1.0)
            )
            total = term if total is None else total + term
        assert total is not None  # targets_ is never empty (checked when prepared)
        return self.config.lam * total

    def before_step(self) -> None:
        """Add the regulariser's gradient to ``.grad``; record its value."""
        super().before_step()
        tensors = [
            x for t in self.targets_ for x in ((t.lora_a, t.lora_b) if t.is_lora else (t.weight,))
        ]
        with torch.enable_grad():
            pen = self.penalty()
            grads = (
                torch.autograd.grad(pen, tensors, allow_unused=True)
                if pen.requires_grad
                else [None] * len(tensors)
            )
        for p, g in zip(tensors, grads, strict=True):
            if g is not None:
                g = g.to(p.dtype)
                p.grad = g if p.grad is None else p.grad.add_(g)
        self._record("penalty", float(pen.detach()))

    def __repr__(self) -> str:
        c = self.config
        return f"AsFT(lam={c.lam}, projection={c.projection!r}, attached={self.is_attached})"
