"""The linear algebra of update projection, on per-parameter tensor lists (never one flat copy).

``A`` stacks the per-layer gradients ``a_l = ∇θ s_l`` (``k`` rows over all parameters), held as
one ``[k, *param.shape]`` tensor per parameter. For a step ``Δ`` (another tensor list),

    Δ' = Δ − Aᵀ (AAᵀ + ρI)⁺ (strength · (AΔ + restore · s))

removes ``Δ``'s component in the row space of ``A`` (``strength = 1``: all of it) and, with
``restore``, adds the minimum-norm step that cancels the current ``s`` to first order, so that
``s(θ + Δ') ≈ (1 − strength) · s(θ + Δ)``: ``s`` is held at 0, not only its change.

Numerical care: the Gram matrix ``AAᵀ`` is accumulated in float64 parameter by parameter; its
pseudo-inverse comes from an eigendecomposition that drops directions whose eigenvalue is below
``rcond`` times the largest (near-parallel ``a_l``, the analogue of a rank-revealing QR), plus a
small relative ridge ``ρ = ridge · tr(AAᵀ) / k``. This equals projecting onto the orthonormalised
``{a_l}`` (Gram–Schmidt / QR) on the kept subspace.

One-sided constraints (``s ≤ 0`` instead of ``s = 0``) are a quadratic programme: the closest
step to ``Δ`` on the polyhedron ``{Δ' : s + AΔ' ≤ 0}``; :func:`one_sided_coefficients` solves
its dual exactly (non-negative least squares), so only the rows that would otherwise end above
their bound are constrained (an exact active set, not a one-pass guess).
"""

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["apply_correction", "gram", "one_sided_coefficients", "projection_coefficients"]


def gram(grads: Sequence[Tensor]) -> Float[Tensor, "k k"]:
    """``AAᵀ`` in float64 from per-parameter ``[k, ...]`` gradient blocks."""
    k = grads[0].shape[0]
    out = torch.zeros(k, k, dtype=torch.float64)
    for g in grads:
        flat = g.reshape(k, -1).to(torch.float64)
        out += (flat @ flat.T).cpu()
    return out


def dot(grads: Sequence[Tensor], delta: Sequence[Tensor]) -> Float[Tensor, " k"]:
    """``AΔ`` in float64."""
    k = grads[0].shape[0]
    out = torch.zeros(k, dtype=torch.float64)
    for g, d in zip(grads, delta, strict=True):
        out += (g.reshape(k, -1).to(torch.float64) @ d.reshape(-1).to(torch.float64)).cpu()
    return out


def projection_coefficients(
    g: Float[Tensor, "k k"], rhs: Float[Tensor, " k"], *, ridge: float = 1e-6, rcond: float = 1e-10
) -> Float[Tensor, " k"]:
    """``c = (AAᵀ + ρI)⁺ rhs`` (see module docstring), float64."""
    k = g.shape[0]
    scale = float(torch.trace(g)) / max(k, 1)
    if scale <= 0.0:
        return torch.zeros(k, dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(g + ridge * scale * torch.eye(k, dtype=torch.float64))
    keep = evals > rcond * float(evals.max())
    inv = torch.where(keep, 1.0 / evals.clamp_min(1e-300), torch.zeros_like(evals))
    return evecs @ (inv * (evecs.T @ rhs))


def one_sided_coefficients(
    g: Float[Tensor, "k k"], violation: Float[Tensor, " k"], *, ridge: float = 1e-6
) -> Float[Tensor, " k"]:
    """``λ ≥ 0`` of the smallest step change that satisfies ``A Δ' ≤ A Δ − violation`` row by row:
    the exact solution of ``min ‖Δ' − Δ‖²  s.t.  AΔ' ≤ b`` is ``Δ' = Δ − Aᵀλ`` with ``λ`` the
    minimiser over ``λ ≥ 0`` of ``½ λᵀ(AAᵀ + ρI)λ − λᵀ violation`` (``violation = AΔ − b``; a
    non-negative least squares on the Cholesky factor, scipy's ``nnls``). Rows whose constraint
    holds without help get ``λ = 0`` (the active set); with every row violated and ``AAᵀ``
    invertible this is :func:`projection_coefficients`. ``ρ`` as there.
    """
    from scipy.optimize import nnls

    k = g.shape[0]
    r = torch.as_tensor(violation, dtype=torch.float64)
    scale = float(torch.trace(g)) / max(k, 1)
    if scale <= 0.0 or not bool((r > 0).any()):
        return torch.zeros(k, dtype=torch.float64)
    chol = torch.linalg.cholesky(g + max(ridge, 1e-12) * scale * torch.eye(k, dtype=torch.float64))
    b = torch.linalg.solve_triangular(chol, r[:, None], upper=False)[:, 0]
    lam, _ = nnls(chol.T.numpy(), b.numpy(), maxiter=50 * k)
    return torch.from_numpy(lam)


def apply_correction(
    targets: Sequence[Tensor], grads: Sequence[Tensor], coef: Float[Tensor, " k"]
) -> None:
    """In place: ``target -= Σ_l coef_l · a_l`` for each parameter block."""
    for t, g in zip(targets, grads, strict=True):
        c = coef.to(device=g.device, dtype=g.dtype)
        t.sub_(torch.tensordot(c, g, dims=1).to(t.dtype))
