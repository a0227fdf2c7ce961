"""Validation and set-up of :func:`~revlens.causal.ablation_study`'s inputs.

Every check names the culprit and what was expected (typed errors from :mod:`revlens.errors`).
"""

from collections.abc import Sequence
from typing import Literal, no_type_check

import torch
from jaxtyping import Bool
from torch import Tensor

from revlens.collect import HistoryStats, collect
from revlens.errors import ConfigError, HistoryError, ShapeMismatchError
from revlens.history import Checkpoint, History
from revlens.metrics import MetricLike, bind_metric
from revlens.model import LensModel
from revlens.modes import SiteKind
from revlens.probes import ProbeBatch, ProbesInput

__all__ = [
    "Positions",
    "StepSpec",
    "check_positions",
    "position_mask",
    "prepare_metric",
    "reference_stats",
    "select_checkpoints",
]

StepSpec = Literal["last"] | int | Sequence[int] | None
Positions = Literal["all", "last"] | Bool[Tensor, "prompt pos"]


def select_checkpoints(
    hist: History, runs: Sequence[str] | str | None, steps: StepSpec
) -> list[Checkpoint]:
    """The run checkpoints a study intervenes on (runs default: every ordinary run; steps
    ``None`` / ``"all"``: every step)."""
    if not runs:
        chosen = [r for r in hist.runs.values() if r.kind == "run"]
    else:
        names = [runs] if isinstance(runs, str) else [str(r) for r in runs]
        missing = [n for n in names if n not in hist.runs]
        if missing:
            raise HistoryError(f"run(s) {missing} are not in the history; runs: {list(hist.runs)}")
        chosen = [hist.runs[n] for n in names]
    out: list[Checkpoint] = []
    for run in chosen:
        if steps is None or steps == "all":
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


def position_mask(positions: Positions, batch: ProbeBatch) -> Tensor | None:
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


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def check_positions(positions: Positions, n_prompts: int) -> None:
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


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def prepare_metric(metric: MetricLike, lm: LensModel) -> MetricLike:
    """Check the metric (a logits callable or a model metric) and bind built-in metrics to the
    model's tokenizer."""
    return bind_metric(metric, lm.tokenizer, vocab_size=lm.vocab_size)


def reference_stats(
    hist: History,
    probes: ProbesInput,
    lm: LensModel,
    layers: list[int],
    batch_size: int,
    site: SiteKind = "resid_post",
) -> HistoryStats:
    """Base + aligned statistics (aligned second moments, kept activations) at ``layers``."""
    return collect(
        hist.restricted(),
        probes,
        model=lm,
        layers=layers,
        site=site,
        n_bootstrap=0,
        keep="reference",
        moments="reference",
        batch_size=batch_size,
        progress=False,
    )
