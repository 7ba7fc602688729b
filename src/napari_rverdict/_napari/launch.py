"""``napari-rverdict``: napari with the four docks (Simulate, Train, Maps, Explore) and the phantom loaded."""

from __future__ import annotations

import argparse

PLUGIN = "napari-rverdict"
DOCKS = ("Simulate", "Train", "Maps", "Explore")
DOCK_WIDTH = 400  # px: room for the forms, and the canvas keeps most of a 1366 px wide screen


def open_viewer(viewer=None, *, sample: bool = True, show: bool = True):
    """Add the docks (tabified on the right, Simulate first) and, with ``sample``, the phantom.

    Returns ``(viewer, {dock name: widget})``. The phantom's lesion labels are pre-selected in the Maps dock; when
    the phantom's pretrained model was loaded the Maps dock is the tab in front.
    """
    import napari

    if viewer is None:
        viewer = napari.Viewer(title="napari-rverdict: VERDICT / rVERDICT maps", show=show)
    if sample:
        viewer.open_sample(PLUGIN, "prostate_phantom")  # contours, DWI selected: _napari.viewer_hooks
    widgets = {}
    docks = []
    for name in DOCKS:
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=False)
        widgets[name] = widget
        docks.append(dock)
    qt_window = viewer.window._qt_window  # one tab group: each dock keeps the full height
    for dock in docks[1:]:
        qt_window.tabifyDockWidget(docks[0], dock)
    from qtpy.QtCore import Qt, QTimer

    qt_window.resizeDocks(docks, [DOCK_WIDTH] * len(docks), Qt.Orientation.Horizontal)
    maps = widgets["Maps"]
    # with a model at hand (the phantom's pretrained bundle) the first thing to do is Compute maps
    # raise_() takes only once the event loop has laid out the tab group: called at once, another tab stayed in
    # front. So raise it now and again when the loop runs (the viewer may be closed by then).
    front = docks[DOCKS.index("Maps")] if maps.session.bundle is not None else docks[0]
    front.raise_()

    def raise_front():
        try:
            front.raise_()
        except RuntimeError:  # the dock was deleted before the event loop ran
            pass

    QTimer.singleShot(0, raise_front)
    if sample:
        maps.labels_combo.select("lesion labels")
        maps.dwi_combo.select("phantom DWI")
    return viewer, widgets


def main(argv=None) -> None:
    """Console script: open napari with the docks and the phantom (``--no-sample`` for an empty viewer)."""
    parser = argparse.ArgumentParser(prog="napari-rverdict", description=__doc__)
    parser.add_argument("--no-sample", action="store_true", help="do not load the prostate phantom")
    parser.add_argument("files", nargs="*", help="NIfTI files to open (DWI with its sidecar, labels, maps)")
    args = parser.parse_args(argv)
    import napari

    viewer, _ = open_viewer(sample=not args.no_sample)
    for path in args.files:
        viewer.open(path, plugin=PLUGIN)
    napari.run()


if __name__ == "__main__":  # pragma: no cover
    main()
