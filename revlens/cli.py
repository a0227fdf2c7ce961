"""The ``revlens`` command line: ``revlens lab | analyze | ablate | report | replicate``.

Every sub-command has ``--help``. Bad input exits with code 2 and a one-line error; pass
``--debug`` for the traceback.
"""

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from revlens._version import __version__
from revlens.errors import RevlensError

__all__ = ["main"]

# module path -> provides ``register(subparsers)``; each registered parser sets ``func(args) -> int``.
_COMMANDS = (
    "revlens.lab.cli",
    "revlens.commands.analyze",
    "revlens.commands.ablate",
    "revlens.commands.report",
    "revlens.commands.replicate",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(prog="revlens", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"revlens {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _COMMANDS:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a stage not installed yet must not break the others
            if exc.name is None or not mod.startswith(exc.name):
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``revlens`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if not args.debug else logging.DEBUG, format="%(message)s"
    )
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (RevlensError, FileNotFoundError, ValueError) as exc:
        if args.debug:
            raise
        print(f"revlens {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
