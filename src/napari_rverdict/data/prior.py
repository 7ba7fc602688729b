"""The training prior: parameter ranges (defaults, overrides, the ``NAME=LOW,HIGH`` text form) and sampling.

Fractions come from Dirichlet(1, 1, 1) (uniform on the simplex) or the "tissue" sampler (p1 = 1 − f_vasc,
p2 = f_ic / p1 uniform); every other parameter is uniform on its range.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from napari_rverdict.errors import InputError
from napari_rverdict.physics.models import SignalModel, get_model

FRACTION_SAMPLERS = ("dirichlet", "tissue")


def resolve_ranges(model, ranges: Mapping | None = None) -> dict[str, tuple[float, float]]:
    """The model's default training ranges updated with ``ranges``, validated.

    Errors: unknown parameter names, non-numeric or NaN bounds, low ≥ high, bounds outside the parameter's
    physical limits (fractions within [0, 1]).
    """
    model = get_model(model)
    out = model.default_ranges()
    for name, bounds in (ranges or {}).items():
        if name not in out:
            raise InputError(f"unknown parameter '{name}' for {model.name}; its parameters are {', '.join(out)}")
        try:
            low, high = (float(x) for x in bounds)
        except (TypeError, ValueError):
            raise InputError(f"range for {name} must be two numbers (low, high), got {bounds!r}") from None
        spec = model.spec(name)
        if not (np.isfinite(low) and np.isfinite(high)):
            raise InputError(f"range for {name} must be finite, got ({low}, {high})")
        if low >= high:
            raise InputError(f"range for {name}: low ({low:g}) must be below high ({high:g})")
        if low < spec.limit_low or high > spec.limit_high:
            raise InputError(f"range for {name} ({low:g}, {high:g}) {spec.unit} is outside its physical limits "
                             f"[{spec.limit_low:g}, {spec.limit_high:g}]")
        out[name] = (low, high)
    return out


def _sample_fractions(model: SignalModel, n: int, ranges, sampler: str, rng: np.random.Generator):
    """f_ic, f_ees, f_vasc on the simplex, restricted (by rejection) to the estimated fractions' ranges.

    "dirichlet": Dirichlet(1, 1, 1), uniform on the simplex. "tissue": p1 = 1 − f_vasc and p2 = f_ic / p1 each
    U(0.01, 0.99) (f_vasc has mean 0.5 before the range cut; with the default [0.01, 0.99] fraction ranges the cut
    removes the draws with f_ic or f_ees below 0.01, which lowers the mean f_vasc to ≈ 0.47).
    """
    if sampler not in FRACTION_SAMPLERS:
        raise InputError(f"unknown fraction sampler '{sampler}'; choose one of: {', '.join(FRACTION_SAMPLERS)}")
    names = ("f_ic", "f_ees", "f_vasc")
    kept = []
    have = drawn = 0
    rate = 1.0  # acceptance rate seen so far: sizes the next batch
    while have < n:
        m = int(min(max((n - have) / rate * 1.2 + 16, 1024), 2_000_000))
        if sampler == "dirichlet":
            f = rng.dirichlet((1.0, 1.0, 1.0), size=m)
        else:  # tissue: p1 = 1 − f_vasc ~ U(0.01, 0.99), p2 = f_ic / p1 ~ U(0.01, 0.99)
            p1 = rng.uniform(0.01, 0.99, m)
            p2 = rng.uniform(0.01, 0.99, m)
            f = np.stack([p1 * p2, p1 * (1 - p2), 1 - p1], axis=1)
        ok = np.ones(m, dtype=bool)
        for k in model.estimated_fractions:
            lo, hi = ranges[k]
            col = f[:, names.index(k)]
            ok &= (col >= lo) & (col <= hi)
        kept.append(f[ok])
        have += int(ok.sum())
        drawn += m
        rate = max(have / drawn, 1e-5)
        if drawn >= 1_000_000 and have < 1e-4 * drawn:
            raise InputError("the fraction ranges leave almost no room on the simplex (f_ic + f_ees + f_vasc = 1); "
                             "widen them")
    f = np.concatenate(kept)[:n]
    return {k: f[:, i].copy() for i, k in enumerate(names)}


def sample_parameters(model, n: int, ranges: Mapping | None = None, fraction_sampler: str = "dirichlet",
                      rng: np.random.Generator | int | None = None) -> dict[str, np.ndarray]:
    """Draw ``n`` parameter sets from the training prior: fractions on the simplex, the rest uniform in range."""
    model = get_model(model)
    ranges = resolve_ranges(model, ranges)
    rng = np.random.default_rng(rng)
    params = _sample_fractions(model, n, ranges, fraction_sampler, rng)
    for p in model.parameters:
        if p.is_fraction:
            continue
        lo, hi = ranges[p.name]
        params[p.name] = rng.uniform(lo, hi, n)
    return params



def parse_ranges(items) -> dict:
    """``["R=0.1,12", "T1=100,3000"]`` → {"R": (0.1, 12.0), "T1": (100.0, 3000.0)}."""
    out = {}
    for item in items or []:
        try:
            name, bounds = item.split("=", 1)
            low, high = (float(x) for x in bounds.split(","))
        except ValueError:
            raise InputError(f"--range expects NAME=LOW,HIGH (e.g. R=0.1,12), got '{item}'") from None
        out[name.strip()] = (low, high)
    return out
