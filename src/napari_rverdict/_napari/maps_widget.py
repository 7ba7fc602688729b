"""Dock 3 — Maps: a trained model (and optionally the NLLS reference) applied to a DWI layer.

"Compute maps" calls the same :func:`napari_rverdict.maps.voxels.predict_volume` (and :func:`napari_rverdict.maps.nlls.
fit_volume`) the CLI calls, in a napari worker; the layers are added on the GUI thread when the worker returns, so
a failure changes nothing. Map layers take the DWI layer's spatial scale and translate, so map, DWI slice and
lesion contours line up. Tables: ROI statistics per label per map (:func:`napari_rverdict.maps.compare.roi_statistics`)
and, when NLLS ran, network vs NLLS (:func:`napari_rverdict.maps.compare.compare_maps`).
"""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_rverdict._napari._common import LayerCombo, LifetimeGuard, Message, Relay, hint, release_worker, separator
from napari_rverdict._napari.reader import layer_protocol, layer_to_xyz, map_layer_name, map_spec_for, map_unit_text
from napari_rverdict._napari.state import get_state, model_label

AUTO_MASK = "(automatic: Otsu threshold of the mean b = 0)"
NO_LABELS = "(none)"
SD_SUFFIX = "_sd"


def _is_dwi(layer) -> bool:
    return isinstance(layer, napari.layers.Image) and layer.ndim == 4


def _is_3d_volume(layer) -> bool:
    return isinstance(layer, (napari.layers.Labels, napari.layers.Image)) and layer.ndim == 3


def _is_labels(layer) -> bool:
    return isinstance(layer, napari.layers.Labels) and layer.ndim == 3


def layer_affine(layer) -> np.ndarray:
    """The NIfTI affine of a layer: ``metadata['affine']``, else one built from its spatial scale / translate."""
    from napari_rverdict._napari.writer import affine_from_meta

    return affine_from_meta({"metadata": layer.metadata, "scale": list(layer.scale),
                             "translate": list(layer.translate)})


def _table_rows(table) -> list[dict]:
    rows = getattr(table, "rows", table)
    return [dict(r) for r in (rows or [])]


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "–"
        return f"{v:.4g}"
    return str(v)


def fill_table(widget: QTableWidget, table) -> None:
    """Show a compare table (``.rows`` dicts, ``.columns``) in a read-only QTableWidget; all-empty columns and
    provenance columns are left out."""
    rows = _table_rows(table)
    columns = list(getattr(table, "columns", ()) or dict.fromkeys(k for r in rows for k in r))
    columns = [c for c in columns if c not in ("range_source", "label") and any(r.get(c) is not None for r in rows)]
    widget.clear()
    widget.setColumnCount(len(columns))
    widget.setRowCount(len(rows))
    widget.setHorizontalHeaderLabels(columns)
    for i, r in enumerate(rows):
        for j, c in enumerate(columns):
            widget.setItem(i, j, QTableWidgetItem(_fmt(r.get(c, ""))))
    widget.resizeColumnsToContents()


def compute_job(bundle, dwi, mask, device, uncertainty, with_nlls, progress):
    """The worker: network maps (and NLLS maps); reports ``progress((stage, done, total))``. No layers here."""
    from napari_rverdict.maps.predict import predict_volume

    out = {"maps": None, "nlls": None, "nlls_error": None}
    out["maps"] = predict_volume(bundle, dwi, mask=mask, uncertainty=uncertainty, device=device,
                                 progress=lambda d, t: progress(("network", d, t)))
    if with_nlls:
        from napari_rverdict.maps.nlls import fit_volume

        out["nlls"] = fit_volume(bundle.model, dwi, protocol=None, mask=mask, device=device, init=bundle,
                                 progress=lambda d, t: progress(("NLLS", d, t)))
    return out


def _on_dwi_grid(layer, spatial: tuple, what: str):
    """A 3D layer's data as (x, y, z), refused unless it has the DWI's spatial shape; None when no layer."""
    if layer is None:
        return None
    data = layer_to_xyz(np.asarray(layer.data))
    if data.shape != spatial:
        raise ValueError(f"The {what} layer '{layer.name}' has shape {data.shape[::-1]} (z, y, x) but the "
                         f"DWI's is {spatial[::-1]}.")
    return data


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

        self.dwi_combo = LayerCombo(napari_viewer, _is_dwi)
        self.dwi_info = hint("")
        self.mask_combo = LayerCombo(napari_viewer, _is_3d_volume, none_text=AUTO_MASK)
        self.labels_combo = LayerCombo(napari_viewer, _is_labels, none_text=NO_LABELS)
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        self.load_btn = QPushButton("Load…")
        self.load_btn.setToolTip("load a model bundle (.pt) saved by the Train dock or `rverdict train`")
        self.nlls_check = QCheckBox("also fit NLLS (reference; slow on large masks)")
        self.uncertainty_check = QCheckBox("with uncertainty (sd maps)")
        from napari_rverdict._napari.train_widget import available_devices

        self.device_combo = QComboBox()
        self.device_combo.addItems(available_devices())
        self.compute_btn = QPushButton("Compute maps")
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.message = Message()
        self.sd_map_combo = QComboBox()
        self.sd_spin = QDoubleSpinBox()
        self.sd_spin.setDecimals(4)
        self.sd_spin.setRange(0.0, 1e9)
        self.sd_spin.setSpecialValueText("off")
        self.sd_spin.setToolTip("voxels whose sd is above this value are hidden (NaN) in the map layer; 0 = off")
        self.roi_table_widget = QTableWidget(0, 0)
        self.roi_table_widget.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.roi_table_widget.verticalHeader().setVisible(False)
        self.roi_table_widget.setMinimumHeight(140)
        self.roi_caption = hint("")
        self.csv_btn = QPushButton("Export ROI CSV…")
        self.cmp_table_widget = QTableWidget(0, 0)
        self.cmp_table_widget.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.cmp_table_widget.verticalHeader().setVisible(False)
        self.cmp_caption = hint("")
        self.export_btn = QPushButton("Export maps (NIfTI)…")

        form = QFormLayout()
        form.addRow("DWI layer", self.dwi_combo)
        form.addRow("", self.dwi_info)
        form.addRow("mask", self.mask_combo)
        form.addRow("lesion labels", self.labels_combo)
        mrow = QHBoxLayout()
        mrow.addWidget(self.model_label, 1)
        mrow.addWidget(self.load_btn)
        form.addRow("model", mrow)
        form.addRow("", self.nlls_check)
        form.addRow("", self.uncertainty_check)
        form.addRow("device", self.device_combo)
        sd_row = QHBoxLayout()
        sd_row.addWidget(self.sd_map_combo, 1)
        sd_row.addWidget(QLabel("hide sd >"))
        sd_row.addWidget(self.sd_spin)
        layout = QVBoxLayout(self)
        layout.addWidget(hint("Step 3 of 3. Apply the trained (or loaded) network to a DWI layer; the maps are "
                              "added as layers aligned with the DWI, lesion labels drawn as contours."))
        layout.addLayout(form)
        layout.addWidget(self.compute_btn)
        layout.addWidget(self.progress)
        layout.addWidget(self.message)
        layout.addWidget(separator())
        self.sd_box = QWidget()
        sd_layout = QVBoxLayout(self.sd_box)
        sd_layout.setContentsMargins(0, 0, 0, 0)
        sd_layout.addWidget(hint("Uncertainty threshold: dim the voxels of a map whose sd is above a value."))
        sd_layout.addLayout(sd_row)
        layout.addWidget(self.sd_box)
        layout.addWidget(self.roi_caption)
        layout.addWidget(self.roi_table_widget)
        layout.addWidget(self.cmp_caption)
        layout.addWidget(self.cmp_table_widget)
        buttons = QHBoxLayout()
        buttons.addWidget(self.csv_btn)
        buttons.addWidget(self.export_btn)
        layout.addLayout(buttons)

        self.dwi_combo.currentIndexChanged.connect(self._dwi_changed)
        self.load_btn.clicked.connect(self._load_dialog)
        self.compute_btn.clicked.connect(self.compute)
        self.csv_btn.clicked.connect(self._csv_dialog)
        self.export_btn.clicked.connect(self._export_dialog)
        self.sd_map_combo.currentIndexChanged.connect(self._sd_map_changed)
        self.sd_spin.valueChanged.connect(self._apply_sd_threshold)
        self.session.bundle_changed.connect(self._bundle_changed)
        self._guard = LifetimeGuard(self, self.shutdown)
        self._bundle_changed(self.session.bundle)
        self._dwi_changed()
        self._update_outputs()

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
        has_unc = bool(getattr(bundle, "has_uncertainty", False))
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
        mask = _on_dwi_grid(mask_layer, spatial, "mask")
        if mask is not None:
            mask = np.nan_to_num(mask.astype(np.float64)) != 0
            if not mask.any():
                raise ValueError(f"The mask layer '{mask_layer.name}' is empty.")
        labels_layer = self.labels_combo.layer()
        labels = _on_dwi_grid(labels_layer, spatial, "labels")
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
        worker = create_worker(compute_job, run["bundle"], run["dwi"], run["mask"], run["device"],
                               run["uncertainty"], run["with_nlls"], self._relay.value.emit, _start_thread=False,
                               _ignore_errors=True)  # errors go to _failed (dock + notification)
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
        """The dock or the viewer is going away: ask the worker to quit (prediction ends at its next chunk)."""
        if self.worker is not None:
            try:
                self.worker.quit()
            except RuntimeError:
                pass

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
        bundle, layer = run["bundle"], run["layer"]
        maps, nlls = out["maps"], out["nlls"]
        self.maps, self.nlls_maps, self.affine = maps, nlls, run["affine"]
        self.sd_spin.blockSignals(True)
        self.sd_spin.setValue(0.0)
        self.sd_spin.blockSignals(False)
        self._add_map_layers(maps, nlls, bundle.model, layer)
        labels_layer = run["labels_layer"]
        notes = []
        if labels_layer is not None:
            labels_layer.contour = 1
            labels_layer.visible = True
            self._raise_to_top(labels_layer)
        self.roi_table = None
        self.comparison = None
        from napari_rverdict.maps import compare

        if run["labels"] is not None:
            try:
                names = (labels_layer.metadata or {}).get("label_names") if labels_layer is not None else None
                self.roi_table = compare.roi_statistics(maps, run["labels"].astype(np.int64), label_names=names)
                fill_table(self.roi_table_widget, self.roi_table)
                self.roi_caption.setText(f"ROI statistics of the network maps per label of '{labels_layer.name}'"
                                         + (" (mean_sd: mean of the voxel sds)" if run["uncertainty"] else ""))
            except (ValueError, KeyError) as exc:
                notes.append(f"ROI statistics unavailable: {exc}")
        else:
            self.roi_table_widget.setRowCount(0)
            self.roi_table_widget.setColumnCount(0)
            self.roi_caption.setText("choose a lesion labels layer for ROI statistics")
        if nlls is not None:
            try:
                mask = run["mask"]
                if mask is None:
                    mask = np.asarray(maps[bundle.map_names[0]]) != 0  # the voxels the network estimated
                self.comparison = compare.compare_maps(
                    {k: v for k, v in maps.items() if not k.endswith(SD_SUFFIX)}, nlls, mask=mask,
                    labels=run["labels"], model=bundle.model.name,
                    label_names=(labels_layer.metadata or {}).get("label_names") if labels_layer is not None else None)
                fill_table(self.cmp_table_widget, self.comparison)
                self.cmp_caption.setText("Network vs NLLS (reference): MSE and MAPE per map")
            except (ValueError, KeyError) as exc:
                notes.append(f"NLLS comparison unavailable: {exc}")
        self._update_outputs()
        n_maps = sum(1 for k in maps if not k.endswith(SD_SUFFIX))
        text = f"Added {n_maps} {model_label(bundle.model.name)} maps of '{layer.name}'"
        if nlls is not None:
            text += " and the NLLS reference maps (hidden)"
        self.message.ok(text + "." + ("".join(" " + n for n in notes)))
        show_info(text)

    # ------------------------------------------------------------------ layers
    def _raise_to_top(self, layer) -> None:
        layers = self.viewer.layers
        idx = list(layers).index(layer)
        if idx != len(layers) - 1:
            layers.move(idx, len(layers))

    def _put_layer(self, name: str, data_zyx, kwargs: dict):
        """Replace the data of an earlier map layer of the same name, or add a new layer."""
        layers = self.viewer.layers
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
        return self.viewer.add_image(data_zyx, name=name, **{k: v for k, v in kwargs.items()})

    def _add_map_layers(self, maps: dict, nlls: dict | None, model, dwi_layer) -> None:
        scale = tuple(float(s) for s in dwi_layer.scale[-3:])
        translate = tuple(float(t) for t in dwi_layer.translate[-3:])
        affine = self.affine
        self.map_layers = {}
        first = True
        ordered = [k for k in model.map_names if k in maps] + \
            [k for k in maps if k not in model.map_names and not k.endswith(SD_SUFFIX)]
        for name in ordered:
            spec = map_spec_for(name, model.name)
            data = np.ascontiguousarray(layer_to_xyz(maps[name]))
            meta = {"affine": affine, "map_name": name, "unit": spec.unit if spec else "", "rverdict_map": True,
                    "display": tuple(spec.display) if spec else None, "source_layer": dwi_layer.name}
            lname = map_layer_name(spec) if spec else name
            kwargs = dict(scale=scale, translate=translate, metadata=meta, visible=first, opacity=0.9,
                          colormap=spec.colormap if spec else "viridis",
                          contrast_limits=tuple(spec.display) if spec else _auto_limits(data))
            self.map_layers[name] = self._put_layer(lname, data, kwargs)
            first = False
            sd_key = name + SD_SUFFIX
            if sd_key in maps:
                sd = np.ascontiguousarray(layer_to_xyz(maps[sd_key]))
                sd_meta = dict(meta, map_name=sd_key, display=None)
                sd_name = map_layer_name(spec, suffix=" sd") if spec else sd_key
                sd_kwargs = dict(kwargs, metadata=sd_meta, visible=False, colormap="gray",
                                 contrast_limits=_auto_limits(sd))
                self.map_layers[sd_key] = self._put_layer(sd_name, sd, sd_kwargs)
        if nlls is not None:
            for name in [k for k in model.map_names if k in nlls]:
                spec = map_spec_for(name, model.name)
                data = np.ascontiguousarray(layer_to_xyz(nlls[name]))
                meta = {"affine": affine, "map_name": name, "unit": spec.unit, "rverdict_map": True,
                        "display": tuple(spec.display), "source_layer": dwi_layer.name, "method": "NLLS"}
                self._put_layer(map_layer_name(spec, prefix="NLLS "), data,
                                dict(scale=scale, translate=translate, metadata=meta, visible=False, opacity=0.9,
                                     colormap=spec.colormap, contrast_limits=tuple(spec.display)))

    # ------------------------------------------------------------------ uncertainty threshold
    def _sd_map_changed(self, *_) -> None:
        name = self.sd_map_combo.currentText()
        if not name or self.maps is None or name + SD_SUFFIX not in self.maps:
            return
        sd = self.maps[name + SD_SUFFIX]
        hi = float(np.nanmax(sd)) if sd.size else 1.0
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


def _auto_limits(data) -> tuple[float, float]:
    finite = np.asarray(data)[np.isfinite(data)]
    finite = finite[finite != 0]
    if finite.size == 0:
        return (0.0, 1.0)
    hi = float(np.percentile(finite, 99))
    return (0.0, hi if hi > 0 else 1.0)
