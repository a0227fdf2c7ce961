"""Registry of direction methods, function twins, and :func:`resolve_directions`.

Wherever revlens takes a direction, it accepts a method name (``"mean_diff"``, ``"pca"``,
``"probe"``, ``"whitened"``), an estimator instance, a :class:`Directions`, or a tensor
``[n_layers_collected, d_model]``.
"""

from torch import Tensor

from revlens.collect.stats import HistoryStats
from revlens.directions.base import Directions
from revlens.directions.estimators import (
    DirectionEstimator,
    LinearProbe,
    MeanDiff,
    PairedPCA,
    Whitened,
)
from revlens.errors import ConfigError, ShapeMismatchError

__all__ = [
    "ESTIMATORS",
    "DirectionSpec",
    "linear_probe",
    "mean_diff",
    "paired_pca",
    "resolve_directions",
    "whitened",
]

ESTIMATORS: dict[str, type[DirectionEstimator]] = {
    "mean_diff": MeanDiff,
    "pca": PairedPCA,
    "probe": LinearProbe,
    "whitened": Whitened,
}


def mean_diff(stats: HistoryStats) -> Directions:
    """Function twin of :class:`MeanDiff` (no stability bootstrap)."""
    return MeanDiff(n_bootstrap=0).fit(stats).direction_


def paired_pca(stats: HistoryStats) -> Directions:
    """Function twin of :class:`PairedPCA` (no stability bootstrap)."""
    return PairedPCA(n_bootstrap=0).fit(stats).direction_


def linear_probe(stats: HistoryStats) -> Directions:
    """Function twin of :class:`LinearProbe` (no stability bootstrap)."""
    return LinearProbe(n_bootstrap=0).fit(stats).direction_


def whitened(stats: HistoryStats) -> Directions:
    """Function twin of :class:`Whitened` (no stability bootstrap)."""
    return Whitened(n_bootstrap=0).fit(stats).direction_


DirectionSpec = str | DirectionEstimator | Directions | Tensor
"""What a direction argument accepts (a tensor must be ``[n_layers_collected, d_model]``;
the shape is checked inside, so the error names the expected shape)."""


def resolve_directions(spec: DirectionSpec, stats: HistoryStats) -> Directions:
    """Directions for every collected layer of ``stats`` from a method name, an estimator
    (fitted here), a :class:`Directions` (restricted to the collected layers) or a tensor
    ``[n_layers_collected, d_model]`` (rows in the order of ``stats.layers``; normalised).

    Raises:
        ConfigError: unknown method name (lists the valid ones), zero-norm row, or another type.
        ShapeMismatchError: a tensor or Directions of the wrong shape / d_model.
        SiteError: a Directions lacking a collected layer.
    """
    if isinstance(spec, str):
        if spec not in ESTIMATORS:
            raise ConfigError(
                f"unknown direction method {spec!r}; valid methods: {', '.join(ESTIMATORS)}"
            )
        return ESTIMATORS[spec]().fit(stats).direction_
    if isinstance(spec, DirectionEstimator):
        return spec.fit(stats).direction_
    if isinstance(spec, Directions):
        spec.check_d_model(stats.d_model, "collected statistics")
        return spec.select(stats.layers)
    if isinstance(spec, Tensor):
        expected = (len(stats.layers), stats.d_model)
        if tuple(spec.shape) != expected:
            raise ShapeMismatchError(
                f"a direction tensor must have shape [n_layers_collected={expected[0]}, d_model={expected[1]}] "
                f"(rows for layers {stats.layers}); got {tuple(spec.shape)}"
            )
        return Directions.from_tensor(spec, stats.layers, method="custom", site=stats.site)
    raise ConfigError(
        f"cannot make directions from {type(spec).__name__}; expected a method name "
        f"({', '.join(ESTIMATORS)}), an estimator, a Directions or a [layer, d_model] tensor"
    )
