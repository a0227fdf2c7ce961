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
``stats.base_activations()`` (per-prompt activations averaged over bases, paired with aligned's).

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
from revlens.directions.base import Directions
from revlens.errors import ConfigError, NotFittedError, ShapeMismatchError

__all__ = ["DirectionEstimator", "LinearProbe", "MeanDiff", "PairedPCA", "Whitened"]

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


def _paired_activations(stats: HistoryStats, method: str) -> tuple[Tensor, Tensor]:
    """(base, aligned) per-prompt activations ``[prompt, layer, d]`` float64 (mean of bases)."""
    aligned = stats[stats.aligned_name].activations
    try:
        base = stats.base_activations()
    except ConfigError:
        base = None
    if base is None or aligned is None:
        raise ConfigError(
            f"{method} needs per-prompt activations of base and aligned; collect with keep='reference'"
        )
    if base.shape != aligned.shape:
        raise ShapeMismatchError(
            f"base activations {tuple(base.shape)} and aligned {tuple(aligned.shape)} are not paired"
        )
    return base.to(torch.float64), aligned.to(torch.float64)


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-300)


class DirectionEstimator:
    """Base class: stores parameters, fits per-layer directions, measures bootstrap stability.

    Subclasses set ``method`` and implement ``_raw(base, aligned)`` (un-normalised directions
    ``[layer, d]`` from per-prompt activations ``[prompt, layer, d]``); :class:`MeanDiff`
    overrides :meth:`fit` to use the exact float64 means.
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

    def fit(self, stats: HistoryStats) -> "DirectionEstimator":
        """Fit one direction per collected layer of ``stats``; returns ``self``.

        Raises:
            ConfigError: identical base and aligned at a layer (names it), or missing statistics.
        """
        self._validate_params()
        _check_stats(stats, self.method)
        _check_separated(stats, self.method)
        base, aligned = _paired_activations(stats, self.method)
        full = self._orient(self._raw(base, aligned), base, aligned)
        stability = self._resample_stability(base, aligned, _unit(full))
        return self._finish(stats, full, stability)

    def _orient(self, raw: Tensor, base: Tensor, aligned: Tensor) -> Tensor:
        return raw

    def _finish(self, stats: HistoryStats, raw: Tensor, stability: Tensor) -> "DirectionEstimator":
        meta = {"stability": [float(s) for s in stability], **self.get_params()}
        self.direction_ = Directions.from_tensor(
            raw, stats.layers, method=self.method, site=stats.site, meta=meta
        )
        self.stability_ = stability.numpy()
        self.n_features_in_ = int(raw.shape[1])
        return self

    def _resample_stability(self, base: Tensor, aligned: Tensor, full: Tensor) -> Tensor:
        """Mean |cos| between prompt-bootstrap refits and ``full`` (unit rows), per layer."""
        n_layer = full.shape[0]
        if self.n_bootstrap == 0 or base.shape[0] < 2:
            return torch.full((n_layer,), math.nan, dtype=torch.float64)
        gen = torch.Generator().manual_seed(int(self.seed))
        sims = []
        for _ in range(self.n_bootstrap):
            idx = torch.randint(base.shape[0], (base.shape[0],), generator=gen)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                raw = self._orient(self._raw(base[idx], aligned[idx]), base[idx], aligned[idx])
            sims.append(_bootstrap_cos(raw, full))
        return torch.from_numpy(np.nanmean(torch.stack(sims).numpy(), axis=0))


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

    def _raw(self, base: Tensor, aligned: Tensor) -> Tensor:
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
        else:
            try:
                base, aligned = _paired_activations(stats, self.method)
            except ConfigError:
                stability = torch.full((len(stats.layers),), math.nan, dtype=torch.float64)
            else:
                stability = self._resample_stability(base, aligned, _unit(full))
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

    def _raw(self, base: Tensor, aligned: Tensor) -> Tensor:
        diff = (base - aligned).transpose(0, 1)  # [layer, prompt, d]
        if self.center:
            diff = diff - diff.mean(1, keepdim=True)
        _, _, vh = torch.linalg.svd(diff, full_matrices=False)
        return vh[:, 0, :]

    def _orient(self, raw: Tensor, base: Tensor, aligned: Tensor) -> Tensor:
        sign = torch.sign((raw * (base.mean(0) - aligned.mean(0))).sum(1))
        return raw * torch.where(sign == 0, torch.ones_like(sign), sign)[:, None]


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

    def _raw(self, base: Tensor, aligned: Tensor) -> Tensor:
        from sklearn.linear_model import LogisticRegression

        n = base.shape[0]
        y = np.r_[np.ones(n), np.zeros(n)]
        rows = []
        for layer in range(base.shape[1]):
            x = torch.cat([base[:, layer], aligned[:, layer]]).numpy()
            clf = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(x, y)
            rows.append(torch.from_numpy(clf.coef_[0].astype(np.float64)))
        return torch.stack(rows)


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

    def _raw(self, base: Tensor, aligned: Tensor) -> Tensor:
        from sklearn.covariance import LedoitWolf, empirical_covariance

        mb, ma = base.mean(0), aligned.mean(0)
        rows = []
        for layer in range(base.shape[1]):
            z = torch.cat([base[:, layer] - mb[layer], aligned[:, layer] - ma[layer]]).numpy()
            if self.shrinkage is None:
                cov = LedoitWolf(assume_centered=True).fit(z).covariance_
            else:
                cov = empirical_covariance(z, assume_centered=True)
            rows.append(self._solve(cov, mb[layer] - ma[layer]))
        return torch.stack(rows)

    def fit(self, stats: HistoryStats) -> "Whitened":
        """Fit from kept activations, or from second moments when ``shrinkage`` is a float."""
        self._validate_params()
        _check_stats(stats, self.method)
        try:
            _paired_activations(stats, self.method)
        except ConfigError:
            if self.shrinkage is None:
                raise ConfigError(
                    "Whitened with Ledoit-Wolf shrinkage needs per-prompt activations (keep='reference'); "
                    "or pass shrinkage=<float> to whiten with the collected second moments"
                ) from None
            return self._fit_moments(stats)
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
        return self._finish(
            stats, raw, torch.full((len(stats.layers),), math.nan, dtype=torch.float64)
        )
