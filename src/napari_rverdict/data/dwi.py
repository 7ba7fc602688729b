"""The diffusion volume: a 4D NIfTI with its acquisition protocol and sidecars, in and out.

Units: voxel sizes in mm (from the NIfTI header), the protocol in s/mm² and ms (see :mod:`.physics.protocol`).

* :func:`load_dwi` reads a 4D diffusion volume ``(x, y, z, n)`` lazily (the voxel data are read from the file on
  first use of :attr:`Dwi.data`) and finds its protocol: from the ``protocol`` argument (a preset name, a
  ``.scheme`` / ``.bval`` file or a :class:`Protocol`) or from a sidecar with the same stem (``dwi.scheme`` with
  an optional ``dwi.tr``; ``dwi.bval`` / ``dwi.bvec`` with ``dwi.json`` or per-volume ``dwi.delta``,
  ``dwi.smalldel``, ``dwi.te``, ``dwi.tr`` in seconds).
* :func:`save_dwi` writes a 4D float32 NIfTI and, given a protocol, its FSL-style sidecars.

No napari or Qt here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_rverdict.data.nifti import _nib, _read_voxels, check_affine, open_image, scanner_image
from napari_rverdict.errors import InputError
from napari_rverdict.files import FileSet, check_output_files
from napari_rverdict.physics.protocol import Protocol, ProtocolError, direction_average
from napari_rverdict.physics.protocol_files import (
    _sidecar,
    fsl_files,
    innovate_preset_for,
    load_protocol,
    protocol_stem,
    write_fsl,
)


@dataclass
class Dwi:
    """A 4D diffusion-weighted volume and its acquisition.

    Attributes
    ----------
    affine : (4, 4) voxel → world (mm) transform.
    header : the NIfTI header (or None for an in-memory volume).
    voxel_sizes : (3,) mm.
    protocol : one entry per volume (b s/mm², δ Δ TE TR ms).
    path : the source file (None for an in-memory volume).
    notes : what was assumed or changed while reading (e.g. "direction-averaged 20 → 10 volumes").
    shape : (x, y, z, n), known without reading the voxels.

    :attr:`data` is the (x, y, z, n) float32 array, read from the file on first use.
    """

    affine: np.ndarray
    header: object
    voxel_sizes: tuple
    protocol: Protocol
    path: Path | None
    shape: tuple
    notes: list = field(default_factory=list)
    _image: object = field(default=None, repr=False)
    _data: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_array(cls, data, affine=None, protocol=None, notes=None) -> Dwi:
        """An in-memory Dwi: ``data`` (x, y, z, n), ``affine`` (default identity), ``protocol`` (n entries)."""
        data = np.asarray(data)
        if np.iscomplexobj(data):
            import warnings

            warnings.warn("the DWI is complex-valued: its magnitude is used", stacklevel=2)
            data = np.abs(data)
        data = np.asarray(data, dtype=np.float32)
        if data.ndim != 4:
            raise InputError(f"a DWI must be 4D (x, y, z, volumes); got an array of shape {data.shape}")
        affine = np.eye(4) if affine is None else check_affine(affine, "the DWI")
        if protocol is None:
            raise InputError("an in-memory DWI needs its protocol (one entry per volume)")
        protocol = load_protocol(protocol)
        _check_count(data.shape[-1], protocol, "the array")
        sizes = tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(0)))
        return cls(affine, None, sizes, protocol, None, data.shape, list(notes or []), None, data)

    @property
    def data(self) -> np.ndarray:
        """(x, y, z, n) float32, read on first access (scaled by the NIfTI slope/intercept)."""
        if self._data is None:
            from napari_rverdict.data.synth import check_memory

            check_memory(float(np.prod(self.shape, dtype=np.float64)) * 4, f"reading {self._what}")
            self._data = _read_voxels(self._image, ..., self._what)
        return self._data

    @property
    def _what(self) -> str:
        return f"DWI {self.path.name}" if self.path is not None else "the DWI"

    @property
    def in_memory(self) -> bool:
        """True when the voxels are held in memory (an array, or a file whose :attr:`data` was read already)."""
        return self._data is not None or self._image is None

    def with_protocol(self, protocol, note: str | None = None) -> Dwi:
        """The same voxels (still unread if they are) with another protocol; InputError if its length differs."""
        protocol = load_protocol(protocol)
        _check_count(self.n_volumes, protocol, self.path.name if self.path else "the DWI")
        notes = [*self.notes, note] if note else list(self.notes)
        return Dwi(self.affine, self.header, self.voxel_sizes, protocol, self.path, self.shape, notes,
                   self._image, self._data)

    @property
    def spatial_shape(self) -> tuple:
        return tuple(self.shape[:3])

    @property
    def n_volumes(self) -> int:
        return int(self.shape[3])

    @property
    def is_direction_resolved(self) -> bool:
        """True when some volumes differ only in gradient direction (e.g. the 20-volume INNOVATE)."""
        return len(self.protocol.shells()) < len(self.protocol)

    def volume(self, index: int) -> np.ndarray:
        """One 3D volume as float32, read from the file alone when the data are not loaded yet."""
        if self.in_memory:
            return self.data[..., index]
        return _read_voxels(self._image, (..., index), self._what)

    def slab(self, start: int, stop: int) -> np.ndarray:
        """Slices ``start:stop`` along z of every volume, (x, y, stop - start, n) float32; read from the file alone
        (``dataobj[:, :, start:stop, :]``) when the data are not loaded yet, so memory stays at one slab."""
        if self.in_memory:
            return self.data[:, :, start:stop, :]
        return _read_voxels(self._image, (slice(None), slice(None), slice(start, stop), slice(None)), self._what)

    def b0(self) -> np.ndarray:
        """Mean of the b = 0 volumes (x, y, z) float32 (of every volume if the protocol has no b = 0)."""
        idx = np.flatnonzero(self.protocol.is_b0)
        if idx.size == 0:
            idx = np.arange(self.n_volumes)
        out = np.zeros(self.spatial_shape, dtype=np.float64)
        for i in idx:
            out += self.volume(int(i))
        return (out / idx.size).astype(np.float32)

    def direction_averaged(self) -> Dwi:
        """A Dwi whose volumes that differ only in gradient direction are averaged (20 → 10 for INNOVATE).

        Returns ``self`` when there is nothing to average.
        """
        if not self.is_direction_resolved:
            return self
        data, protocol = direction_average(self.data, self.protocol)
        note = f"direction-averaged {self.n_volumes} → {len(protocol)} volumes"
        return Dwi(self.affine, self.header, self.voxel_sizes, protocol, self.path, data.shape,
                   [*self.notes, note], None, data.astype(np.float32))


def _check_count(n_volumes: int, protocol: Protocol, what: str) -> None:
    if n_volumes != len(protocol):
        name = f" ({protocol.name})" if protocol.name else ""
        preset = innovate_preset_for(n_volumes) if protocol.name.startswith("INNOVATE") else None
        hint = f"; for INNOVATE's {n_volumes} volumes give protocol '{preset}'" if preset else ""
        raise InputError(f"{what} has {n_volumes} volumes but its protocol{name} has {len(protocol)} measurements"
                         + hint)


def find_sidecar(path) -> Path | None:
    """The protocol file beside a DWI with the same stem: ``<stem>.scheme`` or ``<stem>.bval`` (or None)."""
    stem = protocol_stem(Path(path))
    for suffix in (".scheme", ".bval"):
        candidate = _sidecar(stem, suffix)
        if candidate.exists():
            return candidate
    return None


def load_dwi(path, protocol=None, tr=None, *, direction_averaged: bool = False) -> Dwi:
    """Read a 4D diffusion NIfTI and its protocol.

    Parameters
    ----------
    path : ``.nii`` or ``.nii.gz``, 4D (x, y, z, volumes).
    protocol : a :class:`Protocol`, a preset (``innovate-20``, ``innovate``) or a ``.scheme`` / ``.bval`` file;
        None looks for a sidecar with the DWI's stem (``dwi.scheme``, ``dwi.bval`` + timings).
    tr : TR in ms (one value or one per volume) for protocols that carry none (Camino scheme).
    direction_averaged : if True, return :meth:`Dwi.direction_averaged` (reads the data).

    Raises InputError (one line) when the file is not 4D, no protocol is found, or the volume count differs from
    the protocol's.
    """
    nib = _nib()
    path = Path(path)
    img = open_image(path, "DWI")
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 5 and shape[3] == 1:  # (x, y, z, 1, n) as some converters write
        img = nib.Nifti1Image(_read_voxels(img, ..., f"DWI {path.name}").reshape(shape[:3] + shape[4:]), img.affine,
                              img.header)
        shape = shape[:3] + shape[4:]
    if len(shape) != 4:
        raise InputError(f"{path.name}: a DWI must be 4D (x, y, z, volumes), got {len(shape)}D shape {shape}")
    notes = []
    if protocol is None:
        sidecar = find_sidecar(path)
        if sidecar is None:
            stem = protocol_stem(path)
            raise InputError(f"no protocol found for {path.name}: looked for {stem.name}.scheme and {stem.name}.bval "
                             "beside it; pass a protocol (preset name or file)")
        prot = load_protocol(sidecar, tr=tr)
        notes.append(f"protocol read from {sidecar.name}")
    else:
        prot = load_protocol(protocol, tr=tr)
    _check_count(shape[3], prot, path.name)
    affine = check_affine(img.affine, f"DWI {path.name}")
    if np.dtype(img.get_data_dtype()).kind == "c":
        import warnings

        warnings.warn(f"{path.name} is complex-valued: its magnitude is used", stacklevel=2)
        notes.append("complex-valued: magnitude used")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    dwi = Dwi(affine, img.header, zooms, prot, path, shape, notes, img, None)
    return dwi.direction_averaged() if direction_averaged else dwi


def load_dwi_as_named(path, protocol=None, tr=None) -> Dwi:
    """:func:`load_dwi` with the protocol as a person names it (``rverdict predict | fit --protocol``, a cohort's
    ``--protocol`` or CSV ``protocol`` column): the preset ``innovate`` (INNOVATE's 10 direction-averaged
    measurements) on a DWI of 20 volumes means the 20-volume acquisition, ``innovate-20``. Any other protocol, and
    ``innovate`` on any other volume count, as :func:`load_dwi` reads it (a count that fits no protocol is its
    one-line error)."""
    if isinstance(protocol, (str, Path)) and str(protocol).strip().lower() == "innovate":
        shape = tuple(open_image(path, "DWI").shape)
        if len(shape) == 5 and shape[3] == 1:  # (x, y, z, 1, n), as load_dwi accepts
            shape = shape[:3] + shape[4:]
        if len(shape) == 4:
            protocol = innovate_preset_for(shape[3]) or protocol
    return load_dwi(path, protocol, tr)


def dwi_files(path, protocol: Protocol | None = None) -> list[Path]:
    """The paths :func:`save_dwi` writes: the NIfTI and, given ``protocol``, its sidecars."""
    path = Path(path)
    return [path] + ([] if protocol is None else fsl_files(protocol, protocol_stem(path), per_measurement=True))


def save_dwi(data, affine, path, protocol: Protocol | None = None, *, overwrite: bool = False,
             fileset: FileSet | None = None) -> list[Path]:
    """Write a 4D float32 NIfTI and, given ``protocol``, FSL-style sidecars beside it (``.bval``, ``.bvec``,
    ``.delta``, ``.smalldel``, ``.te``, ``.tr`` in seconds), all as one :class:`.files.FileSet` (whole or not at
    all; or as part of ``fileset``). Existing files (:func:`dwi_files`) are refused, all named in one InputError
    before anything is written, unless ``overwrite=True``. Returns the paths written."""
    if fileset is None:
        with FileSet() as files:
            return save_dwi(data, affine, path, protocol, overwrite=overwrite, fileset=files)
    nib = _nib()
    path = Path(path)
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 4:
        raise InputError(f"save_dwi needs a 4D array (x, y, z, volumes), got shape {data.shape}")
    if protocol is not None:
        _check_count(data.shape[-1], protocol, "the array")
    check_output_files(dwi_files(path, protocol), overwrite=overwrite)
    img = scanner_image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"napari-rverdict DWI"
    nib.save(img, str(fileset.path(path)))
    written = [path]
    if protocol is not None:
        # one row per volume of the file (a direction-averaged DWI holds one per measurement)
        written += write_fsl(protocol, protocol_stem(path), per_measurement=True, overwrite=overwrite,
                             fileset=fileset)
    return written


__all__ = ["Dwi", "ProtocolError", "dwi_files", "find_sidecar", "load_dwi", "load_dwi_as_named", "save_dwi"]
