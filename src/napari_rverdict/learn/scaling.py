"""Target scaling: the networks regress parameters min-max scaled to [0, 1] by the training ranges."""

from __future__ import annotations

import numpy as np


def scale_targets(values: np.ndarray, names, ranges) -> np.ndarray:
    """(n, k) physical values → (value − low) / (high − low) per column."""
    lo = np.array([ranges[k][0] for k in names], dtype=float)
    hi = np.array([ranges[k][1] for k in names], dtype=float)
    return (np.asarray(values, dtype=float) - lo) / (hi - lo)


def unscale_targets(scaled: np.ndarray, names, ranges) -> np.ndarray:
    """Inverse of :func:`scale_targets`."""
    lo = np.array([ranges[k][0] for k in names], dtype=float)
    hi = np.array([ranges[k][1] for k in names], dtype=float)
    return np.asarray(scaled, dtype=float) * (hi - lo) + lo
