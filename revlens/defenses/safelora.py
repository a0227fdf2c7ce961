"""SafeLoRA (Hsu et al. 2024, arXiv 2405.16833): project a fine-tuned update onto the alignment
matrix's column space in the layers where it strays from it — post hoc, no training change.

Per weight ``l`` (the paper's "layer": every LoRA-adapted module), with ``V_l = W_aligned − W_base``:

- the paper's projection ``C_l = V_l V_lᵀ / ‖V_l‖_F`` (``projection="safelora"``, the default, applied
  as ``V (Vᵀ x) / ‖V‖_F`` so that no ``out × out`` matrix is formed; as
  :func:`revlens.weights.projector.safelora_projection` notes, ``C_l`` is **not** an orthogonal
  projector: it scales by ``V``'s singular values), or the true orthogonal projector
  ``P_l = U_k U_kᵀ`` onto ``V_l``'s top-``k`` left singular vectors (``projection="projector"``,
  revlens' :class:`~revlens.weights.WeightBlocker` convention);
- the similarity ``sim_l = ⟨ΔW_l, C_l ΔW_l⟩_F / (‖ΔW_l‖_F ‖C_l ΔW_l‖_F)`` (cosine of the flattened
  matrices, as the paper's code computes it);
- ``ΔW_l ← C_l ΔW_l`` in the selected weights: ``select="number"`` (the default, as in the
  authors' released configuration): the ``n_layers`` (10) weights of lowest similarity (ties at the
  cut included); ``select="threshold"`` (the paper's text): every weight with ``sim_l < τ``
  (``tau`` 0.5, the released default).

For LoRA ``ΔW = s·B·A`` the replacement is ``B ← C B`` (exactly ``C ΔW``, factors never multiplied
out for the update). Full fine-tuning (a documented extension; the paper is LoRA-only):
``ΔW = W − W_ref`` (``W_ref``: the weights when attached), replaced by ``W_ref + C ΔW``.
"""

from dataclasses import dataclass
from typing import Any, no_type_check

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from revlens._config import Config, as_float, as_int, option
from revlens.block.registry import register
from revlens.defenses._targets import PROJECTIONS, DeltaDefense, Target, check_delta_fields
from revlens.modes import check_mode
from revlens.weights.projector import subspace_projector

__all__ = ["SafeLoRA", "SafeLoRAConfig", "safelora_select", "safelora_similarity"]


SELECTS = ("number", "threshold")


@no_type_check  # validates its own fields (typed errors)
@dataclass
class SafeLoRAConfig(Config):
    """Settings of :class:`SafeLoRA` (defaults: the authors' released configuration)."""

    select: str = option(
        "number",
        "which weights to project: the n_layers least similar (number) or "
        "every one with similarity < tau (threshold)",
        choices=SELECTS,
    )
    n_layers: int = option(10, "select='number': how many weights (modules) are projected")
    tau: float = option(
        0.5, "select='threshold': project where the similarity is below tau (in [0, 1])"
    )
    projection: str = option(
        "safelora",
        "C = V Vᵀ/‖V‖_F (the paper) or a true projector onto V's top-k "
        "left singular subspace (projector)",
        choices=PROJECTIONS,
    )
    k: int = option(16, "projection='projector': the subspace's rank (capped at min(out, in) − 1)")
    random: bool = option(False, "the control: a Gaussian V of the same shape and norm per weight")
    seed: int = option(0, "seed of the random control's V")
    params: str = option(
        ".*", "regex (re.search) on Hugging Face weight names: which weights are candidates"
    )

    def validate(self) -> None:
        """Check every field."""
        check_mode("select", self.select, SELECTS)
        self.n_layers = as_int("n_layers", self.n_layers, min=1)
        self.tau = as_float("tau", self.tau, min=0.0, max=1.0)
        check_delta_fields(self)


def safelora_similarity(dw: Float[Tensor, "m n"], cdw: Float[Tensor, "m n"]) -> float:
    """``⟨ΔW, CΔW⟩_F / (‖ΔW‖_F ‖CΔW‖_F)`` (0 where either is 0)."""
    den = float(dw.norm() * cdw.norm())
    return float((dw * cdw).sum()) / den if den > 0 else 0.0


def safelora_select(
    sims: list[float], *, select: str = "number", n_layers: int = 10, tau: float = 0.5
) -> list[bool]:
    """Which weights are projected: the ``n_layers`` lowest similarities (ties at the cut
    included) or those ``< tau``."""
    if select == "threshold":
        return [s < tau for s in sims]
    cut = sorted(sims)[min(n_layers, len(sims)) - 1]
    return [s <= cut for s in sims]


@register("safelora")
class SafeLoRA(DeltaDefense):
    """SafeLoRA's post-hoc projection (module docstring; arXiv 2405.16833).

    Args:
        base, aligned: the checkpoints defining ``V = W_aligned − W_base`` (dirs, weight files,
            state dicts or modules). A missing one is a :class:`~revlens.errors.CheckpointError`.
        config: a :class:`SafeLoRAConfig`; ``**settings`` override it.

    Attach it (``attach(model)``, no optimizer needed) or add it to a ``Trainer``: nothing changes
    during training; :meth:`finish` rewrites the fine-tuned update. For an adapter trained
    elsewhere: ``SafeLoRA(base, aligned).prepare(peft_model).finish()``.

    Fitted attributes: ``targets_``; after :meth:`finish`, ``table_`` (one row per weight:
    ``name``, ``layer``, ``similarity``, ``projected``, ``norm_before``, ``norm_after``).
    """

    source = "safelora"
    acts_on_step = False

    config_class = SafeLoRAConfig

    def prepare(self, model: Any, *, optimizer: Any = None, params: Any = None) -> "SafeLoRA":
        """Read ``V`` for every candidate weight (the full weights' ``W_ref`` is their value now)."""
        self.targets_ = self._read_targets(model, optimizer, params)
        self.table_ = pd.DataFrame()
        self._start()
        return self

    def matrix(self, t: Target) -> Any:
        """The map applied to ``ΔW`` (left-multiplied): ``C`` or the projector (a callable)."""
        if self.config.projection == "safelora":  # C x = V (Vᵀ x) / ‖V‖_F, C never formed
            v, nv = t.v, float(t.v.norm())
            return lambda x: v.to(x.dtype) @ (v.T.to(x.dtype) @ x) / nv
        k = min(self.config.k, min(t.v.shape) - 1)
        proj = subspace_projector(t.v, k, "left")
        return proj

    @torch.no_grad()
    def finish(self) -> None:
        """Compute every similarity, select, and replace ``ΔW`` by ``C ΔW`` where selected."""
        super().finish()
        cfg, rows = self.config, []
        maps, sims = [], []
        for t in self.targets_:
            apply = self.matrix(t)
            dw = t.delta().detach()
            maps.append(apply)
            sims.append(safelora_similarity(dw, apply(dw)))
        chosen = safelora_select(sims, select=cfg.select, n_layers=cfg.n_layers, tau=cfg.tau)
        for t, apply, sim, pick in zip(self.targets_, maps, sims, chosen, strict=True):
            before = float(t.delta().norm())
            if pick:
                if t.is_lora:
                    t.lora_b.copy_(apply(t.lora_b.detach().double()).to(t.lora_b.dtype))
                else:
                    new = apply(t.delta().detach())
                    new = new.T if t.param.transpose else new
                    t.weight.copy_((t.ref.double() + new).to(t.weight.dtype))
            rows.append(
                {
                    "name": t.name,
                    "layer": t.layer,
                    "similarity": sim,
                    "projected": pick,
                    "norm_before": before,
                    "norm_after": float(t.delta().norm()),
                }
            )
        self.table_ = pd.DataFrame(rows)
        self._record("projected", float(sum(chosen)))

    def __repr__(self) -> str:
        c = self.config
        return (
            f"SafeLoRA(projection={c.projection!r}, select={c.select!r}, n_layers={c.n_layers}, "
            f"tau={c.tau}, attached={self.is_attached})"
        )
