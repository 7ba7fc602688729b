"""The Train dock's widgets and their layout, one small function per section; no behaviour here.

Top to bottom: the training signals' line, network / epochs / device / uncertainty / fine-tune, *Start* / *Stop*
with the epoch and batch bars, then sections: advanced settings (collapsed), loss curves, validation table, and
*Save* / *Load bundle*. The content scrolls (:func:`~napari_rverdict._napari._common.scroll_layout`).
"""

from __future__ import annotations

from qtpy.QtCore import Qt
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

from napari_rverdict._napari._common import (
    Message,
    collapsible,
    compact,
    device_preset,
    hint,
    scroll_layout,
)
from napari_rverdict._napari.loss_plot import LossPlot
from napari_rverdict._napari.train_dock.job import available_devices

PAPER = "Valindria et al., ISBI 2021"
NETWORKS = (("mlp", "MLP"), ("resnetreg", "ResNetReg"), ("resnetreg-st", "ResNetReg + soft-threshold"))
NETWORK_TIPS = {
    "mlp": f"multilayer perceptron: fully connected layers (model 1 in {PAPER})",
    "resnetreg": f"residual regression network: fully connected residual blocks (model 2 in {PAPER})",
    "resnetreg-st": f"ResNetReg with learnt soft-thresholding of the features, a denoising step "
                    f"(model 3 in {PAPER})",
}
CRLB_HEADER = "best unbiased\nSD (√CRLB)"
CRLB_TIP = ("√CRLB, the Cramér–Rao lower bound: the smallest SD an unbiased fit (e.g. NLLS) could reach at this "
            "SNR, median over the test signals. A network uses the training prior and is biased, so its RMSE can "
            "lie far below √CRLB where the data say little about a parameter; a large √CRLB means the protocol "
            "barely informs that parameter.")
TABLE_COLUMNS = ("parameter [unit]", "RMSE", "MAPE\n(% range)", CRLB_HEADER)
TABLE_TIPS = ("the network's estimate of this parameter", "root mean squared error against the truth, in the "
              "parameter's unit", "mean absolute error as a percentage of the parameter's training range",
              CRLB_TIP)


def build(dock) -> None:
    """Create the dock's widgets (as attributes of ``dock``) and lay them out top to bottom."""
    layout = scroll_layout(dock)
    dock.data_label = hint("")
    layout.addWidget(dock.data_label)
    form = QFormLayout()
    network_rows(dock, form)
    main_rows(dock, form)
    layout.addLayout(form)
    progress_section(dock, layout)
    advanced = QFormLayout()
    size_rows(dock, advanced)
    optimiser_rows(dock, advanced)
    dock.advanced_section = collapsible(layout, "Advanced: size, batch, learning rate, seed", [advanced])
    dock.plot = LossPlot()
    dock.plot_section = collapsible(layout, "Loss curves", [dock.plot], expanded=True)
    results_section(dock, layout)
    layout.addStretch(1)
    compact(dock)


def _spin(low: int, high: int, value: int = 0, special: str | None = None, tip: str = "") -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    if value:
        spin.setValue(value)
    if special is not None:
        spin.setSpecialValueText(special)
    spin.setToolTip(tip)
    return spin


def network_rows(dock, form: QFormLayout) -> None:
    """The network (MLP, ResNetReg, ResNetReg + soft-threshold; the paper's model number in the tooltip)."""
    dock.net_combo = QComboBox()
    for i, (key, text) in enumerate(NETWORKS):
        dock.net_combo.addItem(text, key)
        dock.net_combo.setItemData(i, NETWORK_TIPS[key], 3)  # Qt.ToolTipRole
    dock.net_combo.setToolTip("the regression network: " + "; ".join(f"{t}: {NETWORK_TIPS[k]}" for k, t in NETWORKS))
    form.addRow("network", dock.net_combo)


def main_rows(dock, form: QFormLayout) -> None:
    """Epochs, device, uncertainty and fine-tuning: the settings most runs change."""
    preset_text, preset = device_preset()
    dock.epochs_spin = _spin(1, 100_000, preset["epochs"], tip="the most passes over the training signals. "
                             + preset_text)
    dock.device_combo = QComboBox()
    dock.device_combo.addItems(available_devices())
    dock.device_combo.setToolTip("auto: the first CUDA GPU, then Apple MPS, then the CPU")
    dock.uncertainty_check = QCheckBox("uncertainty (a per-voxel sd)")
    dock.uncertainty_check.setToolTip("the network also learns a per-voxel sd, calibrated on fresh signals: the "
                                      "Maps dock can then show sd maps")
    dock.finetune_check = QCheckBox("start from the current model (fine-tune)")
    dock.finetune_check.setToolTip("start from the weights of the current (trained or loaded) model instead of "
                                   "random ones: resume or fine-tune it on the Simulate dock's signals. The "
                                   "network, size and uncertainty setting must be the model's")
    form.addRow("epochs", dock.epochs_spin)
    form.addRow("device", dock.device_combo)
    form.addRow("", dock.uncertainty_check)
    form.addRow("", dock.finetune_check)
    dock.preset_hint = hint(preset_text)
    form.addRow(dock.preset_hint)


def size_rows(dock, form: QFormLayout) -> None:
    """Depth and width (0 = the paper's default) and a line naming the defaults."""
    dock.depth_spin = _spin(0, 200, special="default", tip="number of layers / blocks; default = the paper's")
    dock.width_spin = _spin(0, 4096, special="default", tip="units per layer; default = the paper's")
    dock.defaults_label = hint("")
    dw = QHBoxLayout()
    dw.addWidget(QLabel("depth"))
    dw.addWidget(dock.depth_spin)
    dw.addWidget(QLabel("width"))
    dw.addWidget(dock.width_spin)
    form.addRow(dw)
    form.addRow(dock.defaults_label)


def optimiser_rows(dock, form: QFormLayout) -> None:
    """Batch size, learning rate, early stopping, scheduler and seed."""
    _, preset = device_preset()
    dock.batch_spin = _spin(2, 1_000_000, 100, tip="signals per Adam step")
    dock.lr_spin = QDoubleSpinBox()
    dock.lr_spin.setDecimals(6)
    dock.lr_spin.setRange(1e-6, 1.0)
    dock.lr_spin.setSingleStep(1e-4)
    dock.lr_spin.setValue(1e-3)
    dock.lr_spin.setToolTip("Adam learning rate")
    dock.patience_spin = _spin(0, 10_000, preset["patience"], special="off",
                               tip="stop after this many epochs without a better validation loss (off: never)")
    dock.scheduler_check = QCheckBox("halve lr on plateau")
    dock.scheduler_check.setToolTip("halve the learning rate when the validation loss stops improving")
    dock.seed_spin = _spin(0, 2**31 - 1, tip="weights initialisation and batch order (same seed → same weights "
                           "on the CPU)")
    form.addRow("batch size", dock.batch_spin)
    form.addRow("learning rate", dock.lr_spin)
    pr = QHBoxLayout()
    pr.addWidget(dock.patience_spin)
    pr.addWidget(dock.scheduler_check)
    form.addRow("patience", pr)
    form.addRow("seed", dock.seed_spin)


def progress_section(dock, layout: QVBoxLayout) -> None:
    """Start / Stop, epoch and batch bars, elapsed / ETA line and the message line."""
    dock.start_btn = QPushButton("Start training")
    dock.start_btn.setToolTip("train in a background thread; the loss curves update as it goes")
    dock.stop_btn = QPushButton("Stop")
    dock.stop_btn.setToolTip("stop after the current batch; the best and the last weights are kept")
    dock.epoch_bar = QProgressBar()
    dock.epoch_bar.setFormat("epoch %v / %m")
    dock.batch_bar = QProgressBar()
    dock.batch_bar.setFormat("batch %v / %m")
    dock.eta_label = QLabel("")
    dock.message = Message()
    buttons = QHBoxLayout()
    buttons.addWidget(dock.start_btn)
    buttons.addWidget(dock.stop_btn)
    layout.addLayout(buttons)
    for w in (dock.epoch_bar, dock.batch_bar, dock.eta_label, dock.message):
        layout.addWidget(w)


def results_section(dock, layout: QVBoxLayout) -> None:
    """The validation table with its caption (a section), Save / Load bundle and the current model's line."""
    dock.table = QTableWidget(0, len(TABLE_COLUMNS))
    dock.table.setHorizontalHeaderLabels(list(TABLE_COLUMNS))
    for i, tip in enumerate(TABLE_TIPS):
        dock.table.horizontalHeaderItem(i).setToolTip(tip)
    dock.table.verticalHeader().setVisible(False)
    header = dock.table.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
    dock.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    dock.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # every row and column shown:
    dock.table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # the dock scrolls, not the table
    dock.table_caption = hint("")
    dock.table_section = collapsible(layout, "Validation table", [dock.table_caption, dock.table],
                                     tooltip="the network on fresh synthetic signals with known truth")
    dock.save_btn = QPushButton("Save bundle…")
    dock.save_btn.setToolTip("write the current model (weights, protocol, ranges, settings, curves, validation "
                             "table) to a .pt bundle")
    dock.load_btn = QPushButton("Load bundle…")
    dock.load_btn.setToolTip("load a .pt bundle: it becomes the current model (settings, curves, table restored)")
    dock.bundle_label = hint("")
    io = QHBoxLayout()
    io.addWidget(dock.save_btn)
    io.addWidget(dock.load_btn)
    layout.addLayout(io)
    layout.addWidget(dock.bundle_label)
