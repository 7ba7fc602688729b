"""Maps dock details (uncertainty threshold, NLLS table, bad inputs) and Simulate's input checking."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
from conftest import add_dock
from qtpy.QtCore import Qt

from napari_rverdict._napari.state import get_state

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def unc_bundle():
    """A tiny rVERDICT MLP trained with uncertainty (seconds on CPU)."""
    from napari_rverdict.data.synth import simulate
    from napari_rverdict.learn.config import TrainConfig
    from napari_rverdict.learn.train import train

    data = simulate("rverdict", "innovate", n=1500, snr=35, seed=0)
    return train(data, TrainConfig(epochs=2, device="cpu", uncertainty=True)).bundle


def _run(qtbot, maps):
    qtbot.mouseClick(maps.compute_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: maps.worker is None, timeout=120_000)


def test_uncertainty_layers_threshold_and_roi_mean_sd(viewer, qtbot, unc_bundle, tmp_path):
    viewer.open_sample("napari-rverdict", "prostate_phantom")
    maps = add_dock(viewer, "Maps")
    get_state(viewer).bundle = None  # the sample's pretrained model: not this test's
    assert not maps.uncertainty_check.isEnabled()  # no model yet
    get_state(viewer).bundle = unc_bundle
    assert unc_bundle.has_uncertainty and maps.uncertainty_check.isEnabled()
    maps.uncertainty_check.setChecked(True)
    maps.labels_combo.select("lesion labels")
    maps.mask_combo.select("gland mask")
    _run(qtbot, maps)
    assert maps.maps is not None, maps.message.text()
    names = [ly.name for ly in viewer.layers]
    i = names.index("R [µm]")
    assert names[i + 1] == "R sd [µm]"  # the sd layer sits next to its map
    sd_layer = viewer.layers["R sd [µm]"]
    assert sd_layer.data.shape == viewer.layers["R [µm]"].data.shape
    gland = viewer.layers["gland mask"].data > 0
    assert np.all(sd_layer.data[gland] > 0) and np.all(np.isnan(sd_layer.data[~gland]))

    # threshold: voxels whose sd is above the value are hidden (NaN); 0 shows everything again
    sd = maps.maps["R_sd"]
    thr = float(np.median(sd[sd > 0]))
    maps.set_sd_threshold("R", thr)
    thr = maps.sd_spin.value()  # the value the dock shows (rounded to its decimals) is the one applied
    shown = viewer.layers["R [µm]"].data
    hidden = np.isnan(shown)
    sd_t = sd.transpose(2, 1, 0)
    np.testing.assert_array_equal(hidden, (sd_t > thr) | np.isnan(sd_t))  # NaN outside the mapped voxels
    assert 0 < (hidden & gland).sum() < gland.sum()
    maps.set_sd_threshold("R", 0)
    assert not np.isnan(viewer.layers["R [µm]"].data[gland]).any()
    np.testing.assert_array_equal(viewer.layers["R [µm]"].data, maps.maps["R"].transpose(2, 1, 0))

    # export: maps and sd maps, the sd with its map's unit
    from napari_rverdict.data.map_files import load_maps

    written = maps.export_maps(tmp_path / "maps")
    assert len(written) == len(maps.maps)  # every map and every sd map
    assert maps.export_maps(tmp_path / "maps") == [] and "exist" in maps.message.text()  # never overwritten unasked
    assert len(maps.export_maps(tmp_path / "maps", overwrite=True)) == len(maps.maps)
    back, units = load_maps(tmp_path / "maps", prefix="phantom_DWI_", with_units=True)
    np.testing.assert_array_equal(back["R_sd"], sd)
    assert units["R_sd"] == units["R"] != ""

    # ROI table carries the mean sd of each label
    row = maps.roi_table.get("R", 3)
    lesion = viewer.layers["lesion labels"].data == 3
    assert row["n"] == int(lesion.sum())
    assert row["mean_sd"] == pytest.approx(float(sd.transpose(2, 1, 0)[lesion].mean()), rel=1e-4)


def test_nlls_reference_table(viewer, qtbot, unc_bundle):
    viewer.open_sample("napari-rverdict", "prostate_phantom")
    maps = add_dock(viewer, "Maps")
    get_state(viewer).bundle = unc_bundle
    small = np.zeros(viewer.layers["gland mask"].data.shape, dtype=np.int32)
    small[4, 28:33, 28:34] = 1  # 30 voxels: NLLS stays quick
    viewer.add_labels(small, name="small mask", scale=viewer.layers["gland mask"].scale,
                      translate=viewer.layers["gland mask"].translate)
    maps.mask_combo.select("small mask")
    maps.method_combo.setCurrentText("NLLS")
    maps.device_combo.setCurrentText("cpu")
    _run(qtbot, maps)
    assert maps.nlls_maps is not None, maps.message.text()
    assert "NLLS R [µm]" in viewer.layers and not viewer.layers["NLLS R [µm]"].visible
    for name in ("fit_nrmse [fraction of signal]", "NLLS fit_nrmse [fraction of signal]"):  # each method's fit
        fit = viewer.layers[name]
        assert not fit.visible and fit.contrast_limits[0] == 0.0
        assert np.isfinite(fit.data[small > 0]).all() and np.isnan(fit.data[small == 0]).all()
    assert maps.cmp_table_widget.isVisibleTo(maps) and maps.cmp_table_widget.rowCount() > 0
    headers = [maps.cmp_table_widget.horizontalHeaderItem(j).text() for j in range(3)]
    assert headers == ["map [unit]", "RMSE", "MAPE (% of range)"]  # the Train dock's columns
    maps.labels_combo.select("lesion labels")
    # a network-only rerun replaces the NLLS layers of the first run instead of leaving them
    maps.method_combo.setCurrentText("network")
    _run(qtbot, maps)
    assert maps.nlls_maps is None and not any(ly.name.startswith("NLLS") for ly in viewer.layers)
    maps.method_combo.setCurrentText("NLLS")
    _run(qtbot, maps)
    assert maps.nlls_maps is not None, maps.message.text()
    # ROI table: the same map columns for both methods, one row per region and method
    roi = maps.roi_table_widget
    headers = [roi.horizontalHeaderItem(j).text() for j in range(roi.columnCount())]
    assert headers[:3] == ["region", "method", "n"] and "R [µm]" in headers
    methods = [roi.item(i, 1).text() for i in range(roi.rowCount())]
    assert set(methods) == {"network", "NLLS"} and methods.count("network") == methods.count("NLLS")
    row = maps.comparison.get("R", "all")
    assert row["n"] == 30
    net, ref = maps.maps["R"], maps.nlls_maps["R"]
    inside = small.transpose(2, 1, 0) > 0
    assert row["mse"] == pytest.approx(float(np.mean((net[inside] - ref[inside]) ** 2)), rel=1e-4)


def _snapshot(viewer):
    return [(ly.name, ly.data.shape) for ly in viewer.layers]


def test_bad_inputs_show_a_message_and_change_nothing(viewer, qtbot, unc_bundle):
    from napari.utils.notifications import notification_manager

    maps = add_dock(viewer, "Maps")
    # no DWI layer
    n_notes = len(notification_manager.records)
    _run(qtbot, maps)
    assert maps.message.kind == "error" and "No DWI layer" in maps.message.text()
    assert "No DWI layer" in str(notification_manager.records[n_notes:][-1].message)  # a napari notification too
    assert len(viewer.layers) == 0 and maps.maps is None

    viewer.open_sample("napari-rverdict", "prostate_phantom_dwi")
    dwi = viewer.layers["phantom DWI"]
    get_state(viewer).bundle = None  # the sample's pretrained model: not this test's
    # no model
    before = _snapshot(viewer)
    _run(qtbot, maps)
    assert maps.message.kind == "error" and "No model" in maps.message.text()
    assert _snapshot(viewer) == before

    # protocol length mismatch: 19 volumes with the 20-entry protocol
    get_state(viewer).bundle = unc_bundle
    viewer.add_image(dwi.data[:19], name="cut DWI", scale=dwi.scale, translate=dwi.translate,
                     metadata=dict(dwi.metadata))
    maps.dwi_combo.select("cut DWI")
    before = _snapshot(viewer)
    _run(qtbot, maps)
    assert maps.message.kind == "error" and "but the protocol has" in maps.message.text()
    assert "19 volumes" in maps.message.text() and "20" in maps.message.text()
    assert _snapshot(viewer) == before and maps.maps is None

    # a mask on another grid
    maps.dwi_combo.select("phantom DWI")
    viewer.add_labels(np.ones((3, 4, 5), dtype=np.int32), name="odd mask")
    maps.mask_combo.select("odd mask")
    before = _snapshot(viewer)
    _run(qtbot, maps)
    assert maps.message.kind == "error" and "odd mask" in maps.message.text()
    assert _snapshot(viewer) == before and maps.maps is None
    assert maps.compute_btn.isEnabled()

    # a protocol the model was not trained on (b-values off by far more than 5 %): the missing b-values named
    from napari_rverdict.physics.protocol import Protocol
    from napari_rverdict.physics.protocol_files import load_protocol

    d = load_protocol("innovate").to_dict()
    d["b"] = [1.7 * b + 50 for b in d["b"]]
    maps.mask_combo.select("gland mask") if "gland mask" in viewer.layers else maps.mask_combo.setCurrentIndex(0)
    viewer.add_image(dwi.data[::2], name="other protocol", scale=dwi.scale, translate=dwi.translate,
                     metadata=dict(dwi.metadata, protocol=Protocol.from_dict(d)))
    maps.dwi_combo.select("other protocol")
    before = _snapshot(viewer)
    _run(qtbot, maps)
    assert maps.message.kind == "error" and "no b = 90, 500, 1500, 2000, 3000 s/mm²" in maps.message.text()
    assert _snapshot(viewer) == before and maps.maps is None
    # nothing to export yet
    assert maps.export_maps("unused") == [] and maps.message.kind == "error"


def test_mask_and_labels_files_on_another_grid_are_refused(viewer, qtbot, unc_bundle, tmp_path):
    """A patient's mask / labels NIfTI of the DWI's shape but on another grid (the voxel order flipped by another
    tool, or an origin 10 mm off): opened beside the DWI it has the right shape, so only its affine tells; the maps
    and ROI statistics would otherwise sit on the wrong voxels. One message, nothing added; the right file works."""
    import nibabel as nib

    from napari_rverdict.data.phantom import sample_data_dir

    src = sample_data_dir()
    mask_img = nib.load(str(src / "mask.nii.gz"))
    mask = np.asarray(mask_img.dataobj).astype(np.uint8)
    aff = mask_img.affine
    flipped = aff.copy()
    flipped[:3, 0] *= -1
    flipped[:3, 3] = aff[:3, 3] + aff[:3, 0] * (mask.shape[0] - 1)  # the same world box, x stored the other way
    nib.save(nib.Nifti1Image(mask[::-1], flipped), str(tmp_path / "mask flipped.nii.gz"))
    shifted = aff.copy()
    shifted[:3, 3] += 10.0
    labels = np.asarray(nib.load(str(src / "labels.nii.gz")).dataobj).astype(np.int16)
    nib.save(nib.Nifti1Image(labels, shifted), str(tmp_path / "labels shifted.nii.gz"))
    nib.save(nib.Nifti1Image(mask, aff), str(tmp_path / "mask same grid.nii.gz"))

    maps = add_dock(viewer, "Maps")
    viewer.open(str(src / "dwi.nii.gz"), plugin="napari-rverdict")
    for name in ("mask flipped", "labels shifted", "mask same grid"):
        viewer.open(str(tmp_path / f"{name}.nii.gz"), plugin="napari-rverdict")
    get_state(viewer).bundle = unc_bundle
    maps.dwi_combo.select("dwi")
    maps.mask_combo.select("mask flipped")
    before = _snapshot(viewer)
    _run(qtbot, maps)
    assert maps.message.kind == "error" and "'mask flipped' is on another grid" in maps.message.text()
    assert _snapshot(viewer) == before and maps.maps is None
    maps.mask_combo.select("mask same grid")
    maps.labels_combo.select("labels shifted")
    _run(qtbot, maps)
    assert maps.message.kind == "error" and "'labels shifted' is on another grid" in maps.message.text()
    assert _snapshot(viewer) == before and maps.maps is None
    maps.labels_combo.setCurrentIndex(0)  # (none)
    _run(qtbot, maps)
    assert maps.maps is not None, maps.message.text()


def test_what_the_library_warns_about_is_said_with_the_maps(viewer, qtbot, unc_bundle):
    """A DWI whose volumes are not in the order its sidecar says (each series' b = 0 swapped with its first
    diffusion-weighted volume): the library warns that the b = 0 lies below the diffusion-weighted signal in most
    voxels, in the worker. The maps came with a green 'done' and no notification; now the message is a warning
    that says it, and a notification too."""
    from napari.utils.notifications import notification_manager

    viewer.open_sample("napari-rverdict", "prostate_phantom_dwi")
    dwi = viewer.layers["phantom DWI"]
    swap = [i for s in range(0, 20, 4) for i in (s + 1, s, s + 2, s + 3)]
    viewer.add_image(np.asarray(dwi.data)[swap], name="swapped", scale=dwi.scale, translate=dwi.translate,
                     metadata=dict(dwi.metadata))
    maps = add_dock(viewer, "Maps")
    get_state(viewer).bundle = unc_bundle
    maps.dwi_combo.select("swapped")
    maps.device_combo.setCurrentText("cpu")
    n_notes = len(notification_manager.records)
    _run(qtbot, maps)
    assert maps.maps is not None, maps.message.text()
    assert maps.message.kind == "warning", maps.message.text()
    assert "b = 0 signal is below the diffusion-weighted signal" in maps.message.text()
    assert any("b = 0 signal is below" in str(n.message) for n in notification_manager.records[n_notes:])
    # the same DWI in its own order: a plain 'done', nothing to warn about
    maps.dwi_combo.select("phantom DWI")
    _run(qtbot, maps)
    assert maps.message.kind == "ok" and "below" not in maps.message.text(), maps.message.text()


def test_simulate_rejects_invalid_ranges_and_snr(viewer, qtbot):
    sim = add_dock(viewer, "Simulate")
    assert sim.generate_btn.isEnabled()
    sim.set_range("R", 10, 5)  # low >= high
    assert not sim.generate_btn.isEnabled()
    assert sim.message.kind == "error" and "R" in sim.message.text()
    sim.generate()  # pressing anyway (e.g. a shortcut) changes nothing
    assert sim.worker is None and sim.state.data is None
    sim.set_range("R", 0.01, 15)
    assert sim.generate_btn.isEnabled()
    sim.set_range("f_ic", "abc", 0.9)
    assert not sim.generate_btn.isEnabled() and "not a number" in sim.message.text()
    sim.set_range("f_ic", 0.01, 0.99)
    sim.snr_edit.setText("60-15")
    assert not sim.generate_btn.isEnabled() and "SNR" in sim.message.text()
    sim.snr_edit.setText("-3")
    assert not sim.generate_btn.isEnabled()
    sim.snr_edit.setText("15-60")
    assert sim.generate_btn.isEnabled()
    assert sim.settings()["snr"] == (15.0, 60.0)
    assert sim.state.data is None


def test_simulate_uses_the_dwi_layer_protocol(viewer, qtbot):
    sim = add_dock(viewer, "Simulate")
    assert sim.protocol_combo.count() == 1  # the INNOVATE preset only
    viewer.open_sample("napari-rverdict", "prostate_phantom_dwi")
    idx = sim.find_protocol(("layer", "phantom DWI"))
    assert idx > 0
    sim.protocol_combo.setCurrentIndex(idx)
    prot = sim.protocol()
    layer_prot = viewer.layers["phantom DWI"].metadata["protocol"]
    assert len(layer_prot) == 20 and len(prot) == 10  # direction-averaged, as the networks use it
    assert set(np.round(prot.b)) == set(np.round(layer_prot.b))
    sim.n_spin.setValue(200)
    qtbot.mouseClick(sim.generate_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: sim.worker is None, timeout=60_000)
    assert sim.state.data is not None and len(sim.state.data.protocol) == 10
    # another layer arrives: the choice is kept
    viewer.add_image(np.zeros((4, 4)), name="other")
    assert sim.protocol_combo.currentIndex() == sim.find_protocol(("layer", "phantom DWI"))
    # the layer goes away: the choice falls back to the preset and Generate still works
    viewer.layers.remove("phantom DWI")
    assert sim.find_protocol(("layer", "phantom DWI")) < 0 and sim.protocol_combo.currentIndex() == 0
    assert sim.generate_btn.isEnabled()


def test_simulate_protocol_from_a_file(viewer, qtbot, tmp_path):
    from napari_rverdict.physics.protocol_files import load_protocol, write_scheme

    sim = add_dock(viewer, "Simulate")
    sim.model_combo.setCurrentIndex(sim.model_combo.findData("verdict"))  # classic VERDICT needs no TR
    path = tmp_path / "p.scheme"
    write_scheme(load_protocol("innovate"), path)
    sim.set_protocol_file(str(path))
    assert sim.protocol_combo.currentIndex() == sim.find_protocol(("file", str(path)))
    assert len(sim.protocol()) == 10 and sim.generate_btn.isEnabled()
    from napari.utils.notifications import notification_manager

    n_notes = len(notification_manager.records)
    sim.set_protocol_file(str(tmp_path / "missing.scheme"))
    # as the Maps and Explore docks: the same words in the dock and in a napari notification
    assert sim.message.kind == "error" and "Cannot read the protocol file" in sim.message.text()
    assert [str(r.message) for r in notification_manager.records[n_notes:]] == [sim.message.text()]
    ex, maps = add_dock(viewer, "Explore"), add_dock(viewer, "Maps")
    for dock in (ex, maps):
        n_notes = len(notification_manager.records)
        dock.set_protocol_file(str(tmp_path / "missing.scheme"))
        assert dock.message.kind == "error" and "Cannot read the protocol file" in dock.message.text()
        assert [str(r.message) for r in notification_manager.records[n_notes:]] == [dock.message.text()]


# ---------------------------------------------------------------------- NaN outside the mask


def test_nan_maps_limits_threshold_and_roi_use_inside_values_only(viewer, qtbot, unc_bundle, monkeypatch):
    """Maps NaN outside the mask (as ``scatter_maps`` writes them): finite contrast limits from inside values
    only, NaN kept by the sd threshold, ROI statistics that never count NaN."""
    from napari_rverdict._napari.maps_dock import dock as maps_dock
    from napari_rverdict._napari.maps_dock.layers import auto_limits

    real_job = maps_dock.compute_job

    def nan_outside_mask(bundle, dwi, mask, *args, **kwargs):
        out = real_job(bundle, dwi, mask, *args, **kwargs)
        net = out["results"]["network"]
        out["results"]["network"] = {k: np.where(mask, v, np.nan) for k, v in net.items()}
        return out

    monkeypatch.setattr(maps_dock, "compute_job", nan_outside_mask)
    viewer.open_sample("napari-rverdict", "prostate_phantom")
    maps = add_dock(viewer, "Maps")
    get_state(viewer).bundle = unc_bundle
    maps.uncertainty_check.setChecked(True)
    maps.labels_combo.select("lesion labels")
    maps.mask_combo.select("gland mask")
    maps.device_combo.setCurrentText("cpu")
    _run(qtbot, maps)
    assert maps.maps is not None, maps.message.text()
    mask = viewer.layers["gland mask"].data.transpose(2, 1, 0) != 0
    sd = maps.maps["R_sd"]
    assert np.isnan(sd[~mask]).all() and np.isfinite(sd[mask]).all()
    sd_layer = maps.map_layers["R_sd"]
    lo, hi = sd_layer.contrast_limits
    assert np.isfinite(lo) and np.isfinite(hi) and hi > lo
    assert (lo, hi) == pytest.approx(tuple(np.percentile(sd[mask], [2, 98])), rel=1e-5)
    # napari draws NaN with vispy's colormap "bad colour", fully transparent
    node = viewer.window._qt_viewer.layer_to_visual[maps.map_layers["R"]].node
    assert node.cmap.bad_color.rgba[3] == 0
    # the threshold hides with NaN and leaves the outside NaN
    maps.set_sd_threshold("R", float(np.median(sd[mask])))
    shown = maps.map_layers["R"].data.transpose(2, 1, 0)
    assert np.isnan(shown[~mask]).all()
    threshold = maps.sd_spin.value()  # as the spin box rounds it
    assert np.isfinite(shown[mask]).sum() == int((sd[mask] <= threshold).sum())
    # ROI statistics: every voxel counted is finite and inside the mask
    labels = viewer.layers["lesion labels"].data.transpose(2, 1, 0)
    for row in maps.roi_table.rows:
        if row["map"] == "R":
            sel = (labels == row["label"]) & mask
            assert row["n"] == int(sel.sum())
            assert np.isfinite(row["mean"]) or row["n"] == 0
    # the helper itself: only finite values count
    data = np.full((4, 4, 4), np.nan)
    data[1:3, 1:3, 1:3] = np.linspace(2.0, 9.0, 8).reshape(2, 2, 2)
    assert auto_limits(data) == pytest.approx(tuple(np.percentile(data[np.isfinite(data)], [2, 98])))
    assert auto_limits(np.full((2, 2, 2), np.nan)) == (0.0, 1.0)


# ---------------------------------------------------------------------- closing a dock stops its job


def _close_dock(viewer, name: str):
    """Open dock ``name`` and return (widget, close): ``close()`` removes it as its close button does."""
    dock_widget, widget = viewer.window.add_plugin_dock_widget("napari-rverdict", name)
    return widget, lambda: viewer.window.remove_dock_widget(dock_widget)


def test_closing_the_maps_dock_stops_the_nlls_fit(viewer, qtbot, unc_bundle, monkeypatch):
    """The NLLS fit gets a stop event; closing the dock sets it and the fit's FitCancelled is a quiet stop."""
    import threading

    from napari_rverdict.maps import nlls

    started, seen = threading.Event(), []

    def fake_fit(model, dwi, protocol=None, mask=None, device=None, init=None, progress=None, stop_event=None):
        seen.append(stop_event)
        started.set()
        if stop_event is None or not stop_event.wait(60):
            return {}
        raise nlls.FitCancelled("stopped")

    monkeypatch.setattr(nlls, "fit_volume", fake_fit)
    viewer.open_sample("napari-rverdict", "prostate_phantom")
    maps, close = _close_dock(viewer, "Maps")
    get_state(viewer).bundle = unc_bundle
    maps.mask_combo.select("gland mask")
    maps.method_combo.setCurrentText("NLLS")
    maps.device_combo.setCurrentText("cpu")
    qtbot.mouseClick(maps.compute_btn, Qt.MouseButton.LeftButton)
    worker = maps.worker
    results = []
    worker.returned.connect(results.append)
    qtbot.waitUntil(started.is_set, timeout=120_000)
    close()
    assert maps.worker is None and maps.stop_event.is_set()
    assert isinstance(seen[0], threading.Event) and seen[0] is maps.stop_event
    worker.returned.connect(results.append)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=30_000)
    qtbot.wait(50)
    assert all(r["stopped"] and r["results"] == {} for r in results)  # not an error, no maps
    assert not any(ly.name.startswith("NLLS") for ly in viewer.layers)


def test_closing_the_maps_dock_stops_the_real_nlls_fit(viewer, qtbot, unc_bundle):
    """The real fit_volume, on the whole gland: closing the dock during the NLLS stage ends the worker soon."""
    viewer.open_sample("napari-rverdict", "prostate_phantom")
    maps, close = _close_dock(viewer, "Maps")
    get_state(viewer).bundle = unc_bundle
    maps.mask_combo.select("gland mask")
    maps.method_combo.setCurrentText("NLLS")
    maps.device_combo.setCurrentText("cpu")
    qtbot.mouseClick(maps.compute_btn, Qt.MouseButton.LeftButton)
    worker = maps.worker
    qtbot.waitUntil(lambda: maps.progress.format().startswith("NLLS"), timeout=120_000)
    close()
    assert maps.worker is None and maps.stop_event.is_set()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=60_000)
    assert not any(ly.name.startswith("NLLS") for ly in viewer.layers)


def test_closing_the_simulate_dock_stops_generate(viewer, qtbot, monkeypatch):
    import time

    from napari_rverdict._napari.simulate_dock import dock as sim_dock

    calls = []

    def slow_simulate(progress=None, **kwargs):
        for i in range(6000):  # a minute unless stopped
            calls.append(i)
            progress(i / 6000)
            time.sleep(0.01)
        return "finished"

    monkeypatch.setattr(sim_dock, "simulate", slow_simulate)
    sim, close = _close_dock(viewer, "Simulate")
    qtbot.mouseClick(sim.generate_btn, Qt.MouseButton.LeftButton)
    worker = sim.worker
    assert worker is not None
    qtbot.waitUntil(lambda: len(calls) > 2, timeout=30_000)
    close()
    assert sim.worker is None and sim.stop_event.is_set() and sim._pbar is None
    results = []
    worker.returned.connect(results.append)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=10_000)
    qtbot.wait(50)
    assert len(calls) < 6000 and results in ([], [None])
    assert get_state(viewer).data is None
