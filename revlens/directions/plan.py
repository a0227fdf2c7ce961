"""The cost plan of fitting directions: what will be fitted, by which path, and about how long.

:func:`plan_fits` prices every estimator from the sizes alone (layers, prompts, ``d_model``,
refits) with a flop model of its path (:mod:`revlens.directions._lowrank`: span or dense) and the
machine's measured float64 matmul rate, and lowers an estimator's stability refits where their
cost on a nominal machine (:data:`NOMINAL_RATE`; deterministic, so a report does not depend on the
load of the machine it ran on) exceeds a budget (:data:`STABILITY_BUDGET_S`), saying so.
:func:`fit_directions` prints the
plan before it fits and the time it took after (``revlens.analyze`` uses both).

The estimate is an order of magnitude, not a promise: the LinearProbe's lbfgs iterations depend on
the data, and a shared machine's load changes every figure.
"""

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeAlias, no_type_check

import numpy as np
import torch
from torch import Tensor

from revlens.collect.stats import HistoryStats
from revlens.directions._lowrank import use_span
from revlens.directions.base import Directions
from revlens.directions.estimators import DirectionEstimator
from revlens.directions.registry import ESTIMATORS, resolve_directions
from revlens.errors import ConfigError
from revlens.modes import DIRECTION_METHODS, DirectionMethod

__all__ = [
    "NOMINAL_RATE",
    "STABILITY_BUDGET_S",
    "FitPlan",
    "MethodPlan",
    "MethodsInput",
    "fit_directions",
    "flop_rate",
    "method_specs",
    "plan_fits",
]

log = logging.getLogger(__name__)

STABILITY_BUDGET_S = 30.0
"""Seconds of stability refits an estimator built by name may take before its refits are cut."""

NOMINAL_RATE = 5e9
"""FLOP/s of the nominal machine on which refit cuts are decided (the ETA uses the measured rate)."""

_PROBE_ITERS, _OP_S = (
    250,
    2e-4,
)  # lbfgs iterations of a probe fit; fixed cost of one small LAPACK call


@lru_cache(maxsize=1)
def flop_rate() -> float:
    """This machine's float64 matmul rate in FLOP/s (best of 3 products of 384 × 384; cached)."""
    x = torch.randn(384, 384, dtype=torch.float64)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        x @ x
        best = min(best, time.perf_counter() - t)
    return 2 * 384**3 / max(best, 1e-6)


@dataclass(frozen=True)
class MethodPlan:
    """One estimator's share of the plan (``seconds``: estimated, fits and refits together)."""

    method: str
    path: str
    fits: int
    refits: int
    n_stability: int
    seconds: float
    note: str = ""


@dataclass(frozen=True)
class FitPlan:
    """What fitting the directions will cost (see :func:`plan_fits`)."""

    methods: tuple[MethodPlan, ...]
    n_layers: int
    n_prompts: int
    d_model: int

    @property
    def seconds(self) -> float:
        """Estimated seconds of every fit and refit."""
        return float(sum(m.seconds for m in self.methods))

    def n_stability(self, method: str, default: int) -> int:
        """The refits planned for ``method`` (``default`` for a method not in the plan)."""
        return next((m.n_stability for m in self.methods if m.method == method), default)

    def describe(self) -> str:
        """One line: layers × prompts × d, then per method its path, fits, refits and ETA."""
        parts = [
            f"{m.method} ({m.path}): {m.fits} fits + {m.refits} refits ≈ {_secs(m.seconds)}"
            + (f" [{m.note}]" if m.note else "")
            for m in self.methods
        ]
        return (
            f"fit: {self.n_layers} layers × {self.n_prompts} prompts × d={self.d_model}: "
            + "; ".join(parts)
            + f"; total ≈ {_secs(self.seconds)}"
        )


def _secs(s: float) -> str:
    return f"{s:.2g} s" if s < 100 else f"{s / 60:.1f} min"


def _costs(
    method: str, span: bool, n: int, d: int, k: int, copies: int = 1
) -> tuple[float, float, float]:
    """(FLOPs of the first fit of a layer, FLOPs of one refit, fixed seconds per fit)."""
    if method == "mean_diff":
        return 4.0 * n * d, 4.0 * d, _OP_S
    if method == "probe":
        per = _PROBE_ITERS * 8.0 * (2 * n) * d
        return per * k, per * k, 0.25 * k  # sklearn's lbfgs: ~0.25 s of Python per fit at n ≪ d
    if method == "pca":
        m = n * copies
        if span:
            return 4.0 * d * m * m + 12.0 * m**3, 12.0 * m**3 + 2.0 * m * m, 2 * _OP_S
        return 4.0 * m * m * d, 4.0 * m * m * d, 2 * _OP_S
    # whitened: span — QR, coordinates, Ledoit–Wolf, Cholesky (+ generalised eigenproblem for k > 1)
    m = 2 * n
    extra = 15.0 * m**3 if k > 1 else 0.0
    if span:
        return 6.0 * d * m * m + 4.0 * m**3 + extra, 4.0 * m**3 + 2.0 * m * m * m + extra, 4 * _OP_S
    dense = (
        4.0 * m * d * d + 14.0 * d**3 + (25.0 * d**3 if k > 1 else 0.0)
    )  # LW + pinvh + lstsq (+ eigh)
    return dense, dense, 4 * _OP_S


def plan_fits(
    methods: Sequence[Any],
    *,
    n_layers: int,
    n_prompts: int,
    d_model: int,
    n_stability: int,
    n_components: int = 1,
    budget_s: float = STABILITY_BUDGET_S,
    measured: dict[str, float] | None = None,
) -> FitPlan:
    """Price fitting ``methods`` (names; anything else is fitted as given, or not at all) on
    ``n_layers`` layers, with up to ``n_stability`` stability refits each, lowered per estimator
    so that its refits stay within ``budget_s`` (and 0 where fewer than 2 would fit).
    ``measured``: seconds of one fit of one layer per method, timed (replaces the model's price)."""
    rate = flop_rate()
    out = []
    for spec in methods:
        if not isinstance(spec, str) or spec not in ESTIMATORS:
            continue
        priced = ESTIMATORS[spec].plan_as or spec  # an estimator may share another's cost model
        span = priced in ("pca", "whitened") and use_span(
            "auto", (1 if priced == "pca" else 2) * n_prompts, d_model
        )
        first, refit, fixed = _costs(priced, span, n_prompts, d_model, n_components)
        # the cut is decided on the nominal machine (deterministic: the same sizes give the same
        # refits on every machine and load); the ETA uses this machine's rate and timings
        nominal = n_layers * (refit / NOMINAL_RATE + (fixed if not span else 0.0))
        if measured and spec in measured:
            first, refit, fixed = 0.0, 0.0, float(measured[spec])
        per_refit = n_layers * (refit / rate + (fixed if not span else 0.0))
        keep, note = n_stability, ""
        if n_stability and nominal * n_stability > budget_s:
            keep = int(budget_s // nominal)
            keep = keep if keep >= 2 else 0
            note = (
                f"stability {keep} of {n_stability} refits: {n_stability} cost ≈ {_secs(nominal * n_stability)} "
                f"on the nominal machine, over the {budget_s:g} s budget"
            )
        path = {
            "probe": "lbfgs in R^d" + (", timed" if spec in (measured or {}) else ""),
            "mean_diff": "means",
        }.get(priced, f"span m={(1 if spec == 'pca' else 2) * n_prompts}" if span else "dense d×d")
        seconds = n_layers * (first / rate + fixed) + keep * per_refit
        out.append(MethodPlan(spec, path, n_layers, n_layers * keep, keep, seconds, note))
    return FitPlan(tuple(out), int(n_layers), int(n_prompts), int(d_model))


def _announce(line: str, progress: bool) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stderr)
    else:
        log.info("%s", line)


def fit_directions(
    specs: Sequence[Any],
    stats: HistoryStats,
    *,
    n_stability: int,
    seed: int,
    progress: bool = True,
    collect_seconds: float | None = None,
) -> tuple[dict[str, Directions], dict[str, Any]]:
    """Fit every direction spec on ``stats`` after announcing the plan (names are built with the
    plan's ``n_stability``); returns ``(directions by name, stability by name or None)`` and
    announces the fitting time beside ``collect_seconds``."""
    from revlens.directions.estimators import DirectionEstimator

    measured = {}
    if (
        "probe" in specs and n_stability and len(stats.layers) > 1
    ):  # lbfgs: its time depends on the data
        t = time.perf_counter()
        ESTIMATORS["probe"](n_bootstrap=0).fit(stats.select(stats.layers[:1]))
        measured["probe"] = time.perf_counter() - t
    plan = plan_fits(
        specs,
        n_layers=len(stats.layers),
        n_prompts=int(stats[stats.aligned_name].count),
        d_model=stats.d_model,
        n_stability=n_stability,
        measured=measured,
    )
    if plan.methods:
        _announce(plan.describe(), progress)
    start = time.perf_counter()
    vectors: dict[str, Directions] = {}
    stability: dict[str, np.ndarray | None] = {}
    for spec in specs:
        est = (
            ESTIMATORS[spec](n_bootstrap=plan.n_stability(spec, n_stability), seed=seed)
            if isinstance(spec, str)
            else spec
        )
        vec = resolve_directions(est, stats)
        name, k = vec.method, 1
        while name in vectors:
            k += 1
            name = f"{vec.method}{k}"
        vectors[name] = vec
        stability[name] = est.stability_ if isinstance(est, DirectionEstimator) else None
        log.info("fitted %s directions on layers %s", name, stats.layers)
    took = time.perf_counter() - start
    collected = f" (collect took {collect_seconds:.1f} s)" if collect_seconds is not None else ""
    _announce(
        f"fit: {len(vectors)} methods fitted in {took:.1f} s (planned ≈ {_secs(plan.seconds)}){collected}",
        progress,
    )
    return vectors, stability


MethodSpec: TypeAlias = DirectionMethod | str | DirectionEstimator | Directions | Tensor
"""One direction method: a registered name, an estimator, fitted :class:`Directions`, or a
``[n_layers_collected, d_model]`` tensor."""
MethodsInput: TypeAlias = MethodSpec | Sequence[MethodSpec]


@no_type_check  # validates its own argument (typed errors), also under the test type-checker
def method_specs(methods: MethodsInput) -> tuple[list[MethodSpec], tuple[str, ...]]:
    """``methods`` as a list of specs and their method names (``"custom"`` for what is not a
    registered name), each checked before any work.

    Raises:
        ConfigError: no method, an unknown name, or an object that is not a method (named)."""
    specs = (
        [methods] if isinstance(methods, (str, DirectionEstimator, Directions)) else list(methods)
    )
    if not specs:
        raise ConfigError("methods is empty; valid methods: " + ", ".join(DIRECTION_METHODS))
    names = tuple(s if isinstance(s, str) else str(getattr(s, "method", "custom")) for s in specs)
    for s in specs:
        if isinstance(s, str) and s not in DIRECTION_METHODS:
            raise ConfigError(
                f"unknown direction method {s!r}; valid methods: {', '.join(DIRECTION_METHODS)}"
            )
        if not isinstance(s, (str, DirectionEstimator, Directions)) and not hasattr(s, "shape"):
            raise ConfigError(
                f"methods: cannot use {type(s).__name__}; expected names, estimators, Directions "
                "or [layer, d_model] tensors"
            )
    return specs, tuple(n if n in DIRECTION_METHODS else "custom" for n in names)
