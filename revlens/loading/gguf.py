"""GGUF checkpoints: a ``.gguf`` file dequantized **once** into a content-keyed ``save_pretrained`` dir.

A GGUF file (llama.cpp's format: quantized weights, the config, the tokenizer and the chat
template in one file) is accepted wherever a checkpoint is (``History``, ``history.json``,
``revlens analyze --history``, :meth:`revlens.LensModel.boot`). :func:`gguf_dir` checks it (a GGUF
header, an architecture transformers can load, quantization types the ``gguf`` package can
dequantize: a :class:`~revlens.errors.UnsupportedCheckpointError` naming both before anything is
dequantized), then converts it with transformers' own GGUF loader into a cache dir keyed by the
file's sha256, the dtype and the transformers / gguf / revlens versions: ``model.safetensors``
(tied weights written once), ``config.json`` (without the GGUF quantization config), the tokenizer
and chat template read from the file, and ``revlens-gguf.json`` (what it was made from). The dir is
published atomically; from then on the checkpoint *is* that dir (streamed swaps, fingerprints by
content of its safetensors).

Example:
    >>> d = gguf_dir("SmolLM2-135M-Instruct.Q4_1.gguf")                # doctest: +SKIP
    >>> History.from_dirs(base="SmolLM2-135M-Instruct.Q4_1.gguf", aligned="out/aligned", runs=...)  # doctest: +SKIP
"""

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from revlens._types import PathLike
from revlens.errors import CheckpointError, UnsupportedCheckpointError, require

__all__ = [
    "GGUF_FORMAT",
    "GGUFFile",
    "GGUFInfo",
    "cache_root",
    "gguf_dir",
    "gguf_record",
    "inspect_gguf",
    "is_gguf",
    "sha256_file",
    "supported_architectures",
    "supported_quant_types",
]

GGUF_FORMAT = 1  # bump when the cache dir's layout or content changes
RECORD = "revlens-gguf.json"
_MAGIC = b"GGUF"
_SHA: dict[tuple[str, int, int, int], str] = {}
_DIRS: dict[tuple[str, int, int, int, str, str], Path] = {}


@dataclass(frozen=True)
class GGUFFile:
    """A GGUF checkpoint given as a dir and a file name (``from_pretrained(dir, gguf_file=...)``)
    or a path, with the dtype and cache it is dequantized into.

    Attributes:
        path: the ``.gguf`` file, or the dir holding ``file``.
        file: the file name inside ``path`` (``None``: ``path`` is the file).
        dtype: the dtype the weights are dequantized into (float32 by default).
        cache_dir: the cache root (default :func:`cache_root`).
    """

    path: PathLike
    file: str | None = None
    dtype: torch.dtype = torch.float32
    cache_dir: PathLike | None = None

    def gguf_path(self) -> Path:
        """The ``.gguf`` file."""
        return Path(self.path) / self.file if self.file is not None else Path(self.path)

    def resolve(self) -> Path:
        """The cached ``save_pretrained`` dir (converted on first use)."""
        return gguf_dir(self.gguf_path(), dtype=self.dtype, cache_dir=self.cache_dir)


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF file's header says, read without dequantizing anything.

    Attributes:
        path: the file.
        architecture: ``general.architecture`` (e.g. ``"llama"``, ``"gemma3"``).
        quant_types: tensor type name -> number of tensors (e.g. ``{"Q4_1": 210, "F32": 61}``).
        name: ``general.name`` if the file records one.
    """

    path: Path
    architecture: str
    quant_types: dict[str, int] = field(default_factory=dict)
    name: str | None = None


def is_gguf(source: object) -> bool:
    """Whether ``source`` is a GGUF checkpoint: a :class:`GGUFFile` or a path ending in ``.gguf``."""
    if isinstance(source, GGUFFile):
        return True
    return isinstance(source, (str, os.PathLike)) and str(source).lower().endswith(".gguf")


def cache_root(cache_dir: PathLike | None = None) -> Path:
    """Where converted GGUF files live: ``cache_dir``, else ``$REVLENS_CACHE_DIR/gguf``, else
    ``$XDG_CACHE_HOME/revlens/gguf`` (``~/.cache/revlens/gguf``)."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("REVLENS_CACHE_DIR"):
        return Path(os.environ["REVLENS_CACHE_DIR"]) / "gguf"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "revlens" / "gguf"


def _stat_key(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


def sha256_file(path: PathLike) -> str:
    """sha256 of a file's bytes (memoised per process by path, inode, size and modification time)."""
    p = Path(path)
    key = _stat_key(p)
    if key not in _SHA:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _SHA[key] = h.hexdigest()
    return _SHA[key]


def supported_quant_types() -> tuple[str, ...]:
    """The GGUF tensor types the installed ``gguf`` package dequantizes."""
    require("gguf", "real", "reading GGUF checkpoints")
    from gguf import quants

    traits = getattr(quants, "_type_traits", {})
    return tuple(sorted({"F32", "F16", *(t.name for t in traits)}))


def supported_architectures() -> tuple[str, ...]:
    """The GGUF architectures the installed transformers can load (``general.architecture``)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return tuple(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"GGUF checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"GGUF checkpoint {path} is not a regular file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != _MAGIC:
        raise CheckpointError(
            f"{path} is not a GGUF file (it starts with {magic!r}, expected {_MAGIC!r})"
        )


def inspect_gguf(path: PathLike) -> GGUFInfo:
    """Read a GGUF file's architecture and tensor types (no dequantization).

    Raises:
        CheckpointError: a missing file, not a GGUF file, or an unreadable header.
        MissingExtraError: the ``gguf`` package is not installed (``pip install "revlens[real]"``).
    """
    p = Path(path)
    _check_file(p)
    gguf = require("gguf", "real", "reading GGUF checkpoints")
    try:
        reader = gguf.GGUFReader(str(p))
        arch_field = reader.fields.get("general.architecture")
        name_field = reader.fields.get("general.name")
        arch = str(arch_field.contents()) if arch_field is not None else ""
        name = str(name_field.contents()) if name_field is not None else None
        types = Counter(t.tensor_type.name for t in reader.tensors)
    except (ValueError, KeyError, IndexError, OSError) as exc:
        raise CheckpointError(
            f"cannot read the GGUF header of {p}: {type(exc).__name__}: {exc}"
        ) from None
    return GGUFInfo(p, arch, dict(sorted(types.items())), name)


def check_gguf(path: Any) -> GGUFInfo:
    """:func:`inspect_gguf`, refusing what cannot be converted.

    Raises:
        UnsupportedCheckpointError: an architecture transformers cannot load from GGUF, or a
            tensor type the ``gguf`` package cannot dequantize (naming the file, both, and what is
            supported).
    """
    info = inspect_gguf(path)
    archs = supported_architectures()
    known = info.architecture in archs or info.architecture.replace("moe", "_moe") in archs
    bad_types = sorted(set(info.quant_types) - set(supported_quant_types()))
    if not known or bad_types:
        what = []
        if not known:
            what.append(
                f"architecture {info.architecture!r} (transformers loads: {', '.join(archs)})"
            )
        if bad_types:
            what.append(
                f"quantization types {bad_types} (the gguf package dequantizes: "
                f"{', '.join(supported_quant_types())})"
            )
        raise UnsupportedCheckpointError(
            f"GGUF checkpoint {info.path} (architecture {info.architecture!r}, quantization types "
            f"{sorted(info.quant_types)}) cannot be converted: unsupported {' and '.join(what)}"
        )
    return info


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import gguf  # noqa: F401 (checked by the caller)
    import transformers

    from revlens._version import __version__

    return {
        "transformers": transformers.__version__,
        "gguf": version("gguf"),
        "revlens": __version__,
    }


def _cache_key(sha: str, dtype: torch.dtype, versions: dict[str, str]) -> str:
    blob = json.dumps(
        {"sha256": sha, "dtype": str(dtype), "format": GGUF_FORMAT, **versions}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def gguf_dir(
    path: "PathLike | GGUFFile",
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: PathLike | None = None,
) -> Path:
    """The ``save_pretrained`` dir of a GGUF file, dequantized into ``dtype`` on first use and
    cached by content (sha256 of the file, dtype, transformers / gguf / revlens versions).

    Args:
        path: a ``.gguf`` file (or a :class:`GGUFFile`).
        dtype: the dtype of the cached weights (float32: exact for every GGUF quantization type).
        cache_dir: the cache root (default :func:`cache_root`).

    Raises:
        CheckpointError: a missing or non-GGUF file.
        UnsupportedCheckpointError: an architecture or quantization type that cannot be converted.
        MissingExtraError: the ``gguf`` package is not installed.
    """
    if isinstance(path, GGUFFile):
        return path.resolve()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise CheckpointError(
            f"a GGUF checkpoint is dequantized into a floating dtype, not {dtype!r}"
        )
    p = Path(path)
    _check_file(p)
    memo = (*_stat_key(p), str(dtype), str(cache_root(cache_dir)))
    if memo in _DIRS and _complete(_DIRS[memo]):
        return _DIRS[memo]
    info = check_gguf(p)
    versions = _versions()
    sha = sha256_file(p)
    dest = cache_root(cache_dir) / _cache_key(sha, dtype, versions)
    if not _complete(dest):
        _convert(info, sha, dtype, versions, dest)
    _DIRS[memo] = dest
    return dest


def _complete(dest: Path) -> bool:
    from revlens._io import check_manifest

    if not (dest / RECORD).is_file():
        return False
    try:
        check_manifest(dest, "GGUF cache dir")
    except Exception:  # an altered cache entry: convert again
        return False
    return True


def _convert(
    info: GGUFInfo, sha: str, dtype: torch.dtype, versions: dict[str, str], dest: Path
) -> None:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from revlens._io import publish_dir, write_json

    folder, name = str(info.path.parent), info.path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, OSError, NotImplementedError, TypeError) as exc:
        raise UnsupportedCheckpointError(
            f"transformers cannot convert GGUF checkpoint {info.path} (architecture "
            f"{info.architecture!r}, quantization types {sorted(info.quant_types)}): {type(exc).__name__}: {exc}"
        ) from None
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized: a plain checkpoint now
    config.architectures = [
        type(model).__name__
    ]  # as save_pretrained records (TransformerLens reads it)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue  # a tied weight is written once (save_pretrained does the same)
        seen.add(tensor.data_ptr())
        tensors[key] = tensor.detach().to(dtype).contiguous()
    with publish_dir(dest) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(
            tmp / RECORD,
            {
                "format": "revlens-gguf",
                "format_version": GGUF_FORMAT,
                "file": str(info.path.resolve()),
                "file_name": info.path.name,
                "sha256": sha,
                "size": info.path.stat().st_size,
                "architecture": info.architecture,
                "gguf_name": info.name,
                "quant_types": info.quant_types,
                "dtype": str(dtype),
                "versions": versions,
            },
        )


def gguf_record(path: PathLike | None) -> dict[str, Any] | None:
    """What a converted dir was made from (``revlens-gguf.json``: the GGUF file, its sha256,
    quantization types, versions, and the model package if it came from one), or ``None``."""
    if path is None:
        return None
    f = Path(path) / RECORD
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return None
