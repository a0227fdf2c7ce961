"""Validation and set-up of :func:`~revlens.causal.ablation_study`'s inputs.

Every check names the culprit and what was expected (typed errors from :mod:`revlens.errors`).
"""

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Bool
from torch import Tensor

from revlens.causal.batched import STRATEGIES
from revlens.causal.controls import CONTROL_KINDS
from revlens.causal.interventions import KINDS
from revlens.causal.metrics import TokenMetric
from revlens.collect import HistoryStats, collect
from revlens.directions import ESTIMATORS, Directions, resolve_directions
from revlens.errors import ConfigError, HistoryError, MetricError, ShapeMismatchError
from revlens.history import Checkpoint, History
from revlens.model import LensModel
from revlens.probes import ProbeBatch

__all__ = [
    "Positions",
    "StepSpec",
    "check_config",
    "check_positions",
    "position_mask",
    "prepare_metric",
    "reference_stats",
    "select_checkpoints",
    "study_directions",
]

StepSpec = Literal["last"] | int | Sequence[int] | None
Positions = Literal["all", "last"] | Bool[Tensor, "prompt pos"]


def check_config(
    kinds: Sequence[str],
    control_kinds: Sequence[str],
    controls: int,
    alphas: Any,
    batch_size: int,
    strategy: str,
    max_rows: int,
) -> tuple[list[str], list[str], list[float]]:
    """Validate kinds, control kinds, controls, alphas, batch size, strategy; returns the lists."""
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ConfigError(f"kinds={kinds!r}: unknown or empty; valid kinds: {', '.join(KINDS)}")
    control_kinds = [control_kinds] if isinstance(control_kinds, str) else list(control_kinds)
    bad = [k for k in control_kinds if k not in CONTROL_KINDS]
    if bad or not control_kinds:
        raise ConfigError(
            f"control_kinds={control_kinds!r}: unknown or empty; valid: {', '.join(CONTROL_KINDS)}"
        )
    if isinstance(controls, bool) or not isinstance(controls, int) or controls < 1:
        raise ConfigError(
            f"controls must be an int >= 1 (random directions per layer and kind); got {controls!r}"
        )
    alpha_list: list[float] = []
    if "steer" in kinds:
        if alphas is None:
            raise ConfigError(
                "kind 'steer' needs alphas (a grid of step sizes along v, e.g. np.linspace(0, 8, 17))"
            )
        alpha_list = [float(a) for a in np.atleast_1d(np.asarray(alphas, dtype=float))]
        bad_a = [a for a in alpha_list if not math.isfinite(a)]
        if bad_a or not alpha_list:
            raise ConfigError(
                f"alphas must be finite and non-empty; got {list(np.atleast_1d(alphas))}"
            )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an int >= 1; got {batch_size!r}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy={strategy!r}; valid: {', '.join(STRATEGIES)}")
    if not isinstance(max_rows, int) or max_rows < 1:
        raise ConfigError(f"max_rows must be an int >= 1; got {max_rows!r}")
    return kinds, control_kinds, alpha_list


def select_checkpoints(
    hist: History, runs: Sequence[str] | str | None, steps: StepSpec
) -> list[Checkpoint]:
    """The run checkpoints a study intervenes on (runs default: every non-control run)."""
    if runs is None:
        chosen = [r for r in hist.runs.values() if not r.control]
    else:
        names = [runs] if isinstance(runs, str) else [str(r) for r in runs]
        missing = [n for n in names if n not in hist.runs]
        if missing:
            raise HistoryError(f"run(s) {missing} are not in the history; runs: {list(hist.runs)}")
        chosen = [hist.runs[n] for n in names]
    out: list[Checkpoint] = []
    for run in chosen:
        if steps is None:
            out += list(run.steps.values())
        elif steps == "last":
            out.append(run.steps[max(run.steps)])
        else:
            wanted = [steps] if isinstance(steps, int) else list(steps)
            missing = [s for s in wanted if s not in run.steps]
            if missing:
                raise HistoryError(
                    f"run {run.name!r} has no step(s) {missing}; steps: {list(run.steps)}"
                )
            out += [run.steps[s] for s in wanted]
    return out


def position_mask(positions: Any, batch: ProbeBatch) -> Tensor | None:
    """The bool mask ``[batch, pos]`` of positions to intervene on (``None``: all)."""
    if isinstance(positions, str):
        if positions == "all":
            return None
        mask = torch.zeros(batch.tokens.shape, dtype=torch.bool)
        mask[torch.arange(len(batch)), batch.last_index] = True
        return mask
    width = batch.tokens.shape[1]
    rows = positions[batch.indices]
    mask = torch.zeros(len(batch), width, dtype=torch.bool)
    w = min(width, rows.shape[1])
    mask[:, :w] = rows[:, :w]
    return mask


def check_positions(positions: Any, n_prompts: int) -> None:
    """Validate a ``positions`` argument against the probe set."""
    if isinstance(positions, str):
        if positions not in ("all", "last"):
            raise ConfigError(
                f"positions={positions!r}; expected 'all', 'last' or a bool mask [n_prompts, pos]"
            )
        return
    if (
        not isinstance(positions, Tensor)
        or positions.dtype != torch.bool
        or positions.ndim != 2
        or positions.shape[0] != n_prompts
    ):
        raise ShapeMismatchError(
            f"positions mask must be a bool tensor [n_prompts={n_prompts}, pos]"
        )


def study_directions(spec: Any, stats: HistoryStats, layers: list[int], d_model: int) -> Directions:
    """v_rev at ``layers``: a ``[layer, d]`` tensor, or via :func:`revlens.directions.resolve_directions`."""
    if isinstance(spec, Tensor) and spec.ndim == 2 and spec.shape[0] == len(layers):
        vec = Directions.from_tensor(spec, layers, method="custom", site=stats.site)
    else:
        if isinstance(spec, str) and spec in ESTIMATORS:
            spec = ESTIMATORS[spec](
                n_bootstrap=0
            )  # the study needs the direction, not its stability
        vec = resolve_directions(spec, stats).select(layers)
    vec.check_d_model(d_model)
    return vec


def prepare_metric(metric: Any, lm: LensModel) -> Any:
    """Check the metric is callable and bind built-in token metrics to the model's tokenizer."""
    if not callable(metric):
        raise MetricError(
            f"metric must be a callable (logits, batch) -> Tensor[batch]; got {type(metric).__name__}"
        )
    if isinstance(metric, TokenMetric):
        metric.bind(lm.tokenizer, vocab_size=int(lm.bridge.cfg.d_vocab))
    return metric


def reference_stats(
    hist: History, probes: Any, lm: LensModel, layers: list[int], batch_size: int
) -> HistoryStats:
    """Base + aligned statistics (aligned second moments, kept activations) at ``layers``."""
    refs = History(
        base=hist.base,
        aligned=hist.aligned,
        runs={},
        architecture=hist.architecture,
        tokenizer=lm.tokenizer,
        metadata=hist.metadata,
    )
    return collect(
        refs,
        probes,
        model=lm,
        layers=layers,
        n_bootstrap=0,
        keep="reference",
        moments="reference",
        batch_size=batch_size,
        progress=False,
    )
