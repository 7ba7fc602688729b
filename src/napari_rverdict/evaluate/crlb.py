"""Cramér–Rao lower bounds from the Fisher information of the forward model (autograd Jacobians).

√CRLB bounds the sd of *unbiased* estimators only: for weakly identifiable models (rVERDICT: 7 parameters from
10 measurements) it can be far above what a prior-informed estimator reaches; the Bayes limit is the yardstick.

CRLB conventions (Gaussian approximation of the noise)
------------------------------------------------------
Signals are scaled so that the brightest noise-free measurement of the sample is 1 and the noise is Gaussian
with σ = 1/SNR (the same σ the synthetic data use, ignoring the Rician bias). With θ the estimated parameters
plus a signal-scale nuisance (rVERDICT: its own S0; classic VERDICT: a multiplicative S0, since the networks see
per-series ratios, not absolute signals), the Fisher information is ``F = Jᵀ J / σ²`` with ``J = ∂s/∂θ`` at the
true θ (σ held fixed at the truth). The full matrix, nuisance included, is inverted and only the estimated
parameters' ``sqrt(diag(F⁻¹))`` are reported, in physical units. A singular F (a parameter the protocol
cannot see, e.g. R → 0) gives ``inf``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from napari_rverdict.errors import InputError
from napari_rverdict.physics.models import get_model
from napari_rverdict.physics.protocol import Protocol


# ---------------------------------------------------------------------- CRLB
def crlb_from_function(signal_fn: Callable[[torch.Tensor], torch.Tensor], theta, sigma,
                       report=None, return_covariance: bool = False):
    """√CRLB for a generic forward model ``s = signal_fn(θ)`` under Gaussian noise σ.

    Parameters
    ----------
    signal_fn : maps θ (n, p) float64 tensor → signals (n, m); sample i's signal must depend only on θ[i].
    theta : (n, p) true parameters.  sigma : noise σ, a scalar or (n,).
    report : indices of θ to report (default all); the others are nuisance parameters, kept in the Fisher matrix.
    return_covariance : also return the (n, p, p) inverse Fisher matrices.

    Returns (n, len(report)) ``sqrt(diag(F⁻¹))`` with ``F = Jᵀ J / σ²``; ``inf`` where F is singular.
    """
    theta = torch.as_tensor(np.asarray(theta, dtype=np.float64)).clone().requires_grad_(True)
    if theta.ndim != 2:
        raise ValueError(f"theta must be (n_samples, n_params), got shape {tuple(theta.shape)}")
    n, p = theta.shape
    sig = torch.as_tensor(np.broadcast_to(np.asarray(sigma, dtype=np.float64), (n,)).copy())
    if not (sig > 0).all():
        raise ValueError("sigma must be positive")
    s = signal_fn(theta)
    if s.ndim != 2 or s.shape[0] != n:
        raise ValueError(f"signal_fn must return (n_samples, n_measurements) = ({n}, m), got {tuple(s.shape)}")
    m = s.shape[1]
    # Samples are independent, so ∂(Σ_i s_ij)/∂θ_i = ∂s_ij/∂θ_i: one backward pass per measurement.
    jac = torch.empty((n, m, p), dtype=torch.float64)
    for j in range(m):
        (g,) = torch.autograd.grad(s[:, j].sum(), theta, retain_graph=j < m - 1, allow_unused=False)
        jac[:, j, :] = g
    fisher = jac.transpose(1, 2) @ jac / (sig**2)[:, None, None]
    # Scale to unit diagonal before inverting (parameters span ms to µm⁻³), then undo.
    d = torch.sqrt(torch.diagonal(fisher, dim1=1, dim2=2))
    ok = (d > 0).all(1)
    d_safe = torch.where(d > 0, d, torch.ones_like(d))
    corr = fisher / (d_safe[:, :, None] * d_safe[:, None, :])
    inv, info = torch.linalg.inv_ex(corr)
    cond_ok = torch.linalg.cond(corr) < 1e12
    cov = inv / (d_safe[:, :, None] * d_safe[:, None, :])
    var = torch.diagonal(cov, dim1=1, dim2=2)
    good = ok & (info == 0) & cond_ok & (var > 0).all(1)
    out = torch.where(good[:, None], torch.sqrt(torch.clamp(var, min=0)), torch.full_like(var, float("inf")))
    idx = list(range(p)) if report is None else list(report)
    res = out[:, idx].detach().numpy()
    if return_covariance:
        cov = torch.where(good[:, None, None], cov, torch.full_like(cov, float("inf")))
        return res, cov.detach().numpy()
    return res


def _crlb_setup(model, protocol: Protocol, params: Mapping):
    """θ columns, the forward function on θ and σ's brightness reference for a VERDICT/rVERDICT model."""
    model = get_model(model)
    names = list(model.estimated_names)
    n = len(np.asarray(params[names[0]]))
    cols = [np.asarray(params[k], dtype=np.float64) for k in names]
    nuisance = "S0"
    cols.append(np.asarray(params["S0"], dtype=np.float64) if "S0" in model.parameter_names and "S0" in params
                else np.ones(n))
    theta = np.stack(cols, axis=1)
    has_s0 = "S0" in model.parameter_names

    def fn(t: torch.Tensor) -> torch.Tensor:
        p = {k: t[:, i] for i, k in enumerate(names)}
        if has_s0:
            p[nuisance] = t[:, -1]
            return model.signal(p, protocol)
        return t[:, -1:] * model.signal(p, protocol)

    return names, theta, fn


def crlb(model, protocol: Protocol, params: Mapping, snr, chunk: int = 2048, return_covariance: bool = False):
    """√CRLB of every estimated parameter of ``model`` at ``params`` ({name: (n,)}) for ``protocol`` and SNR.

    SNR is a number or (n,) per sample: σ = (brightest noise-free measurement of the sample) / SNR, the "peak"
    scale (pass ``SyntheticData.peak_snr`` for data made on another reference), on every acquired volume: a
    measurement averaging ``protocol.n_volumes`` volumes has σ/√n (its Fisher information × n). A scale
    nuisance (S0) is included in the Fisher matrix (see the module docstring). Returns {name: (n,)} in physical
    units (and, with ``return_covariance``, the (n, k, k) covariance of the estimated parameters).
    """
    model = get_model(model)
    names, theta, fn0 = _crlb_setup(model, protocol, params)
    root_n = torch.sqrt(torch.tensor(np.array(protocol.n_volumes, dtype=np.float64)))
    fn = lambda t: fn0(t) * root_n  # noqa: E731 - whitened: unit σ-scale on every measurement
    n = theta.shape[0]
    snr = np.broadcast_to(np.asarray(snr, dtype=float), (n,))
    if not (snr > 0).all():
        raise InputError("SNR must be positive")
    k = len(names)
    out = np.empty((n, k))
    covs = np.empty((n, k, k)) if return_covariance else None
    for s in range(0, n, chunk):
        th = theta[s:s + chunk]
        with torch.no_grad():
            bright = fn0(torch.from_numpy(th)).amax(1).numpy()
        res = crlb_from_function(fn, th, bright / snr[s:s + chunk], report=range(k),
                                 return_covariance=return_covariance)
        if return_covariance:
            out[s:s + chunk], cv = res
            covs[s:s + chunk] = cv[:, :k, :k]
        else:
            out[s:s + chunk] = res
    result = {name: out[:, i] for i, name in enumerate(names)}
    return (result, covs) if return_covariance else result
