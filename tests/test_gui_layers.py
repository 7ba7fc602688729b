"""The docks' layer pickers follow renamed and removed layers; maps of two DWIs live side by side; a DWI deleted
while its maps compute gets none."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
from conftest import add_dock
from qtpy.QtCore import Qt

from napari_rverdict._napari._common import LayerWatch
from napari_rverdict._napari.state import _unwrap

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_torch_thread")]
F_IC = "f_ic [fraction]"


def _run(qtbot, maps):
    qtbot.mouseClick(maps.compute_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: maps.worker is None, timeout=120_000)


def _items(combo) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def _watchers(layer) -> list:
    """The LayerWatch objects connected to ``layer``'s name event."""
    out = []
    for cb in layer.events.name.callbacks:
        obj = cb[0]() if isinstance(cb, tuple) and callable(cb[0]) else getattr(cb, "__self__", None)
        if isinstance(obj, LayerWatch):
            out.append(obj)
    return out


def _map_layers(viewer) -> list:
    return [ly for ly in viewer.layers if (ly.metadata or {}).get("rverdict_map")]


def test_renaming_the_dwi_keeps_it_chosen_in_every_picker(viewer, qtbot):
    viewer.open_sample("napari-rverdict", "prostate_phantom")
    sim, maps, explore = (add_dock(viewer, n) for n in ("Simulate", "Maps", "Explore"))
    dwi = viewer.layers["phantom DWI"]
    sim.protocol_combo.setCurrentIndex(sim.find_protocol(("layer", "phantom DWI")))
    explore.protocol_combo.setCurrentIndex(explore.protocol_combo.findText("from layer 'phantom DWI'"))
    explore.dwi_combo.setCurrentText("phantom DWI")
    assert maps.dwi_combo.currentText() == "phantom DWI" and sim.match_dwi_combo.currentText() == "phantom DWI"

    dwi.name = "renamed DWI"  # as a double-click in the layer list does
    for combo in (maps.dwi_combo, sim.match_dwi_combo, explore.dwi_combo):
        assert combo.currentText() == "renamed DWI" and "phantom DWI" not in _items(combo)
    assert _unwrap(maps.dwi_combo.layer()) is dwi and _unwrap(sim.match_dwi_combo.layer()) is dwi
    assert tuple(sim.protocol_combo.currentData()) == ("layer", "renamed DWI")
    assert tuple(explore.protocol_combo.currentData()) == ("layer", "renamed DWI")
    assert sim.generate_btn.isEnabled()

    _run(qtbot, maps)
    assert maps.maps is not None and maps.message.kind == "ok", maps.message.text()
    assert viewer.layers[F_IC].metadata["source_layer"] == "renamed DWI"
    assert set(explore.map_layers(dwi)) >= {"f_ic"}
    # a rename after the maps: they follow their DWI, so a new Compute replaces them (no second set)
    n_maps = len(_map_layers(viewer))
    dwi.name = "DWI again"
    assert viewer.layers[F_IC].metadata["source_layer"] == "DWI again"
    _run(qtbot, maps)
    assert maps.message.kind == "ok", maps.message.text()
    assert len(_map_layers(viewer)) == n_maps and F_IC + " (DWI again)" not in viewer.layers

    # a removed layer is no longer followed: nothing of the docks stays connected to it
    assert _watchers(dwi)
    viewer.layers.remove(dwi)
    assert not _watchers(dwi)
    dwi.name = "gone DWI"
    assert maps.dwi_combo.layer() is None and "gone DWI" not in _items(sim.match_dwi_combo)


def test_maps_of_a_second_dwi_do_not_replace_the_first(viewer, qtbot):
    viewer.open_sample("napari-rverdict", "prostate_phantom")
    maps = add_dock(viewer, "Maps")
    maps.device_combo.setCurrentText("cpu")
    first = viewer.layers["phantom DWI"]
    _run(qtbot, maps)
    assert maps.message.kind == "ok", maps.message.text()
    f_ic = viewer.layers[F_IC]
    before = np.array(f_ic.data)
    n_first = len(_map_layers(viewer))

    second = viewer.add_image(np.asarray(first.data) * 0.5, name="second DWI", metadata=dict(first.metadata),
                              scale=first.scale, translate=first.translate)
    maps.dwi_combo.select("second DWI")
    _run(qtbot, maps)
    assert maps.message.kind == "ok", maps.message.text()
    assert viewer.layers[F_IC] is f_ic and f_ic.metadata["source_layer"] == "phantom DWI"
    np.testing.assert_array_equal(f_ic.data, before)
    other = viewer.layers[F_IC + " (second DWI)"]
    assert other.metadata["source_layer"] == "second DWI"
    assert len(_map_layers(viewer)) == 2 * n_first

    # the same DWI again: its own layers are replaced, nothing added
    _run(qtbot, maps)
    assert viewer.layers[F_IC + " (second DWI)"] is other and len(_map_layers(viewer)) == 2 * n_first
    maps.dwi_combo.select("phantom DWI")
    _run(qtbot, maps)
    assert viewer.layers[F_IC] is f_ic and len(_map_layers(viewer)) == 2 * n_first
    assert second in viewer.layers

    # renaming the second DWI renames the maps named after it; a new Compute of it still replaces them
    second.name = "follow-up DWI"
    assert viewer.layers[F_IC + " (follow-up DWI)"] is other and F_IC + " (second DWI)" not in viewer.layers
    assert other.metadata["source_layer"] == "follow-up DWI"
    maps.dwi_combo.select("follow-up DWI")
    _run(qtbot, maps)
    assert viewer.layers[F_IC + " (follow-up DWI)"] is other and len(_map_layers(viewer)) == 2 * n_first


def test_a_dwi_deleted_while_its_maps_compute_gets_none(viewer, qtbot):
    viewer.open_sample("napari-rverdict", "prostate_phantom")
    maps = add_dock(viewer, "Maps")
    maps.device_combo.setCurrentText("cpu")
    qtbot.mouseClick(maps.compute_btn, Qt.MouseButton.LeftButton)
    assert maps.worker is not None
    viewer.layers.remove("phantom DWI")  # before the worker's result reaches the dock
    qtbot.waitUntil(lambda: maps.worker is None, timeout=120_000)
    assert not _map_layers(viewer)
    assert maps.message.kind == "warning"
    assert "'phantom DWI' was removed while its maps were computed; nothing added" in maps.message.text()
    assert maps.maps is None
