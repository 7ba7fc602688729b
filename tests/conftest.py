"""GUI test fixtures (napari viewer with the plugin's docks). Only the GUI tests use these."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def viewer(make_napari_viewer):
    """A napari viewer (shown under Xvfb, so docks get real geometry)."""
    return make_napari_viewer(show=True)


def add_dock(viewer, name: str):
    """Open one of the plugin's docks through the manifest, as the Plugins menu does; returns the widget."""
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-rverdict", name)
    return widget


@pytest.fixture
def docks(viewer):
    """The three docks of one viewer: (simulate, train, maps)."""
    return tuple(add_dock(viewer, n) for n in ("Simulate", "Train", "Maps"))
