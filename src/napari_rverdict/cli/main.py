"""The ``rverdict`` command line: ``rverdict <command> [options]`` (also ``python -m napari_rverdict``).

Each command is a function ``cmd_<name>(args)`` registered in :func:`build_parser` with its own sub-parser.
Bad input is the project's own :class:`~napari_rverdict.errors.InputError` (``CliError``, ``ProtocolError``, ...) or an
``OSError`` from a file: :func:`main` prints it as one line on stderr and exits 2. Anything else is a bug: one line
``bug: <type>: <message>`` and exit 1. ``--debug`` re-raises either with the traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from contextlib import ExitStack
from importlib import import_module

from napari_rverdict.errors import InputError
from napari_rverdict.threads import torch_threads, using_torch_threads


class _OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors as one line on stderr (exit 2), like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="rverdict", description="VERDICT / rVERDICT microstructure maps")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)


    # Commands live in their own modules, each with `register(subparsers)`; heavy imports stay inside
    # the command functions so `rverdict --help` is fast.
    for name in _COMMAND_MODULES:
        import_module(f"napari_rverdict.cli.{name}").register(sub)
    return parser


_COMMAND_MODULES: tuple[str, ...] = ("simulate", "train", "volume", "report", "noise", "cohort")


class _AfterImport:
    """A ``sys.meta_path`` finder that calls ``callback()`` once the module ``name`` has been executed (a post-import
    hook); it finds nothing itself and removes itself on first use."""

    def __init__(self, name: str, callback) -> None:
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        self.remove()
        spec = importlib.util.find_spec(fullname)  # the other finders' spec
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        inner, callback = spec.loader.exec_module, self.callback

        def exec_module(module):
            inner(module)
            callback()

        spec.loader.exec_module = exec_module  # this spec's own loader only
        return spec

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def _torch_threads_for_command(stack: ExitStack) -> None:
    """The command runs with the CPUs this process may use (affinity, cgroup quota) as torch's threads, restored
    after. Set once torch is imported: a command refused before its heavy imports (an existing --out, a missing
    input) answers without loading torch (≈ 2 s)."""
    count = torch_threads("main")
    if "torch" in sys.modules:
        stack.enter_context(using_torch_threads(count))
        return
    hook = _AfterImport("torch", lambda: stack.enter_context(using_torch_threads(count)))
    sys.meta_path.insert(0, hook)
    stack.callback(hook.remove)


def _warning_lines(caught) -> list[str]:
    """Each distinct warning message once, as one line (no file/line noise from ``warnings.showwarning``)."""
    seen: dict[str, None] = {}
    for w in caught:
        seen.setdefault(" ".join(str(w.message).split()), None)
    return list(seen)


def _is_bad_input(exc: BaseException) -> bool:
    """Bad input: our :class:`InputError` or an ``OSError`` from a file. Everything else is a bug."""
    return isinstance(exc, (InputError, OSError))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def main(argv=None) -> int:
    """Run one command. Warnings are collected and printed as one line each when the command succeeds. Bad input
    (:class:`InputError`, ``OSError``) prints one error line on stderr and returns 2; any other exception is a bug:
    one ``bug:`` line and 1. ``--debug`` re-raises with the traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with ExitStack() as stack:
                _torch_threads_for_command(stack)
                rc = int(args.func(args) or 0)
        except KeyboardInterrupt:
            print("rverdict: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:
            if args.debug:
                raise
            if _is_bad_input(exc):
                print(f"rverdict {args.command}: error: {_one_line(exc)}", file=sys.stderr)
                return 2
            print(f"rverdict {args.command}: bug: {type(exc).__name__}: {_one_line(exc)} "
                  "(run with --debug for the traceback)", file=sys.stderr)
            return 1
    for line in _warning_lines(caught):
        print(f"rverdict {args.command}: warning: {line}", file=sys.stderr)
    return rc

