"""``revlens report``: re-render a saved report (drift or causal) as offline HTML."""

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from revlens._types import PathLike
from revlens.errors import ConfigError

__all__ = ["load_saved", "register", "run"]


def register(
    subparsers: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser] = ()
) -> argparse.ArgumentParser:
    """Add the ``report`` sub-command."""
    p = subparsers.add_parser(
        "report",
        parents=list(parents),
        help="re-render a saved report (from analyze, ablate or weights) as HTML",
        description="Load a saved report - the output dir of `revlens analyze` / `revlens ablate`, "
        "or the report/ dir inside it - and write it again as one offline HTML file.",
    )
    p.add_argument("dir", metavar="DIR", help="a saved report dir, or an analyze/ablate output dir")
    p.add_argument("--out", metavar="FILE.html", help="where to write (default: DIR/report.html)")
    p.add_argument("--title", help="title of the HTML report")
    p.set_defaults(func=run)
    return p


def load_saved(path: PathLike) -> Any:
    """Load a saved ``Report`` or ``CausalReport`` from ``path`` or from its report/ or causal/
    sub-directory (:func:`revlens.load`)."""
    import revlens

    root = Path(path)
    for cand in (root, root / "report", root / "causal", root / "weights"):
        if any((cand / meta).is_file() for meta in ("causal.json", "report.json", "weights.json")):
            return revlens.load(cand)
    raise ConfigError(
        f"{root} holds no saved revlens report (looked for report.json / causal.json / weights.json in it, "
        "report/, causal/ and weights/)"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``revlens report``; returns the exit code."""
    src = Path(args.dir)
    if not src.is_dir():
        raise ConfigError(f"{src} is not a directory")
    report = load_saved(src)
    html = report.to_html(Path(args.out) if args.out else src / "report.html", title=args.title)
    print(html)  # noqa: T201 (the command's result: where the report is)
    return 0
