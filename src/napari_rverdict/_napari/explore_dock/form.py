"""The Explore dock's widgets and layout (no behaviour): a scroll area of collapsible sections so the dock fits a
1366×768 screen — model and protocol, parameter sliders (a magicgui Container of FloatSliders), the plot with the
noise band, voxel QA, and the protocol what-if. The plot and the sliders are on a 1366×768 screen together."""

from __future__ import annotations

from magicgui.widgets import Container
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
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
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_rverdict._napari._common import Message, compact, hint
from napari_rverdict._napari.explore_dock.plot import CurveArtists
from napari_rverdict._napari.mpl_style import style_axes
from napari_rverdict.evaluate.explore import NOISE_REFERENCES
from napari_rverdict.evaluate.protocol_design import COLUMN_LABELS

MODELS = (("rverdict", "rVERDICT (relaxation-VERDICT)"), ("verdict", "classic VERDICT"))
REFERENCE_TEXT = {"s0": "σ fixed where S0 = 1 (scanner-like)", "peak": "σ on each voxel's brightest measurement"}
PLOT_WIDTH_IN = 4.0
PLOT_HEIGHT_IN = 2.7  # with the sliders below it, on a 768 px high screen


def canvas(height_in: float, dpi: int = 90) -> FigureCanvasQTAgg:
    fig = Figure(figsize=(PLOT_WIDTH_IN, height_in), dpi=dpi, layout="constrained")
    c = FigureCanvasQTAgg(fig)
    c.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    c.setFixedHeight(int(height_in * dpi))
    return c


def section(layout: QVBoxLayout, title: str, expanded: bool = True) -> QCollapsible:
    box = QCollapsible(title)
    box.setDuration(0)
    box.layout().setContentsMargins(0, 3, 0, 3)  # tight: the plot and the sliders share a 768 px high screen
    layout.addWidget(box)
    if expanded:
        box.expand(animate=False)
    return box


def build(dock) -> None:
    """Create the dock's widgets (as attributes of ``dock``) inside a scroll area."""
    outer = QVBoxLayout(dock)
    outer.setContentsMargins(0, 0, 0, 0)
    dock.scroll_area = QScrollArea()
    dock.scroll_area.setWidgetResizable(True)
    dock.scroll_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    outer.addWidget(dock.scroll_area)
    body = QWidget()
    dock.scroll_area.setWidget(body)
    layout = QVBoxLayout(body)
    layout.setContentsMargins(4, 4, 4, 4)
    layout.addWidget(hint("Move a slider to see how the noise-free signal of each series (TE/TR) changes with "
                          "b, and each compartment's share of it. Click (or hover) a DWI voxel to compare."))
    # at 1366×768 the plot and every slider are on screen together (drag a slider, watch the plot): the model and
    # protocol start collapsed, the plot comes before the sliders, its options after them
    dock.model_box = section(layout, "Model and protocol", expanded=False)
    dock.model_box.addWidget(_model_form(dock))
    _plot_section(dock, layout)
    dock.params_box = section(layout, "Parameters")
    dock.sliders = Container(widgets=[], labels=True)
    dock.sliders.native.layout().setContentsMargins(0, 0, 0, 0)
    dock.params_box.addWidget(dock.sliders.native)
    dock.reset_btn = QPushButton("Typical tissue")
    dock.reset_btn.setToolTip("every slider back to the protocol report's typical tissue")
    dock.fraction_info = hint("")
    row = QWidget()
    row_layout = QHBoxLayout(row)
    row_layout.setContentsMargins(0, 0, 0, 0)
    row_layout.addWidget(dock.fraction_info, 1)
    row_layout.addWidget(dock.reset_btn)
    dock.params_box.addWidget(row)
    dock.params_box.addWidget(hint("Each slider spans the parameter's training range (hover for the numbers)."))
    dock.plot_options_box = section(layout, "Plot options")
    dock.plot_options_box.addWidget(_plot_options_form(dock))
    dock.voxel_box = section(layout, "Voxel QA", expanded=False)
    dock.voxel_box.addWidget(_voxel_form(dock))
    dock.whatif_box = section(layout, "Protocol what-if", expanded=False)
    dock.whatif_box.addWidget(_whatif_form(dock))
    layout.addStretch(1)
    compact(dock)  # long combo entries elide: the dock is as narrow as the launcher asks (launch.DOCK_WIDTH)


def _model_form(dock) -> QWidget:
    w = QWidget()
    form = QFormLayout(w)
    form.setContentsMargins(0, 0, 0, 0)
    dock.model_combo = QComboBox()
    for key, text in MODELS:
        dock.model_combo.addItem(text, key)
    dock.protocol_combo = QComboBox()
    dock.protocol_file_btn = QPushButton("File…")
    dock.protocol_file_btn.setToolTip("a Camino .scheme or an FSL .bval (with its timing sidecars)")
    row = QHBoxLayout()
    row.addWidget(dock.protocol_combo, 1)
    row.addWidget(dock.protocol_file_btn)
    form.addRow("model", dock.model_combo)
    form.addRow("protocol", row)
    dock.protocol_info = hint("")
    form.addRow(dock.protocol_info)
    return w


def _plot_section(dock, layout: QVBoxLayout) -> None:
    dock.plot_box = section(layout, "Signal against b")
    dock.plot_canvas = canvas(PLOT_HEIGHT_IN)
    dock.plot_ax = dock.plot_canvas.figure.add_subplot(111)
    dock.artists = CurveArtists(dock.plot_ax)
    dock.plot_box.addWidget(dock.plot_canvas)
    dock.message = Message()
    dock.plot_box.addWidget(dock.message)


def _plot_options_form(dock) -> QWidget:
    w = QWidget()
    form = QFormLayout(w)
    form.setContentsMargins(0, 0, 0, 0)
    dock.compartments_combo = QComboBox()
    dock.noise_check = QCheckBox("noise band (mean ± 1 sd, Rician)")
    dock.snr_spin = QDoubleSpinBox()
    dock.snr_spin.setRange(1.0, 1000.0)
    dock.snr_spin.setValue(35.0)
    dock.snr_spin.setDecimals(1)
    dock.reference_combo = QComboBox()
    for key in NOISE_REFERENCES:
        dock.reference_combo.addItem(REFERENCE_TEXT[key], key)
    dock.reference_combo.setCurrentIndex(NOISE_REFERENCES.index("s0"))  # the seed paper's, as simulation
    form.addRow("compartments", dock.compartments_combo)
    form.addRow(dock.noise_check)
    form.addRow("SNR", dock.snr_spin)
    form.addRow("noise on", dock.reference_combo)
    return w


def _voxel_form(dock) -> QWidget:
    w = QWidget()
    form = QFormLayout(w)
    form.setContentsMargins(0, 0, 0, 0)
    dock.dwi_combo = QComboBox()
    dock.hover_check = QCheckBox("follow the mouse (else: click a voxel)")
    dock.clear_voxel_btn = QPushButton("Clear voxel")
    dock.voxel_info = QLabel("no voxel chosen")
    dock.voxel_info.setWordWrap(True)
    dock.voxel_info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    form.addRow("DWI layer", dock.dwi_combo)
    form.addRow(dock.hover_check)
    form.addRow(dock.voxel_info)
    form.addRow(dock.clear_voxel_btn)
    return w


def _whatif_form(dock) -> QWidget:
    w = QWidget()
    v = QVBoxLayout(w)
    v.setContentsMargins(0, 0, 0, 0)
    v.addWidget(hint("Edit the starting protocol (one row per measurement; b = 0 rows carry their series' TE/TR), "
                     "then Evaluate: the protocol report of both, side by side."))
    dock.table = QTableWidget(0, len(COLUMN_LABELS))
    dock.table.setHorizontalHeaderLabels(list(COLUMN_LABELS))
    dock.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    dock.table.verticalHeader().setDefaultSectionSize(20)
    dock.table.setFixedHeight(190)
    v.addWidget(dock.table)
    row = QHBoxLayout()
    dock.add_row_btn, dock.remove_row_btn, dock.reset_table_btn = (QPushButton(t)
                                                                   for t in ("+ row", "− row", "Reset"))
    for b in (dock.add_row_btn, dock.remove_row_btn, dock.reset_table_btn):
        row.addWidget(b)
    v.addLayout(row)
    dock.table_message = Message()
    v.addWidget(dock.table_message)
    dock.plot_edited_check = QCheckBox("plot the edited protocol")
    v.addWidget(dock.plot_edited_check)
    form = QFormLayout()
    dock.n_dictionary_spin = QSpinBox()
    dock.n_dictionary_spin.setRange(1000, 2_000_000)
    dock.n_dictionary_spin.setSingleStep(10_000)
    dock.n_dictionary_spin.setValue(50_000)
    dock.n_dictionary_spin.setGroupSeparatorShown(True)
    dock.n_test_spin = QSpinBox()
    dock.n_test_spin.setRange(10, 10_000)
    dock.n_test_spin.setValue(200)
    dock.n_test_spin.setToolTip("prior draws the Bayes limit is averaged over: its Monte-Carlo error is about "
                                "1/√(2 n), ±5 % at 200")
    form.addRow("dictionary", dock.n_dictionary_spin)
    form.addRow("test signals", dock.n_test_spin)
    v.addLayout(form)
    buttons = QHBoxLayout()
    dock.evaluate_btn = QPushButton("Evaluate")
    dock.save_btn = QPushButton("Save…")
    dock.save_btn.setToolTip("the edited protocol as a .scheme (+ .tr) or a .bval with .delta/.smalldel/.te/.tr")
    buttons.addWidget(dock.evaluate_btn, 2)
    buttons.addWidget(dock.save_btn, 1)
    v.addLayout(buttons)
    dock.evaluate_progress = QProgressBar()
    dock.evaluate_progress.setRange(0, 100)
    v.addWidget(dock.evaluate_progress)
    dock.evaluate_message = Message()
    v.addWidget(dock.evaluate_message)
    dock.bars_canvas = canvas(2.6)
    dock.bars_ax = dock.bars_canvas.figure.add_subplot(111)
    style_axes(dock.bars_canvas.figure, dock.bars_ax)
    v.addWidget(dock.bars_canvas)
    return w
