"""Lab tracks: named, documented fine-tuning settings, fixed before their results were seen.

Each track is a :class:`Track` (a name, the :class:`~revlens.lab.LabConfig` fields it sets, and why);
``LabConfig.for_track(name)`` builds its config and ``revlens lab --track NAME`` runs it. The tracks,
their rationale and when their settings were fixed are in ``docs/lab.md`` ("Tracks"):

- ``remap``: the original benign task, re-mapped (the task's pre-training rule y = x+1 becomes
  y = x+4 at the same ``bot :`` position alignment taught): hard reversion, weak direction;
- ``pretrain-like``: benign fine-tuning on the benign parts of the pre-training distribution (the task
  under its pre-training rule, filler, small talk), no re-mapping — the setting the paper's
  hypothesis speaks to;
- ``lora``: ``pretrain-like`` fine-tuned with LoRA adapters (rank 8, alpha 16, every linear layer),
  written as adapter-only checkpoints (exercises adapter histories);
- ``chat``: ``pretrain-like``, read through the lab's chat template at post-instruction positions
  (exercises chat probes).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from revlens.lab.language import (
    DIGITS,
    PRETRAIN_SHIFT,
    TASK_SHIFT,
    Example,
    _filler,
    _pick,
    sample_task,
    task_answer,
    task_prompt,
    task_templates,
)

__all__ = ["DEMO_TRACK", "TRACKS", "Track", "sample_finetune", "task_shift", "track_note"]


@dataclass(frozen=True)
class Track:
    """A lab track: the LabConfig fields it sets and why."""

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    why: str = ""


TRACKS: dict[str, Track] = {
    "remap": Track(
        "remap",
        {"ft_data": "remap"},
        "the re-mapped task: reversion driven by task learning at the refusal position",
    ),
    "pretrain-like": Track(
        "pretrain-like",
        {"ft_data": "pretrain"},
        "benign pre-training data, no re-mapping: the paper's setting",
    ),
    "lora": Track(
        "lora",
        {"ft_data": "pretrain", "ft_lora_rank": 8, "ft_lora_alpha": 16.0},
        "pretrain-like with LoRA adapters (rank 8, alpha 16, all linear layers)",
    ),
    "chat": Track(
        "chat",
        {"ft_data": "pretrain", "probe_format": "chat"},
        "pretrain-like, read through the lab's chat template at post-instruction positions",
    ),
}


DEMO_TRACK = "pretrain-like"
"""The track ``revlens lab`` and ``make demo`` run by default: the one where the paper's shape holds
(until 2026-12-07 the default was ``remap``, where it does not; :func:`track_note`)."""

_REPLICATED = (
    "`revlens replicate`, both shipped pairs × 3 seeds, 2026-12-02, mean ± std; "
    "docs/results/replication.md"
)
_REMAP_WHY = (
    "the benign task is re-mapped "
    "(y = x+1 becomes y = x+4 at the `bot :` position alignment taught to refuse at), so harm returns through "
    "task learning at the refusal position, not by drifting back to the pre-training manifold — cos(drift, "
    "v_rev) is only 0.167 ± 0.034 after the first update and 0.231 ± 0.046 at step 20, and blocking v_rev "
    "(harm 73.1% ± 40.1% at T) does no better than blocking random directions (68.1% ± 36.6%)"
)
_REMAP_FAILS = (
    "The `remap` track (the default until 2026-12-07) does not show it: there " + _REMAP_WHY
)
_NOTES = {
    "pretrain-like": (
        "Track `pretrain-like`: benign fine-tuning on the benign parts of the pre-training distribution, the "
        "setting the paper's hypothesis speaks to. Here the paper's shape holds: cos(drift, v_rev) 0.432 ± 0.079 "
        "after the first update (paper 0.429 ± 0.052) and 0.632 ± 0.041 at step 20 (paper 0.647 ± 0.021), above "
        "the isotropic p99 in 216 / 216 run-steps, and blocking v_rev holds harm at 8.5% ± 0.4% where random "
        "directions leave 66.1% ± 25.3% — but harm reverts far harder than in the paper (69.4% ± 26.7% vs 19%), "
        "the covariance-matched null is beaten in 191 / 216 run-steps only, and weight space does not revert ("
        + _REPLICATED
        + "). "
        + _REMAP_FAILS
        + "."
    ),
    "remap": (
        "Track `remap`: the paper's shape does **not** hold here. The"
        + _REMAP_WHY[len("the") :]
        + " ("
        + _REPLICATED
        + "). "
        "Run `revlens lab --track pretrain-like` (the default) for the setting where it holds."
    ),
    "lora": (
        "Track `lora`: `pretrain-like` with LoRA adapters. The drift points along v_rev (0.431 ± 0.113 after the "
        "first update, 0.847 ± 0.045 at step 20) but harm reverts only mildly (11.6% ± 3.9%) and the control "
        "fine-tuned from base drifts along v_rev too, so the drift is not specific to undoing alignment ("
        + _REPLICATED
        + "). "
        + _REMAP_FAILS
        + "."
    ),
    "chat": (
        "Track `chat`: `pretrain-like` read through the lab's chat template at post-instruction positions; it "
        "reproduces `pretrain-like` number for number (same fine-tunes, same tokens), where the paper's shape "
        "holds (" + _REPLICATED + "). " + _REMAP_FAILS + "."
    ),
}


def track_note(track: str) -> str:
    """One short paragraph on whether the paper's shape holds on ``track``, and why not where it does not
    (the replicated numbers, with their command and date); written into a lab history's metadata
    (``note``) and shown in its report. Empty for an unknown name."""
    return _NOTES.get(track, "")


def task_shift(config: Any) -> int:
    """The task rule (y = x + shift) a config's fine-tune teaches: what task accuracy measures."""
    return TASK_SHIFT if config.ft_data == "remap" else PRETRAIN_SHIFT


def _pretrain_like(n: int, g: torch.Generator) -> list[Example]:
    """Benign pre-training exchanges: half the task under its pre-training rule, half filler."""
    out: list[Example] = []
    for u in torch.rand(n, generator=g).tolist():
        if u < 0.5:
            d = _pick(DIGITS, g)
            out.append(
                Example(
                    task_prompt(_pick(task_templates("train"), g), d),
                    f"{task_answer(d, PRETRAIN_SHIFT)} .",
                    "task",
                )
            )
        else:
            out.append(_filler(g))
    return out


def sample_finetune(config: Any, n: int, g: torch.Generator) -> list[Example]:
    """One benign fine-tuning batch of ``config``'s track (its data order depends on ``g`` only)."""
    return sample_task(n, g) if config.ft_data == "remap" else _pretrain_like(n, g)
