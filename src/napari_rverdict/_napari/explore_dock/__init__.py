"""Dock 4 — Explore: ``form`` builds the widgets and their layout, ``plot`` draws (plain matplotlib, no Qt),
``whatif`` is the protocol what-if, ``dock`` holds the behaviour. ``ExploreWidget`` is imported on first use, so
``plot`` can be used headless (the redraw benchmark)."""

from __future__ import annotations

__all__ = ["ExploreWidget"]


def __getattr__(name):
    if name == "ExploreWidget":
        from napari_rverdict._napari.explore_dock.dock import ExploreWidget

        return ExploreWidget
    raise AttributeError(name)
