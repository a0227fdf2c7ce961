"""PEFT LoRA adapters, read and applied in place without PEFT (PEFT only for DoRA).

An adapter dir holds ``adapter_config.json`` and ``adapter_model.safetensors`` (or ``.bin``).
:func:`read_adapter` parses and validates it against a model: every LoRA module must exist with
the right shapes, ``rank_pattern`` / ``alpha_pattern`` resolved as PEFT does
(``get_pattern_key``), scaling ``alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``).
:func:`apply_adapter` then, module by module, copies the replacement tensors the file stores
(``modules_to_save``, ``bias="all"`` biases, saved ``base_layer`` weights) and adds
``transpose(B @ A, fan_in_fan_out) * scaling`` to the weight: PEFT's own ``merge`` arithmetic, so
the result equals ``merge_and_unload()`` of the same adapter. DoRA modules are merged by PEFT's
layer code on a copy of the one module (:mod:`revlens.loading.peft_merge`).
"""

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxtyping import Float
from torch import Tensor

from revlens._types import PathLike
from revlens.errors import CheckpointError, ConfigError, ShapeMismatchError, require
from revlens.loading.sources import TensorSource, open_source
from revlens.loading.targets import Targets

__all__ = [
    "Adapter",
    "AdapterConfig",
    "LoraModule",
    "adapter_files",
    "lora_delta",
    "read_adapter",
    "read_adapter_config",
    "require_peft",
]

_PEFT_PREFIX = "base_model.model."
_FACTOR = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|"
    r"lora_magnitude_vector)(?:\.[A-Za-z_]\w*)??(?:\.(?P<param>weight|bias))?$"
)
_BASE_LAYER = ".base_layer."
# Config fields whose non-default value changes the math beyond plain LoRA / DoRA.
_UNSUPPORTED = (
    "layer_replication",
    "target_parameters",
    "trainable_token_indices",
    "use_qalora",
    "use_bdlora",
    "alora_invocation_tokens",
    "arrow_config",
    "megatron_config",
)
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


@dataclass(frozen=True)
class AdapterConfig:
    """The parts of a PEFT ``adapter_config.json`` that decide the merged weights.

    Attributes:
        path: the adapter dir.
        r, lora_alpha: default rank and alpha.
        rank_pattern, alpha_pattern: per-module overrides (PEFT's suffix-regex keys).
        use_rslora: scale by ``alpha / sqrt(r)`` instead of ``alpha / r``.
        fan_in_fan_out: weights stored ``[in, out]`` (GPT-2 ``Conv1D``).
        use_dora: weight-decomposed LoRA (merged through PEFT).
        lora_bias: ``lora_B`` carries a bias added to the layer bias.
        target_modules, modules_to_save, bias: as PEFT wrote them (informational: the file's
            tensors decide what is applied).
        base_model_name_or_path: the start model the adapter was trained on, as recorded.
        raw: the whole json.
    """

    path: Path
    r: int
    lora_alpha: float
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    use_dora: bool = False
    lora_bias: bool = False
    target_modules: str | Sequence[str] | None = None
    modules_to_save: tuple[str, ...] = ()
    bias: str = "none"
    base_model_name_or_path: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, directory: Path) -> "AdapterConfig":
        """Parse ``directory/adapter_config.json``.

        Raises:
            CheckpointError: no or unreadable json.
            ConfigError: not a LoRA adapter, or a LoRA variant revlens cannot merge exactly.
        """
        path = Path(directory) / "adapter_config.json"
        raw = read_adapter_config(path)
        kind = str(raw.get("peft_type", "LORA")).upper()
        if kind != "LORA":
            raise ConfigError(
                f"adapter {directory}: peft_type {kind!r} is not supported (LoRA/DoRA only); "
                "merge it with peft (merge_and_unload) and save a full checkpoint"
            )
        bad = [k for k in _UNSUPPORTED if raw.get(k) not in (None, False, [], {}, "")]
        init = str(raw.get("init_lora_weights", True)).lower()
        if init.startswith(_BASE_CHANGING_INITS):
            bad.append(
                f"init_lora_weights={raw['init_lora_weights']!r} (the adapter is relative to a modified base)"
            )
        if bad:
            raise ConfigError(
                f"adapter {directory}: LoRA options {bad} are not supported; merge it with peft "
                "(merge_and_unload) and save a full checkpoint"
            )
        return cls(
            path=Path(directory),
            r=raw["r"],
            lora_alpha=float(raw.get("lora_alpha", 8)),
            rank_pattern={k: int(v) for k, v in (raw.get("rank_pattern") or {}).items()},
            alpha_pattern={k: float(v) for k, v in (raw.get("alpha_pattern") or {}).items()},
            use_rslora=bool(raw.get("use_rslora")),
            fan_in_fan_out=bool(raw.get("fan_in_fan_out")),
            use_dora=bool(raw.get("use_dora")),
            lora_bias=bool(raw.get("lora_bias")),
            target_modules=raw.get("target_modules"),
            modules_to_save=tuple(raw.get("modules_to_save") or ()),
            bias=str(raw.get("bias", "none")),
            base_model_name_or_path=raw.get("base_model_name_or_path"),
            raw=raw,
        )

    def rank_alpha(self, module: str) -> tuple[int, float]:
        """``(r, alpha)`` of a module (PEFT ``get_pattern_key`` on the module's full name)."""
        return (
            self.rank_pattern.get(_pattern_key(self.rank_pattern, module), self.r),
            self.alpha_pattern.get(_pattern_key(self.alpha_pattern, module), self.lora_alpha),
        )

    def scaling(self, module: str) -> float:
        """PEFT's scaling of a module: ``alpha / r``, or ``alpha / sqrt(r)`` with ``use_rslora``."""
        r, alpha = self.rank_alpha(module)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def _pattern_key(patterns: dict[str, Any], key: str) -> str:
    for pattern in patterns:  # peft.utils.other.get_pattern_key
        if re.match(rf"(.*\.)?({pattern})$", key):
            return pattern
    return key


@dataclass
class LoraModule:
    """One adapted module: where its factors are in the file and which parameter they change.

    Attributes:
        module: the module's name in the adapter (PEFT names, prefix stripped).
        weight: the HF parameter the delta is added to.
        keys: factor name (``lora_A``, ``lora_B``, ``lora_B.bias``, ``lora_magnitude_vector``...) ->
            adapter-file key.
        scaling: PEFT's scaling for this module.
        embedding: an ``nn.Embedding`` LoRA (``lora_embedding_A/B``).
    """

    module: str
    weight: str
    keys: dict[str, str]
    scaling: float
    embedding: bool = False

    @property
    def bias(self) -> str:
        """The HF name of the module's bias (what ``lora_B.bias`` adds to)."""
        return self.weight.rsplit(".", 1)[0] + ".bias"


@dataclass
class Adapter:
    """A validated LoRA adapter, ready to apply to one model.

    Attributes:
        config: its config.
        source: its tensors (still open; :meth:`close` releases them).
        modules: the LoRA modules.
        replacements: HF parameter name -> adapter key of a full replacement tensor.
    """

    config: AdapterConfig
    source: TensorSource
    modules: list[LoraModule]
    replacements: dict[str, str]

    def touched(self, targets: Targets) -> set[str]:
        """HF names of every parameter applying this adapter writes (tie groups resolved)."""
        names = set(self.replacements) | {m.weight for m in self.modules}
        names |= {m.bias for m in self.modules if "lora_B.bias" in m.keys}
        return {targets.leader.get(n, n) for n in names}

    def close(self) -> None:
        """Release the adapter file."""
        self.source.close()


def require_peft(what: str) -> Any:
    """Import ``peft`` or raise :class:`~revlens.errors.MissingExtraError` naming the extra
    (``pip install "revlens[peft]"``)."""
    return require("peft", "peft", what)


def _number(path: Path, field_: str, value: Any, *, integer: bool) -> Any:
    ok = (
        isinstance(value, int) and value > 0
        if integer
        else isinstance(value, (int, float)) and math.isfinite(value)
    )
    if isinstance(value, bool) or not ok:
        want = "a positive integer" if integer else "a finite number"
        raise CheckpointError(
            f"adapter config {path}: field {field_!r} must be {want}, got {value!r}"
        )
    return int(value) if integer else float(value)


def read_adapter_config(path: PathLike) -> dict[str, Any]:
    """``adapter_config.json`` parsed and checked: a JSON object whose ``r`` (and any
    ``rank_pattern`` value) is a positive integer and whose ``lora_alpha`` (default 8; any
    ``alpha_pattern`` value) is a finite number; ``r`` and ``lora_alpha`` come back normalised.

    Raises:
        CheckpointError: naming the file and the JSON problem (line, column) or the field.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read adapter config {p}: {exc}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"adapter config {p} is not valid JSON ({exc.msg} at line {exc.lineno} "
            f"column {exc.colno})"
        ) from None
    except RecursionError:
        raise CheckpointError(f"adapter config {p} is not valid JSON (nested too deeply)") from None
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"adapter config {p} must hold a JSON object, got {type(raw).__name__}"
        )
    if (
        not isinstance(raw.get("peft_type", "LORA"), str)
        or not raw.get("peft_type", "LORA").strip()
    ):
        raise CheckpointError(
            f"adapter config {p}: field 'peft_type' must name a PEFT method (e.g. 'LORA'), "
            f"got {raw['peft_type']!r}"
        )
    if raw.get("peft_type", "LORA").upper() != "LORA":
        return raw  # another PEFT method: AdapterConfig.read refuses it by name
    if "r" not in raw:
        raise CheckpointError(f"adapter config {p}: field 'r' (the LoRA rank) is missing")
    out = {
        **raw,
        "r": _number(p, "r", raw["r"], integer=True),
        "lora_alpha": _number(p, "lora_alpha", raw.get("lora_alpha", 8), integer=False),
    }
    for name, integer in (("rank_pattern", True), ("alpha_pattern", False)):
        pattern = raw.get(name)
        if pattern in (None, {}):
            continue
        if not isinstance(pattern, dict):
            raise CheckpointError(
                f"adapter config {p}: field {name!r} must be an object, got {pattern!r}"
            )
        for key, value in pattern.items():
            _number(p, f"{name}[{key!r}]", value, integer=integer)
    for name in ("modules_to_save", "base_model_name_or_path", "bias"):
        value = raw.get(name)
        want = list if name == "modules_to_save" else str
        if value is not None and not isinstance(value, want):
            raise CheckpointError(
                f"adapter config {p}: field {name!r} must be a {want.__name__} or null, "
                f"got {value!r}"
            )
    saved = raw.get("modules_to_save") or []
    if not all(isinstance(m, str) for m in saved):
        raise CheckpointError(
            f"adapter config {p}: field 'modules_to_save' must list module names (strings), "
            f"got {saved!r}"
        )
    targets = raw.get("target_modules")
    if not (
        targets is None
        or isinstance(targets, str)
        or (isinstance(targets, list) and all(isinstance(m, str) for m in targets))
    ):
        raise CheckpointError(
            f"adapter config {p}: field 'target_modules' must be a module name or regex (string), "
            f"a list of module names, or null, got {targets!r}"
        )
    for name in ("use_rslora", "fan_in_fan_out", "use_dora", "lora_bias"):
        value = raw.get(name)
        if value is not None and not isinstance(value, bool):  # bool([None]) would read as true
            raise CheckpointError(
                f"adapter config {p}: field {name!r} must be true, false or null, got {value!r}"
            )
    return out


def adapter_files(directory: Path) -> list[Path]:
    """The adapter weights file of a PEFT dir (``[]`` if there is none)."""
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (Path(directory) / name).is_file():
            return [Path(directory) / name]
    return []


def lora_delta(
    a: Float[Tensor, "r d_in"],
    b: Float[Tensor, "d_out r"],
    scaling: float,
    *,
    transpose: bool = False,
) -> Float[Tensor, "..."]:
    """PEFT's LoRA delta ``transpose(B @ A) * scaling`` (``[d_out, d_in]``, or ``[d_in, d_out]``
    with ``transpose``: ``fan_in_fan_out`` layers and embeddings)."""
    out = b @ a
    return (out.T if transpose else out) * scaling


def _hf_name(name: str, rename: Any, targets: Targets) -> str | None:
    renamed = rename(name)
    return renamed if renamed in targets else None


def _parse_keys(
    source: TensorSource, cfg: AdapterConfig, targets: Targets, rename: Any
) -> tuple[dict, dict]:
    factors: dict[str, dict[str, str]] = {}
    replacements: dict[str, str] = {}
    unknown: list[str] = []
    for key in source:
        name = key.removeprefix(_PEFT_PREFIX)
        m = _FACTOR.match(name)
        if m:
            part = m.group("part") + (".bias" if m.group("param") == "bias" else "")
            factors.setdefault(m.group("module"), {})[part] = key
            continue
        hf = _hf_name(name.replace(_BASE_LAYER, "."), rename, targets)
        if hf is None:
            unknown.append(key)
        else:
            replacements[hf] = key
    if unknown:
        raise ShapeMismatchError(
            f"adapter {cfg.path}: tensors {unknown[:5]} name no parameter of the model"
        )
    return factors, replacements


def _module(
    name: str, parts: dict[str, str], cfg: AdapterConfig, targets: Targets, rename: Any
) -> LoraModule:
    embedding = "lora_embedding_A" in parts
    need = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
    if any(p not in parts for p in need):
        raise CheckpointError(
            f"adapter {cfg.path}: module {name!r} lacks {[p for p in need if p not in parts]}"
        )
    weight = _hf_name(f"{name}.weight", rename, targets)
    if weight is None:
        raise ShapeMismatchError(
            f"adapter {cfg.path}: LoRA module {name!r} is not a module of the model"
        )
    if "lora_magnitude_vector" in parts and not cfg.use_dora:
        raise ConfigError(
            f"adapter {cfg.path}: module {name!r} has a DoRA magnitude but use_dora is false"
        )
    return LoraModule(name, weight, dict(parts), cfg.scaling(name), embedding)


def _check_shapes(
    mod: LoraModule, source: TensorSource, cfg: AdapterConfig, targets: Targets
) -> None:
    w = tuple(targets.get(mod.weight).shape)
    a = source.info(mod.keys["lora_embedding_A" if mod.embedding else "lora_A"]).shape
    b = source.info(mod.keys["lora_embedding_B" if mod.embedding else "lora_B"]).shape
    r, _ = cfg.rank_alpha(mod.module)
    out_in = (w[1], w[0]) if (mod.embedding or cfg.fan_in_fan_out) else w
    ok = len(w) == 2 and a == (r, out_in[1]) and b == (out_in[0], r)
    if not ok:
        raise ShapeMismatchError(
            f"adapter {cfg.path}: module {mod.module!r} has lora_A {a} and lora_B {b} (rank {r} by the config), "
            f"which do not fit parameter {mod.weight!r} of shape {w}"
            + ("" if len(w) == 2 else " (only 2-d weights are supported)")
        )


def read_adapter(directory: Path, targets: Targets, rename: Callable[[str], str]) -> Adapter:
    """Parse and validate a PEFT LoRA dir against a model (no weight is changed).

    Args:
        directory: the adapter dir (``adapter_config.json`` + ``adapter_model.*``).
        targets: the model's parameters.
        rename: HF-name resolver for a parameter name (transformers' renaming + prefix rules).

    Raises:
        CheckpointError: missing or unreadable files, incomplete LoRA pairs.
        ConfigError: an unsupported PEFT method or option.
        ShapeMismatchError: a module or shape the model does not have.
    """
    cfg = AdapterConfig.read(directory)
    files = adapter_files(directory)
    if not files:
        raise CheckpointError(
            f"adapter dir {directory} has adapter_config.json but no adapter_model.safetensors/.bin"
        )
    source = open_source(files[0], name=str(directory))
    try:
        factors, replacements = _parse_keys(source, cfg, targets, rename)
        modules = [_module(n, parts, cfg, targets, rename) for n, parts in factors.items()]
        for mod in modules:
            _check_shapes(mod, source, cfg, targets)
        if any("lora_magnitude_vector" in m.keys for m in modules):
            require_peft(f"DoRA adapter {directory}")
        for hf, key in replacements.items():
            if source.info(key).shape != tuple(targets.get(hf).shape):
                raise ShapeMismatchError(
                    f"adapter {cfg.path}: {key!r} has shape {source.info(key).shape}, "
                    f"parameter {hf!r} of the model has {tuple(targets.get(hf).shape)}"
                )
            tied = [
                n
                for n, lead in targets.leader.items()
                if lead == targets.leader.get(hf, hf) and n != hf
            ]
            if tied and not any(n in replacements for n in tied):
                raise ConfigError(
                    f"adapter {cfg.path} replaces {hf!r}, which the booted model ties to {tied}; "
                    "PEFT's merged model unties them (boot with tie_word_embeddings=False)"
                )
    except Exception:
        source.close()
        raise
    return Adapter(cfg, source, modules, replacements)
