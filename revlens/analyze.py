"""``revlens.analyze``: history → statistics → directions → drift + nulls → :class:`Report`.

The common case in one call (DESIGN §3); every stage is also usable alone
(:func:`revlens.collect`, :mod:`revlens.directions`, :func:`revlens.drift.drift_table`).
"""

import datetime
import json
import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np
import pandas as pd

from revlens._version import __version__
from revlens.collect import HistoryStats, collect
from revlens.directions import ESTIMATORS, DirectionEstimator, Directions, resolve_directions
from revlens.directions.table import directions_table
from revlens.drift import drift_table
from revlens.errors import ConfigError, HistoryError
from revlens.history import History
from revlens.hooks import LayerSpec
from revlens.probes import PositionRule
from revlens.report.report import Report

__all__ = ["analyze"]

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("mean_diff", "pca", "probe", "whitened")


def _check_history(hist: History) -> None:
    if not hist.runs:
        raise HistoryError("the history has no fine-tuning run: nothing to project on v_rev")
    for run in hist.runs.values():
        if len(run.steps) < 2:
            raise HistoryError(
                f"run {run.name!r} has {len(run.steps)} step(s) {list(run.steps)}; a drift trajectory "
                "needs at least 2 fine-tuning steps per run"
            )


def _fit(
    spec: Any, stats: HistoryStats, *, n_bootstrap: int, seed: int
) -> tuple[str, Directions, np.ndarray | None]:
    if isinstance(spec, str):
        if spec not in ESTIMATORS:
            raise ConfigError(
                f"unknown direction method {spec!r}; valid methods: {', '.join(ESTIMATORS)}"
            )
        est = ESTIMATORS[spec](n_bootstrap=n_bootstrap, seed=seed).fit(stats)
        return spec, est.direction_, est.stability_
    if isinstance(spec, DirectionEstimator):
        spec.fit(stats)
        return spec.method, spec.direction_, spec.stability_
    vec = resolve_directions(spec, stats)
    return vec.method, vec, None


def _lab_metrics(hist: History | None) -> pd.DataFrame | None:
    if hist is None or hist.lab_dir is None:
        return None
    path = hist.lab_dir / "metrics.json"
    if not path.is_file():
        return None
    obj = json.loads(path.read_text())
    if isinstance(obj, dict) and all(isinstance(v, dict) for v in obj.values()):
        return pd.DataFrame.from_dict(obj, orient="index").rename_axis("name").reset_index()
    return pd.json_normalize(obj)


def _kinds(hist: History | None, stats: HistoryStats) -> dict[str, str]:
    blocked = set()
    if hist is not None:
        blocked = set((hist.metadata.get("lab") or {}).get("blocked", {}) or {})
    return {
        r: "control" if r in stats.controls else "blocked" if r in blocked else "run"
        for r in stats.runs
    }


def analyze(
    model: Any,
    checkpoints: Any,
    probes: Any = None,
    *,
    methods: Sequence[Any] = DEFAULT_METHODS,
    layers: LayerSpec = "all",
    position: PositionRule | None = None,
    site: str = "resid_post",
    n_bootstrap: int = 100,
    n_stability: int = 20,
    n_null: int = 1000,
    seed: int = 0,
    cache_dir: Any = None,
    batch_size: int = 32,
    device: Any = None,
    progress: bool = True,
    executor: Executor | None = None,
) -> Report:
    """Measure reversion on a history: directions per layer, drift projections, nulls.

    Args:
        model: a ``TransformerBridge``, a :class:`~revlens.LensModel`, a Hugging Face model or a
            ``save_pretrained`` path of the history's architecture; ``None`` boots it from the
            history.
        checkpoints: a :class:`~revlens.History`, anything ``History.load`` accepts (a lab dir, a
            mapping with ``base``/``aligned``/``runs``), or precomputed
            :class:`~revlens.HistoryStats` (then nothing is collected: ``model``, ``probes``,
            ``layers``, ``position``, ``site``... are ignored).
        probes: a :class:`~revlens.Probes`, a list of prompts or a JSONL path; ``None`` uses the
            lab's probe set for a lab history (``ProbeError`` otherwise).
        methods: direction methods: names (``"mean_diff"``, ``"pca"``, ``"probe"``,
            ``"whitened"``), estimators, :class:`~revlens.directions.Directions`, or tensors
            ``[n_layers_collected, d_model]``. Several base checkpoints combine by the mean of bases.
        layers: ``"all"`` or layer indices (revlens convention: 0 = embeddings).
        position: ``"last"``, ``"mean"`` or a bool mask; ``None`` keeps the probes' own rule
            (``"last"`` by default).
        site: residual site kind (``"resid_post"``...).
        n_bootstrap: Poisson-bootstrap replicates (confidence intervals of cos).
        n_stability: bootstrap refits per estimator for ``stability_`` (refitting the probe and
            whitened estimators is the costly part of ``analyze``; 0 skips stability).
        n_null: random directions per layer (covariance-matched null) and label permutations.
        seed: seed of the bootstrap weights, resampling, null directions and permutations.
        cache_dir: on-disk statistics cache (resumable; keyed by content).
        batch_size, device, progress, executor: passed to :func:`revlens.collect`.

    Returns:
        :class:`~revlens.Report`.

    Raises:
        HistoryError: no run, or a run with fewer than 2 steps (named).
        ProbeError: no probes for a non-lab history, or probes that do not fit the tokenizer.
        ConfigError: unknown method (lists the valid ones), zero-norm direction (names the layer).
        ShapeMismatchError: a direction tensor of the wrong shape.
    """
    if not methods:
        raise ConfigError("methods is empty; valid methods: " + ", ".join(ESTIMATORS))
    for spec in methods:  # fail on a bad name before the (slow) collection
        if isinstance(spec, str) and spec not in ESTIMATORS:
            raise ConfigError(
                f"unknown direction method {spec!r}; valid methods: {', '.join(ESTIMATORS)}"
            )
    if n_null < 0:
        raise ConfigError(f"n_null must be >= 0, got {n_null}")
    hist: History | None = None
    if isinstance(checkpoints, HistoryStats):
        stats = checkpoints
        for run, steps in stats.runs.items():
            if len(steps) < 2:
                raise HistoryError(
                    f"run {run!r} has {len(steps)} step(s); a drift trajectory needs >= 2"
                )
        if not stats.runs:
            raise HistoryError(
                "the statistics hold no fine-tuning run: nothing to project on v_rev"
            )
    else:
        hist = History.load(checkpoints)
        _check_history(hist)
        stats = collect(
            hist,
            probes,
            model=model,
            layers=layers,
            site=site,
            position=position,
            batch_size=batch_size,
            cache_dir=cache_dir,
            moments="reference",
            keep="reference",
            n_bootstrap=n_bootstrap,
            bootstrap_seed=seed,
            device=device,
            executor=executor,
            progress=progress,
        )
    vectors: dict[str, Directions] = {}
    stability: dict[str, np.ndarray | None] = {}
    for spec in methods:
        name, vec, stab = _fit(spec, stats, n_bootstrap=n_stability, seed=seed)
        base_name, k = name, 1
        while name in vectors:
            k += 1
            name = f"{base_name}{k}"
        vectors[name] = vec
        stability[name] = stab
        log.info("fitted %s directions on layers %s", name, stats.layers)
    kinds = _kinds(hist, stats)
    drift = drift_table(stats, vectors, n_null=n_null, seed=seed, kinds=kinds)
    table = directions_table(
        stats,
        vectors,
        stability={k: v for k, v in stability.items() if v is not None},
        n_permutations=n_null,
        seed=seed,
    )
    config = {
        "methods": list(vectors),
        "layers": list(stats.layers),
        "site": stats.site,
        "position": stats.position,
        "n_bootstrap": n_bootstrap,
        "n_stability": n_stability,
        "n_null": n_null,
        "seed": seed,
        "batch_size": batch_size,
        "base_combination": "mean of bases",
        "controls": sorted(stats.controls),
        "kinds": kinds,
        "run_starts": dict(stats.run_starts),
    }
    return Report(
        drift=drift,
        directions=table,
        vectors=vectors,
        config=config,
        provenance=_provenance(hist, stats),
        lab_metrics=_lab_metrics(hist),
    )


def _provenance(hist: History | None, stats: HistoryStats) -> dict[str, Any]:
    checkpoints = {}
    for name, (role, run, step) in stats.roles.items():
        entry: dict[str, Any] = {"role": role, "run": run, "step": step}
        if hist is not None:
            ck = hist[name]
            entry["fingerprint"] = ck.fingerprint()
            path = ck.local_path() if not hasattr(ck.source, "repo_id") else None
            entry["source"] = str(path) if path is not None else repr(ck.source)
        checkpoints[name] = entry
    return {
        "revlens_version": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": stats.meta.get("model"),
        "lab_dir": str(hist.lab_dir) if hist is not None and hist.lab_dir is not None else None,
        "checkpoints": checkpoints,
        "d_model": stats.d_model,
        "n_prompts": stats.meta.get("n_prompts"),
        "probe_fingerprint": stats.meta.get("probe_fingerprint"),
        "prompts": stats.meta.get("prompts"),
    }
