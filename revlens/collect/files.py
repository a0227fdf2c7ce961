"""Statistics files: safetensors written and read a block at a time, with a checksum.

A statistics file is a valid safetensors file (``safetensors.safe_open`` reads it) holding the
small tensors of a :class:`~revlens.collect.CheckpointStats` and, optionally, its per-prompt
references (a :class:`~revlens.collect.store.ReferenceStore`, possibly gigabytes). It is written
in one pass without materialising the references: the header is written first with a
fixed-width checksum placeholder, the data follow (hashed on the way), and the placeholder is
filled in at the end. Reading verifies the checksum over the same bytes (blake2b of each key and
its bytes, in key order) and leaves the references in the file (a store reading a layer at a
time); a truncated, altered or foreign file raises :class:`ValueError` naming the problem.
"""

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from revlens._types import PathLike
from revlens.collect.store import ReferenceStore

__all__ = ["read_stats_file", "write_stats_file"]

_CODES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_DTYPES = {v: k for k, v in _CODES.items()}
_PLACEHOLDER = "0" * 32
_BLOCK = 1 << 24


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _raw(t: Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous()
    return memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def write_stats_file(
    path: PathLike, tensors: Mapping[str, Tensor | ReferenceStore], metadata: Mapping[str, str]
) -> str:
    """Write ``tensors`` (tensors or reference stores) and ``metadata`` to ``path`` as safetensors;
    returns the checksum (also stored as ``metadata["checksum"]``)."""
    keys = sorted(tensors)
    header: dict[str, Any] = {
        "__metadata__": {**{k: str(v) for k, v in metadata.items()}, "checksum": _PLACEHOLDER}
    }
    offset = 0
    for k in keys:
        t = tensors[k]
        n = t.nbytes if isinstance(t, ReferenceStore) else t.numel() * t.element_size()
        header[k] = {
            "dtype": _CODES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-(8 + len(blob)) % 8)
    h = hashlib.blake2b(digest_size=16)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for k in keys:
            h.update(k.encode())
            t = tensors[k]
            for chunk in t.chunks() if isinstance(t, ReferenceStore) else (t,):
                raw = _raw(chunk)
                h.update(raw)
                f.write(raw)
        digest = h.hexdigest()
        at = blob.index(_PLACEHOLDER.encode())
        f.seek(8 + at)
        f.write(digest.encode())
        f.flush()
        os.fsync(f.fileno())
    return digest


def _header(f: Any, path: Path) -> tuple[dict[str, Any], int]:
    head = f.read(8)
    if len(head) != 8:
        raise ValueError("shorter than a safetensors header")
    (n,) = struct.unpack("<Q", head)
    if n > 100_000_000:
        raise ValueError(f"header length {n} is not plausible")
    try:
        header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"unreadable header ({exc})") from None
    return header, 8 + n


def read_stats_file(
    path: PathLike, *, stores: tuple[str, ...] = ("refs",), verify: bool = True
) -> tuple[dict[str, str], dict[str, Tensor | ReferenceStore]]:
    """``(metadata, tensors)`` of a file written by :func:`write_stats_file`; the keys in
    ``stores`` come back as file-backed :class:`ReferenceStore` s (nothing loaded).

    Raises:
        ValueError: truncated file, bad header, checksum mismatch (``verify``).
    """
    p = Path(path)
    size = p.stat().st_size
    out: dict[str, Tensor | ReferenceStore] = {}
    h = hashlib.blake2b(digest_size=16)
    with open(p, "rb") as f:
        header, start = _header(f, p)
        meta = dict(header.pop("__metadata__", {}) or {})
        for k in sorted(header):
            info = header[k]
            dtype = _DTYPES.get(info.get("dtype"))
            if dtype is None:
                raise ValueError(f"tensor {k!r} has unsupported dtype {info.get('dtype')!r}")
            begin, end = (int(x) for x in info["data_offsets"])
            shape = [int(s) for s in info["shape"]]
            numel = 1
            for s in shape:
                numel *= s
            if end - begin != numel * _itemsize(dtype) or start + end > size:
                raise ValueError(f"tensor {k!r} does not fit the file (truncated?)")
            h.update(k.encode())
            f.seek(start + begin)
            if k in stores:
                if verify:
                    left = end - begin
                    while left:
                        chunk = f.read(min(_BLOCK, left))
                        if not chunk:
                            raise ValueError("truncated")
                        h.update(chunk)
                        left -= len(chunk)
                out[k] = ReferenceStore.from_file(p, start + begin, shape, dtype)
            else:
                data = bytearray(f.read(end - begin))
                h.update(data)
                t = (
                    torch.frombuffer(data, dtype=torch.uint8)
                    if data
                    else torch.empty(0, dtype=torch.uint8)
                )
                out[k] = t.view(dtype).reshape(shape) if numel else torch.empty(shape, dtype=dtype)
    if verify and meta.get("checksum") != h.hexdigest():
        raise ValueError("checksum mismatch")
    return meta, out
