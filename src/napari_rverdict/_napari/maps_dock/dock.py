"""Dock 3 — Maps: a trained model (and optionally the NLLS reference), or self-supervised fitting, applied to a DWI
layer.

"Compute maps" calls the same :func:`napari_rverdict.maps.predict.predict_volume` (and
:func:`napari_rverdict.maps.nlls.fit_volume`, or :func:`napari_rverdict.maps.self_supervised.fit_self_supervised`
with a live loss curve) the CLI calls, in a napari worker
(:mod:`napari_rverdict._napari.maps_dock.job`); the layers are added on the GUI thread when the worker returns
(:mod:`napari_rverdict._napari.maps_dock.layers`), so a failure changes nothing. Tables
(:mod:`napari_rverdict._napari.maps_dock.tables`): ROI statistics per label and map
(:func:`napari_rverdict.maps.compare.roi_statistics`) and, with NLLS, network vs NLLS
(:func:`napari_rverdict.maps.compare.compare_maps`). The widgets and their layout are in
:mod:`napari_rverdict._napari.maps_dock.form`; viewer conventions (axis names, b overlay, contours, the sample's
pretrained model) in :mod:`napari_rverdict._napari.viewer_hooks`; what the dock shows while it runs (progress,
loss curve, the SNR warning of :func:`~napari_rverdict.data.noise_estimate.noise_mismatch`) in
:mod:`napari_rverdict._napari.maps_dock.feedback`. Every method also gives its fit quality (``fit_nrmse``).
"""

from __future__ import annotations

import threading
from pathlib import Path

import napari
import numpy as np
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QFileDialog, QMessageBox, QWidget

from napari_rverdict._napari import viewer_hooks
from napari_rverdict._napari._common import LayerWatch, LifetimeGuard, Relay, release_worker, show_bad_input
from napari_rverdict._napari.maps_dock import exports, feedback, form, inputs, tables
from napari_rverdict._napari.maps_dock.job import compute_job
from napari_rverdict._napari.maps_dock.layers import (
    SD_SUFFIX,
    add_map_layers,
    follow_renamed_sources,
    raise_to_top,
    show_labels_as_contours,
    shown,
)
from napari_rverdict._napari.reader import display_factor, map_spec_for, map_unit_text
from napari_rverdict._napari.state import _unwrap, get_state, model_label
from napari_rverdict.physics.models import FIT_NRMSE
from napari_rverdict.physics.protocol import PROTOCOL_DIFFERS


class MapsWidget(QWidget):
    """DWI layer and protocol, mask, lesion labels, model, method, uncertainty, device → map layers and tables."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.session = get_state(napari_viewer)
        self.worker = None
        self.results: dict = {}  # {method: {map name: (x, y, z)}} of the last run (its own method first)
        self.affine = None  # the DWI's affine of the last run
        self.map_layers: dict = {}  # map name → layer (the first method's maps and their sd)
        self.roi_table = None  # the first method's RoiTable (CSV export)
        self.roi_tables: dict = {}  # {method: RoiTable}
        self.comparison = None
        self._file_protocol = None  # (path, Protocol) chosen with File…
        self._run = None  # what the running worker was given
        self._warnings: list = []  # what the library warned about during the run (worker.warned)
        self._relay = None
        self._pbar = None
        self.stop_event = threading.Event()  # set when the dock or the viewer closes: the running job stops
        form.build(self)
        self._connect()
        viewer_hooks.install(napari_viewer)
        self._bundle_changed(self.session.bundle)
        self._method_changed()
        self._dwi_changed()
        self._update_outputs()

    @property
    def maps(self):
        """The maps of the last run's first method (network for network and NLLS runs, else self-supervised):
        {name: (x, y, z)}, or None."""
        return next((m for m in self.results.values() if m is not None), None)

    @property
    def nlls_maps(self):
        return self.results.get("NLLS")

    def _connect(self) -> None:
        self.dwi_combo.currentIndexChanged.connect(self._dwi_changed)
        self.protocol_combo.currentIndexChanged.connect(self._dwi_changed)
        self.protocol_file_btn.clicked.connect(self._protocol_dialog)
        self.load_btn.clicked.connect(self._load_dialog)
        self.compute_btn.clicked.connect(self.compute)
        self.stop_btn.clicked.connect(self.stop)
        self.method_combo.currentIndexChanged.connect(self._method_changed)
        self.method_combo.currentIndexChanged.connect(self._dwi_changed)
        self.csv_btn.clicked.connect(self._csv_dialog)
        self.export_btn.clicked.connect(self._export_dialog)
        self.sd_map_combo.currentIndexChanged.connect(self._sd_map_changed)
        self.sd_spin.valueChanged.connect(self._apply_sd_threshold)
        self.session.bundle_changed.connect(self._bundle_changed)
        self._layer_watch = LayerWatch(self.viewer, lambda renamed: follow_renamed_sources(self.viewer, renamed))
        self._guard = LifetimeGuard(self, self.shutdown)

    # ------------------------------------------------------------------ inputs
    def set_protocol_file(self, path) -> None:
        """Use the protocol in ``path`` (.scheme / .bval) for the DWI layer; a message when it cannot be read."""
        from napari_rverdict.physics.protocol_files import load_protocol

        try:
            protocol = load_protocol(str(path))
        except (ValueError, OSError) as exc:
            self._fail(f"Cannot read the protocol file: {exc}")
            return
        self._file_protocol = (str(path), protocol)
        i = next((i for i in range(self.protocol_combo.count()) if self.protocol_combo.itemData(i)[0] == "file"), -1)
        if i < 0:
            self.protocol_combo.addItem("", ("file", None))
            i = self.protocol_combo.count() - 1
        self.protocol_combo.setItemText(i, f"file {Path(path).name}")
        self.protocol_combo.setItemData(i, str(path), 3)
        self.protocol_combo.setCurrentIndex(i)
        self._dwi_changed()

    def _protocol_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Protocol file", "", "Protocols (*.scheme *.bval);;All files (*)")
        if path:
            self.set_protocol_file(path)

    def protocol(self, layer):
        """The chosen protocol of the DWI ``layer``; ValueError saying why there is none."""
        return inputs.chosen_protocol(self, layer)

    def _dwi_changed(self, *_) -> None:
        layer = self.dwi_combo.layer()
        if layer is None:
            self.dwi_info.setText("No 4D image layer: File ▸ Open a DWI, or File ▸ Open Sample ▸ phantom.")
            return
        try:
            prot = self.protocol(layer)
        except ValueError as exc:
            self.dwi_info.setText(str(exc))
            self.dwi_info.setStyleSheet("color: #ff6b6b; font-size: 11px;")
            return
        b = np.unique(np.round(prot.b))
        text = f"{len(prot)} volumes, b = {', '.join(f'{x:g}' for x in b)} s/mm²"
        kind = (self.protocol_combo.currentData() or ("layer", None))[0]
        read = [str(w) for w in (layer.metadata or {}).get("protocol_warnings") or []] if kind == "layer" else []
        read = [w.split(".bval: ", 1)[-1] for w in read]  # "<stem>.bval: " names the DWI's sidecar: said once
        diffs = inputs.model_differences(self, prot)
        if read:
            text += ". Read with a warning: " + "; ".join(read)
        if diffs:
            text += ". Differs from the model's protocol (the maps use it as matched): " + "; ".join(diffs)
        self.dwi_info.setStyleSheet("color: #e5a50a; font-size: 11px;" if read or diffs
                                    else "color: #9aa0a6; font-size: 11px;")
        self.dwi_info.setText(text)

    def _bundle_changed(self, bundle) -> None:
        if bundle is None:
            self.model_label.setText("none yet")
            self.model_label.setToolTip("train one in the Train dock, or Load… a saved bundle")
        else:
            self.model_label.setText(f"{model_label(bundle.model.name)} {bundle.net_name}")
            self.model_label.setToolTip(bundle.describe())
        has_unc = bundle is not None and bool(bundle.has_uncertainty)
        self.uncertainty_check.setChecked(has_unc)
        self.uncertainty_check.setToolTip("also show a per-voxel sd map for each map (network and NLLS): the "
                                          "spread the acquisition and the training prior allow — calibrated on "
                                          "tissue spread as the prior is, conservative on tissue near its centre"
                                          if has_unc
                                          else "this model was not trained with uncertainty (tick 'uncertainty' in "
                                          "the Train dock)")
        feedback.follow_bundle(self, bundle)
        self._method_changed()
        self._update_buttons()
        self._dwi_changed()  # what differs from this model's protocol

    def _method_changed(self, *_) -> None:
        feedback.method_changed(self)

    def _update_buttons(self) -> None:
        running = self.worker is not None
        self.compute_btn.setEnabled(not running)
        self.stop_btn.setEnabled(running)
        self.load_btn.setEnabled(not running)

    def _update_outputs(self) -> None:
        self.csv_btn.setEnabled(self.roi_table is not None)
        self.export_btn.setEnabled(self.maps is not None)
        sd_names = [k[: -len(SD_SUFFIX)] for k in (self.maps or {}) if k.endswith(SD_SUFFIX)]
        self.sd_section.setVisible(bool(sd_names))
        self.sd_map_combo.blockSignals(True)
        self.sd_map_combo.clear()
        self.sd_map_combo.addItems(sd_names)
        self.sd_map_combo.blockSignals(False)
        self.roi_section.setVisible(bool(self.roi_tables) or self.maps is not None)
        self.cmp_section.setVisible(self.comparison is not None)

    def _fail(self, text: str) -> None:
        """A bad input: a message in the dock and a napari notification; nothing else changes."""
        show_bad_input(self.message, text)

    def check_inputs(self) -> dict:
        """Everything the worker needs, checked on the GUI thread; raises ValueError with a message for the user."""
        return inputs.check_inputs(self)

    # ------------------------------------------------------------------ run
    def compute(self) -> None:
        """Start the worker (or show why not: then nothing changes)."""
        if self.worker is not None:
            return
        try:
            run = self.check_inputs()
        except ValueError as exc:
            self._fail(str(exc))
            return
        self._relay = Relay(self)
        self._pbar = napari_progress(total=100, desc="Computing maps")
        self._relay.value.connect(self._on_progress)
        self.stop_event = threading.Event()
        worker = create_worker(compute_job, run["bundle"], run["dwi"], run["mask"], run["device"],
                               run["uncertainty"], run["method"], self._relay.value.emit, self.stop_event,
                               model=run["model"].name, epochs=run["epochs"],
                               _start_thread=False, _ignore_errors=True)  # errors go to _failed (dock + notification)
        self._warnings = []  # the library's warnings of this run (worker.warned, queued before returned)
        worker.warned.connect(self._on_warned)
        worker.returned.connect(self._done)
        worker.errored.connect(self._failed)
        worker.finished.connect(self._finished)
        self._run = run
        self.worker = worker
        self._update_buttons()
        feedback.start(self, run)
        worker.start()

    def stop(self) -> None:
        """Stop the run: network and NLLS add nothing; self-supervised ends its training and its best weights so
        far make the maps."""
        if self.worker is None:
            return
        self.stop_event.set()
        self.message.info("stopping: the self-supervised maps come from the best weights so far…"
                          if self._run and self._run["method"] == "self-supervised" else "stopping…")

    def shutdown(self) -> None:
        """The dock or the viewer is going away: stop the job (prediction at its next chunk, the NLLS fit through
        its stop event) and let go of the worker, so nothing it returns reaches this dock."""
        self.stop_event.set()
        self._layer_watch.close()
        if self.worker is not None:
            release_worker(self)

    def _on_warned(self, args) -> None:
        """A warning the library raised in the worker (superqt passes ``warnings.showwarning``'s arguments)."""
        text = " ".join(str(args[0]).split()) if args else ""
        if text and text not in self._warnings:
            self._warnings.append(text)

    def _failed(self, exc) -> None:
        text = f"Computing maps failed: {exc}"
        self.message.error(text)
        show_error(text)
        self._reset_progress()

    def _reset_progress(self) -> None:
        self.progress.setValue(0)
        self.progress.setFormat("%p%")

    def _on_progress(self, item) -> None:
        feedback.on_progress(self, item)

    def _finished(self) -> None:
        release_worker(self)  # the worker keeps no reference to this dock
        self._update_buttons()

    def _done(self, out) -> None:
        run = self._run
        if run is None:
            return
        if out.get("stopped"):
            self.message.info("stopped: no maps were added")
            self._reset_progress()
            return
        layer = run["layer"]
        if not any(_unwrap(ly) is _unwrap(layer) for ly in self.viewer.layers):  # deleted while the maps computed
            self.message.warn(f"The DWI layer '{layer.name}' was removed while its maps were computed; nothing "
                              "added.")
            self._reset_progress()
            return
        self.results, self.affine = dict(out["results"]), run["affine"]
        self.sd_spin.blockSignals(True)
        self.sd_spin.setValue(0.0)
        self.sd_spin.blockSignals(False)
        layers = add_map_layers(self.viewer, self.results, run["model"], layer, self.affine)
        self.map_layers = layers.get(next(iter(self.results), None), {})
        labels_layer = run["labels_layer"]
        if labels_layer is not None:
            show_labels_as_contours(labels_layer)
            raise_to_top(self.viewer, labels_layer)
        first = next((ly for k, ly in self.map_layers.items() if k != FIT_NRMSE), None)
        if first is not None:  # the shown map is the selected one: its controls, colorbar and hover value
            self.viewer.layers.selection.active = first
        self.roi_table, self.roi_tables, self.comparison = None, {}, None
        notes = [n for n in (tables.show_roi_statistics(self, run), tables.show_comparison(self, run)) if n]
        self._update_outputs()
        n_maps = sum(1 for k in self.maps if not k.endswith(SD_SUFFIX) and k != FIT_NRMSE)
        text = feedback.closing_message(run, out, n_maps, self.nlls_maps is not None)
        if run.get("differences"):
            notes.insert(0, "The DWI's protocol differs from the model's (matched by settings): "
                         + "; ".join(run["differences"]) + ".")
        full = text + "." + "".join(" " + n for n in notes)
        # what the library warned about in the worker (volumes in another order than the protocol says, voxels
        # left out, …): said with the maps, never a green "done"; the protocol differences are said above already
        warned = [w for w in self._warnings if not w.startswith(PROTOCOL_DIFFERS)]  # said above, from the GUI
        if warned:
            full += " Warning: " + " ".join(w.rstrip(".") + "." for w in warned)
            show_warning("Maps of '" + run["layer"].name + "': " + " ".join(warned))
        if out.get("noise_warning"):
            self.message.warn(f"{full} SNR warning: {out['noise_warning']}{feedback.SNR_ADVICE}.")
        elif warned:
            self.message.warn(full)
        else:
            self.message.ok(full)
        show_info("Added " + text)

    # ------------------------------------------------------------------ uncertainty threshold (display units)
    def _sd_map_changed(self, *_) -> None:
        name = self.sd_map_combo.currentText()
        if not name or self.maps is None or name + SD_SUFFIX not in self.maps:
            return
        sd = np.asarray(self.maps[name + SD_SUFFIX]) * display_factor(name)
        finite = sd[np.isfinite(sd)]
        hi = float(finite.max()) if finite.size else 1.0
        self.sd_spin.blockSignals(True)
        self.sd_spin.setSingleStep(max(hi / 50.0, 1e-4))
        self.sd_spin.setValue(0.0)
        self.sd_spin.blockSignals(False)
        spec = map_spec_for(name)
        self.sd_spin.setSuffix(f" {map_unit_text(spec)}" if spec is not None and map_unit_text(spec) else "")
        self._apply_sd_threshold()

    def set_sd_threshold(self, map_name: str, value: float) -> None:
        """Hide the voxels of ``map_name`` whose sd (in the layer's display unit) is above ``value`` (0 = show
        all), as the dock's controls do."""
        idx = self.sd_map_combo.findText(map_name)
        if idx < 0:
            raise KeyError(f"no sd map for '{map_name}'")
        self.sd_map_combo.setCurrentIndex(idx)
        self.sd_spin.setValue(float(value))
        self._apply_sd_threshold()

    def _apply_sd_threshold(self, *_) -> None:
        name = self.sd_map_combo.currentText()
        if not name or self.maps is None or name not in self.map_layers or name + SD_SUFFIX not in self.maps:
            return
        for other in self.sd_map_combo_items():  # only one map is thresholded at a time: restore the others
            if other != name and other in self.map_layers:
                self.map_layers[other].data = shown(other, self.maps[other])
        value = float(self.sd_spin.value()) / display_factor(name)
        full = self.maps[name]
        with np.errstate(invalid="ignore"):  # NaN sd (outside the mask) stays NaN: hidden either way
            kept = full if value <= 0 else np.where(self.maps[name + SD_SUFFIX] > value, np.nan, full)
        layer = self.map_layers[name]
        layer.data = shown(name, kept)
        layer.metadata["sd_threshold"] = value if value > 0 else None

    def sd_map_combo_items(self) -> list[str]:
        return [self.sd_map_combo.itemText(i) for i in range(self.sd_map_combo.count())]

    # ------------------------------------------------------------------ bundles and exports
    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load model bundle", "", "Model bundle (*.pt);;All files (*)")
        if path:
            self.load_bundle(path)

    def load_bundle(self, path):
        """Load a bundle; it becomes the session's model (the Train dock shows it too)."""
        from napari_rverdict.learn.bundle import load_bundle

        try:
            bundle = load_bundle(path)
        except (ValueError, OSError) as exc:
            self._fail(str(exc))
            return None
        self.session.set_bundle(bundle, origin="file", path=path)
        self.message.ok(f"Loaded {Path(path).name}.")
        return bundle

    def _csv_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export ROI statistics", "roi_statistics.csv", "CSV (*.csv)")
        if not path:
            return
        # the dialog asked about the chosen file; the NLLS comparison beside it is asked about here
        others = [p for p in exports.csv_files(self.comparison, path)[1:] if p.exists()]
        if others and QMessageBox.question(
                self, "Overwrite?", f"{others[0].name} also exists in {others[0].parent}. Overwrite it?"
        ) != QMessageBox.StandardButton.Yes:
            return
        self.export_csv(path, overwrite=True)

    def export_csv(self, path, overwrite: bool = False) -> Path | None:
        """Write the ROI statistics table (and, beside it, ``<stem>_vs_nlls.csv`` when NLLS ran); existing files
        only with ``overwrite``."""
        if self.roi_table is None:
            self._fail("No ROI statistics yet: compute maps with a lesion labels layer chosen.")
            return None
        clash = [p for p in exports.csv_files(self.comparison, path) if p.exists()]
        if clash and not overwrite:
            self._fail(f"{', '.join(p.name for p in clash)} already in {clash[0].parent}: nothing written.")
            return None
        try:
            path = exports.write_csv(self.roi_table, self.comparison, path, overwrite=overwrite)
        except (OSError, ValueError) as exc:
            self._fail(f"Could not write {path}: {exc}")
            return None
        self.message.ok(f"Wrote {path}")
        return path

    def _export_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Export maps to a folder")
        if not path:
            return
        clash = exports.existing(self, path)
        if clash and QMessageBox.question(
                self, "Overwrite?", f"{len(clash)} file(s) exist in {path} (e.g. {clash[0].name}). Overwrite them?"
        ) != QMessageBox.StandardButton.Yes:
            return
        self.export_maps(path, overwrite=True)

    def export_maps(self, directory, overwrite: bool = False) -> list[Path]:
        """Write every map (sd, NLLS and fit_nrmse maps too; true units) as ``<DWI name>_<map>.nii.gz``
        (:data:`.exports.FILE_PREFIX` after the DWI's name for NLLS and self-supervised) with the DWI's affine,
        all or none; existing files only with ``overwrite``. Returns the paths."""
        if self.maps is None:
            self._fail("No maps yet: press Compute maps first.")
            return []
        clash = exports.existing(self, directory)
        if clash and not overwrite:
            self._fail(f"{len(clash)} file(s) exist in {directory} (e.g. {clash[0].name}): nothing written.")
            return []
        try:
            written = exports.write_maps(self, directory, overwrite=overwrite)
        except (OSError, ValueError) as exc:
            self._fail(f"Could not export the maps: {exc}")
            return []
        self.message.ok(f"Wrote {len(written)} NIfTI maps to {directory}")
        return written
