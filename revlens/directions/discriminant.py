"""The discriminative estimators: :class:`LinearProbe` and :class:`Whitened` (see
:mod:`revlens.directions.estimators` for the conventions every estimator shares)."""

import math
from typing import no_type_check

import numpy as np
import torch
from torch import Tensor

from revlens._types import Device
from revlens.collect.stats import HistoryStats
from revlens.directions._fitting import check_separated, check_stats, unit
from revlens.directions._lowrank import generalized_axes, pinv_solve, whitened_system
from revlens.directions.estimators import DirectionEstimator
from revlens.errors import ConfigError

__all__ = ["LinearProbe", "Whitened"]


class LinearProbe(DirectionEstimator):
    """Weight vector of ``sklearn.linear_model.LogisticRegression`` (base = 1, aligned = 0).

    Args:
        C: inverse L2 regularisation strength.
        max_iter: solver iterations.
        n_components: ``k``; ``k > 1`` by iterative null-space projection (each further row is
            the probe refitted on activations with the earlier rows projected out; ``k`` fits
            per layer).
        n_bootstrap: prompt-resampling replicates for ``stability_`` (0 disables; each is one
            fit per layer and row, the slowest of the estimators).
        seed: seed of the resampling.
        solver: ``"dense"`` keeps revlens 0.2's d × d INLP projector (``k > 1``); otherwise the
            found rows are projected out directly (the same fit; lbfgs itself always runs in R^d).
        device: unused (accepted for a uniform signature).

    The weight vector increases the base log-odds, so it points toward base.
    """

    method = "probe"
    rank_limit = "a refitted probe found no further separating direction"

    @no_type_check  # parameters are validated by fit (typed errors), also under the test type-checker
    def __init__(
        self,
        *,
        C: float = 1.0,
        max_iter: int = 1000,
        n_components: int = 1,
        n_bootstrap: int = 100,
        seed: int = 0,
        solver: str = "auto",
        device: Device | None = None,
    ) -> None:
        self.C = C
        self.max_iter = max_iter
        self.n_components = n_components
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self.solver = solver
        self.device = device

    def _fit_layer(self, x: np.ndarray, y: np.ndarray) -> Tensor:
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(x, y)
        return torch.from_numpy(clf.coef_[0].astype(np.float64))

    def _raw(self, base: Tensor, aligned: Tensor) -> Tensor:
        n = base.shape[0]
        y = np.r_[np.ones(n), np.zeros(n)]
        return torch.stack(
            [
                self._fit_layer(torch.cat([base[:, i], aligned[:, i]]).numpy(), y)
                for i in range(base.shape[1])
            ]
        )

    def _candidates(self, base: Tensor, aligned: Tensor) -> Tensor:
        n, d = base.shape[0], base.shape[2]
        y = np.r_[np.ones(n), np.zeros(n)]
        out = []
        for i in range(base.shape[1]):
            x = torch.cat([base[:, i], aligned[:, i]])
            dense = (
                self.solver == "dense"
            )  # revlens 0.2: a d × d projector; else the k removed rows
            proj, used, rows = torch.eye(d, dtype=torch.float64) if dense else None, [], []
            for _ in range(self.n_components):
                if proj is not None:
                    w = proj @ self._fit_layer(
                        (x @ proj).numpy(), y
                    )  # a direction of the remaining space
                else:
                    u_ = torch.stack(used) if used else torch.zeros(0, d, dtype=torch.float64)
                    w = _remove(self._fit_layer(_remove(x, u_).numpy(), y), u_)
                rows.append(w)
                if float(w.norm()) == 0.0:
                    break
                u = w / w.norm()
                used.append(u)
                proj = proj - torch.outer(u, u) if proj is not None else None
            out.append(
                torch.stack(
                    rows + [torch.zeros(d, dtype=torch.float64)] * (self.n_components - len(rows))
                )
            )
        return torch.stack(out)


def _remove(x: Tensor, rows: Tensor) -> Tensor:
    """``x`` with its components along the (orthonormal) ``rows`` removed, one row at a time as the
    dense projector ``I − Σ u uᵀ`` was built (``O(n d k)``, no ``d × d`` matrix)."""
    for u in rows:
        x = x - (x @ u)[..., None] * u if x.ndim > 1 else x - (x @ u) * u
    return x


class Whitened(DirectionEstimator):
    """Shrinkage LDA direction ``Σ⁻¹(μ_base − μ_aligned)`` per layer (``k > 1``: then a whitened PCA).

    Args:
        shrinkage: ``None`` (default) estimates the shrinkage by Ledoit–Wolf
            (``sklearn.covariance.LedoitWolf``) on the pooled within-class samples (kept
            per-prompt activations, each class centred on its mean); a float in ``[0, 1]`` shrinks
            the pooled covariance by that amount, and then also works from second moments alone
            (``k = 1`` only: the whitened PCA needs per-prompt differences).
        n_components: ``k``; rows ``2..k`` are the leading generalised eigenvectors of
            (covariance of the centred paired differences, ``Σ``).
        n_bootstrap: prompt-resampling replicates for ``stability_`` (0 disables).
        seed: seed of the resampling.
        solver: ``"auto"`` (default): the n-dimensional span of the references when it is smaller
            than d (exact; :mod:`revlens.directions._lowrank`), else the dense d × d path;
            ``"dense"``: always the d × d path (revlens 0.2); ``"span"``: always the span.
        device: where the span path's algebra runs (default: the references' device).
    """

    method = "whitened"
    rank_limit = "the paired differences vary along fewer directions than n_components"

    @no_type_check  # parameters are validated by fit (typed errors), also under the test type-checker
    def __init__(
        self,
        *,
        shrinkage: float | None = None,
        n_components: int = 1,
        n_bootstrap: int = 100,
        seed: int = 0,
        solver: str = "auto",
        device: Device | None = None,
    ) -> None:
        self.shrinkage = shrinkage
        self.n_components = n_components
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self.solver = solver
        self.device = device

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.shrinkage is not None and not 0.0 <= float(self.shrinkage) <= 1.0:
            raise ConfigError(
                f"Whitened: shrinkage must be None or in [0, 1], got {self.shrinkage!r}"
            )

    # ------------------------------------------------------------------ span path (n < d)
    @staticmethod
    def _span_source(b: Tensor, a: Tensor) -> Tensor:
        return torch.cat([b, a])

    def _span_raw(self, bc: Tensor, ac: Tensor, d: int) -> Tensor:
        sigma, diff = whitened_system(
            bc, ac, d, None if self.shrinkage is None else float(self.shrinkage)
        )
        return pinv_solve(sigma, diff, d)

    def _span_candidates(self, bc: Tensor, ac: Tensor, d: int) -> Tensor:
        shrink = None if self.shrinkage is None else float(self.shrinkage)
        sigma, diff = whitened_system(bc, ac, d, shrink, ridge=True)
        evals, axes = generalized_axes(bc, ac, sigma)
        keep = evals > 1e-12 * evals.amax(-1, keepdim=True).clamp_min(1e-300)
        axes = (axes * keep[..., None])[..., : self.n_components, :]
        pad = axes.new_zeros(*axes.shape[:-2], self.n_components - axes.shape[-2], axes.shape[-1])
        return torch.cat([pinv_solve(sigma, diff, d)[..., None, :], axes, pad], dim=-2)

    # ------------------------------------------------------------------ dense path (revlens 0.2)
    def _pooled(self, base: Tensor, aligned: Tensor, layer: int) -> np.ndarray:
        from sklearn.covariance import LedoitWolf, empirical_covariance, shrunk_covariance

        mb, ma = base.mean(0), aligned.mean(0)
        z = torch.cat([base[:, layer] - mb[layer], aligned[:, layer] - ma[layer]]).numpy()
        if self.shrinkage is None:
            return LedoitWolf(assume_centered=True).fit(z).covariance_
        return shrunk_covariance(
            empirical_covariance(z, assume_centered=True), shrinkage=float(self.shrinkage)
        )

    @staticmethod
    def _solve(cov: np.ndarray, diff: Tensor) -> Tensor:
        return torch.linalg.lstsq(torch.from_numpy(cov), diff[:, None]).solution[:, 0]

    def _raw(self, base: Tensor, aligned: Tensor) -> Tensor:
        diff = base.mean(0) - aligned.mean(0)
        return torch.stack(
            [self._solve(self._pooled(base, aligned, i), diff[i]) for i in range(base.shape[1])]
        )

    def _candidates(self, base: Tensor, aligned: Tensor) -> Tensor:
        from scipy.linalg import eigh

        diff = base.mean(0) - aligned.mean(0)
        out = []
        for i in range(base.shape[1]):
            cov = self._pooled(base, aligned, i)
            cov = cov + np.eye(cov.shape[0]) * 1e-9 * max(
                float(np.trace(cov)) / cov.shape[0], 1e-300
            )
            paired = (base[:, i] - aligned[:, i]).numpy()
            scatter = np.cov(paired, rowvar=False) if paired.shape[0] > 1 else np.zeros_like(cov)
            evals, evecs = eigh(scatter, cov)  # ascending generalised eigenvalues
            keep = evals[::-1] > 1e-12 * max(float(evals.max()), 1e-300)
            axes = torch.from_numpy(np.ascontiguousarray(evecs[:, ::-1].T[keep]))
            out.append(torch.cat([self._solve(cov, diff[i])[None], axes[: self.n_components]]))
        width = max(o.shape[0] for o in out)
        return torch.stack(
            [
                torch.cat([o, torch.zeros(width - o.shape[0], o.shape[1], dtype=o.dtype)])
                for o in out
            ]
        )

    def fit(self, stats: HistoryStats) -> "Whitened":
        """Fit from kept activations, or from second moments when ``shrinkage`` is a float (k = 1)."""
        self._validate_params()
        check_stats(stats, self.method)
        moments = all(stats[n].second is not None for n in [*stats.base_names, stats.aligned_name])
        if self.shrinkage is not None and self.n_components == 1 and moments:
            return self._fit_moments(
                stats
            )  # exact float64 sums; no per-prompt read for the direction
        if not stats.has_references():
            if self.shrinkage is None:
                raise ConfigError(
                    "Whitened with Ledoit-Wolf shrinkage needs per-prompt activations (keep='reference'); "
                    "or pass shrinkage=<float> to whiten with the collected second moments"
                )
            if self.n_components > 1:
                raise ConfigError(
                    "Whitened with n_components > 1 needs per-prompt activations (keep='reference')"
                )
            return self._fit_moments(stats)
        super().fit(stats)
        return self

    def _fit_moments(self, stats: HistoryStats) -> "Whitened":
        from sklearn.covariance import shrunk_covariance

        diff = check_separated(stats, self.method)
        names = [*stats.base_names, stats.aligned_name]
        covs = [stats[n].covariance for n in names]  # ConfigError if moments are absent
        pooled = (torch.stack(covs[:-1]).mean(0) + covs[-1]) / 2
        raw = torch.stack(
            [
                self._solve(
                    shrunk_covariance(pooled[i].numpy(), shrinkage=float(self.shrinkage)), diff[i]
                )
                for i in range(len(stats.layers))
            ]
        )
        if self.n_bootstrap and stats.has_references():
            stability = self._reference_stability(stats, unit(raw))
        else:
            stability = torch.full((len(stats.layers),), math.nan, dtype=torch.float64)
        return self._finish(stats, raw, stability[:, None])
