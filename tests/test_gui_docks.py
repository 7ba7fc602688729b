"""Docks on a laptop screen (1366 × 768, tabbed and stacked), the viewer conventions, the sample's pretrained
model, protocol choice, tables that explain themselves, and the missing-b message."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
from conftest import add_dock, generate_in_dock
from qtpy.QtCore import QPoint, QRect, Qt

from napari_rverdict._napari.launch import DOCK_WIDTH, DOCKS, open_viewer
from napari_rverdict._napari.state import get_state

pytestmark = pytest.mark.gui
SCREEN = (1366, 768)
PRIMARY = {"Simulate": "generate_btn", "Train": "start_btn", "Maps": "compute_btn", "Explore": "evaluate_btn"}


def _fit_window(qtbot, viewer):
    """Put the main window on a 1366 × 768 screen area; returns it (Qt keeps it larger if it cannot shrink)."""
    win = viewer.window._qt_window
    win.setGeometry(QRect(0, 0, *SCREEN))
    qtbot.wait(100)
    return win


def _reachable(qtbot, widget, name) -> None:
    """The dock's primary button, scrolled into view, lies inside the scroll area's viewport and the window."""
    button = getattr(widget, PRIMARY[name])
    widget.parentWidget().raise_()
    qtbot.waitUntil(widget.isVisible, timeout=5000)
    widget.scroll_area.ensureWidgetVisible(button)
    qtbot.wait(50)
    assert button.isVisible(), name
    viewport = widget.scroll_area.viewport()
    top_left = button.mapTo(viewport, QPoint(0, 0))
    rect = QRect(top_left, button.size())
    assert viewport.rect().contains(rect), f"{name}: {rect} outside {viewport.rect()}"
    win = widget.window()
    corner = button.mapTo(win, QPoint(button.width() - 1, button.height() - 1))
    assert 0 <= corner.x() < SCREEN[0] and 0 <= corner.y() < SCREEN[1], f"{name}: off screen at {corner}"


def _not_clipped(widget, name) -> None:
    """Nothing of the dock's content lies beyond the scroll area's right edge (it scrolls only vertically)."""
    body, viewport = widget.scroll_area.widget(), widget.scroll_area.viewport()
    assert body.minimumSizeHint().width() <= viewport.width(), f"{name}: {body.minimumSizeHint()} > {viewport.width()}"
    assert body.width() <= viewport.width() and widget.scroll_area.horizontalScrollBar().maximum() == 0, name


def test_tabbed_docks_fit_a_laptop_screen(viewer, qtbot):
    _, widgets = open_viewer(viewer)
    win = _fit_window(qtbot, viewer)
    assert (win.width(), win.height()) == SCREEN, f"window {win.width()}×{win.height()}"
    hint = win.minimumSizeHint()
    assert hint.width() <= SCREEN[0] and hint.height() <= SCREEN[1]
    for name in DOCKS:
        _reachable(qtbot, widgets[name], name)
        _not_clipped(widgets[name], name)
    # the docks are as wide as the launcher asks: the canvas keeps the rest (no dock's content forces more)
    assert all(w.parentWidget().width() <= DOCK_WIDTH + 2 for w in widgets.values()), \
        {n: w.parentWidget().width() for n, w in widgets.items()}
    # with advanced settings, plots and tables open, the docks scroll instead of growing the window
    tr = widgets["Train"]
    tr.advanced_section.expand(animate=False)
    widgets["Simulate"].ranges_section.expand(animate=False)
    widgets["Simulate"].plot_section.expand(animate=False)
    widgets["Explore"].voxel_box.expand(animate=False)
    widgets["Explore"].whatif_box.expand(animate=False)
    qtbot.wait(50)
    assert win.minimumSizeHint().height() <= SCREEN[1]
    for name in DOCKS:
        _reachable(qtbot, widgets[name], name)
        _not_clipped(widgets[name], name)


def test_stacked_docks_fit_a_laptop_screen(viewer, qtbot):
    """Added from the Plugins menu one after the other (napari stacks them on the right)."""
    widgets = {name: add_dock(viewer, name) for name in DOCKS}
    win = _fit_window(qtbot, viewer)
    assert (win.width(), win.height()) == SCREEN, f"window {win.width()}×{win.height()}"
    for name in DOCKS:
        _reachable(qtbot, widgets[name], name)


def test_maps_dock_from_the_plugins_menu_is_not_cut_off(viewer, qtbot):
    """The Maps dock alone, added from the Plugins menu (napari makes it ≈ 290 px wide on a 1366 px screen), with
    a model with uncertainty, its sd and ROI sections shown and a long protocol line: no button ends beyond the
    window's right edge (Stop, Load…, File… and Export maps did, by up to 35 px)."""
    from qtpy.QtWidgets import QPushButton

    from napari_rverdict._napari.sample_data import pretrained_bundle_path

    maps = add_dock(viewer, "Maps")
    win = _fit_window(qtbot, viewer)
    if pretrained_bundle_path() is not None:
        maps.load_bundle(pretrained_bundle_path())
    maps.uncertainty_check.setEnabled(True)
    maps.sd_section.setVisible(True)
    maps.sd_section.expand(animate=False)
    maps.roi_section.setVisible(True)
    maps.dwi_info.setText("20 volumes, b = 0, 90, 500, 1500, 2006, 3000 s/mm². Differs from the model's protocol "
                          "(the maps use it as matched): measurements are in a different order than the model's "
                          "protocol; reordered to match; measurement 7: b = 2006 s/mm² where the model expects 2000")
    qtbot.wait(100)
    _not_clipped(maps, "Maps")
    for button in maps.findChildren(QPushButton):
        if button.isVisibleTo(maps):
            right = button.mapTo(win, QPoint(button.width() - 1, 0)).x()
            assert right < SCREEN[0], f"{button.text()!r} ends at x = {right}"


def test_sample_opens_with_a_model_contours_and_a_named_bright_volume(viewer, qtbot):
    from napari_rverdict._napari.sample_data import pretrained_bundle_path

    maps = add_dock(viewer, "Maps")
    train = add_dock(viewer, "Train")
    viewer.open_sample("napari-rverdict", "prostate_phantom")
    qtbot.wait(50)
    labels, dwi = viewer.layers["lesion labels"], viewer.layers["phantom DWI"]
    assert labels.contour == 1 and labels.mode == "pan_zoom"
    assert viewer.layers.selection.active is dwi  # not the labels: no paint tools in the layer controls
    assert tuple(viewer.dims.axis_labels) == ("volume", "z", "y", "x")
    step = viewer.dims.current_step[0]
    prot = dwi.metadata["protocol"]
    assert prot.b[step] == 0 and prot.te[step] == prot.te.min()  # the brightest volume
    overlay = viewer.canvas.overlays["text"]
    assert "b = 0 s/mm²" in overlay.text and overlay.visible
    viewer.dims.set_current_step(0, int(np.argmax(prot.b)))
    assert f"b = {prot.b.max():g} s/mm²" in overlay.text
    truth = viewer.layers["truth f_ic [fraction]"].data
    gland = viewer.layers["gland mask"].data > 0
    assert np.isnan(truth[~gland]).all() and np.isfinite(truth[gland]).all()
    if pretrained_bundle_path() is None:
        pytest.skip("no pretrained bundle in sample_data/pretrained (scripts/make_pretrained_bundle.py)")
    bundle = get_state(viewer).bundle
    assert bundle is not None and bundle.has_uncertainty and bundle.model.name == "rverdict"
    assert "validation" in bundle.extra
    assert maps.model_label.text().startswith("rVERDICT")
    assert train.plot.ax.get_ylabel() == "β-NLL (scaled)"  # the loss the sample model was trained with


def test_first_maps_from_the_pretrained_model(viewer, qtbot):
    """Open Sample → Compute maps: transparent outside the mask, robust limits, readable cellularity, colorbar on
    the selected map; a rerun replaces the layers; ROI table one row per region, a column per map."""
    from napari_rverdict._napari.sample_data import pretrained_bundle_path

    if pretrained_bundle_path() is None:
        pytest.skip("no pretrained bundle in sample_data/pretrained")
    _, widgets = open_viewer(viewer)
    maps = widgets["Maps"]
    maps.mask_combo.select("gland mask")
    maps.device_combo.setCurrentText("cpu")
    qtbot.mouseClick(maps.compute_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: maps.worker is None, timeout=120_000)
    assert maps.maps is not None, maps.message.text()
    gland = viewer.layers["gland mask"].data > 0
    f_ic = viewer.layers["f_ic [fraction]"]
    assert np.isnan(f_ic.data[~gland]).all() and np.isfinite(f_ic.data[gland]).all()
    inside = f_ic.data[gland]
    assert f_ic.contrast_limits == pytest.approx(tuple(np.percentile(inside, [2, 98])), rel=1e-5)
    assert viewer.layers.selection.active is f_ic and f_ic.visible and f_ic.colorbar.visible
    cell = viewer.layers["cellularity [10⁻³ µm⁻³]"]
    truth = viewer.layers["truth cellularity [10⁻³ µm⁻³]"].data[gland]
    assert 0.05 < np.nanmedian(cell.data[gland]) < 5 and 0.05 < np.median(truth) < 5  # readable numbers
    np.testing.assert_allclose(cell.data, maps.maps["cellularity"].transpose(2, 1, 0) * 1e3, rtol=1e-6)
    # the ROI table: one row per region, a column per map with its unit
    table = maps.roi_table_widget
    headers = [table.horizontalHeaderItem(j).text() for j in range(table.columnCount())]
    assert headers[:2] == ["region", "n"] and "R [µm]" in headers and "cellularity [10⁻³ µm⁻³]" in headers
    assert table.rowCount() == len({r["name"] for r in maps.roi_table.rows}) == 4
    # rerun without uncertainty: the sd layers of the first run go, the maps are replaced, not duplicated
    n_sd = sum(ly.name.endswith(" sd [µm]") for ly in viewer.layers)
    assert n_sd == 1
    maps.uncertainty_check.setChecked(False)
    n_layers = len(viewer.layers)
    qtbot.mouseClick(maps.compute_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: maps.worker is None, timeout=120_000)
    assert not any(" sd " in ly.name for ly in viewer.layers)
    assert len(viewer.layers) == n_layers - 9  # the 9 sd layers gone, the maps replaced, nothing duplicated


def test_protocol_chooser_and_the_readers_reason(viewer, qtbot, tmp_path):
    import nibabel as nib

    from napari_rverdict.data.phantom import sample_data_dir

    src = sample_data_dir()
    img = nib.load(str(src / "dwi.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., :19], img.affine), str(tmp_path / "dwi.nii.gz"))
    (tmp_path / "dwi.bval").write_text((src / "dwi.bval").read_text())  # 20 entries for 19 volumes
    maps = add_dock(viewer, "Maps")
    viewer.open(str(tmp_path / "dwi.nii.gz"), plugin="napari-rverdict")
    maps.dwi_combo.select("dwi")
    reason = viewer.layers["dwi"].metadata["protocol_problem"]
    assert reason and reason in maps.dwi_info.text()  # the reader's own reason, not "no sidecar"
    maps.protocol_combo.setCurrentIndex(maps.protocol_combo.findText("INNOVATE preset"))
    assert "19" in maps.dwi_info.text()  # the preset has 20 volumes: said, not guessed
    # a 20-volume layer without sidecar: the preset fits
    viewer.add_image(np.asarray(viewer.layers["dwi"].data)[[0] * 20], name="no sidecar")
    maps.dwi_combo.select("no sidecar")
    assert "20 volumes, b = 0, 90, 500, 1500, 2000, 3000" in maps.dwi_info.text()
    assert len(maps.protocol(viewer.layers["no sidecar"])) == 20


def test_a_patient_export_says_what_differs_from_the_model(viewer, qtbot, tmp_path):
    """A scanner export, not the phantom: series interleaved, b = 2006 where the model has 2000, and a dcm2niix
    JSON whose one EchoTime (the first series') disagrees with the per-volume .te. Before Compute the dock says
    what the reader chose and what differs from the model's protocol; the closing message says it again (the
    library's warnings, raised in the worker, reached neither the dock nor a notification)."""
    import json

    from napari_rverdict._napari.sample_data import pretrained_bundle_path
    from napari_rverdict.data.dwi import load_dwi, save_dwi
    from napari_rverdict.data.phantom import sample_data_dir
    from napari_rverdict.physics.protocol import Protocol

    bundle_path = pretrained_bundle_path()
    if bundle_path is None:
        pytest.skip("no pretrained bundle in sample_data/pretrained")
    src = load_dwi(sample_data_dir() / "dwi.nii.gz")
    p = src.protocol
    order = [16, 12, 8, 4, 0] + [i for k in (1, 2, 3) for i in (16 + k, 12 + k, 4 + k, 8 + k, k)]
    b = p.b[order].copy()
    b[np.isclose(b, 2000)] = 2006.0
    patient = Protocol(b, p.small_delta[order], p.big_delta[order], p.te[order], p.tr[order], p.directions[order])
    save_dwi(src.data[..., order], src.affine, tmp_path / "ep2d diff.nii.gz", patient)
    (tmp_path / "ep2d diff.json").write_text(json.dumps({"EchoTime": 0.08, "Manufacturer": "Siemens"}))
    maps = add_dock(viewer, "Maps")
    maps.load_bundle(bundle_path)
    viewer.open(str(tmp_path / "ep2d diff.nii.gz"), plugin="napari-rverdict")
    maps.dwi_combo.select("ep2d diff")
    info = maps.dwi_info.text()
    assert "b = 2006 s/mm² where the model expects 2000 s/mm²" in info, info
    assert "different order" in info
    assert "ep2d diff.json and ep2d diff.te disagree on TE" in info and "ep2d diff.te is used" in info
    maps.device_combo.setCurrentText("cpu")
    maps.uncertainty_check.setChecked(False)
    qtbot.mouseClick(maps.compute_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: maps.worker is None, timeout=120_000)
    assert maps.maps is not None, maps.message.text()
    assert "b = 2006 s/mm² where the model expects 2000 s/mm²" in maps.message.text()
    # the preset chosen instead: it is the model's protocol, nothing read from files, nothing differs
    maps.protocol_combo.setCurrentIndex(maps.protocol_combo.findText("INNOVATE preset"))
    assert "Differs" not in maps.dwi_info.text() and "warning" not in maps.dwi_info.text()


def test_missing_b_values_are_named():
    from napari_rverdict.errors import InputError
    from napari_rverdict.maps.voxels import check_b_values, missing_b_values
    from napari_rverdict.physics.protocol import Protocol

    full = Protocol.innovate()
    keep = full.b < 1600
    partial = Protocol(full.b[keep], full.small_delta[keep], full.big_delta[keep], full.te[keep], full.tr[keep])
    assert missing_b_values(partial, full) == [2000.0, 3000.0]
    assert missing_b_values(full, full) == []
    with pytest.raises(InputError, match=r"no b = 2000, 3000 s/mm²"):
        check_b_values(partial, full)


def test_train_dock_explains_its_table_and_names_the_networks(viewer, qtbot, tmp_path):
    from napari_rverdict._napari.train_dock.form import CRLB_HEADER

    tr = add_dock(viewer, "Train")
    names = [tr.net_combo.itemText(i) for i in range(tr.net_combo.count())]
    assert names == ["MLP", "ResNetReg", "ResNetReg + soft-threshold"]
    tips = [tr.net_combo.itemData(i, Qt.ItemDataRole.ToolTipRole) for i in range(3)]
    assert [f"model {k}" in t for k, t in zip((1, 2, 3), tips, strict=True)] == [True] * 3
    header = tr.table.horizontalHeaderItem(3)
    assert header.text() == CRLB_HEADER and "unbiased" in header.toolTip() and "biased" in header.toolTip()
    # every setting explains itself
    from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit

    for dock in (tr, add_dock(viewer, "Simulate"), add_dock(viewer, "Maps")):
        for w in dock.findChildren((QComboBox, QAbstractSpinBox, QLineEdit, QAbstractButton)):
            if w.parent() is not None and type(w).__name__ in ("QComboBox", "QSpinBox", "QDoubleSpinBox",
                                                               "QCheckBox", "LayerCombo"):
                assert w.toolTip(), f"{type(dock).__name__}: {type(w).__name__} {getattr(w, 'text', lambda: '')()}"


def test_init_state_starts_training_from_given_weights():
    import torch

    from napari_rverdict.data.synth import simulate
    from napari_rverdict.errors import InputError
    from napari_rverdict.learn.config import TrainConfig
    from napari_rverdict.learn.train import train

    data = simulate("verdict", "innovate", n=600, snr=35, seed=1)
    first = train(data, TrainConfig(epochs=1, device="cpu", seed=0)).bundle
    # with a vanishing learning rate the run keeps the weights it started from (not a fresh seeded init)
    tuned = train(data, TrainConfig(epochs=1, device="cpu", seed=5, lr=1e-12), init_state=first).bundle
    fresh = train(data, TrainConfig(epochs=1, device="cpu", seed=5, lr=1e-12)).bundle
    for (name, a), b, c in zip(first.network.named_parameters(), tuned.network.parameters(),
                               fresh.network.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=0, msg=name)
        assert not torch.allclose(a, c), name
    with pytest.raises(InputError, match="does not fit"):
        train(data, TrainConfig(epochs=1, device="cpu", width=7), init_state=first)


def test_train_dock_fine_tunes_the_current_model(viewer, qtbot):
    sim, tr = add_dock(viewer, "Simulate"), add_dock(viewer, "Train")
    assert not tr.finetune_check.isEnabled()  # no model yet
    sim.model_combo.setCurrentIndex(sim.model_combo.findData("verdict"))
    generate_in_dock(qtbot, sim, 800)
    tr.epochs_spin.setValue(1)
    tr.device_combo.setCurrentText("cpu")
    qtbot.mouseClick(tr.start_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: tr.worker is None and tr.table.rowCount() > 0, timeout=60_000)
    first = tr.session.bundle
    assert first.extra["validation"]["rows"]  # the table travels with the bundle
    assert tr.finetune_check.isEnabled()
    tr.finetune_check.setChecked(True)
    tr.width_spin.setValue(17)  # another size: refused with a message naming the model's
    qtbot.mouseClick(tr.start_btn, Qt.MouseButton.LeftButton)
    assert tr.worker is None and "Cannot fine-tune" in tr.message.text() and "width" in tr.message.text()
    tr.width_spin.setValue(0)
    qtbot.mouseClick(tr.start_btn, Qt.MouseButton.LeftButton)
    assert "fine-tuning" in tr.message.text()
    qtbot.waitUntil(lambda: tr.worker is None, timeout=60_000)
    assert tr.session.bundle is not first and tr.state.value == "done", tr.message.text()


def test_cellularity_is_shown_scaled_and_written_in_its_true_unit(tmp_path):
    import nibabel as nib

    from napari_rverdict._napari.reader import read_nifti
    from napari_rverdict._napari.writer import write_single_image
    from napari_rverdict.data.phantom import sample_data_dir

    path = sample_data_dir() / "truth" / "cellularity.nii.gz"
    true = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    data, kwargs, kind = read_nifti(str(path))[0]
    assert kind == "image" and kwargs["name"] == "cellularity [10⁻³ µm⁻³]"
    np.testing.assert_allclose(data, true.transpose(2, 1, 0) * 1e3, rtol=1e-6)  # 0.3, not 3e-4
    assert kwargs["contrast_limits"] == pytest.approx((0.0, 10.0))
    written = write_single_image(str(tmp_path / "cell.nii.gz"), data, kwargs)[0]
    np.testing.assert_allclose(np.asarray(nib.load(written).dataobj), true, rtol=1e-6)
    assert list(tmp_path.iterdir()) == [tmp_path / "cell.nii.gz"]  # no temporary file left beside it


@pytest.mark.parametrize("dock", ["Explore", "Simulate", "Train"])
def test_any_dock_alone_gives_the_viewer_its_conventions(viewer, qtbot, dock):
    """In plain napari a user may open only the Explore (or Simulate, Train) dock: the axis names, the lesion
    contours and the DWI's bright volume came only with the Maps dock (the Explore screenshot showed axes -4, -3)."""
    viewer.open_sample("napari-rverdict", "prostate_phantom")
    add_dock(viewer, dock)
    qtbot.wait(50)
    assert tuple(viewer.dims.axis_labels) == ("volume", "z", "y", "x")
    assert viewer.layers["lesion labels"].contour == 1
    assert viewer.canvas.overlays["text"].visible and "b = 0 s/mm²" in viewer.canvas.overlays["text"].text
