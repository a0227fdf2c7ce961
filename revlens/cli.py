"""The ``revlens`` command line: ``revlens analyze | ablate | report | weights`` and the commands plugins add
(``revlens lab``, ``revlens replicate`` from the embedded lab).

Every sub-command has ``--help``. Bad input exits with code 2 and a one-line error, an interrupt
with 130; pass ``--debug`` (before or after the sub-command) for the traceback.
"""

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from revlens._version import __version__
from revlens.errors import RevlensError

__all__ = ["build_parser", "main"]

_COMMANDS = (
    "revlens.commands.analyze",
    "revlens.commands.ablate",
    "revlens.commands.report",
    "revlens.commands.weights",
    "revlens.commands.datasets",
    "revlens.commands.defenses",
)
_PLUGINS = "revlens.commands"  # entry-point group: name -> "module:register"


def _debug_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command (built in, and from installed plugins)."""
    parser = argparse.ArgumentParser(prog="revlens", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"revlens {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parents = [_debug_parent()]
    registers = [importlib.import_module(mod).register for mod in _COMMANDS]
    plugins = {
        ep.name: ep for ep in entry_points(group=_PLUGINS)
    }  # one per name (several installs may list it)
    registers += [plugins[name].load() for name in sorted(plugins)]
    for register in registers:
        register(sub, parents)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``revlens`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(message)s")
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"revlens {args.command}: interrupted", file=sys.stderr)
        return 130
    except RevlensError as exc:
        if debug:
            raise
        print(f"revlens {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug, not bad input: one line, the traceback with --debug
        if debug:
            raise
        print(
            f"revlens {args.command}: internal error: {type(exc).__name__}: {' '.join(str(exc).split())} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
