"""The Maps dock's widgets and their layout, one small function per section; no behaviour here.

Top to bottom: DWI layer and its protocol (the layer's own, the INNOVATE preset, or a file), mask, lesion labels,
model, method (``dock.method_combo``: "network", "NLLS", "self-supervised"; a method added to
:data:`~napari_rverdict._napari.maps_dock.job.METHODS` is listed here) with the self-supervised model and epochs
(shown for that method only), uncertainty, device, *Compute maps* and *Stop*, then sections: the self-supervised
loss curve, uncertainty threshold, ROI statistics, network vs NLLS, exports. The content scrolls.
"""

from __future__ import annotations

import napari
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from napari_rverdict._napari._common import (
    LayerCombo,
    add_run_row,
    collapsible,
    compact,
    hint,
    scroll_layout,
)
from napari_rverdict._napari.loss_plot import LossPlot
from napari_rverdict._napari.maps_dock.job import METHODS
from napari_rverdict._napari.state import model_label

AUTO_MASK = "(automatic: Otsu threshold of the mean b = 0)"
NO_LABELS = "(none)"
LAYER_PROTOCOL = "the layer's own (its sidecar)"
PRESET_PROTOCOL = "INNOVATE preset"


def is_dwi(layer) -> bool:
    return isinstance(layer, napari.layers.Image) and layer.ndim == 4


def is_3d_volume(layer) -> bool:
    return isinstance(layer, (napari.layers.Labels, napari.layers.Image)) and layer.ndim == 3


def is_labels(layer) -> bool:
    return isinstance(layer, napari.layers.Labels) and layer.ndim == 3


def build(dock) -> None:
    """Create the dock's widgets (as attributes of ``dock``) and lay them out top to bottom."""
    layout = scroll_layout(dock)
    layout.addWidget(hint("Step 3 of 3. Maps of a DWI layer from the current model, as layers over the DWI."))
    layout.addLayout(inputs_section(dock))
    dock.compute_btn, dock.progress, dock.message = add_run_row(
        layout, "Compute maps", "estimate the maps in a background thread; they are added as layers over the DWI")
    stop_beside(dock, layout)
    dock.loss_plot = LossPlot()
    dock.loss_caption = hint("The self-supervised encoder's loss per epoch: on the voxels it trains on and on the "
                             "held-out voxels (validation) that choose the best weights (★).")
    dock.loss_plot.set_ylabel("loss (normalised signal)")  # named by the loss a run uses (feedback.on_progress)
    dock.loss_section = collapsible(layout, "Self-supervised loss", [dock.loss_caption, dock.loss_plot])
    dock.sd_box = sd_section(dock)
    dock.sd_section = collapsible(layout, "Uncertainty threshold", [dock.sd_box])
    tables_section(dock, layout)
    layout.addStretch(1)
    compact(dock)


def inputs_section(dock) -> QFormLayout:
    """DWI layer and protocol, mask and labels layers, the model (with Load…), method, uncertainty and device."""
    from napari_rverdict._napari.train_dock.job import available_devices

    viewer = dock.viewer
    dock.dwi_combo = LayerCombo(viewer, is_dwi)
    dock.dwi_combo.setToolTip("the 4D diffusion-weighted image (volume, z, y, x) to map")
    dock.protocol_combo = QComboBox()
    dock.protocol_combo.addItem(LAYER_PROTOCOL, ("layer", None))
    dock.protocol_combo.addItem(PRESET_PROTOCOL, ("preset", "innovate"))
    dock.protocol_combo.setToolTip("the acquisition of the DWI's volumes: from the .bval / .scheme beside the file, "
                                   "the INNOVATE preset, or a protocol file (File…)")
    dock.protocol_file_btn = QPushButton("File…")
    dock.protocol_file_btn.setToolTip("a Camino .scheme or an FSL .bval (with .bvec and timings beside it)")
    dock.dwi_info = hint("")
    # a long line (what differs from the model) wraps to the dock's width instead of asking for a wider dock
    dock.dwi_info.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    dock.mask_combo = LayerCombo(viewer, is_3d_volume, none_text=AUTO_MASK)
    dock.mask_combo.setToolTip("the voxels to map (non-zero voxels of a 3D layer); outside them the maps are "
                               "empty (transparent)")
    dock.labels_combo = LayerCombo(viewer, is_labels, none_text=NO_LABELS)
    dock.labels_combo.setToolTip("regions (e.g. lesions) for the ROI statistics; drawn as contours")
    dock.model_label = QLabel()
    dock.model_label.setWordWrap(True)
    dock.load_btn = QPushButton("Load…")
    dock.load_btn.setToolTip("load a model bundle (.pt) saved by the Train dock or `rverdict train`")
    dock.method_combo = QComboBox()
    for i, (name, tip) in enumerate(METHODS.items()):
        dock.method_combo.addItem(name)
        dock.method_combo.setItemData(i, tip, 3)  # Qt.ToolTipRole
    dock.method_combo.setToolTip("; ".join(f"{k}: {v}" for k, v in METHODS.items()))
    self_supervised_box(dock)
    dock.uncertainty_check = QCheckBox("with uncertainty (sd maps)")
    dock.device_combo = QComboBox()
    dock.device_combo.addItems(available_devices())
    dock.device_combo.setToolTip("auto: the first CUDA GPU, then Apple MPS, then the CPU")
    form = QFormLayout()
    # a row whose field cannot fit beside its label goes under it: the dock stays as narrow as napari makes it
    # when added from the Plugins menu (≈ 290 px on a 1366 px screen), nothing cut off at the window's edge
    form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
    form.addRow("DWI layer", dock.dwi_combo)
    prow = QHBoxLayout()
    prow.addWidget(dock.protocol_combo, 1)
    prow.addWidget(dock.protocol_file_btn)
    form.addRow("protocol", prow)
    form.addRow(dock.dwi_info)
    form.addRow("mask", dock.mask_combo)
    form.addRow("lesion labels", dock.labels_combo)
    mrow = QHBoxLayout()
    mrow.addWidget(dock.model_label, 1)
    mrow.addWidget(dock.load_btn)
    form.addRow("model", mrow)
    form.addRow("method", dock.method_combo)
    form.addRow(dock.ss_box)
    form.addRow(dock.uncertainty_check)
    form.addRow("device", dock.device_combo)
    return form


def self_supervised_box(dock) -> None:
    """``dock.ss_box`` (shown only for the self-supervised method): its model (classic VERDICT / rVERDICT) and
    the most epochs. The default epochs is the library's: early stopping on held-out voxels ends the training
    (≈ 75–95 epochs on the phantom's gland), so the cap is not sized to the device."""
    import inspect

    from napari_rverdict.maps.self_supervised import fit_self_supervised

    dock.ss_model_combo = QComboBox()
    for name in ("rverdict", "verdict"):
        dock.ss_model_combo.addItem(model_label(name), name)
    dock.ss_model_combo.setToolTip("the signal model the encoder estimates (its decoder); default: the loaded "
                                   "model's, else rVERDICT (needs TE / TR in the protocol)")
    dock.epochs_spin = QSpinBox()
    dock.epochs_spin.setRange(1, 100_000)
    dock.epochs_spin.setValue(int(inspect.signature(fit_self_supervised).parameters["epochs"].default))
    dock.epochs_spin.setToolTip("the most epochs; training stops earlier when the held-out voxels' loss has not "
                                "improved for 10 epochs (Stop also ends it and keeps the best weights)")
    dock.ss_box = QWidget()
    box = QFormLayout(dock.ss_box)
    box.setContentsMargins(0, 0, 0, 0)
    box.addRow("fit model", dock.ss_model_combo)
    box.addRow("max epochs", dock.epochs_spin)
    dock.ss_box.setVisible(False)


def stop_beside(dock, layout: QVBoxLayout) -> None:
    """``dock.stop_btn`` beside *Compute maps*."""
    dock.stop_btn = QPushButton("Stop")
    dock.stop_btn.setToolTip("stop the computation: network and NLLS add nothing; self-supervised ends its "
                             "training and adds the maps of its best weights so far")
    dock.stop_btn.setEnabled(False)
    idx = layout.indexOf(dock.compute_btn)
    layout.removeWidget(dock.compute_btn)
    row = QHBoxLayout()
    row.addWidget(dock.compute_btn, 1)
    row.addWidget(dock.stop_btn)
    layout.insertLayout(idx, row)


def sd_section(dock) -> QWidget:
    """The uncertainty threshold (shown only when the maps have sd maps): a map and 'hide sd >' a value."""
    dock.sd_map_combo = QComboBox()
    dock.sd_map_combo.setToolTip("the map whose uncertain voxels are hidden")
    dock.sd_spin = QDoubleSpinBox()
    dock.sd_spin.setDecimals(4)
    dock.sd_spin.setRange(0.0, 1e9)
    dock.sd_spin.setSpecialValueText("off")
    dock.sd_spin.setToolTip("voxels whose sd is above this value are hidden in the map layer; 0 = off")
    sd_row = QHBoxLayout()  # the map, then its threshold below: side by side they are wider than the dock
    sd_row.addWidget(QLabel("hide sd >"))
    sd_row.addWidget(dock.sd_spin, 1)
    box = QWidget()
    sd_layout = QVBoxLayout(box)
    sd_layout.setContentsMargins(0, 0, 0, 0)
    sd_layout.addWidget(dock.sd_map_combo)
    sd_layout.addLayout(sd_row)
    return box


def _read_only_table() -> QTableWidget:
    table = QTableWidget(0, 0)
    table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    return table


def tables_section(dock, layout: QVBoxLayout) -> None:
    """ROI statistics and network-vs-NLLS tables (sections) with their captions; Export ROI CSV and maps."""
    dock.roi_table_widget = _read_only_table()
    dock.roi_caption = hint("")
    dock.csv_btn = QPushButton("Export ROI CSV…")
    dock.csv_btn.setToolTip("the ROI statistics (one row per region and map: n, mean, sd, median) as CSV")
    dock.roi_section = collapsible(layout, "ROI statistics", [dock.roi_caption, dock.roi_table_widget])
    dock.cmp_table_widget = _read_only_table()
    dock.cmp_caption = hint("")
    dock.cmp_section = collapsible(layout, "Network vs NLLS", [dock.cmp_caption, dock.cmp_table_widget])
    dock.export_btn = QPushButton("Export maps…")
    dock.export_btn.setToolTip("NIfTI files: write every map (true units, the DWI's affine) to a folder, named "
                               "after the DWI")
    buttons = QHBoxLayout()
    buttons.addWidget(dock.csv_btn)
    buttons.addWidget(dock.export_btn)
    layout.addLayout(buttons)
