"""What the weights of an architecture are: one :class:`Param` per learned tensor, oriented.

The architecture is built on the ``meta`` device from its ``config.json`` (no memory, no init),
so the Hugging Face parameter names, tie groups and module classes are those of
``from_pretrained``. Checkpoint keys are mapped onto those names by :mod:`revlens.loading`
(transformers' own renaming rules), so checkpoints saved in different ways compare name by name.

**Orientation.** Every 2-d weight is read as a map ``W ∈ R^{out × in}`` (what ``nn.Linear``
stores): GPT-2's ``Conv1D`` stores ``[in, out]`` and ``nn.Embedding`` ``[vocab, d]`` (a map from
one-hot tokens to ``d``), so both are transposed. The *left* singular subspace of ``V`` is then
always on the output side, the *right* one on the input side, and a LoRA delta of any of these
layers is ``B · A · scale`` with ``B`` on the left (PEFT's ``lora_B`` / ``lora_embedding_B``).

**Layers.** ``layer`` is the block index (the first integer in the parameter's name, e.g.
``transformer.h.3.attn.c_attn.weight`` → 3, ``model.layers.3.mlp.up_proj.weight`` → 3);
parameters outside the blocks (embeddings, final norm, an untied head) have layer ``-1``.
``module_type`` is the name inside the block (``attn.c_attn.weight``), or the full name outside.
"""

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from revlens._types import PathLike
from revlens.errors import CheckpointError
from revlens.loading import Targets
from revlens.model import HasToDict

__all__ = ["Catalog", "Param", "build_catalog", "meta_model", "module_group"]

_LAYER = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class Param:
    """One learned tensor of the architecture.

    Attributes:
        name: the Hugging Face parameter name (the tie group's leader for tied weights).
        layer: block index, ``-1`` outside the blocks.
        module_type: the name within its block (or the full name outside the blocks).
        group: ``attn``, ``mlp``, ``norm``, ``embed`` or ``other``.
        module_class: the class of the module holding it (``Linear``, ``Conv1D``...).
        transpose: whether the stored tensor is ``[in, out]`` (it is transposed when read).
        shape: the oriented shape ``(out, in)``, or ``(n,)`` for a vector.
    """

    name: str
    layer: int
    module_type: str
    group: str
    module_class: str
    transpose: bool
    shape: tuple[int, ...]

    @property
    def is_matrix(self) -> bool:
        """A 2-d weight with both sides >= 2 (it has singular subspaces to measure)."""
        return len(self.shape) == 2 and min(self.shape) >= 2

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def orient(self, t: torch.Tensor) -> torch.Tensor:
        """The stored tensor as this parameter's oriented matrix (or vector)."""
        return t.T if self.transpose else t


def module_group(module_type: str, module_class: str) -> str:
    """A coarse group for a parameter: ``norm``, ``embed``, ``attn``, ``mlp`` or ``other``."""
    cls, name = module_class.lower(), module_type.lower()
    if "norm" in cls:
        return "norm"
    if "embedding" in cls:
        return "embed"
    if any(
        w in name
        for w in ("attn", "attention", "q_proj", "k_proj", "v_proj", "o_proj", "query_key_value")
    ):
        return "attn"
    if any(
        w in name
        for w in (
            "mlp",
            "ffn",
            "feed_forward",
            "experts",
            "fc",
            "gate_proj",
            "up_proj",
            "down_proj",
        )
    ):
        return "mlp"
    return "other"


def meta_model(architecture: PathLike | HasToDict) -> torch.nn.Module:
    """The causal-LM class of ``architecture`` (a dir with ``config.json``, or a config) on the
    ``meta`` device, tied as ``from_pretrained`` ties it."""
    from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

    if isinstance(architecture, PretrainedConfig):
        config = architecture
    else:
        path = Path(architecture)
        if not (path / "config.json").is_file():
            raise CheckpointError(f"cannot read the architecture of {path}: no config.json")
        config = AutoConfig.from_pretrained(str(path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()
    return model.eval()


def _transposed(module: torch.nn.Module) -> bool:
    name = type(module).__name__
    return name == "Conv1D" or isinstance(module, torch.nn.Embedding)


@dataclass
class Catalog:
    """The architecture's parameters, by Hugging Face name, plus what loading needs.

    Attributes:
        params: leader name -> :class:`Param`, in model order.
        model: the ``meta`` model (its class selects transformers' key mapping).
        targets: :class:`revlens.loading.Targets` of the meta model.
    """

    params: dict[str, Param]
    model: torch.nn.Module
    targets: Targets

    def leader(self, name: str) -> str:
        """The tie-group leader of a parameter name."""
        return self.targets.leader.get(name, name)

    def select(self, pattern: str, layers: Literal["all"] | Collection[int]) -> list[Param]:
        """Parameters whose name matches ``pattern`` (``re.search``) and whose layer is in
        ``layers`` (``"all"`` or indices; ``-1`` selects the non-block parameters)."""
        rx = re.compile(pattern)
        return [
            p
            for p in self.params.values()
            if rx.search(p.name) and (layers == "all" or p.layer in layers)
        ]


def build_catalog(architecture: PathLike | HasToDict) -> Catalog:
    """The :class:`Catalog` of an architecture (a ``save_pretrained`` dir or a config)."""
    from revlens.loading import Targets

    model = meta_model(architecture)
    targets = Targets.from_model(model)
    params: dict[str, Param] = {}
    for name in targets.required():
        t = targets.params[name]
        if not t.is_floating_point():
            continue
        module = targets.modules.get(name.rsplit(".", 1)[0]) if "." in name else model
        cls = type(module).__name__ if module is not None else "?"
        transpose = t.ndim == 2 and module is not None and _transposed(module)
        shape = tuple(t.shape[::-1]) if transpose else tuple(t.shape)
        m = _LAYER.search(f".{name}")
        layer = int(m.group(1)) if m else -1
        module_type = f".{name}"[m.end() :] if m else name
        params[name] = Param(
            name, layer, module_type, module_group(module_type, cls), cls, transpose, shape
        )
    return Catalog(params, model, targets)
