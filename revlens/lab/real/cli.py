"""Command-line entry points of the real track (dispatched from ``revlens lab`` / ``revlens replicate``)."""

import dataclasses
import time
from typing import Any

from revlens.errors import ConfigError

__all__ = ["plan_from_args", "run_lab_real", "run_replicate_real"]


def plan_from_args(args: Any) -> Any:
    """A :class:`~revlens.lab.real.history.RealPlan` from ``revlens lab`` arguments (``--seeds``,
    ``--steps``, ``--no-control``; ``--lr`` / ``--block`` / ``--retrain`` / ``--pretrain-seeds`` do not
    apply to the real track and are refused by name)."""
    from revlens.lab.real.history import RealPlan

    if (
        getattr(args, "lr", None) is not None
        or getattr(args, "block", None)
        or getattr(args, "retrain", False)
    ):
        raise ConfigError(
            "--track real: --lr, --block and --retrain do not apply (settings: docs/lab.md, Real track)"
        )
    try:
        seeds = tuple(int(s) for s in args.seeds)
        steps = int(args.steps) if args.steps is not None else RealPlan.steps
    except ValueError as exc:
        raise ConfigError(f"--track real: --seeds / --steps take integers ({exc})") from None
    points = tuple(sorted({t for t in RealPlan.checkpoints if t <= steps} | {steps}))
    return RealPlan(
        seeds=seeds,
        steps=steps,
        checkpoints=points,
        control=not args.no_control,
        **_workers(args),
    )


def _workers(args: Any) -> dict[str, int]:
    """``{"workers": N}`` from ``--workers N`` (RealPlan validates it), ``{}`` when not given."""
    workers = getattr(args, "workers", None)
    return {} if workers is None else {"workers": workers}


def run_lab_real(args: Any) -> int:
    """``revlens lab --track real --out DIR``: build the history and print its harm table."""
    from revlens.lab.real.history import build_real, harm_frame

    plan = plan_from_args(args)
    t0 = time.perf_counter()
    build_real(args.out, plan, force=args.force, progress=not args.quiet)
    df = harm_frame(args.out)
    print(f"revlens lab --track real: wrote {args.out} in {time.perf_counter() - t0:.1f}s")
    cols = [
        "checkpoint",
        "set",
        "n",
        "refused",
        "harm",
        "harm_lo",
        "harm_hi",
        "refusal_rate",
        "refusal_score",
        "loss",
    ]
    print(
        df[[c for c in cols if c in df]].to_string(index=False, float_format=lambda v: f"{v:.3f}")
    )
    return 0


def run_replicate_real(args: Any) -> int:
    """``revlens replicate --track real --out DIR [--seeds ...] [--lab DIR] [--workers N]``: the
    table and findings."""
    from pathlib import Path

    from revlens._io import check_writable_dir
    from revlens.lab.real.history import RealPlan
    from revlens.lab.real.labdir import lab_plan
    from revlens.lab.real.replicate import ReplicatePlan, replicate_real

    if getattr(args, "full", False) or getattr(args, "pairs", None):
        raise ConfigError("--track real: --full and --pairs apply to the lab's GPT-2 tracks only")
    seeds = tuple(args.seeds)
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must be distinct non-negative integers, got {list(seeds)}")
    lab = getattr(args, "lab", None)
    if lab:  # the lab's own plan (steps, checkpoints, ...); --seeds must be the lab's
        lab_settings = dataclasses.replace(lab_plan(lab), seeds=seeds, **_workers(args))
    else:
        lab_settings = RealPlan(seeds=seeds, **_workers(args))
    plan = ReplicatePlan(lab=lab_settings)
    check_writable_dir(args.out, "--out")
    rep = replicate_real(
        args.out,
        plan,
        lab_dir=Path(lab) if lab else None,
        progress=not args.quiet,
    )
    print(rep.to_markdown())
    print(Path(args.out, "replication.md").resolve())
    return 0
