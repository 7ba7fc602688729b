"""Sample data: the digital prostate phantom (20-volume INNOVATE DWI, lesion labels, gland mask, ground truth).

The shipped files in ``sample_data/phantom`` are read with the plugin's own reader (so the layers are exactly
what File ▸ Open gives); without them (an installed wheel) the same phantom is simulated in memory. The DWI layer
names the shipped pretrained bundle (``sample_data/pretrained/``, made by ``scripts/make_pretrained_bundle.py``) in
``metadata['pretrained_bundle']``: the docks load it as the current model when there is none, so *Compute maps*
works at once. Ground-truth maps are NaN (transparent) outside the gland, like computed maps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_rverdict._napari.reader import dwi_layer_data, volume_layer_data


def _label_names(directory) -> dict:
    from napari_rverdict.data.phantom import LABEL_NAMES, label_names_beside

    names = label_names_beside(directory / "labels.nii.gz") if directory is not None else None
    return names or dict(LABEL_NAMES)


PRETRAINED_NAME = "innovate_rverdict_mlp.pt"


def pretrained_bundle_path(directory=None) -> Path | None:
    """The shipped pretrained bundle (``<repo>/sample_data/pretrained/innovate_rverdict_mlp.pt``), or None."""
    from napari_rverdict.data.phantom import sample_data_dir

    directory = sample_data_dir() if directory is None else directory
    if directory is None:
        return None
    path = Path(directory).parent / "pretrained" / PRETRAINED_NAME
    return path if path.is_file() else None


def _labels_kwargs(kwargs: dict, names: dict) -> dict:
    kwargs = dict(kwargs)
    kwargs["metadata"] = dict(kwargs["metadata"], label_names=names)
    kwargs["name"] = "lesion labels"
    kwargs["opacity"] = 0.6  # napari cannot take ``contour`` here: the Maps dock (and launch) draw contours
    return kwargs


def _phantom_layers(with_extras: bool = True) -> list[tuple]:
    from napari_rverdict.data.phantom import make_phantom, sample_data_dir

    directory = sample_data_dir()
    names = _label_names(directory)
    if directory is not None:
        from napari_rverdict._napari.reader import read_nifti

        dwi = read_nifti(str(directory / "dwi.nii.gz"))[0]
        labels = read_nifti(str(directory / "labels.nii.gz"))[0]
        mask = read_nifti(str(directory / "mask.nii.gz"))[0]
        truth = [read_nifti(str(p))[0] for p in sorted((directory / "truth").glob("*.nii.gz"))]
    else:
        ph = make_phantom()
        dwi = dwi_layer_data(ph.dwi, ph.affine, None, ph.protocol, "dwi", {"source_path": "phantom (in memory)"})
        labels = volume_layer_data(ph.labels.astype(np.int32), ph.affine, None, "labels")
        mask = volume_layer_data(ph.mask.astype(np.int32), ph.affine, None, "mask")
        truth = [volume_layer_data(v, ph.affine, None, k) for k, v in ph.truth.items()]
    bundle = pretrained_bundle_path(directory)
    meta = dict(dwi[1]["metadata"], pretrained_bundle=str(bundle) if bundle is not None else None)
    dwi = (dwi[0], dict(dwi[1], name="phantom DWI", metadata=meta), dwi[2])
    if not with_extras:
        return [dwi]
    layers = [dwi]
    outside = np.asarray(mask[0]) == 0
    for data, kwargs, kind in truth:
        if kind != "image":
            continue
        data = np.where(outside, np.float32(np.nan), data).astype(np.float32)  # transparent outside the gland
        kwargs = dict(kwargs, name=f"truth {kwargs['name']}", visible=False)
        layers.append((data, kwargs, kind))
    mask = (mask[0], dict(mask[1], name="gland mask", visible=False, opacity=0.3), mask[2])
    layers.append(mask)
    layers.append((labels[0], _labels_kwargs(labels[1], names), labels[2]))
    return layers


def prostate_phantom() -> list[tuple]:
    """The phantom DWI, its ground-truth maps (hidden), the gland mask (hidden) and the lesion labels (contours)."""
    return _phantom_layers(with_extras=True)


def prostate_phantom_dwi() -> list[tuple]:
    """Only the phantom DWI (20 volumes; the protocol is in the layer's metadata)."""
    return _phantom_layers(with_extras=False)
