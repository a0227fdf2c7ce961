"""Linear algebra the estimators share, sized for 7B activations (d 4096, 10 000+ prompts)."""

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["top_axis"]


def top_axis(
    x: Float[Tensor, "n d"], *, seed: int = 0, exact_below: int = 1 << 22
) -> Float[Tensor, " d"]:
    """First right-singular vector of ``x`` (sign arbitrary).

    Exact SVD while ``n·d`` is below ``exact_below``; beyond, block subspace iteration on
    ``xᵀx`` (8 vectors, Rayleigh–Ritz, converged to a relative residual of 1e-10; one pass over
    ``x`` per iteration instead of the SVD's ``O(n d²)``), falling back to the SVD if it does not
    converge in 300 iterations.
    """
    n, d = x.shape
    if n * d < exact_below or min(n, d) <= 8:
        return torch.linalg.svd(x, full_matrices=False)[2][0]
    gen = torch.Generator().manual_seed(int(seed))
    q = torch.linalg.qr(
        torch.cat([x.mean(0, keepdim=True).T, torch.randn(d, 7, generator=gen, dtype=x.dtype)], 1)
    )[0]
    for _ in range(300):
        z = x.T @ (x @ q)  # [d, 8]
        q, _ = torch.linalg.qr(z)
        small = q.T @ (x.T @ (x @ q))
        vals, vecs = torch.linalg.eigh(small)
        q = q @ vecs.flip(1)
        v, lam = q[:, 0], vals[-1]
        resid = (x.T @ (x @ v) - lam * v).norm()
        if lam > 0 and float(resid) <= 1e-10 * float(lam):
            return v
    return torch.linalg.svd(x, full_matrices=False)[2][0]  # pragma: no cover - ill-conditioned
