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
import warnings
from pathlib import Path

from revlens._io import atomic_file, write_text
from revlens._types import PathLike
from revlens._version import __version__
from revlens.collect.checkpoint import CheckpointStats
from revlens.errors import CacheError, RevlensError

__all__ = ["StatsCache"]

log = logging.getLogger(__name__)
_MARKER = "revlens-cache.json"


class StatsCache:
    """A directory of cached :class:`CheckpointStats`.

    Raises:
        CacheError: the directory was written by another revlens version.
    """

    @staticmethod
    def check_dir(directory: PathLike) -> Path:
        """Validate a cache directory before any work: a directory (or creatable), writable."""
        from revlens._io import check_writable_dir

        try:
            return check_writable_dir(directory, "cache_dir")
        except RevlensError as exc:
            raise CacheError(str(exc)) from None

    def __init__(self, directory: PathLike) -> None:
        self.directory = self.check_dir(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temp_files()
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
            write_text(marker, json.dumps({"revlens_version": __version__}))

    def _remove_stale_temp_files(self) -> None:
        """Temporary files of writers that died (their pid is in the name and no longer runs)."""
        for tmp in self.directory.glob(".stats-*.tmp"):
            parts = tmp.name.split(".")  # .stats-<key>.safetensors.<pid>.<random>.tmp
            pid = int(parts[-3]) if len(parts) >= 5 and parts[-3].isdigit() else None
            if pid is None or not _alive(pid):
                tmp.unlink(missing_ok=True)

    @staticmethod
    def key(**parts: object) -> str:
        """Content key of a statistics request."""
        blob = json.dumps({**parts, "revlens_version": __version__}, sort_keys=True, default=str)
        return hashlib.blake2b(blob.encode(), digest_size=20).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / f"stats-{key}.safetensors"

    def get(self, key: str, name: str) -> CheckpointStats | None:
        """Cached statistics for ``key`` (renamed to checkpoint ``name``), or ``None``. The
        checksum covers every byte (per-prompt references too); those stay in the file."""
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            stats, meta = CheckpointStats.read(p, name)
            if meta.get("key") != key:
                raise ValueError("key mismatch")
        except Exception as exc:  # any unreadable file is treated as absent and recomputed
            warnings.warn(
                f"corrupt statistics cache file {p.name} ({exc}); recomputing", stacklevel=2
            )
            p.unlink(missing_ok=True)
            return None
        return stats

    def put(self, key: str, stats: CheckpointStats) -> None:
        """Store atomically (a temporary file renamed into place)."""
        with atomic_file(self.path(key)) as tmp:
            stats.write(tmp, {"key": key, "name": stats.name, "revlens_version": __version__})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
