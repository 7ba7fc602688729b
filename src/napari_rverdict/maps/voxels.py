"""From a DWI to the voxels a method maps: the mask (Otsu on the mean b = 0 by default), the protocol matched to
the method's by settings, voxels with NaN or non-positive b = 0 left out (and counted), per-voxel normalisation,
and the way back from per-voxel values to 3D maps. Every way of making maps (network, NLLS) goes through here."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_rverdict.data.dwi import Dwi, load_dwi
from napari_rverdict.data.label_files import load_mask
from napari_rverdict.errors import InputError
from napari_rverdict.physics.protocol import (PROTOCOL_DIFFERS, Protocol, ProtocolError, averages_directions,
                                              direction_average, missing_tr_advice)


# ---------------------------------------------------------------------- mask
def default_mask(b0_3d) -> np.ndarray:
    """Voxels whose mean b = 0 signal is above Otsu's threshold (scikit-image) → bool (x, y, z).

    NaN / inf voxels are outside. A constant (or all-NaN) image gives the voxels with a positive b = 0.
    """
    from skimage.filters import threshold_otsu

    b0 = np.asarray(b0_3d, dtype=np.float64)
    if b0.ndim != 3:
        raise InputError(f"default_mask needs a 3D b = 0 image, got shape {b0.shape}")
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
        raise InputError(f"a DWI must be 4D (x, y, z, volumes); got an array of shape {arr.shape}")
    if protocol is None:
        if fallback is not None and arr.shape[-1] == len(fallback):
            return Dwi.from_array(arr, None, fallback, notes=["protocol assumed to be the model's"])
        want = f" (the model's has {len(fallback)})" if fallback is not None else ""
        raise InputError(f"a DWI array with {arr.shape[-1]} volumes needs its protocol{want}: pass protocol=")
    return Dwi.from_array(arr, None, protocol)


def resolve_mask(mask, dwi: Dwi) -> np.ndarray:
    """The bool mask (x, y, z) from an array, a NIfTI path on the DWI's grid, or None (→ :func:`default_mask`)."""
    if mask is None:
        return default_mask(dwi.b0())
    if isinstance(mask, (str, Path)):
        return load_mask(mask, dwi)
    m = np.asarray(mask)
    if m.shape != dwi.spatial_shape:
        raise InputError(f"the mask has shape {m.shape} but the DWI's spatial shape is {dwi.spatial_shape}")
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


def _b_list(values) -> str:
    return ", ".join(f"{v:g}" for v in values)


def missing_b_values(protocol: Protocol, reference: Protocol, rtol: float = 0.05) -> list[float]:
    """The b-values (> 0, s/mm²) of ``reference`` that no measurement of ``protocol`` has (within ``rtol``)."""
    have = np.asarray(protocol.b, dtype=float)[~protocol.is_b0]
    need = np.unique(np.round(np.asarray(reference.b, dtype=float)[~reference.is_b0], 1))
    return [float(b) for b in need if not np.any(np.abs(have - b) <= rtol * b)]


def check_b_values(protocol: Protocol, reference: Protocol) -> None:
    """Raise ProtocolError naming the b-values the estimator's protocol (``reference``) needs and the data lack."""
    missing = missing_b_values(protocol, reference)
    if missing:
        have = np.unique(np.round(np.asarray(protocol.b, dtype=float), 1))
        need = np.unique(np.round(np.asarray(reference.b, dtype=float), 1))
        raise ProtocolError(f"the DWI has no b = {_b_list(missing)} s/mm², which the model was trained with "
                            f"(the DWI has b = {_b_list(have)}; the model needs b = {_b_list(need)} s/mm²)")


def _plan(dwi, protocol, mask, reference: Protocol | None, stacklevel: int, model=None) -> _Plan:
    """Resolve DWI, protocol and mask, and decide averaging and matching (warns once about protocol differences).

    ``model``: the estimator's model; one that needs TR (rVERDICT) refuses data whose TR is unknown rather than
    assume the reference's. Reads no diffusion-weighted voxel: only the b = 0 volumes when the default mask is needed.
    """
    d = resolve_dwi(dwi, protocol, fallback=reference)
    if model is not None and model.requires_tr and not d.protocol.has_tr:
        raise ProtocolError(f"{model.label} needs the TR of every measurement, which the DWI's protocol lacks: "
                            + missing_tr_advice(d.protocol))
    notes = list(d.notes)
    m = resolve_mask(mask, d)
    if not m.any():
        raise InputError("the mask is empty: no voxel to estimate")
    prot = d.protocol
    average = averages_directions(d.protocol, reference)
    if average:
        prot = prot.direction_averaged()
        notes.append(f"direction-averaged {d.n_volumes} → {len(prot)} volumes")
    order = None
    if reference is not None:
        check_b_values(prot, reference)
        # a model without T1 weighting that divides each series by its own b = 0 (classic VERDICT) ignores TR
        order, diffs = prot.match_to(reference, use_tr=model is None or model.requires_tr)
        if diffs:
            warnings.warn(f"{PROTOCOL_DIFFERS}: " + "; ".join(diffs), stacklevel=stacklevel + 1)
            notes += diffs
        prot = reference
    return _Plan(d, m, bool(average), order, prot, notes)


def implausible_fraction(signals: np.ndarray, protocol: Protocol) -> float:
    """Fraction of voxels (rows of prepared, usable ``signals``) whose mean b = 0 signal is below the mean of their
    diffusion-weighted measurements: physically impossible (diffusion only attenuates), so a majority means the
    volumes are not in the order the protocol says or the b-values are wrong. 0 without b = 0 or b > 0."""
    b0 = protocol.is_b0
    if not b0.any() or b0.all() or len(signals) == 0:
        return 0.0
    s = np.asarray(signals, dtype=np.float64)
    return float(np.mean(s[:, b0].mean(axis=1) < s[:, ~b0].mean(axis=1)))


IMPLAUSIBLE_MAJORITY = 0.5


def _warn_implausible(fraction: float, stacklevel: int) -> None:
    if fraction > IMPLAUSIBLE_MAJORITY:
        warnings.warn(f"in {fraction:.0%} of the mask voxels the b = 0 signal is below the diffusion-weighted signal, "
                      "which diffusion cannot do: are the volumes in the order the protocol says, and the b-values "
                      "right? The maps are unlikely to mean anything", stacklevel=stacklevel + 1)


def _warn_excluded(n_bad: int, n_mask: int, stacklevel: int) -> None:
    if n_bad:
        warnings.warn(f"{n_bad} of {n_mask} mask voxel(s) have a NaN or infinite value in some volume, or a b = 0 "
                      "signal ≤ 0; they are left out (NaN in the maps)", stacklevel=stacklevel + 1)


_NO_USABLE = ("no voxel of the mask has a usable signal (each has a NaN or infinite value in some volume, or a "
              "b = 0 signal ≤ 0)")


def prepare_voxels(dwi, protocol=None, mask=None, *, reference: Protocol | None = None, model=None,
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
    model : the estimator's model: one that needs TR (rVERDICT) refuses a DWI whose TR is unknown.

    Warns when most voxels' b = 0 signal is below their diffusion-weighted signal (:func:`implausible_fraction`).

    Raises ValueError for a non-4D DWI, a volume count that differs from the protocol, a mask on another grid,
    an empty mask, or no usable voxel in the mask.
    """
    plan = _plan(dwi, protocol, mask, reference, _stacklevel + 1, model=model)
    d = plan.dwi
    index = np.flatnonzero(plan.mask.reshape(-1))
    data = d.data
    signals, ok = plan.signals(data.reshape(-1, data.shape[-1])[index])
    n_bad = int((~ok).sum())
    _warn_excluded(n_bad, ok.size, _stacklevel + 1)
    if n_bad:
        signals, index = signals[ok], index[ok]
        if index.size == 0:
            raise InputError(_NO_USABLE)
    _warn_implausible(implausible_fraction(signals, plan.protocol), _stacklevel + 1)
    used = np.zeros(int(np.prod(d.spatial_shape)), dtype=bool)
    used[index] = True
    return VoxelSet(np.ascontiguousarray(signals, dtype=np.float32), plan.protocol, index,
                    used.reshape(d.spatial_shape), d.spatial_shape, np.asarray(d.affine, dtype=float), n_bad,
                    plan.notes)


def scatter_maps(values: dict, index: np.ndarray, shape: tuple) -> dict[str, np.ndarray]:
    """{name: (n,)} at flat ``index`` → {name: float32 (x, y, z)}, NaN elsewhere (outside the mask and left-out
    voxels: never 0, which would be taken for a value)."""
    out = {}
    size = int(np.prod(shape))
    for name, v in values.items():
        full = np.full(size, np.nan, dtype=np.float32)
        full[index] = np.asarray(v, dtype=np.float32)
        out[name] = full.reshape(shape)
    return out


__all__ = ["VoxelSet", "check_b_values", "default_mask", "implausible_fraction", "missing_b_values", "prepare_voxels",
           "resolve_dwi", "resolve_mask", "scatter_maps"]
