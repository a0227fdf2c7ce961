"""Build a :class:`~revlens.history.History` from what a researcher has on disk.

Every loader validates up front — sources exist and hold weights, step numbers are integers
``>= 1``, names are unique, parameter shapes agree (safetensors headers only) — before any weight
is read, and raises a typed error naming the culprit.

Any checkpoint may be a PEFT adapter dir (``adapter_config.json`` + ``adapter_model.safetensors``,
e.g. a LoRA ``Trainer``'s adapter-only ``checkpoint-N``): it is applied on its run's start model
(aligned; a base for control runs; the first base for an adapter ``aligned``). Full checkpoints
and adapters mix freely. A folder with both full weights and adapter files is read as the full
weights (:func:`revlens.loading.classify`).
"""

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, no_type_check

from torch import Tensor

from revlens._types import PathLike, TokenizerInput
from revlens.errors import CheckpointError, HistoryError
from revlens.history.checkpoint import (
    BaseInput,
    Checkpoint,
    CheckpointSource,
    HubRef,
    check_source,
)
from revlens.history.history import History, Run

__all__ = [
    "from_dirs",
    "from_hub",
    "from_layout",
    "from_state_dicts",
    "from_trainer_output",
    "load",
]

_STEP_DIR = re.compile(r"^(?:step|checkpoint)-(\d+)$")
_TRAINER_DIR = re.compile(r"^checkpoint-(\d+)$")


def _as_step(key: Any, run: str) -> int:
    try:
        step = int(key)
    except (TypeError, ValueError):
        raise HistoryError(f"run {run!r}: step {key!r} is not an integer") from None
    if isinstance(key, bool) or (isinstance(key, float) and key != step):
        raise HistoryError(f"run {run!r}: step {key!r} is not an integer")
    if step < 1:
        raise HistoryError(
            f"run {run!r}: step {step} must be >= 1 (step 0 is the aligned checkpoint)"
        )
    return step


def _looks_like_state_dict(m: Mapping[Any, Any]) -> bool:
    return bool(m) and all(isinstance(v, Tensor) for v in m.values())


def _bases(base: Any, wrap: Any) -> list[Checkpoint]:
    if base is None or (isinstance(base, (list, tuple, Mapping)) and len(base) == 0):
        raise HistoryError("a history needs at least one base checkpoint")
    if isinstance(base, Mapping) and not _looks_like_state_dict(base):
        items = list(base.items())
    elif isinstance(base, (list, tuple)):
        items = [(f"base{i}" if len(base) > 1 else "base", b) for i, b in enumerate(base)]
    else:
        items = [("base", base)]
    return [Checkpoint(str(n), "base", wrap(s, f"base {n}")) for n, s in items]


def _run(
    name: str,
    steps: Any,
    start: str,
    kind: str,
    wrap: Any,
    info: Mapping[str, Any] | None = None,
    starts: Mapping[str, Checkpoint] | None = None,
) -> Run:
    if not isinstance(steps, Mapping) or not steps:
        raise HistoryError(f"run {name!r} has no steps; expected a mapping step -> checkpoint")
    if starts is not None and start not in starts:
        raise HistoryError(f"run {name!r} starts from {start!r}; expected one of {sorted(starts)}")
    start_ck = starts[start] if starts is not None else None
    parsed: dict[int, Checkpoint] = {}
    for key, src in steps.items():
        step = _as_step(key, name)
        if step in parsed:
            raise HistoryError(f"run {name!r}: step {step} appears twice")
        parsed[step] = Checkpoint(
            f"{name}/step-{step}",
            "run",
            wrap(src, f"run {name} step {step}"),
            run=name,
            step=step,
            start=start_ck,
        )
    return Run(name, dict(sorted(parsed.items())), start=start, kind=kind, info=dict(info or {}))


def build(
    base: Any,
    aligned: Any,
    runs: Mapping[str, Any] | None = None,
    controls: Mapping[str, Any] | None = None,
    *,
    architecture: Any = None,
    tokenizer: Any = None,
    metadata: Mapping[str, Any] | None = None,
    metrics: Any = None,
    extra_runs: Mapping[str, Mapping[str, Any]] | None = None,
    wrap: Any = check_source,
) -> History:
    """The common constructor: ``runs`` start from aligned, ``controls`` from the first base;
    ``extra_runs``: name -> ``{"steps", "start", "kind", "info"}`` (e.g. blocked runs)."""
    if aligned is None:
        raise HistoryError("a history needs an aligned checkpoint")
    bases = _bases(base, wrap)
    aligned_ck = Checkpoint("aligned", "aligned", wrap(aligned, "aligned"), step=0, start=bases[0])
    starts = {c.name: c for c in [*bases, aligned_ck]}
    run_objs: dict[str, Run] = {}
    groups = [(runs or {}, "aligned", "run"), (controls or {}, bases[0].name, "control")]
    specs = [
        (str(n), s, start, kind, None) for group, start, kind in groups for n, s in group.items()
    ]
    for n, spec in (extra_runs or {}).items():
        if not isinstance(spec, Mapping) or "steps" not in spec:
            raise HistoryError(f"run {n!r}: expected {{'steps': {{step: path}}, 'start', 'kind'}}")
        specs.append(
            (
                str(n),
                spec["steps"],
                spec.get("start", "aligned"),
                spec.get("kind", "run"),
                spec.get("info"),
            )
        )
    for n, steps, start, kind, info in specs:
        if n in run_objs:
            raise HistoryError(f"run name {n!r} is used twice")
        run_objs[n] = _run(n, steps, start, str(kind), wrap, info, starts)
    arch = architecture
    if arch is None:
        for ck in [aligned_ck, *bases]:
            p = ck.source if isinstance(ck.source, Path) else None
            if p is not None and p.is_dir() and (p / "config.json").is_file() and _is_model_dir(p):
                arch = p
                break
    return History(
        base=bases,
        aligned=aligned_ck,
        runs=run_objs,
        architecture=arch,
        tokenizer=tokenizer,
        metadata=metadata,
        metrics=metrics,
    )


def _is_model_dir(path: Path) -> bool:
    """A model's ``config.json`` (an adapter dir may hold a copy of the base's config too)."""
    from revlens.loading import classify

    return classify(path).kind == "full"


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def from_dirs(
    *,
    base: BaseInput,
    aligned: CheckpointSource,
    runs: Mapping[str, Mapping[Any, Any]] | None = None,
    controls: Mapping[str, Mapping[Any, Any]] | None = None,
    tokenizer: TokenizerInput | None = None,
) -> History:
    """From ``save_pretrained`` dirs.

    Args:
        base: one dir, a list of dirs, or a mapping name -> dir.
        aligned: the aligned dir (also the architecture: config + tokenizer are read there).
        runs: run name -> {step: dir}.
        controls: like ``runs``, but fine-tuned from the (first) base model.
        tokenizer: a tokenizer or path, if the dirs hold none.
    """
    return build(base, aligned, runs, controls, tokenizer=tokenizer)


def trainer_steps(directory: Any, run: str) -> dict[int, Path]:
    """``checkpoint-N`` folders of a ``Trainer`` output dir, by step (full weights or, for a
    PEFT run, adapter-only folders; optimizer and scheduler files are never read)."""
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"run {run!r}: Trainer output dir {path} does not exist")
    found = {
        int(m.group(1)): c
        for c in path.iterdir()
        if (m := _TRAINER_DIR.match(c.name)) and c.is_dir()
    }
    if not found:
        raise CheckpointError(f"run {run!r}: no checkpoint-N folders in {path}")
    return dict(sorted(found.items()))


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def from_trainer_output(
    *,
    base: BaseInput,
    aligned: CheckpointSource,
    runs: Mapping[str, Any],
    controls: Mapping[str, Any] | None = None,
    tokenizer: TokenizerInput | None = None,
) -> History:
    """From Hugging Face ``Trainer`` output dirs: every ``checkpoint-N`` folder is step N."""
    as_steps = {name: trainer_steps(d, name) for name, d in runs.items()}
    ctl = {name: trainer_steps(d, name) for name, d in (controls or {}).items()}
    return build(base, aligned, as_steps, ctl, tokenizer=tokenizer)


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def from_state_dicts(
    architecture_dir: PathLike,
    *,
    base: BaseInput,
    aligned: CheckpointSource,
    runs: Mapping[str, Mapping[Any, Any]] | None = None,
    controls: Mapping[str, Mapping[Any, Any]] | None = None,
    tokenizer: TokenizerInput | None = None,
) -> History:
    """From weight files (``.safetensors``, ``.pt``/``.bin`` read with ``weights_only=True``) or
    in-memory state dicts / modules, on the architecture of ``architecture_dir`` (a
    ``save_pretrained`` dir with config + tokenizer)."""
    arch = Path(architecture_dir)
    if not (arch / "config.json").is_file():
        raise CheckpointError(f"architecture dir {arch} has no config.json")
    return build(base, aligned, runs, controls, architecture=arch, tokenizer=tokenizer)


def from_hub(
    repo_id: str,
    *,
    base_revision: str | Sequence[str],
    aligned_revision: str,
    runs: Mapping[str, Mapping[Any, str]] | None = None,
    aligned_repo: str | None = None,
    cache_dir: str | None = None,
) -> History:
    """From hub revisions, e.g. Pythia's ``stepN`` branches.

    Args:
        repo_id: hub repo (or a local dir with one sub-dir per revision).
        base_revision: a revision or list of revisions of ``repo_id``.
        aligned_revision: revision of ``aligned_repo`` (default ``repo_id``).
        runs: run name -> {step: revision} (of ``aligned_repo``).
    """
    arepo = aligned_repo or repo_id
    revs = base_revision if isinstance(base_revision, (list, tuple)) else [base_revision]
    base = {f"base@{r}": HubRef(repo_id, str(r), cache_dir) for r in revs}
    runs_ref = {
        n: {s: HubRef(arepo, str(r), cache_dir) for s, r in st.items()}
        for n, st in (runs or {}).items()
    }
    return build(base, HubRef(arepo, aligned_revision, cache_dir), runs_ref, None)


def _step_dirs(run_dir: Path) -> dict[int, Path]:
    return {
        int(m.group(1)): c
        for c in run_dir.iterdir()
        if (m := _STEP_DIR.match(c.name)) and c.is_dir()
    }


def from_layout(path: PathLike) -> History:
    """A dir with ``base/``, ``aligned/`` and one sub-dir per run holding ``step-N`` (or
    ``checkpoint-N``) dirs; runs named ``control*`` are control runs."""
    root = Path(path)
    runs: dict[str, dict[int, Path]] = {}
    controls: dict[str, dict[int, Path]] = {}
    for child in sorted(
        p for p in root.iterdir() if p.is_dir() and p.name not in ("base", "aligned")
    ):
        steps = _step_dirs(child)
        if steps:
            (controls if child.name.startswith("control") else runs)[child.name] = steps
    return build(root / "base", root / "aligned", runs, controls)


@no_type_check  # validates its own argument (typed errors), also under the test type-checker
def load(spec: History | PathLike | Mapping[str, Any], *, name: str | None = None) -> History:
    """See :meth:`History.load`."""
    from revlens.history import spec as spec_io

    if isinstance(spec, History):
        return spec
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {"base", "aligned", "runs", "controls", "tokenizer"})
        if unknown or not {"base", "aligned"} <= set(spec):
            raise HistoryError(
                f"a history mapping needs keys base and aligned (and runs, controls); got {sorted(spec)}"
            )
        return from_dirs(**spec)
    if not isinstance(spec, (str, Path)):
        raise HistoryError(
            f"cannot read a history from {type(spec).__name__}: expected a History, a path "
            "(history.json, a lab dir, a base/ + aligned/ layout) or a mapping with base/aligned/runs"
        )
    path = Path(spec)
    if not path.exists():
        raise HistoryError(f"history {spec}: no such file or directory")
    found = spec_io.find_spec(path, name=name)
    if found is not None:
        return spec_io.read_spec(found)
    if path.is_dir() and (path / "base").is_dir() and (path / "aligned").is_dir():
        return from_layout(path)
    raise HistoryError(
        f"history {spec}: no history.json (or histories.json) in it, and no base/ + aligned/ sub-dirs"
    )
