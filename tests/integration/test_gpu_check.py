"""benchmarks/gpu_check.py: skips cleanly without CUDA; its code runs end to end on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from timeouts import scaled

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=scaled(1200),
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_skips_cleanly_without_a_gpu():
    proc = _run(env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        proc.stdout.strip()
        == "gpu_check: no CUDA device here; skipped (pass --device cpu to run it on the CPU)"
    )


def test_the_real_track_part_skips_cleanly_without_a_gpu(tmp_path):
    """``--real`` (the real track at full size) says it skipped, exits 0 and writes nothing."""
    out = tmp_path / "real.json"
    proc = _run("--real", "--out", str(out), env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().startswith("gpu_check --real: no CUDA device here; skipped")
    assert "revlens replicate --track real" in proc.stdout
    assert not out.exists()


@pytest.mark.slow
def test_runs_collect_ablation_and_blocker_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = _run("--device", "cpu", "--dtype", "float32", "--size", "tiny", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert (
        res["collect"]["max_abs_diff_last_layer_mean"] < 1e-4
    )  # the same numbers as the bare forwards
    assert res["collect"]["prompts_per_s"] > 0 and res["bare_hf"]["prompts_per_s"] > 0
    assert len(res["ablation"]["layers"]) == 2 and res["ablation"]["steps"][-1] == 10
    assert res["blocker"]["update"]["s_per_step"] > 0
    assert "collect" in proc.stdout and "blocker update" in proc.stdout
