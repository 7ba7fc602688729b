"""The Simulate dock's widgets and their layout, one small function per section; no behaviour here."""

from __future__ import annotations

from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QVBoxLayout,
)

from napari_rverdict._napari._common import add_run_row, hint, separator
from napari_rverdict.data.prior import FRACTION_SAMPLERS

MODELS = (("rverdict", "rVERDICT (relaxation-VERDICT, 9 maps)"), ("verdict", "classic VERDICT (5 maps)"))
SAMPLERS = {"dirichlet": "Dirichlet(1,1,1): uniform on the simplex",
            "tissue": "tissue: p1 = 1 − f_vasc, p2 = f_ic / p1"}
INVALID_BG = QColor("#8b1e1e")


def build(dock) -> None:
    """Create the dock's widgets (as attributes of ``dock``) and lay them out top to bottom."""
    layout = QVBoxLayout(dock)
    layout.addWidget(hint("Step 1 of 3. Make noisy synthetic signals with known microstructure to train a "
                          "network on (synthetic q-space learning). Ranges are the training prior."))
    layout.addLayout(model_section(dock))
    dock.table = ranges_table()
    layout.addWidget(dock.table)
    layout.addLayout(sampling_section(dock))
    run_section(dock, layout)


def model_section(dock) -> QFormLayout:
    """Model and protocol (a preset, a layer's, or a file's) with a line about the chosen protocol."""
    dock.model_combo = QComboBox()
    for key, text in MODELS:
        dock.model_combo.addItem(text, key)
    dock.protocol_combo = QComboBox()
    dock.protocol_file_btn = QPushButton("File…")
    dock.protocol_file_btn.setToolTip("a Camino .scheme or an FSL .bval (with .bvec / .json timings beside it)")
    dock.protocol_info = hint("")
    form = QFormLayout()
    form.addRow("model", dock.model_combo)
    row = QHBoxLayout()
    row.addWidget(dock.protocol_combo, 1)
    row.addWidget(dock.protocol_file_btn)
    form.addRow("protocol", row)
    form.addRow("", dock.protocol_info)
    return form


def ranges_table() -> QTableWidget:
    """The training-range table: parameter, unit, low, high (rows are filled per model by the dock)."""
    table = QTableWidget(0, 4)
    table.setHorizontalHeaderLabels(["parameter", "unit", "low", "high"])
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    return table


def sampling_section(dock) -> QFormLayout:
    """Fraction sampler, SNR, number of samples and seed."""
    dock.sampler_combo = QComboBox()
    for key in FRACTION_SAMPLERS:
        dock.sampler_combo.addItem(SAMPLERS.get(key, key), key)
    dock.snr_edit = QLineEdit("35")
    dock.snr_edit.setToolTip("one SNR (e.g. 35) or a range LOW-HIGH drawn per sample (e.g. 15-60); "
                             "σ = 1/SNR of the voxel's brightest measurement")
    dock.n_spin = QSpinBox()
    dock.n_spin.setRange(100, 10_000_000)
    dock.n_spin.setSingleStep(10_000)
    dock.n_spin.setValue(100_000)
    dock.n_spin.setGroupSeparatorShown(True)
    dock.seed_spin = QSpinBox()
    dock.seed_spin.setRange(0, 2**31 - 1)
    form = QFormLayout()
    form.addRow("fractions", dock.sampler_combo)
    form.addRow("SNR", dock.snr_edit)
    form.addRow("N samples", dock.n_spin)
    form.addRow("seed", dock.seed_spin)
    return form


def run_section(dock, layout: QVBoxLayout) -> None:
    """Generate button, progress bar, message line and the example-signal plot."""
    from napari_rverdict._napari.loss_plot import SignalPlot

    dock.generate_btn, dock.progress, dock.message = add_run_row(layout, "Generate")
    dock.plot = SignalPlot()
    layout.addWidget(separator())
    layout.addWidget(dock.plot)
