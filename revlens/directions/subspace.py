"""Linear algebra of rank-k reversion subspaces (DESIGN §5 "Definitions the next stages share").

A rank-k subspace at a layer is an orthonormal basis ``B ∈ R^{k×d}`` (rows). This module holds
what every stage needs to build, compare and sample them:

- :func:`span_rows`: an orthonormal basis of candidate rows taken **in order** (Gram–Schmidt),
  skipping rows that are (numerically) in the span of the earlier ones;
- :func:`orient_rows`: the sign convention of revlens: every row points from aligned toward
  base, i.e. ``b_j · (μ_base − μ_aligned) ≥ 0`` (see :func:`orient_rows` for axes ``2..k``);
- :func:`principal_cosines` / :func:`subspace_similarity`: cosines of the principal angles
  between two subspaces (the singular values of ``A Bᵀ``), and their mean — ``|cos|`` for
  ``k = 1`` (the stability measure of directions), 1 for identical subspaces;
- :func:`random_frames`: random orthonormal k-frames, isotropic or covariance-matched, **nested**
  (the first ``j`` rows of a frame span a random ``j``-subspace of the same kind), optionally
  extending given first rows (so rank-1 controls equal the one-direction controls);
- :func:`complement`: an orthonormal basis of the orthogonal complement of ``B`` in R^d.
"""

from typing import no_type_check

import torch
from jaxtyping import Float
from torch import Tensor

from revlens.errors import ConfigError, ShapeMismatchError
from revlens.modes import ControlKind

__all__ = [
    "complement",
    "orient_rows",
    "principal_cosines",
    "random_frames",
    "span_rows",
    "subspace_similarity",
]


def span_rows(
    candidates: Float[Tensor, "n d"], k: int, *, tol: float = 1e-8
) -> Float[Tensor, "m d"]:
    """At most ``k`` orthonormal rows spanning the candidates in order (float64).

    Row ``j`` is the normalised residual of the ``j``-th kept candidate after removing its
    components along the rows before it, so the first row is the first candidate's direction
    (sign kept). A candidate whose residual is below ``tol`` times its own norm adds nothing and
    is skipped; fewer than ``k`` rows come back when the candidates span less.
    """
    rows: list[Tensor] = []
    for c in torch.as_tensor(candidates, dtype=torch.float64):
        norm = float(c.norm())
        if norm == 0.0 or not torch.isfinite(c).all():
            continue
        r = c.clone()
        for _ in range(2):  # twice is enough (Kahan): re-orthogonalise against round-off
            for q in rows:
                r = r - (r @ q) * q
        if float(r.norm()) <= tol * norm:
            continue
        rows.append(r / r.norm())
        if len(rows) == k:
            break
    if not rows:
        return torch.zeros(0, candidates.shape[-1], dtype=torch.float64)
    return torch.stack(rows)


def orient_rows(
    basis: Float[Tensor, "k d"], toward: Float[Tensor, " d"], *, keep_first: bool = False
) -> Float[Tensor, "k d"]:
    """Flip rows so that ``b_j · toward ≥ 0`` (``toward`` = μ_base − μ_aligned).

    The sign of axis ``j`` is thereby defined by where the **base mean** lies along it: motion
    along ``+b_j`` is motion toward the base side of that axis. For axes ``2..k`` of a principal
    basis that side can be weakly defined (the mean difference lies mostly along axis 1); the
    offsets ``b_j · toward / ‖toward‖`` say how much (estimators record them in
    ``Directions.meta["base_offset"]``). A row exactly orthogonal to ``toward`` keeps its sign.
    ``keep_first``: leave row 0 as it is (an estimator's own orientation).
    """
    b = torch.as_tensor(basis, dtype=torch.float64)
    dots = b @ torch.as_tensor(toward, dtype=torch.float64)
    sign = torch.where(dots < 0, -torch.ones_like(dots), torch.ones_like(dots))
    if keep_first:
        sign[0] = 1.0
    return b * sign[:, None]


def principal_cosines(a: Float[Tensor, "k d"], b: Float[Tensor, "m d"]) -> Float[Tensor, " r"]:
    """Cosines of the principal angles between ``span(a)`` and ``span(b)`` (orthonormal rows),
    largest first, ``r = min(k, m)``; each in ``[0, 1]``."""
    s = torch.linalg.svdvals(
        torch.as_tensor(a, dtype=torch.float64) @ torch.as_tensor(b, dtype=torch.float64).T
    )
    return s.clamp(0.0, 1.0)


def subspace_similarity(a: Float[Tensor, "k d"], b: Float[Tensor, "m d"]) -> float:
    """Mean cosine of the principal angles (1: same subspace; ``|cos|`` for two directions; for
    a random k-subspace of R^d about ``sqrt(k/d)`` when ``k ≪ d``)."""
    return float(principal_cosines(a, b).mean())


def _cov_factor(covariance: Tensor, d: int) -> Tensor:
    cov = torch.as_tensor(covariance, dtype=torch.float64)
    if tuple(cov.shape) != (d, d):
        raise ShapeMismatchError(f"covariance has shape {tuple(cov.shape)}; expected [{d}, {d}]")
    if not bool(torch.isfinite(cov).all()):
        raise ConfigError("covariance holds NaN or inf")
    evals, evecs = torch.linalg.eigh((cov + cov.T) / 2)
    evals = evals.clamp_min(0.0)
    if float(evals.max()) <= 0.0:
        raise ConfigError("covariance is zero: activations do not vary over the probe set")
    return evecs * evals.sqrt()  # x = factor @ z ~ N(0, cov)


@no_type_check  # validates its own arguments (typed errors)
def random_frames(
    n: int,
    k: int,
    d: int,
    *,
    kind: ControlKind = "iso",
    covariance: Tensor | None = None,
    generator: torch.Generator,
    first: Tensor | None = None,
) -> Float[Tensor, "n k d"]:
    """``n`` random orthonormal k-frames in R^d (float64), nested (see the module docstring).

    Each frame is the Gram–Schmidt basis of ``k`` independent draws: standard normals (``"iso"``:
    the span is uniform on the Grassmannian) or ``N(0, Σ)`` (``"cov"``: random subspaces where the
    activations vary). ``first`` ``[n, d]``: use these as the frames' first rows (normalised) and
    draw only rows ``2..k``.

    Raises:
        ConfigError: ``n < 1``, ``k`` outside ``1..d``, unknown kind, ``cov`` without covariance.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of random subspaces must be an int >= 1; got {n!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d:
        raise ConfigError(f"subspace rank k must be an int in 1..d_model={d}; got {k!r}")
    if kind not in ("iso", "cov"):
        raise ConfigError(f"unknown control kind {kind!r}; valid kinds: iso, cov")
    if kind == "cov" and covariance is None:
        raise ConfigError(
            "covariance-matched random subspaces need the aligned covariance (second moments)"
        )
    factor = _cov_factor(covariance, d) if kind == "cov" else None
    extra = k - (0 if first is None else 1)
    z = torch.randn(n, extra, d, generator=generator, dtype=torch.float64) if extra > 0 else None
    x = z if factor is None or z is None else z @ factor.T
    if first is not None:
        head = torch.as_tensor(first, dtype=torch.float64)
        if tuple(head.shape) != (n, d):
            raise ShapeMismatchError(
                f"first rows have shape {tuple(head.shape)}; expected [{n}, {d}]"
            )
        x = head[:, None] if x is None else torch.cat([head[:, None], x], dim=1)
    q, r = torch.linalg.qr(x.transpose(1, 2))  # [n, d, k]
    sign = torch.sign(torch.diagonal(r, dim1=1, dim2=2))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return (q * sign[:, None, :]).transpose(1, 2)


def complement(basis: Float[Tensor, "k d"]) -> Float[Tensor, "m d"]:
    """An orthonormal basis ``[d − k, d]`` of the orthogonal complement of ``span(basis)``
    (float64; deterministic: the eigenvectors of ``I − BᵀB`` with eigenvalue 1)."""
    b = torch.as_tensor(basis, dtype=torch.float64)
    d = b.shape[1]
    proj = torch.eye(d, dtype=torch.float64) - b.T @ b
    evals, evecs = torch.linalg.eigh((proj + proj.T) / 2)
    return evecs[:, evals > 0.5].T.contiguous()
