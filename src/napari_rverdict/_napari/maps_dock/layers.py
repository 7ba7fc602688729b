"""Map layers in the viewer: network maps (and their sd), NLLS maps, on the DWI layer's spatial scale and
translate so map, DWI slice and lesion contours line up."""

from __future__ import annotations

import napari
import numpy as np

from napari_rverdict._napari.reader import layer_to_xyz, map_layer_name, map_spec_for

SD_SUFFIX = "_sd"


def auto_limits(data, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """Contrast limits from robust percentiles (``low``, ``high``) of the finite values only: NaN (outside the
    mask, left-out voxels) and inf never count. The lower limit is 0 for non-negative data; (0, 1) when nothing
    is finite."""
    arr = np.asarray(data, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(finite, [low, high]))
    if lo >= 0:
        lo = 0.0
    if not hi > lo:
        hi = lo + (abs(lo) if lo else 1.0)
    return (lo, hi)


def raise_to_top(viewer, layer) -> None:
    layers = viewer.layers
    idx = list(layers).index(layer)
    if idx != len(layers) - 1:
        layers.move(idx, len(layers))


def put_layer(viewer, name: str, data_zyx, kwargs: dict):
    """Replace the data of an earlier map layer of the same name, or add a new layer."""
    layers = viewer.layers
    if name in layers and isinstance(layers[name], napari.layers.Image) and \
            (layers[name].metadata or {}).get("rverdict_map"):
        layer = layers[name]
        if layer.data.shape == data_zyx.shape:
            layer.data = data_zyx
            layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]
            layer.metadata.update(kwargs["metadata"])
            layer.contrast_limits = kwargs["contrast_limits"]
            return layer
        layers.remove(layer)
    return viewer.add_image(data_zyx, name=name, **{k: v for k, v in kwargs.items()})


def add_map_layers(viewer, maps: dict, nlls: dict | None, model, dwi_layer, affine) -> dict:
    """Put every network map (the first one visible, sd maps hidden) and NLLS map (hidden) into the viewer;
    returns {map name: layer} of the network maps and their sd."""
    place = dict(scale=tuple(float(s) for s in dwi_layer.scale[-3:]),
                 translate=tuple(float(t) for t in dwi_layer.translate[-3:]))
    map_layers = {}
    ordered = [k for k in model.map_names if k in maps] + \
        [k for k in maps if k not in model.map_names and not k.endswith(SD_SUFFIX)]
    for i, name in enumerate(ordered):
        map_layers.update(_add_network_map(viewer, maps, name, model, dwi_layer, affine, place, visible=i == 0))
    if nlls is not None:
        for name in [k for k in model.map_names if k in nlls]:
            spec = map_spec_for(name, model.name)
            data = np.ascontiguousarray(layer_to_xyz(nlls[name]))
            meta = {"affine": affine, "map_name": name, "unit": spec.unit, "rverdict_map": True,
                    "display": tuple(spec.display), "source_layer": dwi_layer.name, "method": "NLLS"}
            put_layer(viewer, map_layer_name(spec, prefix="NLLS "), data,
                      dict(place, metadata=meta, visible=False, opacity=0.9, colormap=spec.colormap,
                           contrast_limits=tuple(spec.display)))
    return map_layers


def _add_network_map(viewer, maps: dict, name: str, model, dwi_layer, affine, place: dict, visible: bool) -> dict:
    """One network map layer, and its sd layer when the maps have one."""
    spec = map_spec_for(name, model.name)
    data = np.ascontiguousarray(layer_to_xyz(maps[name]))
    meta = {"affine": affine, "map_name": name, "unit": spec.unit if spec else "", "rverdict_map": True,
            "display": tuple(spec.display) if spec else None, "source_layer": dwi_layer.name}
    lname = map_layer_name(spec) if spec else name
    kwargs = dict(place, metadata=meta, visible=visible, opacity=0.9,
                  colormap=spec.colormap if spec else "viridis",
                  contrast_limits=tuple(spec.display) if spec else auto_limits(data))
    out = {name: put_layer(viewer, lname, data, kwargs)}
    sd_key = name + SD_SUFFIX
    if sd_key in maps:
        sd = np.ascontiguousarray(layer_to_xyz(maps[sd_key]))
        sd_meta = dict(meta, map_name=sd_key, display=None)
        sd_name = map_layer_name(spec, suffix=" sd") if spec else sd_key
        sd_kwargs = dict(kwargs, metadata=sd_meta, visible=False, colormap="gray", contrast_limits=auto_limits(sd))
        out[sd_key] = put_layer(viewer, sd_name, sd, sd_kwargs)
    return out
