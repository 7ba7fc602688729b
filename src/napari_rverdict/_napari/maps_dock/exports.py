"""The Maps dock's files: maps as NIfTI (true units, the DWI's affine, named after the DWI; all or none) and the
ROI statistics as CSV."""

from __future__ import annotations

from pathlib import Path

from napari_rverdict._napari.maps_dock.layers import SD_SUFFIX
from napari_rverdict._napari.reader import map_spec_for
from napari_rverdict._napari.writer import safe_name


def prefix(dock) -> str:
    """'<DWI layer name>_' of the last run ('' when unknown)."""
    return f"{safe_name(dock._run['layer'].name)}_" if dock._run else ""


def planned(dock, directory) -> list[Path]:
    """The files :func:`write_maps` would write."""
    pre, d = prefix(dock), Path(directory)
    names = list(dock.maps or {}) + [f"nlls_{k}" for k in (dock.nlls_maps or {})]
    return [d / f"{pre}{k}.nii.gz" for k in names]


def existing(dock, directory) -> list[Path]:
    return [p for p in planned(dock, directory) if p.exists()]


def write_maps(dock, directory) -> list[Path]:
    """Every network map (and sd map, with its map's unit) and NLLS map, as one FileSet: all written or none."""
    from napari_rverdict.data.nifti import save_map, save_maps
    from napari_rverdict.files import FileSet

    model = dock._run["bundle"].model.name if dock._run else None
    pre = prefix(dock)
    with FileSet() as files:
        plain = {k: v for k, v in dock.maps.items() if not k.endswith(SD_SUFFIX)}
        written = save_maps(plain, directory, dock.affine, model=model, prefix=pre, fileset=files)
        for key in (k for k in dock.maps if k.endswith(SD_SUFFIX)):
            spec = map_spec_for(key[: -len(SD_SUFFIX)], model)
            written.append(save_map(dock.maps[key], Path(directory) / f"{pre}{key}.nii.gz", dock.affine, key,
                                    spec.unit if spec else "", fileset=files))
        if dock.nlls_maps is not None:
            written += save_maps(dock.nlls_maps, directory, dock.affine, model=model, prefix=f"{pre}nlls_",
                                 fileset=files)
    return written


def write_csv(roi_table, comparison, path) -> Path:
    """The ROI statistics (long format, true units) and, with NLLS, ``<stem>_vs_nlls.csv`` beside it."""
    path = Path(path)
    roi_table.to_csv(path)
    if comparison is not None:
        comparison.to_csv(path.with_name(path.stem + "_vs_nlls.csv"))
    return path
