"""The Maps dock's worker and the helpers that read layers for it (no widgets)."""

from __future__ import annotations

import numpy as np

from napari_rverdict._napari._common import JobStopped, stoppable
from napari_rverdict._napari.reader import layer_to_xyz


def layer_affine(layer) -> np.ndarray:
    """The NIfTI affine of a layer: ``metadata['affine']``, else one built from its spatial scale / translate."""
    from napari_rverdict._napari.writer import affine_from_meta

    return affine_from_meta({"metadata": layer.metadata, "scale": list(layer.scale),
                             "translate": list(layer.translate)})


def on_dwi_grid(layer, spatial: tuple, what: str):
    """A 3D layer's data as (x, y, z), refused unless it has the DWI's spatial shape; None when no layer."""
    if layer is None:
        return None
    data = layer_to_xyz(np.asarray(layer.data))
    if data.shape != spatial:
        raise ValueError(f"The {what} layer '{layer.name}' has shape {data.shape[::-1]} (z, y, x) but the "
                         f"DWI's is {spatial[::-1]}.")
    return data


# The methods the Maps dock lists (name → tooltip). A new method adds an entry here and a branch in compute_job;
# its maps become layers named "<method> <map> [unit]" (METHOD_PREFIX in layers.py) and rows of the ROI table.
METHODS = {
    "network": "the current model's network: maps in seconds",
    "NLLS": "the network's maps, then a non-linear least-squares fit started from them (the reference; slow on "
            "large masks) and a network-vs-NLLS table",
}


def compute_job(bundle, dwi, mask, device, uncertainty, method, progress, stop_event=None):
    """The worker: the maps of ``method`` ({method: {map: (x, y, z)}}); reports ``progress((stage, done, total))``.
    No layers here.

    Setting ``stop_event`` (a :class:`threading.Event`) stops the run at the network's next chunk or inside the
    NLLS fit (``fit_volume(stop_event=...)`` raises ``FitCancelled``); the result is then
    ``{"stopped": True, "results": {}}``, never an error.
    """
    from napari_rverdict.maps.nlls import FitCancelled, fit_volume
    from napari_rverdict.maps.predict import predict_volume

    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; choose one of: {', '.join(METHODS)}")
    out = {"results": {}, "stopped": False}
    if stop_event is not None:
        progress = stoppable(progress, stop_event)
    try:
        out["results"]["network"] = predict_volume(bundle, dwi, mask=mask, uncertainty=uncertainty, device=device,
                                                   progress=lambda d, t: progress(("network", d, t)))
        if method == "NLLS":
            out["results"]["NLLS"] = fit_volume(bundle.model, dwi, protocol=None, mask=mask, device=device,
                                                init=bundle, progress=lambda d, t: progress(("NLLS", d, t)),
                                                stop_event=stop_event)
    except (JobStopped, FitCancelled):
        out.update(results={}, stopped=True)
    return out
