"""Low-rank algebra of the estimators: direction fitting whose cost follows the prompts, not ``d³``.

With ``n`` prompts and ``d_model = d``, everything :class:`~revlens.directions.Whitened` and
:class:`~revlens.directions.PairedPCA` compute at a layer lives in the span of at most ``m ≤ 2n``
activation rows (base and aligned, or their paired differences). Let ``Q`` (``[d, m]``) be an
orthonormal basis of that span (one QR, ``O(d m²)``) and ``X Q`` the rows' coordinates:

- Ledoit–Wolf shrinkage of the class-centred sample covariance ``S = ZᵀZ / N`` is
  ``Σ = (1 − s)·S + s·μ·I`` with ``μ = tr(S)/d``; the intensity ``s`` (scikit-learn's
  ``ledoit_wolf_shrinkage`` formula) needs only rotation invariants — the rows' squared norms and
  ``‖ZZᵀ‖_F`` — so it is computed exactly in coordinates, with the true ``d`` (no precision matrix,
  no ``d × d`` matrix at all);
- ``Σ`` maps ``span(Q)`` to itself and ``μ_base − μ_aligned`` lies in it, so
  ``Σ⁻¹(μ_base − μ_aligned) = Q Σ_Q⁻¹ Qᵀ(μ_base − μ_aligned)`` with the ``m × m`` block
  ``Σ_Q = (1 − s)·QᵀSQ + s·μ·I``;
- the generalised eigenvectors of (paired-difference scatter ``C``, ``Σ``) with non-zero
  eigenvalue lie in ``Σ⁻¹ range(C) ⊂ span(Q)``: the ``m × m`` pencil ``(QᵀCQ, Σ_Q)`` has the same
  eigenvalues and eigenvectors ``y`` with ``x = Q y``;
- a bootstrap refit resamples (re-weights) the same prompts: its rows, means and covariance stay
  in ``span(Q)``, so one basis per layer serves every refit, and the refits of all layers run as
  one batched ``[layer · refit, m, m]`` computation on the activations' device.

Everything here is batched over leading axes (``[..., rows, m]``). ``solver="dense"`` keeps the
``d × d`` path of revlens 0.2 (for ``m ≥ d``, where it is the cheaper one, and for comparison).
"""

import numpy as np
import torch
from torch import Tensor

from revlens.errors import ConfigError

__all__ = [
    "SOLVERS",
    "check_solver",
    "generalized_axes",
    "ledoit_wolf_shrinkage",
    "pinv_solve",
    "span_basis",
    "use_span",
    "whitened_system",
]

SOLVERS = ("auto", "dense", "span")


def check_solver(solver: object, name: str) -> None:
    """ConfigError unless ``solver`` is one of :data:`SOLVERS`."""
    if solver not in SOLVERS:
        raise ConfigError(f"{name}: solver must be one of {', '.join(SOLVERS)}; got {solver!r}")


def use_span(solver: str, m: int, d: int) -> bool:
    """Whether to work in the ``m``-dimensional span (``"auto"``: when ``m < d``)."""
    return solver == "span" or (solver == "auto" and m < d)


def span_basis(rows: Tensor) -> Tensor:
    """Orthonormal ``[d, m]`` basis whose span holds the ``m`` rows ``[m, d]`` (reduced QR; exact
    also for rank-deficient rows: ``Q`` is orthonormal whatever the rank)."""
    return torch.linalg.qr(rows.T)[0]


def ledoit_wolf_shrinkage(z: Tensor, d: int) -> Tensor:
    """``sklearn.covariance.ledoit_wolf_shrinkage(X, assume_centered=True)`` of rows ``X = z Qᵀ``
    from their coordinates ``z`` ``[..., N, m]`` and the true width ``d`` (shape ``[...]``)."""
    n_samples = z.shape[-2]
    if d == 1:
        return torch.zeros(z.shape[:-2], dtype=z.dtype, device=z.device)
    sq = (z * z).sum(-1)  # squared row norms  [..., N]
    trace = sq.sum(-1) / n_samples  # emp_cov_trace.sum()
    mu = trace / d
    beta_ = (sq * sq).sum(-1)  # Σ <X2ᵀ X2> = Σ_k ‖x_k‖⁴
    gram = z.transpose(-1, -2) @ z if z.shape[-1] <= n_samples else z @ z.transpose(-1, -2)
    delta_ = (gram * gram).sum((-1, -2)) / n_samples**2  # ‖XᵀX‖_F² / N²
    beta = (beta_ / n_samples - delta_) / (d * n_samples)
    delta = (delta_ - 2.0 * mu * trace + d * mu**2) / d
    beta = torch.minimum(beta, delta)
    return torch.where(
        beta == 0, torch.zeros_like(beta), beta / torch.where(delta == 0, 1.0, delta)
    )


def whitened_system(
    bc: Tensor, ac: Tensor, d: int, shrinkage: float | None, *, ridge: bool = False
) -> tuple[Tensor, Tensor]:
    """``(Σ_Q [..., m, m], Qᵀ(μ_base − μ_aligned) [..., m])`` from base / aligned coordinates
    ``[..., n, m]``: the pooled within-class covariance shrunk by Ledoit–Wolf (``shrinkage=None``)
    or by a fixed amount, restricted to the span. ``ridge`` adds ``1e-9 · tr(Σ)/d`` (the candidates'
    regularisation of the dense path)."""
    mb, ma = bc.mean(-2), ac.mean(-2)
    z = torch.cat([bc - mb[..., None, :], ac - ma[..., None, :]], dim=-2)
    s_mat = z.transpose(-1, -2) @ z / z.shape[-2]
    mu = torch.diagonal(s_mat, dim1=-2, dim2=-1).sum(-1) / d
    s = ledoit_wolf_shrinkage(z, d) if shrinkage is None else torch.full_like(mu, float(shrinkage))
    eye = torch.eye(s_mat.shape[-1], dtype=z.dtype, device=z.device)
    extra = 1e-9 * mu.clamp_min(1e-300) if ridge else torch.zeros_like(mu)
    sigma = (1.0 - s)[..., None, None] * s_mat + (s * mu + extra)[..., None, None] * eye
    return sigma, mb - ma


def eigh(x: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` of a batch; on the CPU by numpy's stacked LAPACK loop (torch's
    batched CPU ``eigh`` of small matrices spends seconds in thread contention on a busy machine)."""
    if x.device.type != "cpu" or x.ndim == 2 or x.shape[:-2].numel() == 0:
        return torch.linalg.eigh(x)
    evals, evecs = np.linalg.eigh(x.numpy())
    return torch.from_numpy(evals), torch.from_numpy(evecs)


def pinv_solve(sigma: Tensor, rhs: Tensor, d: int) -> Tensor:
    """``Σ⁺ rhs`` for symmetric positive semi-definite ``Σ`` ``[..., m, m]`` (``lstsq`` semantics):
    a Cholesky solve where ``Σ`` is positive definite, else the minimum-norm solution with
    eigenvalues below ``eps · d · λ_max`` treated as zero."""
    chol, info = torch.linalg.cholesky_ex(sigma)
    out = torch.cholesky_solve(rhs[..., None], chol)[..., 0]
    bad = info != 0
    if bool(bad.any()):
        evals, evecs = eigh(sigma[bad])
        tol = evals.abs().amax(-1, keepdim=True) * torch.finfo(sigma.dtype).eps * d
        inv = torch.where(
            evals > tol, 1.0 / torch.where(evals > tol, evals, 1.0), torch.zeros_like(evals)
        )
        out[bad] = (
            evecs @ (inv * (evecs.transpose(-1, -2) @ rhs[bad][..., None])[..., 0])[..., None]
        )[..., 0]
    return out


def generalized_axes(bc: Tensor, ac: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """Generalised eigenpairs of (scatter of the centred paired differences, ``sigma``) in span
    coordinates, **descending**: ``(eigenvalues [..., m], eigenvectors as rows [..., m, m])``.

    ``np.cov`` conventions (centred, ``n − 1``); zero scatter for a single prompt. Eigenvectors
    are scaled as scipy's ``eigh(a, b)`` scales them (``yᵀ Σ y = 1``); signs are arbitrary (the
    estimators orient them).
    """
    p = bc - ac
    n = p.shape[-2]
    pc = p - p.mean(-2, keepdim=True)
    scatter = pc.transpose(-1, -2) @ pc / (n - 1) if n > 1 else torch.zeros_like(sigma)
    chol = torch.linalg.cholesky(sigma)
    left = torch.linalg.solve_triangular(chol, scatter, upper=False)  # L⁻¹ C
    a = torch.linalg.solve_triangular(chol, left.transpose(-1, -2), upper=False)  # L⁻¹ C L⁻ᵀ
    evals, u = eigh((a + a.transpose(-1, -2)) / 2)
    y = torch.linalg.solve_triangular(chol.transpose(-1, -2), u, upper=True)  # L⁻ᵀ u
    return evals.flip(-1), y.flip(-1).transpose(-1, -2)
