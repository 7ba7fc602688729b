"""Noise: Rician noise on magnitude signals, and SNR settings (a number or a range drawn per sample).

σ = 1 / SNR on the scale set by the noise reference (see :mod:`napari_rverdict.data.synth`).
"""

from __future__ import annotations

import re

import numpy as np

from napari_rverdict.errors import InputError


def add_rician_noise(signals, sigma, rng: np.random.Generator | int | None = None):
    """S_noisy = sqrt((S + σ n1)² + (σ n2)²), n1, n2 ~ N(0, 1). ``sigma`` broadcasts against ``signals``."""
    rng = np.random.default_rng(rng)
    s = np.asarray(signals, dtype=float)
    sigma = np.asarray(sigma, dtype=float)
    n1 = rng.standard_normal(s.shape)
    n2 = rng.standard_normal(s.shape)
    return np.sqrt((s + sigma * n1) ** 2 + (sigma * n2) ** 2)


def _snr_per_sample(snr, n: int, rng: np.random.Generator) -> np.ndarray:
    if np.ndim(snr) == 0:
        value = float(snr)
        if not np.isfinite(value) or value <= 0:
            raise InputError(f"SNR must be a positive number, got {snr!r}")
        return np.full(n, value)
    try:
        low, high = (float(x) for x in snr)
    except (TypeError, ValueError):
        raise InputError(f"SNR must be a number or a (low, high) pair, got {snr!r}") from None
    if not (0 < low < high and np.isfinite(high)):
        raise InputError(f"SNR range must satisfy 0 < low < high, got ({low:g}, {high:g})")
    return rng.uniform(low, high, n)



def parse_snr(text: str, what: str = "SNR"):
    """``35`` → 35.0; ``15-60`` or ``15,60`` → (15.0, 60.0). SNRs are positive; a range needs low < high.

    ``what`` names the setting in the message (``--snr`` on the command line, ``SNR`` in the dock).
    """
    number = r"(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"
    m = re.fullmatch(rf"\s*{number}\s*(?:[-,]\s*{number}\s*)?", str(text))
    if m is None:
        raise InputError(f"{what} expects a positive number or LOW-HIGH (e.g. 35 or 15-60), got '{text}'")
    low, high = m.group(1), m.group(2)
    values = [float(low)] + ([float(high)] if high is not None else [])
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(f"{what} must be positive and finite, got '{text}'")
    if len(values) == 1:
        return values[0]
    if values[0] >= values[1]:
        raise InputError(f"{what} range needs LOW < HIGH, got '{text}'")
    return tuple(values)
