"""The ``rverdict`` command line: ``rverdict <command> [options]`` (also ``python -m napari_rverdict.cli``).

Each command is a function ``cmd_<name>(args)`` registered in :func:`build_parser` with its own sub-parser.
Expected failures (bad input, files that are not ours) raise :class:`CliError` or ``ValueError``/``OSError``;
:func:`main` turns them into one line on stderr and exit code 2. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from importlib import import_module


class CliError(Exception):
    """An error to show the user as one line."""


def add_protocol_option(p: argparse.ArgumentParser, default: str | None = "innovate",
                        default_help: str = "%(default)s") -> None:
    """``--protocol`` (preset or file) and ``--tr`` (ms): every command that simulates, trains or fits takes them.
    ``default_help`` says in words what happens without ``--protocol`` (e.g. when the default is a sidecar)."""
    p.add_argument("--protocol", default=default,
                   help=f"acquisition: a preset (innovate, innovate-20) or a .scheme / .bval file (default: {default_help})")
    p.add_argument("--tr", type=float, default=None, help="TR in ms for protocols that carry none (Camino scheme)")


def load_cli_protocol(args):
    """The direction-averaged protocol named by ``--protocol`` / ``--tr``."""
    from .physics.protocol import load_protocol

    protocol = load_protocol(args.protocol, tr=args.tr)
    if len(protocol.shells()) < len(protocol):
        protocol = protocol.direction_averaged()
    return protocol


def positive_int(text: str) -> int:
    """argparse type for counts (samples, epochs, chunk sizes): an integer ≥ 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def parse_ranges(items) -> dict:
    """``["R=0.1,12", "T1=100,3000"]`` → {"R": (0.1, 12.0), "T1": (100.0, 3000.0)}."""
    out = {}
    for item in items or []:
        try:
            name, bounds = item.split("=", 1)
            low, high = (float(x) for x in bounds.split(","))
        except ValueError:
            raise CliError(f"--range expects NAME=LOW,HIGH (e.g. R=0.1,12), got '{item}'") from None
        out[name.strip()] = (low, high)
    return out


def parse_snr(text: str):
    """``35`` → 35.0; ``15-60`` or ``15,60`` → (15.0, 60.0). SNRs are positive; a range needs low < high."""
    number = r"(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"
    m = re.fullmatch(rf"\s*{number}\s*(?:[-,]\s*{number}\s*)?", str(text))
    if m is None:
        raise CliError(f"--snr expects a positive number or LOW-HIGH (e.g. 35 or 15-60), got '{text}'")
    low, high = m.group(1), m.group(2)
    values = [float(low)] + ([float(high)] if high is not None else [])
    if any(v <= 0 for v in values):
        raise CliError(f"--snr must be positive, got '{text}'")
    if len(values) == 1:
        return values[0]
    if values[0] >= values[1]:
        raise CliError(f"--snr range needs LOW < HIGH, got '{text}'")
    return tuple(values)


# ---------------------------------------------------------------------- simulate
def cmd_simulate(args) -> int:
    from .synth import simulate

    protocol = load_cli_protocol(args)
    data = simulate(args.model, protocol, n=args.n, snr=parse_snr(args.snr), ranges=parse_ranges(args.range),
                    fraction_sampler=args.sampler, seed=args.seed)
    data.save(args.out)
    print(f"wrote {len(data)} {data.model.name} signals × {len(protocol)} measurements to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rverdict", description="VERDICT / rVERDICT microstructure maps")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="make noisy synthetic signals (.npz)")
    p.add_argument("--model", default="rverdict", help="verdict or rverdict (default: %(default)s)")
    add_protocol_option(p)
    p.add_argument("--n", type=int, default=100_000, help="number of signals")
    p.add_argument("--snr", default="35", help="SNR, or LOW-HIGH drawn per sample (default: %(default)s)")
    p.add_argument("--range", action="append", metavar="NAME=LOW,HIGH", help="override a training range")
    p.add_argument("--sampler", default="dirichlet", choices=("dirichlet", "tissue"), help="fraction sampler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .npz")
    p.set_defaults(func=cmd_simulate)

    # Further commands live in their own modules, each with `register(subparsers)`; heavy imports stay inside
    # the command functions so `rverdict --help` is fast.
    for name in _COMMAND_MODULES:
        import_module(f"napari_rverdict.{name}").register(sub)
    return parser


_COMMAND_MODULES: tuple[str, ...] = ("_cli_train", "_cli_volume", "_cli_uncertainty")


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


if __name__ == "__main__":
    sys.exit(main())
