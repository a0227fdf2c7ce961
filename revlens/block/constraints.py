"""What each constraint does to a step, a gradient, a penalty and a training-time hook.

Three constraints on the rows ``s_r`` of :mod:`revlens.block.objective` (see
:class:`~revlens.block.ReversionBlocker`):

- ``"equal"``: ``s_r = 0`` — no motion along the subspace either way (today's blocking);
- ``"one_sided"``: ``s_r ≤ 0`` — no motion **toward base** along any basis row, while motion
  toward (or beyond) aligned stays free. Row ``b_j`` points toward the side of axis ``j`` on which
  the base mean lies (estimators orient every row so ``b_j·(μ_base − μ_aligned) ≥ 0``; their
  ``meta["base_offset"]`` says how far the base sits along each row — for axes ``2..k`` of a
  principal basis it can be small, and then "toward base" along that axis is weakly defined);
  per prompt, the same sign is used for every prompt. The update / gradient steps solve the
  one-sided projection exactly (:func:`~revlens.block.projection.one_sided_coefficients`: only
  rows that would end above their bound are constrained); the penalty is ``Σ relu(s_r)²``; the
  hook removes only the positive (base-ward) coordinates of ``h − μ``;
- ``"confine"``: the opposite philosophy, the activation analogue of SafeLoRA / AsFT (which keep
  weight updates inside the aligned − base weight subspace): the rows are the orthogonal
  **complement** of the subspace and are held at 0, so the probe-mean drift may move only inside
  ``span(B_l)`` (either way along it, toward base included). ``d − k`` rows per layer: costly for
  update / gradient blocking on a wide model (the penalty costs one backward); no hook form (it
  would erase every per-token direction outside the subspace).
"""

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from revlens.block.projection import one_sided_coefficients, projection_coefficients
from revlens.modes import BlockConstraint

__all__ = ["gradient_coefficients", "hook_edit", "penalty_rows", "update_coefficients"]


def update_coefficients(
    constraint: BlockConstraint,
    gram: Float[Tensor, "k k"],
    a_delta: Float[Tensor, " k"],
    s_now: Float[Tensor, " k"],
    *,
    strength: float,
    restore: bool,
    ridge: float,
) -> Tensor:
    """``c`` of the corrected step ``Δ' = Δ − Aᵀc``.

    ``equal`` / ``confine``: ``s + AΔ' = (1 − strength)·(s + AΔ)`` with ``restore`` (else the
    change ``AΔ`` is removed). ``one_sided``: ``s + AΔ' ≤ 0`` with ``restore`` (a row above 0 is
    brought back to 0), else ``s + AΔ' ≤ max(s, 0)`` (a row may not move further toward base).
    """
    if constraint == "one_sided":
        bound = torch.zeros_like(s_now) if restore else s_now.clamp_min(0.0)
        return strength * one_sided_coefficients(gram, s_now + a_delta - bound, ridge=ridge)
    rhs = a_delta + (s_now if restore else 0.0)
    return projection_coefficients(gram, strength * rhs, ridge=ridge)


def gradient_coefficients(
    constraint: BlockConstraint,
    gram: Float[Tensor, "k k"],
    a_grad: Float[Tensor, " k"],
    *,
    strength: float,
    ridge: float,
) -> Tensor:
    """``c`` of the corrected gradient ``g' = g − Aᵀc``. ``one_sided``: a descent step ``−ηg'``
    must not raise any row (``A g' ≥ 0``); rows it would lower are left alone."""
    if constraint == "one_sided":
        return -strength * one_sided_coefficients(gram, -a_grad, ridge=ridge)
    return projection_coefficients(gram, strength * a_grad, ridge=ridge)


def penalty_rows(s: Tensor, constraint: BlockConstraint) -> Tensor:
    """``Σ s_r²`` (``one_sided``: ``Σ relu(s_r)²``)."""
    rows = torch.relu(s) if constraint == "one_sided" else s
    return (rows**2).sum()


def hook_edit(
    rows: Float[Tensor, "k d"],
    mu: Float[Tensor, " d"],
    strength: float,
    one_sided: bool,
    is_training: Callable[[], bool],
) -> Callable[[Tensor], Tensor | None]:
    """The training-time edit ``h ← h − strength · Bᵀ c`` with ``c = B(h − μ)`` (``one_sided``:
    ``c = relu(B(h − μ))``); a no-op outside training (measurements see the unedited model)."""

    def edit(h: Tensor) -> Tensor | None:
        if not is_training():
            return None
        b = rows.to(device=h.device, dtype=h.dtype)
        m = mu.to(device=h.device, dtype=h.dtype)
        if b.shape[0] == 1 and not one_sided:  # the k = 1 formula, as before subspaces
            coord = (h - m) @ b[0]
            return h - strength * coord[..., None] * b[0]
        coords = (h - m) @ b.T
        if one_sided:
            coords = torch.relu(coords)
        return h - strength * coords @ b

    return edit
