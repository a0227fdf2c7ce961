"""The linear algebra of update projection, on per-parameter tensor lists (never one flat copy).

``A`` stacks the per-layer gradients ``a_l = ∇θ s_l`` (``k`` rows over the *trained* parameters),
held as a :class:`Jacobian`: one ``[m_p, *param.shape]`` block per parameter, with only the ``m_p``
rows that reach it (a row of layer ``l`` does not reach the blocks above ``l``). For a step ``Δ``
(another tensor list),

    Δ' = Δ − Aᵀ (AAᵀ + ρI)⁺ (strength · (AΔ + restore · s))

removes ``Δ``'s component in the row space of ``A`` (``strength = 1``: all of it) and, with
``restore``, adds the minimum-norm step that cancels the current ``s`` to first order, so that
``s(θ + Δ') ≈ (1 − strength) · s(θ + Δ)``: ``s`` is held at 0, not only its change.

Numerical care: the Gram matrix ``AAᵀ`` is accumulated in float64 parameter by parameter; its
pseudo-inverse comes from an eigendecomposition that drops directions whose eigenvalue is below
``rcond`` times the largest (near-parallel ``a_l``, the analogue of a rank-revealing QR), plus a
small relative ridge ``ρ = ridge · tr(AAᵀ) / k``. This equals projecting onto the orthonormalised
``{a_l}`` (Gram–Schmidt / QR) on the kept subspace. The float64 sums run over column chunks of
at most :data:`CHUNK` elements, so a large parameter never gets a whole float64 copy.

One-sided constraints (``s ≤ 0`` instead of ``s = 0``) are a quadratic programme: the closest
step to ``Δ`` on the polyhedron ``{Δ' : s + AΔ' ≤ 0}``; :func:`one_sided_coefficients` solves
its dual exactly (non-negative least squares), so only the rows that would otherwise end above
their bound are constrained (an exact active set, not a one-pass guess).
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "Jacobian",
    "apply_correction",
    "dot",
    "gram",
    "one_sided_coefficients",
    "projection_coefficients",
]

CHUNK = 2**22  # float64 elements of one transient of the Gram / dot accumulation (32 MB)


def _columns(flat: Tensor) -> Iterator[Tensor]:
    """``flat [m, n]`` in float64 column chunks of at most :data:`CHUNK` elements (one chunk, the
    whole block, for every parameter smaller than that: the same sums as one float64 copy)."""
    m, n = flat.shape
    step = max(1, CHUNK // max(m, 1))
    for i in range(0, n, step):
        yield flat[:, i : i + step].to(torch.float64)


def _gram_block(flat: Tensor) -> Tensor:
    out = None
    for c in _columns(flat):
        g = c @ c.T
        out = g if out is None else out + g
    return out.cpu()  # type: ignore[union-attr]


def _dot_block(flat: Tensor, d: Tensor) -> Tensor:
    d = d.reshape(-1)
    out, start = None, 0
    for c in _columns(flat):
        part = c @ d[start : start + c.shape[1]].to(torch.float64)
        start += c.shape[1]
        out = part if out is None else out + part
    return out.cpu()  # type: ignore[union-attr]


@dataclass
class Jacobian:
    """``A = [a_r]`` over the trained parameters, stored only where it can be non-zero.

    A row built from layer ``l``'s activation does not reach the parameters above that layer (nor
    the head): such a parameter keeps only the rows that reach it, and a parameter no row reaches
    is left out (its correction is 0). Memory: ``Σ_p m_p·|p|`` elements (``m_p`` = rows reaching
    ``p``), at most ``rows × trained parameters``; never a copy of frozen weights.

    Attributes:
        n_rows: constraint rows.
        params: the parameters some row reaches.
        blocks: per parameter, ``[m_p, *param.shape]`` (the parameter's dtype and device).
        rows: per parameter, the ``m_p`` row indices (``None``: all ``n_rows``, in order).
    """

    n_rows: int
    params: list[Tensor]
    blocks: list[Tensor]
    rows: list[Tensor | None]

    @property
    def nbytes(self) -> int:
        """Bytes held by the blocks."""
        return sum(b.numel() * b.element_size() for b in self.blocks)

    def gram(self) -> Float[Tensor, "k k"]:
        """``AAᵀ`` in float64."""
        out = torch.zeros(self.n_rows, self.n_rows, dtype=torch.float64)
        for b, idx in zip(self.blocks, self.rows, strict=True):
            g = _gram_block(b.reshape(b.shape[0], -1))
            if idx is None:
                out += g
            else:
                out[idx[:, None], idx[None, :]] += g
        return out

    def dot(self, tensors: Sequence[Tensor]) -> Float[Tensor, " k"]:
        """``A x`` in float64, ``tensors`` aligned with :attr:`params`."""
        out = torch.zeros(self.n_rows, dtype=torch.float64)
        for b, idx, x in zip(self.blocks, self.rows, tensors, strict=True):
            got = _dot_block(b.reshape(b.shape[0], -1), x)
            if idx is None:
                out += got
            else:
                out[idx] += got
        return out

    def correct(self, targets: Sequence[Tensor | None], coef: Float[Tensor, " k"]) -> None:
        """In place: ``target -= Σ_r coef_r · a_r`` for each parameter's target (``None``: skipped)."""
        for t, b, idx in zip(targets, self.blocks, self.rows, strict=True):
            if t is not None:
                c = coef if idx is None else coef[idx]
                t.sub_(torch.tensordot(c.to(device=b.device, dtype=b.dtype), b, dims=1).to(t.dtype))


def _dense(grads: Sequence[Tensor]) -> Jacobian:
    return Jacobian(int(grads[0].shape[0]), list(grads), list(grads), [None] * len(grads))


def gram(grads: Sequence[Tensor]) -> Float[Tensor, "k k"]:
    """``AAᵀ`` in float64 from per-parameter ``[k, ...]`` gradient blocks."""
    return _dense(grads).gram()


def dot(grads: Sequence[Tensor], delta: Sequence[Tensor]) -> Float[Tensor, " k"]:
    """``AΔ`` in float64."""
    return _dense(grads).dot(delta)


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
    _dense(grads).correct(targets, coef)
