"""True orthogonal projectors onto V's top-k singular subspaces, on the space of ``m × n`` matrices.

With the Frobenius inner product ``⟨X, Y⟩ = tr(XᵀY)`` and ``V``'s top-k singular vectors
``U_k [m, k]``, ``R_k [n, k]`` (orthonormal columns), the maps

- ``left``:      ``P(X) = U_k U_kᵀ X``           (the output side),
- ``right``:     ``P(X) = X R_k R_kᵀ``           (the input side),
- ``both``:      ``P(X) = U_k U_kᵀ X R_k R_kᵀ``  (the ``k × k`` block ``span{u_i r_jᵀ}``),
- ``direction``: ``P(X) = ⟨X, V̂⟩ V̂``, ``V̂ = V / ‖V‖`` (the one flattened direction; no k),

are orthogonal projectors: idempotent (``P∘P = P``, since ``U_kᵀU_k = I``) and self-adjoint
(``⟨P X, Y⟩ = ⟨X, P Y⟩``); ``X − P(X)`` is the projector onto the orthogonal complement.

SafeLoRA (Hsu et al., 2024) projects LoRA's ``B`` with ``C = V Vᵀ / ‖V‖_F`` (its published code).
With ``V = Σ σ_i u_i r_iᵀ``, ``C = Σ (σ_i² / ‖V‖_F) u_i u_iᵀ``: it rescales each left singular
direction by ``σ_i² / ‖V‖_F`` instead of keeping it, so ``C² ≠ C`` unless every non-zero ``σ_i²``
equals ``‖V‖_F`` (a coincidence). It is not a projector; :func:`safelora_projection` builds it for
comparison (tests check that it is not idempotent while these projectors are).
"""

from dataclasses import dataclass
from typing import no_type_check

import torch
from jaxtyping import Float
from torch import Tensor

from revlens.errors import ConfigError
from revlens.modes import (
    WEIGHT_BLOCK_SIDES,
    SvdMethod,
    WeightBlockMode,
    WeightBlockSide,
    check_mode,
)
from revlens.weights.algebra import top_singular
from revlens.weights.nulls import haar_frames

__all__ = ["SubspaceProjector", "safelora_projection", "subspace_projector"]


@dataclass
class SubspaceProjector:
    """One of the projectors of the module docstring, for ``m × n`` matrices.

    Attributes:
        side: ``left``, ``right``, ``both`` or ``direction``.
        u: ``[m, k]`` orthonormal columns (left / both).
        r: ``[n, k]`` orthonormal columns (right / both).
        direction: ``[m, n]`` unit-norm matrix (direction).
    """

    side: WeightBlockSide
    u: Tensor | None = None
    r: Tensor | None = None
    direction: Tensor | None = None

    def __call__(self, x: Float[Tensor, "m n"]) -> Float[Tensor, "m n"]:
        """``P(x)``."""
        if self.side == "direction":
            d = self.direction.to(x.dtype)
            return (x * d).sum() * d
        out = x
        if self.u is not None:
            u = self.u.to(x.dtype)
            out = u @ (u.T @ out)
        if self.r is not None:
            r = self.r.to(x.dtype)
            out = (out @ r) @ r.T
        return out

    def complement(self, x: Float[Tensor, "m n"]) -> Float[Tensor, "m n"]:
        """``x − P(x)``: the projector onto the orthogonal complement."""
        return x - self(x)

    def project_factors(
        self, b: Float[Tensor, "m r"], a: Float[Tensor, "r n"], mode: WeightBlockMode
    ) -> tuple[Tensor, Tensor]:
        """LoRA factors ``(B', A')`` with ``B'A' = P(BA)`` (``mode="onto"``) or ``BA − P(BA)``
        (``"off"``), exactly, where that is a product of rank-r factors: ``left`` acts on ``B``,
        ``right`` on ``A``, ``both`` onto acts on both; ``both`` off and ``direction`` have no
        factor form (:class:`ConfigError`)."""
        if self.side == "direction" or (self.side == "both" and mode == "off"):
            raise ConfigError(
                f"side={self.side!r} with mode={mode!r} is not a product of LoRA factors; "
                "use side='left' or 'right' (or mode='onto') for LoRA"
            )
        if self.u is not None:
            u = self.u.to(b.dtype)
            pb = u @ (u.T @ b)
            b = pb if mode == "onto" else b - pb
        if self.r is not None:
            r = self.r.to(a.dtype)
            pa = (a @ r) @ r.T
            a = pa if mode == "onto" else a - pa
        return b, a


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def subspace_projector(
    v: Float[Tensor, "m n"],
    k: int,
    side: WeightBlockSide = "left",
    *,
    random: bool = False,
    generator: torch.Generator | None = None,
    svd: SvdMethod = "auto",
) -> SubspaceProjector:
    """The projector onto ``v``'s top-k ``side`` subspace, or (``random=True``, the control) onto a
    uniformly random (Haar) subspace of the same rank and side (a random unit direction for
    ``direction``), drawn from ``generator``.

    Raises:
        ConfigError: an unknown side, ``k`` outside ``1 .. min(m, n) − 1``, ``v = 0``.
    """
    check_mode("side", side, WEIGHT_BLOCK_SIDES)
    if v.ndim != 2:
        raise ConfigError(f"a subspace projector needs a matrix, got shape {tuple(v.shape)}")
    m, n = v.shape
    if side != "direction" and not 1 <= k < min(m, n):
        raise ConfigError(f"k={k} must lie in 1..{min(m, n) - 1} for a {m}×{n} weight")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    if side == "direction":
        d = torch.randn(m, n, generator=g, dtype=torch.float64).to(v.dtype) if random else v
        norm = float(d.norm())
        if norm == 0.0:
            raise ConfigError("V = 0 for this weight: it has no direction to project on")
        return SubspaceProjector(side, direction=d / norm)
    if random:
        u = haar_frames(1, m, k, generator=g, dtype=v.dtype)[0]
        r = haar_frames(1, n, k, generator=g, dtype=v.dtype)[0]
    else:
        if float(v.norm()) == 0.0:
            raise ConfigError("V = 0 for this weight: it has no singular subspace")
        u, _, r = top_singular(v, k, svd)
    return SubspaceProjector(
        side, u=u if side in ("left", "both") else None, r=r if side in ("right", "both") else None
    )


def safelora_projection(v: Float[Tensor, "m n"]) -> Float[Tensor, "m m"]:
    """SafeLoRA's published ``C = V Vᵀ / ‖V‖_F`` (applied as ``C @ B``): **not** a projector
    (see the module docstring); kept for comparison only."""
    return (v @ v.T) / v.norm()
