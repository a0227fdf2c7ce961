"""Nulls of the weight-space measures: exact (isotropic) and random subspaces of the same rank.

**Exact isotropic null.** Let a module's update ``ΔW ∈ R^{m×n}`` be, under the null, a uniformly
random direction of weight space: ``ΔW / ‖ΔW‖_F`` uniform on the unit sphere of
``R^N``, ``N = m·n`` (equivalently ``ΔW`` has i.i.d. ``N(0, σ²)`` entries). For any *fixed*
linear subspace ``S ⊂ R^{m×n}`` of dimension ``D`` (fixed: it depends on ``V`` only, i.e. on
base and aligned), write ``ΔW = P_S ΔW + P_⊥ ΔW``; the two parts are independent Gaussians, with
``‖P_S ΔW‖²/σ² ~ χ²_D`` and ``‖P_⊥ ΔW‖²/σ² ~ χ²_{N−D}``, so the energy fraction

    f = ‖P_S ΔW‖² / ‖ΔW‖² = X / (X + Y),   X ~ χ²_D,  Y ~ χ²_{N−D}  independent,

is exactly ``Beta(D/2, (N − D)/2)`` (the ratio of a Gamma to a sum of independent Gammas of the
same scale). The top-k singular subspaces of ``V = U S Vᵀ`` are such subspaces:

- left (output side) ``{U_k X : X ∈ R^{k×n}}``, ``D = k·n``:  ``f_left  ~ Beta(kn/2, (m−k)n/2)``;
- right (input side) ``{X V_kᵀ : X ∈ R^{m×k}}``, ``D = k·m``:  ``f_right ~ Beta(km/2, m(n−k)/2)``;
- both ``{U_k X V_kᵀ : X ∈ R^{k×k}}``, ``D = k²``:            ``f_both  ~ Beta(k²/2, (mn−k²)/2)``;
- the direction ``V`` itself (``D = 1``): ``cos(ΔW, −V)² ~ Beta(1/2, (N−1)/2)``, and by the sign
  symmetry ``(cos + 1)/2 ~ Beta((N−1)/2, (N−1)/2)`` (:func:`revlens.nulls.isotropic_quantile`
  with ``d = N``). Given ``‖ΔW‖``, the reverted fraction ``−⟨ΔW, V⟩/‖V‖² = cos · ‖ΔW‖/‖V‖``
  therefore has the null quantile ``q_cos · ‖ΔW‖/‖V‖``.

Over several modules at once (a layer, the whole model) the subspaces add as a direct sum, so
the same law holds with ``D = Σ D_module`` and ``N = Σ N_module``. Expectations: ``D / N``
(``k/m``, ``k/n``, ``k²/(mn)``).

This null is exact but weak: real updates are far from isotropic (low-rank, concentrated on some
rows). **Random-subspace null.** Hold ``ΔW`` fixed and replace ``U_k`` (``V_k``) by a uniformly
random (Haar) ``k``-frame of ``R^m`` (``R^n``): its mean is again ``k/m`` (``k/n``, ``k²/(mn)``),
but its spread follows ``ΔW``'s own spectrum (a rank-1 update has ``f ~ Beta(k/2, (m−k)/2)``,
far wider than the isotropic law). It has no closed form in general and is sampled
(:func:`haar_frames`); the first ``k`` columns of a Haar ``K``-frame are a Haar ``k``-frame, so
one draw serves every ``k ≤ K``. The control run (fine-tuned from base) is the empirical null of
everything at once.
"""

import math

import numpy as np
import torch
from scipy import stats as sps
from torch import Tensor

from revlens.errors import ConfigError
from revlens.modes import WeightSide
from revlens.nulls import isotropic_quantile

__all__ = ["cos_quantile", "energy_quantile", "energy_sf", "haar_frames", "subspace_dim"]


def subspace_dim(side: WeightSide, k: int, m: int, n: int) -> int:
    """Dimension of the top-k ``side`` subspace of an ``m × n`` matrix space."""
    return {"left": k * n, "right": k * m, "both": k * k}[side]


def energy_quantile(dim: int, total: int, q: float = 0.99) -> float:
    """Exact ``q``-quantile of ``‖P_S ΔW‖²/‖ΔW‖²`` for isotropic ``ΔW`` in ``R^total`` and a fixed
    subspace ``S`` of dimension ``dim``: ``Beta(dim/2, (total − dim)/2)``."""
    if not 0 < dim < total:
        return math.nan
    return float(sps.beta.ppf(q, dim / 2.0, (total - dim) / 2.0))


def energy_sf(frac: float | np.ndarray, dim: int, total: int) -> float | np.ndarray:
    """One-sided exact p-value ``P(f >= frac)`` under the isotropic null (see :func:`energy_quantile`)."""
    if not 0 < dim < total:
        return np.full(np.shape(frac), math.nan) if np.ndim(frac) else math.nan
    p = sps.beta.sf(
        np.clip(np.asarray(frac, dtype=np.float64), 0.0, 1.0), dim / 2.0, (total - dim) / 2.0
    )
    return float(p) if np.ndim(p) == 0 else p


def cos_quantile(total: int, q: float = 0.99) -> float:
    """Exact ``q``-quantile of ``cos(ΔW, −V)`` for isotropic ``ΔW`` in ``R^total``."""
    return isotropic_quantile(total, q) if total >= 2 else math.nan


def haar_frames(
    n_draws: int,
    dim: int,
    k: int,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """``[n_draws, dim, k]``: orthonormal ``k``-frames of ``R^dim``, uniform (Haar) in distribution.

    The QR factorisation of a Gaussian matrix, with the signs of ``R``'s diagonal moved into ``Q``
    (without that correction ``Q`` is not Haar-distributed).
    """
    if not 1 <= k <= dim:
        raise ConfigError(f"a random {k}-frame needs 1 <= k <= {dim}")
    z = torch.randn(n_draws, dim, k, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(z)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs[signs == 0] = 1.0
    return (q * signs[:, None, :]).to(dtype)
