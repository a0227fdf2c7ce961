"""Files written atomically, directories published atomically, paths kept inside their folder.

- :func:`write_text` / :func:`write_json`: a temporary file in the same folder, ``fsync``, then
  ``os.replace``: a reader sees the old file or the new one, never half of one; the temporary
  file is removed on every path (also on ``KeyboardInterrupt``).
- :func:`publish_dir`: a result directory is written under a temporary name and renamed into
  place when complete; an earlier result at that path is replaced only then. What it writes last
  is a manifest listing every file with its size, so :func:`check_manifest` can refuse a
  directory that is incomplete or was changed, and name the file.
- :func:`confined`: a relative path from a saved file resolved inside its directory (``../..``
  and absolute paths are refused).
- :func:`check_writable_dir`: an output directory is checked *before* any long work starts.
"""

import errno
import glob
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from revlens.errors import ConfigError, OutputError

__all__ = [
    "MANIFEST",
    "atomic_file",
    "check_manifest",
    "check_writable_dir",
    "confined",
    "probe_write",
    "publish_dir",
    "read_json",
    "remove_stale",
    "write_json",
    "write_text",
]

MANIFEST = "revlens-manifest.json"


@contextmanager
def atomic_file(path: Any) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it replaces ``path``
    (``os.replace``); on any error (also ``KeyboardInterrupt``) it is removed."""
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent
        )
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        yield Path(tmp)
        os.replace(tmp, out)
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Any, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (parents created); returns the path."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def write_json(path: Any, obj: Any, *, indent: int | None = 1) -> Path:
    """``json.dumps(obj)`` written atomically (NaN is refused: write ``None`` instead)."""
    return write_text(path, json.dumps(obj, indent=indent, default=str, allow_nan=False))


def read_json(path: Any, what: str, *, error: type[Exception] = ConfigError) -> Any:
    """Parse a JSON file; a missing, unreadable or malformed file raises ``error`` naming it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} {p}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} {p} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def confined(root: Any, relative: Any, what: str) -> Path:
    """``root / relative``, refusing absolute paths and paths that leave ``root``."""
    rel = Path(str(relative))
    if rel.is_absolute() or not str(relative):
        raise ConfigError(f"{what}: path {str(relative)!r} must be relative to {root}")
    base = Path(root).resolve()
    out = (base / rel).resolve()
    if out != base and base not in out.parents:
        raise ConfigError(f"{what}: path {str(relative)!r} leaves its directory {root}")
    return Path(root) / rel


def probe_write(directory: Path, what: str, target: Path) -> None:
    """Create and remove a small file in ``directory``: the only test of writability that holds
    for root, read-only mounts, sysfs and full disks alike (``os.access`` says yes to root)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".revlens-probe-", dir=directory)
    except OSError as exc:
        raise OutputError(
            f"{what} {target}: cannot write in {directory} ({exc.strerror or exc})"
        ) from None
    try:
        os.write(fd, b"revlens")
    except OSError as exc:
        raise OutputError(
            f"{what} {target}: cannot write in {directory} ({exc.strerror or exc})"
        ) from None
    finally:
        os.close(fd)
        os.unlink(name)


def check_writable_dir(path: Any, what: str = "--out", *, create: bool = False) -> Path:
    """Validate an output directory before work starts: it may exist (as a directory) or not;
    a file is written and removed in it (or in its nearest existing parent) to prove it can be
    written. ``create=True`` creates a missing directory (parents too) first.

    Raises:
        OutputError: a file in the way, a parent that is not a directory, or no write permission.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what} {p} exists and is not a directory")
    if create and not p.exists():
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{what} {p} cannot be created ({exc.strerror or exc})") from None
    probe = p if p.exists() else next((q for q in p.parents if q.exists()), Path("."))
    if not probe.is_dir():
        raise OutputError(f"{what} {p}: {probe} is not a directory")
    probe_write(probe, what, p)
    return p


def _manifest(root: Path) -> dict[str, Any]:
    files = {
        f.relative_to(root).as_posix(): f.stat().st_size
        for f in sorted(root.rglob("*"))
        if f.is_file() and f.name != MANIFEST
    }
    return {"format": "revlens-manifest/1", "files": files}


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where
    the system or file system cannot, so the caller falls back to two renames."""
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale(dest: Path) -> list[Path]:
    """Remove what killed writers of ``dest`` left beside it (``.{name}.tmp-*`` / ``.old-*``
    folders whose process is gone; folders of a live process are kept). Returns what was removed."""
    removed = []
    for kind in ("tmp", "old"):
        for cand in dest.parent.glob(f".{glob.escape(dest.name)}.{kind}-*"):
            parts = cand.name[len(f".{dest.name}.{kind}-") :].split("-")
            pid = int(parts[0]) if len(parts) == 2 and parts[0].isdigit() else None
            if cand.is_dir() and (pid is None or not _alive(pid)):
                shutil.rmtree(cand, ignore_errors=True)
                removed.append(cand)
    return removed


@contextmanager
def publish_dir(path: Any) -> Iterator[Path]:
    """Write a result directory atomically: yields a fresh temporary directory beside ``path``;
    on success a manifest is written into it and it replaces ``path`` in one step (an atomic
    directory exchange where the file system has one, else two renames); an earlier directory
    there is removed only after the new one is in place. On error or interrupt nothing is left
    behind, and leftovers of killed earlier writers are removed first (:func:`remove_stale`).

    Raises:
        OutputError: ``path`` exists and is not a directory, or its parent is not writable.
    """
    dest = Path(path)
    check_writable_dir(dest, "output directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(dest)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = dest.parent / f".{dest.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
        write_json(tmp / MANIFEST, _manifest(tmp))
        if dest.exists() and _exchange(tmp, dest):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old directory
            return
        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{tag}"
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_manifest(root: Any, what: str) -> None:
    """Refuse a result directory that is incomplete (no manifest: an interrupted write) or whose
    files differ from its manifest (missing or changed size), naming the file."""
    d = Path(root)
    man = d / MANIFEST
    if not man.is_file():
        raise ConfigError(
            f"{what} {d} is incomplete: it has no {MANIFEST} (was its writing interrupted?)"
        )
    listed = read_json(man, f"{what} manifest").get("files", {})
    for name, size in listed.items():
        f = confined(d, name, f"{what} manifest")
        if not f.is_file():
            raise ConfigError(f"{what} {d} is incomplete: {name} is missing")
        if f.stat().st_size != size:
            raise ConfigError(f"{what} {d}: {name} has changed since it was written (size differs)")
