"""Registry of direction methods, function twins, and :func:`resolve_directions`.

Wherever revlens takes a direction, it accepts a method name (``"mean_diff"``, ``"pca"``,
``"probe"``, ``"whitened"``, or ``"refusal"``: Arditi's harmful − harmless direction on the aligned
checkpoint, from labelled probes), an estimator instance, a :class:`Directions`, or a tensor
``[n_layers_collected, d_model]``.
"""

from collections.abc import Sequence

from torch import Tensor

from revlens.collect.stats import HistoryStats
from revlens.directions.base import Directions
from revlens.directions.contrastive import RefusalDirection
from revlens.directions.discriminant import LinearProbe, Whitened
from revlens.directions.estimators import DirectionEstimator, MeanDiff
from revlens.directions.pca import PairedPCA
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
    "refusal": RefusalDirection,
}


def mean_diff(stats: HistoryStats, n_components: int = 1) -> Directions:
    """Function twin of :class:`MeanDiff` (no stability bootstrap; ``n_components`` rows per layer)."""
    return MeanDiff(n_components=n_components, n_bootstrap=0).fit(stats).direction_


def paired_pca(stats: HistoryStats, n_components: int = 1) -> Directions:
    """Function twin of :class:`PairedPCA` (no stability bootstrap; ``n_components`` rows per layer)."""
    return PairedPCA(n_components=n_components, n_bootstrap=0).fit(stats).direction_


def linear_probe(stats: HistoryStats, n_components: int = 1) -> Directions:
    """Function twin of :class:`LinearProbe` (no stability bootstrap; ``n_components`` rows per layer)."""
    return LinearProbe(n_components=n_components, n_bootstrap=0).fit(stats).direction_


def whitened(stats: HistoryStats, n_components: int = 1) -> Directions:
    """Function twin of :class:`Whitened` (no stability bootstrap; ``n_components`` rows per layer)."""
    return Whitened(n_components=n_components, n_bootstrap=0).fit(stats).direction_


DirectionSpec = str | DirectionEstimator | Directions | Tensor
"""What a direction argument accepts: a method name, an estimator, a :class:`Directions`, or a
tensor ``[layer, d]`` / ``[layer, k, d]`` (rows in the order of the layers)."""


def _method_list() -> str:
    return ", ".join(ESTIMATORS)


def resolve_directions(
    spec: DirectionSpec,
    stats: HistoryStats | None = None,
    *,
    layers: Sequence[int] | None = None,
    d_model: int | None = None,
    n_bootstrap: int = 0,
    seed: int = 0,
    n_components: int = 1,
) -> Directions:
    """The one way every stage turns a direction argument into :class:`Directions`.

    Args:
        spec: a method name (fitted on ``stats``), an estimator (fitted on ``stats`` unless it
            is fitted already), a :class:`Directions` (restricted to ``layers``), or a tensor
            ``[len(layers), d]`` / ``[len(layers), k, d]`` (normalised / orthonormalised).
        stats: collected statistics (needed for names and estimators; gives the default layers).
        layers: the layers wanted (default: ``stats.layers``, or a Directions' own layers).
        d_model: the stream width the directions must have (default: ``stats.d_model``).
        n_bootstrap, seed: stability bootstrap of an estimator built from a name.
        n_components: rows per layer of an estimator built from a name (a rank-k subspace).

    Raises:
        ConfigError: unknown method name (lists the valid ones), a name without statistics,
            zero-norm row, or another type.
        ShapeMismatchError: a tensor or Directions of the wrong shape / d_model.
        SiteError: a Directions lacking a wanted layer.
    """
    width = d_model if d_model is not None else (stats.d_model if stats is not None else None)
    if isinstance(spec, str):
        if spec not in ESTIMATORS:
            raise ConfigError(f"unknown direction method {spec!r}; valid methods: {_method_list()}")
        spec = ESTIMATORS[spec](n_bootstrap=n_bootstrap, seed=seed, n_components=n_components)
    if isinstance(spec, DirectionEstimator):
        if stats is not None:
            spec.fit(stats)  # always on these statistics: an estimator fitted elsewhere is refitted
        elif not spec.is_fitted:
            raise ConfigError(
                f"direction method {spec.method!r} needs collected statistics to fit on"
            )
        out = spec.direction_
    elif isinstance(spec, Directions):
        out = spec
    elif isinstance(spec, Tensor):
        rows = list(layers) if layers is not None else (stats.layers if stats is not None else None)
        if rows is None:
            raise ConfigError("directions given as a tensor need their layers (layers=[...])")
        if (
            spec.ndim not in (2, 3)
            or spec.shape[0] != len(rows)
            or (width is not None and spec.shape[-1] != width)
        ):
            raise ShapeMismatchError(
                f"a direction tensor must have shape [n_layers_collected={len(rows)}, d_model={width}] or "
                f"[n_layers, k, d_model] (rows for layers {list(rows)}); got {tuple(spec.shape)}"
            )
        out = Directions.from_tensor(
            spec, rows, method="custom", site=stats.site if stats is not None else "resid_post"
        )
    else:
        raise ConfigError(
            f"cannot make directions from {type(spec).__name__}; expected a method name "
            f"({_method_list()}), an estimator, a Directions or a [layer, d_model] tensor"
        )
    if width is not None:
        out.check_d_model(width, "collected statistics" if stats is not None else "model")
    wanted = (
        list(layers) if layers is not None else (list(stats.layers) if stats is not None else None)
    )
    return out.select(wanted) if wanted is not None and list(out.layers) != wanted else out
