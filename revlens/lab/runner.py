"""Write a lab dir: base + aligned + benign fine-tuning runs + control, with metrics.

Layout (shared with :meth:`revlens.history.History.from_lab`; paths relative to the dir)::

    manifest.json  {"format": "revlens-lab", "format_version": 1, "revlens_version", "config",
                    "base": {"base": "base"}, "aligned": {"aligned": "aligned"},
                    "runs": {"seed0": {"1": "runs/seed0/step-1", ...}, ...},
                    "controls": {"control-seed0": {"1": "controls/control-seed0/step-1", ...}},
                    "pretrain_seed", "align_steps", "source", "timings_s"}
    metrics.json   [{"role", "run", "step", "path", "harm_rate", "harm_logodds", "task_acc",
                     "task_loss"}, ...]
    base/ aligned/ runs/<run>/step-<t>/ controls/<run>/step-<t>/   (save_pretrained dirs)

Several pre-training seeds give ``DIR/pair<k>/`` lab dirs plus ``DIR/lab.json``. The manifest
and metrics are rewritten atomically after each complete checkpoint.
"""

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2LMHeadModel

from revlens._version import __version__
from revlens.errors import ConfigError
from revlens.lab.config import LabConfig
from revlens.lab.errors import LabAssetsError, LabOutputError
from revlens.lab.language import build_tokenizer
from revlens.lab.metrics import Evaluator
from revlens.lab.modeling import load_checkpoint, save_checkpoint
from revlens.lab.train import finetune, train_pair

__all__ = [
    "LabResult",
    "asset_dir",
    "is_lab_dir",
    "load_pair",
    "prepare_out",
    "run_lab",
    "save_pair",
]

log = logging.getLogger(__name__)
FORMAT, SET_FORMAT, FORMAT_VERSION = "revlens-lab", "revlens-lab-set", 1
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
    """``assets/lab`` beside the ``revlens`` package (the shipped base/aligned pairs)."""
    return Path(__file__).resolve().parent.parent.parent / "assets" / "lab"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def is_lab_dir(path: Path) -> bool:
    """Whether ``path`` holds a lab dir or a set of them (written by :func:`run_lab`)."""
    for name, fmt in (("manifest.json", FORMAT), ("lab.json", SET_FORMAT)):
        f = Path(path) / name
        if f.is_file():
            try:
                return json.loads(f.read_text()).get("format") == fmt
            except (json.JSONDecodeError, AttributeError):
                return False
    return False


def prepare_out(out: Path, *, force: bool = False) -> Path:
    """Make ``out`` an empty dir. An earlier lab dir is replaced; anything else is refused
    unless ``force``."""
    out = Path(out)
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
    _write_json(Path(pair_dir) / "pair.json", info)


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
    """What :func:`run_lab` wrote: the lab dirs and their metric records."""

    root: Path
    lab_dirs: dict[str, Path]
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    timings_s: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self):
        """pandas table, one row per (pair, run): harm at the start (aligned; base for a control)
        -> final step (rate and log-odds), final task accuracy, wall seconds."""
        import pandas as pd

        rows = []
        for pair, recs in self.records.items():
            begin = {r["role"]: r for r in recs if r["role"] in ("base", "aligned")}
            for run in sorted({r["run"] for r in recs if r["role"] in ("run", "control")}):
                last = max((r for r in recs if r["run"] == run), key=lambda r: r["step"])
                first = begin["base" if last["role"] == "control" else "aligned"]
                rows.append(
                    {
                        "pair": pair,
                        "run": run,
                        "role": last["role"],
                        "start": first["role"],
                        "steps": last["step"],
                        "harm_start": first["harm_rate"],
                        "harm_final": last["harm_rate"],
                        "logodds_start": first["harm_logodds"],
                        "logodds_final": last["harm_logodds"],
                        "task_acc_final": last["task_acc"],
                        "seconds": self.timings_s.get(pair, {}).get(run),
                    }
                )
        return pd.DataFrame(rows)


class _LabWriter:
    """Keeps manifest.json / metrics.json of one lab dir and records complete checkpoints."""

    def __init__(self, lab_dir: Path, config: LabConfig, extra: dict[str, Any]):
        self.dir, self.evaluator = lab_dir, Evaluator(build_tokenizer())
        self.manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "revlens_version": __version__,
            "config": config.to_dict(),
            "base": {},
            "aligned": {},
            "runs": {},
            "controls": {},
            **extra,
            "timings_s": {},
        }
        self.records: list[dict[str, Any]] = []

    def flush(self) -> None:
        _write_json(self.dir / "metrics.json", self.records)
        _write_json(self.dir / "manifest.json", self.manifest)

    def record(
        self, role: str, run: str | None, step: int | None, rel: str, model: GPT2LMHeadModel
    ) -> None:
        self.records.append(
            {"role": role, "run": run, "step": step, "path": rel, **self.evaluator(model)}
        )
        if role in ("base", "aligned"):
            self.manifest[role][role] = rel
        else:
            key = "runs" if role == "run" else "controls"
            self.manifest[key].setdefault(run, {})[str(step)] = rel
        self.flush()


class _CheckpointRecorder:
    def __init__(self, writer: _LabWriter, role: str, run: str):
        self.writer, self.role, self.run = writer, role, run

    def on_checkpoint(self, step: int, path: Path, model: GPT2LMHeadModel) -> None:
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
        writer.manifest["timings_s"][name] = round(time.perf_counter() - t0, 2)
        writer.flush()
        log.info("%s: %s done in %.1fs", lab_dir.name, name, writer.manifest["timings_s"][name])
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
    One pre-training seed: ``out`` is the lab dir; several: ``out/pair<seed>/`` + ``out/lab.json``.
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
        result.records[name] = writer.records
        result.timings_s[name] = dict(writer.manifest["timings_s"])
        if many:
            _write_json(
                out / "lab.json",
                {
                    "format": SET_FORMAT,
                    "format_version": FORMAT_VERSION,
                    "pairs": list(result.lab_dirs),
                },
            )
    return result
