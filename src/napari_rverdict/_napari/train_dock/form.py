"""The Train dock's widgets and their layout, one small function per section; no behaviour here."""

from __future__ import annotations

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QVBoxLayout,
)

from napari_rverdict._napari._common import Message, hint, separator
from napari_rverdict._napari.loss_plot import LossPlot
from napari_rverdict._napari.train_dock.job import available_devices

NETWORKS = (("mlp", "MLP (model 1)"), ("resnetreg", "ResNetReg (model 2)"),
            ("resnetreg-st", "ResNetReg + soft-thresholding (model 3)"))


def build(dock) -> None:
    """Create the dock's widgets (as attributes of ``dock``) and lay them out top to bottom."""
    layout = QVBoxLayout(dock)
    layout.addWidget(hint("Step 2 of 3. Train a network on the signals from the Simulate dock (or load a "
                          "saved bundle). Stop keeps the best and the last weights."))
    dock.data_label = QLabel()
    dock.data_label.setWordWrap(True)
    layout.addWidget(dock.data_label)
    form = QFormLayout()
    network_rows(dock, form)
    optimiser_rows(dock, form)
    layout.addLayout(form)
    progress_section(dock, layout)
    layout.addWidget(separator())
    results_section(dock, layout)


def _spin(low: int, high: int, value: int = 0, special: str | None = None) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    if value:
        spin.setValue(value)
    if special is not None:
        spin.setSpecialValueText(special)
    return spin


def network_rows(dock, form: QFormLayout) -> None:
    """Network, depth and width (0 = the paper's default) and a line naming the defaults."""
    dock.net_combo = QComboBox()
    for key, text in NETWORKS:
        dock.net_combo.addItem(text, key)
    dock.depth_spin = _spin(0, 200, special="default")
    dock.width_spin = _spin(0, 4096, special="default")
    dock.defaults_label = hint("")
    form.addRow("network", dock.net_combo)
    dw = QHBoxLayout()
    dw.addWidget(QLabel("depth"))
    dw.addWidget(dock.depth_spin)
    dw.addWidget(QLabel("width"))
    dw.addWidget(dock.width_spin)
    form.addRow("", dw)
    form.addRow("", dock.defaults_label)


def optimiser_rows(dock, form: QFormLayout) -> None:
    """Epochs, batch size, learning rate, early stopping, scheduler, device, seed and uncertainty."""
    dock.epochs_spin = _spin(1, 100_000, 100)
    dock.batch_spin = _spin(2, 1_000_000, 100)
    dock.lr_spin = QDoubleSpinBox()
    dock.lr_spin.setDecimals(6)
    dock.lr_spin.setRange(1e-6, 1.0)
    dock.lr_spin.setSingleStep(1e-4)
    dock.lr_spin.setValue(1e-3)
    dock.patience_spin = _spin(0, 10_000, 20, special="off")
    dock.scheduler_check = QCheckBox("halve lr on plateau")
    dock.uncertainty_check = QCheckBox("uncertainty (also learn a per-voxel sd)")
    dock.device_combo = QComboBox()
    dock.device_combo.addItems(available_devices())
    dock.seed_spin = _spin(0, 2**31 - 1)
    form.addRow("epochs", dock.epochs_spin)
    form.addRow("batch size", dock.batch_spin)
    form.addRow("learning rate", dock.lr_spin)
    pr = QHBoxLayout()
    pr.addWidget(dock.patience_spin)
    pr.addWidget(dock.scheduler_check)
    form.addRow("early-stop patience", pr)
    form.addRow("device", dock.device_combo)
    form.addRow("seed", dock.seed_spin)
    form.addRow("", dock.uncertainty_check)


def progress_section(dock, layout: QVBoxLayout) -> None:
    """Start / Stop, epoch and batch bars, elapsed / ETA line, message line and the loss plot."""
    dock.start_btn = QPushButton("Start training")
    dock.stop_btn = QPushButton("Stop")
    dock.epoch_bar = QProgressBar()
    dock.epoch_bar.setFormat("epoch %v / %m")
    dock.batch_bar = QProgressBar()
    dock.batch_bar.setFormat("batch %v / %m")
    dock.eta_label = QLabel("")
    dock.message = Message()
    dock.plot = LossPlot()
    buttons = QHBoxLayout()
    buttons.addWidget(dock.start_btn)
    buttons.addWidget(dock.stop_btn)
    layout.addLayout(buttons)
    for w in (dock.epoch_bar, dock.batch_bar, dock.eta_label, dock.message, dock.plot):
        layout.addWidget(w)


def results_section(dock, layout: QVBoxLayout) -> None:
    """The validation table with its caption, Save / Load bundle and the current model's line."""
    dock.table = QTableWidget(0, 4)
    dock.table.setHorizontalHeaderLabels(["parameter", "RMSE", "MAPE (% range)", "√CRLB"])
    dock.table.verticalHeader().setVisible(False)
    dock.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    dock.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    dock.table.setMinimumHeight(150)
    dock.table_caption = hint("")
    dock.save_btn = QPushButton("Save bundle…")
    dock.load_btn = QPushButton("Load bundle…")
    dock.bundle_label = hint("")
    io = QHBoxLayout()
    io.addWidget(dock.save_btn)
    io.addWidget(dock.load_btn)
    layout.addWidget(dock.table_caption)
    layout.addWidget(dock.table)
    layout.addLayout(io)
    layout.addWidget(dock.bundle_label)
