"""A streamed boot: build the model empty, then stream the checkpoint in with a :class:`Swapper`.

``from_pretrained`` peaks well above the model's size when it converts dtypes (a bfloat16 model
from float32 files holds the mapped float32 file pages and the bfloat16 copies at once: ~3x).
:func:`empty_model` builds the checkpoint's model class from its config with weight init
disabled (``transformers.initialization.no_init_weights``: uninitialised memory, not yet
resident), ties it as ``from_pretrained`` does, and selects eager attention as TransformerLens
does; :meth:`Swapper.load` then fills it tensor by tensor (peak: the model plus one chunk).

Example:
    >>> model = empty_model("ckpt/aligned", dtype=torch.bfloat16)             # doctest: +SKIP
    >>> bridge = TransformerBridge.boot_transformers("ckpt/aligned", hf_model=model, dtype=torch.bfloat16)  # doctest: +SKIP
    >>> Swapper(bridge.original_model, bridge).load("ckpt/aligned", name="aligned")  # doctest: +SKIP
"""

import os
from pathlib import Path
from typing import Any, Union

import torch

from revlens.errors import CheckpointError

__all__ = ["empty_model"]

PathLike = Union[str, "os.PathLike[str]"]


def empty_model(
    path: PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    attn_implementation: str = "eager",
) -> Any:
    """The checkpoint's causal-LM class built from its ``config.json`` with **uninitialised** weights.

    Every parameter must then be loaded (``Swapper.load(path)``, strict by default); buffers a
    model computes in ``__init__`` (rotary frequencies, masks) are computed as usual.

    Raises:
        CheckpointError: no ``config.json`` in ``path``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"cannot build a model for {path}: no config.json")
    config = AutoConfig.from_pretrained(str(path))
    with no_init_weights(), torch.device(device or "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    model.tie_weights()  # post_init's tying runs inside the init that no_init_weights disables
    return model.eval()
