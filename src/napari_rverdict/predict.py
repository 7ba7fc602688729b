"""Maps from a diffusion volume: a trained bundle applied to every voxel of a (masked) 4D DWI.

:func:`predict_volume` is the one entry point; the helpers that turn "a DWI and a mask" into a flat set of voxel
signals and back into 3D maps (:func:`prepare_voxels`, :func:`scatter_maps`, :func:`default_mask`) are shared with
the NLLS fit (:mod:`.nlls`), so both handle DWIs, protocols and masks the same way:

* the DWI may be an :class:`.io.Dwi`, a NIfTI path (protocol from ``protocol`` or a sidecar) or a 4D array;
* a direction-resolved acquisition (the 20-volume INNOVATE) is direction-averaged (20 → 10 measurements);
* the mask is a 3D bool array, a NIfTI path (on the DWI's grid) or None → :func:`default_mask` of the mean b = 0;
* voxels with NaN/inf or a non-positive b = 0 are left out (counted in one warning); an empty mask is an error;
* outputs are float32 maps of the DWI's spatial shape, 0 outside the mask;
* :func:`predict_volume` streams a DWI that is still on disk slab by slab along z (bounded memory); the
  per-voxel preparation (averaging, matching, the NaN / b = 0 test) is one function for both paths.

No napari or Qt here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import Dwi, load_dwi, load_mask
from .physics.protocol import Protocol, direction_average

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
        return dwi.with_protocol(protocol, "protocol given by the caller")  # a file-backed DWI stays unread
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


@dataclass
class _Plan:
    """What turns raw rows of a DWI (n, volumes) into an estimator's signals: decided once per volume.

    dwi : the resolved DWI (a file-backed one still unread).  mask : (x, y, z) bool, not empty.  average : whether
    to direction-average.  order : column order that matches ``reference`` (None without one).  protocol : of the
    prepared signals.  notes : what was assumed or changed.
    """

    dwi: Dwi
    mask: np.ndarray
    average: bool
    order: np.ndarray | None
    protocol: Protocol
    notes: list

    def signals(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw rows (n, volumes) → (prepared float32 signals (n, m), bool (n,) usable rows).

        The one per-voxel preparation: direction averaging, matching to the reference's order, and the NaN /
        non-positive b = 0 test (:func:`_valid_rows`).
        """
        s = np.asarray(raw, dtype=np.float32)
        if self.average:
            s, _ = direction_average(s, self.dwi.protocol)
        if self.order is not None:
            s = s[:, self.order]
        return np.ascontiguousarray(s, dtype=np.float32), _valid_rows(s, self.protocol)


def _plan(dwi, protocol, mask, reference: Protocol | None, stacklevel: int) -> _Plan:
    """Resolve DWI, protocol and mask, and decide averaging and matching (warns once about protocol differences).

    Reads no diffusion-weighted voxel: only the b = 0 volumes when the default mask is needed.
    """
    d = resolve_dwi(dwi, protocol, fallback=reference)
    notes = list(d.notes)
    m = resolve_mask(mask, d)
    if not m.any():
        raise ValueError("the mask is empty: no voxel to estimate")
    prot = d.protocol
    average = d.is_direction_resolved and (reference is None or len(d.protocol) != len(reference))
    if average:
        prot = prot.direction_averaged()
        notes.append(f"direction-averaged {d.n_volumes} → {len(prot)} volumes")
    order = None
    if reference is not None:
        order, diffs = prot.match_to(reference)
        if diffs:
            warnings.warn("data protocol differs from the model's: " + "; ".join(diffs), stacklevel=stacklevel + 1)
            notes += diffs
        prot = reference
    return _Plan(d, m, bool(average), order, prot, notes)


def _warn_excluded(n_bad: int, n_mask: int, stacklevel: int) -> None:
    if n_bad:
        warnings.warn(f"{n_bad} of {n_mask} mask voxel(s) have NaN or a non-positive b = 0 signal; "
                      "they are left out (0 in the maps)", stacklevel=stacklevel + 1)


_NO_USABLE = "no voxel of the mask has a usable signal (all have NaN or a non-positive b = 0)"


def prepare_voxels(dwi, protocol=None, mask=None, *, reference: Protocol | None = None,
                   _stacklevel: int = 2) -> VoxelSet:
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
    plan = _plan(dwi, protocol, mask, reference, _stacklevel + 1)
    d = plan.dwi
    index = np.flatnonzero(plan.mask.reshape(-1))
    data = d.data
    signals, ok = plan.signals(data.reshape(-1, data.shape[-1])[index])
    n_bad = int((~ok).sum())
    _warn_excluded(n_bad, ok.size, _stacklevel + 1)
    if n_bad:
        signals, index = signals[ok], index[ok]
        if index.size == 0:
            raise ValueError(_NO_USABLE)
    used = np.zeros(int(np.prod(d.spatial_shape)), dtype=bool)
    used[index] = True
    return VoxelSet(np.ascontiguousarray(signals, dtype=np.float32), plan.protocol, index,
                    used.reshape(d.spatial_shape), d.spatial_shape, np.asarray(d.affine, dtype=float), n_bad,
                    plan.notes)


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

    A DWI from a file (a path, or an :class:`.io.Dwi` whose data were not read yet) is streamed: the default mask
    reads only the b = 0 volumes, then slabs along z of about ``chunk`` voxels are read, prepared and predicted one
    at a time, so memory stays bounded by the slab and the output maps whatever the volume's size. There
    ``progress`` counts mask voxels (those left out for NaN / non-positive b = 0 included). Arrays and in-memory
    Dwis are gathered whole (:func:`prepare_voxels`).

    Returns {map name: float32 (x, y, z)} for every map of ``bundle.map_names`` (and every other key the bundle
    returns, e.g. ``f_ic_sd``), 0 outside the mask and in left-out voxels.
    """
    from .bundle import Bundle, load_bundle

    if int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    chunk = int(chunk)
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    if uncertainty and not bundle.has_uncertainty:  # before any voxel is read
        raise ValueError("this bundle gives no uncertainty (it was not trained for it)")
    kwargs = {"device": device, "chunk": min(chunk, NETWORK_CHUNK), "uncertainty": bool(uncertainty)}
    if _streams(dwi):
        return _predict_streaming(bundle, dwi, protocol, mask, chunk, kwargs, progress)
    vox = prepare_voxels(dwi, protocol, mask, reference=bundle.protocol)
    n = len(vox)
    flat: dict[str, np.ndarray] = {}
    if progress is not None:
        progress(0, n)
    for start in range(0, n, chunk):
        out = bundle.predict_signals(vox.signals[start:start + chunk], **kwargs)
        for k, v in out.items():
            if k not in flat:
                flat[k] = np.empty(n, dtype=np.float32)
            flat[k][start:start + len(v)] = v
        if progress is not None:
            progress(min(start + chunk, n), n)
    return scatter_maps(flat, vox.index, vox.shape)


def _streams(dwi) -> bool:
    """Whether the voxels come from a file not read yet (a NIfTI path, or a file-backed, unread Dwi)."""
    if isinstance(dwi, (str, Path)):
        return True
    return isinstance(dwi, Dwi) and not dwi.in_memory


def _predict_streaming(bundle, dwi, protocol, mask, chunk: int, kwargs: dict, progress) -> dict[str, np.ndarray]:
    """:func:`predict_volume` on a file read slab by slab along z (about ``chunk`` voxels a slab).

    The default mask reads only the b = 0 volumes; each slab is prepared by the same :meth:`_Plan.signals` as
    :func:`prepare_voxels` and its usable mask voxels predicted into preallocated maps. ``progress`` counts mask
    voxels (left-out ones included) since the usable ones are only known once read.
    """
    plan = _plan(dwi, protocol, mask, bundle.protocol, stacklevel=3)
    d, m = plan.dwi, plan.mask
    shape = d.spatial_shape
    total = int(m.sum())
    thickness = max(1, chunk // max(1, shape[0] * shape[1]))
    maps: dict[str, np.ndarray] = {}
    done = n_bad = n_used = 0
    if progress is not None:
        progress(0, total)
    for z0 in range(0, shape[2], thickness):
        z1 = min(z0 + thickness, shape[2])
        in_slab = m[:, :, z0:z1]
        n_slab = int(in_slab.sum())
        if n_slab == 0:
            continue
        raw = d.slab(z0, z1)
        signals, ok = plan.signals(raw.reshape(-1, raw.shape[-1])[np.flatnonzero(in_slab.reshape(-1))])
        del raw
        n_bad += int((~ok).sum())
        signals = signals[ok]
        i, j, k = (c[ok] for c in np.nonzero(in_slab))
        k = k + z0
        n_ok = len(signals)
        n_used += n_ok
        for start in range(0, n_ok, chunk):
            stop = min(start + chunk, n_ok)
            out = bundle.predict_signals(signals[start:stop], **kwargs)
            for name, v in out.items():
                if name not in maps:
                    maps[name] = np.zeros(shape, dtype=np.float32)
                maps[name][i[start:stop], j[start:stop], k[start:stop]] = np.asarray(v, dtype=np.float32)
            if progress is not None and stop < n_ok:
                progress(done + stop, total)
        done += n_slab
        if progress is not None:
            progress(done, total)
    _warn_excluded(n_bad, total, stacklevel=3)
    if n_used == 0:
        raise ValueError(_NO_USABLE)
    return maps


__all__ = ["VoxelSet", "default_mask", "predict_volume", "prepare_voxels", "resolve_dwi", "resolve_mask",
           "scatter_maps"]
