"""Label images and masks: read on the DWI's grid (shape and affine checked), and written.

* :func:`load_labels` / :func:`load_mask` refuse images whose grid differs from the DWI's.
* :func:`save_labels` writes an integer label (or mask) image.

No napari or Qt here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_rverdict.data.dwi import Dwi
from napari_rverdict.data.nifti import _nib, _read_voxels, open_image, scanner_image
from napari_rverdict.errors import InputError
from napari_rverdict.files import FileSet, check_output_files, writing

AFFINE_ATOL = 1e-3  # mm: tolerance when comparing the affines of two images of the same grid


def _grid_of(like) -> tuple[tuple, np.ndarray, str]:
    """(spatial shape, affine, description) of a Dwi, a NIfTI image or a (shape, affine) pair."""
    if isinstance(like, Dwi):
        return like.spatial_shape, like.affine, like.path.name if like.path else "the DWI"
    if isinstance(like, tuple) and len(like) == 2:
        return tuple(like[0])[:3], np.asarray(like[1], dtype=float), "the reference grid"
    if hasattr(like, "affine") and hasattr(like, "shape"):
        return tuple(like.shape)[:3], np.asarray(like.affine, dtype=float), "the reference image"
    raise TypeError(f"like must be a Dwi, an image or a (shape, affine) pair, got {type(like).__name__}")


def load_on_grid(path, like, what: str) -> np.ndarray:
    """A 3D image (a trailing axis of 1 dropped) checked to lie on ``like``'s grid (a Dwi, an image or a (shape,
    affine) pair; None: no check): a mask, a label image, a σ map. ``what`` names it in the InputError."""
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

    Raises InputError when shape or affine (atol 1e-3 mm) differ from ``like``'s, or values are not integers.
    """
    raw = load_on_grid(path, like, "label image")
    values = np.asarray(raw, dtype=np.float64)
    if not np.isfinite(values).all() or not np.allclose(values, np.round(values)):
        raise InputError(f"label image {Path(path).name} has non-integer values; labels must be whole numbers")
    return np.round(values).astype(np.int32)


def load_mask(path, like=None) -> np.ndarray:
    """Boolean mask (non-zero = inside) on the grid of ``like``; same checks as :func:`load_labels`."""
    raw = np.asarray(load_on_grid(path, like, "mask"), dtype=np.float64)
    return np.nan_to_num(raw) != 0


def save_labels(labels, path, affine, descrip: str = "napari-rverdict labels", *, overwrite: bool = False,
                fileset: FileSet | None = None) -> Path:
    """Write an integer label (or mask) image as int16 with ``affine`` (atomically, or as part of ``fileset``). An
    existing file is refused (InputError) unless ``overwrite=True``."""
    nib = _nib()
    path = Path(path)
    check_output_files([path], overwrite=overwrite, what="label file")
    img = scanner_image(np.asarray(labels).astype(np.int16), affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = descrip.encode("ascii", "replace")[:79]
    with writing(path, fileset) as tmp:
        nib.save(img, str(tmp))
    return path


__all__ = ["load_labels", "load_mask", "load_on_grid", "save_labels"]
