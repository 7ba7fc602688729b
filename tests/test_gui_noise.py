"""The Simulate dock's noise: the noise reference reaches ``simulate``, the effective-SNR line follows it, and
*Match noise* trains at a DWI's own noise (the phantom, made at SNR 35 on each voxel's brightest measurement) or says
clearly why it cannot."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("napari")
from conftest import add_dock  # noqa: E402
from qtpy.QtCore import Qt  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_torch_thread")]
LEFT = Qt.MouseButton.LeftButton
PHANTOM_SIGMA = 1000.0 / 35.0  # sample_data/phantom/phantom.json: one σ = S0 scale (1000) / SNR 35 on every volume
EFFECTIVE = re.compile(r"effective SNR at the brightest b = 0: median ([\d.]+) \(5–95 %: ([\d.]+)–([\d.]+)\)")


def _click(qtbot, button):
    assert button.isEnabled(), f"'{button.text()}' is disabled"
    qtbot.mouseClick(button, LEFT)


def _generate(qtbot, sim, n):
    sim.n_spin.setValue(n)
    sim.state.data = None
    _click(qtbot, sim.generate_btn)
    qtbot.waitUntil(lambda: sim.worker is None, timeout=60_000)
    assert sim.state.data is not None, sim.message.text()
    return sim.state.data


def _set(combo, key):
    combo.setCurrentIndex(combo.findData(key))


def _effective(qtbot, sim):
    """(median, p5, p95) of the effective-SNR line once the debounced update has run."""
    qtbot.waitUntil(lambda: not sim.noise.pending, timeout=10_000)
    match = EFFECTIVE.fullmatch(sim.effective_label.text())
    assert match is not None, sim.effective_label.text()
    return tuple(float(x) for x in match.groups())


def test_noise_reference_reaches_simulate(viewer, qtbot):
    sim = add_dock(viewer, "Simulate")
    assert sim.model_name == "rverdict"
    assert sim.reference_combo.currentData() == "s0"  # the library's default (the seed paper's)
    assert "S0 = 1" in sim.reference_combo.itemData(0, Qt.ItemDataRole.ToolTipRole)
    data = _generate(qtbot, sim, 400)
    assert data.snr_reference == "s0" and data.snr_setting == 35.0
    # σ = 1/35 where S0 = 1: a voxel's brightest measurement is at most S0 ≤ 1, so it never reaches SNR 35
    assert np.all(data.peak_snr <= 35.0 + 1e-9) and np.median(data.peak_snr) < 20
    assert 's0" reference' in sim.message.text()
    _set(sim.reference_combo, "peak")
    data = _generate(qtbot, sim, 400)
    assert data.snr_reference == "peak"
    np.testing.assert_allclose(data.peak_snr, 35.0, rtol=1e-9)  # σ on the brightest measurement: SNR itself


def test_effective_snr_follows_the_reference(viewer, qtbot):
    sim = add_dock(viewer, "Simulate")
    med, p5, p95 = _effective(qtbot, sim)
    # rVERDICT at SNR 35 on "s0": S0 ∈ [0.1, 1] and T1 / T2 decay spread it well below 35 (median ≈ 10)
    assert 7 < med < 14 and p5 < med < p95 < 35
    _set(sim.reference_combo, "peak")
    assert _effective(qtbot, sim) == (35.0, 35.0, 35.0)
    sim.snr_edit.setText("20")
    assert _effective(qtbot, sim) == (20.0, 20.0, 20.0)
    # classic VERDICT is S/S0 with each series' b = 0 equal to 1: "s0" gives the SNR itself too
    _set(sim.reference_combo, "s0")
    _set(sim.model_combo, "verdict")
    assert _effective(qtbot, sim) == (20.0, 20.0, 20.0)
    _set(sim.model_combo, "rverdict")
    assert _effective(qtbot, sim)[0] < 10  # rVERDICT "s0" at SNR 20 again spreads below it
    sim.snr_edit.setText("abc")  # an invalid SNR: no line rather than a stale one, at once (not after the debounce)
    assert sim.effective_label.text() == ""
    qtbot.waitUntil(lambda: not sim.noise.pending, timeout=10_000)
    assert sim.effective_label.text() == ""
    sim.snr_edit.setText("15–60")  # a range as the dock prints them (en dash) is accepted
    assert sim.generate_btn.isEnabled() and sim.settings()["snr"] == (15.0, 60.0)
    assert _effective(qtbot, sim)[2] <= 60


def test_match_noise_to_the_phantom_dwi(viewer, qtbot, tmp_path):
    from napari_rverdict.learn.bundle import load_bundle

    viewer.open_sample("napari-rverdict", "prostate_phantom")
    sim, tr = add_dock(viewer, "Simulate"), add_dock(viewer, "Train")
    sim.match_dwi_combo.select("phantom DWI")
    sim.match_mask_combo.select("gland mask")
    _click(qtbot, sim.match_btn)
    qtbot.waitUntil(lambda: sim.noise.worker is None, timeout=60_000)
    assert sim.match_message.kind == "ok" and not sim.match_message.isHidden(), sim.match_message.text()
    est = sim.noise.estimate
    assert "σ =" in sim.match_message.text() and est.method in sim.match_message.text()
    # the phantom was made with one σ = 1000 / 35 on every volume ("s0"): the estimate finds it
    assert abs(est.sigma / PHANTOM_SIGMA - 1) < 0.1
    assert est.n_voxels == int(np.count_nonzero(viewer.layers["gland mask"].data))
    assert not sim.snr_edit.isEnabled() and sim.snr_edit.text() == "matched to phantom DWI"
    # rVERDICT on "s0" (the default): one σ on S0's scale, the set's 95th-percentile SNR at the brightest b = 0 the
    # DWI's; the phantom's own S0-scale SNR is 1000 / σ = 35 with S0 up to ≈ 1100
    assert sim.reference_combo.currentData() == "s0" and sim.reference_combo.isEnabled()
    med, p5, p95 = _effective(qtbot, sim)
    assert abs(p95 / est.snr["peak"]["p95"] - 1) < 0.05 and p5 < med < p95
    data = _generate(qtbot, sim, 1000)
    assert data.snr_reference == "s0" and 30 < data.snr_setting < 45
    np.testing.assert_array_equal(data.snr, data.snr_setting)
    assert data.matched is not None and data.matched.source == "dwi.nii.gz"
    # on "peak" each signal's SNR is drawn from the DWI's per-voxel SNR
    _set(sim.reference_combo, "peak")
    med, p5, p95 = _effective(qtbot, sim)
    assert abs(med / est.snr["peak"]["median"] - 1) < 0.05 and p5 < med < p95
    data = _generate(qtbot, sim, 1000)
    assert data.snr_setting is None and data.snr_reference == "peak"
    assert data.matched is not None and data.matched.source == "dwi.nii.gz"
    assert data.matched.sigma == pytest.approx(est.sigma)
    lo, hi = data.matched.range()
    assert np.all((data.snr >= lo) & (data.snr <= hi))
    assert abs(np.median(data.snr) / est.snr["peak"]["median"] - 1) < 0.1  # drawn from the DWI's own SNR
    np.testing.assert_allclose(data.peak_snr, data.snr, rtol=1e-9)
    # the docks name the layer the user chose; the file name stays in the provenance (data.matched.source)
    assert "matched to 'phantom DWI'" in sim.message.text() and "dwi.nii.gz" not in sim.message.text()
    assert "SNR matched to 'phantom DWI'" in tr.data_label.text() and "dwi.nii.gz" not in tr.data_label.text()
    # the Train dock trains at the match, and the saved bundle keeps it
    tr.epochs_spin.setValue(1)
    tr.device_combo.setCurrentText("cpu")
    _click(qtbot, tr.start_btn)
    qtbot.waitUntil(lambda: tr.worker is None and tr.table.rowCount() > 0, timeout=120_000)
    assert "matched to 'phantom DWI'" in tr.table_caption.text()
    paths = tr.save_bundle(tmp_path / "matched.pt")
    loaded = load_bundle(paths[0])
    assert loaded.noise_match is not None and loaded.noise_match.source == "dwi.nii.gz"
    assert loaded.noise_match.layer == "phantom DWI"
    assert loaded.noise_match.sigma == pytest.approx(est.sigma)
    # Clear: the typed SNR and reference come back
    _click(qtbot, sim.clear_match_btn)
    assert sim.noise.estimate is None and sim.snr_edit.isEnabled() and sim.snr_edit.text() == "35"
    assert sim.reference_combo.currentData() == "s0" and sim.reference_combo.isEnabled()
    assert sim.match_message.isHidden()
    data = _generate(qtbot, sim, 300)
    assert data.matched is None and data.snr_setting == 35.0 and data.snr_reference == "s0"


def test_a_dwi_without_estimable_noise_gets_one_clear_message(viewer, qtbot, monkeypatch):
    from napari_rverdict._napari.reader import dwi_layer_data
    from napari_rverdict._napari.simulate_dock import noise
    from napari_rverdict.physics.protocol import Protocol

    shown = []
    monkeypatch.setattr(noise, "show_error", shown.append)
    # 4 volumes with distinct settings, the air zeroed: no background (PIESNO), too few volumes (MP-PCA), no repeats
    protocol = Protocol.innovate(direction_averaged=False)
    protocol = protocol.subset(np.isin(np.arange(len(protocol)), [0, 1, 5, 9]))
    data = np.zeros((16, 16, 4, 4), np.float32)
    data[4:12, 4:12] = np.random.default_rng(0).uniform(100, 200, (8, 8, 4, 4))
    layer, kwargs, _ = dwi_layer_data(data, np.eye(4), protocol=protocol, name="zeroed dwi")
    viewer.add_image(layer, **kwargs)
    sim = add_dock(viewer, "Simulate")
    sim.snr_edit.setText("20")
    _set(sim.reference_combo, "peak")
    sim.match_dwi_combo.select("zeroed dwi")
    _click(qtbot, sim.match_btn)
    qtbot.waitUntil(lambda: sim.noise.worker is None, timeout=60_000)
    text = sim.match_message.text()
    assert sim.match_message.kind == "error" and text.startswith("cannot estimate the noise of this DWI")
    assert not sim.match_message.isHidden()
    for what in ("piesno", "mppca", "repeats"):
        assert what in text
    assert shown == [text]
    assert sim.noise.estimate is None and sim.match_btn.isEnabled() and not sim.clear_match_btn.isEnabled()
    assert sim.snr_edit.isEnabled() and sim.snr_edit.text() == "20" and sim.reference_combo.currentData() == "peak"
    assert sim.settings()["snr"] == 20.0 and "snr_from" not in sim.settings()
