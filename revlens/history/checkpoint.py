"""One checkpoint of a history, identified by content (a hash of its files), not by name.

A checkpoint is **full** (a complete state dict: a ``save_pretrained`` dir, a weights file, an
in-memory state dict) or a PEFT **adapter** (a dir with ``adapter_config.json`` and
``adapter_model.safetensors``, e.g. a LoRA Trainer's ``checkpoint-N``), applied on top of its
``start`` checkpoint (the run's start: aligned, or a base for control runs; a base for an adapter
aligned). A ``.gguf`` file (or a :class:`revlens.loading.GGUFFile`) is dequantized once into a cached
``save_pretrained`` dir (:func:`revlens.loading.gguf_dir`) and is that dir from then on.
A folder holding both full weights and adapter files is read as the **full weights**
(complete, they need no start model); see :func:`revlens.loading.classify`.

Identity: :meth:`Checkpoint.fingerprint` hashes the checkpoint's own files (an adapter: its
weights and its ``adapter_config.json``); :meth:`Checkpoint.model_fingerprint` identifies the
weights a model holds once it is loaded (an adapter: its files **and** its start's weights), and
is what cache keys and :meth:`revlens.LensModel.load` use.
"""

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias, no_type_check

import torch
from torch import Tensor

from revlens._types import PathLike
from revlens.errors import CheckpointError, HistoryError
from revlens.loading.gguf import GGUFFile
from revlens.model import WEIGHT_SUFFIXES, load_state_dict

__all__ = [
    "BaseInput",
    "Checkpoint",
    "CheckpointKind",
    "CheckpointSource",
    "HubRef",
    "Role",
    "check_source",
    "file_digest",
    "tensor_digest",
]

Role = Literal["base", "aligned", "run"]
CheckpointKind = Literal["full", "adapter"]


@dataclass(frozen=True)
class HubRef:
    """A checkpoint on the Hugging Face hub: a repo at a revision (e.g. Pythia's ``step1000``).

    ``repo_id`` may also be a local directory mirroring the hub repo, with one sub-directory per
    revision (how hub checkpoints are tested here, without a network).
    """

    repo_id: str
    revision: str
    cache_dir: str | None = None

    def resolve(self) -> Path:
        """A local ``save_pretrained`` dir for this revision (downloads if needed)."""
        local = Path(self.repo_id)
        if local.is_dir():
            path = local / self.revision
            if not path.is_dir():
                raise CheckpointError(
                    f"local hub mirror {local} has no revision dir {self.revision!r}"
                )
            return path
        try:
            from huggingface_hub import snapshot_download

            return Path(
                snapshot_download(
                    self.repo_id,
                    revision=self.revision,
                    cache_dir=self.cache_dir,
                    allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"],
                )
            )
        except Exception as exc:  # network, auth, missing revision: say which
            raise CheckpointError(
                f"cannot fetch {self.repo_id}@{self.revision} from the hub: {exc}"
            ) from exc


_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def file_digest(path: Path) -> str:
    """blake2b of a regular file's bytes (a device or pipe is refused: it could never end).

    Memoised per process by (path, inode, size, modification time), so a 14 GB checkpoint is
    hashed once, and again only when the file changes.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p} is not a regular file")
    st = p.stat()
    key = (str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    h = hashlib.blake2b(digest_size=16)
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def tensor_digest(sd: Mapping[str, Tensor]) -> str:
    """blake2b of names, dtypes, shapes and bytes of an in-memory state dict."""
    h = hashlib.blake2b(digest_size=16)
    for key in sorted(sd):
        t = sd[key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


CheckpointSource: TypeAlias = PathLike | Mapping[str, object] | torch.nn.Module | HubRef | GGUFFile
"""Where a checkpoint's weights are: a folder or weights file, an in-memory state dict or module,
a GGUF file (:class:`~revlens.loading.GGUFFile`) or a :class:`HubRef`."""

BaseInput: TypeAlias = (
    CheckpointSource | Sequence[CheckpointSource] | Mapping[str, CheckpointSource]
)
"""The base checkpoint(s) of a history: one source, a list of them, or a mapping name -> source."""


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """One checkpoint of a history.

    Attributes:
        name: unique name, e.g. ``"base"``, ``"aligned"``, ``"seed0/step-5"``.
        role: ``"base"``, ``"aligned"`` or ``"run"``.
        source: a dir, a weights file, an in-memory state dict / module, or a hub reference.
        run: run name for a run checkpoint.
        step: fine-tuning step (0 for aligned).
        start: the checkpoint an adapter is applied on (its run's start; for aligned, the first
            base); ``None`` for bases.
    """

    name: str
    role: Role
    source: CheckpointSource
    run: str | None = None
    step: int | None = None
    start: "Checkpoint | None" = None

    def local_path(self) -> Path | None:
        """Path of a file/dir source (a hub source is resolved, i.e. downloaded)."""
        if isinstance(self.source, HubRef):
            return self.source.resolve()
        from revlens.loading.gguf import gguf_dir, is_gguf

        if is_gguf(self.source):  # its dequantized save_pretrained dir (converted once, cached)
            return gguf_dir(self.source)
        if isinstance(self.source, (str, os.PathLike)):
            return Path(self.source)
        return None

    def _info(self) -> Any:
        cached = self.__dict__.get("_classified")
        if cached is None:
            from revlens.loading import classify

            path = self.local_path()
            try:
                cached = classify(path if path is not None else self.source)
            except CheckpointError as exc:
                raise CheckpointError(f"checkpoint {self.name}: {exc}") from exc
            if cached.kind == "trainer_run":
                raise CheckpointError(
                    f"checkpoint {self.name}: {path} is a Trainer output dir (checkpoint-N folders "
                    f"{list(cached.steps)}), not one checkpoint; pass it as a run (from_trainer_output)"
                )
            object.__setattr__(self, "_classified", cached)
        return cached

    @property
    def kind(self) -> CheckpointKind:
        """``"full"`` or ``"adapter"`` (read from the files, see the module docstring)."""
        return self._info().kind

    def weight_files(self) -> list[Path]:
        """The files that hold the checkpoint (an adapter's weights file; ``[]`` in memory)."""
        if self.local_path() is None:
            return []
        return list(self._info().files)

    def state_dict(self) -> dict[str, Tensor]:
        """The checkpoint's weights (Hugging Face parameter names; a full checkpoint only)."""
        if self.kind == "adapter":
            raise CheckpointError(
                f"checkpoint {self.name} is an adapter: load it into a model "
                "(LensModel.load) to get its merged weights"
            )
        path = self.local_path()
        try:
            return load_state_dict(path if path is not None else self.source)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {self.name}: {exc}") from exc

    def fingerprint(self) -> str:
        """Content hash of the checkpoint's own files (tensor bytes in memory; an adapter: its
        weights and ``adapter_config.json``)."""
        path = self.local_path()
        if path is None:
            return tensor_digest(self.state_dict())
        files = self.weight_files()
        if self.kind == "adapter":
            files = [*files, path / "adapter_config.json"]
        try:
            digests = "".join(file_digest(f) for f in files)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {self.name}: {exc}") from exc
        return hashlib.blake2b(digests.encode(), digest_size=16).hexdigest()

    def origin(self, path: Path | None = None) -> dict[str, Any]:
        """Where a converted checkpoint came from (``{}`` otherwise): ``gguf`` (its file name,
        sha256, architecture, quantization types, dtype) and ``package`` (a model package's name,
        version, file, sha256, licence), read beside the converted weights at ``path`` (default
        :meth:`local_path`; a hub source is not resolved for this)."""
        from revlens.loading.gguf import gguf_record
        from revlens.loading.packages import package_record

        if path is None and isinstance(self.source, HubRef):
            return {}
        path = path if path is not None else self.local_path()
        out: dict[str, Any] = {}
        if path is not None and (g := gguf_record(path)) is not None:
            out["gguf"] = {
                k: g.get(k) for k in ("file_name", "sha256", "architecture", "quant_types", "dtype")
            }
        if path is not None and (p := package_record(path)) is not None:
            out["package"] = p
        return out

    def model_fingerprint(self) -> str:
        """Identity of the weights a model holds once this checkpoint is loaded: the
        :meth:`fingerprint` of a full checkpoint; for an adapter, its files and its start's
        weights (the same adapter on another start model is another model)."""
        if self.kind == "full":
            return self.fingerprint()
        start = self.require_start()
        blob = f"adapter:{self.fingerprint()}|start:{start.model_fingerprint()}"
        return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()

    def require_start(self) -> "Checkpoint":
        """The full checkpoint an adapter is applied on.

        Raises:
            HistoryError: no start, or a start that is itself an adapter.
        """
        if self.start is None:
            raise HistoryError(
                f"checkpoint {self.name} is a PEFT adapter but has no start model in the "
                "history (adapters are applied on their run's start checkpoint)"
            )
        if self.start.kind != "full":
            raise HistoryError(
                f"checkpoint {self.name} is an adapter on {self.start.name}, which is itself an adapter: "
                f"merge {self.start.name} into a full checkpoint first (peft merge_and_unload + save_pretrained)"
            )
        return self.start

    def ref(self) -> Any:
        """A :class:`revlens.loading.Ref` of this checkpoint's own files (fingerprint included)."""
        from revlens.loading import Ref

        path = self.local_path()
        return Ref(
            path if path is not None else self.source,
            name=self.name,
            fingerprint=self.fingerprint(),
            kind=self.kind,
        )

    def start_ref(self) -> Any:
        """For an adapter, the :class:`~revlens.loading.Ref` of its start model; else ``None``."""
        return self.require_start().ref() if self.kind == "adapter" else None

    def signature(self) -> dict[str, tuple[int, ...]] | None:
        """Parameter name -> shape read from safetensors headers (``None`` if not cheap, or an adapter)."""
        if self.local_path() is None or self.kind == "adapter":
            return None
        files = self.weight_files()
        if not all(f.suffix == ".safetensors" for f in files):
            return None
        from safetensors import safe_open

        sig: dict[str, tuple[int, ...]] = {}
        for f in files:
            try:
                with safe_open(str(f), framework="pt") as handle:
                    for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                        sig[key] = tuple(handle.get_slice(key).get_shape())
            except Exception as exc:  # safetensors raises its own types on a bad header
                raise CheckpointError(
                    f"checkpoint {self.name}: cannot read weights file {f} "
                    f"(truncated or not a safetensors file?): {exc}"
                ) from None
        return sig

    def __repr__(self) -> str:
        src = (
            self.source
            if isinstance(self.source, (str, os.PathLike, HubRef))
            else type(self.source).__name__
        )
        kind = ""
        if (
            not isinstance(self.source, HubRef)
            and self.__dict__.get("_classified") is not None
            and self.kind == "adapter"
        ):
            kind = f", adapter on {self.start.name if self.start is not None else '?'}"
        return (
            f"Checkpoint({self.name!r}, role={self.role!r}, step={self.step}, source={src!s}{kind})"
        )


@no_type_check  # validates its own argument (typed errors), also under the test type-checker
def check_source(src: CheckpointSource, what: str) -> CheckpointSource:
    """Validate a checkpoint source up front (existence, weights or an adapter present, a
    regular file), reading no weights."""
    if isinstance(src, (Mapping, torch.nn.Module, HubRef)):
        return src
    from revlens.loading.gguf import gguf_dir, is_gguf

    if is_gguf(
        src
    ):  # a GGUF file: checked, then dequantized once into its cached save_pretrained dir
        try:
            return gguf_dir(src)
        except CheckpointError as exc:
            raise type(exc)(f"{what}: {exc}") from None
    if not isinstance(src, (str, os.PathLike)):
        raise CheckpointError(
            f"{what}: {type(src).__name__} is not a path, state dict, module or hub ref"
        )
    path = Path(src)
    if not path.exists():
        raise CheckpointError(f"{what}: {path} does not exist")
    if path.is_dir():
        from revlens.loading import classify

        try:
            info = classify(path)
        except CheckpointError as exc:
            if "adapter config" in str(
                exc
            ):  # a malformed adapter_config.json: say what is wrong with it
                raise CheckpointError(f"{what}: {exc}") from None
            raise CheckpointError(
                f"{what}: dir {path} holds no weights (model.safetensors / pytorch_model.bin, or a PEFT "
                "adapter: adapter_config.json + adapter_model.safetensors)"
            ) from None
        if info.kind == "trainer_run":
            raise CheckpointError(
                f"{what}: {path} is a Trainer output dir (checkpoint-N folders "
                f"{list(info.steps)}), not one checkpoint; pass it as a run (from_trainer_output)"
            )
    elif not path.is_file() or path.suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(
            f"{what}: {path} is not a weights file (expected a regular {' / '.join(WEIGHT_SUFFIXES)} file)"
        )
    return path
