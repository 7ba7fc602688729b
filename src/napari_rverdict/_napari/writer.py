"""NIfTI writers: image (and labels) layers → ``.nii.gz`` (written atomically) with the affine of the file they
came from.

Layer data is in napari order ((n,) z, y, x) and goes back to nibabel's (x, y, z(, n)). The affine is the one the
reader (or the Maps dock) stored in ``metadata['affine']``; a layer without one gets an affine built from its
``scale`` and ``translate``. Each writer returns the paths it wrote.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from napari_rverdict._napari.reader import layer_to_xyz
from napari_rverdict.data.nifti import is_nifti_name, scanner_image
from napari_rverdict.files import atomic_path


def _nifti_path(path) -> Path:
    p = Path(path)
    if not is_nifti_name(p):
        p = p.with_name(p.name + ".nii.gz")
    return p


def affine_from_meta(meta: dict, ndim_spatial: int = 3) -> np.ndarray:
    """The source affine from ``meta['metadata']``, else one from the layer's scale / translate (z, y, x order)."""
    md = meta.get("metadata") or {}
    affine = md.get("affine")
    if affine is not None:
        return np.asarray(affine, dtype=float)
    scale = list(meta.get("scale") or [1.0] * ndim_spatial)[-3:]
    translate = list(meta.get("translate") or [0.0] * ndim_spatial)[-3:]
    affine = np.eye(4)
    affine[:3, :3] = np.diag(scale[::-1])
    affine[:3, 3] = translate[::-1]
    return affine


def write_nifti(path, data, meta: dict) -> str:
    """Write one layer; returns the path written."""
    import nibabel as nib

    path = _nifti_path(path)
    arr = layer_to_xyz(data)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.int64:
        arr = arr.astype(np.int32)
    affine = affine_from_meta(meta)
    md = meta.get("metadata") or {}
    if md.get("map_name") and arr.ndim == 3 and np.issubdtype(arr.dtype, np.floating):
        from napari_rverdict.data.map_files import save_map

        factor = float(md.get("display_factor") or 1.0)  # layers show some maps scaled; files keep the true unit
        if factor != 1.0:
            arr = arr / np.float32(factor)
        spec_display = md.get("display")
        # napari's writer contract: File ▸ Save Layers replaces (napari asked before, where it asks at all)
        return str(save_map(arr, path, affine, md["map_name"], md.get("unit") or "",
                            tuple(spec_display) if spec_display is not None else None, overwrite=True))
    header = md.get("nifti_header")
    header = header.copy() if header is not None else None
    img = scanner_image(arr, affine, header=header)
    img.set_data_dtype(arr.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # a temporary file beside it, then os.replace: never a half-written file
        nib.save(img, str(tmp))
    return str(path)


def write_single_image(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer (image or labels)."""
    return [write_nifti(path, data, meta)]


def safe_name(name: str) -> str:
    """'R (µm)' → 'R_um'; keeps file names portable."""
    name = name.replace("µ", "u").replace("²", "2").replace("⁻³", "-3")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.")
    return name or "layer"


def write_multiple(path: str, layer_data: list) -> list[str]:
    """npe2 multi-layer writer: each image layer to ``<path>/<name>.nii.gz`` (``map_name`` when it is a map)."""
    out_dir = Path(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for data, meta, _layer_type in layer_data:
        md = meta.get("metadata") or {}
        stem = md.get("map_name") or safe_name(meta.get("name", "layer"))
        written.append(write_nifti(out_dir / f"{stem}.nii.gz", data, meta))
    return written
