"""Viewer conventions the docks set up once per viewer (whichever dock opens first):

* dims axes named ("volume", "z", "y", "x") when a 4D DWI is shown, and a text overlay naming the current
  volume's b (and TE) — napari's slider alone says "3 / 19";
* a new DWI layer opens on its brightest volume (b = 0 at the shortest TE) instead of napari's middle one;
* lesion labels (a labels layer with ``label_names``, as the phantom's) drawn as contours, in pan / zoom mode,
  with the DWI selected rather than the labels (no paint tools in the layer controls);
* a DWI that names a pretrained bundle in ``metadata['pretrained_bundle']`` (the phantom from File ▸ Open Sample)
  makes that bundle the session's model when there is none yet, so *Compute maps* works at once;
* napari's colorbar follows the selected map layer.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import QTimer

from napari_rverdict._napari.maps_dock.layers import follow_colorbar, show_labels_as_contours
from napari_rverdict._napari.reader import layer_protocol
from napari_rverdict._napari.state import _unwrap, get_state

AXES = ("volume", "z", "y", "x")


def install(viewer) -> None:
    """Connect the hooks to ``viewer`` (once; later calls do nothing) and apply them to its current layers."""
    viewer = _unwrap(viewer)  # the real viewer: its layers compare by identity (a dock gets a proxy)
    state = get_state(viewer)
    if getattr(state, "hooks_installed", False):
        return
    state.hooks_installed = True
    viewer.layers.events.inserted.connect(lambda event: _on_inserted(viewer, event.value))
    viewer.dims.events.current_step.connect(lambda *_: update_overlay(viewer))
    viewer.layers.selection.events.active.connect(lambda *_: follow_colorbar(viewer))
    for layer in list(viewer.layers):
        _on_inserted(viewer, layer, defer=False)


def is_dwi(layer) -> bool:
    return isinstance(layer, napari.layers.Image) and layer.ndim == 4


def bright_volume(protocol) -> int:
    """The index of the brightest volume: b = 0 (the smallest b) at the shortest TE."""
    te = np.nan_to_num(np.asarray(protocol.te, dtype=float), nan=0.0) if protocol.te is not None else 0.0
    order = np.lexsort((np.zeros(len(protocol)) + te, np.round(np.asarray(protocol.b, dtype=float))))
    return int(order[0])


def volume_text(layer, index: int) -> str:
    """'volume 3 of 20: b = 1500 s/mm², TE = 80 ms' for a DWI layer with a protocol ('' without)."""
    prot = layer_protocol(layer)
    if prot is None or not 0 <= index < len(prot):
        return ""
    text = f"{layer.name}, volume {index} of {len(prot)}: b = {float(prot.b[index]):g} s/mm²"
    if prot.te is not None and np.isfinite(prot.te[index]):
        text += f", TE = {float(prot.te[index]):g} ms"
    return text


def update_overlay(viewer) -> None:
    """Show the current volume's b (and TE) of the top visible DWI in napari's text overlay."""
    dwi = next((lay for lay in reversed(list(viewer.layers)) if is_dwi(lay) and lay.visible
                and layer_protocol(lay) is not None), None)
    text = volume_text(dwi, int(viewer.dims.current_step[0])) if dwi is not None and viewer.dims.ndim == 4 else ""
    overlay = text_overlay(viewer)
    overlay.text = text
    overlay.font_size = 9
    overlay.visible = bool(text)


def text_overlay(viewer):
    """napari's canvas text overlay (``viewer.canvas.overlays.text`` since 0.9, ``viewer.text_overlay`` before)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    if overlays is not None and "text" in overlays:
        return overlays["text"]
    return viewer.text_overlay


def _on_inserted(viewer, layer, defer: bool = True) -> None:
    if is_dwi(layer):
        if viewer.dims.ndim == 4:
            viewer.dims.axis_labels = AXES
        prot = layer_protocol(layer)
        if prot is not None and len(prot) == layer.data.shape[0]:
            index = bright_volume(prot)
            if defer:  # after napari has fitted the dims to the new layer
                QTimer.singleShot(0, lambda: _show_volume(viewer, index))
            else:
                _show_volume(viewer, index)
        _load_pretrained(viewer, layer)
    elif isinstance(layer, napari.layers.Labels) and (layer.metadata or {}).get("label_names"):
        show_labels_as_contours(layer)
        _select_dwi(viewer)
        if defer:  # napari selects the newest layer after this event: select the DWI afterwards
            QTimer.singleShot(0, lambda: _select_dwi(viewer))
    update_overlay(viewer)


def _show_volume(viewer, index: int) -> None:
    with contextlib.suppress(Exception):  # the viewer may be closing
        if viewer.dims.ndim == 4:
            viewer.dims.set_current_step(0, index)
        update_overlay(viewer)
        dwi = next((lay for lay in reversed(list(viewer.layers)) if is_dwi(lay)), None)
        if dwi is not None:  # contrast for the volume shown, not the dark high-b ones
            vol = np.asarray(dwi.data[index])
            finite = vol[np.isfinite(vol)]
            if finite.size and float(np.percentile(finite, 99.5)) > 0:
                dwi.contrast_limits = (0.0, float(np.percentile(finite, 99.5)))


def _select_dwi(viewer) -> None:
    with contextlib.suppress(Exception):
        dwi = next((lay for lay in reversed(list(viewer.layers)) if is_dwi(lay)), None)
        if dwi is not None:
            viewer.layers.selection.active = dwi


def _load_pretrained(viewer, layer) -> None:
    """Make the bundle the DWI names (the sample's pretrained one) the session's model, if it has none."""
    path = (layer.metadata or {}).get("pretrained_bundle")
    state = get_state(viewer)
    if not path or state.bundle is not None or not Path(path).is_file():
        return
    from napari.utils.notifications import show_info, show_warning

    from napari_rverdict.learn.bundle import load_bundle

    try:
        bundle = load_bundle(path)
    except ValueError as exc:
        show_warning(f"The pretrained bundle could not be loaded: {exc}")
        return
    state.set_bundle(bundle, origin="sample", path=path)
    show_info(f"Loaded the pretrained model {Path(path).name}: Compute maps in the Maps dock works now.")
