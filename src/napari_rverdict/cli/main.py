"""The ``rverdict`` command line: ``rverdict <command> [options]`` (also ``python -m napari_rverdict``).

Each command is a function ``cmd_<name>(args)`` registered in :func:`build_parser` with its own sub-parser.
Expected failures (bad input, files that are not ours) raise :class:`CliError` or ``ValueError``/``OSError``;
:func:`main` turns them into one line on stderr and exit code 2. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from importlib import import_module

from napari_rverdict.cli.common import CliError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rverdict", description="VERDICT / rVERDICT microstructure maps")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)


    # Commands live in their own modules, each with `register(subparsers)`; heavy imports stay inside
    # the command functions so `rverdict --help` is fast.
    for name in _COMMAND_MODULES:
        import_module(f"napari_rverdict.cli.{name}").register(sub)
    return parser


_COMMAND_MODULES: tuple[str, ...] = ("simulate", "train", "volume", "report")


def _warning_lines(caught) -> list[str]:
    """Each distinct warning message once, as one line (no file/line noise from ``warnings.showwarning``)."""
    seen: dict[str, None] = {}
    for w in caught:
        seen.setdefault(" ".join(str(w.message).split()), None)
    return list(seen)


def main(argv=None) -> int:
    """Run one command. Warnings are collected and printed as one line each when the command succeeds; a failure
    prints exactly one error line on stderr (exit 2; ``--debug`` re-raises with the traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rc = int(args.func(args) or 0)
        except KeyboardInterrupt:
            print("rverdict: interrupted", file=sys.stderr)
            return 130
        except (CliError, ValueError, KeyError, OSError, RuntimeError) as exc:
            if args.debug:
                raise
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            print(f"rverdict {args.command}: error: {' '.join(str(msg).split())}", file=sys.stderr)
            return 2
    for line in _warning_lines(caught):
        print(f"rverdict {args.command}: warning: {line}", file=sys.stderr)
    return rc

