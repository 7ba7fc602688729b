"""Dock 2 — Train: ``form`` builds the widgets and their layout, ``job`` is the worker, ``dock`` the behaviour."""

from napari_rverdict._napari.train_dock.dock import TrainWidget

__all__ = ["TrainWidget"]
