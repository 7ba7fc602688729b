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


# the file-name prefix of each method's maps (after '<DWI>_'); the network's keep the plain names
FILE_PREFIX = {"network": "", "NLLS": "nlls_", "self-supervised": "selfsup_"}


def _methods(dock):
    """(file prefix, maps) of every method of the last run."""
    return [(FILE_PREFIX.get(m, f"{m}_"), maps) for m, maps in dock.results.items() if maps is not None]


def planned(dock, directory) -> list[Path]:
    """The files :func:`write_maps` would write."""
    pre, d = prefix(dock), Path(directory)
    return [d / f"{pre}{p}{k}.nii.gz" for p, maps in _methods(dock) for k in maps]


def existing(dock, directory) -> list[Path]:
    return [p for p in planned(dock, directory) if p.exists()]


def write_maps(dock, directory, *, overwrite: bool = False) -> list[Path]:
    """Every method's maps (network: also the sd maps, with their map's unit; every method: ``fit_nrmse``) as
    one FileSet: all written or none; existing files (:func:`existing`) only with ``overwrite`` (the dock asks
    first)."""
    from napari_rverdict.data.map_files import save_map, save_maps
    from napari_rverdict.files import FileSet

    model = dock._run["model"].name if dock._run else None
    pre = prefix(dock)
    written: list[Path] = []
    with FileSet() as files:
        for method_prefix, maps in _methods(dock):
            plain = {k: v for k, v in maps.items() if not k.endswith(SD_SUFFIX)}
            written += save_maps(plain, directory, dock.affine, model=model, prefix=pre + method_prefix,
                                 overwrite=overwrite, fileset=files)
            for key in (k for k in maps if k.endswith(SD_SUFFIX)):
                spec = map_spec_for(key[: -len(SD_SUFFIX)], model)
                written.append(save_map(maps[key], Path(directory) / f"{pre}{method_prefix}{key}.nii.gz",
                                        dock.affine, key, spec.unit if spec else "", overwrite=overwrite,
                                        fileset=files))
    return written


def csv_files(comparison, path) -> list[Path]:
    """The files :func:`write_csv` writes: ``path`` and, with NLLS, ``<stem>_vs_nlls.csv`` beside it."""
    path = Path(path)
    return [path] + ([] if comparison is None else [path.with_name(path.stem + "_vs_nlls.csv")])


def write_csv(roi_table, comparison, path, *, overwrite: bool = False) -> Path:
    """The ROI statistics (long format, true units) and, with NLLS, ``<stem>_vs_nlls.csv`` beside it; existing
    files only with ``overwrite`` (both checked before either is written)."""
    from napari_rverdict.files import check_output_files

    targets = check_output_files(csv_files(comparison, path), overwrite=overwrite, what="CSV file")
    roi_table.to_csv(targets[0], overwrite=overwrite)
    if comparison is not None:
        comparison.to_csv(targets[1], overwrite=overwrite)
    return targets[0]
