"""Dock 3 — Maps: ``form`` builds the widgets and their layout, ``job`` is the worker and its input checks,
``layers`` puts maps into the viewer, ``tables`` shows the compare tables, ``dock`` holds the behaviour."""

from napari_rverdict._napari.maps_dock.dock import MapsWidget

__all__ = ["MapsWidget"]
