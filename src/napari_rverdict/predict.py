"""Maps from a diffusion volume: a trained bundle applied to every voxel of a (masked) 4D DWI.

:func:`predict_volume` is the one entry point; the helpers that turn "a DWI and a mask" into a flat set of voxel
signals and back into 3D maps (:func:`prepare_voxels`, :func:`scatter_maps`, :func:`default_mask`) are shared with
the NLLS fit (:mod:`.nlls`), so both handle DWIs, protocols and masks the same way:

* the DWI may be an :class:`.io.Dwi`, a NIfTI path (protocol from ``protocol`` or a sidecar) or a 4D array;
* a direction-resolved acquisition (the 20-volume INNOVATE) is direction-averaged (20 → 10 measurements);
* the mask is a 3D bool array, a NIfTI path (on the DWI's grid) or None → :func:`default_mask` of the mean b = 0;
* voxels with NaN/inf or a non-positive b = 0 are left out (counted in one warning); an empty mask is an error;
* outputs are float32 maps of the DWI's spatial shape, 0 outside the mask.

No napari or Qt here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import Dwi, load_dwi, load_mask
from .physics.protocol import Protocol, load_protocol

NETWORK_CHUNK = 16384  # voxels per network call (PERFORMANCE.md: larger chunks spill the cache)


# ---------------------------------------------------------------------- mask
def default_mask(b0_3d) -> np.ndarray:
    """Voxels whose mean b = 0 signal is above Otsu's threshold (scikit-image) → bool (x, y, z).

    NaN / inf voxels are outside. A constant (or all-NaN) image gives the voxels with a positive b = 0.
    """
    from skimage.filters import threshold_otsu

    b0 = np.asarray(b0_3d, dtype=np.float64)
    if b0.ndim != 3:
        raise ValueError(f"default_mask needs a 3D b = 0 image, got shape {b0.shape}")
    finite = np.isfinite(b0)
    values = b0[finite]
    if values.size == 0:
        return np.zeros(b0.shape, dtype=bool)
    if np.ptp(values) == 0:
        return finite & (np.nan_to_num(b0) > 0)
    threshold = threshold_otsu(values)
    return finite & (np.where(finite, b0, -np.inf) > threshold)


# ---------------------------------------------------------------------- DWI and voxels
def resolve_dwi(dwi, protocol=None, *, fallback: Protocol | None = None) -> Dwi:
    """An :class:`.io.Dwi` from a Dwi, a NIfTI path or a 4D array (x, y, z, n).

    ``protocol`` (Protocol, preset name or file) overrides the Dwi's / sidecar's; for an array it is required
    unless ``fallback`` (e.g. the bundle's protocol) has n measurements. Raises ValueError otherwise.
    """
    if isinstance(dwi, Dwi):
        if protocol is None:
            return dwi
        prot = load_protocol(protocol)
        data = dwi.data
        out = Dwi.from_array(data, dwi.affine, prot, notes=[*dwi.notes, "protocol given by the caller"])
        out.path, out.header = dwi.path, dwi.header
        return out
    if isinstance(dwi, (str, Path)):
        return load_dwi(dwi, protocol)
    arr = np.asarray(dwi)
    if arr.ndim != 4:
        raise ValueError(f"a DWI must be 4D (x, y, z, volumes); got an array of shape {arr.shape}")
    if protocol is None:
        if fallback is not None and arr.shape[-1] == len(fallback):
            return Dwi.from_array(arr, None, fallback, notes=["protocol assumed to be the model's"])
        want = f" (the model's has {len(fallback)})" if fallback is not None else ""
        raise ValueError(f"a DWI array with {arr.shape[-1]} volumes needs its protocol{want}: pass protocol=")
    return Dwi.from_array(arr, None, protocol)


def resolve_mask(mask, dwi: Dwi) -> np.ndarray:
    """The bool mask (x, y, z) from an array, a NIfTI path on the DWI's grid, or None (→ :func:`default_mask`)."""
    if mask is None:
        return default_mask(dwi.b0())
    if isinstance(mask, (str, Path)):
        return load_mask(mask, dwi)
    m = np.asarray(mask)
    if m.shape != dwi.spatial_shape:
        raise ValueError(f"the mask has shape {m.shape} but the DWI's spatial shape is {dwi.spatial_shape}")
    if m.dtype != bool:
        m = np.nan_to_num(m.astype(np.float64)) != 0
    return m


@dataclass
class VoxelSet:
    """The voxels of a volume to estimate: flat signals and where they go back.

    signals : (n, m) float32 raw signals, in ``protocol``'s order.  protocol : their acquisition (after direction
    averaging; reordered to ``reference`` when one was given).  index : (n,) flat indices into ``shape``.
    mask : (x, y, z) bool, the voxels actually used.  shape : spatial shape.  affine : (4, 4).
    n_excluded : mask voxels dropped for NaN / non-positive b = 0.  notes : what was assumed or changed.
    """

    signals: np.ndarray
    protocol: Protocol
    index: np.ndarray
    mask: np.ndarray
    shape: tuple
    affine: np.ndarray
    n_excluded: int = 0
    notes: list = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.index.size)


def _valid_rows(signals: np.ndarray, protocol: Protocol) -> np.ndarray:
    """Rows with finite values and a positive b = 0 in every b = 0 measurement (the maximum if there is none)."""
    ok = np.isfinite(signals).all(axis=1)
    b0 = np.flatnonzero(protocol.is_b0)
    with np.errstate(invalid="ignore"):
        if b0.size:
            ok &= (signals[:, b0] > 0).all(axis=1)
        else:
            ok &= signals.max(axis=1) > 0
    return ok


def prepare_voxels(dwi, protocol=None, mask=None, *, reference: Protocol | None = None) -> VoxelSet:
    """Gather the masked voxels of a DWI as flat raw signals (shared by :func:`predict_volume` and NLLS).

    Parameters
    ----------
    dwi : an :class:`.io.Dwi`, a NIfTI path or a 4D array (x, y, z, n).
    protocol : Protocol, preset name or file; overrides the DWI's (required for an array unless it has as many
        volumes as ``reference``).
    mask : 3D bool array, NIfTI path, or None (→ :func:`default_mask` of the mean b = 0).
    reference : the protocol the estimator expects (e.g. a bundle's): the data's measurements are matched to it
        by their settings (``Protocol.match_to``), reordered, and differences reported with ``warnings.warn``.

    Raises ValueError for a non-4D DWI, a volume count that differs from the protocol, a mask on another grid,
    an empty mask, or no usable voxel in the mask.
    """
    d = resolve_dwi(dwi, protocol, fallback=reference)
    notes = list(d.notes)
    m = resolve_mask(mask, d)
    if not m.any():
        raise ValueError("the mask is empty: no voxel to estimate")
    if d.is_direction_resolved and (reference is None or len(d.protocol) != len(reference)):
        d = d.direction_averaged()
        notes = list(d.notes)
    prot = d.protocol
    data = d.data
    index = np.flatnonzero(m.reshape(-1))
    signals = data.reshape(-1, data.shape[-1])[index]
    if reference is not None:
        order, diffs = prot.match_to(reference)
        if diffs:
            warnings.warn("data protocol differs from the model's: " + "; ".join(diffs), stacklevel=3)
            notes += diffs
        signals = signals[:, order]
        prot = reference
    ok = _valid_rows(signals, prot)
    n_bad = int((~ok).sum())
    if n_bad:
        warnings.warn(f"{n_bad} of {ok.size} mask voxel(s) have NaN or a non-positive b = 0 signal; "
                      "they are left out (0 in the maps)", stacklevel=3)
        signals, index = signals[ok], index[ok]
        if index.size == 0:
            raise ValueError("no voxel of the mask has a usable signal (all have NaN or a non-positive b = 0)")
    used = np.zeros(int(np.prod(d.spatial_shape)), dtype=bool)
    used[index] = True
    return VoxelSet(np.ascontiguousarray(signals, dtype=np.float32), prot, index,
                    used.reshape(d.spatial_shape), d.spatial_shape, np.asarray(d.affine, dtype=float), n_bad, notes)


def scatter_maps(values: dict, index: np.ndarray, shape: tuple) -> dict[str, np.ndarray]:
    """{name: (n,)} at flat ``index`` → {name: float32 (x, y, z)}, 0 elsewhere."""
    out = {}
    size = int(np.prod(shape))
    for name, v in values.items():
        full = np.zeros(size, dtype=np.float32)
        full[index] = np.asarray(v, dtype=np.float32)
        out[name] = full.reshape(shape)
    return out


# ---------------------------------------------------------------------- inference
def predict_volume(bundle, dwi, protocol=None, mask=None, *, uncertainty: bool = False, device="cpu",
                   chunk: int = 65536, progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Maps of a 4D diffusion volume from a trained bundle.

    Parameters
    ----------
    bundle : a :class:`.bundle.Bundle` or the path of a saved one.
    dwi : an :class:`.io.Dwi`, a NIfTI path, or a 4D array (x, y, z, n) (then ``protocol`` is required unless n
        equals the bundle protocol's length).
    protocol : Protocol, preset name or file; overrides the DWI's own. A direction-resolved acquisition (20-volume
        INNOVATE) is direction-averaged to the bundle's measurements; settings that differ are warned about.
    mask : 3D bool array, NIfTI path on the DWI's grid, or None → :func:`default_mask` (Otsu on the mean b = 0).
    uncertainty : also return ``<map>_sd`` maps (needs a bundle that supports it).
    device : "cpu", "cuda", "mps" or "auto".  chunk : voxels per step (bounds memory).
    progress : called as ``progress(done_voxels, total_voxels)`` after every chunk.

    Returns {map name: float32 (x, y, z)} for every map of ``bundle.map_names`` (and every other key the bundle
    returns, e.g. ``f_ic_sd``), 0 outside the mask and in left-out voxels.
    """
    from .bundle import Bundle, load_bundle

    if int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    chunk = int(chunk)
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    if uncertainty and not getattr(bundle, "has_uncertainty", True):
        raise ValueError("this bundle gives no uncertainty (it was not trained for it)")
    vox = prepare_voxels(dwi, protocol, mask, reference=bundle.protocol)
    n = len(vox)
    kwargs = {"device": device, "chunk": min(chunk, NETWORK_CHUNK)}
    if uncertainty:
        kwargs["uncertainty"] = True
    flat: dict[str, np.ndarray] = {}
    if progress is not None:
        progress(0, n)
    for start in range(0, n, chunk):
        try:
            out = bundle.predict_signals(vox.signals[start:start + chunk], **kwargs)
        except TypeError as exc:
            if uncertainty and "uncertainty" in str(exc):
                raise ValueError("this version of the bundle cannot give uncertainty maps") from None
            raise
        for k, v in out.items():
            if k not in flat:
                flat[k] = np.empty(n, dtype=np.float32)
            flat[k][start:start + len(v)] = v
        if progress is not None:
            progress(min(start + chunk, n), n)
    return scatter_maps(flat, vox.index, vox.shape)


__all__ = ["VoxelSet", "default_mask", "predict_volume", "prepare_voxels", "resolve_dwi", "resolve_mask",
           "scatter_maps"]
