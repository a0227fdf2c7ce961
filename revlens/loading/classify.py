"""What a checkpoint path is: full weights, a PEFT adapter, or a Trainer run of ``checkpoint-N``s.

Rule for a folder holding **both** full weights and adapter files (e.g. a merged model saved
next to its adapter): ``kind="auto"`` reads the **full weights** (complete, needing no start
model) and records ``also=("adapter",)``; pass ``kind="adapter"`` to read the adapter instead.
"""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, no_type_check

import torch

from revlens._types import WeightsSource
from revlens.errors import CheckpointError, ConfigError
from revlens.loading.lora import adapter_files, read_adapter_config
from revlens.loading.sources import weight_files

__all__ = ["CheckpointInfo", "Kind", "classify"]

Kind = Literal["full", "adapter", "trainer_run"]
_TRAINER = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class CheckpointInfo:
    """The classification of one checkpoint source.

    Attributes:
        kind: ``"full"`` (a complete state dict: dir, file or in-memory mapping), ``"adapter"``
            (PEFT LoRA: needs a start model) or ``"trainer_run"`` (a dir of ``checkpoint-N``
            folders: not loadable itself, see ``steps``).
        path: the path (``None`` for in-memory sources).
        files: the weight files that would be read.
        start_hint: an adapter's recorded start model (``base_model_name_or_path``), if any.
        also: other kinds the same folder holds but that were not chosen (e.g. ``("adapter",)``).
        steps: for a Trainer run, step -> ``checkpoint-N`` dir.
    """

    kind: Kind
    path: Path | None
    files: tuple[Path, ...] = ()
    start_hint: str | None = None
    also: tuple[str, ...] = ()
    steps: dict[int, Path] = field(default_factory=dict)


def _trainer_steps(path: Path) -> dict[int, Path]:
    found = {
        int(m.group(1)): c for c in path.iterdir() if c.is_dir() and (m := _TRAINER.match(c.name))
    }
    return dict(sorted(found.items()))


def _start_hint(path: Path) -> str | None:
    return read_adapter_config(path / "adapter_config.json").get("base_model_name_or_path")


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def classify(source: WeightsSource, kind: str = "auto") -> CheckpointInfo:
    """Classify a checkpoint source: a path, a mapping of tensors or a module.

    Args:
        source: a ``save_pretrained`` / adapter / Trainer dir, a weights file, a state dict, a module.
        kind: ``"auto"``, or force ``"full"`` / ``"adapter"`` for a folder that holds both.

    Raises:
        CheckpointError: the path is missing or holds neither weights nor an adapter (or not the
            forced kind).
        ConfigError: an unknown ``kind``.
    """
    if kind not in ("auto", "full", "adapter"):
        raise ConfigError(f"kind must be 'auto', 'full' or 'adapter', not {kind!r}")
    if isinstance(source, (Mapping, torch.nn.Module)):
        if kind == "adapter":
            raise CheckpointError(
                "an in-memory state dict is always a full checkpoint (kind='adapter' given)"
            )
        return CheckpointInfo("full", None)
    if not isinstance(source, (str, os.PathLike)):
        raise CheckpointError(f"cannot classify a {type(source).__name__} as a checkpoint")
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if path.is_file():
        if kind == "adapter":
            raise CheckpointError(
                f"{path} is a weights file; an adapter is a dir with adapter_config.json"
            )
        return CheckpointInfo("full", path, (path,))
    full = tuple(weight_files(path))
    adapter = tuple(adapter_files(path)) if (path / "adapter_config.json").is_file() else ()
    if kind == "adapter" or (kind == "auto" and adapter and not full):
        if not adapter:
            raise CheckpointError(
                f"{path} holds no PEFT adapter (adapter_config.json + adapter_model.safetensors)"
            )
        return CheckpointInfo(
            "adapter", path, adapter, _start_hint(path), ("full",) if full else ()
        )
    if full:
        return CheckpointInfo("full", path, full, None, ("adapter",) if adapter else ())
    if kind == "auto" and (steps := _trainer_steps(path)):
        return CheckpointInfo("trainer_run", path, steps=steps)
    raise CheckpointError(
        f"{path} holds no weights: expected model.safetensors, a sharded index, pytorch_model.bin, "
        "a PEFT adapter (adapter_config.json + adapter_model.safetensors) or checkpoint-N folders"
    )
