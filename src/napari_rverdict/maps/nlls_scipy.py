"""The per-voxel SciPy baseline of the batched NLLS fit (:mod:`napari_rverdict.maps.nlls`): the same objective,
transform, candidate screening and starts, one voxel and one start at a time with ``scipy.optimize.least_squares``.
Used by the tests and ``benchmarks/bench_volume.py``; slow by design."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from napari_rverdict.maps.nlls import FitProblem, _init_params, _maps_from_u, make_starts
from napari_rverdict.physics.models import get_model
from napari_rverdict.physics.protocol_files import load_protocol


def fit_signals_scipy(model, signals, protocol, *, n_starts: int = 4, init=None, ranges=None,
                      n_candidates: int = 512, seed: int = 0, method: str = "trf",
                      progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """The same fit, one voxel and one start at a time with ``scipy.optimize.least_squares`` (NumPy residuals).

    Same objective, transform, candidate screening and starts as :func:`fit_signals` (so the two differ only in
    the optimiser and in batching). ``method``: "trf" (SciPy's default) or "lm". Slow by design: the baseline.
    """
    from scipy.optimize import least_squares

    model = get_model(model)
    protocol = load_protocol(protocol)
    raw = np.asarray(signals, dtype=np.float64)
    problem = FitProblem(model, protocol, ranges, "cpu", torch.float64)
    y_all = problem.normalise(raw)
    init_u = _init_params(init, raw, protocol, problem)
    starts = make_starts(problem, y_all, int(n_starts), int(n_candidates), seed, init_u)
    n = len(y_all)
    best_u = np.empty((n, problem.k))
    best_cost = np.empty(n)
    for i in range(n):
        y = y_all[i:i + 1]

        def fun(u, y=y):
            return problem.residual(u[None, :], y, np)[0]

        best = (np.inf, starts[i, 0])
        for u0 in starts[i]:
            res = least_squares(fun, u0, method=method)
            c = float(2 * res.cost)
            if c < best[0]:
                best = (c, res.x)
        best_cost[i], best_u[i] = best
        if progress is not None:
            progress(i + 1, n)
    return _maps_from_u(problem, best_u, best_cost)


__all__ = ["fit_signals_scipy"]
