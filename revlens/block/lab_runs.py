"""Blocked fine-tuning runs in a reversion-lab dir (``revlens lab --block METHOD``).

:func:`run_blocked` repeats the lab's benign fine-tuning of the aligned model (same config, same
seeds, hence the same data order) with a :class:`~revlens.block.ReversionBlocker` attached, and
writes the runs next to the unblocked ones::

    blocked/<name>/seed<k>/step-<t>/        save_pretrained checkpoints
    manifest.json  "blocked": {"<name>/seed<k>": {"<t>": "blocked/<name>/seed<k>/step-<t>", ...}}
                   "blocked_info": {"<name>/seed<k>": {method, layers, settings, seconds}}
    metrics.json   records with role "blocked", run "<name>/seed<k>" (same metrics as the runs)

``<name>`` is the method, or ``<method>-random`` for the control that blocks random unit
directions instead of ``v_rev``. :meth:`revlens.History.from_lab` reads the blocked runs.
"""

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from revlens.block.blocker import METHODS, ReversionBlocker
from revlens.block.residual import ResidualReader
from revlens.directions import Directions
from revlens.errors import CheckpointError, ConfigError
from revlens.probes import Probes

__all__ = ["lab_directions", "run_blocked"]

log = logging.getLogger(__name__)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def lab_probes(split: str = "train") -> Probes:
    """The harmful lab prompts blocking reads (default: the alignment split; harm is scored on
    the held-out split, so the constraint never sees the evaluation prompts)."""
    from revlens.lab import probe_prompts

    return Probes(probe_prompts("harmful", split))


def _means(model: torch.nn.Module, probes: Probes, layers: list[int]) -> torch.Tensor:
    from revlens.lab import build_tokenizer

    tok = probes.tokenize(build_tokenizer())
    mask = (torch.arange(tok.tokens.shape[1])[None] < tok.lengths[:, None]).long()
    with torch.no_grad():
        return (
            ResidualReader(model, layers)
            .per_prompt(tok.tokens, tok.weights, mask=mask)
            .double()
            .mean(0)
        )


def lab_directions(
    base: torch.nn.Module,
    aligned: torch.nn.Module,
    layers: Sequence[int],
    *,
    probes: Probes | None = None,
    random: bool = False,
    generator: torch.Generator | None = None,
) -> Directions:
    """``mean_diff`` directions normalise(μ(base) − μ(aligned)) on the lab probes, or (``random``)
    isotropic random unit directions from ``generator``."""
    layers = list(layers)
    if random:
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        d = int(base.config.n_embd)
        return Directions.from_tensor(
            torch.randn(len(layers), d, generator=g, dtype=torch.float64), layers, method="random"
        )
    pr = probes or lab_probes()
    return Directions.from_tensor(
        _means(base, pr, layers) - _means(aligned, pr, layers), layers, method="mean_diff"
    )


class _Blocked:
    """finetune callbacks: attach the blocker, record each checkpoint in the lab dir."""

    def __init__(
        self,
        blocker: ReversionBlocker,
        lab_dir: Path,
        run: str,
        manifest: dict,
        records: list,
        evaluator: Any,
    ) -> None:
        self.blocker, self.dir, self.run = blocker, lab_dir, run
        self.manifest, self.records, self.evaluator = manifest, records, evaluator

    def on_train_begin(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.blocker.attach(model, optimizer)

    def on_checkpoint(self, step: int, path: Path, model: torch.nn.Module) -> None:
        rel = path.relative_to(self.dir).as_posix()
        self.records.append(
            {"role": "blocked", "run": self.run, "step": step, "path": rel, **self.evaluator(model)}
        )
        self.manifest.setdefault("blocked", {}).setdefault(self.run, {})[str(step)] = rel
        _write_json(self.dir / "metrics.json", self.records)
        _write_json(self.dir / "manifest.json", self.manifest)

    def on_train_end(self, model: torch.nn.Module) -> None:
        self.blocker.detach()


def run_blocked(
    lab_dir: Any,
    method: str = "update",
    *,
    seeds: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    random_directions: bool = False,
    steps: int | None = None,
    probes: Probes | None = None,
    direction_seed: int = 0,
    name: str | None = None,
    progress: bool = True,
    **blocker_kwargs: Any,
) -> pd.DataFrame:
    """Fine-tune the lab's aligned model with blocking, for each seed, into ``lab_dir``.

    Args:
        lab_dir: a lab dir written by ``revlens lab`` (one pair; ``manifest.json``).
        method: blocking method (``"update"``, ``"gradient"``, ``"penalty"``, ``"hook"``).
        seeds: fine-tuning seeds (default: the lab's).
        layers: blocked layers (default: ``1..n_layers``).
        random_directions: the control: block random unit directions (run name ``<method>-random``).
        steps: fine-tuning steps (default: the lab's).
        probes: what the blocker reads (default: :func:`lab_probes`, the alignment split).
        direction_seed: seed of the random directions.
        name: run-group name (default: ``method``, or ``<method>-random``).
        blocker_kwargs: passed to :class:`ReversionBlocker` (``strength``, ``refresh_every``...).

    Returns:
        One row per run: ``run, seed, seconds`` and the final checkpoint's metrics.
    """
    from revlens.lab import LabConfig, finetune, load_checkpoint
    from revlens.lab.language import build_tokenizer
    from revlens.lab.metrics import Evaluator

    if method not in METHODS:
        raise ConfigError(f"method={method!r}; expected one of {METHODS}")
    root = Path(lab_dir)
    man_path = root / "manifest.json"
    if not man_path.is_file():
        raise CheckpointError(
            f"{root} is not a single-pair lab dir (no manifest.json); pass a pair dir"
        )
    manifest = json.loads(man_path.read_text())
    records = (
        json.loads((root / "metrics.json").read_text()) if (root / "metrics.json").is_file() else []
    )
    config = LabConfig.from_dict(manifest["config"])
    base = load_checkpoint(root / next(iter(manifest["base"].values())))
    aligned = load_checkpoint(root / next(iter(manifest["aligned"].values())))
    layers = list(range(1, config.n_layer + 1)) if layers is None else list(layers)
    pr = probes or lab_probes()
    v = lab_directions(
        base,
        aligned,
        layers,
        probes=pr,
        random=random_directions,
        generator=torch.Generator().manual_seed(direction_seed),
    )
    name = name or (f"{method}-random" if random_directions else method)
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"name={name!r} must be a plain directory name")
    evaluator = Evaluator(build_tokenizer())
    rows = []
    for seed in config.ft_seeds if seeds is None else seeds:
        run = f"{name}/seed{seed}"
        out = root / "blocked" / name / f"seed{seed}"
        if out.exists():
            shutil.rmtree(out)
        manifest.setdefault("blocked", {}).pop(run, None)
        records[:] = [
            r for r in records if not (r.get("role") == "blocked" and r.get("run") == run)
        ]
        blocker = ReversionBlocker(
            v, pr, aligned, tokenizer=build_tokenizer(), method=method, **blocker_kwargs
        )
        cb = _Blocked(blocker, root, run, manifest, records, evaluator)
        t0 = time.perf_counter()
        try:
            finetune(
                aligned,
                config,
                seed=seed,
                steps=steps,
                out_dir=out,
                callbacks=[cb],
                progress=progress,
            )
        finally:
            blocker.detach()
        seconds = round(time.perf_counter() - t0, 2)
        manifest.setdefault("blocked_info", {})[run] = {
            "method": method,
            "random_directions": random_directions,
            "layers": layers,
            "seconds": seconds,
            "settings": {
                k: v for k, v in blocker_kwargs.items() if isinstance(v, (int, float, str, bool))
            },
        }
        _write_json(man_path, manifest)
        last = max((r for r in records if r.get("run") == run), key=lambda r: r["step"])
        rows.append(
            {
                "run": run,
                "seed": seed,
                "seconds": seconds,
                **{
                    k: last[k]
                    for k in ("step", "harm_rate", "harm_logodds", "task_acc", "task_loss")
                },
            }
        )
        log.info("%s: blocked run %s done in %.1fs", root.name, run, seconds)
    return pd.DataFrame(rows)
