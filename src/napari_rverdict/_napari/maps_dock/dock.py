"""Dock 3 — Maps: a trained model (and optionally the NLLS reference) applied to a DWI layer.

"Compute maps" calls the same :func:`napari_rverdict.maps.predict.predict_volume` (and
:func:`napari_rverdict.maps.nlls.fit_volume`) the CLI calls, in a napari worker
(:mod:`napari_rverdict._napari.maps_dock.job`); the layers are added on the GUI thread when the worker returns
(:mod:`napari_rverdict._napari.maps_dock.layers`), so a failure changes nothing. Tables: ROI statistics per label
per map (:func:`napari_rverdict.maps.compare.roi_statistics`) and, when NLLS ran, network vs NLLS
(:func:`napari_rverdict.maps.compare.compare_maps`). The widgets and their layout are in
:mod:`napari_rverdict._napari.maps_dock.form`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import napari
import numpy as np
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QFileDialog, QWidget

from napari_rverdict._napari._common import LifetimeGuard, Relay, release_worker
from napari_rverdict._napari.maps_dock import form
from napari_rverdict._napari.maps_dock.job import compute_job, layer_affine, on_dwi_grid
from napari_rverdict._napari.maps_dock.layers import SD_SUFFIX, add_map_layers, raise_to_top
from napari_rverdict._napari.maps_dock.tables import fill_table
from napari_rverdict._napari.reader import layer_protocol, layer_to_xyz, map_spec_for, map_unit_text
from napari_rverdict._napari.state import get_state, model_label


class MapsWidget(QWidget):
    """DWI layer, mask, lesion labels, model, NLLS, uncertainty, device → map layers, ROI and comparison tables."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.session = get_state(napari_viewer)
        self.worker = None
        self.maps: dict | None = None  # {name: (x, y, z)} of the last run (network)
        self.nlls_maps: dict | None = None
        self.affine = None  # the DWI's affine of the last run
        self.map_layers: dict = {}  # map name → layer (network maps and their sd)
        self.roi_table = None
        self.comparison = None
        self._run = None  # what the running worker was given
        self._relay = None
        self._pbar = None
        self.stop_event = threading.Event()  # set when the dock or the viewer closes: the running job stops
        form.build(self)
        self._connect()
        self._bundle_changed(self.session.bundle)
        self._dwi_changed()
        self._update_outputs()

    def _connect(self) -> None:
        self.dwi_combo.currentIndexChanged.connect(self._dwi_changed)
        self.load_btn.clicked.connect(self._load_dialog)
        self.compute_btn.clicked.connect(self.compute)
        self.csv_btn.clicked.connect(self._csv_dialog)
        self.export_btn.clicked.connect(self._export_dialog)
        self.sd_map_combo.currentIndexChanged.connect(self._sd_map_changed)
        self.sd_spin.valueChanged.connect(self._apply_sd_threshold)
        self.session.bundle_changed.connect(self._bundle_changed)
        self._guard = LifetimeGuard(self, self.shutdown)

    # ------------------------------------------------------------------ inputs
    def _dwi_changed(self, *_) -> None:
        layer = self.dwi_combo.layer()
        if layer is None:
            self.dwi_info.setText("no 4D image layer: open a diffusion NIfTI or File ▸ Open Sample ▸ phantom")
            return
        prot = layer_protocol(layer)
        n = layer.data.shape[0]
        if prot is None:
            self.dwi_info.setText(f"{n} volumes, no acquisition protocol (no .scheme / .bval beside the file)")
        else:
            self.dwi_info.setText(f"{n} volumes; protocol {prot.name or 'from file'} with {len(prot)} measurements")

    def _bundle_changed(self, bundle) -> None:
        if bundle is None:
            self.model_label.setText("none yet: train one in the Train dock, or Load… a bundle")
        else:
            self.model_label.setText(f"{model_label(bundle.model.name)} {bundle.net_name} "
                                     f"({len(bundle.protocol)} measurements)")
        has_unc = bundle is not None and bool(bundle.has_uncertainty)
        self.uncertainty_check.setEnabled(has_unc)
        if not has_unc:
            self.uncertainty_check.setChecked(False)
        self.uncertainty_check.setToolTip("" if has_unc else "this model was not trained with uncertainty "
                                          "(tick 'uncertainty' in the Train dock)")
        self._update_buttons()

    def _update_buttons(self) -> None:
        running = self.worker is not None
        self.compute_btn.setEnabled(not running)
        self.load_btn.setEnabled(not running)

    def _update_outputs(self) -> None:
        self.csv_btn.setEnabled(self.roi_table is not None)
        self.export_btn.setEnabled(self.maps is not None)
        sd_names = [k[: -len(SD_SUFFIX)] for k in (self.maps or {}) if k.endswith(SD_SUFFIX)]
        self.sd_box.setVisible(bool(sd_names))
        self.sd_map_combo.blockSignals(True)
        self.sd_map_combo.clear()
        self.sd_map_combo.addItems(sd_names)
        self.sd_map_combo.blockSignals(False)
        self.cmp_caption.setVisible(self.comparison is not None)
        self.cmp_table_widget.setVisible(self.comparison is not None)

    def _fail(self, text: str) -> None:
        """A bad input: a message in the dock and a napari notification; nothing else changes."""
        self.message.error(text)
        show_warning(text)

    def check_inputs(self) -> dict:
        """Everything the worker needs, checked on the GUI thread; raises ValueError with a message for the user."""
        from napari_rverdict.data.nifti import Dwi

        layer = self.dwi_combo.layer()
        if layer is None:
            raise ValueError("No DWI layer: open a 4D diffusion NIfTI (File ▸ Open) or the sample phantom "
                             "(File ▸ Open Sample ▸ napari-rverdict).")
        bundle = self.session.bundle
        if bundle is None:
            raise ValueError("No model: train one in the Train dock, or Load… a saved bundle.")
        protocol = layer_protocol(layer)
        n_vol = int(layer.data.shape[0])
        if protocol is None:
            raise ValueError(f"Layer '{layer.name}' has no acquisition protocol: open the DWI with its .scheme or "
                             ".bval sidecar beside it.")
        if len(protocol) != n_vol:
            raise ValueError(f"Protocol length mismatch: layer '{layer.name}' has {n_vol} volumes but its protocol "
                             f"has {len(protocol)} measurements.")
        try:
            bundle.model.check_protocol(protocol)
        except ValueError as exc:
            raise ValueError(f"The model cannot use this DWI: {exc}") from None
        data = layer_to_xyz(np.asarray(layer.data, dtype=np.float32))
        spatial = data.shape[:3]
        affine = layer_affine(layer)
        dwi = Dwi.from_array(data, affine, protocol)
        mask_layer = self.mask_combo.layer()
        mask = on_dwi_grid(mask_layer, spatial, "mask")
        if mask is not None:
            mask = np.nan_to_num(mask.astype(np.float64)) != 0
            if not mask.any():
                raise ValueError(f"The mask layer '{mask_layer.name}' is empty.")
        labels_layer = self.labels_combo.layer()
        labels = on_dwi_grid(labels_layer, spatial, "labels")
        uncertainty = self.uncertainty_check.isChecked() and self.uncertainty_check.isEnabled()
        return dict(layer=layer, bundle=bundle, dwi=dwi, mask=mask, labels=labels, labels_layer=labels_layer,
                    affine=affine, device=self.device_combo.currentText(), uncertainty=uncertainty,
                    with_nlls=self.nlls_check.isChecked())

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
                               run["uncertainty"], run["with_nlls"], self._relay.value.emit, self.stop_event,
                               _start_thread=False, _ignore_errors=True)  # errors go to _failed (dock + notification)
        worker.returned.connect(self._done)
        worker.errored.connect(self._failed)
        worker.finished.connect(self._finished)
        self._run = run
        self.worker = worker
        self._update_buttons()
        self.progress.setValue(0)
        self.message.info("computing maps" + (" and the NLLS reference" if run["with_nlls"] else "") + "…")
        worker.start()

    def shutdown(self) -> None:
        """The dock or the viewer is going away: stop the job (prediction at its next chunk, the NLLS fit through
        its stop event) and let go of the worker, so nothing it returns reaches this dock."""
        self.stop_event.set()
        if self.worker is not None:
            release_worker(self)

    def _failed(self, exc) -> None:
        text = f"Computing maps failed: {exc}"
        self.message.error(text)
        show_error(text)

    def _on_progress(self, item) -> None:
        stage, done, total = item
        value = int(round(100 * done / max(total, 1)))
        self.progress.setValue(value)
        self.progress.setFormat(f"{stage}: {done:,} / {total:,} voxels")
        pbar = self._pbar  # set_description may process events (and the finish) before refresh
        if pbar is not None:
            pbar.n = value
            pbar.set_description(f"Computing maps ({stage})")
            pbar.refresh()

    def _finished(self) -> None:
        release_worker(self)  # the worker keeps no reference to this dock
        self._update_buttons()

    def _done(self, out) -> None:
        run = self._run
        if run is None:
            return
        if out.get("stopped"):
            self.message.info("stopped: no maps were added")
            return
        bundle, layer = run["bundle"], run["layer"]
        maps, nlls = out["maps"], out["nlls"]
        self.maps, self.nlls_maps, self.affine = maps, nlls, run["affine"]
        self.sd_spin.blockSignals(True)
        self.sd_spin.setValue(0.0)
        self.sd_spin.blockSignals(False)
        self.map_layers = add_map_layers(self.viewer, maps, nlls, bundle.model, layer, self.affine)
        labels_layer = run["labels_layer"]
        if labels_layer is not None:
            labels_layer.contour = 1
            labels_layer.visible = True
            raise_to_top(self.viewer, labels_layer)
        self.roi_table = None
        self.comparison = None
        notes = [n for n in (self._show_roi_statistics(run, maps), self._show_comparison(run, maps, nlls)) if n]
        self._update_outputs()
        n_maps = sum(1 for k in maps if not k.endswith(SD_SUFFIX))
        text = f"Added {n_maps} {model_label(bundle.model.name)} maps of '{layer.name}'"
        if nlls is not None:
            text += " and the NLLS reference maps (hidden)"
        self.message.ok(text + "." + ("".join(" " + n for n in notes)))
        show_info(text)

    def _show_roi_statistics(self, run: dict, maps: dict) -> str | None:
        """Fill the ROI table when a labels layer was chosen; returns a note when the statistics failed."""
        from napari_rverdict.maps import compare

        labels_layer = run["labels_layer"]
        if run["labels"] is None:
            self.roi_table_widget.setRowCount(0)
            self.roi_table_widget.setColumnCount(0)
            self.roi_caption.setText("choose a lesion labels layer for ROI statistics")
            return None
        try:
            names = (labels_layer.metadata or {}).get("label_names") if labels_layer is not None else None
            self.roi_table = compare.roi_statistics(maps, run["labels"].astype(np.int64), label_names=names,
                                                    mask=run["mask"])  # NaN voxels never count
            fill_table(self.roi_table_widget, self.roi_table)
            self.roi_caption.setText(f"ROI statistics of the network maps per label of '{labels_layer.name}'"
                                     + (" (mean_sd: mean of the voxel sds)" if run["uncertainty"] else ""))
        except (ValueError, KeyError) as exc:
            return f"ROI statistics unavailable: {exc}"
        return None

    def _show_comparison(self, run: dict, maps: dict, nlls: dict | None) -> str | None:
        """Fill the network-vs-NLLS table when NLLS ran; returns a note when the comparison failed."""
        from napari_rverdict.maps import compare

        if nlls is None:
            return None
        bundle, labels_layer = run["bundle"], run["labels_layer"]
        try:
            mask = run["mask"]
            if mask is None:  # the voxels the network estimated: finite (and, in zero-filled maps, non-zero)
                first = np.asarray(maps[bundle.map_names[0]])
                mask = np.isfinite(first) if np.isnan(first).any() else first != 0
            self.comparison = compare.compare_maps(
                {k: v for k, v in maps.items() if not k.endswith(SD_SUFFIX)}, nlls, mask=mask,
                labels=run["labels"], model=bundle.model.name,
                label_names=(labels_layer.metadata or {}).get("label_names") if labels_layer is not None else None)
            fill_table(self.cmp_table_widget, self.comparison)
            self.cmp_caption.setText("Network vs NLLS (reference): MSE and MAPE per map")
        except (ValueError, KeyError) as exc:
            return f"NLLS comparison unavailable: {exc}"
        return None

    # ------------------------------------------------------------------ uncertainty threshold
    def _sd_map_changed(self, *_) -> None:
        name = self.sd_map_combo.currentText()
        if not name or self.maps is None or name + SD_SUFFIX not in self.maps:
            return
        sd = self.maps[name + SD_SUFFIX]
        finite = np.asarray(sd)[np.isfinite(sd)]
        hi = float(finite.max()) if finite.size else 1.0
        self.sd_spin.blockSignals(True)
        self.sd_spin.setSingleStep(max(hi / 50.0, 1e-4))
        self.sd_spin.setValue(0.0)
        self.sd_spin.blockSignals(False)
        spec = map_spec_for(name)
        self.sd_spin.setSuffix(f" {map_unit_text(spec)}" if spec is not None and map_unit_text(spec) else "")
        self._apply_sd_threshold()

    def set_sd_threshold(self, map_name: str, value: float) -> None:
        """Hide the voxels of ``map_name`` whose sd is above ``value`` (0 = show all), as the dock's controls do."""
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
                self.map_layers[other].data = np.ascontiguousarray(layer_to_xyz(self.maps[other]))
        value = float(self.sd_spin.value())
        full = self.maps[name]
        with np.errstate(invalid="ignore"):  # NaN sd (outside the mask) stays NaN: hidden either way
            shown = full if value <= 0 else np.where(self.maps[name + SD_SUFFIX] > value, np.nan, full)
        layer = self.map_layers[name]
        layer.data = np.ascontiguousarray(layer_to_xyz(shown.astype(np.float32)))
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
        self.session.bundle = bundle
        self.session.bundle_path = str(path)
        self.message.ok(f"Loaded {Path(path).name}: {bundle.describe().splitlines()[0]}")
        return bundle

    def _csv_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export ROI statistics", "roi_statistics.csv", "CSV (*.csv)")
        if path:
            self.export_csv(path)

    def export_csv(self, path) -> Path | None:
        """Write the ROI statistics table (and, beside it, ``<stem>_vs_nlls.csv`` when NLLS ran)."""
        if self.roi_table is None:
            self._fail("No ROI statistics yet: compute maps with a lesion labels layer chosen.")
            return None
        path = Path(path)
        try:
            self.roi_table.to_csv(path)
            if self.comparison is not None:
                self.comparison.to_csv(path.with_name(path.stem + "_vs_nlls.csv"))
        except OSError as exc:
            self._fail(f"Could not write {path}: {exc}")
            return None
        self.message.ok(f"Wrote {path}")
        return path

    def _export_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Export maps to a folder")
        if path:
            self.export_maps(path)

    def export_maps(self, directory) -> list[Path]:
        """Write every map (sd maps and NLLS maps too) as NIfTI with the DWI's affine; returns the paths."""
        from napari_rverdict.data.nifti import save_map, save_maps

        if self.maps is None:
            self._fail("No maps yet: press Compute maps first.")
            return []
        model = self._run["bundle"].model.name if self._run else None
        try:
            plain = {k: v for k, v in self.maps.items() if not k.endswith(SD_SUFFIX)}
            written = save_maps(plain, directory, self.affine, model=model)
            for key in (k for k in self.maps if k.endswith(SD_SUFFIX)):  # sd maps carry their map's unit
                spec = map_spec_for(key[: -len(SD_SUFFIX)], model)
                written.append(save_map(self.maps[key], Path(directory) / f"{key}.nii.gz", self.affine, key,
                                        spec.unit if spec else ""))
            if self.nlls_maps is not None:
                written += save_maps(self.nlls_maps, directory, self.affine, model=model, prefix="nlls_")
        except (OSError, ValueError) as exc:
            self._fail(f"Could not export the maps: {exc}")
            return []
        self.message.ok(f"Wrote {len(written)} NIfTI maps to {directory}")
        return written

