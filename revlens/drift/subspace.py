"""Drift against rank-k reversion subspaces, beside exact and covariance-matched nulls (DESIGN §5).

For a drift ``d = μ_l(θ_t) − μ_l(run start)`` and the first ``k`` rows ``B_k`` of a layer's
orthonormal basis, the **energy fraction** is ``‖B_k d‖² / ‖d‖²`` — the share of the drift's
squared norm inside the subspace (for ``k = 1`` it is ``frac = cos²`` of :func:`drift_table`).

Nulls:

- **isotropic, exact**: for ``u`` uniform on the unit sphere of R^d and any fixed k-subspace,
  ``‖B_k u‖² ~ Beta(k/2, (d − k)/2)`` (the squared norm of the first ``k`` of ``d`` coordinates
  of a normalised Gaussian); its mean is ``k/d``. :func:`energy_quantile` / :func:`energy_pvalue`
  are exact (scipy). The test is one-sided — more energy than chance — and, unlike the signed
  ``cos`` test of :func:`drift_table`, blind to the sign (``k = 1``: a two-sided test of cos);
- **covariance-matched**: random k-subspaces spanned by ``k`` draws from ``N(0, Σ_l)``, ``Σ_l``
  the aligned activation covariance at the layer (random subspaces where the activations vary;
  stricter than the isotropic null on an anisotropic stream). The first draw of each null
  subspace is the covariance-matched null direction of :func:`drift_table` (same seed, same
  stream), so the rank-1 null here is the square of that one; further draws come from a stream
  of their own and the subspaces are nested in ``k``.

Confidence intervals of the energy come from the paired Poisson-bootstrap replicates of the drift
(the basis held fixed), percentile intervals as in :func:`drift_table`.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from scipy import stats as sps
from torch import Tensor

from revlens._seeds import generator
from revlens.collect.stats import HistoryStats
from revlens.directions.base import Directions
from revlens.directions.subspace import random_frames, span_rows
from revlens.drift.projection import _drifts, _prepared, project
from revlens.errors import ConfigError
from revlens.nulls import covariance_null_directions, empirical_pvalue

__all__ = [
    "SUBSPACE_COLUMNS",
    "energy_pvalue",
    "energy_quantile",
    "subspace_drift_table",
    "subspace_energy",
]

SUBSPACE_COLUMNS = [
    "run",
    "step",
    "layer",
    "method",
    "rank",
    "control",
    "kind",
    "energy",
    "energy_lo",
    "energy_hi",
    "proj_norm",
    "norm",
    "cos",
    "null_iso_mean",
    "null_iso_q",
    "null_cov_mean",
    "null_cov_q",
    "p_iso",
    "p_cov",
    "significant",
    "significant_cov",
]


def _check_kd(d_model: int, k: int) -> None:
    if not 1 <= int(k) < int(d_model):
        raise ConfigError(f"subspace rank k={k} must be in 1..d_model-1={int(d_model) - 1}")


def energy_quantile(d_model: int, k: int, q: float = 0.99) -> float:
    """Exact ``q``-quantile of ``‖B_k u‖²`` for ``u`` uniform on the sphere of R^d_model."""
    if not 0.0 < q < 1.0:
        raise ConfigError(f"quantile q must be in (0, 1), got {q}")
    _check_kd(d_model, k)
    return float(sps.beta.ppf(q, k / 2.0, (d_model - k) / 2.0))


def energy_pvalue(energy: float | np.ndarray, d_model: int, k: int) -> float | np.ndarray:
    """One-sided exact p-value ``P(‖B_k u‖² ≥ energy)`` under the isotropic null."""
    _check_kd(d_model, k)
    p = sps.beta.sf(
        np.clip(np.asarray(energy, dtype=np.float64), 0.0, 1.0), k / 2.0, (d_model - k) / 2.0
    )
    return float(p) if np.ndim(p) == 0 else p


def subspace_energy(
    drift: Float[Tensor, "... d"], basis: Float[Tensor, "k d"]
) -> Float[Tensor, "... k"]:
    """Energy fractions ``‖B_j d‖² / ‖d‖²`` for ``j = 1..k`` (nested; NaN for a zero drift)."""
    d = torch.as_tensor(drift, dtype=torch.float64)
    coords = d @ torch.as_tensor(basis, dtype=torch.float64).T
    norm2 = (d**2).sum(-1, keepdim=True)
    return torch.cumsum(coords**2, dim=-1) / torch.where(
        norm2 > 0, norm2, torch.full_like(norm2, math.nan)
    )


def _bases(directions: Mapping[str, Directions], layer: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Per method: the layer's basis re-orthonormalised in float64 (rows in order), and its first
    row as stored (what :func:`drift_table` projects on)."""
    out = {}
    for method, dirs in directions.items():
        rows = dirs.subspace(layer).to(torch.float64)
        out[method] = (span_rows(rows, rows.shape[0], tol=1e-6), rows[0])
    return out


def _null_energies(stats: HistoryStats, n_null: int, seed: int, k_max: int) -> dict[int, Tensor]:
    """layer -> ``[n_null, k_max, d]`` nested covariance-matched null frames."""
    if n_null <= 0:
        return {}
    cov = stats[stats.aligned_name].covariance  # ConfigError if moments were not collected
    out = {}
    for pos, layer in enumerate(stats.layers):
        first = covariance_null_directions(
            cov[pos], n_null, generator=generator(seed, "cov-null", layer)
        )
        out[layer] = random_frames(
            n_null,
            k_max,
            stats.d_model,
            kind="cov",
            covariance=cov[pos],
            generator=generator(seed, "cov-null-frame", layer),
            first=first,
        )
    return out


def _rows(
    d: Tensor,
    boot: Tensor | None,
    bases: Mapping[str, tuple[Tensor, Tensor]],
    ranks: Sequence[int],
    null: Tensor | None,
    d_model: int,
    q: float,
    ci: float,
) -> list[dict]:
    """Rows of one (run, step, layer): one per (method, k)."""
    null_e = None
    if null is not None and float(d.norm()) > 0:
        coords = null @ d  # [n_null, k_max]
        null_e = torch.cumsum(coords**2, dim=1) / float(d @ d)
    rows = []
    for method, (b, v) in bases.items():
        e = subspace_energy(d, b)
        be = subspace_energy(boot, b) if boot is not None else None
        first = {key: float(val) for key, val in project(d, v).items()}
        if boot is not None:  # k = 1 interval from the stored row, like drift_table's
            be[:, 0] = project(boot, v)["frac"]
        for k in ranks:
            if k > b.shape[0]:
                continue
            energy = (
                first["frac"] if k == 1 else float(e[k - 1])
            )  # k = 1: drift_table's frac, bit for bit
            lo = hi = math.nan
            if be is not None:
                vals = be[:, k - 1].numpy()
                vals = vals[~np.isnan(vals)]
                if vals.size:
                    lo, hi = (
                        float(x)
                        for x in np.percentile(vals, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2])
                    )
            iso_q = energy_quantile(d_model, k, q)
            ne = null_e[:, k - 1].numpy() if null_e is not None else None
            cov_q = float(np.quantile(ne, q)) if ne is not None else math.nan
            defined = not math.isnan(energy)
            rows.append(
                {
                    "method": method,
                    "rank": k,
                    "energy": energy,
                    "energy_lo": lo,
                    "energy_hi": hi,
                    "proj_norm": math.sqrt(energy) * float(d.norm()) if defined else math.nan,
                    "norm": float(d.norm()),
                    "cos": first["cos"],
                    "null_iso_mean": k / d_model,
                    "null_iso_q": iso_q,
                    "null_cov_mean": float(ne.mean()) if ne is not None else math.nan,
                    "null_cov_q": cov_q,
                    "p_iso": float(energy_pvalue(energy, d_model, k)) if defined else math.nan,
                    "p_cov": empirical_pvalue(energy, ne) if ne is not None else math.nan,
                    "significant": bool(energy > iso_q),
                    "significant_cov": bool(energy > cov_q),
                }
            )
    return rows


def _ranks(
    directions: Mapping[str, Directions], ranks: Sequence[int] | None, d_model: int
) -> list[int]:
    k_max = max(dirs.rank for dirs in directions.values())
    if ranks is None:
        return list(range(1, k_max + 1))
    out = sorted({int(k) for k in ranks})
    bad = [k for k in out if not 1 <= k <= k_max or k >= d_model]
    if bad:
        raise ConfigError(
            f"ranks {bad} are outside 1..{min(k_max, d_model - 1)} (the directions have rank {k_max})"
        )
    return out


def subspace_drift_table(
    stats: HistoryStats,
    directions: Mapping[str, Directions] | Directions,
    *,
    ranks: Sequence[int] | None = None,
    n_null: int = 1000,
    seed: int = 0,
    q: float = 0.99,
    ci: float = 0.95,
    kinds: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per (run, step, layer, method, k): the drift's energy in the first ``k`` rows.

    Args:
        stats: collected statistics (second moments of ``aligned`` needed when ``n_null > 0``).
        directions: method name -> :class:`Directions` of any rank (or one Directions).
        ranks: the ``k`` to report (default: ``1..rank``); a method of lower rank skips the larger.
        n_null: random covariance-matched k-subspaces per layer (0 disables that null).
        seed: seed of that null (one stream per layer; the first rows are :func:`drift_table`'s).
        q: null quantile used as threshold (0.99).
        ci: confidence level of ``[energy_lo, energy_hi]``.
        kinds: run -> kind (default ``stats.kinds``).

    Returns:
        DataFrame with :data:`SUBSPACE_COLUMNS`: ``energy`` (``k = 1``: equal to
        :func:`drift_table`'s ``frac``), ``proj_norm`` (``‖B_k d‖``), ``norm``, ``cos`` (of the
        first row, as in :func:`drift_table`), ``null_iso_mean`` (``k/d``), ``null_iso_q`` (exact
        Beta quantile), ``null_cov_mean`` / ``null_cov_q`` (covariance-matched null), ``p_iso``,
        ``p_cov``, ``significant`` (``energy > null_iso_q``), ``significant_cov``.
    """
    directions = _prepared(stats, directions, ci, subspace=True)
    ks = _ranks(directions, ranks, stats.d_model)
    nulls = _null_energies(stats, int(n_null), seed, max(ks))
    bases = {layer: _bases(directions, layer) for layer in stats.layers}
    rows = []
    for key, layer, drift, boot in _drifts(stats, kinds):
        for row in _rows(drift, boot, bases[layer], ks, nulls.get(layer), stats.d_model, q, ci):
            rows.append({**key, **row})
    df = pd.DataFrame(rows, columns=SUBSPACE_COLUMNS)
    return df.astype(
        {
            "step": "int64",
            "layer": "int64",
            "rank": "int64",
            "control": "bool",
            "significant": "bool",
            "significant_cov": "bool",
        }
    )
