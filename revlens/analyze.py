"""``revlens.analyze``: history → statistics → directions → drift + nulls → :class:`Report`.

The common case in one call (DESIGN §3); every stage is also usable alone
(:func:`revlens.collect`, :mod:`revlens.directions`, :func:`revlens.drift.drift_table`).
"""

import datetime
import logging
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, no_type_check

import pandas as pd
import torch
from typing_extensions import Never

from revlens._config import Config, as_bool, as_int, as_layers, as_ranks, option, parse_ints
from revlens._types import Device, PathLike
from revlens._version import __version__
from revlens.collect import HistoryStats, collect, without_degenerate
from revlens.directions import ESTIMATORS, Directions, resolve_directions
from revlens.directions.contrastive import check_direction_inputs
from revlens.directions.plan import MethodsInput, fit_directions, method_specs
from revlens.directions.table import directions_table
from revlens.drift import drift_table, subspace_drift_table
from revlens.errors import ConfigError, HistoryError
from revlens.evaluate.result import Evaluation
from revlens.history import History, HistoryInput
from revlens.history.inputs import model_first_call
from revlens.model import ModelInput
from revlens.modes import (
    DIRECTION_METHODS,
    POSITION_RULES,
    SITE_KINDS,
    DirectionMethod,
    SiteKind,
    check_mode,
)
from revlens.probes import PositionRule, ProbesInput, parse_position, position_name
from revlens.report.report import Report
from revlens.sites import LayerSpec
from revlens.weights.config import WeightsConfig

__all__ = ["DEFAULT_METHODS", "AnalyzeConfig", "analyze"]

log = logging.getLogger(__name__)

DEFAULT_METHODS = tuple(m for m in DIRECTION_METHODS if ESTIMATORS[m].in_defaults)
"""The history estimators (``refusal`` needs labelled probes: ask for it by name)."""


@no_type_check  # validates its own fields (typed errors), also under the test type-checker
@dataclass
class AnalyzeConfig(Config):
    """Settings of :func:`analyze` (saved as ``Report.config``; the CLI builds the same object)."""

    methods: tuple[str, ...] = option(
        DEFAULT_METHODS,
        "direction methods (names; estimators and tensors are "
        "passed to analyze(methods=...) directly)",
        metavar="METHOD",
    )
    layers: str | tuple[int, ...] = option(
        "all", "layer indices (0 = embeddings) or 'all'", metavar="L"
    )
    site: str = option("resid_post", "site kind", choices=SITE_KINDS)
    position: str | None = option(
        None,
        "position rule: last, mean, post_instruction (every post-instruction template "
        "token of chat probes, each read separately) or post_instruction:K (the last K) "
        "(default: the probes' own, 'last')",
        metavar="RULE",
    )
    n_bootstrap: int = option(100, "bootstrap replicates (confidence intervals of cos)")
    n_stability: int = option(
        20,
        "bootstrap refits per estimator for its stability, at most: the fit plan cuts an "
        "estimator whose refits would exceed its budget (said in the plan; 0 skips it)",
    )
    n_null: int = option(1000, "random directions / permutations per layer")
    seed: int = option(0, "seed of every random draw")
    batch_size: int = option(32, "probe batch size")
    weights: bool = option(
        False,
        "also read weight-space reversion (revlens.weights: no forward pass; "
        "its default settings, or analyze(weights=WeightsConfig(...)))",
    )
    ranks: tuple[int, ...] = option(
        (),
        "also fit rank-k reversion subspaces (the largest k) and report the drift's "
        "energy in their first k rows, beside exact and covariance-matched nulls",
        parse=parse_ints,
        nargs="+",
        metavar="K",
    )
    subspace_methods: tuple[str, ...] = option(
        ("pca",), "estimators fitted as rank-k subspaces when ranks are given", metavar="METHOD"
    )

    def validate(self) -> None:
        """Check every field, before any collection starts."""
        methods = (self.methods,) if isinstance(self.methods, str) else tuple(self.methods)
        if not methods:
            raise ConfigError("methods is empty; valid methods: " + ", ".join(DIRECTION_METHODS))
        for m in methods:
            if not isinstance(m, str) or m not in (*DIRECTION_METHODS, "custom"):
                raise ConfigError(
                    f"unknown direction method {m!r}; valid methods: {', '.join(DIRECTION_METHODS)}"
                )
        self.methods = methods
        self.layers = as_layers(self.layers)
        check_mode("site", self.site, SITE_KINDS)
        if isinstance(self.position, (tuple, list)):
            self.position = position_name(parse_position(tuple(self.position)))
        if self.position is not None and self.position != "mask":
            check_mode(
                "position",
                self.position if not str(self.position).startswith("post_instruction") else "last",
                (*POSITION_RULES, "post_instruction", "post_instruction:K"),
            )
            parse_position(self.position)
        self.n_bootstrap = as_int("n_bootstrap", self.n_bootstrap, min=0)
        self.n_stability = as_int("n_stability", self.n_stability, min=0)
        self.n_null = as_int("n_null", self.n_null, min=0)
        if self.n_null == 0:
            warnings.warn(
                "n_null=0: the covariance-matched null and the permutation test are disabled "
                "(their columns are NaN)",
                UserWarning,
                stacklevel=3,
            )
        self.seed = as_int("seed", self.seed)
        self.batch_size = as_int("batch_size", self.batch_size, min=1)
        self.weights = as_bool("weights", self.weights)
        self.ranks = as_ranks("ranks", self.ranks)
        subs = (
            (self.subspace_methods,)
            if isinstance(self.subspace_methods, str)
            else tuple(self.subspace_methods)
        )
        for m in subs:
            if m not in DIRECTION_METHODS:
                raise ConfigError(
                    f"subspace_methods: unknown direction method {m!r}; valid methods: "
                    f"{', '.join(DIRECTION_METHODS)}"
                )
            most = ESTIMATORS[m].max_components
            if self.ranks and most is not None and max(self.ranks) > most:
                raise ConfigError(
                    f"subspace_methods: {m!r} fits at most {most} direction(s) per layer; ranks up to "
                    f"{max(self.ranks)} need another method (e.g. 'pca')"
                )
        self.subspace_methods = subs


def _check_runs(runs: dict[str, Any]) -> None:
    if not runs:
        raise HistoryError("the history has no fine-tuning run: nothing to project on v_rev")
    for name, steps in runs.items():
        if len(steps) < 2:
            raise HistoryError(
                f"run {name!r} has {len(steps)} step(s) {list(steps)}; a drift trajectory needs at least 2 "
                "fine-tuning steps per run"
            )


def _fit_all(
    specs: Sequence[Any],
    stats: HistoryStats,
    cfg: AnalyzeConfig,
    progress: bool = True,
    collect_seconds: float | None = None,
) -> tuple[dict, dict]:
    """Announce the fit plan (fits, refits, ETA; refits cut to budget), fit, announce the time."""
    return fit_directions(
        specs,
        stats,
        n_stability=cfg.n_stability,
        seed=cfg.seed,
        progress=progress,
        collect_seconds=collect_seconds,
    )


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def analyze(
    history: HistoryInput | HistoryStats,
    probes: ProbesInput | None = None,
    *legacy: ProbesInput,
    model: ModelInput | None = None,
    config: AnalyzeConfig | None = None,
    methods: MethodsInput | None = None,
    layers: LayerSpec | None = None,
    site: SiteKind | None = None,
    position: PositionRule | None = None,
    n_bootstrap: int | None = None,
    n_stability: int | None = None,
    n_null: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    ranks: Sequence[int] | None = None,
    subspace_methods: Sequence[DirectionMethod] | DirectionMethod | None = None,
    weights: bool | WeightsConfig | None = None,
    cache_dir: PathLike | None = None,
    device: Device | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    executor: Executor | None = None,
    evaluation: Evaluation | pd.DataFrame | None = None,
    checkpoints: HistoryInput | HistoryStats | None = None,
    **unknown: Never,
) -> Report:
    """Measure reversion on a history: directions per layer, drift projections, nulls.

    ``analyze(history, probes, model=...)``; the old ``analyze(model, history[, probes])`` still works
    for one release (``DeprecationWarning``; the form is told by types, never by what is on disk:
    :func:`revlens.history.inputs.model_first_call`).

    Args:
        history: a :class:`~revlens.History`, anything :func:`~revlens.history.as_history` accepts
            (a lab dir, a ``history.json``, a mapping with ``base``/``aligned``/``runs``), or
            precomputed :class:`~revlens.HistoryStats` (then nothing is collected).
        probes: a :class:`~revlens.Probes`, a list of prompts or a JSONL path; ``None``: the
            history's default probe set.
        model: a ``TransformerBridge``, a :class:`~revlens.LensModel`, a Hugging Face model or a
            ``save_pretrained`` path of the history's architecture (default: boot the history's).
        config: an :class:`AnalyzeConfig`; its fields given as keywords (``layers`` ... ``weights``,
            described there; ``None``: the config's) override it, all validated before any forward
            pass (another keyword: a ``ConfigError`` naming it). ``ranks=(1, 2, 4, 8)`` also fits
            rank-k subspaces (``report.subspaces``, ``report.subspace_drift``).
        methods: names (``"mean_diff"``, ``"pca"``...), estimators, :class:`~revlens.directions.Directions`
            or tensors ``[n_layers_collected, d_model]`` (:data:`revlens.directions.plan.MethodsInput`).
        cache_dir: on-disk statistics cache (resumable; keyed by content).
        device, dtype: where and in what precision the model runs (default: the given model's,
            else float32 on the CPU; e.g. ``dtype=torch.bfloat16``); recorded in the report config.
        progress, executor: passed to :func:`revlens.collect`.
        evaluation: an :class:`~revlens.Evaluation` (or its table) to show beside the drift, joined
            into the report's metrics table with the history's own (:meth:`Report.with_metrics`).
        weights: ``True`` (or a :class:`revlens.weights.WeightsConfig`) also reads the history's
            weight-space reversion (:func:`revlens.weights.weight_reversion`), attached as
            ``Report.weights`` and drawn in the HTML report's "Weight space" section.
        checkpoints: deprecated keyword of the old form (the history).

    Returns: :class:`~revlens.Report`.

    Raises:
        HistoryError: no run, or a run with fewer than 2 steps (named).
        ProbeError: no probes and no default probes, or probes that do not fit the tokenizer.
        ConfigError: a bad setting (named, before any forward pass); zero-norm direction.
        ShapeMismatchError: a direction tensor of the wrong shape.
    """
    model, checkpoints, probes = model_first_call(
        "analyze", history, probes, legacy, model, checkpoints
    )
    settings = {
        k: v
        for k, v in {
            "layers": layers,
            "site": site,
            "position": position,
            "n_bootstrap": n_bootstrap,
            "n_stability": n_stability,
            "n_null": n_null,
            "seed": seed,
            "batch_size": batch_size,
            "ranks": ranks,
            "subspace_methods": subspace_methods,
        }.items()
        if v is not None
    }
    settings.update(unknown)  # refused by AnalyzeConfig.build, naming them
    if config is not None and not isinstance(config, AnalyzeConfig):
        raise ConfigError(f"analyze: config must be a AnalyzeConfig, got {type(config).__name__}")
    specs, names = method_specs(
        methods if methods is not None else (config.methods if config else DEFAULT_METHODS)
    )
    weights_config = _weights_config(weights, settings)
    cfg = AnalyzeConfig.build(config, "analyze", **{**settings, "methods": names})
    collect_kw = {
        "cache_dir": cache_dir,
        "device": device,
        "dtype": dtype,
        "executor": executor,
        "progress": progress,
    }
    report = _run(model, checkpoints, probes, specs, cfg, weights_config, collect_kw)
    return report if evaluation is None else report.with_metrics(evaluation)


def _run(
    model: Any,
    checkpoints: Any,
    probes: Any,
    specs: list[Any],
    cfg: AnalyzeConfig,
    weights_config: Any,
    collect_kw: dict[str, Any],
) -> Report:
    """:func:`analyze` once its arguments are checked: at several positions, or at one."""
    progress = collect_kw["progress"]
    if cfg.weights and isinstance(checkpoints, HistoryStats):
        raise ConfigError(
            "weights=True needs the history itself (its weights), not precomputed HistoryStats"
        )
    if _reads_positions(cfg.position, probes) and not isinstance(checkpoints, HistoryStats):
        report = _analyze_positions(model, checkpoints, probes, specs, cfg, **collect_kw)
        if cfg.weights:
            report.weights = _weight_report(History.load(checkpoints), weights_config, progress)
        return report
    start = time.perf_counter()
    hist, stats = _statistics(model, checkpoints, probes, cfg, specs=specs, **collect_kw)
    return _report(hist, stats, specs, cfg, weights_config, progress, time.perf_counter() - start)


def _report(
    hist: History | None,
    stats: HistoryStats,
    specs: list[Any],
    cfg: AnalyzeConfig,
    weights_config: Any,
    progress: bool,
    collect_seconds: float | None = None,
) -> Report:
    """Directions, drift and the directions table of ``stats`` (and the weights' reading, if asked)."""
    specs, stats, degenerate = _bind_and_drop_degenerate(specs, stats)
    vectors, stability = _fit_all(
        specs, stats, cfg, progress, collect_seconds if hist is not None else None
    )
    drift = drift_table(stats, vectors, n_null=cfg.n_null, seed=cfg.seed)
    subspaces, sub_drift = _fit_subspaces(stats, cfg)
    table = directions_table(
        stats,
        vectors,
        stability={k: v for k, v in stability.items() if v is not None},
        n_permutations=cfg.n_null,
        seed=cfg.seed,
    )
    config_out = {
        **cfg.to_dict(),
        "methods": list(vectors),
        "layers": list(stats.layers),
        "site": stats.site,
        "position": stats.position,
        "base_combination": "mean of bases",
        "controls": sorted(stats.controls),
        "kinds": dict(stats.kinds),
        "run_starts": dict(stats.run_starts),
        "degenerate_layers": list(degenerate),
        "dtype": stats.meta.get("dtype"),
    }
    weight_report = (
        _weight_report(hist, weights_config, progress) if cfg.weights and hist is not None else None
    )
    report = Report(
        drift=drift,
        directions=vectors,
        directions_table=table,
        config=config_out,
        provenance=_provenance(hist, stats),
        metrics=hist.metrics if hist is not None else None,
        weights=weight_report,
        subspaces=subspaces,
        subspace_drift=sub_drift,
    )
    return report


def _bind_and_drop_degenerate(
    specs: list[Any], stats: HistoryStats
) -> tuple[list[Any], HistoryStats, list[int]]:
    """Direction tensors name the collected layers by row: bind them, then leave degenerate layers out."""
    specs = [
        resolve_directions(s, stats) if hasattr(s, "shape") and not isinstance(s, Directions) else s
        for s in specs
    ]
    stats, degenerate = without_degenerate(stats, what="analyze")
    return specs, stats, list(degenerate)


def _statistics(
    model: Any,
    checkpoints: Any,
    probes: Any,
    cfg: AnalyzeConfig,
    *,
    specs: Sequence[Any] = (),
    **collect_kw: Any,
) -> tuple[History | None, HistoryStats]:
    """The history (``None`` for precomputed statistics) and its statistics for ``cfg``."""
    if isinstance(checkpoints, HistoryStats):
        _check_runs(checkpoints.runs)
        return None, checkpoints
    hist = History.load(checkpoints)
    _check_runs({r.name: r.steps for r in hist.runs.values()})
    _check_subspaces(cfg, hist)
    check_direction_inputs(specs, probes, hist)
    stats = collect(
        hist,
        probes,
        model=model,
        layers=cfg.layers,
        site=cfg.site,
        position=cfg.position,
        batch_size=cfg.batch_size,
        moments="reference",
        keep="reference",
        n_bootstrap=cfg.n_bootstrap,
        bootstrap_seed=cfg.seed,
        **collect_kw,
    )
    return hist, stats


def _reads_positions(position: Any, probes: Any) -> bool:
    """Whether the rule reads several positions separately (``("post_instruction", k)``)."""
    from revlens.probes import Probes

    rule = (
        position
        if position is not None
        else (probes.position if isinstance(probes, Probes) else None)
    )
    return (
        rule is not None
        and not (isinstance(rule, str) and rule == "mask")
        and isinstance(parse_position(rule), tuple)
    )


def _analyze_positions(
    model: Any,
    checkpoints: Any,
    probes: Any,
    specs: list[Any],
    cfg: AnalyzeConfig,
    **collect_kw: Any,
) -> Report:
    """:func:`analyze` at every post-instruction position: one forward per checkpoint and batch for
    all positions, directions and drift per (position, layer) (:mod:`revlens.drift.positions`)."""
    from revlens.collect import collect
    from revlens.drift.positions import position_tables
    from revlens.probes import Probes

    hist = History.load(checkpoints)
    _check_runs({r.name: r.steps for r in hist.runs.values()})
    _check_subspaces(cfg, hist)
    check_direction_inputs(specs, probes, hist)
    rule = (
        cfg.position
        if cfg.position is not None
        else probes.position
        if isinstance(probes, Probes)
        else None
    )
    by_position = collect(
        hist,
        probes,
        position=parse_position(rule),
        model=model,
        layers=cfg.layers,
        site=cfg.site,
        batch_size=cfg.batch_size,
        moments="reference",
        keep="reference",
        n_bootstrap=cfg.n_bootstrap,
        bootstrap_seed=cfg.seed,
        **collect_kw,
    )
    tables = position_tables(
        by_position,
        lambda st: _fit_all(specs, st, cfg, collect_kw.get("progress", True)),
        n_null=cfg.n_null,
        seed=cfg.seed,
        subspaces=(lambda st: _fit_subspaces(st, cfg)) if cfg.ranks else None,
    )
    first = next(iter(by_position.values()))
    config_out = {
        **cfg.to_dict(),
        "position": position_name(parse_position(rule)),
        "methods": list(tables.directions),
        "positions": [int(p) for p in by_position],
        "dropped_layers": tables.dropped,
        "layers": list(first.layers),
        "site": first.site,
        "base_combination": "mean of bases",
        "controls": sorted(first.controls),
        "kinds": dict(first.kinds),
        "run_starts": dict(first.run_starts),
    }
    provenance = {
        **_provenance(hist, first),
        "probe_fingerprint": first.meta.get("probe_fingerprint"),
    }
    return Report(
        drift=tables.drift,
        directions=tables.directions,
        directions_table=tables.directions_table,
        config=config_out,
        provenance=provenance,
        metrics=hist.metrics,
        subspaces=tables.subspaces,
        subspace_drift=tables.subspace_drift,
    )


def _weight_report(hist: History, config: Any, progress: bool) -> Any:
    from revlens.weights.stream import weight_reversion

    return weight_reversion(hist, config=config, progress=progress)


def _weights_config(weights: Any, settings: dict[str, Any]) -> Any:
    """``analyze(weights=...)``: a bool goes into the config; a ``WeightsConfig`` also sets its settings."""
    if weights is None:
        return None
    from revlens.weights.config import WeightsConfig

    if isinstance(weights, WeightsConfig):
        settings["weights"] = True
        return weights
    settings["weights"] = weights
    return None


def _check_subspaces(cfg: AnalyzeConfig, hist: History | None) -> None:
    """Refuse, before any collection, rank-k fits a history cannot have (mean_diff: one direction
    per base checkpoint)."""
    if (
        cfg.ranks
        and "mean_diff" in cfg.subspace_methods
        and hist is not None
        and max(cfg.ranks) > len(hist.base)
    ):
        raise ConfigError(
            f"ranks up to {max(cfg.ranks)} with subspace method 'mean_diff' need as many base "
            f"checkpoints; the history has {len(hist.base)} (use 'pca' for rank-k subspaces)"
        )


def _fit_subspaces(stats: HistoryStats, cfg: AnalyzeConfig) -> tuple[dict[str, Directions], Any]:
    """Rank-max(ranks) fits and the drift's energy in their first k rows (``None`` without ranks)."""
    if not cfg.ranks:
        return {}, None
    from revlens.directions import ESTIMATORS

    k = max(cfg.ranks)
    subspaces = {
        m: ESTIMATORS[m](n_components=k, n_bootstrap=cfg.n_stability, seed=cfg.seed)
        .fit(stats)
        .direction_
        for m in cfg.subspace_methods
    }
    log.info("fitted rank-%d subspaces %s", k, list(subspaces))
    return subspaces, subspace_drift_table(
        stats, subspaces, ranks=cfg.ranks, n_null=cfg.n_null, seed=cfg.seed
    )


def _provenance(hist: History | None, stats: HistoryStats) -> dict[str, Any]:
    checkpoints = {}
    for name, (role, run, step) in stats.roles.items():
        entry: dict[str, Any] = {"role": role, "run": run, "step": step}
        if hist is not None:
            ck = hist[name]
            entry["fingerprint"] = (
                ck.model_fingerprint()
            )  # the weights (an adapter: with its start's)
            if not hasattr(ck.source, "repo_id") and ck.kind == "adapter":
                entry.update(
                    kind="adapter",
                    files_fingerprint=ck.fingerprint(),
                    start=ck.require_start().name,
                )
            path = ck.local_path() if not hasattr(ck.source, "repo_id") else None
            entry.update(
                source=str(path) if path is not None else repr(ck.source), **ck.origin(path)
            )
        checkpoints[name] = entry
    meta = hist.metadata if hist is not None else {}
    return {
        "revlens_version": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": stats.meta.get("model"),
        "architecture": stats.meta.get("architecture"),
        "history": meta.get("spec"),
        "harm_metric": meta.get("harm_metric"),
        "note": meta.get(
            "note"
        ),  # the history's own note (a lab track: whether the paper's shape holds)
        "checkpoints": checkpoints,
        "d_model": stats.d_model,
        "n_prompts": stats.meta.get("n_prompts"),
        "probe_fingerprint": stats.meta.get("probe_fingerprint"),
        "prompts": stats.meta.get("prompts"),
        "chat_template": stats.meta.get("chat_template"),
        "datasets": stats.meta.get("datasets"),
    }


from revlens._callable import make_callable  # noqa: E402

make_callable(
    __name__, analyze
)  # revlens.analyze(...) works whether it names the module or the function
