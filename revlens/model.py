"""One booted TransformerLens model, with checkpoint weights swapped in.

TransformerLens 4 wraps a Hugging Face model in a ``TransformerBridge``; the wrapped module tree
renames parameters (``..._original_component...``) and exposes some as views (GPT-2's q/k/v
are views of ``c_attn``). :class:`LensModel` maps a plain Hugging Face state dict onto that tree
and copies weights **in place**, so a history is analysed with one boot, not one per checkpoint.

Example:
    >>> lm = LensModel.boot("out/lab/aligned")                   # doctest: +SKIP
    >>> lm.load_weights(load_state_dict("out/lab/runs/seed0/step-5"), name="seed0/step-5")  # doctest: +SKIP
"""

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor

from revlens.errors import CheckpointError, NonFiniteError, ShapeMismatchError

__all__ = ["WEIGHT_SUFFIXES", "LensModel", "config_fingerprint", "find_weight_files", "load_state_dict"]

PathLike = Union[str, "os.PathLike[str]"]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# config keys that record how a file was written, not what the model computes
_VOLATILE_CONFIG = (
    "_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash",
    "output_attentions", "output_hidden_states", "use_cache", "return_dict", "_attn_implementation",
    "_attn_implementation_autoset",
)
_ORIG = "._original_component"
# Buffers Hugging Face writes or the bridge adds that are not learned weights.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


def find_weight_files(directory: Path) -> list[Path]:
    """Weight files of a ``save_pretrained`` dir (sharded or not), or ``[]``."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [directory / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin", "model.pt"):
        if (directory / name).is_file():
            return [directory / name]
    return sorted(directory.glob("*.safetensors"))


def config_fingerprint(config: Any) -> str:
    """Content hash of a model config (a ``config.json`` path or dir, a mapping, or a
    ``PretrainedConfig``), canonicalised through ``transformers.AutoConfig`` so that a file and
    the config of the model booted from it agree; fields that only record how the file was
    written or runtime flags (``_name_or_path``, ``transformers_version``, ``dtype``,
    ``output_attentions``...) do not count.

    Raises:
        CheckpointError: the file is missing, not JSON, or names an unknown ``model_type``.
    """
    import hashlib

    if isinstance(config, (str, os.PathLike)):
        p = Path(config)
        p = p / "config.json" if p.is_dir() else p
        try:
            json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"cannot read the model config {p}: {exc}") from None
        from transformers import AutoConfig

        try:
            obj = AutoConfig.from_pretrained(str(p.parent)).to_dict()
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"the model config {p} is not usable by transformers: {exc}") from None
    elif isinstance(config, Mapping):
        obj = dict(config)
    else:
        obj = config.to_dict()
    obj = {k: v for k, v in obj.items() if k not in _VOLATILE_CONFIG}
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def _load_file(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises several types on a bad file
            raise CheckpointError(f"cannot read weights file {path}: {exc}") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read weights file {path} (weights_only=True): {exc}") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


def load_state_dict(source: Any) -> dict[str, Tensor]:
    """Read a state dict from a ``save_pretrained`` dir, a weights file, a module or a mapping.

    Raises:
        CheckpointError: missing path, a dir with no weights, or an unreadable file.
    """
    if isinstance(source, torch.nn.Module):
        return {k: v.detach() for k, v in source.state_dict().items()}
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if path.is_dir():
        files = find_weight_files(path)
        if not files:
            raise CheckpointError(
                f"checkpoint dir {path} holds no weights (expected model.safetensors, "
                "a sharded index, or pytorch_model.bin)"
            )
        out: dict[str, Tensor] = {}
        for f in files:
            out.update(_load_file(f))
        return out
    return _load_file(path)


def _strip(name: str) -> str:
    return name.replace(_ORIG, "")


class LensModel:
    """A booted ``TransformerBridge`` plus the machinery to swap checkpoint weights in.

    Attributes:
        bridge: the TransformerLens ``TransformerBridge`` (in eval mode).
        tokenizer: its tokenizer.
        loaded: name of the checkpoint whose weights are loaded now (or ``None``).
    """

    def __init__(self, bridge: Any, *, source: str = "<bridge>", tokenizer: Any = None) -> None:
        self.bridge = bridge
        self.bridge.eval()
        self.source = source
        # The model's own tokenizer: TransformerLens wraps the one it is given (e.g. to prepend
        # BOS); revlens tokenizes exactly as the checkpoint's authors did.
        self._tokenizer = tokenizer
        self.loaded: str | None = None
        self.fingerprint: str | None = None  # content hash of the loaded weights (None: unknown)
        self.config_fingerprint = config_fingerprint(self.hf_model.config)
        self._version = -1
        # HF parameter name -> list of bridge tensors sharing it; grouped by storage so tied or
        # viewed weights (wte/lm_head, c_attn/q/k/v) count as one: writing any of them updates all.
        self._targets: dict[str, list[Tensor]] = {}
        self._groups: list[list[str]] = []
        seen: dict[int, list[str]] = {}
        for raw, param in self.hf_model.named_parameters(remove_duplicate=False):
            name = _strip(raw)
            self._targets.setdefault(name, [])
            if not any(p is param for p in self._targets[name]):
                self._targets[name].append(param)
            storage = param.untyped_storage().data_ptr()
            seen.setdefault(storage, [])
            if name not in seen[storage]:
                seen[storage].append(name)
        self._groups = list(seen.values())

    # ------------------------------------------------------------------ construction
    @classmethod
    def boot(
        cls,
        source: Any,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        tokenizer: Any = None,
        device_map: Any = None,
    ) -> "LensModel":
        """Boot a bridge from a path (``save_pretrained`` dir), a HF model, or wrap a bridge."""
        from transformer_lens.model_bridge import TransformerBridge

        if isinstance(source, LensModel):
            return source
        if isinstance(source, TransformerBridge):
            return cls(source)
        kwargs: dict[str, Any] = {"dtype": dtype}
        if device is not None:
            kwargs["device"] = device
        if device_map is not None:
            kwargs["device_map"] = device_map
        if tokenizer is not None:
            kwargs["tokenizer"] = tokenizer
        if isinstance(source, torch.nn.Module):
            name = getattr(getattr(source, "config", None), "_name_or_path", "") or "model"
            bridge = TransformerBridge.boot_transformers(name, hf_model=source, **kwargs)
            return cls(bridge, source=name, tokenizer=tokenizer)
        path = Path(source)
        if not (path / "config.json").is_file():
            raise CheckpointError(f"cannot boot {path}: expected a save_pretrained dir with config.json")
        config_fingerprint(path)  # a config.json that is not JSON is named here, not deep in transformers
        if tokenizer is None and any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(str(path))
            except (OSError, ValueError, KeyError) as exc:
                raise CheckpointError(f"cannot read the tokenizer in {path}: {exc}") from None
        if tokenizer is not None:
            kwargs["tokenizer"] = tokenizer
        try:
            bridge = TransformerBridge.boot_transformers(str(path), **kwargs)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"cannot boot {path} with TransformerLens: {type(exc).__name__}: {exc}"
            ) from None
        return cls(bridge, source=str(path), tokenizer=tokenizer)

    # ------------------------------------------------------------------ properties
    @property
    def hf_model(self) -> torch.nn.Module:
        """The wrapped Hugging Face model (trainable; bridge hooks fire inside it)."""
        return self.bridge.original_model

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's own tokenizer (not TransformerLens' BOS-prepending wrapper)."""
        return self._tokenizer if self._tokenizer is not None else self.bridge.tokenizer

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def vocab_size(self) -> int:
        """Size of the model's vocabulary (rows of the unembedding)."""
        return int(self.bridge.cfg.d_vocab)

    @property
    def n_ctx(self) -> int:
        return int(self.bridge.cfg.n_ctx)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf_model.parameters()).dtype

    def _weights_version(self) -> int:
        # torch bumps a tensor's version counter on every in-place change (an optimizer step
        # included), so a changed sum means the weights were modified since they were loaded
        return sum(p._version for p in self.hf_model.parameters())

    def holds(self, fingerprint: str) -> bool:
        """Whether the weights loaded now are exactly the checkpoint with this content hash
        (not merely one of the same name), unmodified since."""
        return self.fingerprint == fingerprint and self._weights_version() == self._version

    def check_architecture(self, history: Any) -> None:
        """Refuse a history of another architecture (its ``config.json`` differs from the booted
        model's: another activation, norm epsilon or size)."""
        try:
            theirs = config_fingerprint(history.architecture_dir())
        except CheckpointError:
            return  # an in-memory history without config: the weight signatures are checked on load
        if theirs != self.config_fingerprint:
            raise ShapeMismatchError(
                f"the model ({self.source}) was booted on another architecture than the history's "
                f"({history.architecture_dir()}): their config.json differ; boot on the history "
                "(history.boot()) instead"
            )

    def load(self, checkpoint: Any, *, force: bool = False) -> None:
        """Load a :class:`~revlens.history.Checkpoint`, unless exactly its weights (by content
        fingerprint, not by name) are loaded already."""
        fp = checkpoint.fingerprint()
        if not force and self.holds(fp):
            self.loaded = checkpoint.name
            return
        self.load_weights(checkpoint.state_dict(), name=checkpoint.name)
        self.fingerprint = fp
        self._version = self._weights_version()

    def signature(self) -> dict[str, tuple[int, ...]]:
        """HF parameter name -> shape, as a checkpoint of this architecture must provide."""
        return {name: tuple(ts[0].shape) for name, ts in self._targets.items()}

    def __repr__(self) -> str:
        return (
            f"LensModel({self.source!r}, n_layers={self.n_layers}, d_model={self.d_model}, "
            f"device={self.device}, loaded={self.loaded!r})"
        )

    # ------------------------------------------------------------------ weights
    def load_weights(self, state_dict: Mapping[str, Tensor], *, name: str = "<state dict>") -> None:
        """Copy a Hugging Face state dict into the booted model, in place.

        Raises:
            ShapeMismatchError: a parameter is missing, unexpected, or has another shape.
            NonFiniteError: a weight holds NaN or inf.
        """
        sd = {k: v for k, v in state_dict.items() if not k.endswith(_IGNORED_SUFFIXES)}
        unknown = [k for k in sd if k not in self._targets]
        if unknown:
            raise ShapeMismatchError(
                f"checkpoint {name} has parameters the model does not: {unknown[:5]}"
                f"{' ...' if len(unknown) > 5 else ''} (model: {self.source})"
            )
        for group in self._groups:
            if not any(n in sd for n in group):
                raise ShapeMismatchError(f"checkpoint {name} lacks parameter {group[0]!r}")
        for key, value in sd.items():
            target = self._targets[key][0]
            if target.is_floating_point() and not value.is_floating_point():
                raise ShapeMismatchError(
                    f"checkpoint {name}: parameter {key!r} has dtype {value.dtype}; the model expects "
                    f"floating-point weights ({target.dtype}) and revlens does not cast them silently"
                )
            if tuple(value.shape) != tuple(target.shape):
                raise ShapeMismatchError(
                    f"checkpoint {name}: parameter {key!r} has shape {tuple(value.shape)}, "
                    f"the model expects {tuple(target.shape)}"
                )
            # A finite sum proves every element finite (one pass, no allocation); an infinite sum
            # can also be overflow of finite values, so only then check element-wise.
            if value.is_floating_point() and not bool(torch.isfinite(value.sum(dtype=torch.float64))) \
                    and not bool(torch.isfinite(value).all()):
                raise NonFiniteError(f"checkpoint {name}: parameter {key!r} holds NaN or inf")
        with torch.no_grad():
            for key, value in sd.items():
                for target in self._targets[key]:
                    target.copy_(value.to(device=target.device, dtype=target.dtype))
        self.loaded = name
        self.fingerprint = None  # a raw state dict: content unknown until load() records it

    def state_dict(self) -> dict[str, Tensor]:
        """The current weights as a plain Hugging Face state dict (clones)."""
        return {group[0]: self._targets[group[0]][0].detach().clone() for group in self._groups}
