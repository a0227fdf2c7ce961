"""Random control directions for causal studies (DESIGN §2 "Nulls").

- ``iso``: uniform on the unit sphere of R^d (normalised standard normals);
- ``cov``: covariance-matched — ``x ~ N(0, Σ)`` normalised, with ``Σ`` the aligned model's
  activation covariance at the layer. Activation space is anisotropic, so random directions that
  live where the activations vary are the stricter control.

Every draw goes through an explicit ``torch.Generator``.
"""

import torch
from jaxtyping import Float
from torch import Tensor

from revlens.errors import ConfigError, ShapeMismatchError
from revlens.modes import CONTROL_KINDS, ControlKind

__all__ = ["CONTROL_KINDS", "ControlKind", "random_directions"]


def random_directions(
    n: int,
    d_model: int,
    *,
    kind: ControlKind = "iso",
    covariance: Float[Tensor, "d_model d_model"] | None = None,
    generator: torch.Generator,
) -> Float[Tensor, "n d_model"]:
    """``n`` random unit directions in R^d_model (float32).

    Raises:
        ConfigError: ``n < 1``, unknown kind, ``cov`` without a covariance.
        ShapeMismatchError: a covariance that is not ``[d_model, d_model]``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"controls must be an int >= 1; got {n!r}")
    z = torch.randn(n, d_model, generator=generator, dtype=torch.float64)
    if kind == "iso":
        x = z
    elif kind == "cov":
        if covariance is None:
            raise ConfigError(
                "covariance-matched controls need the aligned covariance (second moments)"
            )
        cov = torch.as_tensor(covariance, dtype=torch.float64)
        if tuple(cov.shape) != (d_model, d_model):
            raise ShapeMismatchError(
                f"covariance has shape {tuple(cov.shape)}; expected [{d_model}, {d_model}]"
            )
        evals, evecs = torch.linalg.eigh((cov + cov.T) / 2)
        x = (z * evals.clamp_min(0.0).sqrt()) @ evecs.T
    else:
        raise ConfigError(f"unknown control kind {kind!r}; valid kinds: iso, cov")
    norms = x.norm(dim=1, keepdim=True)
    if bool((norms <= 1e-12).any()):
        raise ConfigError(f"a {kind} control direction has zero norm (degenerate covariance?)")
    return (x / norms).to(torch.float32)
