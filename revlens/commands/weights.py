"""``revlens weights``: weight-space reversion of a history (no forward pass), with an HTML report."""

import argparse
import logging
from collections.abc import Sequence

from revlens.commands._common import HISTORY_HELP, check_out, dumps, load_history, publish_out

__all__ = ["register", "run"]

log = logging.getLogger(__name__)


def register(
    subparsers: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser] = ()
) -> argparse.ArgumentParser:
    """Add the ``weights`` sub-command (its options are :class:`revlens.weights.WeightsConfig`'s fields)."""
    from revlens.weights import WeightsConfig

    p = subparsers.add_parser(
        "weights",
        parents=list(parents),
        help="weight-space reversion: cos(ΔW, −V), reverted fraction, V's top-k subspaces vs nulls → html, csv",
        description="Read every checkpoint of a history module by module (full weights or LoRA adapters; no "
        "forward pass) and measure, per module, layer and step, cos(ΔW_t, −V), the reverted fraction "
        "−⟨ΔW_t, V⟩/‖V‖² and the share of ‖ΔW_t‖² in V's top-k singular subspaces beside exact and "
        "random-subspace nulls (V = W_aligned − W_base, ΔW_t = W_t − W_start). Writes weights.csv, "
        "weights-model.csv, weights-layers.csv, summary.json, report.html and the saved result (weights/).",
    )
    p.add_argument("--history", required=True, metavar="DIR", help=HISTORY_HELP)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    p.add_argument("--runs", nargs="+", metavar="RUN", help="runs to read (default: all)")
    p.add_argument("--title", help="title of the HTML report")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    WeightsConfig.add_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``revlens weights``; returns the exit code."""
    from revlens._io import write_text
    from revlens.weights import WeightsConfig, weight_reversion

    config = WeightsConfig.from_args(args, **({"runs": tuple(args.runs)} if args.runs else {}))
    out = check_out(args.out)
    history = load_history(args.history)
    report = weight_reversion(history, config=config, progress=not args.no_progress)
    with publish_out(out) as tmp:  # every file of this run, swapped in as a whole
        report.table.to_csv(tmp / "weights.csv", index=False)
        report.model.to_csv(tmp / "weights-model.csv", index=False)
        report.layers.to_csv(tmp / "weights-layers.csv", index=False)
        write_text(tmp / "summary.json", dumps(report.headline()))
        report.save(tmp / "weights")
        report.to_html(tmp / "report.html", title=args.title)
    log.info("%s", repr(report))
    print(out / "report.html")  # noqa: T201 (the command's result: where the report is)
    return 0
