"""The scanner's noise, estimated from the DWI itself, and the per-voxel SNR it implies.

:func:`estimate_noise` returns σ of the Gaussian noise on each acquired volume (the Rician σ, in the DWI's
intensity units) by one of:

``"piesno"`` (DIPY :func:`dipy.denoise.noise_estimate.piesno`, N = 1)
    Finds the voxels that hold only noise (air around the body) and fits σ to them, slice by slice. Needs a
    background of air that the scanner did not zero or mask; the most robust where it applies.
``"mppca"`` (DIPY :func:`dipy.denoise.localpca.mppca`, ``return_sigma=True``)
    The Marchenko–Pastur edge of the local PCA spectrum (5 × 5 × 5 patches), a σ map inside the mask. Needs
    several volumes (≥ 10) and voxels; no background needed. Rician bias makes it read high where SNR < ~3.
``"repeats"``
    The spread between volumes acquired with the same settings (repeated directions of one b), pooled over the
    mask where the signal is high enough for Rician ≈ Gaussian. Needs repeated volumes; tissue anisotropy adds
    to the spread (a slight over-estimate in anisotropic tissue).

``"auto"`` tries them in that order; without a mask, a σ that leaves fewer than ``MIN_MASK`` voxels with a mean
b = 0 above 4σ counts as failed (PIESNO on a crop with no air takes the dimmest tissue for noise). A DWI none
applies to gets one InputError saying what is missing.

The per-voxel SNR inside the mask (default: voxels whose mean b = 0 exceeds 4 σ) is given on both noise
references (:mod:`napari_rverdict.data.noise`): "peak": the voxel's b = 0 of the brightest b = 0 volume
(Rician-corrected, √max(M² − 2σ², 0)) / σ — what :func:`.synth.simulate` calls the effective SNR; "s0": the b = 0
extrapolated to TE = 0 (log-linear over the b = 0 volumes that share the commonest TR; the T1 factor at that TR
remains) / σ.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_rverdict.data.noise import MatchedSnr, snr_percentiles
from napari_rverdict.errors import InputError

METHODS = ("auto", "piesno", "mppca", "repeats")
MIN_BACKGROUND = 200  # noise-only voxels PIESNO must find
MIN_MASK = 50  # voxels in the mask
NO_NOISE_SNR = 1e5  # repeats differing by less than 1 / 100,000 of the signal: copies, not noisy repeats


@dataclass
class NoiseEstimate:
    """σ (per acquired volume, the DWI's units), an optional σ map, the per-voxel SNR and how σ was found.

    snr : {"peak": {"p5", "median", "p95"}, "s0": {...}}.  voxel_snr : {"peak": (n,), "s0": (n,)} in the mask.
    """

    sigma: float
    method: str
    snr: dict
    voxel_snr: dict
    sigma_map: np.ndarray | None = None
    source: str = ""
    n_voxels: int = 0
    notes: list = field(default_factory=list)
    layer: str = ""  # the napari layer it was measured on ("" outside napari)

    def to_json(self, reference: str = "peak") -> dict:
        """``{"sigma", "snr": {"p5", "median", "p95"}, "reference", "method"}``."""
        return {"sigma": float(self.sigma), "snr": dict(self.snr[reference]), "reference": reference,
                "method": self.method}

    def matched(self) -> MatchedSnr:
        """The per-voxel "peak" SNR as a distribution to train at (``simulate(snr_from=...)``)."""
        return MatchedSnr(self.voxel_snr["peak"], self.sigma, self.source, self.method, self.layer)

    def describe(self) -> str:
        p, s = self.snr["peak"], self.snr["s0"]
        return (f"σ = {self.sigma:.4g} ({self.method}); SNR in {self.n_voxels:,} mask voxels at the brightest b = 0 "
                f"(\"peak\"): median {p['median']:.3g} (5–95 %: {p['p5']:.3g}–{p['p95']:.3g}); at TE = 0 (\"s0\"): "
                f"median {s['median']:.3g} (5–95 %: {s['p5']:.3g}–{s['p95']:.3g})")


def _piesno(data, mask):
    from dipy.denoise.noise_estimate import piesno

    zeros = float(np.mean(data == 0))
    if zeros > 0.3:
        return None, f"{zeros:.0%} of the values are exactly 0 (background masked or zeroed by the scanner)"
    bg = data if mask is None else np.where(mask[..., None], 0.0, data)
    sig, noise = piesno(np.asarray(bg, dtype=np.float64), N=1, return_mask=True)
    if mask is not None:
        noise &= ~mask
    sig = np.atleast_1d(sig)
    per_slice = noise.reshape(-1, noise.shape[-1]).sum(0) if noise.ndim == 3 else np.array([noise.sum()])
    good = (per_slice >= 20) & (sig > 0)
    if per_slice[good].sum() < MIN_BACKGROUND:
        return None, f"no background of air found (PIESNO: {int(noise.sum())} noise-only voxels, " \
                     f"{MIN_BACKGROUND} needed)"
    return float(np.average(sig[good], weights=per_slice[good])), None


def _mppca(data, mask):
    from dipy.denoise.localpca import mppca

    if data.shape[-1] < 10:
        return None, None, f"{data.shape[-1]} volumes (MP-PCA needs ≥ 10)"
    if mask.sum() < MIN_MASK:
        return None, None, f"{int(mask.sum())} mask voxels (MP-PCA needs ≥ {MIN_MASK})"
    radius = np.minimum(2, (np.asarray(data.shape[:3]) - 1) // 2)  # 5 × 5 × 5 patches where the grid allows
    if np.prod(2 * radius + 1) <= data.shape[-1]:
        return None, None, f"a grid of {data.shape[:3]} voxels is too small for MP-PCA patches"
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # degenerate patches (e.g. identical volumes):
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's warnings inside DIPY; the result is checked below
        _, smap = mppca(np.asarray(data, dtype=np.float64), mask=mask, patch_radius=radius, return_sigma=True,
                        suppress_warning=True)
    vals = smap[mask]
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if vals.size < MIN_MASK:
        return None, None, "MP-PCA found no noise floor in the mask"
    return float(np.median(vals)), np.where(mask, smap, np.nan).astype(np.float32), None


def _repeats(data, protocol, mask):
    groups = [g for g in protocol.shells() if g.size >= 2]
    if not groups:
        return None, "no repeated volumes (no b acquired more than once with the same settings)"
    x = data[mask]
    var_sum, dof = 0.0, 0
    for g in groups:
        v = x[:, g]
        keep = v.mean(1) > 0
        if keep.sum() < MIN_MASK:
            continue
        var_sum += float(v[keep].var(1, ddof=1).sum() * (g.size - 1))
        dof += int(keep.sum()) * (g.size - 1)
    if dof < MIN_MASK:
        return None, "too few mask voxels with repeated volumes"
    sigma = np.sqrt(var_sum / dof)
    level = float(np.median(x[x > 0])) if np.any(x > 0) else 0.0
    if sigma * NO_NOISE_SNR <= level:
        return None, "the repeated volumes are identical (no noise between them: copies, or noise-free data)"
    # keep the voxels and shells where Rician ≈ Gaussian (mean > 5 σ) and re-pool once
    var_sum, dof = 0.0, 0
    for g in groups:
        v = x[:, g]
        keep = v.mean(1) > 5 * sigma
        var_sum += float(v[keep].var(1, ddof=1).sum() * (g.size - 1))
        dof += int(keep.sum()) * (g.size - 1)
    return (float(np.sqrt(var_sum / dof)) if dof >= MIN_MASK else float(sigma)), None


def _voxel_snr(data, protocol, mask, sigma) -> dict:
    b0 = np.flatnonzero(protocol.is_b0)
    if b0.size == 0:
        raise InputError("the DWI has no b = 0 volume: the per-voxel SNR is referenced to b = 0")
    x = np.asarray(data[mask][:, b0], dtype=np.float64)
    corr = np.sqrt(np.maximum(x**2 - 2 * sigma**2, 0.0))
    bright = int(np.argmax(np.median(x, axis=0)))
    peak = corr[:, bright] / sigma
    tr = np.where(np.isfinite(protocol.tr[b0]), np.round(protocol.tr[b0]), -1)
    values, counts = np.unique(tr, return_counts=True)
    same = tr == values[np.argmax(counts)]
    te = protocol.te[b0][same]
    s0 = peak.copy()  # where the decay cannot be read: the brightest b = 0
    if np.unique(np.round(te)).size >= 2:
        # log-linear T2 decay to TE = 0 through the b = 0s at least 2σ above the floor (a b = 0 lost in the noise
        # would make the slope, and the extrapolation, arbitrary): least squares weighted 0 / 1 per voxel
        sig = corr[:, same]
        w = (sig > 2 * sigma).astype(np.float64)
        y = np.log(np.maximum(sig, 1e-6 * sigma))
        n, sx, sxx = w.sum(1), w @ te, w @ te**2
        sy, sxy = (w * y).sum(1), (w * y) @ te
        det = n * sxx - sx**2
        ok = det > 1e-9 * np.maximum(n * sxx, 1.0)  # at least two distinct TEs above the floor
        slope = np.where(ok, (n * sxy - sx * sy) / np.where(ok, det, 1.0), 0.0)
        intercept = np.where(ok, (sy - slope * sx) / np.maximum(n, 1.0), 0.0)
        decays = ok & (slope < 0)
        s0[decays] = np.exp(intercept[decays]) / sigma
        s0[ok & ~decays] = sig[ok & ~decays].max(1) / sigma  # no T2 decay seen: the brightest b = 0
    return {"peak": peak, "s0": s0}


def _above(data, protocol, finite, sigma) -> np.ndarray:
    """The default mask: finite voxels whose mean b = 0 exceeds 4σ."""
    return finite & (data[..., protocol.snr_b0].mean(-1) > 4 * sigma)


def estimate_noise(dwi, mask=None, method: str = "auto") -> NoiseEstimate:
    """σ of the scanner's noise in ``dwi`` (a :class:`.dwi.Dwi` or a DWI path, direction-resolved as acquired)
    and the per-voxel SNR inside ``mask`` (a boolean array or mask path; default: mean b = 0 above 4σ). A mask of
    numbers counts its non-zero voxels as inside and NaN as outside, as every method's mask does."""
    from napari_rverdict.data.dwi import Dwi, load_dwi
    from napari_rverdict.data.label_files import load_mask

    if method not in METHODS:
        raise InputError(f"unknown noise estimator '{method}'; choose one of: {', '.join(METHODS)}")
    if not isinstance(dwi, (Dwi, str, Path)):
        raise InputError(f"estimate_noise needs a Dwi or a DWI path, got {type(dwi).__name__}: wrap an array with "
                         "its protocol, Dwi.from_array(data, affine, protocol)")
    if not isinstance(dwi, Dwi):
        dwi = load_dwi(dwi)
    source = Path(dwi.path).name if dwi.path is not None else ""
    data = dwi.data
    if isinstance(mask, (str, Path)):
        mask = load_mask(mask, dwi)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != bool:  # as every other mask: non-zero is inside, NaN outside (NumPy's bool(NaN) is True)
            mask = np.nan_to_num(mask.astype(np.float64)) != 0
        if mask.shape != data.shape[:3]:
            raise InputError(f"the mask has shape {mask.shape} but the DWI's voxels are {data.shape[:3]}")
        if mask.sum() < MIN_MASK:
            raise InputError(f"the mask holds {int(mask.sum())} voxels; estimating the SNR needs ≥ {MIN_MASK}")
    finite = np.isfinite(data).all(-1)
    work_mask = finite if mask is None else mask & finite
    tried = []
    if np.any(dwi.protocol.n_volumes > 1):  # already averaged volumes carry σ/√n: estimate on the single ones
        single = dwi.protocol.n_volumes == 1
        if single.sum() < 2:
            raise InputError("the DWI's volumes are averages (direction-averaged): give the acquired volumes")
        dwi = Dwi.from_array(data[..., single], dwi.affine, dwi.protocol.subset(single))
        data = dwi.data
    sigma, smap, used = None, None, None
    order = ("piesno", "mppca", "repeats") if method == "auto" else (method,)
    for m in order:
        if m == "piesno":
            sigma, why = _piesno(np.where(finite[..., None], data, 0.0), mask)
        elif m == "mppca":
            body = work_mask if mask is not None else finite & (data.max(-1) > 0)
            sigma, smap, why = _mppca(data, body)
        else:
            sigma, why = _repeats(data, dwi.protocol, work_mask)
        if sigma is not None and np.isfinite(sigma) and sigma > 0:
            n_above = MIN_MASK if mask is not None else int(_above(data, dwi.protocol, finite, sigma).sum())
            if n_above >= MIN_MASK:
                used = m
                break
            # no voxel stands out of such noise: a σ read off tissue (a crop with no air), not the scanner's
            why = f"σ {sigma:.4g} leaves {n_above} voxels with a mean b = 0 above 4σ (tissue taken for noise?)"
            sigma, smap = None, None
        tried.append(f"{m}: {why}")
    if used is None:
        raise InputError("cannot estimate the noise of this DWI: " + "; ".join(tried) +
                         ("" if mask is not None else "; a mask of the tissue (e.g. the gland) may help"))
    if mask is None:
        mask = _above(data, dwi.protocol, finite, sigma)
    vox = _voxel_snr(data, dwi.protocol, mask, sigma)
    return NoiseEstimate(sigma, used, {k: snr_percentiles(v) for k, v in vox.items()}, vox, smap, source,
                         int(mask.sum()), tried)


def training_snr(bundle) -> dict:
    """The effective-SNR percentiles (brightest b = 0) a bundle was trained at: its matched DWI's (drawn on
    "peak"), or those its SNR setting — or its match on "s0" — implies under its prior
    (:func:`.synth.effective_snr`). ``bundle``: anything with ``model``,
    ``protocol``, ``ranges``, ``fraction_sampler`` and ``noise_settings()`` (a :class:`.learn.bundle.Bundle`)."""
    from napari_rverdict.data.synth import effective_snr, matched_on_s0

    noise = bundle.noise_settings()
    if noise.get("snr_from") is not None and not matched_on_s0(bundle.model, noise["snr_from"],
                                                               noise["snr_reference"]):
        return noise["snr_from"].percentiles()  # each sample's SNR was drawn from it
    ranges = {k: v for k, v in bundle.ranges.items() if k in bundle.model.parameter_names}
    return effective_snr(bundle.model, bundle.protocol, noise["snr"], noise["snr_reference"], ranges,
                         bundle.fraction_sampler, n=5000, snr_from=noise.get("snr_from"))


def noise_mismatch(bundle, dwi, mask=None, estimate: NoiseEstimate | None = None) -> str | None:
    """One line when the DWI's median SNR at the brightest b = 0 lies outside what ``bundle`` was trained on
    (its effective-SNR 5–95 % range, widened by 25 % each way), else None. Only the quick estimators run (PIESNO,
    then repeats; MP-PCA over a whole volume would take minutes); a DWI they cannot read gives None."""
    est = estimate
    for method in () if est is not None else ("piesno", "repeats"):
        try:
            est = estimate_noise(dwi, mask, method=method)
            break
        except InputError:
            continue
    if est is None:
        return None
    have, want = est.snr["peak"]["median"], training_snr(bundle)
    if not np.isfinite(have) or 0.8 * want["p5"] <= have <= 1.25 * want["p95"]:
        return None
    return (f"the DWI's SNR (median {have:.3g} at the brightest b = 0, {est.method}) lies outside what the model "
            f"was trained on ({want['p5']:.3g}–{want['p95']:.3g}); retrain with --snr-from to match it")
