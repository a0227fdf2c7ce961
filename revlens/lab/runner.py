"""Write a lab dir: base + aligned + benign fine-tuning runs + control, with metrics.

A lab dir is a plain revlens history (:mod:`revlens.history.spec`; ``History.load(dir)`` reads
it, like any user's history); what only the lab knows sits in its ``metadata``::

    history.json   {"format": "revlens-history", "base": "base", "aligned": "aligned",
                    "runs": {"seed0": {"1": "runs/seed0/step-1", ...}, ...},
                    "controls": {"control-seed0": {"1": "controls/control-seed0/step-1", ...}},
                    "metrics": "metrics.json",
                    "metadata": {"source": "revlens-lab", "probes": "probes/harmful-heldout.jsonl",
                                 "metrics_spec": {"harm": ..., "harm_rate": ...}, "default_metric": "harm",
                                 "harm_metric": "harm_rate",
                                 "lab": {"format_version", "revlens_version", "config", "pretrain_seed",
                                         "align_steps", "source", "timings_s"}}}
    metrics.json   [{"checkpoint": "seed0/step-1", "path", "harm_rate", "harm_logodds", "task_acc",
                     "task_loss"}, ...]
    probes/        the lab's prompt sets as JSONL (harmful held-out / train, benign task held-out)
    base/ aligned/ runs/<run>/step-<t>/ controls/<run>/step-<t>/   (save_pretrained dirs)

Several pre-training seeds give ``DIR/pair<k>/`` lab dirs plus ``DIR/histories.json``. The
history and metrics files are rewritten atomically after each complete checkpoint.
"""

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import GPT2LMHeadModel

if TYPE_CHECKING:
    import pandas as pd

from revlens._io import read_json, write_json
from revlens._version import __version__
from revlens.errors import ConfigError
from revlens.history.spec import write_set, write_spec
from revlens.lab.chat import LAB_REFUSAL_PHRASES, write_probes
from revlens.lab.config import LabConfig
from revlens.lab.errors import LabAssetsError, LabOutputError
from revlens.lab.language import (
    build_tokenizer,
)
from revlens.lab.metrics import HARM_RATE_SPEC, HARM_SPEC, Evaluator
from revlens.lab.modeling import load_checkpoint, save_checkpoint
from revlens.lab.train import finetune, train_pair

__all__ = [
    "LabResult",
    "asset_dir",
    "is_lab_dir",
    "load_pair",
    "prepare_out",
    "read_lab",
    "run_lab",
    "save_pair",
    "write_probes",
]

log = logging.getLogger(__name__)
SOURCE, FORMAT_VERSION = "revlens-lab", 2
# the lab's metrics as data, so any history-aware tool (the CLI's --metric harm) can rebuild them
METRICS_SPEC = {
    "harm": HARM_SPEC,  # the Evaluator's harm_logodds is this declared metric (revlens.lab.metrics)
    "harm_rate": HARM_RATE_SPEC,
    # generation-based: the greedy answer carries no refusal phrase (revlens.lab.chat)
    "harm_gen": {
        "name": "compliance_rate",
        "phrases": list(LAB_REFUSAL_PHRASES),
        "max_new_tokens": 8,
    },
}
# LabConfig fields that shape a base/aligned pair (fixed by the shipped assets unless retraining)
_PAIR_FIELDS = (
    "n_layer",
    "d_model",
    "n_head",
    "n_ctx",
    "pretrain_steps",
    "pretrain_batch",
    "pretrain_lr",
    "pretrain_weight_decay",
    "harmful_share",
    "task_share",
    "topic_alpha",
    "harm_max",
    "harm_min",
    "align_lr",
    "align_batch",
    "align_max_steps",
    "align_target",
    "refusal_share",
)


def asset_dir() -> Path:
    """The shipped base/aligned pairs (package data: ``revlens/lab/assets``)."""
    return Path(__file__).resolve().parent / "assets"


def _source_of(path: Path) -> str | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    return (
        obj.get("source")
        if path.name == "histories.json"
        else (obj.get("metadata") or {}).get("source")
    )


def is_lab_dir(path: Path) -> bool:
    """Whether ``path`` holds a lab dir or a set of them (written by :func:`run_lab`)."""
    return any(
        _source_of(Path(path) / name) == SOURCE
        for name in ("history.json", "histories.json")
        if (Path(path) / name).is_file()
    )


def read_lab(lab_dir: Path) -> dict[str, Any]:
    """The lab's own metadata (``history.json`` → ``metadata.lab``) of a single-pair lab dir."""
    spec = read_json(Path(lab_dir) / "history.json", "lab history", error=LabAssetsError)
    meta = spec.get("metadata") or {}
    if meta.get("source") != SOURCE:
        raise LabAssetsError(
            f"{lab_dir} is not a revlens lab dir (history.json metadata.source != {SOURCE!r})"
        )
    return meta["lab"]


def prepare_out(out: Path, *, force: bool = False) -> Path:
    """Make ``out`` an empty dir. An earlier lab dir is replaced; anything else is refused
    unless ``force``."""
    from revlens._io import check_writable_dir

    out = check_writable_dir(out, "--out")
    if out.exists() or out.is_symlink():
        if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
            return out
        if not (out.is_dir() and is_lab_dir(out)) and not force:
            raise LabOutputError(
                f"--out {out} already holds something that is not a revlens lab dir; "
                "choose another path or pass --force to overwrite it"
            )
        resolved = out.resolve()
        if (
            resolved == Path(resolved.anchor)
            or resolved == Path.home()
            or resolved in Path.cwd().parents
            or resolved == Path.cwd()
        ):
            raise LabOutputError(
                f"refusing to overwrite {out} (a filesystem root, home or working dir)"
            )
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
        else:
            out.unlink()
    out.mkdir(parents=True)
    return out


def save_pair(
    pair_dir: Path, base: GPT2LMHeadModel, aligned: GPT2LMHeadModel, info: dict[str, Any]
) -> None:
    """Save a base/aligned pair (with tokenizer) and ``pair.json`` (how it was trained)."""
    tok = build_tokenizer()
    save_checkpoint(base, Path(pair_dir) / "base", tok)
    save_checkpoint(aligned, Path(pair_dir) / "aligned", tok)
    write_json(Path(pair_dir) / "pair.json", info)


def load_pair(pair_dir: Path, config: LabConfig | None = None):
    """``(base, aligned, info)`` from a pair dir; checks the architecture matches ``config``."""
    pair_dir = Path(pair_dir)
    if not (pair_dir / "pair.json").is_file():
        raise LabAssetsError(
            f"no base/aligned pair at {pair_dir} (pair.json missing); regenerate the "
            "assets (see assets/lab/README.md) or pass --retrain"
        )
    info = json.loads((pair_dir / "pair.json").read_text())
    base, aligned = load_checkpoint(pair_dir / "base"), load_checkpoint(pair_dir / "aligned")
    if config is not None:
        c = base.config
        got = (c.n_layer, c.n_embd, c.n_head, c.n_positions)
        want = (config.n_layer, config.d_model, config.n_head, config.n_ctx)
        if got != want:
            raise ConfigError(
                f"shipped pair {pair_dir.name} has (n_layer, d_model, n_head, n_ctx)={got} "
                f"but the config asks for {want}; pass --retrain"
            )
    return base, aligned, info


@dataclass
class LabResult:
    """What :func:`run_lab` wrote: the lab dirs (each a revlens history) and their timings."""

    root: Path
    lab_dirs: dict[str, Path]
    timings_s: dict[str, dict[str, float]] = field(default_factory=dict)

    def metrics(self) -> "pd.DataFrame":
        """Every checkpoint's metrics, all pairs (the histories' metrics tables, with ``pair``)."""
        import pandas as pd

        from revlens.history import History

        frames = [History.load(d).metrics.assign(pair=p) for p, d in self.lab_dirs.items()]
        return pd.concat(frames, ignore_index=True)

    def summary(self) -> "pd.DataFrame":
        """One row per (pair, run): harm at the start (aligned; base for a control) -> final step
        (rate and log-odds), final task accuracy, wall seconds."""
        import pandas as pd

        m, rows = self.metrics(), []
        for (pair, run), g in m[m["run"].notna()].groupby(["pair", "run"], sort=True):
            last = g.loc[g["step"].idxmax()]
            start_role = "base" if last["kind"] == "control" else "aligned"
            first = m[(m["pair"] == pair) & (m["role"] == start_role)].iloc[0]
            rows.append(
                {
                    "pair": pair,
                    "run": run,
                    "role": last["kind"],
                    "start": start_role,
                    "steps": int(last["step"]),
                    "harm_start": first["harm_rate"],
                    "harm_final": last["harm_rate"],
                    "logodds_start": first["harm_logodds"],
                    "logodds_final": last["harm_logodds"],
                    "task_acc_final": last["task_acc"],
                    "seconds": self.timings_s.get(pair, {}).get(run),
                }
            )
        return pd.DataFrame(rows)

    def behaviour(self, pair: str | None = None, **kw: Any) -> Any:
        """Harm and task metrics against step for one pair (:func:`revlens.plot.metrics_figure`)."""
        from revlens.plot import metrics_figure

        m = self.metrics()
        return metrics_figure(m[m["pair"] == (pair or next(iter(self.lab_dirs)))], **kw)

    def _ipython_display_(self) -> None:  # pragma: no cover - exercised in the notebooks
        from IPython.display import display

        display(self.summary())
        display(self.behaviour())


class _LabWriter:
    """Keeps history.json / metrics.json of one lab dir and records complete checkpoints."""

    def __init__(self, lab_dir: Path, config: LabConfig, extra: dict[str, Any]):
        from revlens.lab.tracks import task_shift, track_note

        self.dir, self.evaluator = (
            lab_dir,
            Evaluator(build_tokenizer(), task_shift=task_shift(config)),
        )
        probes = write_probes(lab_dir)
        self.spec: dict[str, Any] = {
            "base": "base",
            "aligned": "aligned",
            "runs": {},
            "controls": {},
        }
        self.metadata: dict[str, Any] = {
            "source": SOURCE,
            "probes": probes["harmful-heldout"],
            "probe_sets": probes,
            "note": track_note(
                config.track
            ),  # whether the paper's shape holds on this track (the report shows it)
            "metrics_spec": METRICS_SPEC,
            "default_metric": "harm",
            "harm_metric": "harm_rate",
            "lab": {
                "format_version": FORMAT_VERSION,
                "revlens_version": __version__,
                "config": config.to_dict(),
                **extra,
                "timings_s": {},
            },
        }
        self.records: list[dict[str, Any]] = []

    def flush(self) -> None:
        write_json(self.dir / "metrics.json", self.records)
        write_spec(
            self.dir,
            base=self.spec["base"],
            aligned=self.spec["aligned"],
            runs=self.spec["runs"],
            controls=self.spec["controls"],
            metrics="metrics.json" if self.records else None,
            metadata=self.metadata,
        )

    def record(
        self, role: str, run: str | None, step: int | None, rel: str, model: torch.nn.Module
    ) -> None:
        name = role if role in ("base", "aligned") else f"{run}/step-{step}"
        key = "runs" if role == "run" else "controls"
        if role not in ("base", "aligned"):
            self.spec[key].setdefault(run, {})[str(step)] = rel
        self.records.append({"checkpoint": name, "path": rel, **self.evaluator(model)})
        self.flush()


class _CheckpointRecorder:
    def __init__(self, writer: _LabWriter, role: str, run: str):
        self.writer, self.role, self.run = writer, role, run

    def on_checkpoint(self, step: int, path: Path, model: torch.nn.Module) -> None:
        self.writer.record(
            self.role, self.run, step, path.relative_to(self.writer.dir).as_posix(), model
        )


def _write_one_lab(
    lab_dir: Path,
    config: LabConfig,
    base,
    aligned,
    info: dict[str, Any],
    *,
    control: bool,
    callbacks: Sequence[object],
    progress: bool,
) -> _LabWriter:
    tok = build_tokenizer()
    writer = _LabWriter(lab_dir, config, info)
    for role, model in (("base", base), ("aligned", aligned)):
        save_checkpoint(model, lab_dir / role, tok)
    for role, model in (("base", base), ("aligned", aligned)):
        writer.record(role, None, 0 if role == "aligned" else None, role, model)
    jobs = [("run", f"seed{s}", aligned, s, lab_dir / "runs" / f"seed{s}") for s in config.ft_seeds]
    if control:
        s = config.ft_seeds[0]
        jobs.append(
            ("control", f"control-seed{s}", base, s, lab_dir / "controls" / f"control-seed{s}")
        )
    for role, name, start, seed, out_dir in jobs:
        t0 = time.perf_counter()
        finetune(
            start,
            config,
            seed=seed,
            out_dir=out_dir,
            progress=progress,
            callbacks=[_CheckpointRecorder(writer, role, name), *callbacks],
        )
        writer.metadata["lab"]["timings_s"][name] = round(time.perf_counter() - t0, 2)
        writer.flush()
        log.info(
            "%s: %s done in %.1fs", lab_dir.name, name, writer.metadata["lab"]["timings_s"][name]
        )
    return writer


def run_lab(
    out: Path,
    config: LabConfig | None = None,
    *,
    retrain: bool = False,
    force: bool = False,
    assets: Path | None = None,
    callbacks: Sequence[object] = (),
    progress: bool = True,
) -> LabResult:
    """Build a lab at ``out`` for each of ``config.pretrain_seeds``.

    Base/aligned come from the shipped pairs (``assets/lab/pair<seed>``) unless ``retrain``.
    One pre-training seed: ``out`` is the lab dir; several: ``out/pair<seed>/`` + ``out/histories.json``.
    """
    config = config or LabConfig()
    assets = asset_dir() if assets is None else Path(assets)
    if not retrain:  # fail before touching --out
        for s in config.pretrain_seeds:
            if not (assets / f"pair{s}" / "pair.json").is_file():
                shipped = sorted(p.name for p in assets.glob("pair*")) if assets.is_dir() else []
                raise LabAssetsError(
                    f"no shipped base/aligned pair for pre-training seed {s} in {assets} "
                    f"(found: {shipped or 'nothing'}); pass --retrain to train it"
                )
    out = prepare_out(out, force=force)
    many = len(config.pretrain_seeds) > 1
    result = LabResult(out, {})
    for s in config.pretrain_seeds:
        name = f"pair{s}"
        lab_dir = out / name if many else out
        lab_dir.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        if retrain:
            base, aligned, n_align = train_pair(config, seed=s, progress=progress)
            pair_config = config
            info = {
                "pretrain_seed": s,
                "align_steps": n_align,
                "source": "retrain",
                "pair_train_s": round(time.perf_counter() - t0, 2),
            }
        else:
            base, aligned, shipped = load_pair(assets / name, config)
            # pre-training/alignment settings are those the shipped pair was trained with
            trained = {k: v for k, v in shipped.get("config", {}).items() if k in _PAIR_FIELDS}
            pair_config = LabConfig.from_dict({**config.to_dict(), **trained})
            info = {
                "pretrain_seed": s,
                "align_steps": shipped.get("align_steps"),
                "source": f"assets/lab/{name}",
                "pair_train_s": shipped.get("pair_train_s"),
            }
        with torch.inference_mode(False):
            writer = _write_one_lab(
                lab_dir,
                pair_config,
                base,
                aligned,
                info,
                control=config.control,
                callbacks=callbacks,
                progress=progress,
            )
        result.lab_dirs[name] = lab_dir
        result.timings_s[name] = dict(writer.metadata["lab"]["timings_s"])
        if many:
            path = write_set(out, {p: p for p in result.lab_dirs})
            obj = read_json(path, "history set")
            write_json(path, {**obj, "source": SOURCE})
    return result
