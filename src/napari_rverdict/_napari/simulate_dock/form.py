"""The Simulate dock's widgets and their layout, one small function per section; no behaviour here.

Top to bottom: model and protocol, the noise settings (``dock.noise_form``: SNR, the noise reference and the
effective SNR it implies, matching the noise of a DWI layer; behaviour in :mod:`.noise`), N, *Generate* with its
progress and message, then collapsed sections: training ranges, advanced (fraction sampler, seed), example signals.
The content scrolls (:func:`~napari_rverdict._napari._common.scroll_layout`).
"""

from __future__ import annotations

import napari
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
    QWidget,
)

from napari_rverdict._napari._common import (
    LayerCombo,
    Message,
    add_run_row,
    collapsible,
    compact,
    device_preset,
    hint,
    scroll_layout,
)
from napari_rverdict.data.noise import DEFAULT_SNR_REFERENCE, SNR_REFERENCES
from napari_rverdict.data.prior import FRACTION_SAMPLERS

MODELS = (("rverdict", "rVERDICT (relaxation-VERDICT, 9 maps)"), ("verdict", "classic VERDICT (5 maps)"))
MODEL_TIPS = {"rverdict": "relaxation-VERDICT: the three compartments plus T1, T2 and D_ees (needs TE and TR "
                          "to vary; the INNOVATE protocol does)",
              "verdict": "classic VERDICT: intracellular (spheres), EES (ball), vascular (astrosticks)"}
SAMPLERS = {"dirichlet": "Dirichlet(1,1,1): uniform on the simplex",
            "tissue": "tissue: p1 = 1 − f_vasc, p2 = f_ic / p1"}
INVALID_BG = QColor("#8b1e1e")
REFERENCE_TEXT = {"s0": "σ fixed where S0 = 1 (scanner-like)", "peak": "σ on each voxel's brightest measurement"}
REFERENCE_TIPS = {"s0": "σ = 1/SNR where S0 = 1 (the top of the S0 range), before the T1 / T2 factors: σ is fixed "
                        "while voxel brightness varies, as on a scanner. The seed paper's convention (the default).",
                  "peak": "σ = (each voxel's brightest noise-free measurement) / SNR: every voxel gets the SNR "
                          "itself. How bundles saved before the setting existed were trained."}
AUTO_MATCH_MASK = "(automatic: mean b = 0 above 4σ)"


def build(dock) -> None:
    """Create the dock's widgets (as attributes of ``dock``) and lay them out top to bottom."""
    layout = scroll_layout(dock)
    layout.addWidget(hint("Step 1 of 3: synthetic signals with known microstructure to train on."))
    layout.addLayout(model_section(dock))
    layout.addWidget(noise_section(dock))
    preset_text, preset = device_preset()
    dock.n_spin = QSpinBox()
    dock.n_spin.setRange(100, 10_000_000)
    dock.n_spin.setSingleStep(10_000)
    dock.n_spin.setValue(preset["n"])
    dock.n_spin.setGroupSeparatorShown(True)
    dock.n_spin.setToolTip("number of synthetic signals (80 % train, 20 % validation). " + preset_text)
    n_form = QFormLayout()
    n_form.addRow("N signals", dock.n_spin)
    layout.addLayout(n_form)
    dock.preset_hint = hint(preset_text)
    layout.addWidget(dock.preset_hint)
    dock.generate_btn, dock.progress, dock.message = add_run_row(
        layout, "Generate", "simulate the signals in a background thread (the Train dock uses them)")
    dock.table = ranges_table()
    dock.ranges_section = collapsible(layout, "Training ranges (the prior)", [dock.table],
                                      tooltip="the range each parameter is drawn from; edit low / high")
    dock.advanced_section = collapsible(layout, "Advanced: fractions, seed", [advanced_form(dock)])
    run_section(dock, layout)
    layout.addStretch(1)
    compact(dock)


def model_section(dock) -> QFormLayout:
    """Model and protocol (a preset, a layer's, or a file's) with a line about the chosen protocol."""
    dock.model_combo = QComboBox()
    for i, (key, text) in enumerate(MODELS):
        dock.model_combo.addItem(text, key)
        dock.model_combo.setItemData(i, MODEL_TIPS[key], 3)  # Qt.ToolTipRole
    dock.model_combo.setToolTip("the biophysical model whose signals are simulated and whose maps are learnt")
    dock.protocol_combo = QComboBox()
    dock.protocol_combo.setToolTip("the acquisition the signals are simulated for: the INNOVATE preset, the "
                                   "protocol of a DWI layer, or a protocol file")
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


def noise_section(dock) -> QWidget:
    """The noise settings in ``dock.noise_form``: SNR, the noise reference with the effective SNR it implies, and
    *Match noise to this DWI* (a DWI layer, an optional mask, Match / Clear and a line saying what was found)."""
    dock.snr_edit = QLineEdit("35")
    dock.snr_edit.setToolTip("one SNR (e.g. 35) or a range LOW-HIGH drawn per sample (e.g. 15-60): σ = 1/SNR on the "
                             "scale the noise reference below names")
    dock.reference_combo = QComboBox()
    for i, key in enumerate(SNR_REFERENCES):
        dock.reference_combo.addItem(REFERENCE_TEXT[key], key)
        dock.reference_combo.setItemData(i, REFERENCE_TIPS[key], 3)  # Qt.ToolTipRole
    dock.reference_combo.setCurrentIndex(SNR_REFERENCES.index(DEFAULT_SNR_REFERENCE))
    dock.reference_combo.setToolTip("the scale σ = 1/SNR is fixed on (snr_reference).\n" + "\n".join(
        f"{k}: {REFERENCE_TIPS[k]}" for k in SNR_REFERENCES) + "\nClassic VERDICT (S/S0, each series' b = 0 is 1): "
        "the two coincide.")
    dock.effective_label = hint("")
    dock.effective_label.setToolTip("the SNR each training signal gets at its brightest b = 0 (per acquired volume) "
                                    "under the training ranges: what the setting means in practice")
    dock.match_dwi_combo = LayerCombo(dock.viewer, is_dwi)
    dock.match_dwi_combo.setToolTip("the 4D DWI layer (as acquired, direction-resolved) whose noise to match")
    dock.match_mask_combo = LayerCombo(dock.viewer, is_3d_volume, none_text=AUTO_MATCH_MASK)
    dock.match_mask_combo.setToolTip("the voxels whose SNR distribution is matched (e.g. the gland mask); "
                                     "automatic: voxels whose mean b = 0 exceeds 4σ")
    dock.match_btn = QPushButton("Match noise")
    dock.match_btn.setToolTip("estimate the scanner's σ in this DWI (PIESNO, MP-PCA or repeated volumes) and draw "
                              "each training signal's SNR from the DWI's own per-voxel SNR in the mask")
    dock.clear_match_btn = QPushButton("Clear")
    dock.clear_match_btn.setToolTip("forget the match: back to the typed SNR")
    dock.clear_match_btn.setEnabled(False)
    dock.match_message = Message()
    dock.match_message.setVisible(False)  # shown once Match has something to say
    box = QWidget()
    dock.noise_form = QFormLayout(box)
    dock.noise_form.setContentsMargins(0, 0, 0, 0)
    dock.noise_form.addRow("SNR", dock.snr_edit)
    dock.noise_form.addRow("noise on", dock.reference_combo)
    dock.noise_form.addRow("", dock.effective_label)
    dock.noise_form.addRow("match to", _row(dock.match_dwi_combo, dock.match_btn))
    dock.noise_form.addRow("in mask", _row(dock.match_mask_combo, dock.clear_match_btn))
    dock.noise_form.addRow(dock.match_message)
    dock.noise_box = box
    return box


def _row(widget, button) -> QHBoxLayout:
    row = QHBoxLayout()
    row.addWidget(widget, 1)
    row.addWidget(button)
    return row


def is_dwi(layer) -> bool:
    return isinstance(layer, napari.layers.Image) and layer.ndim == 4


def is_3d_volume(layer) -> bool:
    return isinstance(layer, (napari.layers.Labels, napari.layers.Image)) and layer.ndim == 3


def advanced_form(dock) -> QFormLayout:
    """Fraction sampler and seed."""
    dock.sampler_combo = QComboBox()
    for key in FRACTION_SAMPLERS:
        dock.sampler_combo.addItem(SAMPLERS.get(key, key), key)
    dock.sampler_combo.setToolTip("how the three volume fractions (summing to 1) are drawn")
    dock.seed_spin = QSpinBox()
    dock.seed_spin.setRange(0, 2**31 - 1)
    dock.seed_spin.setToolTip("random seed: the same seed and settings give the same signals")
    form = QFormLayout()
    form.addRow("fractions", dock.sampler_combo)
    form.addRow("seed", dock.seed_spin)
    return form


def ranges_table() -> QTableWidget:
    """The training-range table: parameter, unit, low, high (rows are filled per model by the dock)."""
    table = QTableWidget(0, 4)
    table.setHorizontalHeaderLabels(["parameter", "unit", "low", "high"])
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    table.setToolTip("training range of each parameter (double-click low / high to edit; checked as you type)")
    return table


def run_section(dock, layout: QVBoxLayout) -> None:
    """The example-signal plot, in a collapsed section."""
    from napari_rverdict._napari.loss_plot import SignalPlot

    dock.plot = SignalPlot()
    dock.plot_section = collapsible(layout, "Example signals", [dock.plot])
