"""``revlens analyze``: measure drift along reversion directions and write an HTML report."""

import argparse
import logging
from collections.abc import Sequence

from revlens.commands._common import add_common, check_out, dumps, load_history, publish_out

__all__ = ["register", "run"]

log = logging.getLogger(__name__)


def register(
    subparsers: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser] = ()
) -> argparse.ArgumentParser:
    """Add the ``analyze`` sub-command (its options are :class:`revlens.analyze.AnalyzeConfig`'s fields)."""
    from revlens.analyze import AnalyzeConfig

    p = subparsers.add_parser(
        "analyze",
        parents=list(parents),
        help="directions, drift and nulls over a history → report.html, drift.csv, summary.json",
        description="Derive reversion directions per layer, project every fine-tuning checkpoint's "
        "drift on them against isotropic and covariance-matched nulls, and write report.html "
        "(offline), drift.csv, directions.csv, summary.json and the saved report (report/).",
    )
    add_common(p)
    AnalyzeConfig.add_arguments(p)
    p.add_argument("--cache", metavar="DIR", help="statistics cache dir (resumable)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``revlens analyze``; returns the exit code."""
    from revlens._io import write_text
    from revlens.analyze import AnalyzeConfig, analyze

    config = AnalyzeConfig.from_args(args)
    out = check_out(args.out)
    history = load_history(args.history)
    report = analyze(
        history,
        probes=args.probes,
        config=config,
        cache_dir=args.cache,
        progress=not args.no_progress,
    )
    with publish_out(out) as tmp:  # every file of this run, swapped in as a whole
        report.drift.to_csv(tmp / "drift.csv", index=False)
        report.directions_table.to_csv(tmp / "directions.csv", index=False)
        write_text(tmp / "summary.json", dumps(report.headline()))
        report.save(tmp / "report")
        report.to_html(tmp / "report.html", title=args.title)
    log.info("%s", repr(report))
    print(out / "report.html")  # noqa: T201 (the command's result: where the report is)
    return 0
