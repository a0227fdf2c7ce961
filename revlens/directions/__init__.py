"""Per-layer reversion-direction candidates (see :class:`Directions` and the estimators)."""

from revlens.directions.base import Directions
from revlens.directions.contrastive import RefusalDirection, check_direction_inputs
from revlens.directions.discriminant import LinearProbe, Whitened
from revlens.directions.estimators import DirectionEstimator, MeanDiff
from revlens.directions.pca import PairedPCA
from revlens.directions.refusal import RefusalDirections, refusal_directions
from revlens.directions.registry import (
    ESTIMATORS,
    DirectionSpec,
    linear_probe,
    mean_diff,
    paired_pca,
    resolve_directions,
    whitened,
)

__all__ = [
    "ESTIMATORS",
    "DirectionEstimator",
    "DirectionSpec",
    "Directions",
    "LinearProbe",
    "MeanDiff",
    "PairedPCA",
    "RefusalDirection",
    "RefusalDirections",
    "Whitened",
    "check_direction_inputs",
    "linear_probe",
    "mean_diff",
    "paired_pca",
    "refusal_directions",
    "resolve_directions",
    "whitened",
]
