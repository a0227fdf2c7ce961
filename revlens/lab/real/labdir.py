"""A built real-track lab dir, reused (``revlens replicate --track real --lab DIR``): the plan it
was built with, read from its ``history.json``, and the check that it is the plan asked for."""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from revlens._types import PathLike
from revlens.errors import ConfigError, HistoryError
from revlens.lab.real.history import RealPlan

__all__ = ["HOW_FIELDS", "check_lab", "lab_plan"]

HOW_FIELDS = ("threads", "device", "workers")
"""RealPlan fields that say how a lab runs, not what it holds (the same numbers)."""


def check_lab(lab_dir: PathLike, plan: RealPlan) -> None:
    """``lab_dir`` is a built real-track lab of ``plan``: its ``history.json`` and ``metrics.json``
    exist and the plan it was built with equals ``plan`` in every field but :data:`HOW_FIELDS`
    (a lab of other seeds, steps or learning rates would give another table under this one's name).

    Raises:
        HistoryError: not a built real-track lab dir.
        ConfigError: built with another plan (names the fields that differ).
    """
    root = Path(lab_dir)
    built = _built_plan(root)
    want = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(plan).items()}
    defaults = asdict(RealPlan())  # fields newer than the lab: their defaults
    differ = {
        k: (built.get(k, defaults[k]), v)
        for k, v in want.items()
        if k not in HOW_FIELDS and built.get(k, defaults[k]) != v
    }
    if differ:
        raise ConfigError(
            f"--lab {root} was built with another plan: "
            + ", ".join(f"{k}={b!r} (this replicate: {w!r})" for k, (b, w) in differ.items())
            + "; rebuild it or give the same settings"
        )


def _built_plan(root: Path) -> dict[str, Any]:
    """The plan recorded in a built lab's ``history.json`` (checked to be one first)."""
    if not (root / "history.json").is_file() or not (root / "metrics.json").is_file():
        raise HistoryError(
            f"--lab {root}: not a built real-track lab (history.json and metrics.json expected); "
            "build one with `revlens lab --track real --out DIR`, or leave --lab out"
        )
    try:
        built = json.loads((root / "history.json").read_text())["metadata"]["plan"]
    except (OSError, ValueError, KeyError, TypeError):
        built = None
    if not isinstance(built, dict):
        raise HistoryError(
            f"--lab {root}: history.json holds no real-track plan (metadata.plan); was it built by "
            "`revlens lab --track real`?"
        )
    return built


def lab_plan(lab_dir: PathLike) -> RealPlan:
    """The :class:`RealPlan` a built real-track lab was made with (its ``history.json``).

    Raises:
        HistoryError: not a built lab, or no valid plan recorded there.
        ConfigError: the recorded plan breaks :class:`RealPlan`'s rules.
    """
    root = Path(lab_dir)
    fields = set(asdict(RealPlan()))
    given = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in _built_plan(root).items()
        if k in fields
    }
    try:
        return RealPlan(**given)
    except (TypeError, ValueError) as exc:  # a hand-edited plan: RealPlan's own checks are typed
        raise HistoryError(f"--lab {root}: the recorded plan is not a RealPlan ({exc})") from None
