"""``LabConfig``: every knob of the lab, with defaults that meet the documented targets."""

import dataclasses
from dataclasses import dataclass
from typing import Any

from revlens.errors import ConfigError

__all__ = ["LabConfig", "default_checkpoint_steps"]


def default_checkpoint_steps(steps: int) -> tuple[int, ...]:
    """Steps 1-20, then every 5 up to ``steps`` (always including ``steps``)."""
    out = sorted({*range(1, min(20, steps) + 1), *range(25, steps + 1, 5), steps})
    return tuple(out)


@dataclass
class LabConfig:
    """Model, pre-training, alignment and benign fine-tuning settings of the lab."""

    # model
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    n_ctx: int = 24
    # pre-training
    pretrain_steps: int = 500
    pretrain_batch: int = 64
    pretrain_lr: float = 2e-3
    pretrain_weight_decay: float = 0.01
    harmful_share: float = 0.45
    task_share: float = 0.3
    topic_alpha: float = 1.0
    harm_max: float = 0.97  # P(harmful answer | request) in pre-training, most frequent topic
    harm_min: float = 0.6  # ... rarest topic (otherwise the request is refused)
    # alignment (AdamW, answer-only loss, stops once held-out harm <= align_target)
    align_lr: float = 3e-4
    align_batch: int = 64
    align_max_steps: int = 60
    align_target: float = 0.05
    refusal_share: float = 0.6
    # benign fine-tuning
    ft_optimizer: str = "adamw"  # "adamw" or "sgd" (with ft_momentum); validated in __post_init__
    ft_lr: float = 1e-3
    ft_momentum: float = 0.9
    ft_batch: int = 32
    ft_steps: int = 100
    checkpoint_steps: tuple[int, ...] | None = None  # None: default_checkpoint_steps(ft_steps)
    ft_seeds: tuple[int, ...] = (0, 1, 2)
    pretrain_seeds: tuple[int, ...] = (0,)
    control: bool = True
    # lab track (docs/lab.md "Tracks"): what the benign fine-tune trains on and how
    track: str = (
        "remap"  # a name from revlens.lab.tracks.TRACKS (recorded; presets set the fields below)
    )
    ft_data: str = (
        "remap"  # "remap": the task re-mapped (y = x+4); "pretrain": benign pre-training data
    )
    ft_lora_rank: int = 0  # 0: full fine-tuning; r > 0: LoRA adapters of rank r (peft)
    ft_lora_alpha: float = 16.0
    probe_format: str = (
        "plain"  # "plain" prompts or "chat": the lab's chat template, post-instruction positions
    )

    def __post_init__(self) -> None:
        self.ft_seeds = tuple(int(s) for s in self.ft_seeds)
        self.pretrain_seeds = tuple(int(s) for s in self.pretrain_seeds)
        if self.checkpoint_steps is not None:
            self.checkpoint_steps = tuple(int(s) for s in self.checkpoint_steps)
        self.validate()

    def validate(self) -> None:
        for name in (
            "n_layer",
            "d_model",
            "n_head",
            "n_ctx",
            "pretrain_steps",
            "pretrain_batch",
            "align_batch",
            "align_max_steps",
            "ft_batch",
            "ft_steps",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"LabConfig.{name} must be a positive integer, got {value!r}")
        for name in ("pretrain_lr", "align_lr", "ft_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"LabConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.ft_data not in ("remap", "pretrain"):
            raise ConfigError(
                f"LabConfig.ft_data must be 'remap' or 'pretrain', got {self.ft_data!r}"
            )
        if self.probe_format not in ("plain", "chat"):
            raise ConfigError(
                f"LabConfig.probe_format must be 'plain' or 'chat', got {self.probe_format!r}"
            )
        if (
            isinstance(self.ft_lora_rank, bool)
            or not isinstance(self.ft_lora_rank, int)
            or self.ft_lora_rank < 0
        ):
            raise ConfigError(
                f"LabConfig.ft_lora_rank must be an integer >= 0, got {self.ft_lora_rank!r}"
            )
        if not self.ft_lora_alpha > 0:
            raise ConfigError(f"LabConfig.ft_lora_alpha must be > 0, got {self.ft_lora_alpha!r}")
        if self.ft_optimizer not in ("sgd", "adamw"):
            raise ConfigError(
                f"LabConfig.ft_optimizer must be 'sgd' or 'adamw', got {self.ft_optimizer!r}"
            )
        if self.d_model % self.n_head:
            raise ConfigError(
                f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})"
            )
        if self.n_ctx < 24:
            raise ConfigError(
                f"n_ctx must be >= 24 (the language's longest exchange), got {self.n_ctx}"
            )
        if not self.ft_seeds:
            raise ConfigError("LabConfig.ft_seeds must name at least one seed")
        if not self.pretrain_seeds:
            raise ConfigError("LabConfig.pretrain_seeds must name at least one seed")
        if len(set(self.ft_seeds)) != len(self.ft_seeds) or any(s < 0 for s in self.ft_seeds):
            raise ConfigError(f"ft_seeds must be distinct non-negative ints, got {self.ft_seeds}")
        if len(set(self.pretrain_seeds)) != len(self.pretrain_seeds) or any(
            s < 0 for s in self.pretrain_seeds
        ):
            raise ConfigError(
                f"pretrain_seeds must be distinct non-negative ints, got {self.pretrain_seeds}"
            )
        if self.checkpoint_steps is not None:
            bad = [s for s in self.checkpoint_steps if not 1 <= s <= self.ft_steps]
            if bad or not self.checkpoint_steps:
                raise ConfigError(
                    f"checkpoint_steps must be non-empty, within 1..ft_steps={self.ft_steps}; "
                    f"got {self.checkpoint_steps}"
                )

    @property
    def steps_to_save(self) -> tuple[int, ...]:
        if self.checkpoint_steps is None:
            return default_checkpoint_steps(self.ft_steps)
        return tuple(sorted(set(self.checkpoint_steps)))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown LabConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def replace(self, **changes: Any) -> "LabConfig":
        """A validated copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def for_track(cls, track: str, **changes: Any) -> "LabConfig":
        """The preset of a lab track (:data:`revlens.lab.tracks.TRACKS`), with ``changes`` on top."""
        from revlens.lab.tracks import TRACKS

        if track not in TRACKS:
            raise ConfigError(f"unknown lab track {track!r}; tracks: {', '.join(TRACKS)}")
        return cls(**{**TRACKS[track].settings, "track": track, **changes})
