"""Per-voxel uncertainty from the networks: mean–variance outputs, β-NLL loss, recalibration, coverage.

Method (``TrainConfig(uncertainty=True)``)
------------------------------------------
The network gets 2k outputs for k estimated parameters: the first k are the means (min–max scaled units, as
without uncertainty), the last k are log-variances in the same scaled units. It is trained with the β-negative
log-likelihood of Seitzer et al. (ICLR 2022), β = 0.5::

    L = mean_j  stopgrad(σ_j^{2β}) · [ ½ log σ_j² + (y_j − μ_j)² / (2 σ_j²) ]

β = 0 is the Gaussian NLL (which lets the mean fit badly where σ is large); β = 1 gives the mean MSE's gradient.
β = 0.5 keeps the mean about as accurate as MSE training while learning σ. Cost: k extra outputs on the last
layer (negligible compute; the same number of optimiser steps). The loss the trainer *reports* stays the MSE of
the means, so progress records, loss plots and early stopping mean the same thing with and without uncertainty.

A network's σ is rarely calibrated out of the box. After training, one factor per map is fitted on the
validation set (:func:`calibration_factor`, conformal-style): the factor c that makes the intervals
μ ± c·z_l·σ cover the truth as close as possible to l for l = 68.27 % and 95.45 % at once, errors weighted by the
targets' tolerances 3 % and 2 % (c lies between the two per-level factors; for Gaussian errors both equal
√mean(z²), the unit-z-variance factor). Posteriors that are bounded by the prior (fractions, R, T2) are flatter
than a Gaussian, and heavy-tailed ones (cellularity = f_ic / R³) are not Gaussian at all: one factor cannot make
both levels exact there; ``benchmarks/calibration.py`` measures how close it gets. The factors are stored
in the bundle (``bundle.sd_scale``).

Derived maps (the dependent fraction, cellularity) are propagated by Monte-Carlo: ``n_samples`` draws per voxel from
the predicted (diagonal) Gaussian in scaled units, clipped to the training ranges, pushed through
``model.derived_maps``; their robust sd (half the central 68 % range of the draws) is then rescaled by its own
validation factor. The network predicts no
covariance, and f_ic / f_ees are anti-correlated in the posterior, so the uncalibrated f_vasc sd is too large;
the factor corrects it on average (not per voxel).

:func:`coverage` measures the fraction of truths inside central Gaussian intervals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np
import torch

BETA = 0.5
LOGVAR_MIN, LOGVAR_MAX = -18.0, 4.0
CALIBRATION_LEVELS = (0.6827, 0.9545)
CALIBRATION_TOLERANCES = (0.03, 0.02)  # the targets: 68 ± 3 %, 95 ± 2 %
N_DERIVED_SAMPLES = 64
_HALF_68 = 0.3413447460685429  # Φ(1) − ½
MIN_CALIBRATION = 10  # validation signals needed to recalibrate (fewer: factors stay 1)


def z_of_level(level: float) -> float:
    """Half-width in sd of the central Gaussian interval holding ``level`` (0.68 → 0.994, 0.95 → 1.960)."""
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"coverage levels must lie strictly between 0 and 1, got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


# ---------------------------------------------------------------------- network outputs and loss
def split_output(out: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 2k) network output → (mean, log-variance clamped to [LOGVAR_MIN, LOGVAR_MAX]), scaled units."""
    if out.shape[-1] != 2 * k:
        raise ValueError(f"an uncertainty network has {2 * k} outputs for {k} targets, got {out.shape[-1]}")
    return out[..., :k], torch.clamp(out[..., k:], LOGVAR_MIN, LOGVAR_MAX)


def beta_nll_loss(out: torch.Tensor, y: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """β-NLL (Seitzer et al. 2022) of targets ``y`` (n, k) under the Gaussian the (n, 2k) output predicts."""
    mean, logvar = split_output(out, y.shape[-1])
    var = torch.exp(logvar)
    nll = 0.5 * (logvar + (y - mean) ** 2 / var)
    if beta:
        nll = nll * var.detach() ** beta
    return nll.mean()


def gaussian_nll_value(out: torch.Tensor, y: torch.Tensor) -> float:
    """Mean Gaussian NLL per element (without the ½ log 2π constant), for reporting."""
    mean, logvar = split_output(out, y.shape[-1])
    return float((0.5 * (logvar + (y - mean) ** 2 / torch.exp(logvar))).double().mean())


# ---------------------------------------------------------------------- coverage and calibration
def _coverage_array(true, mean, sd, levels) -> dict[float, float]:
    t = np.asarray(true, dtype=float).ravel()
    m = np.asarray(mean, dtype=float).ravel()
    s = np.asarray(sd, dtype=float).ravel()
    if not (t.shape == m.shape == s.shape):
        raise ValueError(f"true, mean and sd must have the same size, got {t.size}, {m.size}, {s.size}")
    if t.size == 0:
        raise ValueError("no values to compute coverage on")
    if (s < 0).any() or not np.isfinite(s).all():
        raise ValueError("sd must be finite and non-negative")
    err = np.abs(t - m)
    return {float(lv): float(np.mean(err <= z_of_level(lv) * s)) for lv in levels}


def coverage(true, mean, sd, levels: Sequence[float] = (0.68, 0.95)):
    """Fraction of ``true`` values inside the central Gaussian intervals ``mean ± z(level) · sd``.

    Arrays → {level: fraction}. Dicts {name: array} → {name: {level: fraction}} for the names of ``mean`` that
    ``true`` and ``sd`` also have. ``sd`` is looked up as ``<name>_sd`` first, then ``<name>``, so the whole
    ``predict_signals(..., uncertainty=True)`` output can serve as both ``mean`` and ``sd``.
    """
    levels = tuple(float(lv) for lv in np.atleast_1d(levels))
    for lv in levels:
        z_of_level(lv)
    if isinstance(mean, Mapping):
        out = {}
        for name, m in mean.items():
            if name.endswith("_sd") or name not in true:
                continue
            if not isinstance(sd, Mapping):
                raise ValueError("with dicts for true and mean, sd must be a dict too")
            s = sd[f"{name}_sd"] if f"{name}_sd" in sd else sd.get(name)  # "<name>_sd" first: sd may hold means
            if s is None:
                raise ValueError(f"no sd for '{name}'")
            out[name] = _coverage_array(true[name], m, s, levels)
        if not out:
            raise ValueError("true and mean share no names")
        return out
    return _coverage_array(true, mean, sd, levels)


def calibration_factor(true, mean, sd, levels: Sequence[float] = CALIBRATION_LEVELS,
                       tolerances: Sequence[float] | None = None, n_grid: int = 201) -> float:
    """One sd scale factor c so that ``mean ± c · z(l) · sd`` covers ``true`` as close to ``l`` as possible for
    every level at once: the minimax of |coverage − l| / tolerance over a grid between the per-level exact
    factors (tolerances default to 3 % at the first level and 2 % at the others; equal weights when the levels
    differ from the defaults).

    For Gaussian errors both per-level factors equal the unit-z-variance factor √mean((true − mean)² / sd²).
    """
    t, m, s = (np.asarray(a, dtype=float).ravel() for a in (true, mean, sd))
    ok = np.isfinite(t) & np.isfinite(m) & np.isfinite(s) & (s > 0)
    if ok.sum() < 10:
        raise ValueError(f"calibration needs at least 10 finite values with sd > 0, got {int(ok.sum())}")
    z = np.abs(t[ok] - m[ok]) / s[ok]
    per_level = [float(np.quantile(z, lv)) / z_of_level(lv) for lv in levels]
    lo, hi = min(per_level), max(per_level)
    if not hi > 0:
        return 1.0
    lo = max(lo, 1e-12)
    if hi - lo < 1e-12 * hi:
        return hi
    if tolerances is None:
        tolerances = CALIBRATION_TOLERANCES if tuple(levels) == CALIBRATION_LEVELS else (1.0,) * len(levels)
    grid = np.linspace(lo, hi, int(n_grid))
    zs = np.sort(z)
    errs = np.zeros_like(grid)
    for lv, tol in zip(levels, tolerances):
        cov = np.searchsorted(zs, grid * z_of_level(lv), side="right") / zs.size
        errs = np.maximum(errs, np.abs(cov - lv) / tol)
    return float(grid[int(np.argmin(errs))])


# ---------------------------------------------------------------------- derived maps
def derived_sd(model, mean_scaled: np.ndarray, sd_scaled: np.ndarray, target_names, ranges,
               n_samples: int = N_DERIVED_SAMPLES, seed: int = 0) -> dict[str, np.ndarray]:
    """Monte-Carlo sd of every map of ``model`` that is not a target, for (n, k) means and sds in scaled units.

    Draws ``n_samples`` per row from N(mean, sd²) (independent per target), clipped to [0, 1] (the training
    ranges), unscales them, applies ``model.derived_maps`` and returns {map: (n,) sd} in physical units.
    The sd is the robust one, half the central 68.27 % range of the draws (equal to the sd for a Gaussian):
    cellularity = f_ic / R³ has draws near R = 0.01 µm that would make a plain sd meaningless.
    """
    mean_scaled = np.asarray(mean_scaled, dtype=np.float64)
    sd_scaled = np.asarray(sd_scaled, dtype=np.float64)
    n, k = mean_scaled.shape
    names = tuple(target_names)
    # only the fractions and R enter the derived maps (dependent fraction, cellularity): draw just those
    used = [i for i, name in enumerate(names) if name in model.estimated_fractions or name == "R"]
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((n_samples, n, len(used)), dtype=np.float32)
    draws = np.clip(mean_scaled[None, :, used] + sd_scaled[None, :, used] * eps, 0.0, 1.0).reshape(-1, len(used))
    params = {name: 0.0 for name in names}
    for j, i in enumerate(used):
        lo, hi = ranges[names[i]]
        params[names[i]] = draws[:, j] * (hi - lo) + lo
    maps = model.derived_maps(params)
    out = {}
    for name in model.map_names:
        if name in names:
            continue
        v = np.asarray(maps[name], dtype=np.float64).reshape(n_samples, n)
        q_lo, q_hi = np.quantile(v, [0.5 - _HALF_68, 0.5 + _HALF_68], axis=0)
        out[name] = 0.5 * (q_hi - q_lo)
    return out


def calibrate_bundle(bundle, signals: np.ndarray, truth: Mapping, levels=CALIBRATION_LEVELS,
                     device="cpu") -> dict[str, float]:
    """Fit ``bundle.sd_scale`` (one factor per map) on held-out normalised ``signals`` with true ``truth``
    ({name: (n,)}, every estimated parameter and the dependent fraction / cellularity as ``model.derived_maps``
    gives them). The target factors are fitted first, then the derived maps' (sampled with calibrated targets).
    With fewer than ``MIN_CALIBRATION`` signals every factor stays 1."""
    if not bundle.has_uncertainty:
        raise ValueError("this model was trained without uncertainty; nothing to calibrate")
    model = bundle.model
    bundle.sd_scale = {name: 1.0 for name in bundle.map_names}
    if len(signals) < MIN_CALIBRATION:  # too few to fit anything: leave the network's own sd
        return dict(bundle.sd_scale)
    truth_maps = model.derived_maps({k: np.asarray(v, dtype=float) for k, v in truth.items()})
    dev, net = bundle._device_network(device)
    est, sd, _mean_scaled, _sd_scaled = bundle._run_network(np.asarray(signals), dev, net, return_sd=True,
                                                            raw_sd=True)
    for i, name in enumerate(bundle.target_names):
        bundle.sd_scale[name] = calibration_factor(truth_maps[name], est[:, i], sd[:, i], levels)
    maps = bundle.predict_normalised(signals, device=device, uncertainty=True)
    for name in bundle.map_names:
        if name in bundle.target_names:
            continue
        bundle.sd_scale[name] = calibration_factor(truth_maps[name], maps[name], maps[f"{name}_sd"], levels)
    return dict(bundle.sd_scale)


__all__ = ["BETA", "beta_nll_loss", "calibrate_bundle", "calibration_factor", "coverage", "derived_sd",
           "split_output", "z_of_level"]
