"""Per-checkpoint readers: one tensor (or one LoRA factor pair) at a time, never a state dict.

A full checkpoint is read through :mod:`revlens.loading`'s plan (keys mapped as
``from_pretrained`` maps them, tensors streamed one by one from safetensors, ``.bin`` or memory).
A PEFT LoRA adapter gives, per parameter, its update relative to the run's start model in
factor form, ``ΔW = B · A · scale`` (never multiplied out), or a dense update for the tensors an
adapter stores whole (``modules_to_save``, ``lora_bias``).
"""

import math
import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from revlens._types import WeightsSource
from revlens.errors import CheckpointError, ConfigError
from revlens.history import Checkpoint
from revlens.loading.swap import check_finite
from revlens.weights.catalog import Catalog, Param

__all__ = [
    "AdapterReader",
    "BufferPool",
    "Dense",
    "FullReader",
    "LowRank",
    "Readers",
    "Replacement",
    "open_reader",
]


@dataclass
class LowRank:
    """``ΔW = scale · B · A`` in the oriented ``[out, in]`` frame: ``B [out, r]``, ``A [r, in]``."""

    b: Tensor
    a: Tensor
    scale: float


@dataclass
class Dense:
    """A dense update ``ΔW`` (oriented)."""

    delta: Tensor


@dataclass
class Replacement:
    """A tensor the adapter stores whole: ``ΔW = value − W_start`` (oriented)."""

    value: Tensor


class BufferPool:
    """Reusable read buffers, by (shape, dtype): reading into memory that is already mapped avoids a
    page fault per 4 KiB (a fresh allocation's cost, ~2x the copy itself). A buffer goes back to the
    pool with :meth:`release` once its values were copied out (the stream converts every tensor to
    its compute dtype first; a tensor that *is* the buffer, no copy made, is never released)."""

    def __init__(self) -> None:
        import threading

        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._lent: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        with self._lock:
            free = self._free.get((shape, dtype))
            t = free.pop() if free else None
        if t is None:
            t = torch.empty(shape, dtype=dtype)
        with self._lock:
            self._lent[t.data_ptr()] = t
        return t

    def release(self, view: torch.Tensor, *, reuse: bool = True) -> None:
        """Take a lent buffer back (``reuse=False``: forget it — its memory lives on in the caller)."""
        with self._lock:
            t = self._lent.pop(view.data_ptr(), None)
            if t is not None and reuse:
                self._free.setdefault((tuple(t.shape), t.dtype), []).append(t)


class FullReader:
    """A full checkpoint, read one parameter at a time (oriented, as stored).

    ``check_finite``: refuse NaN/inf in every tensor read (one ``aminmax`` pass). The stream turns it
    off and checks the sums it computes anyway (a NaN or inf anywhere makes them non-finite), which
    is free; the blocker keeps it.
    """

    kind = "full"
    check_finite = True
    pool: "BufferPool | None" = None

    def __init__(self, source: WeightsSource, name: str, catalog: Catalog) -> None:
        from revlens.loading import make_plan, open_source

        self.name, self.catalog = name, catalog
        self.source = open_source(source, name=name)
        try:
            plan = make_plan(self.source, catalog.targets, catalog.model, strict=True)
        except Exception:
            self.source.close()
            raise
        self._entries = {catalog.leader(t): e for e in plan.entries for t in e.targets}
        self._group: tuple[int, dict[str, Tensor]] | None = None

    def nbytes(self) -> int:
        """Bytes of the checkpoint's tensors (headers only)."""
        return self.source.nbytes()

    def position(self, param: Param) -> tuple[str, int]:
        """Where the parameter's bytes are: ``(file, byte offset)`` (offset 0 where the source does
        not say). Reading parameters in this order reads every file front to back."""
        entry = self._entries.get(param.name)
        if entry is None:
            return ("", 0)
        key = entry.keys[0]
        offsets = getattr(self.source, "_offsets", None) or {}  # SafetensorsSource knows them
        return (self.source.info(key).file, int(offsets.get(key, 0)))

    def read(self, param: Param) -> Tensor:
        """The parameter's stored tensor, oriented (a converter group is converted once)."""
        entry = self._entries.get(param.name)
        if entry is None:
            raise CheckpointError(f"checkpoint {self.name} does not hold parameter {param.name!r}")
        if entry.converter is None:
            value = self._read(entry.keys[0])
        else:
            if self._group is None or self._group[0] != id(entry):
                from revlens.loading.swap import (
                    _convert,  # transformers' converter ops, as loading runs them
                )

                out = _convert(entry, self.source, self.catalog.targets, self.catalog.model)
                self._group = (id(entry), {self.catalog.leader(k): v for k, v in out.items()})
            value = self._group[1][param.name]
        if self.check_finite:
            check_finite(value, checkpoint=self.name, name=param.name)
        return param.orient(value)

    def advise(self, param: Param) -> int:
        """Ask the kernel to start reading ``param``'s bytes now (``posix_fadvise(WILLNEED)``: an
        asynchronous read into the page cache, not into this process), so that reading it later is a
        copy from memory. Returns the bytes advised (0: the source has no file offsets, or no fadvise)."""
        entry = self._entries.get(param.name)
        offsets = getattr(self.source, "_offsets", None)  # SafetensorsSource's data offsets
        handle = getattr(self.source, "_handle", None)
        if (
            entry is None
            or entry.converter is not None
            or not offsets
            or handle is None
            or not hasattr(os, "posix_fadvise")
        ):
            return 0
        key = entry.keys[0]
        info = self.source.info(key)
        nbytes = info.dtype.itemsize * math.prod(info.shape)
        try:
            os.posix_fadvise(
                handle(info.file).fileno(), offsets[key], nbytes, os.POSIX_FADV_WILLNEED
            )
        except OSError:  # advice only
            return 0
        return nbytes

    def _read(self, key: str) -> Tensor:
        reader = getattr(
            self.source, "_read_bytes", None
        )  # SafetensorsSource: positioned reads into a buffer
        info = self.source.info(key)
        if self.pool is None or reader is None or not info.shape or 0 in info.shape:
            return self.source.read(key)
        out = self.pool.take(info.shape, info.dtype)
        try:
            reader(key, out)
        except CheckpointError:
            raise
        except Exception as exc:  # as TensorSource.read reports a damaged file
            raise CheckpointError(f"cannot read tensor {key!r} from {info.file}: {exc}") from exc
        return out

    def close(self) -> None:
        self.source.close()


class AdapterReader:
    """A PEFT LoRA adapter: per parameter its update relative to the run's start model."""

    kind = "adapter"

    def __init__(self, path: Path, name: str, catalog: Catalog) -> None:
        from revlens.loading import read_adapter
        from revlens.loading.plan import name_resolver

        self.name, self.catalog = name, catalog
        self.adapter = read_adapter(
            Path(path), catalog.targets, name_resolver(catalog.model, catalog.targets)
        )
        dora = [m.module for m in self.adapter.modules if "lora_magnitude_vector" in m.keys]
        if dora:
            self.adapter.close()
            raise ConfigError(
                f"adapter {name}: DoRA modules {dora[:3]} do not update by B·A·scale; merge the "
                "adapter (merge_and_unload) and save a full checkpoint to read it in weight space"
            )
        lead = catalog.leader
        self._lowrank = {lead(m.weight): m for m in self.adapter.modules}
        self._bias = {lead(m.bias): m for m in self.adapter.modules if "lora_B.bias" in m.keys}
        self._replace = {lead(n): k for n, k in self.adapter.replacements.items()}

    def nbytes(self) -> int:
        return self.adapter.source.nbytes()

    def touched(self) -> set[str]:
        """Leader names of the parameters the adapter changes."""
        return set(self._lowrank) | set(self._bias) | set(self._replace)

    def delta(self, param: Param) -> LowRank | Dense | Replacement | None:
        """The parameter's update (``None``: the adapter leaves it unchanged)."""
        src = self.adapter.source
        if param.name in self._replace:
            return Replacement(param.orient(src.read(self._replace[param.name])))
        if param.name in self._lowrank:
            mod = self._lowrank[param.name]
            a_key, b_key = (
                ("lora_embedding_A", "lora_embedding_B") if mod.embedding else ("lora_A", "lora_B")
            )
            a, b = src.read(mod.keys[a_key]), src.read(mod.keys[b_key])
            check_finite(a, checkpoint=self.name, name=f"{mod.module}.{a_key}")
            check_finite(b, checkpoint=self.name, name=f"{mod.module}.{b_key}")
            return LowRank(b, a, float(mod.scaling))
        if param.name in self._bias:
            mod = self._bias[param.name]
            return Dense(src.read(mod.keys["lora_B.bias"]) * float(mod.scaling))
        return None

    def close(self) -> None:
        self.adapter.close()


def open_reader(checkpoint: Checkpoint, catalog: Catalog) -> FullReader | AdapterReader:
    """The reader of a :class:`~revlens.history.Checkpoint` (full weights or a PEFT adapter)."""
    from revlens.loading import classify

    path = checkpoint.local_path()
    info = classify(path if path is not None else checkpoint.source)
    if info.kind == "trainer_run":
        raise CheckpointError(
            f"checkpoint {checkpoint.name}: {path} is a Trainer run of checkpoint-N folders, "
            "not one checkpoint"
        )
    if info.kind == "adapter":
        return AdapterReader(info.path, checkpoint.name, catalog)
    return FullReader(path if path is not None else checkpoint.source, checkpoint.name, catalog)


class Readers:
    """Open readers of many checkpoints, closed together."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self.by_name: dict[str, FullReader | AdapterReader] = {}

    def open(self, checkpoint: Checkpoint, catalog: Catalog) -> FullReader | AdapterReader:
        reader = open_reader(checkpoint, catalog)
        self._stack.callback(reader.close)
        self.by_name[checkpoint.name] = reader
        return reader

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_name)

    def close(self) -> None:
        self._stack.close()
