"""Refresh docs/images/explore.png from a real napari window at 1366×768 (the smallest screen the dock must fit).

    xvfb-run -a -s "-screen 0 1366x768x24" .venv/bin/python scripts/screenshot_explore.py

Opens napari with the phantom and the Explore dock, turns the noise band on (SNR 35, σ on each voxel's brightest
measurement), shows the compartments of the b = 1500 series, and picks a voxel inside the labels, whose
predicted signal comes from the phantom's ground-truth maps (given the metadata the Maps dock gives its map layers).
A few seconds on CPU.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images" / "explore.png"


def settle(app, seconds: float = 0.5) -> None:
    t0 = time.time()
    while time.time() - t0 < seconds:
        app.processEvents()
        time.sleep(0.02)


def main() -> int:
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-rverdict: Explore", show=True)
    app = QApplication.instance()
    win = viewer.window._qt_window
    win.showNormal()
    win.resize(1366, 768)
    viewer.open_sample("napari-rverdict", "prostate_phantom")
    dwi = viewer.layers["phantom DWI"]
    for ly in [ly for ly in viewer.layers if ly.name.startswith("truth ") and ly.metadata.get("map_name")]:
        name = ly.metadata["map_name"]
        viewer.add_image(np.asarray(ly.data), name=f"truth map {name}", visible=False, scale=ly.scale,
                         translate=ly.translate,
                         metadata={"rverdict_map": True, "map_name": name, "source_layer": dwi.name})
    for ly in viewer.layers:
        ly.visible = ly.name in ("phantom DWI", "lesion labels")
    viewer.layers["lesion labels"].contour = 1
    viewer.dims.set_current_step(0, 0)
    viewer.dims.set_current_step(1, 4)
    _, w = viewer.window.add_plugin_dock_widget("napari-rverdict", "Explore")
    w.noise_check.setChecked(True)
    w.compartments_combo.setCurrentIndex(3)  # the TE 90 ms (b = 1500) series
    w.set_parameter("R", 9.0)
    w.model_box.collapse(animate=False)
    w.voxel_box.expand(animate=False)
    w.dwi_combo.setCurrentText(dwi.name)
    z = 4  # a mid-gland slice; the voxel: the middle one of its labelled voxels
    lesion = np.argwhere(np.asarray(viewer.layers["lesion labels"].data)[z] > 0)
    y, x = (int(v) for v in lesion[len(lesion) // 2])
    w.show_voxel((z, y, x))
    viewer.reset_view()
    viewer.camera.zoom *= 1.6
    settle(app, 1.0)
    bar = w.scroll_area.verticalScrollBar()
    for _ in range(20):  # the scroll range follows the layout a little later: scroll until the plot is on top
        bar.setValue(w.plot_box.y() - 4)
        settle(app, 0.1)
        if abs(bar.value() - (w.plot_box.y() - 4)) <= 1:
            break
    settle(app, 0.3)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    img = win.grab().toImage()
    img.save(str(OUT))
    print(f"wrote {OUT} ({img.width()}x{img.height()}, {OUT.stat().st_size // 1024} kB); voxel (z {z}, y {y}, x {x}): "
          f"RMS {w.voxel.rmse:.3f}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
