"""What an ablation study will do before it does it: the default subset, forward count, ETA.

The full sweep (every step of every run × every layer × v_rev and its controls × each kind) is
what the question needs only in the end; its defaults answer the question first:

- ``steps="auto"``: per run, ``auto_steps`` log-spaced steps including the first and the **last**
  (1, 10, 100 on the lab) — the conclusion is read at the last step, the others show the trend;
- ``layers="auto"``: the ``auto_layers`` layers that moved furthest along ``v_rev`` by the last
  step (mean over the studied runs of the projection ``(μ_l(θ_T) − μ_l(start))·v_l``, measured on
  the same probes; one forward pass over the probes per run): clamping removes exactly that
  motion, so that is where it can mediate most;
- ``kinds=("clamp",)``: the mediation DESIGN §2 defines; ``patch`` (per-prompt sources) on request;
- ``"all"`` for either gives the full sweep (``revlens ablate --steps all --layers all``).

:class:`AblationPlan` counts the forward passes (the batched sweep's chunks, ``max_rows`` rows
each) and prices them with two timed forwards (a fixed cost per forward plus a cost per row; a
row through ``l`` of ``L`` blocks costs about ``(L − l + 1) / (L + 1)`` of a clean row), so the
study prints the planned forwards and an ETA before it starts.
"""

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from revlens.causal.kinds import of_test
from revlens.errors import HistoryError
from revlens.history import Checkpoint, History
from revlens.sites import SiteAccess

__all__ = ["AblationPlan", "auto_layers", "log_spaced_steps"]


def log_spaced_steps(steps: Sequence[int], k: int) -> list[int]:
    """``k`` steps of ``steps`` spread evenly in log-step, always with the first and the last."""
    steps = sorted(int(s) for s in steps)
    if k >= len(steps):
        return steps
    if k <= 1:
        return [steps[-1]]
    lo, hi = math.log(max(steps[0], 1)), math.log(max(steps[-1], 1))
    out = {steps[0], steps[-1]}
    for i in range(1, k - 1):
        target = lo + (hi - lo) * i / (k - 1)
        out.add(min(steps, key=lambda s: (abs(math.log(max(s, 1)) - target), s)))
    return sorted(out)


def auto_steps(hist: History, runs: Sequence[str] | None, k: int) -> dict[str, list[int]]:
    """The log-spaced steps per studied run (``runs`` ``None``: every ordinary run)."""
    missing = [r for r in runs or () if r not in hist.runs]
    if missing:
        raise HistoryError(f"run(s) {missing} are not in the history; runs: {list(hist.runs)}")
    chosen = (
        [hist.runs[r] for r in runs] if runs else [r for r in hist.runs.values() if r.kind == "run"]
    )
    return {r.name: log_spaced_steps(list(r.steps), k) for r in chosen}


def auto_layers(scores: dict[int, float], k: int) -> list[int]:
    """The ``k`` layers of highest score (ties: the lower layer), in layer order."""
    ranked = sorted(scores, key=lambda layer: (-scores[layer], layer))
    return sorted(ranked[:k])


def drift_scores(
    last_means: Sequence[Tensor], start_mean: Tensor, vectors: Tensor, layers: Sequence[int]
) -> dict[int, float]:
    """Mean over runs of the drift's projection ``(μ_T − μ_start)·v`` per layer (``[layer, d]``
    tensors): how far each layer moved along v_rev by the last step, in activation units."""
    v = vectors.to(torch.float64)
    proj = [
        ((mu.to(torch.float64) - start_mean.to(torch.float64)) * v).sum(-1) for mu in last_means
    ]
    mean = torch.stack(proj).mean(0)
    return {int(layer): float(mean[i]) for i, layer in enumerate(layers)}


@dataclass
class AblationPlan:
    """The forward passes an ablation study will run, and what they should take.

    Attributes:
        checkpoints: the fine-tuning checkpoints intervened on.
        layers: the studied layers; ``n_layers`` the model's block count.
        kinds: the intervention kinds (necessity tests run on every checkpoint, sufficiency tests
            such as ``steer`` on the aligned model once per alpha: :mod:`revlens.causal.kinds`).
        n_directions: v_rev plus controls per layer.
        batch_sizes: the probe batches' sizes.
        max_rows: rows per forward.
        choices: how steps and layers were chosen (for the printout and the report config).
        full_checkpoints, full_layers: what ``--steps all --layers all`` would intervene on.
        seconds_per_row: one clean probe row through the whole model (timed), or ``None``;
        seconds_per_forward: the fixed cost of a forward pass (timed).
    """

    checkpoints: list[Checkpoint]
    layers: list[int]
    n_layers: int
    kinds: tuple[str, ...]
    n_directions: int
    batch_sizes: list[int]
    max_rows: int
    n_alphas: int = 0
    choices: dict[str, Any] = field(default_factory=dict)
    full_checkpoints: int = 0
    full_layers: int = 0
    seconds_per_row: float | None = None
    seconds_per_forward: float = 0.0

    def _per_batch(self, b: int, units: int, layers: Sequence[int]) -> tuple[int, float]:
        """(forwards, cost in clean-row units) of one batch with ``units`` intervened copies."""
        if units == 0:
            return 1, float(b)
        per_forward = max(1, self.max_rows // b - 1)
        forwards = math.ceil(units / per_forward)
        frac = sum(
            (self.n_layers - min(layer, self.n_layers) + 1) / (self.n_layers + 1)
            for layer in layers
        )
        return forwards, b * (forwards + units * frac / max(len(layers), 1))

    def _pass(self, kinds: Sequence[str]) -> tuple[int, float]:
        units = len(self.layers) * len(kinds) * self.n_directions
        total_f, total_c = 0, 0.0
        for b in self.batch_sizes:
            f, c = self._per_batch(b, units, self.layers)
            total_f, total_c = total_f + f, total_c + c
        return total_f, total_c

    def _split(self) -> tuple[list[str], list[str]]:
        """(kinds run on every checkpoint, kinds run on the aligned model once per alpha)."""
        aligned = of_test(self.kinds, "sufficiency")
        return of_test(self.kinds, "necessity"), [k for k in aligned for _ in range(self.n_alphas)]

    @property
    def n_forwards(self) -> int:
        """Forward passes in all (the aligned pass and every checkpoint's)."""
        run_kinds, aligned_kinds = self._split()
        per_ckpt, _ = self._pass(run_kinds)
        aligned, _ = self._pass(aligned_kinds)
        return per_ckpt * len(self.checkpoints) + aligned + len(self.batch_sizes)

    @property
    def n_interventions(self) -> int:
        """Intervened forward rows (prompt × layer × direction × kind × checkpoint)."""
        run_kinds, aligned_kinds = self._split()
        n = sum(self.batch_sizes)
        return (
            n
            * len(self.layers)
            * self.n_directions
            * (len(run_kinds) * len(self.checkpoints) + len(aligned_kinds))
        )

    def cost_rows(self) -> float:
        run_kinds, aligned_kinds = self._split()
        _, per_ckpt = self._pass(run_kinds)
        _, aligned = self._pass(aligned_kinds)
        return per_ckpt * len(self.checkpoints) + aligned + 2 * sum(self.batch_sizes)

    @property
    def eta_s(self) -> float | None:
        """Estimated seconds of the sweep (from one timed forward; ``None`` if not timed)."""
        if self.seconds_per_row is None:
            return None
        return self.seconds_per_row * self.cost_rows() + self.seconds_per_forward * self.n_forwards

    def time_forward(self, acc: SiteAccess, tokens: Tensor) -> None:
        """Price a forward: two timed forwards of ``tokens`` at two batch widths (after a warm-up)
        give the fixed cost per forward and the cost per row (a small batch alone overstates
        the rows of a sweep's wide forwards by the per-call overhead)."""
        b = int(tokens.shape[0])
        wide = tokens.repeat(max(2, min(8, self.max_rows // max(b, 1))), 1)
        times = []
        with torch.no_grad():
            acc.forward(tokens)
            for x in (tokens, wide):
                t0 = time.perf_counter()
                acc.forward(x)
                times.append(time.perf_counter() - t0)
        per_row = max((times[1] - times[0]) / max(int(wide.shape[0]) - b, 1), 1e-9)
        self.seconds_per_row = per_row
        self.seconds_per_forward = max(times[0] - per_row * b, 0.0)

    def describe(self) -> str:
        """The plan in a few lines (printed before the study starts)."""
        runs = sorted({str(c.run) for c in self.checkpoints})
        steps = sorted({int(c.step) for c in self.checkpoints})
        lines = [
            f"ablation plan: {len(self.checkpoints)} checkpoint(s) (runs {', '.join(runs) or '-'}; steps "
            f"{_short(steps)}) × layers {self.layers} × {self.n_directions} directions (v_rev + controls) × "
            f"{', '.join(self.kinds)} on {sum(self.batch_sizes)} prompts",
            f"  planned: {self.n_forwards} forward passes, {self.n_interventions:,} intervened prompt rows"
            + (f", ETA ~{_duration(self.eta_s)}" if self.eta_s is not None else ""),
        ]
        for what, how in self.choices.items():
            lines.append(f"  {what}: {how}")
        if self.full_checkpoints and (
            self.full_checkpoints > len(self.checkpoints) or self.full_layers > len(self.layers)
        ):
            lines.append(
                f"  the full sweep (--steps all --layers all) would be {self.full_checkpoints} checkpoints × "
                f"{self.full_layers} layers"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_forwards": self.n_forwards,
            "n_interventions": self.n_interventions,
            "eta_s": self.eta_s,
            "choices": dict(self.choices),
        }


def _short(steps: list[int]) -> str:
    return (
        str(steps)
        if len(steps) <= 8
        else f"[{steps[0]}, {steps[1]}, ..., {steps[-1]}] ({len(steps)})"
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
