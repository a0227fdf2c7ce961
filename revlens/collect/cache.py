"""On-disk cache of per-checkpoint statistics, keyed by content.

A key hashes the checkpoint's weights, the probe tokens and position weights, the sites, the
statistics asked for and the revlens version. Files are written to a temporary name and renamed
into place, so an interrupted collection leaves either a complete file or none; a corrupt file
(bad header, checksum mismatch) is detected, removed and recomputed.
"""

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from revlens._version import __version__
from revlens.collect.stats import CheckpointStats
from revlens.errors import CacheError

__all__ = ["StatsCache"]

log = logging.getLogger(__name__)
_MARKER = "revlens-cache.json"


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(key.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class StatsCache:
    """A directory of cached :class:`CheckpointStats`.

    Raises:
        CacheError: the directory was written by another revlens version.
    """

    def __init__(self, directory: Any) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        marker = self.directory / _MARKER
        if marker.is_file():
            try:
                version = json.loads(marker.read_text()).get("revlens_version")
            except json.JSONDecodeError:
                version = None
            if version != __version__:
                raise CacheError(
                    f"cache dir {self.directory} was written by revlens {version}; this is revlens "
                    f"{__version__}. Use another cache_dir or delete it."
                )
        else:
            self._atomic_write_text(marker, json.dumps({"revlens_version": __version__}))

    @staticmethod
    def key(**parts: Any) -> str:
        """Content key of a statistics request."""
        blob = json.dumps({**parts, "revlens_version": __version__}, sort_keys=True, default=str)
        return hashlib.blake2b(blob.encode(), digest_size=20).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / f"stats-{key}.safetensors"

    def get(self, key: str, name: str) -> CheckpointStats | None:
        """Cached statistics for ``key`` (renamed to checkpoint ``name``), or ``None``."""
        p = self.path(key)
        if not p.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            if meta.get("checksum") != _checksum(tensors) or meta.get("key") != key:
                raise ValueError("checksum mismatch")
            layers = json.loads(meta["layers"])
        except Exception as exc:  # any unreadable file is treated as absent and recomputed
            warnings.warn(f"corrupt statistics cache file {p.name} ({exc}); recomputing", stacklevel=2)
            p.unlink(missing_ok=True)
            return None
        return CheckpointStats.from_tensors(name, layers, tensors)

    def put(self, key: str, stats: CheckpointStats) -> None:
        """Store atomically."""
        from safetensors.torch import save_file

        tensors = stats.tensors()
        meta = {"key": key, "checksum": _checksum(tensors), "layers": json.dumps(stats.layers),
                "name": stats.name, "revlens_version": __version__}
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, self.path(key))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @staticmethod
    def _atomic_write_text(path: Path, text: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
