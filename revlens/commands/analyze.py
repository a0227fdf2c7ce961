"""``revlens analyze``: measure drift along reversion directions and write an HTML report."""

import argparse
import json
import logging
import math
from typing import Any

from revlens.commands._common import add_common, check_out, load_history, make_out, parse_layers

__all__ = ["register", "run"]

log = logging.getLogger(__name__)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``analyze`` sub-command."""
    p = subparsers.add_parser(
        "analyze",
        help="directions, drift and nulls over a history → report.html, drift.csv, summary.json",
        description="Derive reversion directions per layer, project every fine-tuning checkpoint's "
        "drift on them against isotropic and covariance-matched nulls, and write report.html "
        "(offline), drift.csv, directions.csv, summary.json and the saved report (report/).",
    )
    add_common(p)
    p.add_argument(
        "--methods",
        nargs="+",
        default=["mean_diff", "pca", "probe", "whitened"],
        metavar="METHOD",
        help="direction methods (default: mean_diff pca probe whitened)",
    )
    p.add_argument(
        "--layers", nargs="+", metavar="L", help="layer indices (0 = embeddings) or 'all'"
    )
    p.add_argument(
        "--n-bootstrap", type=int, default=100, help="bootstrap replicates (default 100)"
    )
    p.add_argument(
        "--n-null",
        type=int,
        default=1000,
        help="random directions / permutations per layer (default 1000)",
    )
    p.add_argument("--cache", metavar="DIR", help="statistics cache dir (resumable)")
    p.set_defaults(func=run)
    return p


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN → null, numpy scalars → Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def run(args: argparse.Namespace) -> int:
    """Run ``revlens analyze``; returns the exit code."""
    from revlens.analyze import analyze

    history = load_history(args.history)
    out = check_out(args.out)
    report = analyze(
        None, history, args.probes, methods=args.methods, layers=parse_layers(args.layers),
        n_bootstrap=args.n_bootstrap, n_null=args.n_null, seed=args.seed, cache_dir=args.cache,
        batch_size=args.batch_size, progress=not args.no_progress,
    )  # fmt: skip
    make_out(out)
    report.drift.to_csv(out / "drift.csv", index=False)
    report.directions.to_csv(out / "directions.csv", index=False)
    (out / "summary.json").write_text(
        json.dumps(_clean(report.summary()), indent=1, allow_nan=False)
    )
    report.save(out / "report")
    html = report.to_html(out / "report.html", title=args.title)
    log.info("%s", repr(report))
    print(html)  # noqa: T201 (the command's result: where the report is)
    return 0
