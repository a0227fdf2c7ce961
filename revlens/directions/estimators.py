"""Reversion-direction and reversion-subspace estimators (scikit-learn conventions).

Every estimator turns a :class:`~revlens.collect.HistoryStats` into an orthonormal basis of
``n_components = k`` rows per collected layer (``k = 1``, the default: one unit direction, the
paper's ``v_rev``), the first row pointing **from aligned toward base** (DESIGN §2, §5):

- :class:`MeanDiff`: ``normalise(μ_base − μ_aligned)``, the paper's history definition. ``k > 1``
  needs several base checkpoints: the span of the mean of bases' difference followed by each
  base's own ``μ_b − μ_aligned`` (one direction per base: with one base there is nothing more
  a mean can say);
- :class:`PairedPCA`: the top-k principal axes of the per-prompt differences
  ``h(base, x_i) − h(aligned, x_i)`` (uncentred by default, so a constant shift *is* the first
  axis) — the natural rank-k reversion subspace: the directions along which the base differs from
  the aligned model on the probe prompts, ordered by how much of that difference they carry;
  ``bases="each"`` takes every (base checkpoint, prompt) pair as a sample instead of the mean of
  bases, so variation *between* pre-training witnesses enters the subspace;
- :class:`LinearProbe`: weight vector of a scikit-learn ``LogisticRegression`` separating base
  (label 1) from aligned (label 0); ``k > 1`` by iterative null-space projection (INLP, Ravfogel
  et al. 2020): refit on the activations with the earlier directions projected out, so every row
  is a direction a linear classifier still uses once the others are gone;
- :class:`Whitened`: shrinkage LDA / Fisher direction ``Σ⁻¹(μ_base − μ_aligned)``, ``Σ`` the pooled
  within-class covariance shrunk by Ledoit–Wolf; ``k > 1`` continues with a **whitened PCA**: the
  generalised eigenvectors of (covariance of the centred paired differences, ``Σ``), i.e. the
  directions where the base − aligned differences vary most *relative to the within-class noise*
  (with one base an LDA has only one discriminant direction, so this is where more rows come from).

Rows ``2..k`` are oriented toward the base mean (``b_j · (μ_base − μ_aligned) ≥ 0``; see
:func:`revlens.directions.subspace.orient_rows`); ``direction_.meta["base_offset"]`` holds
``cos(b_j, μ_base − μ_aligned)`` per layer and row. **Several base checkpoints** combine by the
mean of bases (``stats.base_mean()``, ``stats.paired_references(layer)``) unless said otherwise.
Per-prompt references are read **one layer at a time** (from disk where collect spilled them), so
fitting never holds more than one layer's ``[prompt, d]`` pair in memory. What each estimator
needs: ``MeanDiff`` the means only (and the Poisson replicates for its stability);
``Whitened(shrinkage=<float>)`` the second moments when no references were kept (``k = 1``);
``PairedPCA``, ``LinearProbe`` and Ledoit–Wolf ``Whitened`` the references.

``__init__`` only stores parameters; ``fit(stats)`` sets ``direction_`` (a
:class:`~revlens.directions.Directions`, basis ``[layer, k, d]``), ``stability_`` (per layer: the
mean over bootstrap refits of the mean cosine of the principal angles between the refit's and the
full-sample subspace — for ``k = 1`` the mean ``|cos|`` of the two directions; ``nan`` where no
bootstrap is possible), ``stability_by_rank_`` (``[layer, k]``: the same for the first ``j`` rows,
``j = 1..k``: where it drops, further principal axes are noise) and ``n_features_in_``
(d_model). Reading them before ``fit`` raises :class:`~revlens.errors.NotFittedError`. Function
twins and the name registry live in :mod:`revlens.directions.registry`; the discriminative
estimators (:class:`LinearProbe`, :class:`Whitened`) in :mod:`revlens.directions.discriminant`.

Example:
    >>> est = PairedPCA(n_components=8, n_bootstrap=50).fit(stats)   # doctest: +SKIP
    >>> est.direction_.rank, est.stability_by_rank_[:, -1]            # doctest: +SKIP
"""

import math
import warnings
from typing import Any, ClassVar, no_type_check

import numpy as np
import torch
from torch import Tensor

from revlens._types import Device
from revlens.collect.stats import HistoryStats
from revlens.directions._fitting import (
    base_stack,
    bootstrap_cos,
    check_separated,
    check_stats,
    paired_layer,
    require_references,
    resamples,
    subspace_basis,
    subspace_stability,
    unit,
)
from revlens.directions._linalg import top_axis
from revlens.directions._lowrank import check_solver, use_span
from revlens.directions._span import fit_span
from revlens.directions.base import Directions
from revlens.errors import ConfigError, NotFittedError
from revlens.history import HistoryInput
from revlens.probes import ProbesInput

__all__ = ["DirectionEstimator", "MeanDiff", "top_axis"]

_FITTED = ("direction_", "stability_", "stability_by_rank_", "n_features_in_")


class DirectionEstimator:
    """Base class: stores parameters, fits per-layer bases, measures bootstrap stability.

    Subclasses set ``method`` and implement ``_raw(base, aligned)`` (un-normalised first directions
    ``[layer, d]`` from per-prompt activations ``[prompt, layer, d]``) and, for ``k > 1``,
    ``_candidates(base, aligned)`` (candidate rows ``[layer, m, d]`` in order of importance).
    :meth:`fit` calls them one layer at a time (a layer axis of length 1).
    """

    method: ClassVar[str] = "custom"
    rank_limit: ClassVar[str] = "the candidates are linearly dependent"
    in_defaults: ClassVar[bool] = True
    """Whether ``analyze`` fits it by default (the history estimators do; ``refusal`` needs labels)."""
    max_components: ClassVar[int | None] = None
    """The largest ``n_components`` it can fit (``None``: as many as the data allow)."""
    plan_as: ClassVar[str | None] = None
    """The registered method whose cost model prices its fit (``None``: its own)."""

    @no_type_check  # parameters are validated by fit (typed errors), also under the test type-checker
    def __init__(
        self,
        *,
        n_components: int = 1,
        n_bootstrap: int = 100,
        seed: int = 0,
        solver: str = "auto",
        device: Device | None = None,
    ) -> None:
        self.n_components = n_components
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self.solver = solver
        self.device = device

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

    def check_inputs(
        self, probes: ProbesInput | None = None, history: HistoryInput | None = None
    ) -> None:
        """Refuse, before any forward pass, probes or a history this estimator cannot fit on
        (the history estimators need nothing beyond the statistics: a no-op)."""

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has run."""
        return "direction_" in vars(self)

    def _validate_params(self) -> None:
        name = type(self).__name__
        if (
            isinstance(self.n_bootstrap, bool)
            or not isinstance(self.n_bootstrap, int)
            or self.n_bootstrap < 0
        ):
            raise ConfigError(f"{name}: n_bootstrap must be an int >= 0, got {self.n_bootstrap!r}")
        k = self.n_components
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 1:
            raise ConfigError(f"{name}: n_components must be an int >= 1, got {k!r}")
        self.n_components = int(k)
        check_solver(getattr(self, "solver", "auto"), name)

    def _span_size(self, stats: HistoryStats) -> int:
        """Rows whose span holds the fit at a layer (``m``; the span path is taken when ``m < d``)."""
        return 2 * int(stats[stats.aligned_name].count)

    def _uses_span(self, stats: HistoryStats) -> bool:
        """Whether this fit runs in the span of the references (:mod:`revlens.directions._lowrank`)."""
        return hasattr(self, "_span_raw") and use_span(
            getattr(self, "solver", "auto"), self._span_size(stats), stats.d_model
        )

    # ------------------------------------------------------------------ fitting
    def _raw(self, base: Tensor, aligned: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _candidates(self, base: Tensor, aligned: Tensor) -> Tensor:
        return self._raw(base, aligned)[:, None, :]

    def _orient(self, raw: Tensor, base: Tensor, aligned: Tensor) -> Tensor:
        return raw

    def _paired(self, stats: HistoryStats, layer: int) -> tuple[Tensor, Tensor, int]:
        """(base rows, aligned rows, copies) at one layer (``[rows, 1, d]``): rows are prompts
        (``copies`` = 1) or, for estimators that sample every base, ``copies`` blocks of prompts,
        block ``b`` paired with base ``b``."""
        base, aligned = paired_layer(stats, layer)
        return base, aligned, 1

    def _subspace(self, base: Tensor, aligned: Tensor, layers: list[int]) -> Tensor:
        """The ``[layer, k, d]`` basis fitted on these rows."""
        cands = self._candidates(base, aligned).clone()
        cands[:, 0] = self._orient(cands[:, 0], base, aligned)
        diff = base.mean(0) - aligned.mean(0)
        return subspace_basis(cands, self.n_components, diff, layers, self.method, self.rank_limit)

    def fit(self, stats: HistoryStats) -> "DirectionEstimator":
        """Fit one basis of ``n_components`` rows per collected layer of ``stats``; returns ``self``.

        Raises:
            ConfigError: identical base and aligned at a layer (names it), missing statistics, or
                fewer independent directions than ``n_components`` (names the layer).
        """
        self._validate_params()
        check_stats(stats, self.method)
        check_separated(stats, self.method)
        require_references(stats, self.method)
        if self._uses_span(stats):  # one basis per layer, every layer's refits batched
            span_rows, span_stab = fit_span(self, stats)
            return self._finish(stats, span_rows, span_stab)  # type: ignore[arg-type]
        rows, by_rank = [], []
        for layer in stats.layers:  # one layer's references in memory at a time
            basis, stability = self._basis_at(*self._paired(stats, layer), layer)
            rows.append(basis)
            by_rank.append(stability)
        return self._finish(stats, torch.cat(rows), torch.cat(by_rank))

    def _basis_at(
        self, base: Tensor, aligned: Tensor, copies: int, layer: int
    ) -> tuple[Tensor, Tensor]:
        """One layer's basis (``[1, d]`` for k = 1, else ``[1, k, d]``) and stability ``[1, k]``."""
        n = base.shape[0] // copies
        if self.n_components == 1:
            full = self._orient(self._raw(base, aligned), base, aligned)
            return full, self._resample_stability(base, aligned, unit(full), copies)[:, None]
        basis = self._subspace(base, aligned, [layer])

        def refits() -> Any:
            for idx in resamples(n, self.n_bootstrap, self.seed):
                rows = (torch.arange(copies)[:, None] * n + idx[None]).reshape(-1)
                try:
                    yield self._subspace(base[rows], aligned[rows], [layer])
                except ConfigError:
                    yield None

        return basis, subspace_stability(refits(), basis)

    def _finish(self, stats: HistoryStats, raw: Tensor, by_rank: Tensor) -> "DirectionEstimator":
        diff = unit(stats.base_mean() - stats.mean(stats.aligned_name))
        rows = raw if raw.ndim == 3 else raw[:, None, :]
        offset = torch.einsum("lkd,ld->lk", unit(rows.to(torch.float64)), diff)
        meta = {
            "stability": [float(s) for s in by_rank[:, -1]],
            **self.get_params(),
            "base_offset": [[round(float(x), 6) for x in row] for row in offset],
        }
        if rows.shape[1] > 1:
            meta["stability_by_rank"] = [[float(x) for x in row] for row in by_rank]
        self.direction_ = Directions.from_tensor(
            raw, stats.layers, method=self.method, site=stats.site, meta=meta
        )
        self.stability_ = by_rank[:, -1].numpy()
        self.stability_by_rank_ = by_rank.numpy()
        self.n_features_in_ = int(raw.shape[-1])
        return self

    def _reference_stability(self, stats: HistoryStats, units: Tensor) -> Tensor:
        """Per-layer stability against unit rows ``units`` ``[layer, d]`` by resampling the prompts
        of the kept references, one layer at a time."""
        if self._uses_span(stats):
            return fit_span(self, stats, units)[1][:, 0]
        return torch.cat(
            [
                self._resample_stability(*paired_layer(stats, layer), units[i : i + 1])
                for i, layer in enumerate(stats.layers)
            ]
        )

    def _resample_stability(
        self, base: Tensor, aligned: Tensor, full: Tensor, copies: int = 1
    ) -> Tensor:
        """Mean |cos| between prompt-bootstrap refits and ``full`` (unit rows), per layer."""
        n = base.shape[0] // copies
        if self.n_bootstrap == 0 or n < 2:
            return torch.full((full.shape[0],), math.nan, dtype=torch.float64)
        sims = []
        for idx in resamples(n, self.n_bootstrap, self.seed):
            rows = (
                (torch.arange(copies)[:, None] * n + idx[None]).reshape(-1) if copies > 1 else idx
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                raw = self._orient(self._raw(base[rows], aligned[rows]), base[rows], aligned[rows])
            sims.append(bootstrap_cos(raw, full))
        return torch.from_numpy(np.nanmean(torch.stack(sims).numpy(), axis=0))


class MeanDiff(DirectionEstimator):
    """``normalise(μ_base − μ_aligned)`` per layer: the paper's history-defined ``v_rev``.

    Args:
        n_components: ``k``; ``k > 1`` spans the mean of bases' difference, then each base's
            ``μ_b − μ_aligned`` (at most one direction per base checkpoint).
        n_bootstrap: replicates for ``stability_``. The Poisson-bootstrap replicate means kept by
            :func:`revlens.collect` are used when present (at most ``n_bootstrap`` of them; paired
            across checkpoints), otherwise prompts of the kept activations are resampled.
            ``0`` disables (``stability_`` is ``nan``).
        seed: seed of the prompt resampling.
        solver, device: accepted for a uniform signature (the means need no fit).
    """

    method = "mean_diff"
    rank_limit = "mean_diff has at most one direction per base checkpoint (use pca for more)"

    def _raw(self, base: Tensor, aligned: Tensor) -> Tensor:
        return base.mean(0) - aligned.mean(0)

    @staticmethod
    def _rows(bases: list[Tensor], aligned: Tensor) -> Tensor:
        """Candidates ``[layer, 1 + n_bases, d]`` from per-base means."""
        return torch.stack(
            [torch.stack(bases).mean(0) - aligned, *[b - aligned for b in bases]], dim=1
        )

    def fit(self, stats: HistoryStats) -> "MeanDiff":
        """Fit on the exact float64 means of ``stats``; returns ``self``."""
        self._validate_params()
        check_stats(stats, self.method)
        full = check_separated(stats, self.method)
        if self.n_components > 1:
            return self._fit_subspace(stats, full)
        boots = [stats[n].boot_mean for n in [*stats.base_names, stats.aligned_name]]
        if self.n_bootstrap == 0:
            stability = torch.full((len(stats.layers),), math.nan, dtype=torch.float64)
        elif all(b is not None for b in boots):
            k = min(self.n_bootstrap, boots[0].shape[0])  # type: ignore[union-attr]
            reps = torch.stack(boots[:-1]).mean(0)[:k] - boots[-1][:k]  # type: ignore[index]
            stability = torch.from_numpy(
                np.nanmean(
                    torch.stack([bootstrap_cos(r, unit(full)) for r in reps]).numpy(), axis=0
                )
            )
        elif stats.has_references():
            stability = self._reference_stability(stats, unit(full))
        else:
            stability = torch.full((len(stats.layers),), math.nan, dtype=torch.float64)
        self._finish(stats, full, stability[:, None])
        return self

    def _fit_subspace(self, stats: HistoryStats, diff: Tensor) -> "MeanDiff":
        aligned = stats.mean(stats.aligned_name)
        means = [stats.mean(n) for n in stats.base_names]

        def basis(bases: list[Tensor], al: Tensor) -> Tensor:
            d = torch.stack(bases).mean(0) - al
            return subspace_basis(
                self._rows(bases, al),
                self.n_components,
                d,
                stats.layers,
                self.method,
                self.rank_limit,
            )

        full = basis(means, aligned)

        def replicates() -> Any:
            """(per-base means, aligned mean) of each bootstrap replicate."""
            boots = [stats[n].boot_mean for n in [*stats.base_names, stats.aligned_name]]
            stack = base_stack(stats)
            al_acts = stats[stats.aligned_name].activations
            if all(b is not None for b in boots):
                for r in range(min(self.n_bootstrap, boots[0].shape[0])):  # type: ignore[union-attr]
                    yield [b[r] for b in boots[:-1]], boots[-1][r]  # type: ignore[index]
            elif stack is not None and al_acts is not None:
                for idx in resamples(stack.shape[1], self.n_bootstrap, self.seed):
                    yield [b[idx].mean(0) for b in stack], al_acts.double()[idx].mean(0)

        def refits() -> Any:
            for bases, al in replicates():
                try:
                    yield basis(bases, al)
                except ConfigError:
                    yield None

        by_rank = subspace_stability(refits() if self.n_bootstrap else iter(()), full)
        self._finish(stats, full, by_rank)
        return self


def __getattr__(name: str) -> Any:
    if name == "PairedPCA":  # moved to revlens.directions.pca; still importable from here
        from revlens.directions.pca import PairedPCA

        return PairedPCA
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
