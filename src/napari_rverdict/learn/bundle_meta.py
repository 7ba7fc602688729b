"""What a bundle file holds besides its weights: plain-type metadata, the normalisation's description, and the
checks a loaded payload must pass (finite weights and ranges). Used by :mod:`napari_rverdict.learn.bundle`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from napari_rverdict.errors import InputError
from napari_rverdict.physics.models import get_model


def _plain(x):
    """Recursively convert NumPy scalars/arrays and tuples to plain Python types (weights_only-safe)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if x is None or type(x) in (str, int, float, bool):
        return x
    for t in (bool, int, float, str):  # subclasses (e.g. torch.__version__) → the plain type
        if isinstance(x, t):
            return t(x)
    return str(x)


def normalisation_description(model) -> str:
    model = get_model(model)
    if model.name == "verdict":
        return "per-series b = 0: each measurement divided by the mean b = 0 of its own series (same TE and TR)"
    return "per-voxel maximum: each signal divided by its largest measurement"


def _check_finite(payload: dict, p: Path) -> None:
    """Refuse a bundle with NaN/inf weights (a diverged training) or non-finite or inverted training ranges."""
    for name, v in payload["state_dict"].items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise InputError(f"'{p}' holds NaN or inf weights ({name}): its training diverged; retrain it "
                             "with a lower learning rate")
    ranges = payload["meta"].get("ranges")
    if not isinstance(ranges, dict):
        return  # reported as a damaged bundle by from_payload
    for name, r in ranges.items():
        try:
            lo, hi = float(r[0]), float(r[1])
        except (TypeError, ValueError, IndexError):
            raise InputError(f"'{p}' is a damaged napari-rverdict bundle (bad range for {name}: {r!r})") from None
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise InputError(f"'{p}' has a non-finite training range for {name}: {lo:g}–{hi:g}")
        if lo >= hi:
            raise InputError(f"'{p}' has an inverted training range for {name}: low {lo:g} >= high {hi:g}")
