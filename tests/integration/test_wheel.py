"""The released package: sdist + wheel built from this checkout, checked by twine, installed into a
fresh virtual environment outside the checkout and run from there.

``python -m build --no-isolation`` builds the sdist, then the wheel *from the unpacked sdist* (so a
file missing from the sdist — the lab's checkpoints, say — fails here). The fresh venv sees the
test interpreter's site-packages through a ``.pth`` line (torch, transformers... are not
downloaded again); ``.pth`` files there are not processed, so an editable install of revlens in
that environment is not importable, and the test asserts that ``revlens`` comes from the fresh venv.
The lab then runs from the checkpoints shipped as package data.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from timeouts import scaled

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd, *, cwd, env, timeout):
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=scaled(timeout)
    )
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return proc


def _need(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is not installed (pyproject [dev])")
        pytest.skip(f"{module} is not installed")


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    _need("build")
    _need("twine")
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1", HF_HUB_OFFLINE="1", PIP_NO_INDEX="1")

    # a copy of the source tree, so the build leaves nothing (egg-info, build/) in the checkout
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "site", "dist", "build", "*.egg-info", "__pycache__", ".cache", "artifacts",
        "demo-out", "out", "results", ".pytest_cache", ".ruff_cache"))  # fmt: skip
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)],
         cwd=tmp_path, env=env, timeout=600)  # fmt: skip
    wheels, sdists = sorted(dist.glob("revlens-*.whl")), sorted(dist.glob("revlens-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(dist.iterdir())
    _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, wheels + sdists)],
         cwd=tmp_path, env=env, timeout=120)  # fmt: skip

    # the wheel carries the lab's checkpoints and metadata a release needs
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert any(
        n.startswith("revlens/lab/assets/pair0/aligned/") and n.endswith(".safetensors")
        for n in names
    )
    assert "revlens/py.typed" in names
    meta = (
        zipfile.ZipFile(wheels[0])
        .read(next(n for n in names if n.endswith("dist-info/METADATA")))
        .decode()
    )
    assert (
        "Project-URL: Documentation" in meta
        and "Classifier: Programming Language :: Python :: 3" in meta
    )
    assert "Provides-Extra: docs" in meta

    # a fresh venv outside the checkout that reuses this interpreter's dependencies
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=tmp_path, env=env, timeout=60).stdout.strip())  # fmt: skip
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "zz_reuse_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
          "--no-compile", str(wheels[0])], cwd=tmp_path, env=env, timeout=300)  # fmt: skip

    where = _run([str(py), "-c", "import json, revlens; print(json.dumps([revlens.__file__, revlens.__version__]))"],
                 cwd=tmp_path, env=env, timeout=120).stdout  # fmt: skip
    file, _version = json.loads(where.strip().splitlines()[-1])
    assert Path(file).resolve().is_relative_to(env_dir.resolve()), (
        f"revlens imported from {file}, not the fresh venv"
    )
    assert not Path(file).resolve().is_relative_to(ROOT.resolve())

    revlens = env_dir / "bin" / "revlens"
    out = _run([str(revlens), "--help"], cwd=tmp_path, env=env, timeout=120).stdout
    for command in ("analyze", "ablate", "report", "weights", "lab", "replicate"):
        assert command in out, out
    _run(
        [str(revlens), "lab", "--out", str(tmp_path / "lab"), "--seeds", "0"],
        cwd=tmp_path,
        env=env,
        timeout=900,
    )
    assert (tmp_path / "lab").is_dir()
    _run([str(revlens), "analyze", "--history", str(tmp_path / "lab"), "--out", str(tmp_path / "report"),
          "--no-progress", "--n-null", "50", "--n-bootstrap", "10"], cwd=tmp_path, env=env, timeout=900)  # fmt: skip
    assert (tmp_path / "report" / "report.html").is_file()
    assert (tmp_path / "report" / "drift.csv").stat().st_size > 0
