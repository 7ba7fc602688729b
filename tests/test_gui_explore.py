"""The Explore dock under Xvfb: sliders move the curves, the noise band, voxel QA on the phantom with maps from its
ground truth, the protocol what-if (table checks, Evaluate, bars, save) and a 1366×768 screen."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")
from conftest import add_dock
from qtpy.QtCore import Qt

from napari_rverdict.physics.protocol_files import load_protocol

pytestmark = pytest.mark.gui


def _series_y(w, i):
    return np.array(w.artists.series_lines[i].get_ydata(), dtype=float)


def test_slider_moves_the_curves_and_compartments_sum_to_them(viewer, qtbot):
    w = add_dock(viewer, "Explore")
    assert [s.name for s in w.sliders] == list(w.model.parameter_names)
    assert w.sliders["R"].label == "R (µm)" and w.sliders["R"].max == 15.0
    before = _series_y(w, 2).copy()
    w.set_parameter("R", 2.0)
    after = _series_y(w, 2)
    assert not np.allclose(before, after)  # the b = 1500 series depends on the cell radius
    assert after[0] == pytest.approx(before[0])  # …but not at b = 0
    parts = sum(np.array(ln.get_ydata(), dtype=float) for ln in w.artists.compartment_lines[2].values())
    np.testing.assert_allclose(parts, after, rtol=1e-10)
    w.set_parameter("f_ic", 0.9)
    w.set_parameter("f_ees", 0.9)
    assert w.message.kind == "error" and "> 1" in w.message.text()
    w.reset_parameters()
    assert w.message.kind != "error"
    w.noise_check.setChecked(True)
    assert len(w.artists.bands) == len(w.curves.series) and "σ =" in w.message.text()
    w.compartments_combo.setCurrentIndex(w.compartments_combo.count() - 1)  # "none"
    assert all(len(ln.get_xdata()) == 0 for d in w.artists.compartment_lines for ln in d.values())
    w.model_combo.setCurrentIndex(w.model_combo.findData("verdict"))
    assert [s.name for s in w.sliders] == ["f_ic", "f_vasc", "R"]
    assert all(_series_y(w, i)[0] == pytest.approx(1.0) for i in range(5))  # per-series b = 0 normalisation


def test_voxel_qa_overlays_measured_and_predicted_signal(viewer, qtbot):
    viewer.open_sample("napari-rverdict", "prostate_phantom")
    w = add_dock(viewer, "Explore")
    dwi = viewer.layers["phantom DWI"]
    w.dwi_combo.setCurrentText(dwi.name)
    z, y, x = (s // 2 for s in dwi.data.shape[1:])
    w.show_voxel((z, y, x))
    assert w.voxel is not None and w.voxel.predicted is None and len(w.artists.measured.get_xdata()) == 10
    # maps of this DWI (from the phantom's ground truth, with the metadata the Maps dock gives its layers)
    for ly in [ly for ly in viewer.layers if ly.metadata.get("map_name") and ly.name.startswith("truth ")]:
        name = ly.metadata["map_name"]
        viewer.add_image(np.asarray(ly.data), name=f"map {name}",
                         metadata={"rverdict_map": True, "map_name": name, "source_layer": dwi.name},
                         scale=ly.scale, translate=ly.translate)
    w.show_voxel((z, y, x))
    qa = w.voxel
    assert qa.model.name == "rverdict" and qa.predicted is not None
    assert qa.rmse < 0.1  # the truth predicts the noisy phantom voxel up to its noise (SNR 35)
    np.testing.assert_allclose(w.artists.predicted.get_ydata(), qa.predicted)
    assert "f_ic" in w.voxel_info.text() and "RMS" in w.voxel_info.text()
    # cellularity as its layer and the ROI table show it (10⁻³ µm⁻³), not that number with the unit µm⁻³
    cell = float(viewer.layers["map cellularity"].data[z, y, x])
    assert f"cellularity {cell:.3g} 10⁻³ µm⁻³," in w.voxel_info.text(), w.voxel_info.text()
    assert qa.map_values["cellularity"] == pytest.approx(cell * 1e-3, rel=1e-6)  # the true unit in the QA
    w.clear_voxel()
    assert len(w.artists.measured.get_xdata()) == 0
    # a click on the canvas picks the voxel under the mouse (world coordinates → the DWI's voxel)
    w.voxel_box.expand(animate=False)
    event = SimpleNamespace(type="mouse_press", position=tuple(dwi.data_to_world((0, z, y + 1, x))))
    for callback in list(viewer.mouse_drag_callbacks):
        if getattr(callback, "__self__", None) is w:
            callback(viewer, event)
    assert w._voxel_index == (z, y + 1, x) and w.voxel.predicted is not None
    # closing the dock removes its viewer callbacks
    viewer.window.remove_dock_widget(w.parentWidget())
    assert not any(getattr(cb, "__self__", None) is w for cb in viewer.mouse_drag_callbacks)
    assert not any(getattr(cb, "__self__", None) is w for cb in viewer.mouse_move_callbacks)


def test_protocol_what_if_table_evaluate_and_save(viewer, qtbot, tmp_path):
    w = add_dock(viewer, "Explore")
    wi = w.whatif
    assert w.table.rowCount() == 10 and w.table_message.kind == "ok"
    w.table.setCurrentCell(9, 0)
    qtbot.mouseClick(w.add_row_btn, Qt.MouseButton.LeftButton)
    assert w.table.rowCount() == 11
    wi.set_cell(10, 1, "50")  # δ > Δ
    assert w.table_message.kind == "error" and "δ ≤ Δ" in w.table_message.text()
    assert w.table.item(10, 1).background().color().name() == "#8b1e1e"
    assert not w.evaluate_btn.isEnabled() and not w.save_btn.isEnabled()
    wi.set_cell(10, 1, "18.9")
    wi.set_cell(10, 0, "2500")
    assert w.table_message.kind == "ok" and w.evaluate_btn.isEnabled()
    w.n_dictionary_spin.setValue(2000)
    w.n_test_spin.setValue(20)
    qtbot.mouseClick(w.evaluate_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: wi.worker is None, timeout=120_000)
    cmp = wi.comparison
    assert cmp is not None and cmp.b.n_measurements == 11, w.evaluate_message.text()
    assert len(w.bars_ax.patches) == 2 * len(cmp.maps) and "Monte-Carlo error ±16%" in w.evaluate_message.text()
    assert all(r["crlb_b"] <= r["crlb_a"] * (1 + 1e-9) for r in cmp.rows.values())
    written = wi.save_to(tmp_path / "edited.bval")
    assert [p.name for p in written][:1] == ["edited.bval"]
    back = load_protocol(tmp_path / "edited.bval", direction_averaged=True)  # a row per acquired volume on disk
    assert len(back) == 11 and back.b[-1] == pytest.approx(2500)
    assert wi.save_to(tmp_path / "edited.bval") == [] and "already exist" in w.table_message.text()
    w.plot_edited_check.setChecked(True)
    assert w.curves.protocol.b.max() == 3000 and len(w.curves.b) == 11
    w.plot_edited_check.setChecked(False)
    # the saved file as the protocol to explore: its rows become the starting table
    w.set_protocol_file(str(tmp_path / "edited.bval"))
    assert w.protocol_combo.currentData()[0] == "file" and w.table.rowCount() == 11
    assert len(w.curves.b) == 11 and w.message.kind != "error"
    w.set_protocol_file(str(tmp_path / "missing.scheme"))
    assert w.message.kind == "error" and "not found" in w.message.text()


def test_explore_dock_fits_a_1366x768_screen(viewer, qtbot):
    from napari_rverdict._napari.launch import DOCKS

    assert "Explore" in DOCKS  # the launcher opens it with the others
    w = add_dock(viewer, "Explore")
    win = viewer.window._qt_window
    win.showNormal()
    win.resize(1366, 768)
    for box in (w.voxel_box, w.whatif_box):
        box.expand(animate=False)
    qtbot.waitUntil(lambda: w.isVisible(), timeout=5000)
    qtbot.wait(100)
    assert win.height() <= 768 and win.width() <= 1366
    assert w.minimumSizeHint().height() < 600  # everything scrolls: the dock never forces a taller window
    assert w.width() <= 560 and w.scroll_area.widget().minimumSizeHint().width() <= w.scroll_area.viewport().width() + 2
    assert w.scroll_area.verticalScrollBar().maximum() > 0  # expanded sections scroll instead of overflowing


def test_explore_plot_and_sliders_are_on_screen_together_at_1366x768(viewer, qtbot):
    """As launched (tabbed on the right), a lecturer drags a slider and watches the whole plot, without scrolling."""
    from qtpy.QtCore import QPoint, QRect

    from napari_rverdict._napari.launch import open_viewer

    _, widgets = open_viewer(viewer)
    win = viewer.window._qt_window
    win.setGeometry(QRect(0, 0, 1366, 768))
    w = widgets["Explore"]
    qtbot.wait(50)  # the launcher raises the Maps tab once the event loop runs
    w.parentWidget().raise_()
    qtbot.waitUntil(lambda: not w.visibleRegion().isEmpty(), timeout=5000)
    qtbot.wait(100)
    assert w.scroll_area.verticalScrollBar().value() == 0
    viewport = w.scroll_area.viewport()
    for item in [w.plot_canvas, *(s.native for s in w.sliders)]:
        rect = QRect(item.mapTo(viewport, QPoint(0, 0)), item.size())
        assert item.isVisible() and viewport.rect().contains(rect), f"{item}: {rect} outside {viewport.rect()}"


def test_whatif_save_names_existing_sidecars_and_asks_before_replacing_them(viewer, qtbot, tmp_path, monkeypatch):
    from napari_rverdict._napari.explore_dock import whatif as whatif_module

    w = add_dock(viewer, "Explore")
    wi = w.whatif
    assert [p.name for p in wi.save_to(tmp_path / "edited.scheme")] == ["edited.scheme", "edited.tr"]
    # a .bval beside it would replace the scheme's .tr: refused in GUI words (no "--overwrite" in a dock)
    assert wi.save_to(tmp_path / "edited.bval") == []
    text = w.table_message.text()
    assert w.table_message.kind == "error" and "--overwrite" not in text
    assert "edited.tr" in text and "choose another name" in text
    # Save… : the file dialog asked only about the file chosen; replacing a sidecar the user did not choose is asked
    asked = []

    def no(parent, title, text, *args, **kwargs):
        asked.append(text)
        return whatif_module.QMessageBox.StandardButton.No

    monkeypatch.setattr(whatif_module.QMessageBox, "question", staticmethod(no))
    monkeypatch.setattr(whatif_module.QFileDialog, "getSaveFileName",
                        staticmethod(lambda *a, **k: (str(tmp_path / "edited.bval"), "")))
    tr_before = (tmp_path / "edited.tr").read_text()
    wi._choose_save_path()
    assert len(asked) == 1 and "edited.tr" in asked[0]
    assert not (tmp_path / "edited.bval").exists() and (tmp_path / "edited.tr").read_text() == tr_before
    assert w.table_message.kind == "error" and "not saved" in w.table_message.text()
    monkeypatch.setattr(whatif_module.QMessageBox, "question",
                        staticmethod(lambda *a, **k: whatif_module.QMessageBox.StandardButton.Yes))
    wi._choose_save_path()
    assert (tmp_path / "edited.bval").exists() and w.table_message.kind == "ok"
    # the chosen file alone existing (the dialog asked about it): replaced without a second question
    asked.clear()
    monkeypatch.setattr(whatif_module.QMessageBox, "question", staticmethod(no))
    monkeypatch.setattr(whatif_module.QFileDialog, "getSaveFileName",
                        staticmethod(lambda *a, **k: (str(tmp_path / "other.scheme"), "")))
    (tmp_path / "other.scheme").write_text("old")
    wi._choose_save_path()
    assert asked == [] and w.table_message.kind == "ok" and (tmp_path / "other.scheme").read_text() != "old"
