"""``revlens replicate``: the paper's headline table on the lab (see :mod:`revlens.replicate`)."""

import argparse
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``replicate`` sub-command."""
    p = subparsers.add_parser("replicate", help="reproduce the paper's headline table on the lab",
                              description=__doc__)
    p.add_argument("--out", required=True, type=Path, help="output dir (lab, reports, replication.md)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds")
    p.add_argument("--pair", type=int, default=0, help="shipped pre-training pair (assets/lab/pair<k>)")
    p.add_argument("--controls", type=int, default=16, help="random-direction controls per layer")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the replication and print the table."""
    from revlens.errors import ConfigError
    from revlens.replicate import replicate

    if args.controls < 1:
        raise ConfigError(f"--controls must be >= 1, got {args.controls}")
    rep = replicate(args.out, seeds=args.seeds, pair=args.pair, controls=args.controls, progress=not args.quiet)
    print(rep.to_markdown())  # noqa: T201
    print(Path(args.out, "replication.md").resolve())  # noqa: T201
    return 0
