"""``revlens lab``: build a reversion-lab checkpoint history from the shipped pairs (or retrain)."""

import argparse
import logging
import sys
import time
from pathlib import Path

from revlens.errors import ConfigError, RevlensError
from revlens.lab.config import LabConfig
from revlens.modes import BLOCK_METHODS

__all__ = ["main", "register", "run"]


def _int_list(name: str, values: list[str]) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in values)
    except ValueError as exc:
        raise ConfigError(f"--{name} takes non-negative integers, got {values}") from exc
    if any(v < 0 for v in out) or len(set(out)) != len(out):
        raise ConfigError(f"--{name} takes distinct non-negative integers, got {values}")
    return out


def register(subparsers, parents=()) -> None:
    """Add the ``lab`` subcommand to an argparse ``subparsers`` object (a ``revlens.commands``
    entry point: the library's CLI finds it without importing the lab)."""
    p = subparsers.add_parser(
        "lab",
        parents=list(parents),
        help="train the reversion lab's checkpoint history (pre-train -> align -> benign fine-tune)",
        description="Fine-tune the shipped aligned lab model on a benign task (one run per seed, plus "
        "a control from the base model) and write a lab dir: history.json (a revlens history: "
        "--history DIR reads it), metrics.json, the probe files and save_pretrained checkpoints.",
    )
    _add_arguments(p)
    p.set_defaults(func=run)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="directory to write the lab into")
    p.add_argument(
        "--block",
        nargs="+",
        choices=list(BLOCK_METHODS),
        default=None,
        metavar="METHOD",
        help="also write blocked runs (same seeds, same data order) into blocked/<METHOD>/ "
        "(update, gradient, penalty, hook)",
    )
    p.add_argument(
        "--block-control",
        action="store_true",
        help="with --block: also block along random directions (blocked/<METHOD>-random/)",
    )
    p.add_argument(
        "--track",
        choices=list(_tracks()),
        default="pretrain-like",
        help="lab track: what the benign fine-tune trains on and how (docs/lab.md, Tracks; default: pretrain-like, "
        "where the paper's shape holds — remap, the default until 2026-12-07, is where it does not)",
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        default=["0", "1", "2"],
        metavar="SEED",
        help="fine-tuning seeds, one run each (default: 0 1 2)",
    )
    p.add_argument(
        "--steps", default=None, metavar="T", help="fine-tuning steps per run (default: 100)"
    )
    p.add_argument("--lr", default=None, help="fine-tuning learning rate (default: the config's)")
    p.add_argument(
        "--pretrain-seeds",
        nargs="+",
        default=["0"],
        metavar="SEED",
        help="pre-training seeds, one base/aligned pair each (default: 0, the shipped pair0)",
    )
    p.add_argument(
        "--retrain",
        action="store_true",
        help="pre-train and align from scratch instead of starting from assets/lab/",
    )
    p.add_argument("--force", action="store_true", help="overwrite an --out that is not a lab dir")
    p.add_argument(
        "--no-control", action="store_true", help="skip the control run from the base model"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_workers_argument(p)


def add_workers_argument(p: argparse.ArgumentParser) -> None:
    """``--workers N`` of ``revlens lab --track real`` and ``revlens replicate``."""
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes, one torch thread each (default 2; the numbers do not depend on it): "
        "--track real trains and measures N runs at once; the GPT-2 tracks' replicate runs the "
        "random-direction controls in a second process when N > 1 (revlens lab: --track real only)",
    )


def _tracks() -> tuple[str, ...]:
    from revlens.lab.tracks import TRACKS

    return (*TRACKS, "real")


def _config(args) -> LabConfig:
    if getattr(args, "workers", None) is not None:
        raise ConfigError(
            "--workers applies to --track real only (the GPT-2 lab runs in one process)"
        )
    changes = {
        "ft_seeds": _int_list("seeds", args.seeds),
        "pretrain_seeds": _int_list("pretrain-seeds", args.pretrain_seeds),
        "control": not args.no_control,
    }
    if args.steps is not None:
        try:
            changes["ft_steps"] = int(args.steps)
        except ValueError as exc:
            raise ConfigError(f"--steps takes a positive integer, got {args.steps!r}") from exc
        if changes["ft_steps"] <= 0:
            raise ConfigError(f"--steps must be a positive integer, got {args.steps!r}")
    if args.lr is not None:
        try:
            lr = float(args.lr)
        except ValueError as exc:
            raise ConfigError(f"--lr takes a positive number, got {args.lr!r}") from exc
        if not lr > 0 or lr != lr or lr == float("inf"):
            raise ConfigError(f"--lr must be a positive finite number, got {args.lr!r}")
        changes["ft_lr"] = lr
    return LabConfig.for_track(getattr(args, "track", "pretrain-like"), **changes)


def run(args) -> int:
    """Run ``revlens lab`` from parsed arguments; prints a closing summary table."""
    from revlens.lab.runner import run_lab

    if getattr(args, "track", None) == "real":  # SmolLM2-135M on real data: revlens/lab/real
        from revlens.lab.real.cli import run_lab_real

        return run_lab_real(args)
    config = _config(args)
    t0 = time.perf_counter()
    result = run_lab(
        args.out, config, retrain=args.retrain, force=args.force, progress=not args.quiet
    )
    table = result.summary()
    cols = [
        "pair",
        "run",
        "start",
        "steps",
        "harm_start",
        "harm_final",
        "logodds_start",
        "logodds_final",
        "task_acc_final",
        "seconds",
    ]
    print(f"revlens lab: wrote {result.root} in {time.perf_counter() - t0:.1f}s")
    print(
        "harm = share of held-out harmful prompts where the harmful first token outscores the refusal; "
        "logodds = mean log p(harmful) - log p(refusal); start = aligned (base for the control)"
    )
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    runs = table[table.role == "run"]
    if len(runs):
        print(
            f"mean over runs: harm {runs.harm_start.mean():.3f} -> {runs.harm_final.mean():.3f} "
            f"(log-odds {runs.logodds_start.mean():.2f} -> {runs.logodds_final.mean():.2f}), "
            f"task acc {runs.task_acc_final.mean():.3f}"
        )
    if args.block:
        from revlens.lab.blocked import run_blocked

        for lab_dir in result.lab_dirs.values():
            for method in args.block:
                done = run_blocked(lab_dir, method, progress=not args.quiet)
                print(f"blocked ({method}):")
                print(done.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
                if args.block_control:
                    ctl = run_blocked(
                        lab_dir, method, random_directions=True, progress=not args.quiet
                    )
                    print(f"blocked along random directions ({method}-random):")
                    print(ctl.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="revlens lab")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except RevlensError as exc:
        print(f"revlens lab: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("revlens lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
