"""A sketch of ``compare_defenses`` on the lab (issue 31): the published defenses of
:mod:`revlens.defenses`, each beside the **same defense along random directions** (its control),
over the same fine-tuning seeds and data order, in one table.

Per (defense, control, seed) one fine-tune of the pair's aligned model (``finetune(seed=...)``: the
batches depend only on the seed), scored by the lab's evaluator after the last step:

- ``harm_rate``, ``harm_logodds`` (held-out harmful prompts), ``task_acc``, ``task_loss``;
- ``seconds`` and ``time_multiple`` (over the undefended run of the same seed; the box's load
  makes single timings noisy);
- ``cos_drift_v``: the mean over layers of ``cos(μ_l(θ_T) − μ_l(aligned), v_l)`` on the lab's
  harmful alignment-split probes, with ``v_l = normalise(μ_l(base) − μ_l(aligned))`` (the lab's
  ``mean_diff`` reversion direction, :func:`revlens.lab.blocked.lab_directions`).

Controls: SafeLoRA / AsFT with a Gaussian ``V`` of the same shape and norm per weight
(``random=True``); the safety-layer freeze on a random other contiguous block range of the same
length;
the ProCon-style penalty along random unit directions. Not yet: harm CIs, trajectories, KL,
over-refusal, peak memory, resumability, the real track (``docs/defenses.md``).
"""

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from revlens._seeds import generator
from revlens.block import BlockingStrategy
from revlens.defenses import AsFT, ProConPenalty, SafeLoRA, SafetyLayerFreeze, locate_safety_layers
from revlens.errors import ConfigError
from revlens.lab.blocked import _means, lab_directions, lab_probes
from revlens.modes import check_mode

__all__ = ["DEFENSES", "compare_defenses"]

DEFENSES = ("safelora", "safelora_projector", "asft", "safety_freeze", "procon")


class _Driver:
    """The lab's ``finetune`` callbacks → the strategy protocol (attach, finish, detach)."""

    def __init__(self, strategies: list[BlockingStrategy]) -> None:
        self.strategies = strategies

    def on_train_begin(self, model: torch.nn.Module, optimizer: Any) -> None:
        for s in self.strategies:
            s.attach(model, optimizer)

    def on_train_end(self, model: torch.nn.Module) -> None:
        try:
            for s in self.strategies:
                s.finish()
        finally:
            for s in self.strategies:
                s.detach()


def _strategies(name: str, pair: Path, aligned: Any, *, control: bool, seed: int, safety: tuple[int, int],
                n_layer: int, v: Any, lora: bool) -> list[BlockingStrategy]:
    from revlens.lab import build_tokenizer

    base_dir, aligned_dir = pair / "base", pair / "aligned"
    if name == "safelora":
        return [SafeLoRA(base_dir, aligned_dir, random=control, seed=seed)]
    if name == "safelora_projector":
        return [SafeLoRA(base_dir, aligned_dir, projection="projector", k=8, random=control, seed=seed)]
    if name == "asft":
        return [AsFT(base_dir, aligned_dir, lam=1.0, random=control, seed=seed)]
    if name == "safety_freeze":
        first, last = safety
        if control:  # a random other range of the same length (the same one only if no other exists)
            width = last - first
            starts = [s for s in range(n_layer - width) if s != first] or [first]
            first = starts[int(torch.randint(0, len(starts), (1,), generator=generator(seed, "freeze-control")))]
            last = first + width
        return [SafetyLayerFreeze(first, last)]
    layers = list(v.layers)
    d = v if not control else lab_directions(aligned, aligned, layers, random=True,
                                             generator=generator(seed, "procon-control"))
    extra = {"params": "*lora_*"} if lora else {}
    return [ProConPenalty(d, lab_probes(), aligned, tokenizer=build_tokenizer(), strength=1.0, **extra)]


def compare_defenses(pair_dir: Any, defenses: Sequence[str] = DEFENSES, *, seeds: Sequence[int] = (0, 1, 2),
                     steps: int | None = None, config: Any = None, progress: bool = False) -> pd.DataFrame:
    """Run every defense and its random control beside the undefended run (module docstring).

    Args:
        pair_dir: a base/aligned pair dir (``base/``, ``aligned/``; e.g. the shipped
            ``revlens.lab.runner.asset_dir() / "pair0"`` or a lab's ``pair<k>``).
        defenses: names from :data:`DEFENSES`.
        seeds: fine-tuning seeds (each defense sees the same batches per seed).
        steps: fine-tuning steps (default: the config's).
        config: a :class:`~revlens.lab.LabConfig` (default: the ``pretrain-like`` track).

    Returns:
        One row per (defense, control, seed): ``defense, control, seed`` and the columns of the
        module docstring; the undefended run is ``defense="none"``.
    """
    from revlens.lab import LabConfig, build_tokenizer, probe_prompts
    from revlens.lab.metrics import Evaluator
    from revlens.lab.modeling import load_checkpoint
    from revlens.lab.tracks import task_shift
    from revlens.lab.train import finetune

    for name in defenses:
        check_mode("defense", name, DEFENSES)
    pair = Path(pair_dir)
    if not (pair / "base").is_dir() or not (pair / "aligned").is_dir():
        raise ConfigError(f"{pair} is not a base/aligned pair dir (expected base/ and aligned/)")
    config = config or LabConfig(track="pretrain-like", ft_data="pretrain")
    base, aligned = load_checkpoint(pair / "base"), load_checkpoint(pair / "aligned")
    tokenizer = build_tokenizer()
    evaluator = Evaluator(tokenizer, task_shift=task_shift(config))
    layers = list(range(1, config.n_layer + 1))
    v = lab_directions(base, aligned, layers)
    mu0 = _means(aligned, lab_probes(), layers)
    tokenizer.padding_side = "right"
    located = locate_safety_layers(aligned, tokenizer, probe_prompts("benign", "heldout"),
                                   probe_prompts("harmful", "heldout"))
    safety = (located.first, located.last)
    finetune(aligned, config, seed=0, steps=1, progress=False)  # warm-up: the first run pays one-time costs
    rows = []
    for seed in seeds:
        runs = [("none", False)] + [(n, c) for n in defenses for c in (False, True)]
        for name, control in runs:
            strategies = [] if name == "none" else _strategies(
                name, pair, aligned, control=control, seed=seed, safety=safety, n_layer=config.n_layer,
                v=v, lora=config.ft_lora_rank > 0)
            t0 = time.perf_counter()
            out = finetune(aligned, config, seed=seed, steps=steps, callbacks=[_Driver(strategies)],
                           progress=progress)
            seconds = time.perf_counter() - t0
            drift = _means(out.model, lab_probes(), layers) - mu0
            cos = torch.nn.functional.cosine_similarity(drift, v.vectors.double(), dim=-1)
            rows.append({"defense": name, "control": control, "seed": seed, **evaluator(out.model),
                         "seconds": seconds, "cos_drift_v": float(cos.mean())})
    table = pd.DataFrame(rows)
    free = table[table["defense"] == "none"].set_index("seed")["seconds"]
    table["time_multiple"] = table["seconds"] / table["seed"].map(free)
    table.attrs["safety_layers"] = safety
    return table
