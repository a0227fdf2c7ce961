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

__all__ = ["TRACKS", "Track", "sample_finetune", "task_shift"]


@dataclass(frozen=True)
class Track:
    """A lab track: the LabConfig fields it sets and why."""

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    why: str = ""


TRACKS: dict[str, Track] = {
    "remap": Track("remap", {"ft_data": "remap"},
                   "the re-mapped task: reversion driven by task learning at the refusal position"),
    "pretrain-like": Track("pretrain-like", {"ft_data": "pretrain"},
                           "benign pre-training data, no re-mapping: the paper's setting"),
    "lora": Track("lora", {"ft_data": "pretrain", "ft_lora_rank": 8, "ft_lora_alpha": 16.0},
                  "pretrain-like with LoRA adapters (rank 8, alpha 16, all linear layers)"),
    "chat": Track("chat", {"ft_data": "pretrain", "probe_format": "chat"},
                  "pretrain-like, read through the lab's chat template at post-instruction positions"),
}


def task_shift(config: Any) -> int:
    """The task rule (y = x + shift) a config's fine-tune teaches: what task accuracy measures."""
    return TASK_SHIFT if config.ft_data == "remap" else PRETRAIN_SHIFT


def _pretrain_like(n: int, g: torch.Generator) -> list[Example]:
    """Benign pre-training exchanges: half the task under its pre-training rule, half filler."""
    out: list[Example] = []
    for u in torch.rand(n, generator=g).tolist():
        if u < 0.5:
            d = _pick(DIGITS, g)
            out.append(Example(task_prompt(_pick(task_templates("train"), g), d),
                               f"{task_answer(d, PRETRAIN_SHIFT)} .", "task"))
        else:
            out.append(_filler(g))
    return out


def sample_finetune(config: Any, n: int, g: torch.Generator) -> list[Example]:
    """One benign fine-tuning batch of ``config``'s track (its data order depends on ``g`` only)."""
    return sample_task(n, g) if config.ft_data == "remap" else _pretrain_like(n, g)
