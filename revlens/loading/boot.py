"""A streamed boot: build the model empty, then stream the checkpoint in with a :class:`Swapper`.

``from_pretrained`` peaks well above the model's size when it converts dtypes (a bfloat16 model
from float32 files holds the mapped float32 file pages and the bfloat16 copies at once: ~3x).
:func:`empty_model` builds the checkpoint's model class from its config with weight init
disabled (``transformers.initialization.no_init_weights``: uninitialised memory, not yet
resident), ties it as ``from_pretrained`` does, and selects eager attention as TransformerLens
does; :meth:`Swapper.load` then fills it tensor by tensor (peak: the model plus one chunk).

Example:
    >>> model = empty_model("ckpt/aligned", dtype=torch.bfloat16)             # doctest: +SKIP
    >>> bridge = TransformerBridge.boot_transformers(  # doctest: +SKIP
    ...     "ckpt/aligned", hf_model=model, dtype=torch.bfloat16)
    >>> Swapper(bridge.original_model, bridge).load("ckpt/aligned", name="aligned")  # doctest: +SKIP
"""

import copy
import os
from pathlib import Path
from typing import Any, Union

import torch

from revlens._types import TokenizerInput
from revlens.errors import CheckpointError, UpstreamError

__all__ = ["bridge_tokenizer", "check_dtype_support", "empty_model", "read_tokenizer"]

# (model_type, dtypes) TransformerLens 4.3 cannot run, and what to do instead (docs/families.md)
_UPSTREAM_DTYPE_BUGS = {
    ("olmo", "olmo2", "olmo3"): (
        (torch.bfloat16, torch.float16),
        "TransformerLens 4.3's attention bridge multiplies float32 attention weights with {dtype} values "
        "for OLMo ('expected m1 and m2 to have the same dtype'); boot it with dtype=torch.float32, or "
        "monitor / block on the plain Hugging Face model (no bridge), which runs in {dtype}",
    ),
}


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
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=attn_implementation
        )
    model.tie_weights()  # post_init's tying runs inside the init that no_init_weights disables
    return model.eval()


def check_dtype_support(model_type: str | None, dtype: torch.dtype) -> None:
    """Raise :class:`UpstreamError` for a family TransformerLens cannot run in ``dtype``."""
    for types, (dtypes, why) in _UPSTREAM_DTYPE_BUGS.items():
        if model_type in types and dtype in dtypes:
            raise UpstreamError(f"{model_type} in {dtype}: " + why.format(dtype=dtype))


def bridge_tokenizer(tokenizer: TokenizerInput | None) -> Any:
    """A copy of ``tokenizer`` that TransformerLens' boot accepts.

    TransformerLens 4.3 rebuilds the tokenizer from ``init_kwargs["name_or_path"]`` to make it
    prepend BOS, which fails (``KeyError: 'name_or_path'``) for a tokenizer built in code and
    re-downloads one that was loaded. revlens tokenizes with the given tokenizer itself; the
    bridge only keeps a copy marked as already prepending BOS (so it is used as it is).
    """
    if tokenizer is None or getattr(tokenizer, "bos_token", None) is None:
        return tokenizer
    tok = copy.deepcopy(tokenizer)
    tok.init_kwargs = {
        **tok.init_kwargs,
        "name_or_path": getattr(tok, "name_or_path", "") or "",
        "add_bos_token": True,
    }
    return tok


def read_tokenizer(path: Path, tokenizer: TokenizerInput | None) -> Any:
    """``tokenizer`` itself, the tokenizer of a path given as ``tokenizer``, or the one in ``path``
    (``None`` if it has none).

    Raises:
        CheckpointError: tokenizer files that transformers cannot read.
    """
    if isinstance(tokenizer, (str, os.PathLike)):
        path, tokenizer = Path(tokenizer), None
    if tokenizer is None and any(
        (path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")
    ):
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"cannot read the tokenizer in {path}: {exc}") from None
    return tokenizer
