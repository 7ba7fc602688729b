"""NIfTI in and out: diffusion volumes with their acquisition protocol, labels, masks and parameter maps.

Units: voxel sizes in mm (from the NIfTI header), the protocol in s/mm² and ms (see :mod:`.physics.protocol`).

* :func:`load_dwi` reads a 4D diffusion volume ``(x, y, z, n)`` lazily (the voxel data are read from the file on
  first use of :attr:`Dwi.data`) and finds its protocol: from the ``protocol`` argument (a preset name, a
  ``.scheme`` / ``.bval`` file or a :class:`Protocol`) or from a sidecar with the same stem (``dwi.scheme`` with
  an optional ``dwi.tr``; ``dwi.bval`` / ``dwi.bvec`` with ``dwi.json`` or per-volume ``dwi.delta``,
  ``dwi.smalldel``, ``dwi.te``, ``dwi.tr`` in seconds).
* :func:`save_map` / :func:`save_maps` write 3D float32 maps with the DWI's affine; the header ``descrip`` names
  the map and its unit (ASCII, ≤ 80 bytes) so that :func:`load_maps` and other viewers can read them back.
* :func:`load_labels` / :func:`load_mask` refuse images whose grid differs from the DWI's.

No napari or Qt here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_rverdict.errors import InputError
from napari_rverdict.files import FileSet, check_name, check_output_files, writing
from napari_rverdict.physics.protocol import Protocol, ProtocolError, direction_average
from napari_rverdict.physics.protocol_files import (
    _sidecar,
    fsl_files,
    innovate_preset_for,
    load_protocol,
    protocol_stem,
    write_fsl,
)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
DESCRIP_PREFIX = "napari-rverdict map"
AFFINE_ATOL = 1e-3  # mm: tolerance when comparing the affines of two images of the same grid

_UNIT_ASCII = {"µ": "u", "μ": "u", "·": "*"}
_SUPERSCRIPTS = dict(zip("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-"))


def ascii_unit(unit: str) -> str:
    """``"µm²/ms"`` → ``"um^2/ms"``, ``"µm⁻³"`` → ``"um^-3"`` (NIfTI header strings are ASCII).

    A run of superscript characters becomes one ``^`` followed by the plain characters.
    """
    out, in_sup = [], False
    for ch in str(unit):
        if ch in _SUPERSCRIPTS:
            out.append(("" if in_sup else "^") + _SUPERSCRIPTS[ch])
            in_sup = True
        else:
            out.append(_UNIT_ASCII.get(ch, ch))
            in_sup = False
    return "".join(out).encode("ascii", "replace").decode("ascii")


def _nib():
    import nibabel as nib

    return nib


def open_image(path, what: str):
    """The nibabel image at ``path`` (header only; data stays on disk), or one :class:`InputError` line naming
    ``what`` (DWI, mask, labels) when the file is missing or not a readable NIfTI image."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file not found: {path}")
    try:
        img = _nib().load(str(path))
        img.shape  # noqa: B018  (a damaged header fails here)
    except Exception as exc:  # nibabel raises several types for files that are not images
        raise InputError(f"{what} {path}: not a readable NIfTI image ({' '.join(str(exc).split())})") from None
    _check_declared_size(img, path, what)
    return img


# deflate cannot compress better than about 1032:1, so a .nii.gz can never hold more than this × its size
_MAX_GZIP_RATIO = 1100


def _check_declared_size(img, path: Path, what: str) -> None:
    """Refuse a header whose declared voxels cannot be in the file (truncated file or damaged header), before
    anything is allocated: an uncompressed image must hold offset + voxels × itemsize bytes; a gzipped one can
    hold at most :data:`_MAX_GZIP_RATIO` × its size."""
    shape = tuple(int(v) for v in img.shape)
    itemsize = np.dtype(img.get_data_dtype()).itemsize
    declared = float(np.prod(shape, dtype=np.float64)) * itemsize
    size = path.stat().st_size
    if path.name.endswith(".gz"):
        too_big = declared > _MAX_GZIP_RATIO * size
    else:
        offset = int(getattr(img.dataobj, "offset", 0) or 0)
        too_big = declared + offset > size
    if too_big:
        raise InputError(f"{what} {path.name}: the header declares {' × '.join(map(str, shape))} voxels "
                         f"({_size_text(declared)}) but the file is only {_size_text(size)}: "
                         "a truncated file or a damaged header")


def _size_text(n_bytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:,.1f} {unit}"
    return f"{n_bytes:.0f} bytes"


def check_affine(affine, what: str) -> np.ndarray:
    """The (4, 4) voxel → world transform, or one InputError line when it is NaN / infinite or singular (maps
    computed on such an image could not be placed in space, nor written)."""
    try:
        affine = np.asarray(affine, dtype=float)
    except (TypeError, ValueError):
        affine = np.empty(0)
    if affine.shape != (4, 4):
        raise InputError(f"{what}: its voxel-to-world transform (affine) must be a 4 × 4 matrix, got shape "
                         f"{affine.shape}")
    if not np.isfinite(affine).all():
        raise InputError(f"{what}: its voxel-to-world transform (affine) has NaN or infinite entries; fix the "
                         "header's sform / qform first")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{what}: its voxel-to-world transform (affine) is singular (zero voxel size); fix the "
                         "header's sform / qform first")
    return affine


def _read_voxels(image, slicer, what: str) -> np.ndarray:
    """float32 voxels ``image.dataobj[slicer]`` (magnitude of complex data), or one InputError line when the file
    cannot deliver them (truncated, damaged)."""
    import zlib

    try:
        values = np.asarray(image.dataobj[slicer])
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        raise InputError(f"{what}: could not read its voxels ({' '.join(str(exc).split())}): a truncated or "
                         "damaged file") from None
    if np.iscomplexobj(values):
        values = np.abs(values)
    return np.asarray(values, dtype=np.float32)


def _name_of(path: Path) -> str:
    """``/a/f_ic.nii.gz`` → ``f_ic``."""
    name = path.name
    for ext in NIFTI_SUFFIXES:
        if name.endswith(ext):
            return name[: -len(ext)]
    return path.stem


# ---------------------------------------------------------------------- the diffusion volume
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
        """The same voxels (still unread if they are) with another protocol; ValueError if its length differs."""
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

    Raises ValueError (one line) when the file is not 4D, no protocol is found, or the volume count differs from
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
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=float))
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"napari-rverdict DWI"
    nib.save(img, str(fileset.path(path)))
    written = [path]
    if protocol is not None:
        # one row per volume of the file (a direction-averaged DWI holds one per measurement)
        written += write_fsl(protocol, protocol_stem(path), per_measurement=True, overwrite=overwrite,
                             fileset=fileset)
    return written


# ---------------------------------------------------------------------- maps
def map_descrip(name: str, unit: str = "") -> bytes:
    """The header description of a map, ASCII, at most 80 bytes: ``napari-rverdict map T1 [ms]``."""
    text = f"{DESCRIP_PREFIX} {name} [{ascii_unit(unit)}]"
    return text.encode("ascii", "replace")[:79]


def parse_descrip(descrip) -> tuple[str, str] | None:
    """``b"napari-rverdict map T1 [ms]"`` → ``("T1", "ms")``; None for other descriptions."""
    text = descrip.decode("ascii", "replace") if isinstance(descrip, (bytes, np.bytes_)) else str(descrip)
    text = text.strip("\x00 ")
    if not text.startswith(DESCRIP_PREFIX):
        return None
    rest = text[len(DESCRIP_PREFIX):].strip()
    if rest.endswith("]") and "[" in rest:
        name, unit = rest[:-1].rsplit("[", 1)
        return name.strip(), unit.strip()
    return rest, ""


def save_map(array, path, affine, name: str, unit: str = "", display: tuple | None = None, *,
             overwrite: bool = False, fileset: FileSet | None = None) -> Path:
    """Write one 3D float32 map with ``affine``; ``descrip`` names the map and its unit; ``display`` (low, high)
    becomes the header's cal_min / cal_max (a display-range hint for viewers). Written atomically, or as part of
    ``fileset``. An existing file is refused (InputError) unless ``overwrite=True``."""
    nib = _nib()
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 3:
        raise InputError(f"map '{name}' must be 3D (x, y, z), got shape {array.shape}")
    affine = check_affine(affine, f"map '{name}'")
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder: give the map a file name")
    check_output_files([path], overwrite=overwrite, what="map file")
    img = nib.Nifti1Image(array, affine)
    hdr = img.header
    hdr.set_xyzt_units("mm")
    hdr["descrip"] = map_descrip(name, unit)
    hdr["intent_name"] = name.encode("ascii", "replace")[:15]
    if display is not None:
        hdr["cal_min"], hdr["cal_max"] = float(display[0]), float(display[1])
    with writing(path, fileset) as tmp:
        nib.save(img, str(tmp))
    return path


def save_maps(maps: dict, out_dir, affine, model=None, prefix: str = "", suffix: str = ".nii.gz", *,
              overwrite: bool = False, fileset: FileSet | None = None) -> list[Path]:
    """Write every map of ``maps`` as ``<out_dir>/<prefix><name>.nii.gz`` (3D float32, the DWI's affine), as one
    :class:`.files.FileSet`: all maps or none (or as part of ``fileset``). A name that would leave ``out_dir`` is
    refused (InputError) before anything is written, and so are existing map files (all named in one error) unless
    ``overwrite=True``; other files in ``out_dir`` are left alone.

    ``model`` (a SignalModel or its name) supplies each map's unit and display range; ``fit_nrmse`` (every
    method's fit-quality map) has its own; other maps are written without a unit. Returns the paths in the order of
    ``maps``.
    """
    from napari_rverdict.physics.models import FIT_NRMSE, find_map_spec, get_model

    for name in maps:
        check_name(f"{prefix}{name}{suffix}", "map file name")
    # bad input is refused before anything is made on disk (not even the folder)
    for name, array in maps.items():
        if np.ndim(array) != 3:
            raise InputError(f"map '{name}' must be 3D (x, y, z), got shape {np.shape(array)}")
    check_affine(affine, "the maps")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise InputError(f"{out_dir} is a file, not a folder: give save_maps a folder")
    out_dir = Path(out_dir)
    check_output_files([out_dir / f"{prefix}{name}{suffix}" for name in maps], overwrite=overwrite, what="map file")
    if fileset is None:
        with FileSet() as files:
            return save_maps(maps, out_dir, affine, model, prefix, suffix, overwrite=overwrite, fileset=files)
    model = get_model(model) if model is not None else None
    written = []
    for name, array in maps.items():
        unit, display = "", None
        spec = model.map_spec(name) if model is not None and name in model.map_names else \
            find_map_spec(name) if name == FIT_NRMSE else None
        if spec is not None:
            unit, display = spec.unit, spec.display
        written.append(save_map(array, out_dir / f"{prefix}{name}{suffix}", affine, name, unit, display,
                                overwrite=overwrite, fileset=fileset))
    return written


def load_maps(directory, prefix: str = "", *, with_units: bool = False):
    """Read a directory of 3D maps back: {name: float32 array}.

    Files written by :func:`save_maps` (recognised by their header) are read, named as their header says; if
    there are none, every 3D NIfTI file is read and named after its file (``f_ic.nii.gz`` → ``f_ic``), minus
    ``prefix``. ``with_units=True`` returns ``(maps, units)``. Raises ValueError when nothing is found or the
    maps' shapes differ.
    """
    nib = _nib()
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"not a directory of maps: {directory}")
    files = sorted(p for p in directory.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and p.name.startswith(prefix))
    ours, other = {}, {}
    for p in files:
        img = nib.load(str(p))
        if len(img.shape) != 3:
            continue
        parsed = parse_descrip(img.header["descrip"].tobytes())
        key_name = _name_of(p)[len(prefix):]
        if parsed is not None:
            ours[parsed[0] or key_name] = (img, parsed[1])
        else:
            other[key_name] = (img, "")
    chosen = ours or other
    if not chosen:
        raise InputError(f"no 3D NIfTI maps in {directory}")
    maps, units, shape = {}, {}, None
    for name, (img, unit) in chosen.items():
        if shape is not None and img.shape != shape:
            raise InputError(f"maps in {directory} differ in shape: {name} is {img.shape}, others are {shape}")
        shape = img.shape
        maps[name] = _read_voxels(img, ..., f"map {name}")
        units[name] = unit
    return (maps, units) if with_units else maps


# ---------------------------------------------------------------------- labels and masks
def _grid_of(like) -> tuple[tuple, np.ndarray, str]:
    """(spatial shape, affine, description) of a Dwi, a NIfTI image or a (shape, affine) pair."""
    if isinstance(like, Dwi):
        return like.spatial_shape, like.affine, like.path.name if like.path else "the DWI"
    if isinstance(like, tuple) and len(like) == 2:
        return tuple(like[0])[:3], np.asarray(like[1], dtype=float), "the reference grid"
    if hasattr(like, "affine") and hasattr(like, "shape"):
        return tuple(like.shape)[:3], np.asarray(like.affine, dtype=float), "the reference image"
    raise TypeError(f"like must be a Dwi, an image or a (shape, affine) pair, got {type(like).__name__}")


def _load_on_grid(path, like, what: str) -> np.ndarray:
    path = Path(path)
    img = open_image(path, what)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if like is not None:
        want_shape, want_affine, desc = _grid_of(like)
        if shape != tuple(want_shape):
            raise InputError(f"{what} {path.name} has shape {shape} but {desc} has spatial shape {tuple(want_shape)}")
        if not np.allclose(img.affine, want_affine, atol=AFFINE_ATOL):
            raise InputError(
                f"{what} {path.name} is on a different grid than {desc}: affine "
                f"{np.round(img.affine[:3], 3).tolist()} vs {np.round(want_affine[:3], 3).tolist()}"
            )
    elif len(shape) != 3:
        raise InputError(f"{what} {path.name} must be 3D, got shape {shape}")
    return _read_voxels(img, ..., f"{what} {path.name}").reshape(shape)


def load_labels(path, like=None) -> np.ndarray:
    """Integer label image (0 = unlabelled) on the grid of ``like`` (a Dwi, image or (shape, affine)).

    Raises ValueError when shape or affine (atol 1e-3 mm) differ from ``like``'s, or values are not integers.
    """
    raw = _load_on_grid(path, like, "label image")
    values = np.asarray(raw, dtype=np.float64)
    if not np.isfinite(values).all() or not np.allclose(values, np.round(values)):
        raise InputError(f"label image {Path(path).name} has non-integer values; labels must be whole numbers")
    return np.round(values).astype(np.int32)


def load_mask(path, like=None) -> np.ndarray:
    """Boolean mask (non-zero = inside) on the grid of ``like``; same checks as :func:`load_labels`."""
    raw = np.asarray(_load_on_grid(path, like, "mask"), dtype=np.float64)
    return np.nan_to_num(raw) != 0


def save_labels(labels, path, affine, descrip: str = "napari-rverdict labels", *, overwrite: bool = False,
                fileset: FileSet | None = None) -> Path:
    """Write an integer label (or mask) image as int16 with ``affine`` (atomically, or as part of ``fileset``). An
    existing file is refused (InputError) unless ``overwrite=True``."""
    nib = _nib()
    path = Path(path)
    check_output_files([path], overwrite=overwrite, what="label file")
    img = nib.Nifti1Image(np.asarray(labels).astype(np.int16), np.asarray(affine, dtype=float))
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = descrip.encode("ascii", "replace")[:79]
    with writing(path, fileset) as tmp:
        nib.save(img, str(tmp))
    return path


__all__ = [
    "Dwi", "ProtocolError", "ascii_unit", "dwi_files", "find_sidecar", "load_dwi", "load_dwi_as_named", "load_labels",
    "load_maps", "load_mask", "map_descrip", "parse_descrip", "save_dwi", "save_labels", "save_map", "save_maps",
]
