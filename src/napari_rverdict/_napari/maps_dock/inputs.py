"""The Maps dock's inputs, read and checked on the GUI thread: the DWI layer's protocol (its own, the INNOVATE
preset, or a file), the model's b-values, mask and labels on the DWI's grid. Every problem is a ValueError whose
message the dock shows."""

from __future__ import annotations

import numpy as np

from napari_rverdict._napari.maps_dock.job import NEEDS_BUNDLE, SELF_SUPERVISED, layer_affine
from napari_rverdict._napari.reader import layer_protocol, layer_to_xyz, on_dwi_grid


def chosen_protocol(dock, layer):
    """The chosen protocol of the DWI ``layer`` (its own, the preset that has its volume count, or the file's);
    ValueError saying why there is none (the reader's stored reason when the sidecar did not fit)."""
    from napari_rverdict.physics.protocol_files import innovate_preset_for, load_protocol

    kind = (dock.protocol_combo.currentData() or ("layer", None))[0]
    n_vol = int(layer.data.shape[0])
    if kind == "preset":
        preset = innovate_preset_for(n_vol)
        if preset is not None:
            return load_protocol(preset)
        raise ValueError(f"The INNOVATE preset has 20 volumes (or 10 direction-averaged); '{layer.name}' has "
                         f"{n_vol}.")
    if kind == "file":
        prot = dock._file_protocol[1]
    else:
        prot = layer_protocol(layer)
        if prot is None:
            problem = (layer.metadata or {}).get("protocol_problem")
            raise ValueError(f"'{layer.name}' has no protocol: " + (problem or "no .bval / .scheme beside the "
                             "file") + ". Choose the preset or a protocol file.")
    if len(prot) != n_vol:
        raise ValueError(f"'{layer.name}' has {n_vol} volumes but the protocol has {len(prot)} measurements.")
    return prot


def model_differences(dock, protocol) -> list[str]:
    """What differs between the DWI's ``protocol`` and the current model's, as the maps will be computed (matched by
    settings, :meth:`~napari_rverdict.physics.protocol.Protocol.match_to`: reordered volumes, b = 2006 where 2000 is
    expected, …); [] without a model, for self-supervised, or when they cannot be matched (Compute maps says why)."""
    from napari_rverdict.physics.protocol import averages_directions

    bundle = dock.session.bundle
    if bundle is None or dock.method_combo.currentText() not in NEEDS_BUNDLE:
        return []
    reference = bundle.protocol
    prot = protocol.direction_averaged() if averages_directions(protocol, reference) else protocol
    try:
        _, diffs = prot.match_to(reference, use_tr=bundle.model.requires_tr)
    except ValueError:
        return []
    return list(diffs)


def check_inputs(dock) -> dict:
    """Everything the worker needs, checked on the GUI thread; raises ValueError with a message for the user."""
    from napari_rverdict.data.dwi import Dwi
    from napari_rverdict.maps.self_supervised import MIN_VOXELS
    from napari_rverdict.maps.voxels import check_b_values
    from napari_rverdict.physics.models import get_model

    layer = dock.dwi_combo.layer()
    if layer is None:
        raise ValueError("No DWI layer: open a 4D diffusion NIfTI (File ▸ Open) or the sample phantom "
                         "(File ▸ Open Sample ▸ napari-rverdict).")
    method = dock.method_combo.currentText()
    bundle = dock.session.bundle if method in NEEDS_BUNDLE else None
    if method in NEEDS_BUNDLE and bundle is None:
        raise ValueError("No model: train one in the Train dock, or Load… a saved bundle (or choose the "
                         "self-supervised method, which needs none).")
    model = get_model(bundle.model.name if bundle is not None else dock.ss_model_combo.currentData())
    protocol = chosen_protocol(dock, layer)
    try:
        model.check_protocol(protocol)
        if bundle is not None:
            check_b_values(protocol.direction_averaged() if len(protocol.shells()) < len(protocol) else protocol,
                           bundle.protocol)
    except ValueError as exc:
        raise ValueError(f"The model cannot use this DWI: {exc}") from None
    data = layer_to_xyz(np.asarray(layer.data, dtype=np.float32))
    spatial = data.shape[:3]
    affine = layer_affine(layer)
    dwi = Dwi.from_array(data, affine, protocol)
    own_affine = (layer.metadata or {}).get("affine")  # the DWI file's grid: a mask or labels file must share it
    mask_layer = dock.mask_combo.layer()
    mask = on_dwi_grid(mask_layer, spatial, "mask", own_affine)
    if mask is not None:
        mask = np.nan_to_num(mask.astype(np.float64)) != 0
        if not mask.any():
            raise ValueError(f"The mask layer '{mask_layer.name}' is empty.")
        if method == SELF_SUPERVISED and mask.sum() < MIN_VOXELS:
            raise ValueError(f"The mask layer '{mask_layer.name}' has {int(mask.sum())} voxels; self-supervised "
                             f"fitting learns from the voxels it maps and needs at least {MIN_VOXELS} (use NLLS "
                             "for so few).")
    labels_layer = dock.labels_combo.layer()
    labels = on_dwi_grid(labels_layer, spatial, "labels", own_affine)
    uncertainty = dock.uncertainty_check.isChecked() and dock.uncertainty_check.isEnabled()
    return dict(layer=layer, bundle=bundle, model=model, dwi=dwi, mask=mask, labels=labels,
                differences=model_differences(dock, protocol),
                labels_layer=labels_layer, affine=affine, device=dock.device_combo.currentText(),
                uncertainty=uncertainty and method in NEEDS_BUNDLE, method=method,
                epochs=int(dock.epochs_spin.value()))

