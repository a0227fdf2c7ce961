"""Reversion-direction estimators (scikit-learn conventions).

Every estimator turns a :class:`~revlens.collect.HistoryStats` into one unit direction per
collected layer, pointing **from aligned toward base** (DESIGN §2):

- :class:`MeanDiff`: ``normalise(μ_base − μ_aligned)``, the paper's history definition;
- :class:`PairedPCA`: first principal axis of the per-prompt differences
  ``h(base, x_i) − h(aligned, x_i)`` (uncentred by default, so a constant shift *is* the axis),
  oriented to agree with the mean difference;
- :class:`LinearProbe`: weight vector of a scikit-learn ``LogisticRegression`` separating base
  (label 1) from aligned (label 0) per-prompt activations;
- :class:`Whitened`: shrinkage-covariance LDA / Fisher direction ``Σ⁻¹(μ_base − μ_aligned)``,
  ``Σ`` the pooled within-class covariance shrunk by Ledoit–Wolf.

**Several base checkpoints** combine by the mean of bases: ``stats.base_mean()`` (means) and
``stats.paired_references(layer)`` (per-prompt references averaged over bases, paired with
aligned's). Per-prompt references are read **one layer at a time** (from disk where collect
spilled them), so fitting never holds more than one layer's ``[prompt, d]`` pair in memory.
What each estimator needs: ``MeanDiff`` the means only (and the Poisson replicates for its
stability); ``Whitened(shrinkage=<float>)`` the second moments when no references were kept;
``PairedPCA``, ``LinearProbe`` and Ledoit–Wolf ``Whitened`` the references.

``__init__`` only stores parameters; ``fit(stats)`` sets ``direction_`` (a
:class:`~revlens.directions.Directions`), ``stability_`` (per layer: mean ``|cos|`` between
bootstrap-refit directions and the full-sample one; ``nan`` where no bootstrap is possible) and
``n_features_in_`` (d_model). Reading them before ``fit`` raises
:class:`~revlens.errors.NotFittedError`. Function twins and the name registry live in
:mod:`revlens.directions.registry`.

Example:
    >>> est = MeanDiff(n_bootstrap=50).fit(stats)                   # doctest: +SKIP
    >>> est.direction_, est.stability_                               # doctest: +SKIP
"""

import math
import warnings
from typing import Any, ClassVar

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from revlens.collect.stats import HistoryStats
from revlens.directions._linalg import top_axis
from revlens.directions.base import Directions
from revlens.errors import ConfigError, NotFittedError, ShapeMismatchError

__all__ = ["DirectionEstimator", "LinearProbe", "MeanDiff", "PairedPCA", "Whitened", "top_axis"]

_FITTED = ("direction_", "stability_", "n_features_in_")


def _check_stats(stats: Any, method: str) -> None:
    if not isinstance(stats, HistoryStats):
        raise ConfigError(
            f"{method}.fit expects HistoryStats (from revlens.collect); got {type(stats).__name__}"
        )
    if not stats.base_names:
        raise ConfigError("the statistics hold no base checkpoint")


def _check_separated(stats: HistoryStats, method: str) -> Float[Tensor, "layer d"]:
    """μ_base − μ_aligned per layer; ConfigError naming the layers where it vanishes."""
    diff = stats.base_mean() - stats.mean(stats.aligned_name)
    scale = stats.mean(stats.aligned_name).norm(dim=1).clamp_min(1.0)
    zero = [
        stats.layers[i]
        for i in range(len(stats.layers))
        if float(diff[i].norm()) <= 1e-9 * float(scale[i])
    ]
    if zero:
        raise ConfigError(
            f"direction ({method}) is undefined at layer(s) {zero}: base and aligned activations are "
            "identical there (zero-norm mean difference); drop those layers (layers=...)"
        )
    return diff


def _require_references(stats: HistoryStats, method: str) -> None:
    if stats.has_references():
        return
    kept = sorted(set.intersection(*(set(stats[n].ref_layers or []) for n in [*stats.base_names, stats.aligned_name])))
    where = (f"they were kept at layers {kept}: fit on stats.select({kept}), or collect with keep_layers "
             "including every layer" if kept else "collect with keep='reference'")
    raise ConfigError(
        f"{method} needs per-prompt activations of base and aligned at layers {stats.layers}; {where}"
    )


def _layer_pair(stats: HistoryStats, layer: int) -> tuple[Tensor, Tensor]:
    base, aligned = stats.paired_references(layer)
    if base.shape != aligned.shape:
        raise ShapeMismatchError(
            f"base activations {tuple(base.shape)} and aligned {tuple(aligned.shape)} at layer {layer} "
            "are not paired"
        )
    return base, aligned


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-300)


class DirectionEstimator:
    """Base class: stores parameters, fits per-layer directions, measures bootstrap stability.

    Subclasses set ``method`` and implement ``_raw_layer(base, aligned)``: the un-normalised
    direction ``[d]`` of one layer from its per-prompt activations ``[prompt, d]`` (float64); or,
    as before, ``_raw(base, aligned)`` on ``[prompt, layer, d]``. :class:`MeanDiff` overrides
    :meth:`fit` to use the exact float64 means.
    """

    method: ClassVar[str] = "custom"

    def __init__(self, *, n_bootstrap: int = 100, seed: int = 0) -> None:
        self.n_bootstrap = n_bootstrap
        self.seed = seed

    # ------------------------------------------------------------------ sklearn-ish
    def get_params(self) -> dict[str, Any]:
        """The constructor parameters."""
        return {
            k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def __getattr__(self, name: str) -> Any:
        if name in _FITTED:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit(stats) before reading {name}"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has run."""
        return "direction_" in vars(self)

    def _validate_params(self) -> None:
        if not isinstance(self.n_bootstrap, int) or self.n_bootstrap < 0:
            raise ConfigError(
                f"{type(self).__name__}: n_bootstrap must be an int >= 0, got {self.n_bootstrap!r}"
            )

    # ------------------------------------------------------------------ fitting
    def _raw(self, base: Tensor, aligned: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _raw_layer(self, base: Tensor, aligned: Tensor) -> Tensor:
        return self._raw(base[:, None], aligned[:, None])[0]

    def _orient_layer(self, raw: Tensor, base: Tensor, aligned: Tensor) -> Tensor:
        return raw

    def fit(self, stats: HistoryStats) -> "DirectionEstimator":
        """Fit one direction per collected layer of ``stats``; returns ``self``.

        Raises:
            ConfigError: identical base and aligned at a layer (names it), or missing statistics.
        """
        self._validate_params()
        _check_stats(stats, self.method)
        _check_separated(stats, self.method)
        _require_references(stats, self.method)
        rows, stability, draws = [], [], None
        for layer in stats.layers:
            base, aligned = _layer_pair(stats, layer)
            full = self._orient_layer(self._raw_layer(base, aligned), base, aligned)
            if draws is None:
                draws = self._draws(base.shape[0])
            rows.append(full)
            stability.append(self._layer_stability(base, aligned, _unit(full), draws))
        return self._finish(stats, torch.stack(rows), torch.tensor(stability, dtype=torch.float64))

    def _finish(self, stats: HistoryStats, raw: Tensor, stability: Tensor) -> "DirectionEstimator":
        meta = {"stability": [float(s) for s in stability], **self.get_params()}
        self.direction_ = Directions.from_tensor(
            raw, stats.layers, method=self.method, site=stats.site, meta=meta
        )
        self.stability_ = stability.numpy()
        self.n_features_in_ = int(raw.shape[1])
        return self

    def _draws(self, n: int) -> list[Tensor]:
        """Prompt-bootstrap index draws, the same for every layer (one generator, in order)."""
        if self.n_bootstrap == 0 or n < 2:
            return []
        gen = torch.Generator().manual_seed(int(self.seed))
        return [torch.randint(n, (n,), generator=gen) for _ in range(self.n_bootstrap)]

    def _layer_stability(self, base: Tensor, aligned: Tensor, full: Tensor, draws: list[Tensor]) -> float:
        """Mean |cos| between prompt-bootstrap refits and ``full`` (a unit row) at one layer."""
        if not draws:
            return math.nan
        sims = []
        for idx in draws:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                raw = self._orient_layer(self._raw_layer(base[idx], aligned[idx]), base[idx], aligned[idx])
            sims.append(_bootstrap_cos(raw[None], full[None]))
        return float(np.nanmean(torch.cat(sims).numpy()))

    def _stability_from_references(self, stats: HistoryStats, units: Tensor) -> Tensor:
        """Per-layer stability of fits to per-prompt references against ``units`` ``[layer, d]``."""
        out, draws = [], None
        for i, layer in enumerate(stats.layers):
            base, aligned = _layer_pair(stats, layer)
            draws = self._draws(base.shape[0]) if draws is None else draws
            out.append(self._layer_stability(base, aligned, units[i], draws))
        return torch.tensor(out, dtype=torch.float64)


def _bootstrap_cos(raw: Tensor, full: Tensor) -> Tensor:
    norms = raw.norm(dim=1)
    cos = (raw * full).sum(1).abs() / norms.clamp_min(1e-300)
    return torch.where(norms > 0, cos, torch.full_like(cos, math.nan))


class MeanDiff(DirectionEstimator):
    """``normalise(μ_base − μ_aligned)`` per layer: the paper's history-defined ``v_rev``.

    Args:
        n_bootstrap: replicates for ``stability_``. The Poisson-bootstrap replicate means kept by
            :func:`revlens.collect` are used when present (at most ``n_bootstrap`` of them; paired
            across checkpoints), otherwise prompts of the kept activations are resampled.
            ``0`` disables (``stability_`` is ``nan``).
        seed: seed of the prompt resampling.
    """

    method = "mean_diff"

    def _raw_layer(self, base: Tensor, aligned: Tensor) -> Tensor:
        return base.mean(0) - aligned.mean(0)

    def fit(self, stats: HistoryStats) -> "MeanDiff":
        """Fit on the exact float64 means of ``stats``; returns ``self``."""
        self._validate_params()
        _check_stats(stats, self.method)
        full = _check_separated(stats, self.method)
        boots = [stats[n].boot_mean for n in [*stats.base_names, stats.aligned_name]]
        if self.n_bootstrap == 0:
            stability = torch.full((len(stats.layers),), math.nan, dtype=torch.float64)
        elif all(b is not None for b in boots):
            k = min(self.n_bootstrap, boots[0].shape[0])  # type: ignore[union-attr]
            reps = torch.stack(boots[:-1]).mean(0)[:k] - boots[-1][:k]  # type: ignore[index]
            unit = _unit(full)
            stability = torch.from_numpy(
                np.nanmean(torch.stack([_bootstrap_cos(r, unit) for r in reps]).numpy(), axis=0)
            )
        elif stats.has_references():
            stability = self._stability_from_references(stats, _unit(full))
        else:
            stability = torch.full((len(stats.layers),), math.nan, dtype=torch.float64)
        self._finish(stats, full, stability)
        return self


class PairedPCA(DirectionEstimator):
    """First principal axis of paired differences ``h(base, x_i) − h(aligned, x_i)`` per layer.

    Args:
        center: subtract the mean difference before the SVD. Default ``False``: the axis of the
            second moment about zero, so a shift shared by every prompt is the first axis.
        n_bootstrap: prompt-resampling replicates for ``stability_`` (0 disables).
        seed: seed of the resampling.

    The sign is chosen so the axis has a non-negative dot product with ``μ_base − μ_aligned``.
    """

    method = "pca"

    def __init__(self, *, center: bool = False, n_bootstrap: int = 100, seed: int = 0) -> None:
        self.center = center
        self.n_bootstrap = n_bootstrap
        self.seed = seed

    def _raw_layer(self, base: Tensor, aligned: Tensor) -> Tensor:
        diff = base - aligned  # [prompt, d]
        if self.center:
            diff = diff - diff.mean(0, keepdim=True)
        return top_axis(diff, seed=int(self.seed))

    def _orient_layer(self, raw: Tensor, base: Tensor, aligned: Tensor) -> Tensor:
        sign = float(torch.sign(raw @ (base.mean(0) - aligned.mean(0))))
        return raw * (sign if sign != 0 else 1.0)


class LinearProbe(DirectionEstimator):
    """Weight vector of ``sklearn.linear_model.LogisticRegression`` (base = 1, aligned = 0).

    Args:
        C: inverse L2 regularisation strength.
        max_iter: solver iterations.
        n_bootstrap: prompt-resampling replicates for ``stability_`` (0 disables; each is one
            fit per layer, the slowest of the estimators).
        seed: seed of the resampling.

    The weight vector increases the base log-odds, so it points toward base.
    """

    method = "probe"

    def __init__(
        self, *, C: float = 1.0, max_iter: int = 1000, n_bootstrap: int = 100, seed: int = 0
    ) -> None:
        self.C = C
        self.max_iter = max_iter
        self.n_bootstrap = n_bootstrap
        self.seed = seed

    def _raw_layer(self, base: Tensor, aligned: Tensor) -> Tensor:
        from sklearn.linear_model import LogisticRegression

        n = base.shape[0]
        y = np.r_[np.ones(n), np.zeros(n)]
        x = torch.cat([base, aligned]).numpy()
        clf = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(x, y)
        return torch.from_numpy(clf.coef_[0].astype(np.float64))


class Whitened(DirectionEstimator):
    """Shrinkage LDA direction ``Σ⁻¹(μ_base − μ_aligned)`` per layer.

    Args:
        shrinkage: ``None`` (default) estimates the shrinkage by Ledoit–Wolf
            (``sklearn.covariance.LedoitWolf``) on the pooled within-class samples (kept
            per-prompt activations, each class centred on its mean); a float in ``[0, 1]`` shrinks
            the pooled covariance by that amount, and then also works from second moments alone.
        n_bootstrap: prompt-resampling replicates for ``stability_`` (0 disables).
        seed: seed of the resampling.
    """

    method = "whitened"

    def __init__(
        self, *, shrinkage: float | None = None, n_bootstrap: int = 100, seed: int = 0
    ) -> None:
        self.shrinkage = shrinkage
        self.n_bootstrap = n_bootstrap
        self.seed = seed

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.shrinkage is not None and not 0.0 <= float(self.shrinkage) <= 1.0:
            raise ConfigError(
                f"Whitened: shrinkage must be None or in [0, 1], got {self.shrinkage!r}"
            )

    def _solve(self, cov: np.ndarray, diff: Tensor) -> Tensor:
        from sklearn.covariance import shrunk_covariance

        if self.shrinkage is not None:
            cov = shrunk_covariance(cov, shrinkage=float(self.shrinkage))
        return torch.linalg.lstsq(torch.from_numpy(cov), diff[:, None]).solution[:, 0]

    def _raw_layer(self, base: Tensor, aligned: Tensor) -> Tensor:
        from sklearn.covariance import LedoitWolf, empirical_covariance

        mb, ma = base.mean(0), aligned.mean(0)
        z = torch.cat([base - mb, aligned - ma]).numpy()
        if self.shrinkage is None:
            cov = LedoitWolf(assume_centered=True).fit(z).covariance_
        else:
            cov = empirical_covariance(z, assume_centered=True)
        return self._solve(cov, mb - ma)

    def fit(self, stats: HistoryStats) -> "Whitened":
        """Fit from kept activations, or from second moments when ``shrinkage`` is a float."""
        self._validate_params()
        _check_stats(stats, self.method)
        moments = all(stats[n].second is not None for n in [*stats.base_names, stats.aligned_name])
        if self.shrinkage is not None and (moments or not stats.has_references()):
            return self._fit_moments(stats)  # exact float64 sums; no per-prompt read for the direction
        if not stats.has_references():
            raise ConfigError(
                "Whitened with Ledoit-Wolf shrinkage needs per-prompt activations (keep='reference'); "
                "or pass shrinkage=<float> to whiten with the collected second moments"
            )
        super().fit(stats)
        return self

    def _fit_moments(self, stats: HistoryStats) -> "Whitened":
        diff = _check_separated(stats, self.method)
        names = [*stats.base_names, stats.aligned_name]
        covs = [stats[n].covariance for n in names]  # ConfigError if moments are absent
        pooled = (torch.stack(covs[:-1]).mean(0) + covs[-1]) / 2
        raw = torch.stack(
            [self._solve(pooled[i].numpy(), diff[i]) for i in range(len(stats.layers))]
        )
        if self.n_bootstrap and stats.has_references():
            stability = self._stability_from_references(stats, _unit(raw))
        else:
            stability = torch.full((len(stats.layers),), math.nan, dtype=torch.float64)
        return self._finish(stats, raw, stability)
