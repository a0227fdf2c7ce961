"""Drift of fine-tuning checkpoints projected on reversion directions, with nulls.

See :func:`drift_table` (projections, bootstrap CIs, isotropic and covariance-matched nulls),
:mod:`revlens.nulls` and :func:`headline` (the paper's headline quantities).
"""

from revlens.drift.projection import DRIFT_COLUMNS, drift_table, project
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
    "DRIFT_COLUMNS",
    "PAPER",
    "covariance_null_directions",
    "drift_table",
    "empirical_pvalue",
    "headline",
    "headline_frame",
    "isotropic_p99",
    "isotropic_pvalue",
    "isotropic_quantile",
    "permutation_pvalue",
    "project",
]
