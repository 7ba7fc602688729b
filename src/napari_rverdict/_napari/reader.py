"""NIfTI reader: a 4D DWI → one image layer (volume, z, y, x); a 3D integer volume → labels; a 3D float → image.

nibabel stores voxels as (x, y, z[, n]); napari shows the last two axes as rows and columns, so the data is
transposed to (n, z, y, x). ``scale`` comes from the voxel size (mm) and ``translate`` from the affine's origin,
so every layer read here (and every map computed from it) lines up. The affine, the NIfTI header, the source path
and the acquisition protocol (from a ``.scheme`` / ``.bval`` sidecar next to the file, when there is one) are kept
in the layer's ``metadata``; the writer and the Maps dock use them.
"""

from __future__ import annotations

import warnings

import numpy as np

from napari_rverdict.data.label_files import AFFINE_ATOL
from napari_rverdict.data.nifti import is_nifti_name, nifti_stem


def _single_path(path):
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return str(path)


def napari_get_reader(path):
    """The reader function when ``path`` is a 3D or 4D NIfTI this plugin understands, else None (never raises)."""
    path = _single_path(path)
    if path is None or not is_nifti_name(path):
        return None
    try:
        import nibabel as nib

        img = nib.load(path)
        ndim = len(img.shape)
    except Exception:  # noqa: BLE001 - not ours: let another reader try
        return None
    if ndim == 4 or ndim == 3 or (ndim == 5 and img.shape[3] == 1):
        return read_nifti
    return None


def spatial_scale_translate(affine, zooms) -> tuple[tuple, tuple]:
    """(z, y, x) scale from voxel sizes (mm) and translate from the affine's origin, in napari axis order."""
    zooms = [float(z) if z and np.isfinite(z) and z > 0 else 1.0 for z in list(zooms)[:3]]
    origin = np.asarray(affine, dtype=float)[:3, 3]
    return tuple(zooms[::-1]), tuple(float(v) for v in origin[::-1])


# ---------------------------------------------------------------------- the one NIfTI <-> layer conversion
def xyz_to_layer(data) -> np.ndarray:
    """nibabel (x, y, z[, n]) → napari ([n,] z, y, x) (a transposed view)."""
    data = np.asarray(data)
    if data.ndim == 4:
        return data.transpose(3, 2, 1, 0)
    if data.ndim == 3:
        return data.transpose(2, 1, 0)
    raise ValueError(f"expected a 3D or 4D NIfTI array, got {data.ndim}D shape {data.shape}")


def layer_to_xyz(data) -> np.ndarray:
    """napari ([n,] z, y, x) → nibabel (x, y, z[, n]); a 2D (y, x) layer becomes (x, y, 1)."""
    data = np.asarray(data)
    if data.ndim in (3, 4):
        return xyz_to_layer(data)  # the transposition is its own inverse
    if data.ndim == 2:
        return data.T[:, :, None]
    raise ValueError(f"cannot write a {data.ndim}D layer as NIfTI (2D, 3D or 4D expected)")


def on_dwi_grid(layer, spatial: tuple, what: str, affine=None):
    """A 3D layer's data as (x, y, z), refused unless it has the DWI's spatial shape and, when both the DWI's
    ``affine`` and the layer's own (``metadata['affine']``, a file's) are known, the same voxel-to-world transform:
    a mask or labels file of the same shape on another grid (flipped, shifted, other voxel order) would otherwise
    put the maps and ROI statistics on the wrong voxels, as :func:`~napari_rverdict.data.nifti.load_mask` refuses
    it. None when no layer."""
    if layer is None:
        return None
    data = layer_to_xyz(np.asarray(layer.data))
    if data.shape != spatial:
        raise ValueError(f"The {what} layer '{layer.name}' has shape {data.shape[::-1]} (z, y, x) but the "
                         f"DWI's is {spatial[::-1]}.")
    own = (getattr(layer, "metadata", None) or {}).get("affine")
    if affine is not None and own is not None:
        own, affine = np.asarray(own, dtype=float), np.asarray(affine, dtype=float)
        if own.shape == affine.shape == (4, 4) and not np.allclose(own, affine, atol=AFFINE_ATOL):
            raise ValueError(f"The {what} layer '{layer.name}' is on another grid than the DWI (same shape, but "
                             f"its voxel-to-world affine {np.round(own[:3], 2).tolist()} differs from the DWI's "
                             f"{np.round(affine[:3], 2).tolist()}): its voxels are not the DWI's. Resample it onto "
                             "the DWI first.")
    return data


def layer_protocol(layer):
    """The Protocol a DWI layer carries in ``metadata['protocol']`` (a Protocol or its dict), or None."""
    meta = getattr(layer, "metadata", None) or {}
    p = meta.get("protocol")
    if p is None:
        return None
    if isinstance(p, dict):
        from napari_rverdict.physics.protocol import Protocol

        return Protocol.from_dict(p)
    return p


def map_spec_for(name: str, model=None):
    """The MapSpec of map ``name`` (of ``model`` when given, else of rVERDICT or classic VERDICT; ``fit_nrmse`` for
    any model), or None."""
    from napari_rverdict.physics.models import FIT_NRMSE, find_map_spec, get_model

    models = [get_model(model)] if model is not None else [get_model("rverdict"), get_model("verdict")]
    for m in models:
        if name in m.map_names:
            return m.map_spec(name)
    return find_map_spec(name) if name == FIT_NRMSE else None


# Maps whose values are unreadable in their SI-like unit are shown scaled in layers and dock tables (files keep the
# true unit): cellularity f_ic / R³ ≈ 3×10⁻⁴ µm⁻³ is shown as 0.3 [10⁻³ µm⁻³] (= 0.3 × 10⁶ cells / mm³).
DISPLAY_SCALE = {"cellularity": (1e3, "10⁻³ µm⁻³")}


def display_factor(name: str) -> float:
    """The factor map ``name`` (or ``name_sd``) is multiplied by for display (1 for most maps)."""
    base = name[:-3] if name.endswith("_sd") else name
    return DISPLAY_SCALE.get(base, (1.0, ""))[0]


# fit_nrmse (every method's fit quality) is an RMSE on the model's normalised signal: a fraction of the
# normalisation's reference (each series' b = 0 for classic VERDICT, the voxel's brightest measurement for rVERDICT)
FIT_UNIT = "fraction of signal"


def map_unit_text(spec) -> str:
    """The unit a map is shown in: 'µm' for R, 'fraction' for the unit-less volume fractions, '10⁻³ µm⁻³' for
    cellularity (:data:`DISPLAY_SCALE`), 'fraction of signal' for the fit quality, '' when a map has no unit."""
    if spec.name == "fit_nrmse":  # physics.models.FIT_NRMSE (not imported here: the reader stays light)
        return FIT_UNIT
    if spec.name in DISPLAY_SCALE:
        return DISPLAY_SCALE[spec.name][1]
    if spec.unit:
        return spec.unit
    return "fraction" if spec.name.startswith("f_") else ""


def map_layer_name(spec, prefix: str = "", suffix: str = "") -> str:
    """A map layer's name with its unit: 'f_ic [fraction]', 'R [µm]', 'NLLS R [µm]', 'R sd [µm]'."""
    unit = map_unit_text(spec)
    name = f"{prefix}{spec.name}{suffix}"
    return f"{name} [{unit}]" if unit else name


def _map_display(stem: str):
    """The MapSpec when ``stem`` names a VERDICT map (e.g. truth/R.nii.gz), else None."""
    return map_spec_for(stem)


def dwi_layer_data(data_xyzn, affine, header=None, protocol=None, name="dwi", extra_meta=None) -> tuple:
    """Layer data tuple of a DWI: (n, z, y, x) float32, scale/translate from the affine, metadata for the docks."""
    affine = np.asarray(affine, dtype=float)
    zooms = header.get_zooms()[:3] if header is not None else np.sqrt((affine[:3, :3] ** 2).sum(0))
    scale, translate = spatial_scale_translate(affine, zooms)
    layer = np.ascontiguousarray(xyz_to_layer(np.asarray(data_xyzn, dtype=np.float32)))
    finite = layer[np.isfinite(layer)]
    hi = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    metadata = {"affine": affine, "nifti_header": header, "axes": "nzyx", "protocol": protocol,
                "voxel_size_mm": tuple(float(z) for z in zooms)}
    metadata.update(extra_meta or {})
    kwargs = {"name": name, "metadata": metadata, "scale": (1.0, *scale), "translate": (0.0, *translate),
              "colormap": "gray", "contrast_limits": (0.0, hi if hi > 0 else 1.0)}
    return (layer, kwargs, "image")


def volume_layer_data(data_xyz, affine, header=None, name="volume", extra_meta=None) -> tuple:
    """Layer data tuple of a 3D volume: integers → labels, floats → image (a VERDICT map gets unit, colormap
    and contrast limits from its MapSpec when ``name`` is a map name such as ``R``)."""
    affine = np.asarray(affine, dtype=float)
    zooms = header.get_zooms()[:3] if header is not None else np.sqrt((affine[:3, :3] ** 2).sum(0))
    scale, translate = spatial_scale_translate(affine, zooms)
    metadata = {"affine": affine, "nifti_header": header, "axes": "zyx",
                "voxel_size_mm": tuple(float(z) for z in zooms)}
    metadata.update(extra_meta or {})
    layer = np.ascontiguousarray(xyz_to_layer(data_xyz))
    kwargs = {"name": name, "metadata": metadata, "scale": scale, "translate": translate}
    if np.issubdtype(layer.dtype, np.integer) or layer.dtype == bool:
        return (layer.astype(np.int32, copy=False), kwargs, "labels")
    layer = layer.astype(np.float32, copy=False)
    spec = _map_display(name)
    if spec is not None:
        factor = display_factor(spec.name)
        if factor != 1.0:
            layer = layer * np.float32(factor)
        kwargs.update(name=map_layer_name(spec), colormap=spec.colormap,
                      contrast_limits=tuple(float(v) * factor for v in spec.display))
        metadata.update(map_name=spec.name, unit=spec.unit, display_factor=factor)
    return (layer, kwargs, "image")


def read_nifti(path) -> list[tuple]:
    """Read one NIfTI file into napari layer data tuples (a DWI through :func:`napari_rverdict.data.dwi.load_dwi`)."""
    import nibabel as nib

    path = _single_path(path)
    name = nifti_stem(path)
    img = nib.load(path)
    shape = img.shape
    source = {"source_path": str(path)}
    if len(shape) == 4 or (len(shape) == 5 and shape[3] == 1):
        from napari_rverdict.data.dwi import load_dwi

        try:
            with warnings.catch_warnings(record=True) as caught:  # e.g. a JSON and a .te that disagree on TE
                warnings.simplefilter("always")
                dwi = load_dwi(path)
            for w in caught:  # still warned (command line, log), and kept for the Maps dock to show
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            return [dwi_layer_data(dwi.data, dwi.affine, dwi.header, dwi.protocol, name,
                                   dict(source, protocol_notes=list(dwi.notes),
                                        protocol_warnings=[str(w.message) for w in caught]))]
        except ValueError as exc:  # no sidecar, or one that does not fit: open the image without a protocol
            data = np.asanyarray(img.dataobj)
            if data.ndim == 5:
                data = data[:, :, :, 0, :]
            return [dwi_layer_data(data, img.affine, img.header.copy(), None, name,
                                   dict(source, protocol_problem=str(exc)))]
    data = np.asanyarray(img.dataobj)
    return [volume_layer_data(data, img.affine, img.header.copy(), name, source)]
