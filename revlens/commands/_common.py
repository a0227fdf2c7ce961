"""Argument helpers shared by the sub-commands: reading a history, layers, output dirs."""

import argparse
import json
import re
from pathlib import Path
from typing import Any

from revlens.errors import ConfigError, HistoryError
from revlens.history import History

_STEP_DIR = re.compile(r"^(?:step|checkpoint)-(\d+)$")

HISTORY_HELP = (
    "a history: a lab dir (manifest.json), a JSON spec {base, aligned, runs, controls} (or a dir "
    "holding history.json; paths relative to it), or a dir with base/, aligned/ and one sub-dir per "
    "run holding step-N (or checkpoint-N) dirs; runs named control* are control runs"
)


def _steps(run_dir: Path) -> dict[int, Path]:
    out = {}
    for child in run_dir.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and child.is_dir():
            out[int(m.group(1))] = child
    return out


def _from_spec(path: Path) -> History:
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise HistoryError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(spec, dict) or not {"base", "aligned"} <= set(spec):
        raise HistoryError(f"{path}: expected an object with keys base, aligned, runs (controls)")
    root = path.parent

    def rel(p: Any) -> Any:
        if isinstance(p, list):
            return [rel(x) for x in p]
        if isinstance(p, dict):
            return {k: rel(v) for k, v in p.items()}
        return root / p

    return History.from_dirs(
        base=rel(spec["base"]),
        aligned=rel(spec["aligned"]),
        runs={n: {int(s): rel(d) for s, d in st.items()} for n, st in spec.get("runs", {}).items()},
        controls={
            n: {int(s): rel(d) for s, d in st.items()}
            for n, st in (spec.get("controls") or {}).items()
        },
    )


def load_history(spec: str) -> History:
    """A :class:`History` from a command-line ``--history`` value (see :data:`HISTORY_HELP`)."""
    path = Path(spec)
    if not path.exists():
        raise HistoryError(f"--history {spec}: no such file or directory")
    if path.is_file():
        return _from_spec(path)
    if (path / "manifest.json").is_file() or (path / "lab.json").is_file():
        return History.load(path)
    if (path / "history.json").is_file():
        return _from_spec(path / "history.json")
    if (path / "base").is_dir() and (path / "aligned").is_dir():
        runs, controls = {}, {}
        for child in sorted(
            p for p in path.iterdir() if p.is_dir() and p.name not in ("base", "aligned")
        ):
            steps = _steps(child)
            if steps:
                (controls if child.name.startswith("control") else runs)[child.name] = steps
        return History.from_dirs(
            base=path / "base", aligned=path / "aligned", runs=runs, controls=controls
        )
    raise HistoryError(
        f"--history {spec}: not a lab dir (no manifest.json), no history.json, and no base/ + aligned/ "
        "sub-dirs"
    )


def parse_layers(values: list[str] | None) -> Any:
    """``--layers`` values → ``"all"`` or a list of ints."""
    if not values or values == ["all"]:
        return "all"
    try:
        return [int(v) for v in values]
    except ValueError:
        raise ConfigError(f"--layers expects integers or 'all', got {values}") from None


def check_out(value: str) -> Path:
    """Validate ``--out`` up front (before any long work); :func:`make_out` creates it later."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {value} exists and is not a directory")
    return path


def make_out(path: Path) -> Path:
    """Create the output directory (its parents too), once there is something to write."""
    path.mkdir(parents=True, exist_ok=True)
    return path


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options shared by analyze and ablate."""
    parser.add_argument("--history", required=True, metavar="DIR", help=HISTORY_HELP)
    parser.add_argument(
        "--probes",
        metavar="FILE.jsonl",
        help='probe prompts, one {"text": ...} per line (default: the lab\'s probes)',
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    parser.add_argument("--batch-size", type=int, default=32, help="probe batch size (default 32)")
    parser.add_argument("--title", help="title of the HTML report")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
