"""Rank-k reversion subspaces on the lab: how many dimensions does reversion live in?

:func:`lab_subspace` fits a rank-k subspace per layer on the lab's alignment-split harmful prompts
(the prompts blocking reads; harm is scored on the held-out split), :func:`random_subspace` draws
the random k-subspace controls, and :func:`run_subspace_study` runs the whole comparison on lab
dirs — mediation vs k (clamp, k chosen on half of the held-out prompts and reported on the other
half) and blocking the subspace for a grid of k, each beside random subspaces of the same k —
into a :class:`SubspaceStudy` whose :meth:`SubspaceStudy.to_markdown` is the table quoted in
``docs/subspaces.md`` (and that the replication can include).
"""

import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from revlens._io import read_json, write_json, write_text
from revlens._types import PathLike
from revlens.collect.models import collect_models
from revlens.collect.stats import HistoryStats
from revlens.directions import ESTIMATORS, Directions
from revlens.directions.subspace import orient_rows, random_frames
from revlens.drift.subspace import subspace_energy
from revlens.lab.subspace_table import SubspaceStudy, load_subspace_study
from revlens.modes import ControlKind
from revlens.probes import Probes

__all__ = [
    "SubspaceStudy",
    "lab_stats",
    "lab_subspace",
    "load_subspace_study",
    "random_subspace",
    "run_subspace_study",
]


def lab_stats(
    base: torch.nn.Module,
    aligned: torch.nn.Module,
    layers: Sequence[int],
    *,
    probes: Probes | None = None,
) -> HistoryStats:
    """Base and aligned statistics on the lab probes (per-prompt activations and second moments
    kept): :func:`revlens.collect.collect_models` on the two models."""
    from revlens.lab.blocked import lab_probes
    from revlens.lab.language import build_tokenizer

    return collect_models(
        {"base": base, "aligned": aligned},
        probes or lab_probes(),
        tokenizer=build_tokenizer(),
        layers=layers,
        second=True,
        keep=True,
    )


def lab_subspace(
    base: torch.nn.Module,
    aligned: torch.nn.Module,
    layers: Sequence[int],
    k: int,
    *,
    method: str = "pca",
    probes: Probes | None = None,
    n_bootstrap: int = 0,
    stats: HistoryStats | None = None,
) -> Directions:
    """A rank-``k`` reversion subspace per layer fitted on the lab probes (default: the top-k
    principal axes of the paired base − aligned differences on the alignment-split prompts)."""
    stats = stats if stats is not None else lab_stats(base, aligned, layers, probes=probes)
    return ESTIMATORS[method](n_components=k, n_bootstrap=n_bootstrap).fit(stats).direction_


def random_subspace(
    like: Directions,
    k: int,
    *,
    seed: int = 0,
    stats: HistoryStats | None = None,
    kind: ControlKind = "iso",
) -> Directions:
    """Random k-subspaces at ``like``'s layers (one seeded stream per layer), each row oriented
    toward base when ``stats`` are given (so one-sided blocking has a base side, as for the real
    subspace); ``kind="cov"`` draws them from the aligned covariance (needs ``stats``)."""
    from revlens._seeds import generator

    rows = []
    for layer in like.layers:
        cov = (
            stats[stats.aligned_name].covariance[stats.layer_pos(layer)]
            if kind == "cov" and stats
            else None
        )
        b = random_frames(
            1,
            k,
            like.d_model,
            kind=kind,
            covariance=cov,
            generator=generator(seed, "block-random", layer),
        )[0]
        if stats is not None:
            pos = stats.layer_pos(layer)
            b = orient_rows(b, stats.base_mean()[pos] - stats.mean(stats.aligned_name)[pos])
        rows.append(b)
    return Directions.from_tensor(
        torch.stack(rows), like.layers, method=f"random-{kind}", site=like.site
    )


# ---------------------------------------------------------------------- the study on the lab
VARIANTS = ("subspace", "random", "one_sided", "one_sided-random", "confine-penalty")
"""Blocking variants: ``update`` along the subspace (two-sided) and along random k-subspaces;
one-sided ``update`` along each; the confine constraint with the penalty method (λ = 1)."""


def _final_means(model_dir: Path, layers: list[int], probes: Probes) -> torch.Tensor:
    from revlens.lab import load_checkpoint
    from revlens.lab.blocked import _means

    return _means(load_checkpoint(model_dir), probes, layers)


def _energy(drift: torch.Tensor, basis: torch.Tensor) -> float:
    """Mean over layers of ‖B d‖² / ‖d‖² (:func:`revlens.drift.subspace_energy` at the full rank)."""
    return float(
        torch.stack([subspace_energy(drift[i], basis[i])[-1] for i in range(basis.shape[0])]).mean()
    )


def _block_variant(
    lab_dir: Path,
    variant: str,
    k: int,
    sub: Directions,
    stats: HistoryStats,
    seeds: Sequence[int],
    pair: int,
    progress: bool,
) -> pd.DataFrame:
    """One blocking variant at rank ``k`` for every fine-tuning seed; the random variants draw a
    fresh random k-subspace per (pair, seed)."""
    from revlens._seeds import derive
    from revlens.lab.blocked import run_blocked

    kw: dict[str, Any] = {}
    if variant.startswith("one_sided"):
        kw["constraint"] = "one_sided"
    if variant == "confine-penalty":
        kw["constraint"] = "confine"
    method = "penalty" if variant == "confine-penalty" else "update"
    frames = []
    for s in seeds:
        dirs = (
            random_subspace(sub, k, seed=derive(pair, s, "block-random"), stats=stats)
            if variant.endswith("random")
            else sub.truncate(k)
        )
        rows = run_blocked(
            lab_dir,
            method,
            seeds=[s],
            directions=dirs,
            name=f"sub-{variant}-k{k}",
            progress=progress,
            **kw,
        )
        frames.append(rows)
    return pd.concat(frames, ignore_index=True).assign(variant=variant, rank=k)


def _heldout_energy(
    lab_dir: Path, rows: pd.DataFrame, sub: Directions, aligned_mean: torch.Tensor
) -> list[float]:
    from revlens.lab import probe_prompts

    records = {r["checkpoint"]: r for r in read_json(lab_dir / "metrics.json", "lab metrics")}
    out = []
    for _, r in rows.iterrows():
        rec = records[f"{r['run']}/step-{int(r['step'])}"]
        mean = _final_means(
            lab_dir / rec["path"], list(sub.layers), Probes(probe_prompts("harmful"))
        )
        out.append(_energy(mean - aligned_mean, sub.truncate(int(r["rank"])).basis))
    return out


def _json_safe(obj: Any) -> Any:
    """NaN / inf floats as ``None`` (JSON has neither), recursively."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def run_subspace_study(
    out: PathLike,
    *,
    pairs: Sequence[int] = (0, 1),
    seeds: Sequence[int] = (0, 1, 2),
    ranks: Sequence[int] = (1, 2, 4, 8, 16),
    block_ranks: Sequence[int] = (1, 4, 16),
    one_sided_ranks: Sequence[int] = (1,),
    controls: int = 16,
    layers: Sequence[int] = (1, 2, 3, 4),
    method: str = "pca",
    steps: int = 100,
    progress: bool = True,
    resume: bool = True,
) -> SubspaceStudy:
    """The subspace study on the lab (see the module docstring), resumable.

    Per shipped pair: the lab's fine-tunes (``seeds``, no control run); a rank-``max(ranks)``
    subspace fitted on the alignment-split prompts (:func:`lab_subspace`); a clamp study over
    ``ranks`` on the held-out prompts (harm log-odds; ``controls`` isotropic + covariance-matched
    random k-subspaces per layer; k and the layer chosen on half the prompts, reported on the
    other half); then blocking (lab defaults: update projection + restoring term,
    ``refresh_every=2``, probe batches of 32) for ``block_ranks`` plus the chosen k, each beside a
    random k-subspace, one-sided blocking for ``one_sided_ranks`` plus the chosen k (beside a random
    one), and the confine penalty at the chosen k. Every setting is an argument fixed before the
    run; the chosen k enters the blocking grid by the rule, not by looking at blocking results.
    """
    import revlens
    from revlens.lab import LabConfig, harm_logodds_metric, load_checkpoint, probe_prompts, run_lab

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    state_file = out / "subspace-study.json"
    state = read_json(state_file, "subspace study") if resume and state_file.is_file() else {}
    state.setdefault("timings_s", {})
    config = {
        "pairs": list(pairs),
        "seeds": list(seeds),
        "ranks": sorted(set(ranks)),
        "block_ranks": sorted(set(block_ranks)),
        "one_sided_ranks": sorted(set(one_sided_ranks)),
        "controls": controls,
        "layers": list(layers),
        "method": method,
        "steps": steps,
        "metric": "harm log-odds (held-out harmful prompts)",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
    }
    state.setdefault("blocking", [])
    state.setdefault("choices", {})
    for p in pairs:
        name, lab_dir = f"pair{p}", out / "labs" / f"pair{p}"
        if not (lab_dir / "history.json").is_file():
            t = time.perf_counter()
            run_lab(
                lab_dir,
                LabConfig(
                    ft_seeds=tuple(seeds), pretrain_seeds=(p,), control=False, ft_steps=steps
                ),
                force=True,
                progress=progress,
            )
            state["timings_s"][f"lab-{name}"] = round(time.perf_counter() - t, 1)
        base, aligned = load_checkpoint(lab_dir / "base"), load_checkpoint(lab_dir / "aligned")
        stats = lab_stats(base, aligned, layers)
        sub = lab_subspace(base, aligned, layers, max(ranks), method=method, stats=stats)
        causal_dir = out / f"causal-{name}"
        if not (causal_dir / "causal.json").is_file():
            t = time.perf_counter()
            hist = revlens.History.load(lab_dir)
            causal = revlens.ablation_study(
                hist,
                Probes(probe_prompts("harmful")),
                harm_logodds_metric(hist.tokenizer()),
                directions=sub,
                layers=list(layers),
                steps="last",
                runs=[f"seed{s}" for s in seeds],
                kinds=("clamp",),
                ranks=tuple(ranks),
                controls=controls,
                progress=progress,
            )
            causal.save(causal_dir)
            state["timings_s"][f"causal-{name}"] = round(time.perf_counter() - t, 1)
        causal = revlens.load(causal_dir)
        choice = causal.rank_choice("clamp")
        state["choices"][name] = choice
        write_json(state_file, _json_safe(state))
        aligned_mean = _final_means(
            lab_dir / "aligned", list(layers), Probes(probe_prompts("harmful"))
        )
        plan = [
            (v, k)
            for k in sorted(set(block_ranks) | {choice["rank"]})
            for v in ("subspace", "random")
        ]
        plan += [
            (v, k) for k in sorted(set(one_sided_ranks) | {choice["rank"]}) for v in ("one_sided",)
        ]
        plan += [("one_sided-random", choice["rank"]), ("confine-penalty", choice["rank"])]
        for variant, k in plan:
            if any(
                r["pair"] == name and r["variant"] == variant and r["rank"] == k
                for r in state["blocking"]
            ):
                continue
            t = time.perf_counter()
            rows = _block_variant(lab_dir, variant, k, sub, stats, seeds, pair=p, progress=progress)
            rows["energy"] = _heldout_energy(lab_dir, rows, sub, aligned_mean)
            state["blocking"] += [{"pair": name, **r} for r in rows.to_dict("records")]
            state["timings_s"][f"block-{name}-{variant}-k{k}"] = round(time.perf_counter() - t, 1)
            write_json(state_file, _json_safe(state))
    state["config"] = config
    state["timings_s"]["total_this_call"] = round(time.perf_counter() - t0, 1)
    write_json(state_file, _json_safe(state))
    study = load_subspace_study(out)
    write_text(out / "subspaces.md", study.to_markdown())
    return study


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m revlens.lab.subspaces --out DIR [--pairs 0 1] [--seeds 0 1 2] ...``: run (or
    resume) the study and print its table."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m revlens.lab.subspaces", description=(__doc__ or "").splitlines()[0]
    )
    p.add_argument("--out", required=True, type=Path, help="study dir (resumed when it exists)")
    p.add_argument(
        "--pairs", type=int, nargs="+", default=[0, 1], help="shipped pre-training pairs"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds")
    p.add_argument(
        "--ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="k grid of the clamp study"
    )
    p.add_argument(
        "--block-ranks", type=int, nargs="+", default=[1, 4, 16], help="k grid of the blocking runs"
    )
    p.add_argument(
        "--controls", type=int, default=16, help="random k-subspaces per layer and control kind"
    )
    p.add_argument("--steps", type=int, default=100, help="fine-tuning steps T")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    study = run_subspace_study(
        args.out,
        pairs=args.pairs,
        seeds=args.seeds,
        ranks=args.ranks,
        block_ranks=args.block_ranks,
        controls=args.controls,
        steps=args.steps,
        progress=not args.quiet,
    )
    print(study.to_markdown())  # noqa: T201
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
