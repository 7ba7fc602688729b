"""Maps from a DWI with a trained bundle: volumes in memory or NIfTI files streamed slab by slab along z."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_rverdict.data.dwi import Dwi
from napari_rverdict.errors import InputError, positive_int
from napari_rverdict.maps.fit_quality import FIT_NRMSE, fit_nrmse
from napari_rverdict.maps.voxels import (_NO_USABLE, _plan, _warn_excluded, _warn_implausible, implausible_fraction,
                                         prepare_voxels, scatter_maps)

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
    returns, e.g. ``f_ic_sd``), and ``fit_nrmse`` (:func:`.fit_quality.fit_nrmse`: how well the model, from the
    voxel's maps, explains its signal); NaN outside the mask and in left-out voxels.
    """
    from napari_rverdict.learn.bundle import DEFAULT_CHUNK, Bundle, load_bundle

    chunk = positive_int(chunk, "chunk")
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    if uncertainty and not bundle.has_uncertainty:  # before any voxel is read
        raise InputError("this bundle gives no uncertainty (it was not trained for it)")
    # the bundle's blocks (at most its DEFAULT_CHUNK: derived sds draw Monte-Carlo samples for a whole block)
    kwargs = {"device": device, "chunk": min(chunk, DEFAULT_CHUNK), "uncertainty": bool(uncertainty)}
    if _streams(dwi):
        return _predict_streaming(bundle, dwi, protocol, mask, chunk, kwargs, progress)
    vox = prepare_voxels(dwi, protocol, mask, reference=bundle.protocol, model=bundle.model)
    predict = bundle.predictor(**kwargs)  # the network folded once, not once a chunk
    n = len(vox)
    flat: dict[str, np.ndarray] = {}
    if progress is not None:
        progress(0, n)
    for start in range(0, n, chunk):
        out = _with_fit_quality(predict, bundle.model, vox.signals[start:start + chunk], vox.protocol)
        for k, v in out.items():
            if k not in flat:
                flat[k] = np.empty(n, dtype=np.float32)
            flat[k][start:start + len(v)] = v
        if progress is not None:
            progress(min(start + chunk, n), n)
    return scatter_maps(flat, vox.index, vox.shape)


def _with_fit_quality(predict, model, signals, protocol) -> dict:
    """The maps of prepared ``signals`` (``predict``: a :meth:`.Bundle.predictor`) and their ``fit_nrmse``."""
    out = predict(signals)
    out[FIT_NRMSE] = fit_nrmse(model, out, signals, protocol)
    return out


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
    plan = _plan(dwi, protocol, mask, bundle.protocol, stacklevel=3, model=bundle.model)
    predict = bundle.predictor(**kwargs)
    d, m = plan.dwi, plan.mask
    shape = d.spatial_shape
    total = int(m.sum())
    thickness = max(1, chunk // max(1, shape[0] * shape[1]))
    maps: dict[str, np.ndarray] = {}
    done = n_bad = n_used = 0
    n_implausible = 0.0
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
        n_implausible += implausible_fraction(signals, plan.protocol) * len(signals)
        i, j, k = (c[ok] for c in np.nonzero(in_slab))
        k = k + z0
        n_ok = len(signals)
        n_used += n_ok
        for start in range(0, n_ok, chunk):
            stop = min(start + chunk, n_ok)
            out = _with_fit_quality(predict, bundle.model, signals[start:stop], plan.protocol)
            for name, v in out.items():
                if name not in maps:
                    maps[name] = np.full(shape, np.nan, dtype=np.float32)
                maps[name][i[start:stop], j[start:stop], k[start:stop]] = np.asarray(v, dtype=np.float32)
            if progress is not None and stop < n_ok:
                progress(done + stop, total)
        done += n_slab
        if progress is not None:
            progress(done, total)
    _warn_excluded(n_bad, total, stacklevel=3)
    if n_used == 0:
        raise InputError(_NO_USABLE)
    _warn_implausible(n_implausible / n_used, stacklevel=3)
    return maps
