"""The launcher's window, closing docks mid-run, and the Train dock's uncertainty option."""

from __future__ import annotations

import pytest

pytest.importorskip("napari")
from conftest import add_dock, generate_in_dock
from qtpy.QtCore import Qt

from napari_rverdict._napari.launch import DOCKS, main, open_viewer

pytestmark = pytest.mark.gui


def test_launcher_opens_three_tabified_docks_and_the_phantom(viewer, qtbot):
    _, widgets = open_viewer(viewer)
    assert set(widgets) == set(DOCKS)
    names = [ly.name for ly in viewer.layers]
    assert {"phantom DWI", "lesion labels", "gland mask", "truth f_ic [fraction]"} <= set(names)
    assert viewer.layers["lesion labels"].contour == 1
    win = viewer.window._qt_window
    docks = [w.parentWidget() for w in widgets.values()]
    qtbot.waitUntil(lambda: any(d.isVisible() for d in docks), timeout=5000)
    assert set(win.tabifiedDockWidgets(docks[0])) == set(docks[1:])  # one tab group
    # with the phantom's pretrained model the Maps dock is in front (Compute maps works at once), else Simulate
    front = "Maps" if widgets["Maps"].session.bundle is not None else "Simulate"
    # every tab's dock isVisible(); the tab in front is the only one whose content is on screen
    qtbot.waitUntil(lambda: not widgets[front].visibleRegion().isEmpty(), timeout=5000)
    assert [n for n, w in widgets.items() if not w.visibleRegion().isEmpty()] == [front]
    maps = widgets["Maps"]
    assert maps.dwi_combo.currentText() == "phantom DWI"
    assert maps.labels_combo.currentText() == "lesion labels"
    assert "20 volumes" in maps.dwi_info.text()


def test_launcher_cli_rejects_unknown_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--bogus"])
    assert exc.value.code == 2 and "--bogus" in capsys.readouterr().err


def test_closing_the_train_dock_stops_training(viewer, qtbot):
    sim, tr = add_dock(viewer, "Simulate"), add_dock(viewer, "Train")
    generate_in_dock(qtbot, sim, 3000)
    tr.epochs_spin.setValue(1000)
    tr.device_combo.setCurrentText("cpu")
    qtbot.mouseClick(tr.start_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(tr.plot.val_y) >= 1, timeout=60_000)
    assert tr.worker is not None and tr._pbar is not None and tr._pbar.total == 1000  # activity panel entry
    worker = tr.worker
    viewer.window.remove_dock_widget(tr.parentWidget())
    assert tr.stop_event.is_set() and tr.stop_event.closing
    qtbot.waitUntil(lambda: not worker.is_running, timeout=30_000)
    assert tr.plot.val_x[-1] < 1000  # it stopped long before the last epoch (the dock is gone: no result)


def test_train_uncertainty_checkbox_gives_sd_maps_option(viewer, qtbot):
    sim, tr, maps = (add_dock(viewer, n) for n in ("Simulate", "Train", "Maps"))
    generate_in_dock(qtbot, sim, 2000)
    assert tr.uncertainty_check.isEnabled()
    tr.uncertainty_check.setChecked(True)
    assert tr.config().uncertainty is True
    tr.epochs_spin.setValue(1)
    tr.device_combo.setCurrentText("cpu")
    assert not maps.uncertainty_check.isEnabled()
    qtbot.mouseClick(tr.start_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: tr.worker is None, timeout=60_000)
    assert tr.session.bundle.has_uncertainty
    assert maps.uncertainty_check.isEnabled()


def test_training_error_is_shown_and_the_dock_stays_usable(viewer, qtbot, monkeypatch):
    from napari.utils.notifications import notification_manager

    from napari_rverdict._napari.train_dock import job as train_job

    sim, tr = add_dock(viewer, "Simulate"), add_dock(viewer, "Train")
    generate_in_dock(qtbot, sim, 500)

    def broken(data, config, stop_event, init_state=None):
        raise RuntimeError("CUDA out of memory (simulated)")
        yield  # pragma: no cover

    monkeypatch.setattr(train_job, "iter_training", broken)
    n_notes = len(notification_manager.records)
    qtbot.mouseClick(tr.start_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: tr.worker is None, timeout=30_000)
    assert tr.state.value == "crashed" and tr.session.bundle is None
    assert "Training failed" in tr.message.text() and "out of memory" in tr.message.text()
    assert any("out of memory" in str(r.message) for r in notification_manager.records[n_notes:])
    assert tr.start_btn.isEnabled() and not tr.stop_btn.isEnabled()
