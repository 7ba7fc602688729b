"""Refresh the README screenshots from a real napari window.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py

Opens napari with the three docks (as ``napari-rverdict`` does) and the phantom, simulates 10,000 signals, trains
a small MLP for a few epochs, computes the maps, and saves:

* docs/images/maps.png  – f_ic over a DWI slice with the lesion contours, the Maps dock visible;
* docs/images/train.png – the Train dock with its loss curves and validation table.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"


def wait(app, cond, timeout=600.0):
    t0 = time.time()
    while not cond():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("gave up waiting")


def save(img, path: Path, max_kb: int = 500) -> None:
    from qtpy.QtCore import Qt

    img.save(str(path))
    while path.stat().st_size > max_kb * 1024 and img.width() > 600:
        img = img.scaledToWidth(int(img.width() * 0.85), Qt.TransformationMode.SmoothTransformation)
        img.save(str(path))
    print(f"wrote {path} ({img.width()}x{img.height()}, {path.stat().st_size // 1024} kB)")


def main() -> int:
    from qtpy.QtWidgets import QApplication

    from napari_rverdict._napari.launch import open_viewer

    viewer, docks = open_viewer(sample=True, show=True)
    app = QApplication.instance()
    win = viewer.window._qt_window
    win.resize(1500, 950)
    wait(app, lambda: True)
    sim, tr, maps = docks["Simulate"], docks["Train"], docks["Maps"]

    sim.n_spin.setValue(10_000)
    sim.generate()
    wait(app, lambda: sim.worker is None)
    tr.epochs_spin.setValue(int(os.environ.get("SCREENSHOT_EPOCHS", "10")))
    tr.device_combo.setCurrentText("cpu")
    tr.start()
    wait(app, lambda: tr.worker is None and tr.table.rowCount() > 0)
    tr.plot.flush()
    tr.parentWidget().raise_()  # the Train tab
    wait(app, lambda: True)
    app.processEvents()
    time.sleep(0.3)
    app.processEvents()
    OUT.mkdir(parents=True, exist_ok=True)
    save(tr.parentWidget().grab().toImage(), OUT / "train.png")

    maps.dwi_combo.select("phantom DWI")
    maps.labels_combo.select("lesion labels")
    maps.mask_combo.select("gland mask")
    maps.compute()
    wait(app, lambda: maps.worker is None)
    if maps.maps is None:
        print("computing maps failed:", maps.message.text(), file=sys.stderr)
        return 1
    for layer in viewer.layers:  # f_ic over the DWI (b = 0 volume) with the lesion contours
        layer.visible = layer.name in ("phantom DWI", "f_ic [fraction]", "lesion labels")
    viewer.layers["f_ic [fraction]"].opacity = 0.75
    viewer.dims.set_current_step(0, 0)  # the DWI's first volume (b = 0)
    viewer.dims.set_current_step(1, 4)  # a mid-gland slice
    viewer.layers.selection.active = viewer.layers["f_ic [fraction]"]
    maps.parentWidget().raise_()
    viewer.reset_view()
    viewer.camera.zoom *= 1.8  # the gland fills the middle of the field of view: show it, not the background
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in win.findChildren(NapariQtNotification):  # the "Added 9 maps" toast would cover the canvas
        toast.close()
    for _ in range(10):
        app.processEvents()
        time.sleep(0.05)
    save(win.grab().toImage(), OUT / "maps.png")  # the whole window: canvas and docks
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
