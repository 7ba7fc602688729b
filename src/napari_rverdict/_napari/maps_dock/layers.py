"""Map layers in the viewer: network maps (and their sd), NLLS maps, self-supervised maps, and each method's fit
quality (``fit_nrmse``: hidden, grey, limits from 0), on the DWI layer's spatial scale and translate so map, DWI
slice and lesion contours line up.

Each map keeps NaN outside the mask (napari draws NaN transparent, so the DWI shows around the gland), gets
contrast limits from the robust range of its finite values (:func:`auto_limits`) and is shown in its display unit
(:func:`~napari_rverdict._napari.reader.display_factor`: cellularity in 10⁻³ µm⁻³). A new Compute replaces the
layers the previous one made from the same DWI (:func:`remove_stale`), never another DWI's: the maps of a second
DWI are named after it (:func:`layer_name_for`, e.g. ``f_ic [fraction] (second DWI)``). The shown map gets
napari's colorbar and is the selected layer.
"""

from __future__ import annotations

import napari
import numpy as np

from napari_rverdict._napari.reader import display_factor, layer_to_xyz, map_layer_name, map_spec_for
from napari_rverdict._napari.state import _unwrap
from napari_rverdict.physics.models import FIT_NRMSE

SD_SUFFIX = "_sd"
METHOD_PREFIX = {"network": "", "NLLS": "NLLS ", "self-supervised": "self-supervised "}  # layer name prefixes
def fit_limits(data) -> tuple[float, float]:
    """Contrast limits of a fit_nrmse layer: from 0 (a perfect fit, black) to the 98th percentile, so the voxels
    the model does not describe stand out bright."""
    hi = auto_limits(data)[1]
    return (0.0, hi if hi > 0 else 1.0)


def auto_limits(data, low: float = 2.0, high: float = 98.0) -> tuple[float, float]:
    """Contrast limits from robust percentiles (``low``, ``high``) of the finite values only: NaN (outside the
    mask, left-out voxels) and inf never count. (0, 1) when nothing is finite."""
    arr = np.asarray(data, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(finite, [low, high]))
    if not hi > lo:
        hi = lo + (abs(lo) * 0.01 if lo else 1.0)
    return (lo, hi)


def shown(name: str, data_xyz) -> np.ndarray:
    """A map (x, y, z) as layer data: (z, y, x) float32 in the map's display unit, NaN kept."""
    arr = np.asarray(layer_to_xyz(data_xyz), dtype=np.float32)
    factor = display_factor(name)
    return np.ascontiguousarray(arr * np.float32(factor) if factor != 1.0 else arr)


def raise_to_top(viewer, layer) -> None:
    layers = viewer.layers
    idx = list(layers).index(layer)
    if idx != len(layers) - 1:
        layers.move(idx, len(layers))


def _is_map(layer, source=None) -> bool:
    """``layer`` is a map layer (of DWI ``source``, when given)."""
    meta = layer.metadata or {}
    return isinstance(layer, napari.layers.Image) and bool(meta.get("rverdict_map")) and \
        (source is None or meta.get("source_layer") == source)


def layer_name_for(viewer, name: str, source: str) -> str:
    """The layer name of map ``name`` of DWI ``source``: ``name`` itself, unless a map of another DWI has it;
    then ``name (source)``, so maps of two DWIs live side by side."""
    layers = viewer.layers
    if name in layers and _is_map(layers[name]) and not _is_map(layers[name], source):
        return f"{name} ({source})"
    return name


def put_layer(viewer, name: str, data_zyx, kwargs: dict):
    """Replace the data of an earlier map layer of the same name made from the same DWI
    (``kwargs["metadata"]["source_layer"]``), or add a new layer (named after its DWI when another DWI's map
    has ``name``). Returns the layer."""
    layers = viewer.layers
    source = kwargs["metadata"]["source_layer"]
    name = layer_name_for(viewer, name, source)
    if name in layers and _is_map(layers[name], source):
        layer = layers[name]
        if layer.data.shape == data_zyx.shape:
            layer.data = data_zyx
            layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]
            layer.metadata.update(kwargs["metadata"])
            layer.contrast_limits = kwargs["contrast_limits"]
            layer.visible = kwargs.get("visible", True)
            return layer
        layers.remove(layer)
    return viewer.add_image(data_zyx, name=name, **kwargs)


def remove_stale(viewer, source_name: str, keep) -> None:
    """Remove the map layers an earlier Compute made from DWI ``source_name`` that this run did not remake."""
    keep = {id(_unwrap(layer)) for layer in keep}  # the docks see layers through napari's proxies
    for layer in list(viewer.layers):
        meta = layer.metadata or {}
        if meta.get("rverdict_map") and meta.get("source_layer") == source_name and id(_unwrap(layer)) not in keep:
            viewer.layers.remove(layer)


def follow_renamed_sources(viewer, renamed: dict) -> None:
    """A DWI layer was renamed ({old: new name}): its map layers say the new name as their source, so a new
    Compute of it still replaces them (and the Explore dock still finds them), and those named after it
    (``f_ic [fraction] (old)``, :func:`layer_name_for`) take its new name, unless a layer already has that name."""
    for layer in list(viewer.layers):
        meta = layer.metadata or {}
        old = meta.get("source_layer")
        if not (meta.get("rverdict_map") and old in renamed):
            continue
        meta["source_layer"] = renamed[old]
        tail = f" ({old})"
        if layer.name.endswith(tail):
            name = f"{layer.name[:-len(tail)]} ({renamed[old]})"
            if name not in viewer.layers:
                layer.name = name


def add_map_layers(viewer, results: dict, model, dwi_layer, affine) -> dict:
    """Put every method's maps into the viewer (``results``: {method: {map name: (x, y, z)}}; the first map of
    the first method visible with its colorbar, the rest hidden) and remove what an earlier run left; returns
    {method: {map name: layer}}."""
    place = dict(scale=tuple(float(s) for s in dwi_layer.scale[-3:]),
                 translate=tuple(float(t) for t in dwi_layer.translate[-3:]))
    out: dict = {}
    first = True
    for method, maps in results.items():
        if maps is None:
            continue
        out[method] = {}
        ordered = [k for k in model.map_names if k in maps] + \
            [k for k in maps if k not in model.map_names and not k.endswith(SD_SUFFIX)]
        for name in ordered:
            out[method].update(_add_map(viewer, maps, name, model, method, dwi_layer, affine, place, first))
            first = False
    remove_stale(viewer, dwi_layer.name, [lay for layers in out.values() for lay in layers.values()])
    return out


def _add_map(viewer, maps: dict, name: str, model, method: str, dwi_layer, affine, place: dict,
             visible: bool) -> dict:
    """One map layer, and its sd layer when the maps have one."""
    spec = map_spec_for(name, model.name)
    data = shown(name, maps[name])
    meta = {"affine": affine, "map_name": name, "unit": spec.unit if spec else "", "rverdict_map": True,
            "display": tuple(spec.display) if spec else None, "source_layer": dwi_layer.name, "method": method,
            "display_factor": display_factor(name), "description": spec.description if spec else ""}
    prefix = METHOD_PREFIX.get(method, f"{method} ")
    lname = map_layer_name(spec, prefix=prefix) if spec else prefix + name
    visible = visible and name != FIT_NRMSE  # the fit quality is never the map shown first
    kwargs = dict(place, metadata=meta, visible=visible, opacity=0.9, colormap=spec.colormap if spec else "viridis",
                  contrast_limits=fit_limits(data) if name == FIT_NRMSE else auto_limits(data))
    layer = put_layer(viewer, lname, data, kwargs)
    layer.colorbar.visible = visible
    out = {name: layer}
    sd_key = name + SD_SUFFIX
    if sd_key in maps:
        sd = shown(sd_key, maps[sd_key])
        sd_meta = dict(meta, map_name=sd_key, display=None)
        sd_name = map_layer_name(spec, prefix=prefix, suffix=" sd") if spec else prefix + sd_key
        sd_kwargs = dict(kwargs, metadata=sd_meta, visible=False, colormap="gray", contrast_limits=auto_limits(sd))
        out[sd_key] = put_layer(viewer, sd_name, sd, sd_kwargs)
        out[sd_key].colorbar.visible = False
    return out


def follow_colorbar(viewer) -> None:
    """Keep napari's colorbar on the selected map layer only (connected once per viewer by the Maps dock)."""
    active = _unwrap(viewer.layers.selection.active)
    if not (active is not None and (active.metadata or {}).get("rverdict_map")):
        return
    for layer in viewer.layers:
        if (layer.metadata or {}).get("rverdict_map"):
            layer.colorbar.visible = _unwrap(layer) is active and layer.visible


def show_labels_as_contours(layer) -> None:
    """Lesion labels as thin outlines over the maps, in pan / zoom mode (no paint tool)."""
    layer.contour = 1
    layer.opacity = 1.0
    layer.visible = True
    try:
        layer.mode = "pan_zoom"
    except (ValueError, AttributeError):
        pass
