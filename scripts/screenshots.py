"""Refresh the README screenshots from a real napari window under Xvfb, at a laptop and a desktop screen size.

    for s in 1366x768 1600x1000; do
        xvfb-run -a -s "-screen 0 ${s}x24" .venv/bin/python scripts/screenshots.py --size $s
    done

Opens napari as ``napari-rverdict`` does (the three docks tabbed on the right, the phantom and its pretrained
model from File ▸ Open Sample), sizes the main window to the screen, presses *Compute maps* and saves into
docs/images/:

* ``maps-WxH.png``  – the whole window: f_ic over a DWI slice (transparent outside the gland), lesion contours,
  the colorbar, the Maps dock with its ROI table;
* ``train-WxH.png`` – the whole window with the Train tab in front: the pretrained model's loss curves and
  validation table, restored from the bundle;
* ``simulate-WxH.png`` – the Simulate tab after *Match noise* (the phantom's gland) and *Generate* (``--n``
  signals), example signals open.

About 30 s per size on a CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"


def wait(app, cond=lambda: True, timeout=600.0, settle=0.0):
    t0 = time.time()
    while not cond():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("gave up waiting")
    t1 = time.time()
    while time.time() - t1 < settle:
        app.processEvents()
        time.sleep(0.02)


def save(img, path: Path, max_kb: int = 450) -> None:
    from qtpy.QtCore import Qt

    img.save(str(path))
    while path.stat().st_size > max_kb * 1024 and img.width() > 600:
        img = img.scaledToWidth(int(img.width() * 0.9), Qt.TransformationMode.SmoothTransformation)
        img.save(str(path))
    print(f"wrote {path.relative_to(ROOT)} ({img.width()}x{img.height()}, {path.stat().st_size // 1024} kB)")


def close_toasts(win) -> None:
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in win.findChildren(NapariQtNotification):  # a toast would cover the canvas
        toast.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1600x1000", help="window size WxH (the Xvfb screen must be as large)")
    parser.add_argument("--n", type=int, default=5000, help="signals for the Simulate screenshot")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    import torch
    from qtpy.QtCore import QRect
    from qtpy.QtWidgets import QApplication

    from napari_rverdict._napari.launch import open_viewer

    torch.set_num_threads(1)
    viewer, docks = open_viewer(sample=True, show=True)
    app = QApplication.instance()
    win = viewer.window._qt_window
    win.setGeometry(QRect(0, 0, width, height))
    wait(app, settle=0.5)
    if (win.width(), win.height()) != (width, height):
        print(f"the window is {win.width()}x{win.height()}, not {width}x{height}", file=sys.stderr)
        return 1
    sim, tr, maps = docks["Simulate"], docks["Train"], docks["Maps"]
    if maps.session.bundle is None:
        print("no pretrained bundle: run scripts/make_pretrained_bundle.py first", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)

    # Maps: first maps from the pretrained model
    maps.mask_combo.select("gland mask")
    maps.device_combo.setCurrentText("cpu")
    maps.compute()
    wait(app, lambda: maps.worker is None)
    if maps.maps is None:
        print("computing maps failed:", maps.message.text(), file=sys.stderr)
        return 1
    viewer.dims.set_current_step(1, 4)  # a mid-gland slice
    viewer.layers["f_ic [fraction]"].opacity = 0.8
    viewer.layers.selection.active = viewer.layers["f_ic [fraction]"]
    maps.parentWidget().raise_()
    viewer.reset_view()
    viewer.camera.zoom *= 1.6  # the gland fills the middle of the field of view
    close_toasts(win)
    wait(app, settle=0.8)
    save(win.grab().toImage(), OUT / f"maps-{width}x{height}.png")

    # Train: the pretrained model's curves and validation table, restored from the bundle
    tr.parentWidget().raise_()
    tr.plot.flush()
    wait(app, settle=0.3)
    tr.scroll_area.ensureWidgetVisible(tr.table, 0, 0)  # the curves and the table (the dock scrolls)
    close_toasts(win)
    wait(app, settle=0.8)
    save(win.grab().toImage(), OUT / f"train-{width}x{height}.png")

    # Simulate: noise matched to the phantom's gland, Generate, with the example signals open
    sim.match_dwi_combo.select("phantom DWI")
    sim.match_mask_combo.select("gland mask")
    sim.noise.match()
    wait(app, lambda: sim.noise.worker is None and not sim.noise.pending)
    sim.n_spin.setValue(args.n)
    sim.generate()
    wait(app, lambda: sim.worker is None)
    sim.plot_section.expand(animate=False)
    sim.parentWidget().raise_()
    close_toasts(win)
    wait(app, settle=0.8)
    save(win.grab().toImage(), OUT / f"simulate-{width}x{height}.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
