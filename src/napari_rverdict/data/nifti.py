"""Low-level NIfTI reading: open an image with its header checked, read its voxels, check its affine.

Units: voxel sizes in mm (from the NIfTI header).

* :func:`open_image` opens a file lazily (header only; the voxels stay on disk) and refuses, in one InputError line,
  a missing file, a file that is not a NIfTI image, or a header that declares more voxels than the file can hold.
* :func:`_read_voxels` reads float32 voxels (the magnitude of complex data); :func:`check_affine` refuses a voxel →
  world transform that is NaN / infinite or singular.
* :func:`ascii_unit` writes a unit the way NIfTI header strings need it (ASCII).

What is built on these: the diffusion volume in :mod:`.dwi`, parameter maps in :mod:`.map_files`, labels and masks
in :mod:`.label_files`.

No napari or Qt here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_rverdict.errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")

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


def is_nifti_name(path) -> bool:
    """Whether a file name ends in .nii or .nii.gz (any case)."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path) -> str:
    """``/a/sub-01.nii.gz`` → ``sub-01`` (.nii.gz or .nii, any case; another name loses its last suffix)."""
    name = Path(path).name
    for ext in NIFTI_SUFFIXES:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def scanner_image(data, affine, header=None):
    """A NIfTI-1 image of ``data`` whose qform and sform both hold ``affine`` with code 1 (scanner coordinates, as
    the DWI it came from): nibabel alone writes sform code 2 and qform code 0, and tools that read the qform (or
    prefer code 1) then place the file differently from its DWI. ``header``: a source header whose other fields
    (units, description, …) are kept."""
    img = _nib().Nifti1Image(data, np.asarray(affine, dtype=float), header=header)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return img


__all__ = ["NIFTI_SUFFIXES", "ascii_unit", "check_affine", "is_nifti_name", "nifti_stem", "open_image",
           "scanner_image"]
