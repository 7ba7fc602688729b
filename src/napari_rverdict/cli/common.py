"""What the ``rverdict`` commands share: their error type and the options several of them take."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_rverdict.errors import InputError
from napari_rverdict.physics.protocol_files import PRESETS, SIDECAR_SUFFIXES, load_protocol, protocol_stem


class CliError(InputError):
    """Bad input found by the command line itself (an option, a missing file)."""


def add_protocol_option(p: argparse.ArgumentParser, default: str | None = "innovate",
                        default_help: str = "%(default)s") -> None:
    """``--protocol`` (preset or file) and ``--tr`` (ms): every command that simulates, trains or fits takes them.
    ``default_help`` says in words what happens without ``--protocol`` (e.g. when the default is a sidecar)."""
    p.add_argument("--protocol", default=default,
                   help=f"acquisition: a preset (innovate, innovate-20) or a .scheme / .bval file (default: {default_help})")
    p.add_argument("--tr", type=tr_ms, default=None, help="TR in ms for protocols that carry none (Camino scheme)")


def add_prediction_options(p: argparse.ArgumentParser) -> None:
    """--uncertainty, --device, --chunk: the options of every command that maps volumes with a model bundle."""
    p.add_argument("--uncertainty", action="store_true", help="also write <map>_sd maps (bundles that support it)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default: %(default)s)")
    p.add_argument("--chunk", type=positive_int, default=65536, help="voxels per step (default: %(default)s)")


def self_supervised_sigma(text):
    """--sigma of the self-supervised fit, without a noise-map file: None or "auto" → "auto" (σ estimated from the
    DWI), "mse" → None (the squared error), else a positive number in the DWI's units."""
    if text is None or text == "auto":
        return "auto"
    if text == "mse":
        return None
    try:
        value = float(text)
    except ValueError:
        raise CliError(f"--sigma must be 'auto', 'mse' or a positive number, got {text}") from None
    if not (value > 0 and value != float("inf")):
        raise CliError(f"--sigma must be a positive number, got {text}")
    return value


def load_cli_protocol(args):
    """The direction-averaged protocol named by ``--protocol`` / ``--tr``."""
    return load_protocol(args.protocol, tr=args.tr, direction_averaged=True)


def protocol_inputs(*specs) -> list[Path]:
    """The files the given protocols or DWIs may be read from, for ``inputs=`` of the output checks: each file
    itself and every protocol sidecar beside its stem (``a/dwi.nii.gz`` → ``a/dwi.bval``, ``a/dwi.bvec``,
    ``a/dwi.delta``, …), so an output can replace none of them. Presets and None give none."""
    out: list[Path] = []
    for spec in specs:
        if spec is None or not str(spec).strip() or str(spec).lower() in PRESETS:
            continue
        path = Path(spec)
        stem = protocol_stem(path)
        out += [path, *(stem.with_name(stem.name + suffix) for suffix in SIDECAR_SUFFIXES)]
    return out


def cli_model(name: str):
    """The signal model ``--model`` names; an unknown name is bad input (:class:`CliError`)."""
    from napari_rverdict.physics.models import available_models, get_model

    if name not in available_models():
        raise CliError(f"unknown model '{name}'; choose one of: {', '.join(available_models())}")
    return get_model(name)


def _as_input_error(call, *args):
    """``call(*args)``, a plain ``ValueError`` from it reported as bad input (:class:`CliError`): for library calls
    whose ``ValueError`` means bad input but which do not raise ``InputError`` themselves yet (learn/)."""
    try:
        return call(*args)
    except InputError:
        raise
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def cli_bundle(path):
    """``load_bundle(path)``; a missing file, a file that is not a bundle or an unsupported version is bad input."""
    from napari_rverdict.learn.bundle import load_bundle

    return _as_input_error(load_bundle, path)


def cli_device(name: str):
    """``resolve_device(name)`` for ``--device``; an unknown or unavailable device is bad input."""
    from napari_rverdict.learn.device import resolve_device

    return _as_input_error(resolve_device, name)


def tr_ms(text: str) -> float:
    """argparse type for --tr: a finite TR > 0 in ms. "nan" is refused: leaving --tr out is how TR stays unknown."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a TR in ms, got '{text}'") from None
    if not (0 < v < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a TR in ms (a positive number), got '{text}'"
                                         + (" (leave --tr out when TR is unknown)" if v != v else ""))
    return v


def positive_int(text: str) -> int:
    """argparse type for counts (samples, epochs, chunk sizes): an integer ≥ 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v
