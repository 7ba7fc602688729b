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

A network's σ is rarely calibrated out of the box, and posteriors bounded by the prior (fractions, R, T2) are
flatter than a Gaussian while cellularity = f_ic / R³ is heavy-tailed, so no single sd factor makes the 68 % and
95 % intervals right at once. After training, the intervals are therefore calibrated by **normalised split
conformal prediction** on a fresh synthetic calibration set, as large as the validation set but drawn apart from
it, since the validation set picked the best epoch (:func:`conformal_quantiles`, :func:`calibrate_bundle`): per map
the scores s = |y − μ| / σ are computed and, for every level L of ``QUANTILE_LEVELS`` (0.05 … 0.99 in steps of
0.01, plus 0.6827 and 0.9545), their finite-sample conformal quantile q_L (the ⌈(n + 1) L⌉-th smallest score; the
largest one where that index exceeds n). The interval at level L is μ ± q_L · σ; levels between grid points
interpolate the stored curve linearly. The reported ``<map>_sd`` is q_0.6827 · σ, the 68.27 % half-width (an sd for
Gaussian errors), and :func:`interval_halfwidth` turns it into the half-width at any level in 0.05–0.99.

What this guarantees, honestly: marginal coverage ≥ L on data exchangeable with the calibration set (synthetic
signals from the training model, protocol, ranges, fraction sampler and SNR), averaged over voxels. It is not a
per-voxel guarantee (voxels where σ is too small still under-cover, others over-cover) and it says nothing for
data that differ from the training distribution (another SNR, artefacts, model mismatch). The quantiles are stored
in the bundle (``bundle.interval_quantiles``; ``bundle.sd_scale`` keeps q_0.6827 per map). A bundle whose
validation (hence calibration) set was too small to calibrate (fewer than ``MIN_CALIBRATION`` signals) has no curve and every factor
1: its intervals are the network's own Gaussian ones, q_L = z(L).

Derived maps (the dependent fraction, cellularity) are propagated by Monte-Carlo: ``n_samples`` draws per voxel from
the predicted (diagonal) Gaussian in scaled units, clipped to the training ranges, pushed through
``model.derived_maps``; their robust sd (half the central 68 % range of the draws) is then rescaled by its own
calibration quantiles (the same conformal treatment: the MC spread is the σ of the derived map). The network
predicts no covariance, and f_ic / f_ees are anti-correlated in the posterior, so the uncalibrated f_vasc spread
is too large; the quantiles correct it on average (not per voxel).

:func:`coverage` measures the fraction of truths inside central intervals: Gaussian ones (mean ± z(L) · sd), or
a bundle's calibrated ones (``coverage(..., bundle=b)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np
import torch

from napari_rverdict.errors import InputError

BETA = 0.5
LOGVAR_MIN, LOGVAR_MAX = -18.0, 4.0
N_DERIVED_SAMPLES = 64
_HALF_68 = 0.3413447460685429  # Φ(1) − ½
MIN_CALIBRATION = 10  # validation signals needed to recalibrate (fewer: factors stay 1)
SD_LEVEL = 0.6827  # the level whose calibrated half-width is reported as <map>_sd (±1 sd for a Gaussian)
QUANTILE_LEVELS = tuple(sorted({round(float(x), 2) for x in np.arange(5, 100) / 100.0} | {SD_LEVEL, 0.9545}))


def z_of_level(level: float) -> float:
    """Half-width in sd of the central Gaussian interval holding ``level`` (0.68 → 0.994, 0.95 → 1.960)."""
    level = float(level)
    if not 0.0 < level < 1.0:
        raise InputError(f"coverage levels must lie strictly between 0 and 1, got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


# ---------------------------------------------------------------------- network outputs and loss
def split_output(out: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 2k) network output → (mean, log-variance clamped to [LOGVAR_MIN, LOGVAR_MAX]), scaled units."""
    if out.shape[-1] != 2 * k:
        raise InputError(f"an uncertainty network has {2 * k} outputs for {k} targets, got {out.shape[-1]}")
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
    from napari_rverdict.learn.device import accumulation_dtype

    return float((0.5 * (logvar + (y - mean) ** 2 / torch.exp(logvar))).to(accumulation_dtype(out.device)).mean())


# ---------------------------------------------------------------------- coverage and calibration
def _coverage_array(true, mean, sd, levels, factors=None) -> dict[float, float]:
    t = np.asarray(true, dtype=float).ravel()
    m = np.asarray(mean, dtype=float).ravel()
    s = np.asarray(sd, dtype=float).ravel()
    if not (t.shape == m.shape == s.shape):
        raise InputError(f"true, mean and sd must have the same size, got {t.size}, {m.size}, {s.size}")
    if t.size == 0:
        raise InputError("no values to compute coverage on")
    if (s < 0).any() or not np.isfinite(s).all():
        raise InputError("sd must be finite and non-negative")
    err = np.abs(t - m)
    if factors is None:
        factors = {lv: z_of_level(lv) for lv in levels}
    return {float(lv): float(np.mean(err <= factors[lv] * s)) for lv in levels}


def coverage(true, mean, sd, levels: Sequence[float] = (0.68, 0.95), *, bundle=None, name: str | None = None):
    """Fraction of ``true`` values inside the central intervals ``mean ± f(level) · sd``.

    Without ``bundle`` the intervals are Gaussian, f = z(level). With ``bundle`` (a calibrated uncertainty
    bundle) they are its conformal intervals, f = q_level / q_0.6827 (:func:`interval_factor`), ``sd`` being the
    ``<map>_sd`` the bundle reports; the array form then needs the map's ``name``.

    Arrays → {level: fraction}. Dicts {name: array} → {name: {level: fraction}} for the names of ``mean`` that
    ``true`` and ``sd`` also have. ``sd`` is looked up as ``<name>_sd`` first, then ``<name>``, so the whole
    ``predict_signals(..., uncertainty=True)`` output can serve as both ``mean`` and ``sd``.
    """
    levels = tuple(float(lv) for lv in np.atleast_1d(levels))
    for lv in levels:
        z_of_level(lv)

    def factors(map_name):
        if bundle is None:
            return None
        return {lv: interval_factor(bundle, map_name, lv) for lv in levels}

    if isinstance(mean, Mapping):
        out = {}
        for key, m in mean.items():
            if key.endswith("_sd") or key not in true:
                continue
            if not isinstance(sd, Mapping):
                raise InputError("with dicts for true and mean, sd must be a dict too")
            s = sd[f"{key}_sd"] if f"{key}_sd" in sd else sd.get(key)  # "<name>_sd" first: sd may hold means
            if s is None:
                raise InputError(f"no sd for '{key}'")
            out[key] = _coverage_array(true[key], m, s, levels, factors(key))
        if not out:
            raise InputError("true and mean share no names")
        return out
    if bundle is not None and name is None:
        raise InputError("coverage with a bundle's intervals on arrays needs the map's name (name=...)")
    return _coverage_array(true, mean, sd, levels, factors(name))


# ---------------------------------------------------------------------- conformal intervals
def conformal_quantiles(true, mean, sd, levels: Sequence[float] = QUANTILE_LEVELS) -> np.ndarray:
    """Normalised split-conformal quantiles: for every level L the ⌈(n + 1) L⌉-th smallest of the n scores
    |true − mean| / sd (the largest score where that index exceeds n), over the finite values with sd > 0.

    On new data exchangeable with these, ``mean ± q_L · sd`` covers the truth with probability ≥ L (marginally;
    at most L + 1 / (n + 1) without ties). Raises ValueError with fewer than ``MIN_CALIBRATION`` usable values.
    """
    t, m, s = (np.asarray(a, dtype=float).ravel() for a in (true, mean, sd))
    if not (t.shape == m.shape == s.shape):
        raise InputError(f"true, mean and sd must have the same size, got {t.size}, {m.size}, {s.size}")
    ok = np.isfinite(t) & np.isfinite(m) & np.isfinite(s) & (s > 0)
    n = int(ok.sum())
    if n < MIN_CALIBRATION:
        raise InputError(f"conformal calibration needs at least {MIN_CALIBRATION} finite values with sd > 0, "
                         f"got {n}")
    scores = np.sort(np.abs(t[ok] - m[ok]) / s[ok])
    lv = np.asarray(levels, dtype=float)
    if ((lv <= 0) | (lv >= 1)).any():
        raise InputError(f"coverage levels must lie strictly between 0 and 1, got {levels}")
    k = np.ceil((n + 1) * lv - 1e-9).astype(int)  # 1-based rank; the tiny guard keeps exact products exact
    return scores[np.clip(k, 1, n) - 1]


def interval_quantile(bundle, name: str, level: float) -> float:
    """The calibrated half-width of ``bundle``'s ``level`` interval for map ``name`` in units of the network's
    raw σ: interpolated from the stored conformal quantile curve (levels 0.05–0.99), or, for a bundle without a
    curve (too few validation signals to calibrate), the Gaussian z(level)."""
    level = float(level)
    z = z_of_level(level)
    curve = bundle.interval_quantiles.get(name)
    if curve is None:
        return z
    levels = np.asarray(bundle.interval_levels, dtype=float)
    if not levels[0] - 1e-12 <= level <= levels[-1] + 1e-12:
        raise InputError(f"this bundle's intervals are calibrated for levels {levels[0]:g}–{levels[-1]:g}, "
                         f"got {level:g}")
    return float(np.interp(level, levels, np.asarray(curve, dtype=float)))


def interval_factor(bundle, name: str, level: float) -> float:
    """Half-width of the ``level`` interval of map ``name`` divided by the ``<name>_sd`` the bundle reports
    (q_level / q_0.6827; z(level) / z(0.6827) for uncalibrated bundles)."""
    q_sd = interval_quantile(bundle, name, SD_LEVEL)
    q = interval_quantile(bundle, name, level)
    if q_sd > 0:
        return q / q_sd
    return z_of_level(level)  # a degenerate curve (all scores 0): fall back to Gaussian multiples


def interval_halfwidth(bundle, maps: Mapping, level: float, names: Sequence[str] | None = None
                       ) -> dict[str, np.ndarray]:
    """Calibrated half-widths at ``level`` for the maps ``bundle.predict_signals(..., uncertainty=True)``
    (or ``predict_volume``) returned: {name: interval_factor · <name>_sd}; the interval is map ± half-width.

    ``names`` defaults to every map with a ``<name>_sd`` in ``maps``. Arrays keep their shape (volumes too).
    """
    if names is None:
        names = [k[:-3] for k in maps if k.endswith("_sd")]
    if not names:
        raise InputError("maps hold no '<name>_sd' entries: predict with uncertainty=True first")
    out = {}
    for name in names:
        key = f"{name}_sd"
        if key not in maps:
            raise InputError(f"maps have no '{key}'")
        sd = np.asarray(maps[key])
        out[name] = (sd * np.float32(interval_factor(bundle, name, level))).astype(sd.dtype, copy=False)
    return out


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


def calibrate_bundle(bundle, signals: np.ndarray, truth: Mapping, levels: Sequence[float] = QUANTILE_LEVELS,
                     device="cpu") -> dict[str, list[float]]:
    """Calibrate ``bundle``'s intervals by normalised split conformal prediction on held-out normalised
    ``signals`` with true ``truth`` ({name: (n,)}, every estimated parameter; the dependent fraction and
    cellularity follow from ``model.derived_maps``).

    Sets ``bundle.interval_levels`` (sorted ``levels``, which must include 0.6827), ``bundle.interval_quantiles``
    ({map: [q_L per level]}) and ``bundle.sd_scale`` ({map: q_0.6827}, the factor on the network's σ that the
    reported ``<map>_sd`` carries). The targets are calibrated first, then the derived maps on their Monte-Carlo
    spread (sampled with calibrated targets). With fewer than ``MIN_CALIBRATION`` signals nothing is fitted:
    every factor stays 1 and the intervals are the network's own Gaussian ones. Returns the quantiles.
    """
    if not bundle.has_uncertainty:
        raise InputError("this model was trained without uncertainty; nothing to calibrate")
    levels = tuple(sorted(float(lv) for lv in levels))
    if SD_LEVEL not in levels:
        raise InputError(f"the calibration levels must include {SD_LEVEL} (the level reported as sd)")
    model = bundle.model
    bundle.sd_scale = {name: 1.0 for name in bundle.map_names}
    bundle.interval_quantiles = {}
    bundle.interval_levels = levels
    if len(signals) < MIN_CALIBRATION:  # too few to fit anything: leave the network's own sd
        return {}
    i_sd = levels.index(SD_LEVEL)
    truth_maps = model.derived_maps({k: np.asarray(v, dtype=float) for k, v in truth.items()})
    dev, net = bundle._device_network(device)
    est, sd, _mean_scaled, _sd_scaled = bundle._run_network(np.asarray(signals), dev, net, return_sd=True,
                                                            raw_sd=True)
    quantiles = {}
    for i, name in enumerate(bundle.target_names):
        quantiles[name] = conformal_quantiles(truth_maps[name], est[:, i], sd[:, i], levels)
        bundle.sd_scale[name] = float(quantiles[name][i_sd])
    maps = bundle.predict_normalised(signals, device=device, uncertainty=True)  # derived: raw MC spread (factor 1)
    for name in bundle.map_names:
        if name in bundle.target_names:
            continue
        quantiles[name] = conformal_quantiles(truth_maps[name], maps[name], maps[f"{name}_sd"], levels)
        bundle.sd_scale[name] = float(quantiles[name][i_sd])
    bundle.interval_quantiles = {k: [float(x) for x in v] for k, v in quantiles.items()}
    return dict(bundle.interval_quantiles)


# ---------------------------------------------------------------------- the calibration set after training
CALIBRATION_SALT = 0xCA11B


def derived_seed(seed, salt: int):
    """A seed derived from ``seed`` through a ``SeedSequence`` with a fixed ``salt`` (one salt per purpose), so
    the data drawn with it never repeat the stream of ``seed`` itself (None or not a seed: None = fresh entropy)."""
    if seed is None or isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        return None
    return int(np.random.SeedSequence([int(seed), int(salt)]).generate_state(1, dtype=np.uint64)[0])


def calibration_seed(seed):
    """The seed of the calibration set for training data made with ``seed`` (:func:`derived_seed`)."""
    return derived_seed(seed, CALIBRATION_SALT)


def calibration_data(data):
    """A fresh synthetic calibration set drawn like ``data`` (model, protocol, ranges, fraction sampler, SNR) with
    :func:`calibration_seed` of its seed, as many signals as its validation set. The validation set picked the
    best epoch, so conformal quantiles from it would be optimistic; these signals were seen by nothing."""
    from napari_rverdict.data.synth import simulate

    n = max(len(data.val_index), 2)
    return simulate(data.model, data.protocol, n=n, **data.noise_settings(), ranges=data.ranges,
                    fraction_sampler=data.fraction_sampler, seed=calibration_seed(data.seed))


def calibrate_after_training(bundle, data, device) -> None:
    """Conformal interval quantiles per map from a fresh calibration set (uncertainty networks), the network run on
    the training's ``device``."""
    n_val = len(data.val_index)
    if n_val < MIN_CALIBRATION:  # too few to fit anything (as calibrate_bundle decides): no set to draw
        cal_signals, cal_truth, seed = data.signals[data.val_index], {
            k: np.asarray(v)[data.val_index] for k, v in data.params.items()}, None
    else:
        cal = calibration_data(data)
        cal_signals, cal_truth, seed = cal.signals, cal.params, cal.seed
    calibrate_bundle(bundle, cal_signals, cal_truth, device=device)
    bundle.extra["calibration"] = {"method": "normalised split conformal quantiles of |y - mean| / sd on a fresh "
                                             "synthetic calibration set drawn like the training data, "
                                             "levels 0.05-0.99",
                                   "n": n_val, "seed": seed}


__all__ = ["BETA", "QUANTILE_LEVELS", "SD_LEVEL", "beta_nll_loss", "calibrate_after_training", "calibrate_bundle",
           "calibration_data", "calibration_seed", "conformal_quantiles", "coverage", "derived_sd", "derived_seed",
           "interval_factor", "interval_halfwidth", "interval_quantile", "split_output", "z_of_level"]
