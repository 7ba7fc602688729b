"""fit_nrmse: ≈ 0 on noise-free signals with the true maps, ≈ the noise level on noisy ones, large where the signal
is corrupted; NaN outside the mask; returned by every method (network in memory and streamed, NLLS)."""

import numpy as np
import pytest

from napari_rverdict.data.noise import add_rician_noise
from napari_rverdict.data.phantom import make_phantom
from napari_rverdict.data.synth import noise_free_signals, simulate
from napari_rverdict.errors import InputError
from napari_rverdict.maps.fit_quality import FIT_NRMSE, fit_nrmse, least_squares_scale, predicted_signal
from napari_rverdict.physics import Protocol, get_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _classic_truth(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"f_ic": rng.uniform(0.1, 0.7, n), "f_vasc": rng.uniform(0.01, 0.15, n), "R": rng.uniform(4, 12, n)}


def _relaxed_classic(truth, prot, rng):
    """Classic VERDICT as acquired: each series T1/T2-weighted, S0 varying (the per-series ratio removes both)."""
    n = len(truth["f_ic"])
    t1, t2 = rng.uniform(1200, 2500, n)[:, None], rng.uniform(60, 150, n)[:, None]
    weight = (rng.uniform(500, 1500, n)[:, None] * (1 - np.exp(-np.asarray(prot.tr) / t1))
              * np.exp(-np.asarray(prot.te) / t2))
    return noise_free_signals("verdict", truth, prot) * weight


@pytest.mark.parametrize("name", ["verdict", "rverdict"])
def test_zero_on_noise_free_signals_with_the_true_maps(name):
    prot = Protocol.innovate()
    rng = np.random.default_rng(1)
    if name == "verdict":
        truth = _classic_truth(300)
        raw = _relaxed_classic(truth, prot, rng)
    else:
        from napari_rverdict.data.prior import sample_parameters

        truth = sample_parameters(name, 300, rng=rng)
        raw = noise_free_signals(name, {**truth, "S0": rng.uniform(100, 2000, 300)}, prot)
    maps = get_model(name).derived_maps(truth)
    q = fit_nrmse(name, maps, raw, prot)
    assert q.shape == (300,) and q.dtype == np.float32
    assert np.nanmax(q) < 1e-6


def test_about_the_noise_level_on_noisy_signals():
    """σ = 1/SNR of each voxel's brightest measurement (the maximum rVERDICT divides by): the RMSE of the true
    maps' signal is σ · sqrt((m − 1) / m) (the fitted scale takes one degree of freedom)."""
    from napari_rverdict.data.prior import sample_parameters

    prot, snr, n = Protocol.innovate(), 100.0, 2000
    rng = np.random.default_rng(2)
    truth = sample_parameters("rverdict", n, rng=rng)
    clean = noise_free_signals("rverdict", {**truth, "S0": np.ones(n)}, prot)
    clean = clean / clean.max(1, keepdims=True)
    noisy = add_rician_noise(clean, 1.0 / snr, rng)
    q = fit_nrmse("rverdict", get_model("rverdict").derived_maps(truth), noisy, prot)
    expected = np.sqrt((len(prot) - 1) / len(prot)) / snr
    assert 0.85 < np.median(q) / expected < 1.1


def test_large_where_the_signal_is_corrupted():
    """One series' diffusion-weighted volume halved (signal dropout by motion) in half the voxels."""
    prot = Protocol.innovate()
    rng = np.random.default_rng(3)
    truth = _classic_truth(400, seed=3)
    raw = add_rician_noise(_relaxed_classic(truth, prot, rng), 5.0, rng)  # SNR ≈ 100 at b = 0
    raw[:200, 5] *= 0.5  # b = 1500
    q = fit_nrmse("verdict", get_model("verdict").derived_maps(truth), raw, prot)
    assert np.median(q[:200]) > 5 * np.median(q[200:])


def test_nan_outside_the_mask_and_3d_maps():
    ph = make_phantom((12, 12, 2), snr=50, seed=4)
    maps = {k: np.where(ph.mask, v, np.nan) for k, v in ph.truth.items()}
    q = fit_nrmse("rverdict", maps, ph.dwi, ph.protocol)  # 20 acquired volumes: maps predict each of them
    assert q.shape == ph.shape
    assert np.isnan(q[~ph.mask]).all() and np.isfinite(q[ph.mask]).all()
    assert np.median(q[ph.mask]) < 0.05


def test_predicted_signal_and_scale():
    prot = Protocol.innovate()
    s = predicted_signal("verdict", {"f_ic": np.array([0.4, np.nan]), "f_vasc": np.array([0.1, 0.1]),
                                     "R": np.array([8.0, 8.0])}, prot)
    assert s.shape == (2, len(prot))
    np.testing.assert_allclose(s[0, prot.is_b0], 1.0)  # S/S0 = 1 at b = 0
    assert np.isnan(s[1]).all()
    np.testing.assert_allclose(least_squares_scale(s[:1], 3.0 * s[:1]), [[3.0]])
    with pytest.raises(InputError, match="needs the map"):
        predicted_signal("rverdict", {"f_ic": np.ones(2)}, prot)
    with pytest.raises(InputError, match="measurements"):
        fit_nrmse("verdict", {"f_ic": np.ones(2), "f_vasc": np.zeros(2), "R": np.ones(2)}, np.ones((2, 3)), prot)


def test_the_definition_holds_voxel_by_voxel_across_blocks_with_left_out_voxels():
    """Over more voxels than one pass holds (CHUNK), with maps, signals and b = 0 references bad here and there
    (whole blocks of them too): every voxel's fit_nrmse is sqrt(mean (c s − y)²) of the module's definition with
    the exact forward model (no sphere table), and NaN exactly where a map or signal is not finite or b = 0 ≤ 0."""
    from napari_rverdict.data.prior import sample_parameters
    from napari_rverdict.maps import fit_quality

    prot, model = Protocol.innovate(), get_model("rverdict")
    n = 2 * fit_quality.CHUNK + 1234
    rng = np.random.default_rng(7)
    truth = sample_parameters("rverdict", n, rng=rng)
    raw = add_rician_noise(noise_free_signals("rverdict", {**truth, "S0": rng.uniform(100, 2000, n)}, prot), 20.0,
                           rng)
    maps = {k: np.asarray(v, dtype=np.float32) for k, v in model.derived_maps(truth).items()}
    maps["R"][rng.choice(n, 300, replace=False)] = np.nan
    maps["T1"][fit_quality.CHUNK:fit_quality.CHUNK + 50] = np.inf
    raw[rng.choice(n, 300, replace=False), 3] = np.nan
    raw[rng.choice(n, 300, replace=False), int(np.flatnonzero(prot.is_b0)[0])] = 0.0
    raw[2 * fit_quality.CHUNK:] = np.nan  # the whole last block left out
    q = fit_nrmse("rverdict", maps, raw, prot)

    inputs = {k: np.clip(np.asarray(maps[k], float), model.spec(k).limit_low, model.spec(k).limit_high)
              for k in model.estimated_names}
    usable = (np.all([np.isfinite(v) for v in inputs.values()], 0) & np.isfinite(raw).all(1)
              & (raw[:, prot.is_b0] > 0).all(1))
    s = noise_free_signals("rverdict", {k: np.where(usable, v, 1.0) for k, v in inputs.items()} | {"S0": np.ones(n)},
                           prot)[usable]
    y = raw[usable] / raw[usable].max(1, keepdims=True)
    c = np.maximum((s * y).sum(1) / (s * s).sum(1), 0.0)[:, None]
    expected = np.sqrt(((c * s - y) ** 2).mean(1))
    assert 0 < usable.sum() < 2 * fit_quality.CHUNK
    np.testing.assert_array_equal(np.isfinite(q), usable)
    np.testing.assert_allclose(q[usable], expected, rtol=1e-6)
    predicted = predicted_signal("rverdict", maps, prot)
    np.testing.assert_array_equal(np.isfinite(predicted).all(1), np.all([np.isfinite(v) for v in inputs.values()], 0))
    np.testing.assert_allclose(predicted[usable], s, rtol=1e-9)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((12, 12, 2), snr=35, seed=5)


def test_nlls_returns_it_as_its_own_cost(phantom):
    from napari_rverdict.maps.nlls import fit_signals, fit_volume
    from napari_rverdict.maps.voxels import prepare_voxels

    maps = fit_volume("rverdict", phantom.to_dwi(), mask=phantom.mask, device="cpu", n_starts=2, max_iter=200)
    q = maps[FIT_NRMSE]
    assert np.isnan(q[~phantom.mask]).all() and np.isfinite(q[phantom.mask]).all()
    vox = prepare_voxels(phantom.to_dwi(), mask=phantom.mask)
    cost = fit_signals("rverdict", vox.signals, vox.protocol, device="cpu", n_starts=2, max_iter=200,
                       return_cost=True)["cost"]
    np.testing.assert_allclose(q.reshape(-1)[vox.index], np.sqrt(cost / len(vox.protocol)), rtol=1e-3, atol=1e-6)


def test_network_maps_carry_it_in_memory_and_streamed(phantom, tmp_path):
    from napari_rverdict.data.dwi import load_dwi, save_dwi
    from napari_rverdict.learn.config import TrainConfig
    from napari_rverdict.learn.train import train
    from napari_rverdict.maps.predict import predict_volume

    bundle = train(simulate("rverdict", n=2000, seed=6), TrainConfig(epochs=1, seed=0, device="cpu")).bundle
    mem = predict_volume(bundle, phantom.to_dwi(), mask=phantom.mask)
    save_dwi(phantom.dwi, phantom.affine, tmp_path / "dwi.nii.gz", phantom.protocol)
    streamed = predict_volume(bundle, load_dwi(tmp_path / "dwi.nii.gz"), mask=phantom.mask, chunk=50)
    for maps in (mem, streamed):
        q = maps[FIT_NRMSE]
        assert np.isnan(q[~phantom.mask]).all() and (q[phantom.mask] > 0).all() and (q[phantom.mask] < 0.5).all()
    np.testing.assert_allclose(streamed[FIT_NRMSE][phantom.mask], mem[FIT_NRMSE][phantom.mask], rtol=1e-4)
    sd_bundle = train(simulate("rverdict", n=2000, seed=7),
                      TrainConfig(epochs=1, seed=0, device="cpu", uncertainty=True)).bundle
    with_sd = predict_volume(sd_bundle, phantom.to_dwi(), mask=phantom.mask, uncertainty=True)
    assert "f_ic_sd" in with_sd and np.isfinite(with_sd[FIT_NRMSE][phantom.mask]).all()


def test_written_with_its_spec_and_read_back(tmp_path):
    import nibabel as nib

    from napari_rverdict.data.map_files import load_maps, save_maps
    from napari_rverdict.physics.models import find_map_spec

    q = np.full((3, 3, 1), 0.02, np.float32)
    save_maps({FIT_NRMSE: q}, tmp_path, np.eye(4), model="verdict")
    hdr = nib.load(str(tmp_path / "fit_nrmse.nii.gz")).header
    assert float(hdr["cal_max"]) == pytest.approx(find_map_spec(FIT_NRMSE).display[1])
    assert set(load_maps(tmp_path)) == {FIT_NRMSE}
