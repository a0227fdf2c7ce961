"""The tutorials in ``tutorials/`` run top to bottom and are stored without outputs.

Each notebook is executed with nbclient on a ``python3`` kernel spec written for this interpreter
(so the kernel is the venv's python, whatever kernels the user has installed), with
``REVLENS_TUTORIAL_SMALL=1`` (the notebooks' small settings), in a temporary working dir and
``TMPDIR``, so nothing is written into the repo. The notebooks assert their own claims in cells:
a claim that stops holding fails the test with the cell's error.
"""

import json
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from ipykernel.kernelspec import write_kernel_spec  # noqa: E402

from timeouts import scaled  # noqa: E402

TUTORIALS = Path(__file__).resolve().parents[2] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
EXPECTED = [
    "01_quickstart.ipynb",
    "02_directions_and_nulls.ipynb",
    "03_causal_ablation.ipynb",
    "04_blocking_and_monitoring.ipynb",
    "05_bring_your_own_model.ipynb",
    "06_chat_and_behaviour.ipynb",
    "07_weight_space.ipynb",
    "08_real_data.ipynb",
    "09_real_weights.ipynb",
    "10_refusal_direction.ipynb",
    "11_defenses.ipynb",
    "12_real_track.ipynb",
]


def test_all_tutorials_present() -> None:
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cell"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
            assert cell.outputs == [], f"{path.name} cell {i} has stored outputs"
        assert "attachments" not in cell or not cell.attachments, f"{path.name} cell {i}"
    # the small-settings switch is in the first code cell, as the tutorials promise
    assert 'os.environ.get("REVLENS_TUTORIAL_SMALL") == "1"' in code[0].source
    # every notebook checks its claims
    assert any("assert " in c.source for c in code), f"{path.name} asserts nothing"


def _plotly_outputs(nb) -> int:
    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "application/vnd.plotly.v1+json" in out.get("data", {}):
                n += 1
    return n


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tutorial_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVLENS_TUTORIAL_SMALL", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # a "python3" kernel spec for *this* interpreter, found before any user-level one
    kernels = tmp_path / "jupyter"
    write_kernel_spec(kernels / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(kernels))
    nb = nbformat.read(path, as_version=4)
    # last cell: which interpreter the kernel runs (must be this one, i.e. the venv's)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    before = sorted(p.name for p in TUTORIALS.iterdir())
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=int(scaled(3600)),  # a hung cell, not a slow one: no test depends on speed
        startup_timeout=int(scaled(600)),  # a kernel start can take minutes on a loaded machine
        resources={"metadata": {"path": str(tmp_path)}},
    )
    t0 = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - t0
    errors = [
        out
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
    # figures render inline: plotly's JSON mime bundle, no browser needed
    assert _plotly_outputs(nb) >= 1, f"{path.name} displayed no plotly figure"
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs).strip()
    assert Path(printed).resolve() == Path(sys.executable).resolve()
    # the notebook wrote nothing beside itself (it works in a temp dir)
    assert sorted(p.name for p in TUTORIALS.iterdir()) == before
    print(json.dumps({"notebook": path.name, "seconds": round(seconds, 1)}))
