"""Blocked fine-tuning runs in a reversion-lab dir (``revlens lab --block METHOD``).

:func:`run_blocked` repeats the lab's benign fine-tuning of the aligned model (same config, same
seeds, hence the same data order) with a :class:`~revlens.block.ReversionBlocker` attached, and
writes the runs next to the unblocked ones, as runs of kind ``"blocked"`` of the lab's history::

    blocked/<name>/seed<k>/step-<t>/        save_pretrained checkpoints
    history.json  runs["<name>/seed<k>"] = {"steps": {...}, "start": "aligned", "kind": "blocked",
                                            "info": {method, layers, settings, seconds}}
    metrics.json  records of checkpoints "<name>/seed<k>/step-<t>" (same metrics as the runs)

``<name>`` is the method, or ``<method>-random`` for the control that blocks random unit
directions instead of ``v_rev``. ``History.load`` reads the blocked runs like any other run.

``method`` is any registered blocking method (:func:`revlens.block.method_names`): the
activation-space ones build a :class:`~revlens.block.ReversionBlocker` along ``v_rev``;
``method="weights"`` blocks in weight space instead (:class:`revlens.weights.WeightBlocker`:
updates kept off ``V``'s top-k singular subspaces, ``V = W_aligned − W_base`` from the lab's own
base and aligned checkpoints); its control (``random_directions=True``) uses random subspaces of
the same rank; ``blocker_kwargs`` are the :class:`~revlens.weights.WeightBlockerConfig` fields.
"""

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from revlens._io import read_json, write_json
from revlens._types import PathLike
from revlens.block import BlockingStrategy, ReversionBlocker, method_class, method_names
from revlens.collect.models import collect_model, collect_models
from revlens.directions import Directions, MeanDiff
from revlens.errors import CheckpointError, ConfigError
from revlens.history.spec import update_spec
from revlens.lab.runner import read_lab
from revlens.modes import check_mode
from revlens.probes import Probes
from revlens.weights.blocker import WeightBlocker

__all__ = ["lab_directions", "lab_probes", "run_blocked"]

log = logging.getLogger(__name__)


def lab_probes(split: str = "train") -> Probes:
    """The harmful lab prompts blocking reads (default: the alignment split; harm is scored on
    the held-out split, so the constraint never sees the evaluation prompts)."""
    from revlens.lab import probe_prompts

    return Probes(probe_prompts("harmful", split))


def _means(model: torch.nn.Module, probes: Probes, layers: list[int]) -> torch.Tensor:
    """The model's float64 mean activations ``[layer, d]`` on ``probes`` (:func:`revlens.collect.collect_model`)."""
    from revlens.lab import build_tokenizer

    return collect_model(model, probes, tokenizer=build_tokenizer(), layers=layers).mean


def lab_directions(
    base: torch.nn.Module,
    aligned: torch.nn.Module,
    layers: Sequence[int],
    *,
    probes: Probes | None = None,
    random: bool = False,
    generator: torch.Generator | None = None,
) -> Directions:
    """``mean_diff`` directions normalise(μ(base) − μ(aligned)) on the lab probes (the library's
    :class:`~revlens.directions.MeanDiff` on :func:`revlens.collect.collect_models`' statistics), or
    (``random``) isotropic random unit directions from ``generator``."""
    layers = list(layers)
    if random:
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        d = int(base.config.n_embd)
        return Directions.from_tensor(
            torch.randn(len(layers), d, generator=g, dtype=torch.float64), layers, method="random"
        )
    from revlens.lab import build_tokenizer

    stats = collect_models(
        {"base": base, "aligned": aligned},
        probes or lab_probes(),
        tokenizer=build_tokenizer(),
        layers=layers,
        second=False,
        keep=False,
    )
    return MeanDiff(n_bootstrap=0).fit(stats).direction_


class _Blocked:
    """finetune callbacks: attach the blocking strategy (the step protocol of
    :class:`~revlens.block.BlockingStrategy`), record each checkpoint in the lab dir."""

    def __init__(
        self,
        blocker: BlockingStrategy,
        lab_dir: Path,
        run: str,
        info: dict[str, Any],
        evaluator: Any,
    ) -> None:
        self.blocker, self.dir, self.run, self.info, self.evaluator = (
            blocker,
            lab_dir,
            run,
            info,
            evaluator,
        )
        self.steps: dict[str, str] = {}

    def on_train_begin(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.blocker.attach(model, optimizer)

    def on_checkpoint(self, step: int, path: Path, model: torch.nn.Module) -> None:
        rel = path.relative_to(self.dir).as_posix()
        self.steps[str(step)] = rel
        records = read_json(self.dir / "metrics.json", "lab metrics")
        records.append(
            {"checkpoint": f"{self.run}/step-{step}", "path": rel, **self.evaluator(model)}
        )
        write_json(self.dir / "metrics.json", records)
        entry = {
            "steps": dict(self.steps),
            "start": "aligned",
            "kind": "blocked",
            "info": self.info,
        }
        update_spec(self.dir, lambda spec: spec["runs"].__setitem__(self.run, entry))

    def on_train_end(self, model: torch.nn.Module) -> None:
        try:
            self.blocker.finish()
        finally:
            self.blocker.detach()


def _forget(lab_dir: Path, run: str) -> None:
    """Remove an earlier blocked run of this name (its checkpoints, metrics and history entry)."""
    out = lab_dir / "blocked" / run
    if out.exists():
        shutil.rmtree(out)
    records = read_json(lab_dir / "metrics.json", "lab metrics")
    write_json(
        lab_dir / "metrics.json",
        [r for r in records if not str(r.get("checkpoint", "")).startswith(f"{run}/")],
    )
    update_spec(lab_dir, lambda spec: spec["runs"].pop(run, None))


WEIGHTS = (
    WeightBlocker.method
)  # "weights": blocking in weight space (V from the lab's base and aligned)


def _in_weights(method: str) -> bool:
    """Whether ``method`` blocks in weight space (needs the two checkpoints, no directions)."""
    return issubclass(method_class(method), WeightBlocker)


def _blocker(
    method: str,
    root: Path,
    aligned: torch.nn.Module,
    v: Directions | None,
    probes: Probes,
    random_directions: bool,
    direction_seed: int,
    kwargs: dict[str, Any],
) -> BlockingStrategy:
    cls = method_class(method)
    if issubclass(cls, WeightBlocker):
        return cls(
            root / "base", root / "aligned", random=random_directions, seed=direction_seed, **kwargs
        )
    if not issubclass(cls, ReversionBlocker):
        raise ConfigError(
            f"run_blocked: method {method!r} ({cls.__name__}) is neither a ReversionBlocker method "
            "nor a WeightBlocker; the lab does not know how to build it"
        )
    from revlens.lab.language import build_tokenizer

    return ReversionBlocker(
        v, probes, aligned, tokenizer=build_tokenizer(), method=method, **kwargs
    )


def _blocked_directions(
    method: str,
    directions: Directions | None,
    layers: Sequence[int] | None,
    n_layer: int,
    base: torch.nn.Module,
    aligned: torch.nn.Module,
    probes: Probes,
    random_directions: bool,
    direction_seed: int,
) -> tuple[list[int] | None, Directions | None]:
    """The blocked layers and what is blocked there (``None`` for weight-space blocking)."""
    if directions is not None:
        if random_directions or _in_weights(method):
            raise ConfigError(
                "run_blocked: directions=... is not used with random_directions=True or method='weights'"
            )
        layers = list(directions.layers) if layers is None else list(layers)
        return layers, directions.select(layers)
    if _in_weights(method):
        return None if layers is None else list(layers), None
    layers = list(range(1, n_layer + 1)) if layers is None else list(layers)
    return layers, lab_directions(
        base,
        aligned,
        layers,
        probes=probes,
        random=random_directions,
        generator=torch.Generator().manual_seed(direction_seed),
    )


def run_blocked(
    lab_dir: PathLike,
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
    directions: Directions | None = None,
    checkpoint_steps: Sequence[int] | None = None,
    **blocker_kwargs: Any,
) -> pd.DataFrame:
    """Fine-tune the lab's aligned model with blocking, for each seed, into ``lab_dir``.

    Args:
        lab_dir: a lab dir written by ``revlens lab`` (one pair; ``history.json``).
        method: a registered blocking method (``"update"``, ``"gradient"``, ``"penalty"``,
            ``"hook"``, ``"weights"`` — weight-space blocking, see the module docstring — or one a
            user registered as a ``ReversionBlocker`` or ``WeightBlocker`` subclass).
        seeds: fine-tuning seeds (default: the lab's).
        layers: blocked layers (default: ``1..n_layers``).
        random_directions: the control: block random unit directions (run name ``<method>-random``).
        steps: fine-tuning steps (default: the lab's).
        probes: what the blocker reads (default: :func:`lab_probes`, the alignment split).
        direction_seed: seed of the random directions.
        name: run-group name (default: ``method``, or ``<method>-random``).
        directions: block these (any rank, e.g. a reversion subspace from
            :func:`revlens.lab.subspaces.lab_subspace`) instead of the ``mean_diff`` directions
            (``layers`` default to theirs; not with ``random_directions``).
        checkpoint_steps: the steps saved and evaluated (default: the lab's).
        blocker_kwargs: passed to :class:`ReversionBlocker` (``strength``, ``refresh_every``...).

    Returns:
        One row per run: ``run, seed, seconds`` and the final checkpoint's metrics.
    """
    from revlens.lab import LabConfig, finetune, load_checkpoint
    from revlens.lab.language import build_tokenizer
    from revlens.lab.metrics import Evaluator
    from revlens.lab.tracks import task_shift

    check_mode("method", method, method_names())
    root = Path(lab_dir)
    if not (root / "history.json").is_file():
        raise CheckpointError(
            f"{root} is not a single-pair lab dir (no history.json); pass a pair dir"
        )
    lab = read_lab(root)
    config = LabConfig.from_dict(lab["config"])
    base, aligned = load_checkpoint(root / "base"), load_checkpoint(root / "aligned")
    pr = probes or lab_probes()
    layers, v = _blocked_directions(
        method,
        directions,
        layers,
        config.n_layer,
        base,
        aligned,
        pr,
        random_directions,
        direction_seed,
    )
    name = name or (f"{method}-random" if random_directions else method)
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"name={name!r} must be a plain directory name")
    evaluator = Evaluator(build_tokenizer(), task_shift=task_shift(config))
    settings = {
        k: val for k, val in blocker_kwargs.items() if isinstance(val, (int, float, str, bool))
    }
    rows = []
    for seed in config.ft_seeds if seeds is None else seeds:
        run = f"{name}/seed{seed}"
        _forget(root, run)
        blocker = _blocker(
            method, root, aligned, v, pr, random_directions, direction_seed, blocker_kwargs
        )
        info = {
            "method": method,
            "random_directions": random_directions,
            "settings": settings,
            "layers": "all weights" if _in_weights(method) else layers,
        }
        if v is not None:
            info.update(directions=v.method, rank=v.rank)
        cb = _Blocked(blocker, root, run, info, evaluator)
        t0 = time.perf_counter()
        try:
            finetune(
                aligned,
                config,
                seed=seed,
                steps=steps,
                checkpoint_steps=checkpoint_steps,
                out_dir=root / "blocked" / run,
                callbacks=[cb],
                progress=progress,
            )
        finally:
            blocker.detach()
        info["seconds"] = round(time.perf_counter() - t0, 2)
        update_spec(
            root, lambda spec, run=run, info=info: spec["runs"][run].__setitem__("info", info)
        )
        records = [
            r
            for r in read_json(root / "metrics.json", "lab metrics")
            if str(r["checkpoint"]).startswith(f"{run}/")
        ]
        last = max(records, key=lambda r: int(str(r["checkpoint"]).rsplit("-", 1)[1]))
        rows.append(
            {
                "run": run,
                "seed": seed,
                "seconds": info["seconds"],
                "step": int(str(last["checkpoint"]).rsplit("-", 1)[1]),
                **{k: last[k] for k in ("harm_rate", "harm_logodds", "task_acc", "task_loss")},
            }
        )
        log.info("%s: blocked run %s done in %.1fs", root.name, run, info["seconds"])
    return pd.DataFrame(rows)
