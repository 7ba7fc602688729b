"""Dock 4 — Explore: live signal curves, voxel QA and a protocol what-if for teaching and protocol design.

Wiring only: the curves, noise band and voxel predictions are :mod:`napari_rverdict.evaluate.explore`, the
protocol table and comparison :mod:`napari_rverdict.evaluate.protocol_design`; the layout is ``form``, the
drawing ``plot``, the what-if behaviour ``whatif``.
"""

from __future__ import annotations

import napari
import numpy as np
from magicgui.widgets import FloatSlider
from qtpy.QtWidgets import QFileDialog, QWidget

from napari_rverdict._napari import viewer_hooks
from napari_rverdict._napari._common import LayerWatch, LifetimeGuard, fill_protocol_sources, find_data, show_bad_input
from napari_rverdict._napari.explore_dock import form
from napari_rverdict._napari.explore_dock.plot import ALL_SERIES
from napari_rverdict._napari.explore_dock.whatif import WhatIf
from napari_rverdict._napari.reader import display_factor, layer_protocol, map_spec_for, map_unit_text
from napari_rverdict.errors import InputError
from napari_rverdict.evaluate.explore import model_for_maps, noise_band, signal_curves, voxel_qa
from napari_rverdict.evaluate.report import typical_parameters
from napari_rverdict.physics.models import get_model
from napari_rverdict.physics.protocol_files import load_protocol

SLIDER_STEPS = 200


class ExploreWidget(QWidget):
    """Model, protocol, one slider per parameter → the signal curves; a DWI voxel → its measured and predicted
    signal; an editable protocol → the protocol report of both, side by side."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._real_viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self._file_protocol = None  # (path, Protocol)
        self._protocol = None  # the protocol the curves use (direction-averaged)
        self.curves = None
        self.band = None
        self.voxel = None  # the last VoxelQA
        self._voxel_index = None
        self._quiet = False  # set while several sliders move at once
        form.build(self)
        self.whatif = WhatIf(self)
        self._connect()
        viewer_hooks.install(napari_viewer)  # axis names, contours, bright volume: whichever dock opens first
        self._refresh_layers()
        self._model_changed()

    # ------------------------------------------------------------------ wiring
    def _connect(self) -> None:
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.protocol_combo.currentIndexChanged.connect(self._protocol_changed)
        self.protocol_file_btn.clicked.connect(self._choose_protocol_file)
        self.reset_btn.clicked.connect(self.reset_parameters)
        self.compartments_combo.currentIndexChanged.connect(self._compartments_changed)
        for sig in (self.noise_check.toggled, self.snr_spin.valueChanged, self.reference_combo.currentIndexChanged):
            sig.connect(self.redraw)
        self.dwi_combo.currentIndexChanged.connect(self.clear_voxel)
        self.clear_voxel_btn.clicked.connect(self.clear_voxel)
        self._layer_watch = LayerWatch(self._real_viewer, self._refresh_layers)  # follows renames too
        self._real_viewer.mouse_move_callbacks.append(self._on_mouse_move)
        self._real_viewer.mouse_drag_callbacks.append(self._on_mouse_press)
        self._guard = LifetimeGuard(self, self.shutdown)

    def shutdown(self) -> None:
        """Drop the viewer callbacks and stop a running evaluation (the dock or the viewer is closing)."""
        for callbacks, fn in ((self._real_viewer.mouse_move_callbacks, self._on_mouse_move),
                              (self._real_viewer.mouse_drag_callbacks, self._on_mouse_press)):
            if fn in callbacks:
                callbacks.remove(fn)
        self._layer_watch.close()
        self.whatif.stop()

    @property
    def model(self):
        return get_model(self.model_combo.currentData())

    # ------------------------------------------------------------------ model, protocol, sliders
    def _model_changed(self, *_) -> None:
        model = self.model
        self.sliders.clear()
        typical = typical_parameters(model)
        for p in model.parameters:
            value = typical.get(p.name, 1.0)
            unit = f" {p.unit}" if p.unit else ""
            slider = FloatSlider(value=value, min=p.low, max=p.high, step=(p.high - p.low) / SLIDER_STEPS,
                                 name=p.name, label=f"{p.name} ({p.unit})" if p.unit else p.name,
                                 tooltip=f"{p.description}; training range {p.low:g}–{p.high:g}{unit}"
                                 + (" (nuisance: cancels in the normalisation)" if p.nuisance else ""))
            slider.changed.connect(self.redraw)
            self.sliders.append(slider)
        self._protocol_changed()
        self._fit_width()

    def _fit_width(self) -> None:
        """As wide as the sections need (they scroll vertically, never sideways)."""
        from qtpy.QtWidgets import QStyle

        bar = max(self.scroll_area.verticalScrollBar().sizeHint().width(),
                  self.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent))
        need = self.scroll_area.widget().minimumSizeHint().width() + bar + 2 * self.scroll_area.frameWidth()
        self.scroll_area.setMinimumWidth(need + 24)

    def reset_parameters(self) -> None:
        typical = typical_parameters(self.model)
        self._quiet = True
        try:
            for w in self.sliders:
                w.value = typical.get(w.name, 1.0)
        finally:
            self._quiet = False
        self.redraw()

    def parameters(self) -> dict[str, float]:
        return {w.name: float(w.value) for w in self.sliders}

    def set_parameter(self, name: str, value: float) -> None:
        """Move slider ``name`` to ``value`` (as a user would)."""
        self.sliders[name].value = value

    def _refresh_layers(self, renamed: dict | None = None) -> None:
        """List the DWI layers and protocol sources again; ``renamed`` ({old: new name}) keeps a renamed layer
        chosen."""
        renamed = renamed or {}
        layers = list(self._real_viewer.layers)
        dwis = [ly.name for ly in reversed(layers) if isinstance(ly, napari.layers.Image) and ly.ndim == 4]
        current = self.dwi_combo.currentText()
        current = renamed.get(current, current)
        self.dwi_combo.blockSignals(True)
        self.dwi_combo.clear()
        self.dwi_combo.addItems(dwis)
        if current in dwis:
            self.dwi_combo.setCurrentText(current)
        self.dwi_combo.blockSignals(False)
        if fill_protocol_sources(self.protocol_combo, layers, self._file_protocol, renamed):
            self._protocol_changed()

    def _choose_protocol_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Protocol file", "", "Protocols (*.scheme *.bval);;All files (*)")
        if path:
            self.set_protocol_file(path)

    def set_protocol_file(self, path: str) -> None:
        """Use the protocol in ``path`` (a .scheme or .bval); a message if it cannot be read."""
        try:
            self._file_protocol = (str(path), load_protocol(path, direction_averaged=True))
        except (InputError, OSError) as exc:
            show_bad_input(self.message, f"Cannot read the protocol file: {exc}")
            return
        self._refresh_layers()
        index = find_data(self.protocol_combo, ("file", str(path)))
        if index >= 0:
            self.protocol_combo.setCurrentIndex(index)

    def chosen_protocol(self):
        """The direction-averaged protocol chosen in the combo box (raises InputError)."""
        kind, value = self.protocol_combo.currentData() or ("preset", "innovate")
        if kind == "layer":
            if value not in self._real_viewer.layers:
                raise InputError(f"layer '{value}' is gone")
            return load_protocol(layer_protocol(self._real_viewer.layers[value]), direction_averaged=True)
        if kind == "file":
            return self._file_protocol[1]
        return load_protocol(value)

    def _protocol_changed(self, *_) -> None:
        try:
            protocol = self.chosen_protocol()
        except InputError as exc:
            self.message.error(str(exc))
            return
        self.protocol_info.setText(f"{len(protocol)} measurements, {len(set(protocol.series_ids()))} series; "
                                   f"b up to {protocol.b.max():g} s/mm²")
        self.whatif.reset_table(protocol)
        self._protocol = protocol
        self.redraw()

    def plot_protocol(self):
        """The protocol the curves are drawn for: the edited one when asked and valid, else the chosen one."""
        if self.plot_edited_check.isChecked():
            edited = self.whatif.edited_protocol()
            if edited is not None:
                return edited
        return self._protocol

    def _compartments_changed(self, *_) -> None:
        data = self.compartments_combo.currentData()
        self.artists.compartments_of = None if data is None else int(data)
        self.redraw()

    def _fill_compartment_choices(self) -> None:
        current = self.compartments_combo.currentText()
        self.compartments_combo.blockSignals(True)
        self.compartments_combo.clear()
        self.compartments_combo.addItem("all series", ALL_SERIES)
        for i, s in enumerate(self.curves.series):
            self.compartments_combo.addItem(s.label, i)
        self.compartments_combo.addItem("none", None)
        idx = self.compartments_combo.findText(current)
        self.compartments_combo.setCurrentIndex(max(idx, 0))
        self.compartments_combo.blockSignals(False)
        data = self.compartments_combo.currentData()
        self.artists.compartments_of = None if data is None else int(data)

    # ------------------------------------------------------------------ drawing
    def redraw(self, *_) -> None:
        """Recompute the curves (and noise band) from the sliders and redraw."""
        protocol = self.plot_protocol()
        if protocol is None or not len(self.sliders) or self._quiet:
            return
        try:
            curves = signal_curves(self.model, self.parameters(), protocol)
            band = noise_band(curves, self.snr_spin.value(), self.reference_combo.currentData()) \
                if self.noise_check.isChecked() else None
        except InputError as exc:
            self.message.error(str(exc))
            return
        new_series = self.curves is None or [s.label for s in self.curves.series] != [s.label for s in curves.series]
        self.curves, self.band = curves, band
        if new_series:
            self._fill_compartment_choices()
        self.artists.update(curves, band)
        fr = curves.fractions
        self.fraction_info.setText(f"f_ic {fr['f_ic']:.2f} · f_ees {fr['f_ees']:.2f} · f_vasc {fr['f_vasc']:.2f}")
        if curves.notes:
            self.message.error("; ".join(curves.notes))
        elif band is not None:
            self.message.info(f"σ = {band.sigma:.4g} on the {'S0 = 1' if band.reference == 's0' else 'peak'} scale")
        else:
            self.message.info("")
        self.artists.render()

    # ------------------------------------------------------------------ voxel QA
    def dwi_layer(self):
        name = self.dwi_combo.currentText()
        return self._real_viewer.layers[name] if name and name in self._real_viewer.layers else None

    def _on_mouse_move(self, viewer, event) -> None:
        if self.hover_check.isChecked():
            self._voxel_at_world(event.position)

    def _on_mouse_press(self, viewer, event) -> None:
        if event.type == "mouse_press" and self.voxel_box.isExpanded():
            self._voxel_at_world(event.position)

    def _voxel_at_world(self, position) -> None:
        layer = self.dwi_layer()
        if layer is None:
            return
        idx = np.round(np.asarray(layer.world_to_data(position), dtype=float)).astype(int)[-3:]
        shape = layer.data.shape[-3:]
        if np.any(idx < 0) or np.any(idx >= np.asarray(shape)):
            return
        if self._voxel_index is None or tuple(idx) != self._voxel_index:
            self.show_voxel(tuple(int(i) for i in idx))

    def map_layers(self, layer) -> dict:
        """{map name: layer} of the network maps computed from DWI ``layer`` (sd and NLLS maps left out)."""
        out = {}
        for ly in self._real_viewer.layers:
            md = getattr(ly, "metadata", None) or {}
            name = md.get("map_name")
            if md.get("rverdict_map") and md.get("source_layer") == layer.name and md.get("method") != "NLLS" \
                    and name and not name.endswith("_sd"):
                out[name] = ly
        return out

    def show_voxel(self, zyx: tuple[int, int, int]) -> None:
        """Overlay voxel (z, y, x) of the chosen DWI layer: measured signal, and the prediction of its maps."""
        layer = self.dwi_layer()
        if layer is None:
            self.voxel_info.setText("no 4D DWI layer")
            return
        protocol = layer_protocol(layer)
        if protocol is None:
            self.voxel_info.setText(f"'{layer.name}' has no protocol (open it with its .bval/.scheme sidecar)")
            return
        self._voxel_index = tuple(zyx)
        z, y, x = zyx
        signals = np.asarray(layer.data[:, z, y, x], dtype=float)
        # map layers show some maps scaled (cellularity in 10⁻³ µm⁻³): the model gets their true units
        maps = {k: float(np.asarray(ly.data)[z, y, x]) / display_factor(k) for k, ly in self.map_layers(layer).items()}
        try:
            model = model_for_maps(maps) if maps else self.model
            qa = voxel_qa(signals, protocol, model, maps or None)
        except InputError as exc:
            self.voxel = None
            self.artists.set_voxel(None)
            self.voxel_info.setText(f"voxel (z {z}, y {y}, x {x}): {exc}")
            self.artists.render()
            return
        self.voxel = qa
        self.artists.set_voxel(qa)
        self.voxel_info.setText(self._voxel_text(zyx, qa))
        self.artists.render()

    @staticmethod
    def _voxel_text(zyx, qa) -> str:
        z, y, x = zyx
        lines = [f"voxel (z {z}, y {y}, x {x}), normalised as {qa.model.label} normalises it"]
        if qa.map_values:
            parts = []
            for k, v in qa.map_values.items():  # as the map layers and the ROI table show them
                spec = map_spec_for(k, qa.model.name)
                v = v * display_factor(k)
                parts.append(f"{k} {v:.3g}" if abs(v) < 1 else f"{k} {v:.4g}")
                unit = map_unit_text(spec) if spec else ""
                parts[-1] += f" {unit}" if unit and unit != "fraction" else ""
            lines.append("maps: " + ", ".join(parts))
        if qa.predicted is not None:
            lines.append(f"RMS(predicted − measured) = {qa.rmse:.3f}")
        lines += qa.notes
        return "\n".join(lines)

    def clear_voxel(self, *_) -> None:
        self.voxel, self._voxel_index = None, None
        self.artists.set_voxel(None)
        self.voxel_info.setText("no voxel chosen")
        self.artists.render()
