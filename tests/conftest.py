"""Shared test fixtures: one torch thread for batched-fit tests; a napari viewer with the plugin's docks (GUI tests);
a fresh Python interpreter on this checkout (what a command line start or a first import does)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def generate_in_dock(qtbot, sim, n: int) -> None:
    """Click the Simulate dock's Generate for ``n`` signals and wait until the data set is there."""
    from qtpy.QtCore import Qt

    sim.n_spin.setValue(n)
    qtbot.mouseClick(sim.generate_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: sim.worker is None and sim.state.data is not None, timeout=60_000)


@pytest.fixture
def docks(viewer):
    """The three docks of one viewer: (simulate, train, maps)."""
    return tuple(add_dock(viewer, n) for n in ("Simulate", "Train", "Maps"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module (restored after): many small batched ops on a shared 2-core
    machine stall with two threads. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def fresh_python():
    """``fresh_python(*args, env=None, **kw)``: ``python *args`` in a new interpreter that imports this checkout's
    package (``src`` first on PYTHONPATH; ``env`` adds variables), output captured as text → CompletedProcess."""
    src = str(Path(__file__).resolve().parents[1] / "src")

    def run(*args, env=None, **kw):
        full = dict(os.environ, **(env or {}))
        full["PYTHONPATH"] = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
        return subprocess.run([sys.executable, *args], check=False, capture_output=True, text=True, env=full,
                              timeout=120, **kw)

    return run
