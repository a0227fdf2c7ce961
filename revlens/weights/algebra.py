"""The per-module algebra: ``V``'s top-k singular subspaces, and an update's inner products and
energies in them — for a dense ``ΔW`` and for a LoRA ``ΔW = s·B·A`` by factor identities.

With ``U_K [m, K]``, ``R_K [n, K]`` (the top-K left / right singular vectors of ``V`` as columns):

- dense:  ``⟨ΔW, V⟩``, ``‖ΔW‖²``; ``L = U_Kᵀ ΔW``, ``R = ΔW R_K``, ``M = L R_K``; the energy in the
  top-k left subspace is ``Σ_{i<k} ‖L_i‖²`` (right: columns of ``R``; both: ``‖M[:k, :k]‖²``);
- LoRA:   ``‖ΔW‖² = s² ⟨BᵀB, AAᵀ⟩``, ``⟨ΔW, V⟩ = s ⟨BᵀV, A⟩``, ``C = U_Kᵀ B``, ``D = A R_K``:
  left energies ``s² diag(C AAᵀ Cᵀ)``, right ``s² diag(Dᵀ BᵀB D)``, both ``M = s C D``.

Nothing ``m × n`` is formed from the factors (``V`` itself is held: it is the reference). The
random-subspace null uses Haar frames in place of ``U_K`` / ``R_K``, batched over draws.
"""

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from revlens.modes import SvdMethod
from revlens.weights.nulls import haar_frames

__all__ = ["Basis", "Energies", "make_basis", "measure_dense", "measure_lowrank", "top_singular"]

FULL_SVD_MAX = 2048


@dataclass
class Basis:
    """``V`` of one module and its subspaces.

    Attributes:
        v: ``V`` (oriented ``[m, n]``, or ``[m]`` for a vector).
        v_norm2: ``‖V‖²``.
        u, sigma, r: top-K left singular vectors ``[m, K]``, singular values ``[K]``, right
            singular vectors ``[n, K]`` (``None`` for vectors, or when ``V = 0``).
        ql, qr: random Haar frames ``[draws, m, K]`` / ``[draws, n, K]`` (``None``: no random null).
    """

    v: Tensor
    v_norm2: float
    u: Tensor | None = None
    sigma: Tensor | None = None
    r: Tensor | None = None
    ql: Tensor | None = None
    qr: Tensor | None = None

    @property
    def rank(self) -> int:
        """K, the largest rank measured (0 without subspaces)."""
        return 0 if self.u is None else int(self.u.shape[1])


@dataclass
class Energies:
    """What one update gives in one module. ``left/right/both``: energies ``[len(ks)]`` in the
    top-k subspaces; ``rand_*``: ``[draws, len(ks)]`` in random ones (``None`` if not measured)."""

    dot: float
    dw2: float
    left: Tensor | None = None
    right: Tensor | None = None
    both: Tensor | None = None
    rand_left: Tensor | None = None
    rand_right: Tensor | None = None
    rand_both: Tensor | None = None


def top_singular(
    v: Float[Tensor, "m n"], k: int, method: str = "auto"
) -> tuple[Tensor, Tensor, Tensor]:
    """``(U_k [m, k], σ_k [k], R_k [n, k])`` of ``v``.

    ``"full"``: ``torch.linalg.svd``. ``"lowrank"``: ``torch.svd_lowrank`` (randomized, 6 power
    iterations, 10 extra columns: accurate where the spectrum has a gap after k). ``"auto"``: the
    eigendecomposition of the short side's Gram matrix (``VᵀV`` or ``VVᵀ``, in float64: exact to
    round-off for the top singular vectors, ~5-20x faster than a full SVD) while the short side is
    <= 2048, else ``"lowrank"``.
    """
    if method == "full":
        u, s, vh = torch.linalg.svd(v, full_matrices=False)
        return u[:, :k], s[:k], vh[:k].T
    if method == "auto" and min(v.shape) <= FULL_SVD_MAX:
        w = v.double()
        wide = w.shape[0] <= w.shape[1]
        evals, evecs = torch.linalg.eigh(w @ w.T if wide else w.T @ w)
        top = evecs[:, -k:].flip(-1)
        s = evals[-k:].flip(-1).clamp_min(0.0).sqrt()
        other = (w.T @ top if wide else w @ top) / s.clamp_min(1e-300)
        u, r = (top, other) if wide else (other, top)
        return u.to(v.dtype), s.to(v.dtype), r.to(v.dtype)
    q = min(k + 10, min(v.shape))
    u, s, r = torch.svd_lowrank(v, q=q, niter=6)
    return u[:, :k], s[:k], r[:, :k]


def make_basis(
    v: Tensor,
    k_max: int,
    *,
    n_random: int,
    generator: torch.Generator | None,
    svd: SvdMethod = "auto",
) -> Basis:
    """The :class:`Basis` of one module's ``V`` (``k_max`` capped at ``min(m, n) − 1``)."""
    v_norm2 = float((v * v).sum())
    if v.ndim != 2 or min(v.shape) < 2 or v_norm2 == 0.0:
        return Basis(v, v_norm2)
    m, n = v.shape
    k = min(k_max, min(m, n) - 1)
    u, sigma, r = top_singular(v, k, svd)
    basis = Basis(v, v_norm2, u, sigma, r)
    if n_random and generator is not None:
        basis.ql = haar_frames(n_random, m, k, generator=generator, dtype=v.dtype).to(v.device)
        basis.qr = haar_frames(n_random, n, k, generator=generator, dtype=v.dtype).to(v.device)
    return basis


def _prefix(e: Tensor, idx: Tensor) -> Tensor:
    return e.cumsum(-1).index_select(-1, idx)


def _both(m: Tensor, idx: Tensor) -> Tensor:
    c = (m * m).cumsum(-2).cumsum(-1)
    return torch.diagonal(c, dim1=-2, dim2=-1).index_select(-1, idx)


def measure_dense(dw: Tensor, basis: Basis, idx: Tensor) -> Energies:
    """Energies of a dense update ``dw`` (oriented like ``basis.v``); ``idx`` = ``k − 1`` per k."""
    out = Energies(float((dw * basis.v).sum()), float((dw * dw).sum()))
    if basis.u is None or dw.ndim != 2:
        return out
    big_l = basis.u.T @ dw
    big_r = dw @ basis.r
    out.left = _prefix((big_l * big_l).sum(1), idx)
    out.right = _prefix((big_r * big_r).sum(0), idx)
    out.both = _both(big_l @ basis.r, idx)
    if basis.ql is not None and basis.qr is not None:
        d, m, k = basis.ql.shape
        lq = (basis.ql.transpose(1, 2).reshape(d * k, m) @ dw).reshape(d, k, -1)
        rq = (dw @ basis.qr.permute(1, 0, 2).reshape(-1, d * k)).reshape(-1, d, k)
        out.rand_left = _prefix((lq * lq).sum(2), idx)
        out.rand_right = _prefix((rq * rq).sum(0), idx)
        out.rand_both = _both(lq @ basis.qr, idx)
    return out


def measure_lowrank(
    b: Float[Tensor, "m r"], a: Float[Tensor, "r n"], scale: float, basis: Basis, idx: Tensor
) -> Energies:
    """Energies of ``ΔW = scale · b @ a`` by factor identities (module docstring)."""
    btb, aat = b.T @ b, a @ a.T
    s2 = scale * scale
    out = Energies(scale * float(((b.T @ basis.v) * a).sum()), s2 * float((btb * aat).sum()))
    if basis.u is None:
        return out
    c, dd = basis.u.T @ b, a @ basis.r  # [K, r], [r, K]
    out.left = _prefix(s2 * ((c @ aat) * c).sum(1), idx)
    out.right = _prefix(s2 * ((dd.T @ btb) * dd.T).sum(1), idx)
    out.both = _both(scale * (c @ dd), idx)
    if basis.ql is not None and basis.qr is not None:
        cq = basis.ql.transpose(1, 2) @ b  # [draws, K, r]
        dq = (a @ basis.qr).transpose(1, 2)  # [draws, K, r]
        out.rand_left = _prefix(s2 * ((cq @ aat) * cq).sum(2), idx)
        out.rand_right = _prefix(s2 * ((dq @ btb) * dq).sum(2), idx)
        out.rand_both = _both(scale * (cq @ dq.transpose(1, 2)), idx)
    return out


def v_energy(basis: Basis, idx: Tensor) -> list[float]:
    """Share of ``‖V‖²`` in its own top-k singular subspace, per k (``Σ_{i<k} σ_i² / ‖V‖²``)."""
    if basis.sigma is None:
        return [math.nan] * len(idx)
    return (_prefix(basis.sigma * basis.sigma, idx) / basis.v_norm2).tolist()
