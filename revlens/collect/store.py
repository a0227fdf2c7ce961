"""Per-prompt references of one checkpoint: in memory up to a budget, in a file beyond it.

The paired-PCA and probe directions (and Ledoit–Wolf whitening) need every prompt's activation
of the reference checkpoints (base and aligned), not only sums. A :class:`ReferenceStore` keeps
them

- in the **dtype the model produced** (``float32``, ``bfloat16``, ``float16``; ``float64`` input
  is stored as ``float32``), never widened;
- only at the layers asked for (``collect(keep_layers=...)``), reduced by the position rule;
- **layer-major**, ``[layer, prompt, d]``, so an estimator reads one layer as one contiguous
  block (:meth:`ReferenceStore.layer`) and never holds all layers at once;
- in memory while a shared :class:`MemoryBudget` allows (``collect(memory_budget=...)``), else
  in a file (an unlinked temporary file in ``spill_dir``, or a statistics file on disk), written
  and read with ``pwrite`` / ``preadv`` a block at a time, so resident memory does not grow with
  the number of prompts.

Size: ``n_layers × n_prompts × d_model × itemsize`` bytes per reference checkpoint; at 7B
(d 4096, 33 sites, 10 000 prompts) 2.7 GB in bfloat16, 5.4 GB in float32 (``docs/scale.md``).
"""

import os
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from revlens._types import PathLike
from revlens.errors import ConfigError, OutputError, ShapeMismatchError

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "MemoryBudget",
    "ReferenceStore",
    "check_spill_dir",
    "store_dtype",
]

DEFAULT_MEMORY_BUDGET = 16 << 20
"""Bytes of per-prompt references one :func:`revlens.collect` call keeps in memory (16 MiB: under 5 %
of a booted process, so peak memory stays flat as prompts grow; beyond it, references go to a file)."""

_STORED = (torch.float32, torch.bfloat16, torch.float16)


def store_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype references of activations in ``dtype`` are kept in (never wider than float32)."""
    return dtype if dtype in _STORED else torch.float32


class MemoryBudget:
    """Bytes that stores may still take in memory (``None``: unlimited), shared by one collect."""

    def __init__(self, nbytes: int | None = DEFAULT_MEMORY_BUDGET) -> None:
        if nbytes is not None and (isinstance(nbytes, bool) or int(nbytes) < 0):
            raise ConfigError(
                f"memory_budget must be None or a number of bytes >= 0, got {nbytes!r}"
            )
        self.left = None if nbytes is None else int(nbytes)

    def take(self, nbytes: int) -> bool:
        """Reserve ``nbytes`` if they fit; ``False`` (nothing reserved) if not."""
        if self.left is None:
            return True
        if nbytes > self.left:
            return False
        self.left -= nbytes
        return True


def _bytes_of(t: Tensor) -> memoryview:
    return memoryview(t.contiguous().view(torch.uint8).numpy()).cast("B")


class _File:
    """An open file descriptor, closed when its last user is collected."""

    def __init__(self, fd: int, path: str | None) -> None:
        self.fd, self.path = fd, path
        self._close = weakref.finalize(self, os.close, fd)

    def pwrite(self, data: memoryview, offset: int) -> None:
        done = 0
        while done < len(data):
            done += os.pwrite(self.fd, data[done:], offset + done)

    def pread_into(self, out: Tensor, offset: int) -> Tensor:
        view = _bytes_of(out) if out.is_contiguous() else None
        if view is None:  # pragma: no cover - out is always freshly allocated
            raise ValueError("pread_into needs a contiguous tensor")
        done = 0
        while done < len(view):
            n = os.preadv(self.fd, [view[done:]], offset + done)
            if n == 0:
                raise OSError(f"unexpected end of file {self.path} at byte {offset + done}")
            done += n
        return out


class ReferenceStore:
    """Per-prompt activations ``[layer, prompt, d]`` of one checkpoint, in memory or in a file.

    Build with :meth:`allocate` (then :meth:`write` batches), :meth:`from_tensor` or
    :meth:`from_file`. Read with :meth:`layer` (one layer ``[prompt, d]``) or :meth:`to_tensor`.
    Pickling (a worker's result) ships the values in memory.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        dtype: torch.dtype,
        *,
        data: Tensor | None = None,
        file: _File | None = None,
        offset: int = 0,
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        self._data, self._file, self._offset = data, file, int(offset)

    # ------------------------------------------------------------------ construction
    @classmethod
    def allocate(
        cls,
        n_layers: int,
        n_prompts: int,
        d: int,
        dtype: torch.dtype,
        *,
        budget: MemoryBudget | None = None,
        spill_dir: PathLike | None = None,
    ) -> "ReferenceStore":
        """An empty store; in memory if ``budget`` allows, else in an unlinked file in ``spill_dir``
        (default: the temporary directory, ``TMPDIR``)."""
        dtype = store_dtype(dtype)
        shape = (int(n_layers), int(n_prompts), int(d))
        nbytes = shape[0] * shape[1] * shape[2] * torch.empty((), dtype=dtype).element_size()
        if budget is None or budget.take(nbytes):
            return cls(shape, dtype, data=torch.empty(shape, dtype=dtype))
        directory = str(spill_dir) if spill_dir is not None else None
        try:
            fd, path = tempfile.mkstemp(prefix="revlens-refs-", suffix=".bin", dir=directory)
        except OSError as exc:
            where = directory if directory is not None else tempfile.gettempdir()
            raise OutputError(
                f"spill_dir {where}: cannot write the per-prompt references ({exc.strerror or exc})"
            ) from None
        try:
            os.ftruncate(fd, nbytes)
            os.unlink(path)  # nothing is left behind, whatever happens to this process
        except OSError as exc:
            os.close(fd)
            raise OutputError(
                f"spill_dir {directory}: cannot hold {nbytes} bytes ({exc.strerror or exc})"
            ) from None
        return cls(shape, dtype, file=_File(fd, path))

    @classmethod
    def from_tensor(cls, x: Float[Tensor, "layer prompt d"]) -> "ReferenceStore":
        """A store in memory holding ``x`` (converted to the stored dtype)."""
        x = x.detach().to("cpu", store_dtype(x.dtype)).contiguous()
        return cls(tuple(x.shape), x.dtype, data=x)

    @classmethod
    def from_file(
        cls, path: PathLike, offset: int, shape: Sequence[int], dtype: torch.dtype
    ) -> "ReferenceStore":
        """A read-only view of ``shape`` values at byte ``offset`` of the file ``path`` (kept open,
        so a later rename or removal of the file does not affect it)."""
        fd = os.open(str(path), os.O_RDONLY)
        return cls(tuple(shape), dtype, file=_File(fd, str(path)), offset=offset)

    def __reduce__(self) -> Any:
        return (ReferenceStore.from_tensor, (self.to_tensor(),))

    # ------------------------------------------------------------------ properties
    @property
    def n_layers(self) -> int:
        return self.shape[0]

    @property
    def n_prompts(self) -> int:
        return self.shape[1]

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2] * self.itemsize

    @property
    def on_disk(self) -> bool:
        """Whether the values live in a file (``False``: in memory)."""
        return self._data is None

    def __repr__(self) -> str:
        where = "disk" if self.on_disk else "memory"
        layer, prompt, d = self.shape
        return f"ReferenceStore([layer {layer}, prompt {prompt}, d {d}], {self.dtype}, {where})"

    # ------------------------------------------------------------------ writing
    def write(self, indices: Tensor, x: Float[Tensor, "batch layer d"]) -> None:
        """Put the rows of ``x`` (``[batch, layer, d]``) at prompt ``indices``."""
        if x.ndim != 3 or x.shape[1] != self.shape[0] or x.shape[2] != self.shape[2]:
            raise ShapeMismatchError(f"cannot write {tuple(x.shape)} into a store of {self.shape}")
        idx = indices.to("cpu", torch.long)
        x = x.detach().to("cpu", self.dtype).transpose(0, 1).contiguous()  # [layer, batch, d]
        if self._data is not None:
            self._data[:, idx] = x
            return
        if self._file is None:
            raise ConfigError("this reference store is read-only")
        row = self.shape[2] * self.itemsize
        start = int(idx[0]) if len(idx) else 0
        contiguous = bool((idx == torch.arange(start, start + len(idx))).all())
        for j in range(self.shape[0]):
            base = self._offset + j * self.shape[1] * row
            if contiguous:
                self._file.pwrite(_bytes_of(x[j]), base + start * row)
            else:
                for k, i in enumerate(idx.tolist()):
                    self._file.pwrite(_bytes_of(x[j, k]), base + i * row)

    # ------------------------------------------------------------------ reading
    def layer(self, j: int) -> Float[Tensor, "prompt d"]:
        """Layer ``j``'s values ``[prompt, d]`` (a view in memory, a fresh tensor from disk)."""
        if not 0 <= j < self.shape[0]:
            raise IndexError(f"layer position {j} outside a store of {self.shape[0]} layers")
        if self._data is not None:
            return self._data[j]
        out = torch.empty(self.shape[1], self.shape[2], dtype=self.dtype)
        return self._file.pread_into(
            out, self._offset + j * self.shape[1] * self.shape[2] * self.itemsize
        )

    def to_tensor(self) -> Float[Tensor, "layer prompt d"]:
        """Everything ``[layer, prompt, d]`` in memory."""
        if self._data is not None:
            return self._data
        return torch.stack([self.layer(j) for j in range(self.shape[0])])

    def chunks(self) -> Iterator[Tensor]:
        """The values in storage order, one layer at a time (for writing them elsewhere)."""
        for j in range(self.shape[0]):
            yield self.layer(j)

    def within(
        self, budget: MemoryBudget | None, spill_dir: PathLike | None = None
    ) -> "ReferenceStore":
        """This store if it is on disk or fits ``budget``; else a copy in a file in ``spill_dir``."""
        if self.on_disk or budget is None or budget.take(self.nbytes):
            return self
        out = ReferenceStore.allocate(
            *self.shape, self.dtype, budget=MemoryBudget(0), spill_dir=spill_dir
        )
        row = self.shape[2] * self.itemsize
        for j in range(self.shape[0]):
            out._file.pwrite(_bytes_of(self.layer(j)), j * self.shape[1] * row)  # type: ignore[union-attr]
        return out

    def select(self, positions: Sequence[int]) -> "ReferenceStore":
        """A store with only the layers at ``positions`` (in memory)."""
        return ReferenceStore.from_tensor(torch.stack([self.layer(j) for j in positions]))

    @staticmethod
    def concat(
        stores: Sequence["ReferenceStore"], *, spill_dir: PathLike | None = None
    ) -> "ReferenceStore":
        """Prompt shards side by side (in order): in memory, or on disk if any shard is."""
        first = stores[0]
        for s in stores[1:]:
            if (
                s.shape[0] != first.shape[0]
                or s.shape[2] != first.shape[2]
                or s.dtype != first.dtype
            ):
                raise ShapeMismatchError(f"cannot join reference stores {first} and {s}")
        n = sum(s.shape[1] for s in stores)
        budget = MemoryBudget(0) if any(s.on_disk for s in stores) else None
        out = ReferenceStore.allocate(
            first.shape[0], n, first.shape[2], first.dtype, budget=budget, spill_dir=spill_dir
        )
        start = 0
        for s in stores:
            for j in range(s.shape[0]):
                block = s.layer(j)
                if out._data is not None:
                    out._data[j, start : start + s.shape[1]] = block
                else:
                    row = out.shape[2] * out.itemsize
                    out._file.pwrite(_bytes_of(block), j * n * row + start * row)
            start += s.shape[1]
        return out


def check_spill_dir(spill_dir: PathLike) -> str:
    """Validate ``spill_dir`` before any forward: created when missing (parents too), then a file
    written and removed in it; returns it as a string.

    Raises:
        OutputError: a file in the way, or a directory that cannot be created or written.
    """
    from revlens._io import check_writable_dir

    return str(check_writable_dir(spill_dir, "spill_dir", create=True))
