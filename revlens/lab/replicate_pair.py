"""One (track, pair) of ``revlens replicate``: the runs, the analyses, and their per-run records.

:func:`run_pair` writes, under ``<out>/<track>/pair<k>/``: the lab dir ``lab/`` (fine-tunes from
the shipped aligned model, one control from base, then the blocked runs of the :class:`Plan`), the
SGD-momentum first step ``sgd/``, ``report/`` (``analyze``), ``causal/`` (the rank-k clamp study)
and ``measures.json`` — per-run records (:mod:`revlens.lab.replicate_table`), per-pair facts (best
layer, nulls, chosen k) and timings. A finished pair (its ``measures.json`` written with the same
plan) is read back instead of rerun.

Order, so that no choice sees a result it is judged by: lab → clamp study (k and its layer chosen
on the selection half of the held-out prompts) → blocking (every method, each with its
random-direction control; the chosen k-subspace beside a random k-subspace) → ``analyze`` of every
run (mean_diff on the 96 held-out harmful prompts) → weight space.

**Cost** (issue 29). Everything runs on one torch thread (:func:`revlens.lab.train.lab_threads`:
the numbers do not depend on the machine's core count). With ``Plan.workers = 2`` (default) the
random-direction blocking controls run in a second process, in a scratch copy of the lab dir
(``_scratch-controls/``: base, aligned, probes, the history's settings), while this process runs
the blocked runs along ``v_rev`` and then the clamp study; their runs are then moved into the lab
dir, and its ``metrics.json`` / ``history.json`` entries put in the order a sequential run writes
them. Each run is the same computation either way (explicit seeds, one thread), so the table is the
same number for number; ``workers=1`` runs everything in this process. ``timings_s`` holds each
phase's wall time and the CPU time of the pair (``cpu``: this process and its children).
"""

import dataclasses
import resource
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from revlens._io import read_json, write_json
from revlens.lab.subspaces import _json_safe

__all__ = ["DEFAULT_PLAN", "FULL_PLAN", "Plan", "run_pair"]


@dataclass(frozen=True)
class Plan:
    """What a replication runs per pair (fixed in docs/lab.md, "Replication settings")."""

    block_methods: tuple[str, ...] = ("update",)
    block_checkpoints: tuple[int, ...] = (
        1,
        20,
        100,
    )  # steps blocked runs save (the table reads 20 and T)
    candidates: tuple[str, ...] = ()  # extra direction candidates analysed beside mean_diff
    ranks: tuple[int, ...] = (1, 4, 16)  # clamp study: k grid
    controls: int = 8  # random k-subspaces per layer and control kind (iso, cov)
    rank_blocking: bool = False  # block the chosen k-subspace (and a random one)
    weight_blocking: bool = False  # revlens.lab.weights variants and their random-subspace controls
    weight_steps: tuple[int, ...] | None = (
        1,
        2,
        5,
        10,
        20,
        50,
        100,
    )  # steps weight space reads (None: all)
    sgd_lr: float = 0.1  # the SGD-momentum (0.9) first step (2 steps run, step 1 read); 0 skips it
    ft_steps: int | None = None  # None: the track's T (100); smaller only for tests
    workers: int = 2  # processes the blocking phase uses (the random-direction controls in the second); same numbers

    def checkpoints(self, steps: int) -> tuple[int, ...]:
        """The blocked runs' saved steps for a fine-tune of ``steps`` (always including ``steps``)."""
        return tuple(sorted({s for s in self.block_checkpoints if s <= steps} | {steps}))

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data, without ``workers`` (how it runs, not what: the same numbers)."""
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()
            if k != "workers"
        }


DEFAULT_PLAN = Plan()
FULL_PLAN = Plan(
    block_methods=("update", "gradient", "penalty", "hook"),
    candidates=("pca", "probe", "whitened"),
    ranks=(1, 2, 4, 8, 16),
    controls=16,
    rank_blocking=True,
    weight_blocking=True,
    weight_steps=None,
)

LAYERS = (1, 2, 3, 4)


def _probes(config: Any) -> tuple[Any, dict[str, Any]]:
    """What ``analyze`` reads for a track: the held-out harmful prompts, as plain text or (chat
    track) through the lab's chat template at the 3 post-instruction positions."""
    if config.probe_format == "chat":
        from revlens.lab.chat import chat_probes

        return chat_probes("harmful", position=("post_instruction", 3)), {
            "position": ("post_instruction", 3)
        }
    return None, {}


def _primary(report: Any) -> str:
    return "mean_diff@-1" if "mean_diff@-1" in report.directions else "mean_diff"


def _lab(
    pair_dir: Path, track: str, pair: int, seeds: Sequence[int], plan: Plan, progress: bool
) -> dict[str, float]:
    from revlens.lab import LabConfig, run_lab

    times: dict[str, float] = {}
    t = time.perf_counter()
    steps = {} if plan.ft_steps is None else {"ft_steps": plan.ft_steps}
    run_lab(
        pair_dir / "lab",
        LabConfig.for_track(track, ft_seeds=tuple(seeds), pretrain_seeds=(pair,), **steps),
        force=True,
        progress=progress,
    )
    times["lab"] = time.perf_counter() - t
    if plan.sgd_lr > 0:
        t = time.perf_counter()
        cfg = LabConfig.for_track(
            track,
            ft_seeds=tuple(seeds),
            pretrain_seeds=(pair,),
            ft_optimizer="sgd",
            ft_lr=plan.sgd_lr,
            ft_momentum=0.9,
            ft_steps=2,
            checkpoint_steps=(1, 2),
            control=False,
        )  # analyze needs 2 steps; the table reads step 1
        run_lab(pair_dir / "sgd", cfg, force=True, progress=progress)
        times["sgd"] = time.perf_counter() - t
    return times


def _clamp(
    pair_dir: Path, seeds: Sequence[int], plan: Plan, progress: bool
) -> tuple[Any, Any, Any]:
    """The rank-k clamp study on the held-out prompts: (causal report, subspace, its stats)."""
    import revlens
    from revlens.lab import harm_logodds_metric, load_checkpoint, probe_prompts
    from revlens.lab.subspaces import lab_stats, lab_subspace
    from revlens.probes import Probes

    lab_dir = pair_dir / "lab"
    base, aligned = load_checkpoint(lab_dir / "base"), load_checkpoint(lab_dir / "aligned")
    stats = lab_stats(base, aligned, LAYERS)
    sub = lab_subspace(base, aligned, LAYERS, max(plan.ranks), stats=stats)
    hist = revlens.History.load(lab_dir)
    causal = revlens.ablation_study(
        hist,
        Probes(probe_prompts("harmful")),
        harm_logodds_metric(hist.tokenizer()),
        directions=sub,
        layers=list(LAYERS),
        steps="last",
        runs=[f"seed{s}" for s in seeds],
        kinds=("clamp",),
        ranks=tuple(plan.ranks),
        controls=plan.controls,
        progress=progress,
    )
    causal.save(pair_dir / "causal")
    return causal, sub, stats


def _block(
    pair_dir: Path,
    seeds: Sequence[int],
    plan: Plan,
    pair: int,
    choice: dict[str, Any],
    sub: Any,
    stats: Any,
    progress: bool,
    *,
    clamp: Any = None,
) -> Any:
    """The blocked runs of the plan; with ``plan.workers > 1`` the random-direction controls run in a
    second process meanwhile (module docstring), and ``clamp()`` (the clamp study, if given) runs in
    this one after the ``v_rev`` runs. Returns ``clamp()``'s result."""
    from revlens._seeds import derive
    from revlens.lab import LabConfig
    from revlens.lab.blocked import run_blocked
    from revlens.lab.runner import read_lab
    from revlens.lab.subspaces import random_subspace

    lab_dir = pair_dir / "lab"
    ck = plan.checkpoints(LabConfig.from_dict(read_lab(lab_dir)["config"]).ft_steps)
    jobs = [
        dict(method=m, seeds=list(seeds), checkpoint_steps=list(ck), random_directions=r)
        for m in plan.block_methods
        for r in (False, True)
    ]
    order = [_group_name(j) for j in jobs]  # the order a sequential run writes the groups in
    remote = [j for j in jobs if j["random_directions"]] if plan.workers > 1 else []
    pool = scratch = future = None
    if remote:
        import concurrent.futures
        import multiprocessing

        scratch = _scratch_lab(lab_dir, pair_dir / "_scratch-controls")
        pool = concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn")
        )
        future = pool.submit(_run_jobs, str(scratch), remote)
    try:
        for j in jobs:
            if j not in remote:
                run_blocked(lab_dir, **j, progress=progress)
        out = clamp() if clamp is not None else None
        if future is not None:
            future.result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if scratch is not None:
        _merge(lab_dir, scratch, [_group_name(j) for j in remote], order)
    if plan.rank_blocking:
        k = int(choice["rank"])
        run_blocked(
            lab_dir,
            "update",
            seeds=seeds,
            directions=sub.truncate(k),
            name="rank-k",
            checkpoint_steps=ck,
            progress=progress,
        )
        for (
            s
        ) in seeds:  # a fresh random k-subspace per (pair, seed), as the subspace study draws them
            rnd = random_subspace(sub, k, seed=derive(pair, s, "block-random"), stats=stats)
            run_blocked(
                lab_dir,
                "update",
                seeds=[s],
                directions=rnd,
                name="rank-k-random",
                checkpoint_steps=ck,
                progress=progress,
            )
    if plan.weight_blocking:
        from revlens.lab.weights import VARIANTS, run_weight_blocking

        lora = LabConfig.from_dict(read_lab(lab_dir)["config"]).ft_lora_rank > 0
        # a LoRA update is a product of factors: WeightBlocker keeps it off V's left subspace, but cannot hold
        # it orthogonal to V itself (side="direction"), so the lora track runs the `weights` variant only
        variants = {
            n: {**kw, "checkpoint_steps": ck}
            for n, kw in VARIANTS.items()
            if not (lora and kw.get("side") == "direction")
        }
        run_weight_blocking(lab_dir, seeds=seeds, variants=variants, progress=progress)
    return out


def _group_name(job: dict[str, Any]) -> str:
    return f"{job['method']}-random" if job["random_directions"] else str(job["method"])


def _run_jobs(lab_dir: str, jobs: list[dict[str, Any]]) -> None:
    """In the second process: the blocked runs ``jobs`` into ``lab_dir``, on one thread."""
    from revlens.lab.blocked import run_blocked
    from revlens.lab.train import lab_threads

    with lab_threads():
        for j in jobs:
            run_blocked(Path(lab_dir), **j, progress=False)


def _scratch_lab(lab_dir: Path, scratch: Path) -> Path:
    """A lab dir holding what blocked runs read: base, aligned, probes and ``history.json`` (its
    settings), with no metrics."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    for name in ("base", "aligned", "probes"):
        shutil.copytree(lab_dir / name, scratch / name)
    shutil.copy2(lab_dir / "history.json", scratch / "history.json")
    write_json(scratch / "metrics.json", [])
    return scratch


def _merge(lab_dir: Path, scratch: Path, groups: list[str], order: list[str]) -> None:
    """Move the blocked run groups ``groups`` from ``scratch`` into ``lab_dir`` and put the metrics
    records and history runs of every group in ``order`` (what a sequential run writes)."""
    from revlens.history.spec import update_spec

    rank = {g: i for i, g in enumerate(order)}

    def key(name: str) -> int:  # ungrouped entries (the lab's own) first, in their order
        return rank.get(name.split("/", 1)[0], -1) if "/" in name else -1

    theirs = read_json(scratch / "history.json", "lab history")["runs"]
    for g in groups:
        dest = lab_dir / "blocked" / g
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(str(scratch / "blocked" / g), str(dest))
    records = read_json(lab_dir / "metrics.json", "lab metrics") + read_json(
        scratch / "metrics.json", "lab metrics"
    )
    write_json(
        lab_dir / "metrics.json", sorted(records, key=lambda r: key(str(r.get("checkpoint", ""))))
    )

    def change(spec: dict[str, Any]) -> None:
        runs = {**spec["runs"], **{k: v for k, v in theirs.items() if k.split("/", 1)[0] in groups}}
        spec["runs"] = dict(sorted(runs.items(), key=lambda kv: key(kv[0])))

    update_spec(lab_dir, change)
    shutil.rmtree(scratch)


def _analyze(pair_dir: Path, plan: Plan, progress: bool) -> tuple[Any, Any]:
    import revlens
    from revlens.lab import LabConfig
    from revlens.lab.runner import read_lab

    config = LabConfig.from_dict(read_lab(pair_dir / "lab")["config"])
    probes, extra = _probes(config)
    kw = dict(
        methods=["mean_diff", *plan.candidates],
        n_bootstrap=0,
        n_stability=0,
        progress=progress,
        **extra,
    )
    report = revlens.analyze(pair_dir / "lab", probes, **kw)
    report.save(pair_dir / "report")
    sgd = revlens.analyze(pair_dir / "sgd", probes, **kw) if (pair_dir / "sgd").is_dir() else None
    return report, sgd


def _weights(pair_dir: Path, plan: Plan, progress: bool) -> Any:
    """Weight-space reversion of the unblocked runs and the control (at ``plan.weight_steps``)."""
    import revlens
    from revlens.history import History, Run
    from revlens.weights import weight_reversion

    h = revlens.History.load(pair_dir / "lab")
    runs = {}
    for name, run in h.runs.items():
        if run.kind in ("run", "control"):
            keep = {
                s: c
                for s, c in run.steps.items()
                if plan.weight_steps is None or s in plan.weight_steps
            }
            runs[name] = Run(name, keep, start=run.start, kind=run.kind)
    sub = History(
        base=h.base,
        aligned=h.aligned,
        runs=runs,
        architecture=h.architecture,
        metadata=h.metadata,
        metrics=None,
    )
    return weight_reversion(sub, progress=progress)


def run_pair(
    out: Path, track: str, pair: int, seeds: Sequence[int], plan: Plan, *, progress: bool = True
) -> dict[str, Any]:
    """Run (or read back) one pair of a track; returns ``measures.json``'s content plus the
    in-memory ``weights`` report and weight-blocking table (``None`` when read back)."""
    pair_dir = Path(out) / f"pair{pair}"
    done = pair_dir / "measures.json"
    key = {"track": track, "pair": pair, "seeds": list(seeds), "plan": plan.to_dict()}
    if done.is_file():
        state = read_json(done, "replication measures")
        if state.get("key") == key:
            return {
                **state,
                "weights": _read_weights(pair_dir),
                "weight_table": _read_table(pair_dir),
            }
    from revlens.lab.train import lab_threads

    with lab_threads():
        return _run_pair(pair_dir, done, key, track, pair, seeds, plan, progress)


def _cpu() -> float:
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _run_pair(
    pair_dir: Path,
    done: Path,
    key: dict[str, Any],
    track: str,
    pair: int,
    seeds: Sequence[int],
    plan: Plan,
    progress: bool,
) -> dict[str, Any]:
    from revlens.lab.replicate_measure import measures

    t0, c0 = time.perf_counter(), _cpu()
    times = _lab(pair_dir, track, pair, seeds, plan, progress)
    if plan.rank_blocking:  # blocking reads the clamp study's choice of k: the study first
        t = time.perf_counter()
        causal, sub, stats = _clamp(pair_dir, seeds, plan, progress)
        times["clamp"] = time.perf_counter() - t
        t = time.perf_counter()
        _block(pair_dir, seeds, plan, pair, causal.rank_choice("clamp"), sub, stats, progress)
        times["blocking"] = time.perf_counter() - t
    else:  # the clamp study runs in this process while the second one runs the blocking controls
        t = time.perf_counter()
        causal, sub, stats = _block(
            pair_dir,
            seeds,
            plan,
            pair,
            {},
            None,
            None,
            progress,
            clamp=lambda: _clamp(pair_dir, seeds, plan, progress),
        )
        times["blocking + clamp"] = time.perf_counter() - t
    choice = causal.rank_choice("clamp")
    t = time.perf_counter()
    report, sgd = _analyze(pair_dir, plan, progress)
    times["analyze"] = time.perf_counter() - t
    t = time.perf_counter()
    weights = _weights(pair_dir, plan, progress)
    weights.save(pair_dir / "weights")
    table = None
    if plan.weight_blocking:
        from revlens.lab.weights import weight_blocking_table

        table = weight_blocking_table(pair_dir / "lab", progress=progress)
        write_json(pair_dir / "weight-blocking.json", table.to_dict("records"))
    times["weights"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    times["cpu"] = _cpu() - c0
    records, meta = measures(f"pair{pair}", report, sgd, causal, choice, plan)
    state = {
        "key": key,
        "records": records,
        "meta": meta,
        "timings_s": {k: round(v, 1) for k, v in times.items()},
    }
    write_json(done, _json_safe(state))
    return {**state, "weights": weights, "weight_table": table}


def _read_weights(pair_dir: Path) -> Any:
    import revlens

    return revlens.load(pair_dir / "weights") if (pair_dir / "weights").is_dir() else None


def _read_table(pair_dir: Path) -> pd.DataFrame | None:
    f = pair_dir / "weight-blocking.json"
    return pd.DataFrame(read_json(f, "weight blocking table")) if f.is_file() else None
