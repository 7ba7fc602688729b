"""Dock 1 — Simulate: ``form`` builds the widgets and their layout, ``dock`` holds the behaviour."""

from napari_rverdict._napari.simulate_dock.dock import SimulateWidget

__all__ = ["SimulateWidget"]
