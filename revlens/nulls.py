"""Null distributions for drift alignment and for the direction itself (DESIGN §2).

- **Isotropic** (exact, no sampling): for ``u`` uniform on the unit sphere of R^d and any fixed
  unit ``v``, ``(cos(u, v) + 1) / 2 ~ Beta((d − 1)/2, (d − 1)/2)``. The test is one-sided:
  reversion is motion *along* ``+v``.
- **Covariance-matched**: random directions ``u ~ N(0, Σ_l)`` (normalised), ``Σ_l`` the aligned
  model's activation covariance at layer ``l``. Activation space is anisotropic, and drift tends to
  live where activations vary, so this null is stricter than the isotropic one.
- **Label permutation** for the direction itself: paired sign flips of the per-prompt
  differences ``h(base, x_i) − h(aligned, x_i)``; the statistic is ``‖mean_i diff_i‖``.

Empirical p-values use the ``(1 + #{null ≥ observed}) / (1 + n)`` convention (never 0).
"""

import math

import numpy as np
import torch
from jaxtyping import Float
from scipy import stats as sps
from torch import Tensor

from revlens.errors import ConfigError

__all__ = [
    "covariance_null_directions",
    "empirical_pvalue",
    "isotropic_p99",
    "isotropic_pvalue",
    "isotropic_quantile",
    "permutation_pvalue",
]


def _check_d(d_model: int) -> float:
    if int(d_model) < 2:
        raise ConfigError(f"the isotropic null needs d_model >= 2, got {d_model}")
    return (int(d_model) - 1) / 2.0


def isotropic_quantile(d_model: int, q: float = 0.99) -> float:
    """Exact ``q``-quantile of ``cos(u, v)`` for ``u`` uniform on the sphere of R^d_model."""
    if not 0.0 < q < 1.0:
        raise ConfigError(f"quantile q must be in (0, 1), got {q}")
    a = _check_d(d_model)
    return float(2.0 * sps.beta.ppf(q, a, a) - 1.0)


def isotropic_p99(d_model: int) -> float:
    """The isotropic null's 99th percentile of cos (the paper's significance threshold)."""
    return isotropic_quantile(d_model, 0.99)


def isotropic_pvalue(cos: float | np.ndarray, d_model: int) -> float | np.ndarray:
    """One-sided exact p-value ``P(cos(u, v) >= cos)`` under the isotropic null."""
    a = _check_d(d_model)
    c = np.clip(np.asarray(cos, dtype=np.float64), -1.0, 1.0)
    p = sps.beta.sf((c + 1.0) / 2.0, a, a)
    return float(p) if np.ndim(p) == 0 else p


def covariance_null_directions(
    cov: Float[Tensor, "d d"], n: int, *, generator: torch.Generator
) -> Float[Tensor, "n d"]:
    """``n`` unit directions ``u / ‖u‖`` with ``u ~ N(0, cov)`` (float64).

    ``cov`` is symmetrised and its negative eigenvalues (round-off) clipped to 0.

    Raises:
        ConfigError: ``n < 1``, a non-square or non-finite ``cov``, or a zero covariance.
    """
    if n < 1:
        raise ConfigError(f"number of null directions must be >= 1, got {n}")
    c = torch.as_tensor(cov, dtype=torch.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ConfigError(f"covariance must be square [d, d], got {tuple(c.shape)}")
    if not bool(torch.isfinite(c).all()):
        raise ConfigError("covariance holds NaN or inf")
    evals, evecs = torch.linalg.eigh((c + c.T) / 2)
    evals = evals.clamp_min(0.0)
    if float(evals.max()) <= 0.0:
        raise ConfigError("covariance is zero: activations do not vary over the probe set")
    z = torch.randn(n, c.shape[0], generator=generator, dtype=torch.float64)
    u = (z * evals.sqrt()) @ evecs.T
    return u / u.norm(dim=1, keepdim=True).clamp_min(1e-300)


def empirical_pvalue(observed: float, null: np.ndarray) -> float:
    """One-sided ``(1 + #{null >= observed}) / (1 + n)``; ``nan`` for a ``nan`` observation."""
    if math.isnan(observed):
        return math.nan
    null = np.asarray(null, dtype=np.float64)
    return float((1 + np.count_nonzero(null >= observed)) / (1 + null.size))


def permutation_pvalue(
    diffs: Float[Tensor, "prompt layer d"], n_permutations: int, *, generator: torch.Generator
) -> np.ndarray:
    """Paired sign-flip p-value of ``‖mean_i diffs_i‖`` per layer (base/aligned label swaps).

    Swapping the base and aligned labels of prompt ``i`` flips the sign of its difference; under
    the null that the labels carry no direction, every flip pattern is equally likely.

    Returns:
        ``[layer]`` p-values (``nan`` if ``n_permutations == 0``).
    """
    d = torch.as_tensor(diffs, dtype=torch.float64)
    if d.ndim != 3:
        raise ConfigError(f"diffs must be [prompt, layer, d], got {tuple(d.shape)}")
    if n_permutations == 0:
        return np.full(d.shape[1], math.nan)
    observed = d.mean(0).norm(dim=-1)  # [layer]
    count = torch.zeros(d.shape[1], dtype=torch.float64)
    done = 0
    while done < n_permutations:
        k = min(256, n_permutations - done)
        signs = (
            torch.randint(0, 2, (k, d.shape[0]), generator=generator, dtype=torch.float64) * 2 - 1
        )
        null = torch.einsum("kn,nld->kld", signs, d).norm(dim=-1) / d.shape[0]  # [k, layer]
        count += (null >= observed * (1 - 1e-12)).sum(0)
        done += k
    return ((1 + count) / (1 + n_permutations)).numpy()
