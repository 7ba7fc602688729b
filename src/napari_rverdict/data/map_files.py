"""Parameter map files: 3D float32 NIfTI maps written with the DWI's affine, and read back.

* :func:`save_map` / :func:`save_maps` write 3D float32 maps with the DWI's affine; the header ``descrip`` names
  the map and its unit (ASCII, ≤ 80 bytes) so that :func:`load_maps` and other viewers can read them back.

No napari or Qt here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_rverdict.data.nifti import (
    _nib,
    _read_voxels,
    ascii_unit,
    check_affine,
    is_nifti_name,
    nifti_stem,
    scanner_image,
)
from napari_rverdict.errors import InputError
from napari_rverdict.files import FileSet, check_name, check_output_files, writing

DESCRIP_PREFIX = "napari-rverdict map"


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
    img = scanner_image(array, affine)
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
    ``prefix``. ``with_units=True`` returns ``(maps, units)``. Raises InputError when nothing is found or the
    maps' shapes differ.
    """
    nib = _nib()
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"not a directory of maps: {directory}")
    files = sorted(p for p in directory.iterdir() if is_nifti_name(p) and p.name.startswith(prefix))
    ours, other = {}, {}
    for p in files:
        img = nib.load(str(p))
        if len(img.shape) != 3:
            continue
        parsed = parse_descrip(img.header["descrip"].tobytes())
        key_name = nifti_stem(p)[len(prefix):]
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


__all__ = ["load_maps", "map_descrip", "parse_descrip", "save_map", "save_maps"]
