"""Argument helpers shared by the sub-commands: the history, probes, output dirs."""

import argparse
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from revlens._io import MANIFEST, check_writable_dir, publish_dir
from revlens.errors import OutputError

__all__ = [
    "HISTORY_HELP",
    "add_common",
    "check_out",
    "clean_json",
    "dumps",
    "load_history",
    "publish_out",
]

HISTORY_HELP = (
    "a history: a history.json (or a dir holding one, e.g. a lab dir; paths relative to it), a dir "
    "with histories.json (the first member), or a dir with base/, aligned/ and one sub-dir per run "
    "holding step-N (or checkpoint-N) dirs; runs named control* are control runs"
)


def load_history(spec: str) -> Any:
    """A :class:`~revlens.History` from a command-line ``--history`` value (see :data:`HISTORY_HELP`)."""
    from revlens.history import History

    return History.load(spec)


def check_out(value: str) -> Path:
    """Validate ``--out`` up front (before any long work): a new or empty directory, or one an
    earlier revlens command published (it holds a manifest), whose parent can be written (a file
    is written there and removed: ``os.access`` says yes to root on a read-only file system).

    Raises:
        OutputError: a file in the way, a parent that cannot be written, or a non-empty folder
            revlens did not write (it would be replaced as a whole).
    """
    out = check_writable_dir(value, "--out")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise OutputError(
            f"--out {out} is a non-empty folder that no revlens command wrote (no {MANIFEST}); "
            "--out is replaced as a whole: give a new or empty folder"
        )
    parent = out.resolve().parent
    check_writable_dir(
        parent, "--out's parent"
    )  # the new folder is made beside it, then swapped in
    return out


@contextmanager
def publish_out(out: Path) -> Iterator[Path]:
    """Write every file of one command into a temporary folder beside ``--out`` and swap it in as
    a whole with a manifest (:func:`revlens._io.publish_dir`): an interrupted or killed run leaves
    the old folder or the new one, never a mix; leftovers of killed runs are removed."""
    with publish_dir(out) as tmp:
        yield tmp


def clean_json(obj: Any) -> Any:
    """JSON-safe copy: NaN → null, numpy scalars → Python."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options every history command has."""
    parser.add_argument("--history", required=True, metavar="DIR", help=HISTORY_HELP)
    parser.add_argument(
        "--probes",
        metavar="FILE.jsonl",
        help='probe prompts, one {"text": ...} per line (default: the history\'s own)',
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    parser.add_argument("--title", help="title of the HTML report")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def dumps(obj: Any) -> str:
    """Strict JSON of ``obj`` after :func:`clean_json`."""
    return json.dumps(clean_json(obj), indent=1, allow_nan=False)
