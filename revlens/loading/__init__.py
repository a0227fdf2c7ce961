"""Checkpoint loading into one booted model: full checkpoints and LoRA adapters, swapped in place.

The principle: loading goes through what Hugging Face loading already knows. Checkpoint keys are
mapped with transformers' own conversion rules for the model class (renames, prefix handling,
per-expert -> fused MoE converters); tensors are streamed one at a time; the bridge's derived
copies of fused weights are re-derived with TransformerLens' own split functions.

Main entry point: :class:`Swapper`.

Example:
    >>> from revlens.loading import Ref, Swapper                      # doctest: +SKIP
    >>> sw = Swapper(bridge.original_model, bridge, boot=Ref("ckpt/base", name="base"))  # doctest: +SKIP
    >>> sw.load("ckpt/aligned", name="aligned")  # doctest: +SKIP
    Loaded('aligned', kind='full')
    >>> sw.load("ckpt/run0/checkpoint-10", name="run0/10", start=Ref("ckpt/aligned", name="aligned"))  # doctest: +SKIP
    Loaded('run0/10', kind='adapter', start='aligned')
"""

from revlens.loading.adapt import apply_adapter
from revlens.loading.boot import bridge_tokenizer, check_dtype_support, empty_model, read_tokenizer
from revlens.loading.classify import CheckpointInfo, classify
from revlens.loading.gguf import GGUFFile, gguf_dir
from revlens.loading.lora import Adapter, AdapterConfig, lora_delta, read_adapter
from revlens.loading.packages import MODEL_PACKAGES, model_package_dir
from revlens.loading.plan import Plan, make_plan
from revlens.loading.sources import TensorInfo, TensorSource, open_source, weight_files
from revlens.loading.swapper import Loaded, Ref, Swapper
from revlens.loading.targets import Targets, hf_parameters, refresh_bridge, stale_copies

__all__ = [
    "MODEL_PACKAGES",
    "Adapter",
    "AdapterConfig",
    "CheckpointInfo",
    "GGUFFile",
    "Loaded",
    "Plan",
    "Ref",
    "Swapper",
    "Targets",
    "TensorInfo",
    "TensorSource",
    "apply_adapter",
    "bridge_tokenizer",
    "check_dtype_support",
    "classify",
    "empty_model",
    "gguf_dir",
    "hf_parameters",
    "lora_delta",
    "make_plan",
    "model_package_dir",
    "open_source",
    "read_adapter",
    "read_tokenizer",
    "refresh_bridge",
    "stale_copies",
    "weight_files",
]
