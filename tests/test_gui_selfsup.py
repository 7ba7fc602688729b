"""Maps dock: the self-supervised method (no model needed, live loss curve, Stop keeps the best weights), the
fit-quality layer of every method, and the SNR warning when the DWI's noise is not the model's."""

from __future__ import annotations

import copy

import numpy as np
import pytest

pytest.importorskip("napari")
from conftest import add_dock
from qtpy.QtCore import Qt

from napari_rverdict._napari.state import get_state

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_torch_thread")]
FIT = "fit_nrmse [fraction of signal]"


def _run(qtbot, maps, timeout=180_000):
    qtbot.mouseClick(maps.compute_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: maps.worker is None, timeout=timeout)


def _box_mask(viewer, name: str, z: slice, y: slice, x: slice) -> np.ndarray:
    """A labels layer ``name`` that is the gland mask inside a box (z, y, x); returns it (z, y, x) as bool."""
    gland = viewer.layers["gland mask"]
    box = np.zeros(gland.data.shape, dtype=bool)
    box[z, y, x] = True
    mask = (np.asarray(gland.data) > 0) & box
    viewer.add_labels(mask.astype(np.int32), name=name, scale=gland.scale, translate=gland.translate)
    return mask


def _self_supervised_dock(viewer, mask_name: str, epochs: int):
    maps = add_dock(viewer, "Maps")
    get_state(viewer).bundle = None  # self-supervised needs no model
    maps.method_combo.setCurrentText("self-supervised")
    maps.mask_combo.select(mask_name)
    maps.device_combo.setCurrentText("cpu")
    maps.epochs_spin.setValue(epochs)
    return maps


def test_self_supervised_without_a_model_adds_maps_fit_quality_and_a_loss_curve(viewer, qtbot, tmp_path):
    viewer.open_sample("napari-rverdict", "prostate_phantom")
    mask = _box_mask(viewer, "small mask", slice(3, 5), slice(None), slice(None))
    maps = _self_supervised_dock(viewer, "small mask", epochs=4)
    assert maps.ss_box.isVisibleTo(maps) and not maps.uncertainty_check.isEnabled()
    assert maps.ss_model_combo.currentData() == "rverdict"  # the sample's model, and the default without one
    maps.ss_model_combo.setCurrentIndex(maps.ss_model_combo.findData("verdict"))
    tip = maps.method_combo.itemData(maps.method_combo.findText("self-supervised"), 3)
    assert "own voxels" in tip and "Sen et al" in tip
    _run(qtbot, maps)
    assert maps.maps is not None, maps.message.text()
    assert "classic VERDICT" in maps.message.text() and "self-supervised: 4 epochs" in maps.message.text()
    # the maps as layers, the first shown and selected; the fit quality hidden, NaN outside the mask
    f_ic = viewer.layers["self-supervised f_ic [fraction]"]
    assert f_ic.visible and viewer.layers.selection.active is f_ic
    fit = viewer.layers["self-supervised " + FIT]
    assert not fit.visible and viewer.layers.selection.active is not fit
    assert np.isnan(fit.data[~mask]).all() and np.isfinite(fit.data[mask]).all()
    assert np.isnan(f_ic.data[~mask]).all() and np.isfinite(f_ic.data[mask]).all()
    assert fit.contrast_limits[0] == 0.0
    assert fit.contrast_limits[1] == pytest.approx(float(np.percentile(fit.data[mask], 98)), rel=1e-5)
    assert 0 < np.median(fit.data[mask]) < 0.2  # the model fits the phantom to about its noise (SNR ≈ 35 at b = 0)
    # the live loss curve: one point per epoch, train and held-out, in an opened section
    assert maps.loss_plot.val_x == [1.0, 2.0, 3.0, 4.0] and len(maps.loss_plot.train_y) == 4
    assert maps.loss_section.isVisibleTo(maps) and maps.loss_section.isExpanded()
    assert maps.progress.value() == 100
    # the loss axis names the loss the fit used (σ estimated from the phantom: Rician); epochs as whole numbers
    maps.loss_plot.flush()
    assert maps.loss_plot.ax.get_ylabel() == "Rician NLL (normalised signal)"
    assert all(float(t).is_integer() for t in maps.loss_plot.ax.get_xticks())
    # exports include the fit quality, named after the method
    written = maps.export_maps(tmp_path / "out")
    names = sorted(p.name for p in written)
    assert "phantom_DWI_selfsup_fit_nrmse.nii.gz" in names and "phantom_DWI_selfsup_f_ic.nii.gz" in names
    assert len(names) == len(maps.maps)
    # switching back to the network hides the self-supervised rows
    maps.method_combo.setCurrentText("network")
    assert not maps.ss_box.isVisibleTo(maps)


def test_self_supervised_loss_axis_says_mse_when_sigma_cannot_be_estimated(viewer, qtbot, monkeypatch):
    from napari_rverdict.maps import self_supervised

    monkeypatch.setattr(self_supervised, "estimated_sigma", lambda *a, **k: None)  # as for a DWI without air
    viewer.open_sample("napari-rverdict", "prostate_phantom")
    _box_mask(viewer, "small mask", slice(3, 5), slice(None), slice(None))
    maps = _self_supervised_dock(viewer, "small mask", epochs=2)
    _run(qtbot, maps)
    assert maps.maps is not None, maps.message.text()
    maps.loss_plot.flush()
    assert maps.loss_plot.ax.get_ylabel() == "MSE (normalised signal)"


def test_stop_keeps_the_best_weights_and_adds_the_maps(viewer, qtbot):
    viewer.open_sample("napari-rverdict", "prostate_phantom")
    mask = _box_mask(viewer, "half gland", slice(2, 6), slice(None), slice(None))
    maps = _self_supervised_dock(viewer, "half gland", epochs=5000)
    qtbot.mouseClick(maps.compute_btn, Qt.MouseButton.LeftButton)
    assert maps.stop_btn.isEnabled() and not maps.compute_btn.isEnabled()
    qtbot.waitUntil(lambda: len(maps.loss_plot.val_x) >= 2, timeout=120_000)
    qtbot.mouseClick(maps.stop_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: maps.worker is None, timeout=120_000)
    assert maps.maps is not None, maps.message.text()
    text = maps.message.text()
    assert "stopped at epoch" in text, text
    stopped_at = int(text.split("stopped at epoch ")[1].split(";")[0].split(")")[0])
    assert 2 <= stopped_at < 5000 and len(maps.loss_plot.val_x) == stopped_at
    r = viewer.layers["self-supervised R [µm]"].data
    assert np.isfinite(r[mask]).all() and np.isnan(r[~mask]).all()
    assert "self-supervised " + FIT in viewer.layers
    assert not maps.stop_btn.isEnabled() and maps.compute_btn.isEnabled()


def test_self_supervised_refuses_a_mask_too_small_to_learn_from(viewer, qtbot):
    viewer.open_sample("napari-rverdict", "prostate_phantom")
    _box_mask(viewer, "tiny", slice(4, 5), slice(28, 33), slice(28, 34))
    maps = _self_supervised_dock(viewer, "tiny", epochs=2)
    n_layers = len(viewer.layers)
    qtbot.mouseClick(maps.compute_btn, Qt.MouseButton.LeftButton)
    assert maps.worker is None and maps.message.kind == "error"
    assert "at least 100" in maps.message.text() and len(viewer.layers) == n_layers


@pytest.fixture(scope="module")
def phantom_bundles():
    """The sample's pretrained rVERDICT bundle twice: declared as trained at SNR 200 on the "peak" reference (every
    voxel at SNR 200, far above the scanner-like phantom's gland, median ≈ 22), and the same network with its noise
    matched to the phantom's own SNR distribution (as `--snr-from` stores it)."""
    from napari_rverdict._napari.sample_data import pretrained_bundle_path
    from napari_rverdict.data.dwi import load_dwi
    from napari_rverdict.data.label_files import load_mask
    from napari_rverdict.data.noise_estimate import estimate_noise
    from napari_rverdict.learn.bundle import load_bundle

    path = pretrained_bundle_path()
    if path is None:
        pytest.skip("no pretrained bundle in sample_data/pretrained")
    far = load_bundle(path)
    far.snr, far.snr_reference, far.noise_match = 200.0, "peak", None
    phantom = path.parent.parent / "phantom"
    dwi = load_dwi(phantom / "dwi.nii.gz")
    matched = copy.copy(far)
    matched.noise_match = estimate_noise(dwi, load_mask(phantom / "mask.nii.gz", dwi)).matched()
    return far, matched


def test_network_fit_quality_layer_and_the_snr_warning(viewer, qtbot, phantom_bundles, monkeypatch):
    from napari_rverdict._napari.maps_dock import feedback

    warned = []
    monkeypatch.setattr(feedback, "show_warning", warned.append)
    far, matched = phantom_bundles
    viewer.open_sample("napari-rverdict", "prostate_phantom")
    maps = add_dock(viewer, "Maps")
    get_state(viewer).bundle = far
    maps.mask_combo.select("gland mask")
    maps.device_combo.setCurrentText("cpu")
    _run(qtbot, maps)
    assert maps.maps is not None, maps.message.text()
    # the DWI's SNR is outside the training range: a warning in the message line and a notification; maps anyway
    text = maps.message.text()
    assert maps.message.kind == "warning" and "SNR warning" in text and "outside what the model" in text, text
    assert len(warned) == 1 and "SNR warning" in warned[0]
    gland = viewer.layers["gland mask"].data > 0
    fit = viewer.layers[FIT]
    assert not fit.visible and viewer.layers.selection.active is viewer.layers["f_ic [fraction]"]
    assert np.isnan(fit.data[~gland]).all() and np.isfinite(fit.data[gland]).all()
    assert fit.contrast_limits[0] == 0.0 and fit.metadata["method"] == "network"
    # the same network, its training noise matched to this DWI: no warning
    get_state(viewer).bundle = matched
    _run(qtbot, maps)
    assert maps.message.kind == "ok" and "SNR" not in maps.message.text(), maps.message.text()
    assert len(warned) == 1 and FIT in viewer.layers
