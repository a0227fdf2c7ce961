"""One booted TransformerLens model, with checkpoint weights swapped in.

TransformerLens 4 wraps a Hugging Face model in a ``TransformerBridge``. :class:`LensModel` boots
one bridge and swaps checkpoints into it **in place** through :class:`revlens.loading.Swapper`,
which maps checkpoint keys with transformers' own loading rules (renamed keys, prefix-less state
dicts, fused MoE experts), streams tensors one at a time in the model's dtype, refreshes the
bridge's split copies of fused weights, and merges LoRA adapters on their start model (restored
exactly before the next load). A history is analysed with one boot, not one per checkpoint.

Example:
    >>> lm = LensModel.boot("out/lab/aligned")                     # doctest: +SKIP
    >>> lm.load(history["seed0/step-5"])                            # doctest: +SKIP
"""

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, TypeAlias, runtime_checkable

import torch
from torch import Tensor

from revlens._types import Device, PathLike, TokenizerInput, WeightsSource
from revlens.errors import CheckpointError, ConfigError, RevlensError, ShapeMismatchError
from revlens.loading.boot import bridge_tokenizer as _bridge_tokenizer
from revlens.loading.boot import check_dtype_support, read_tokenizer
from revlens.loading.swapper import Ref

__all__ = [
    "WEIGHT_SUFFIXES",
    "CheckpointLike",
    "ConfigLike",
    "HistoryLike",
    "LensModel",
    "ModelInput",
    "config_fingerprint",
    "find_weight_files",
    "load_state_dict",
]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# config keys that record how a file was written, not what the model computes
_VOLATILE_CONFIG = (
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "_commit_hash",
    "output_attentions",
    "output_hidden_states",
    "use_cache",
    "return_dict",
    "_attn_implementation",
    "_attn_implementation_autoset",
)


def find_weight_files(directory: Path) -> list[Path]:
    """Weight files of a ``save_pretrained`` dir (sharded or not; adapter files excluded), or ``[]``."""
    from revlens.loading import weight_files

    return weight_files(directory)


@runtime_checkable
class HasToDict(Protocol):
    """A config object (``transformers.PretrainedConfig``): ``to_dict()``."""

    def to_dict(self) -> dict[str, Any]:
        """The config's fields."""


ConfigLike: TypeAlias = PathLike | Mapping[str, Any] | HasToDict
"""A model config: a ``config.json`` (or its folder), a mapping, or a ``PretrainedConfig``."""


@runtime_checkable
class CheckpointLike(Protocol):
    """What a model loads (a :class:`revlens.history.Checkpoint`): its name, content
    fingerprint and :class:`~revlens.loading.Ref` (and its start's, for an adapter)."""

    name: str

    def model_fingerprint(self) -> str:
        """Content fingerprint of the weights it puts in the model."""

    def ref(self) -> Any:
        """Its own files as a ``Ref``."""

    def start_ref(self) -> Any:
        """Its start model's ``Ref`` (adapters), else ``None``."""


@runtime_checkable
class HistoryLike(Protocol):
    """What a model needs of a history (a :class:`revlens.history.History`): its architecture,
    its adapter checkpoints, and booting on it."""

    def architecture_dir(self) -> Path:
        """The folder holding ``config.json``."""

    def adapters(self) -> list[Any]:
        """Its adapter checkpoints."""

    def boot(
        self,
        *,
        device: Device | None = None,
        dtype: torch.dtype = torch.float32,
        low_memory: bool = True,
    ) -> Any:
        """A ``LensModel`` on the history's architecture."""


def config_fingerprint(config: ConfigLike) -> str:
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
            raise CheckpointError(
                f"the model config {p} is not usable by transformers: {exc}"
            ) from None
    elif isinstance(config, Mapping):
        obj = dict(config)
    else:
        obj = config.to_dict()
    obj = {k: v for k, v in obj.items() if k not in _VOLATILE_CONFIG}
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def load_state_dict(source: WeightsSource) -> dict[str, Tensor]:
    """Read a whole state dict from a ``save_pretrained`` dir, a weights file, a module or a
    mapping (for inspection; loading into a model streams instead, see :meth:`LensModel.load`).

    Raises:
        CheckpointError: missing path, a dir with no weights, or an unreadable file.
    """
    from revlens.loading import open_source

    if isinstance(source, torch.nn.Module):
        return {k: v.detach() for k, v in source.state_dict().items()}
    if isinstance(source, Mapping):
        return dict(source)
    with open_source(source) as src:
        return {key: src.read(key) for key in src}


class LensModel:
    """A booted ``TransformerBridge`` plus the :class:`~revlens.loading.Swapper` that swaps
    checkpoint weights into it.

    Attributes:
        bridge: the TransformerLens ``TransformerBridge`` (in eval mode).
        swapper: the :class:`~revlens.loading.Swapper` of its Hugging Face model.
        tokenizer: its tokenizer.
        loaded: name of the checkpoint whose weights are loaded now (or ``None``).
        fingerprint: content fingerprint of the loaded weights (``None``: unknown).
    """

    def __init__(
        self,
        bridge: torch.nn.Module,
        *,
        source: str = "<bridge>",
        tokenizer: TokenizerInput | None = None,
        boot: Ref | WeightsSource | None = None,
    ) -> None:
        from revlens.loading import Ref, Swapper

        self.bridge = bridge
        self.bridge.eval()
        self.source = source
        # The model's own tokenizer: TransformerLens wraps the one it is given (e.g. to prepend
        # BOS); revlens tokenizes exactly as the checkpoint's authors did.
        self._tokenizer = tokenizer
        self.config_fingerprint = config_fingerprint(self.hf_model.config)
        ref = boot if isinstance(boot, Ref) or boot is None else Ref(boot)
        self.swapper = Swapper(self.hf_model, bridge, boot=ref)
        self.loaded: str | None = ref.name if ref is not None else None
        self.fingerprint: str | None = ref.fingerprint if ref is not None else None
        self._version = self._weights_version() if ref is not None else -1

    # ------------------------------------------------------------------ construction
    @classmethod
    def boot(
        cls,
        source: "ModelInput",
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        tokenizer: TokenizerInput | None = None,
        device_map: str | Mapping[str, Any] | None = None,
        weights: Ref | WeightsSource | None = None,
        low_memory: bool = True,
    ) -> "LensModel":
        """Boot a bridge from a ``save_pretrained`` dir, a HF model, or wrap a bridge.

        Args:
            source: a ``save_pretrained`` dir (its ``config.json`` and tokenizer), a ``.gguf`` file
                (dequantized once into a cached dir, :func:`revlens.loading.gguf_dir`), a Hugging Face
                model, a ``TransformerBridge`` or a ``LensModel`` (returned as is).
            device, dtype, device_map: where and in what precision the model runs.
            tokenizer: a tokenizer (object or path); default the dir's own.
            weights: a :class:`~revlens.loading.Ref` (or path / state dict) of the weights to put
                in, if not the dir's own (e.g. a history's aligned checkpoint).
            low_memory: build the model empty and stream the weights in tensor by tensor
                (:func:`revlens.loading.empty_model`): peak memory about the model's size, also in
                another dtype than the files'. ``False``: ``from_pretrained``, which holds the
                converted and the stored tensors at once (~3x the model in bf16 from fp32 files,
                ``benchmarks/bench_memory.py``). Ignored with ``device_map`` (offloading).

        Raises:
            CheckpointError: not a ``save_pretrained`` dir, unreadable config / tokenizer / weights.
            UpstreamError: a family TransformerLens cannot run in ``dtype`` (names the workaround).
        """
        from transformer_lens.model_bridge import TransformerBridge

        if isinstance(source, LensModel):
            return source
        if isinstance(source, TransformerBridge):
            check_dtype_support(
                getattr(source.original_model.config, "model_type", None), source.cfg.dtype
            )
            return cls(source, tokenizer=tokenizer)
        kwargs: dict[str, Any] = {"dtype": dtype}
        if device is not None:
            kwargs["device"] = device
        if device_map is not None:
            kwargs["device_map"] = device_map
        if isinstance(source, torch.nn.Module):
            check_dtype_support(getattr(getattr(source, "config", None), "model_type", None), dtype)
            name = getattr(getattr(source, "config", None), "_name_or_path", "") or "model"
            if tokenizer is not None:
                kwargs["tokenizer"] = _bridge_tokenizer(tokenizer)
            bridge = TransformerBridge.boot_transformers(name, hf_model=source, **kwargs)
            return cls(bridge, source=name, tokenizer=tokenizer)
        from revlens.loading.gguf import gguf_dir, is_gguf

        path = (
            gguf_dir(source) if is_gguf(source) else Path(source)
        )  # GGUF: its cached dequantized dir
        return cls._boot_dir(path, kwargs, tokenizer, weights, low_memory and device_map is None)

    @classmethod
    def for_history(
        cls,
        history: HistoryLike,
        model: "ModelInput | None" = None,
        *,
        device: Device | None = None,
        dtype: torch.dtype | None = None,
        low_memory: bool = True,
    ) -> "LensModel":
        """The model an entry point runs: ``model`` (a ``LensModel``, bridge, HF model or path; checked
        against ``device`` / ``dtype`` when they are given) or, by default, ``history.boot(...)``
        (float32 unless ``dtype``). Its architecture is checked against the history's.

        Raises:
            ConfigError: ``model`` runs on another device or in another dtype than asked.
            ShapeMismatchError: another architecture than the history's.
        """
        if model is None:
            lm = history.boot(device=device, dtype=dtype or torch.float32, low_memory=low_memory)
        else:
            if isinstance(model, (str, os.PathLike)):
                lm = cls.boot(
                    model, device=device, dtype=dtype or torch.float32, low_memory=low_memory
                )
            else:
                lm = cls.boot(model)
            if dtype is not None and lm.dtype != dtype:
                raise ConfigError(
                    f"the model given runs in {lm.dtype} but dtype={dtype} was asked; boot it in "
                    "that dtype, or leave dtype unset to use the model's"
                )
            if device is not None and not _same_device(lm.device, torch.device(device)):
                raise ConfigError(
                    f"the model given is on {lm.device} but device={device!r} was asked; move it "
                    "(or leave device unset)"
                )
        lm.check_architecture(history)
        return lm

    @classmethod
    def _boot_dir(
        cls, path: Path, kwargs: dict[str, Any], tokenizer: Any, weights: Any, low_memory: bool
    ) -> "LensModel":
        from transformer_lens.model_bridge import TransformerBridge

        from revlens.loading import Ref, empty_model, weight_files

        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"cannot boot {path}: expected a save_pretrained dir with config.json"
            )
        config_fingerprint(
            path
        )  # a config.json that is not JSON is named here, not deep in transformers
        check_dtype_support(
            json.loads((path / "config.json").read_text()).get("model_type"), kwargs["dtype"]
        )
        tokenizer = read_tokenizer(path, tokenizer)
        if tokenizer is not None:
            kwargs["tokenizer"] = _bridge_tokenizer(tokenizer)
        ref = weights if isinstance(weights, Ref) or weights is None else Ref(weights)
        if ref is None and not weight_files(path):
            raise CheckpointError(f"cannot boot {path}: it holds no weights; pass weights=...")
        try:
            if low_memory:
                hf = empty_model(path, dtype=kwargs["dtype"], device=kwargs.get("device"))
                bridge = TransformerBridge.boot_transformers(str(path), hf_model=hf, **kwargs)
            else:
                bridge = TransformerBridge.boot_transformers(str(path), **kwargs)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"cannot boot {path} with TransformerLens: {type(exc).__name__}: {exc}"
            ) from None
        own = Ref(path, name=path.name)
        same = (
            ref is not None
            and isinstance(ref.source, (str, os.PathLike))
            and Path(ref.source).resolve() == path.resolve()
        )
        booted_with = None if low_memory else (ref if same else own)  # what from_pretrained read
        lm = cls(bridge, source=str(path), tokenizer=tokenizer, boot=booted_with)
        if booted_with is None or (ref is not None and not same):
            lm.load_ref(ref if ref is not None else own)
        return lm

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

    def check_architecture(self, history: HistoryLike) -> None:
        """Refuse a history of another architecture (its ``config.json`` differs from the booted
        model's: another activation, norm epsilon or size), and adapters that do not fit the
        model's modules (names, ranks, shapes: read from their headers, before any forward).

        Raises:
            ShapeMismatchError, CheckpointError, ConfigError: naming the checkpoint.
        """
        try:
            theirs = config_fingerprint(history.architecture_dir())
        except CheckpointError:
            theirs = None  # an in-memory history without config: the weight signatures are checked on load
        if theirs is not None and theirs != self.config_fingerprint:
            raise ShapeMismatchError(
                f"the model ({self.source}) was booted on another architecture than the history's "
                f"({history.architecture_dir()}): their config.json differ; boot on the history "
                "(history.boot()) instead"
            )
        for ck in history.adapters():
            try:
                self.swapper.check(ck.ref())
            except RevlensError as exc:
                raise type(exc)(f"checkpoint {ck.name}: {exc}") from exc

    def signature(self) -> dict[str, tuple[int, ...]]:
        """HF parameter name -> shape, as a checkpoint of this architecture must provide."""
        return self.swapper.signature()

    def __repr__(self) -> str:
        return (
            f"LensModel({self.source!r}, n_layers={self.n_layers}, d_model={self.d_model}, "
            f"device={self.device}, dtype={self.dtype}, loaded={self.loaded!r})"
        )

    # ------------------------------------------------------------------ weights
    def load(self, checkpoint: CheckpointLike, *, force: bool = False) -> None:
        """Load a :class:`~revlens.history.Checkpoint` (a full one, or an adapter on its run's start
        model), unless exactly its weights (by content fingerprint, not by name) are loaded already
        and unmodified since."""
        fp = checkpoint.model_fingerprint()
        if not force and self.holds(fp):
            self.loaded = checkpoint.name
            return
        if force:
            self.swapper.forget()
        self.load_ref(checkpoint.ref(), start=checkpoint.start_ref())
        self.loaded, self.fingerprint = checkpoint.name, fp

    def load_ref(self, ref: Ref, *, start: Ref | None = None) -> None:
        """Swap a :class:`~revlens.loading.Ref` in (see :meth:`revlens.loading.Swapper.load`).

        Raises:
            ShapeMismatchError, CheckpointError, NonFiniteError, ConfigError: as the Swapper; the
                error names the checkpoint. After an error :attr:`loaded` is ``None`` unless the
                previous weights were restored.
        """
        if self._version != self._weights_version():
            self.swapper.forget()  # modified since the last load: what the Swapper recorded is stale
        self.fingerprint = None
        try:
            held = self.swapper.load(ref, start=start)
        except RevlensError:
            held = self.swapper.loaded  # restored, or None when the model is a mix
            self.loaded = held.name if held is not None else None
            raise
        finally:
            self._version = self._weights_version()
        self.loaded = held.name if held is not None else None
        self.fingerprint = ref.fingerprint if held is not None and held.kind == "full" else None

    def load_weights(self, state_dict: Mapping[str, Tensor], *, name: str = "<state dict>") -> None:
        """Copy a Hugging Face state dict (any key layout ``from_pretrained`` accepts) into the
        booted model, in place. Nothing of it is kept afterwards.

        Raises:
            ShapeMismatchError: a parameter is missing, unexpected, or has another shape.
            NonFiniteError: a weight holds NaN or inf.
        """
        from revlens.loading import Ref

        try:
            self.load_ref(Ref(dict(state_dict), name=name, kind="full"))
        finally:
            self.swapper.forget()  # a raw state dict: its content is unknown and it is not kept
            self._version = self._weights_version()
        self.loaded, self.fingerprint = name, None

    def state_dict(self) -> dict[str, Tensor]:
        """The current weights as a plain Hugging Face state dict (clones; one name per tie group)."""
        targets = self.swapper.targets
        return {name: targets.params[name].detach().clone() for name in targets.required()}


def _same_device(have: torch.device, want: torch.device) -> bool:
    return have.type == want.type and (want.index is None or have.index == want.index)


ModelInput: TypeAlias = LensModel | torch.nn.Module | PathLike
"""What an entry point accepts as a model: a :class:`LensModel`, a ``TransformerBridge`` or a Hugging
Face model (both ``torch.nn.Module``), or a ``save_pretrained`` folder / ``.gguf`` file
(converted once by :func:`revlens.history.as_model`)."""
