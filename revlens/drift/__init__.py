"""Drift of fine-tuning checkpoints projected on reversion directions, with nulls.

See :func:`drift_table` (projections, bootstrap CIs, isotropic and covariance-matched nulls),
:func:`subspace_drift_table` (the drift's energy in rank-k subspaces, beside the exact
Beta(k/2, (d−k)/2) null and covariance-matched random k-subspaces),
:mod:`revlens.nulls` and :func:`headline` (the paper's headline quantities).
"""

from revlens.drift.compare import COMPARE_COLUMNS, DirectionComparison, compare_directions
from revlens.drift.projection import DRIFT_COLUMNS, drift_table, project
from revlens.drift.subspace import (
    SUBSPACE_COLUMNS,
    energy_pvalue,
    energy_quantile,
    subspace_drift_table,
    subspace_energy,
)
from revlens.drift.summary import PAPER, headline, headline_frame
from revlens.nulls import (
    covariance_null_directions,
    empirical_pvalue,
    isotropic_p99,
    isotropic_pvalue,
    isotropic_quantile,
    permutation_pvalue,
)

__all__ = [
    "COMPARE_COLUMNS",
    "DRIFT_COLUMNS",
    "PAPER",
    "SUBSPACE_COLUMNS",
    "DirectionComparison",
    "compare_directions",
    "covariance_null_directions",
    "drift_table",
    "empirical_pvalue",
    "energy_pvalue",
    "energy_quantile",
    "headline",
    "headline_frame",
    "isotropic_p99",
    "isotropic_pvalue",
    "isotropic_quantile",
    "permutation_pvalue",
    "project",
    "subspace_drift_table",
    "subspace_energy",
]
