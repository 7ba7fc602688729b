"""The Maps dock's widgets and their layout, one small function per section; no behaviour here."""

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
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from napari_rverdict._napari._common import LayerCombo, add_run_row, hint, separator

AUTO_MASK = "(automatic: Otsu threshold of the mean b = 0)"
NO_LABELS = "(none)"


def is_dwi(layer) -> bool:
    return isinstance(layer, napari.layers.Image) and layer.ndim == 4


def is_3d_volume(layer) -> bool:
    return isinstance(layer, (napari.layers.Labels, napari.layers.Image)) and layer.ndim == 3


def is_labels(layer) -> bool:
    return isinstance(layer, napari.layers.Labels) and layer.ndim == 3


def build(dock) -> None:
    """Create the dock's widgets (as attributes of ``dock``) and lay them out top to bottom."""
    layout = QVBoxLayout(dock)
    layout.addWidget(hint("Step 3 of 3. Apply the trained (or loaded) network to a DWI layer; the maps are "
                          "added as layers aligned with the DWI, lesion labels drawn as contours."))
    layout.addLayout(inputs_section(dock))
    run_section(dock, layout)
    layout.addWidget(separator())
    dock.sd_box = sd_section(dock)
    layout.addWidget(dock.sd_box)
    tables_section(dock, layout)


def inputs_section(dock) -> QFormLayout:
    """DWI, mask and labels layers, the model (with Load…), NLLS, uncertainty and device."""
    from napari_rverdict._napari.train_dock.job import available_devices

    viewer = dock.viewer
    dock.dwi_combo = LayerCombo(viewer, is_dwi)
    dock.dwi_info = hint("")
    dock.mask_combo = LayerCombo(viewer, is_3d_volume, none_text=AUTO_MASK)
    dock.labels_combo = LayerCombo(viewer, is_labels, none_text=NO_LABELS)
    dock.model_label = QLabel()
    dock.model_label.setWordWrap(True)
    dock.load_btn = QPushButton("Load…")
    dock.load_btn.setToolTip("load a model bundle (.pt) saved by the Train dock or `rverdict train`")
    dock.nlls_check = QCheckBox("also fit NLLS (reference; slow on large masks)")
    dock.uncertainty_check = QCheckBox("with uncertainty (sd maps)")
    dock.device_combo = QComboBox()
    dock.device_combo.addItems(available_devices())
    form = QFormLayout()
    form.addRow("DWI layer", dock.dwi_combo)
    form.addRow("", dock.dwi_info)
    form.addRow("mask", dock.mask_combo)
    form.addRow("lesion labels", dock.labels_combo)
    mrow = QHBoxLayout()
    mrow.addWidget(dock.model_label, 1)
    mrow.addWidget(dock.load_btn)
    form.addRow("model", mrow)
    form.addRow("", dock.nlls_check)
    form.addRow("", dock.uncertainty_check)
    form.addRow("device", dock.device_combo)
    return form


def run_section(dock, layout: QVBoxLayout) -> None:
    """Compute button, progress bar and message line."""
    dock.compute_btn, dock.progress, dock.message = add_run_row(layout, "Compute maps")


def sd_section(dock) -> QWidget:
    """The uncertainty threshold (shown only when the maps have sd maps): a map and 'hide sd >' a value."""
    dock.sd_map_combo = QComboBox()
    dock.sd_spin = QDoubleSpinBox()
    dock.sd_spin.setDecimals(4)
    dock.sd_spin.setRange(0.0, 1e9)
    dock.sd_spin.setSpecialValueText("off")
    dock.sd_spin.setToolTip("voxels whose sd is above this value are hidden (NaN) in the map layer; 0 = off")
    sd_row = QHBoxLayout()
    sd_row.addWidget(dock.sd_map_combo, 1)
    sd_row.addWidget(QLabel("hide sd >"))
    sd_row.addWidget(dock.sd_spin)
    box = QWidget()
    sd_layout = QVBoxLayout(box)
    sd_layout.setContentsMargins(0, 0, 0, 0)
    sd_layout.addWidget(hint("Uncertainty threshold: dim the voxels of a map whose sd is above a value."))
    sd_layout.addLayout(sd_row)
    return box


def _read_only_table() -> QTableWidget:
    table = QTableWidget(0, 0)
    table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    return table


def tables_section(dock, layout: QVBoxLayout) -> None:
    """ROI statistics and network-vs-NLLS tables with their captions; Export ROI CSV and Export maps."""
    dock.roi_table_widget = _read_only_table()
    dock.roi_table_widget.setMinimumHeight(140)
    dock.roi_caption = hint("")
    dock.csv_btn = QPushButton("Export ROI CSV…")
    dock.cmp_table_widget = _read_only_table()
    dock.cmp_caption = hint("")
    dock.export_btn = QPushButton("Export maps (NIfTI)…")
    layout.addWidget(dock.roi_caption)
    layout.addWidget(dock.roi_table_widget)
    layout.addWidget(dock.cmp_caption)
    layout.addWidget(dock.cmp_table_widget)
    buttons = QHBoxLayout()
    buttons.addWidget(dock.csv_btn)
    buttons.addWidget(dock.export_btn)
    layout.addLayout(buttons)
