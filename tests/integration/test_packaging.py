"""A wheel, installed non-editable outside the checkout, runs the lab and an analysis: the lab's
shipped checkpoints are package data and the lab's commands are found through entry points."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_runs_the_lab_and_analyze_from_another_directory(tmp_path):
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "wheel"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = (tmp_path / "wheel").glob("revlens-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path / "site"),
        "TQDM_DISABLE": "1",
        "OMP_NUM_THREADS": "1",
    }
    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "revlens.cli", *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    where = subprocess.run(
        [sys.executable, "-c", "import revlens.lab as l; print(l.__file__, l.asset_dir())"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert (
        str(tmp_path / "site") in where and str(ROOT) not in where
    )  # the installed copy, not the checkout
    run("lab", "--out", "X", "--seeds", "0", "--steps", "2", "--no-control", "--quiet")
    out = run(
        "analyze",
        "--history",
        "X",
        "--out",
        "A",
        "--no-progress",
        "--methods",
        "mean_diff",
        "--n-null",
        "20",
        "--n-bootstrap",
        "5",
        "--n-stability",
        "0",
    )
    assert (work / "A" / "report.html").is_file() and "report.html" in out
