"""Project fine-tuning drift onto reversion directions (DESIGN §2, docs/architecture.md).

Drift at (run, t, l): ``d = μ_l(θ_t) − μ_l(run start)``; the run start is ``aligned`` for ordinary
runs and the base for control runs (``HistoryStats.run_starts``). For each direction ``v``:
``cos(d, v)``, scalar projection ``d·v``, fraction ``(d·v)² / ‖d‖²`` of the drift's squared norm
along ``v``, and ``‖d‖``. Confidence intervals of ``cos`` come from the paired Poisson-bootstrap
replicate means (``boot_mean(t) − boot_mean(start)``: same prompt, same weight) — a bootstrap
over prompts of the drift, with the direction held fixed; the interval is the percentile one
(2.5 / 97.5 %). Near ``|cos| = 1`` resampling noise can only lower ``|cos|``, so there the interval
may sit just below the estimate.
"""

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from revlens._seeds import generator
from revlens.collect.stats import HistoryStats
from revlens.directions.base import Directions
from revlens.errors import ConfigError
from revlens.nulls import (
    covariance_null_directions,
    empirical_pvalue,
    isotropic_pvalue,
    isotropic_quantile,
)

__all__ = ["DRIFT_COLUMNS", "drift_table", "project"]

DRIFT_COLUMNS = [
    "run",
    "step",
    "layer",
    "method",
    "control",
    "kind",
    "cos",
    "cos_lo",
    "cos_hi",
    "proj",
    "frac",
    "norm",
    "null_iso_p99",
    "null_cov_p99",
    "p_iso",
    "p_cov",
    "significant",
    "significant_cov",
]


def project(drift: Float[Tensor, "... d"], v: Float[Tensor, " d"]) -> dict[str, Tensor]:
    """``cos``, ``proj`` (= d·v), ``frac`` (= (d·v)²/‖d‖²) and ``norm`` (= ‖d‖) of drift on unit ``v``.

    A zero drift gives ``cos = frac = nan``.
    """
    d = torch.as_tensor(drift, dtype=torch.float64)
    u = torch.as_tensor(v, dtype=torch.float64)
    u = u / u.norm()
    proj = d @ u
    norm = d.norm(dim=-1)
    safe = torch.where(norm > 0, norm, torch.full_like(norm, math.nan))
    return {"cos": proj / safe, "proj": proj, "frac": proj**2 / safe**2, "norm": norm}


def _cov_nulls(stats: HistoryStats, n_null: int, seed: int) -> dict[int, Tensor]:
    """layer -> ``n_null`` covariance-matched random unit directions (one stream per layer, so a
    layer's null does not depend on which other layers were asked)."""
    if n_null <= 0:
        return {}
    cov = stats[stats.aligned_name].covariance  # ConfigError if moments were not collected
    return {
        layer: covariance_null_directions(
            cov[pos], n_null, generator=generator(seed, "cov-null", layer)
        )
        for pos, layer in enumerate(stats.layers)
    }


def _prepared(
    stats: HistoryStats,
    directions: Mapping[str, Directions] | Directions,
    ci: float,
    *,
    subspace: bool = False,
) -> dict[str, Directions]:
    """The checks :func:`drift_table` and :func:`~revlens.drift.subspace_drift_table` share, before
    any work: ``directions`` as a mapping (one Directions keyed by its method), a direction (or, with
    ``subspace``, a basis) at every collected layer, a valid ``ci``, at least one run."""
    if isinstance(directions, Directions):
        directions = {directions.method: directions}
    if not directions:
        raise ConfigError("no directions to project on")
    if not 0.0 < ci < 1.0:
        raise ConfigError(f"ci must be in (0, 1), got {ci}")
    for name, dirs in directions.items():
        dirs.check_d_model(stats.d_model, f"statistics (method {name})")
        for layer in stats.layers:
            dirs.subspace(layer) if subspace else dirs[
                layer
            ]  # SiteError if a collected layer has none
    if not stats.runs:
        raise ConfigError("the statistics hold no fine-tuning run to project")
    return dict(directions)


def _drifts(
    stats: HistoryStats, kinds: Mapping[str, str] | None
) -> Iterator[tuple[dict[str, Any], int, Tensor, Tensor | None]]:
    """Every (run, step, layer) of the statistics: its row key (``run``, ``control``, ``kind``,
    ``step``, ``layer``), the drift ``μ(θ_t) − μ(run start)`` ``[d]`` and its paired bootstrap
    replicates ``[boot, d]`` (``None`` without bootstrap) — the walk both drift tables share."""
    kinds = {**stats.kinds, **(kinds or {})}
    for run, steps in stats.runs.items():
        start = stats[stats.run_starts[run]]
        head = {"run": run, "control": run in stats.controls, "kind": kinds.get(run, "run")}
        for step, name in steps.items():
            ck = stats[name]
            drift = ck.mean - start.mean  # [layer, d]
            boot = None
            if ck.boot_mean is not None and start.boot_mean is not None:
                boot = ck.boot_mean - start.boot_mean  # [boot, layer, d]
            for pos, layer in enumerate(stats.layers):
                yield (
                    {**head, "step": int(step), "layer": int(layer)},
                    int(layer),
                    drift[pos],
                    None if boot is None else boot[:, pos],
                )


def _interval(boot: Tensor | None, v: Tensor, lo_q: float, hi_q: float) -> tuple[float, float]:
    if boot is None:
        return math.nan, math.nan
    bc = project(boot, v)["cos"].numpy()
    bc = bc[~np.isnan(bc)]
    if not bc.size:
        return math.nan, math.nan
    lo, hi = np.percentile(bc, [lo_q, hi_q])
    return float(lo), float(hi)


def _layer_rows(
    d: Tensor,
    boot: Tensor | None,
    layer: int,
    directions: Mapping[str, Directions],
    null: Tensor | None,
    d_model: int,
    iso_p99: float,
    q: float,
    ci: float,
) -> list[dict]:
    """One row per method at one (run, step, layer)."""
    norm = float(d.norm())
    cov_cos = (null @ d / norm).numpy() if null is not None and norm > 0 else None
    cov_p99 = float(np.quantile(cov_cos, q)) if cov_cos is not None else math.nan
    rows = []
    for method, dirs in directions.items():
        v = dirs[layer].to(torch.float64)
        p = {k: float(t) for k, t in project(d, v).items()}
        lo, hi = _interval(boot, v, 100 * (1 - ci) / 2, 100 * (1 + ci) / 2)
        c = p["cos"]
        rows.append(
            {
                "method": method,
                "cos": c,
                "cos_lo": lo,
                "cos_hi": hi,
                "proj": p["proj"],
                "frac": p["frac"],
                "norm": p["norm"],
                "null_iso_p99": iso_p99,
                "null_cov_p99": cov_p99,
                "p_iso": float(isotropic_pvalue(c, d_model)) if not math.isnan(c) else math.nan,
                "p_cov": empirical_pvalue(c, cov_cos) if cov_cos is not None else math.nan,
                "significant": bool(c > iso_p99),
                "significant_cov": bool(c > cov_p99),
            }
        )
    return rows


def drift_table(
    stats: HistoryStats,
    directions: Mapping[str, Directions] | Directions,
    *,
    n_null: int = 1000,
    seed: int = 0,
    q: float = 0.99,
    ci: float = 0.95,
    kinds: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per (run, step, layer, method): projection, CI and nulls.

    Args:
        stats: collected statistics (second moments of ``aligned`` needed when ``n_null > 0``).
        directions: method name -> :class:`Directions` (or one Directions, keyed by its method).
        n_null: random directions per layer for the covariance-matched null (0 disables it:
            ``null_cov_p99``/``p_cov`` are ``nan`` and ``significant_cov`` is False).
        seed: seed of the covariance-matched null (one ``torch.Generator`` stream per layer).
        q: null quantile used as threshold (0.99: the paper's p99).
        ci: confidence level of the bootstrap interval ``[cos_lo, cos_hi]``.
        kinds: run -> kind (default: ``stats.kinds``: ``"run"``, ``"control"``, ``"blocked"``...).

    Returns:
        DataFrame with columns :data:`DRIFT_COLUMNS`; ``significant`` is ``cos > null_iso_p99``
        (the paper's test) and ``significant_cov`` is ``cos > null_cov_p99``.
    """
    directions = _prepared(stats, directions, ci)
    iso_p99 = isotropic_quantile(stats.d_model, q)
    nulls = _cov_nulls(stats, int(n_null), seed)
    rows = []
    for key, layer, drift, boot in _drifts(stats, kinds):
        for row in _layer_rows(
            drift, boot, layer, directions, nulls.get(layer), stats.d_model, iso_p99, q, ci
        ):
            rows.append({**key, **row})
    df = pd.DataFrame(rows, columns=DRIFT_COLUMNS)
    return df.astype(
        {
            "step": "int64",
            "layer": "int64",
            "control": "bool",
            "significant": "bool",
            "significant_cov": "bool",
        }
    )
