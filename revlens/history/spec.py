"""The on-disk history format: ``history.json`` (and ``histories.json`` for a set of them).

Any tool can write a history revlens reads — the reversion lab does, and so can a user's training
script. Paths are relative to the file's directory and may not leave it::

    {"format": "revlens-history", "format_version": 1,
     "base": "base"  |  ["b0", "b1"]  |  {"base@step1000": "b0"},
     "aligned": "aligned",
     "runs": {"seed0": {"1": "runs/seed0/step-1", "5": "runs/seed0/step-5"},
              "blocked/seed0": {"steps": {"1": "..."}, "start": "aligned", "kind": "blocked",
                                "info": {...}}},
     "controls": {"control-seed0": {"1": "controls/control-seed0/step-1"}},
     "metrics": "metrics.json",          # optional: per-checkpoint evaluation records
     "metadata": {"probes": "probes.jsonl", "harm_metric": "harm_rate", ...}}

``metrics.json`` is a list of records ``{"checkpoint": "<name>", "<metric>": value, ...}`` (or a
CSV with a ``checkpoint`` column). A set of histories (e.g. one per pre-training seed) is
``histories.json``: ``{"format": "revlens-history-set", "histories": {"pair0": "pair0", ...}}``.
"""

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, no_type_check

import pandas as pd

from revlens._io import confined, read_json, write_json
from revlens._types import PathLike
from revlens.errors import HistoryError
from revlens.history.history import History, MetricsInput

__all__ = [
    "FORMAT",
    "SET_FORMAT",
    "find_spec",
    "metrics_frame",
    "read_spec",
    "update_spec",
    "write_set",
    "write_spec",
]

FORMAT, SET_FORMAT, VERSION = "revlens-history", "revlens-history-set", 1
_KEYS = {
    "format",
    "format_version",
    "base",
    "aligned",
    "runs",
    "controls",
    "metrics",
    "metadata",
    "tokenizer",
}
_PATH_KEYS = ("probes",)


def find_spec(path: Path, *, name: str | None = None) -> Path | None:
    """The ``history.json`` a path stands for (itself, inside it, or a set member), or ``None``."""
    if path.is_file():
        return path
    if (path / "history.json").is_file():
        return path / "history.json"
    if (path / "histories.json").is_file():
        obj = read_json(path / "histories.json", "history set", error=HistoryError)
        if (
            not isinstance(obj, dict)
            or obj.get("format") != SET_FORMAT
            or not isinstance(obj.get("histories"), dict)
        ):
            raise HistoryError(f"{path / 'histories.json'} is not a revlens history set")
        members = obj["histories"]
        chosen = name or next(iter(members), None)
        if chosen not in members:
            raise HistoryError(
                f"history set {path} has no member {chosen!r}; members: {list(members)}"
            )
        return confined(path, members[chosen], "history set") / "history.json"
    return None


def _rel(root: Path, value: Any, what: str) -> Any:
    if isinstance(value, str):
        return confined(root, value, what)
    if isinstance(value, list):
        return [_rel(root, v, what) for v in value]
    if isinstance(value, dict):
        return {str(k): _rel(root, v, what) for k, v in value.items()}
    raise HistoryError(f"{what}: expected a relative path (string), got {value!r}")


def _runs(root: Path, obj: Any, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(plain runs {name: {step: path}}, described runs {name: {steps, start, kind, info}})."""
    if obj is None:
        return {}, {}
    if not isinstance(obj, dict):
        raise HistoryError(f"{what}: 'runs' must be an object run -> steps")
    plain, described = {}, {}
    for name, spec in obj.items():
        if isinstance(spec, dict) and "steps" in spec:
            unknown = sorted(set(spec) - {"steps", "start", "kind", "info"})
            if unknown:
                raise HistoryError(f"{what}: run {name!r} has unknown key(s) {unknown}")
            described[name] = {**spec, "steps": _rel(root, spec["steps"], f"{what} run {name}")}
        else:
            plain[name] = _rel(root, spec, f"{what} run {name}")
    return plain, described


def read_spec(file: Path) -> Any:
    """The :class:`~revlens.history.History` a ``history.json`` describes."""
    from revlens.history.loaders import build

    what = f"history spec {file}"
    obj = read_json(file, "history spec", error=HistoryError)
    if not isinstance(obj, dict):
        raise HistoryError(f"{what}: expected a JSON object")
    if obj.get("format", FORMAT) != FORMAT:
        raise HistoryError(f"{what}: format {obj.get('format')!r} is not {FORMAT!r}")
    unknown = sorted(set(obj) - _KEYS)
    missing = sorted({"base", "aligned"} - set(obj))
    if unknown or missing:
        raise HistoryError(f"{what}: missing key(s) {missing}, unknown key(s) {unknown}")
    root = file.parent
    runs, described = _runs(root, obj.get("runs"), what)
    controls, extra_controls = _runs(root, obj.get("controls"), what)
    metadata = dict(obj.get("metadata") or {})
    for key in _PATH_KEYS:
        if isinstance(metadata.get(key), str):
            metadata[key] = str(confined(root, metadata[key], f"{what} metadata.{key}"))
    metadata["spec"] = str(file)
    metrics = confined(root, obj["metrics"], f"{what} metrics") if obj.get("metrics") else None
    tokenizer = (
        confined(root, obj["tokenizer"], f"{what} tokenizer") if obj.get("tokenizer") else None
    )
    return build(
        _rel(root, obj["base"], f"{what} base"),
        _rel(root, obj["aligned"], f"{what} aligned"),
        runs,
        controls,
        tokenizer=tokenizer,
        metadata=metadata,
        metrics=metrics,
        extra_runs={
            **described,
            **{n: {**s, "kind": s.get("kind", "control")} for n, s in extra_controls.items()},
        },
    )


def write_spec(
    root: PathLike,
    *,
    base: str | Sequence[str] | Mapping[str, str],
    aligned: str,
    runs: Mapping[str, Any] | None = None,
    controls: Mapping[str, Any] | None = None,
    metrics: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``root/history.json`` atomically (paths relative to ``root``; see the module docstring)."""
    obj = {
        "format": FORMAT,
        "format_version": VERSION,
        "base": base,
        "aligned": aligned,
        "runs": dict(runs or {}),
        "controls": dict(controls or {}),
    }
    if metrics:
        obj["metrics"] = metrics
    if metadata:
        obj["metadata"] = dict(metadata)
    return write_json(Path(root) / "history.json", obj)


def update_spec(root: PathLike, change: Callable[[dict[str, Any]], None]) -> Path:
    """Read ``root/history.json``, apply ``change`` to the object in place, write it atomically."""
    path = Path(root) / "history.json"
    obj = read_json(path, "history spec", error=HistoryError)
    change(obj)
    return write_json(path, obj)


def write_set(root: PathLike, members: Mapping[str, str]) -> Path:
    """Write ``root/histories.json`` naming member dirs (relative to ``root``)."""
    return write_json(
        Path(root) / "histories.json",
        {"format": SET_FORMAT, "format_version": VERSION, "histories": dict(members)},
    )


def _records(metrics: Any) -> pd.DataFrame:
    if isinstance(metrics, pd.DataFrame):
        return metrics.copy()
    if isinstance(metrics, (str, Path)):
        p = Path(metrics)
        if p.suffix == ".csv":
            try:
                return pd.read_csv(p)
            except (OSError, ValueError) as exc:
                raise HistoryError(f"cannot read metrics table {p}: {exc}") from None
        metrics = read_json(p, "metrics table", error=HistoryError)
    if isinstance(metrics, list) and all(isinstance(r, dict) for r in metrics):
        return pd.DataFrame(metrics)
    raise HistoryError(
        f"a metrics table must be a DataFrame, a list of records or a .json/.csv file; got {type(metrics).__name__}"
    )


@no_type_check  # validates its own argument (typed errors), also under the test type-checker
def metrics_frame(history: History, metrics: MetricsInput) -> pd.DataFrame:
    """The metrics table of ``history``: one row per record, with ``checkpoint, role, run, step``
    from the history (records naming an unknown checkpoint are refused) and the metric columns."""
    df = _records(metrics)
    if "checkpoint" not in df.columns:
        raise HistoryError(
            f"a metrics table needs a 'checkpoint' column naming checkpoints; got {list(df.columns)}"
        )
    by_name = {ck.name: ck for ck in history}
    unknown = sorted(set(df["checkpoint"].astype(str)) - set(by_name))
    if unknown:
        raise HistoryError(
            f"metrics table names checkpoint(s) {unknown[:5]} that are not in the history"
        )
    kinds = history.run_kinds()
    df["checkpoint"] = df["checkpoint"].astype(str)
    df["role"] = [by_name[n].role for n in df["checkpoint"]]
    df["run"] = [by_name[n].run for n in df["checkpoint"]]
    df["kind"] = [kinds.get(by_name[n].run, by_name[n].role) for n in df["checkpoint"]]
    df["step"] = [by_name[n].step for n in df["checkpoint"]]
    front = ["checkpoint", "role", "run", "kind", "step"]
    drop = [c for c in ("path",) if c in df.columns]
    return df[front + [c for c in df.columns if c not in front and c not in drop]].reset_index(
        drop=True
    )
