"""Noise as the scanner makes it: the noise reference, noise per acquired volume, σ from the DWI, matched SNR."""

import json

import numpy as np
import pytest
import torch

from napari_rverdict.cli import main
from napari_rverdict.data.noise import MatchedSnr, add_rician_noise, scanner_noise
from napari_rverdict.data.noise_estimate import estimate_noise, noise_mismatch, training_snr
from napari_rverdict.data.phantom import make_phantom, save_phantom
from napari_rverdict.data.synth import effective_snr, simulate
from napari_rverdict.errors import InputError
from napari_rverdict.evaluate.metrics import evaluate
from napari_rverdict.learn.bundle import load_bundle
from napari_rverdict.learn.config import TrainConfig
from napari_rverdict.learn.train import train
from napari_rverdict.physics.protocol import Protocol, direction_average

FAST = TrainConfig(epochs=1, batch_size=64, device="cpu", patience=None)


@pytest.fixture(scope="module")
def scanner_phantom():
    """One σ = 1000 / 25 = 40 on every acquired volume and in the air: gland SNR ≈ 10–15 at the brightest b = 0."""
    return make_phantom((40, 40, 4), snr=25, seed=4, snr_reference="s0")


# ---------------------------------------------------------------------- the protocol knows its averages
def test_protocol_counts_the_volumes_each_measurement_averages():
    avg = Protocol.innovate()
    assert avg.n_volumes.tolist() == [1, 3] * 5
    assert Protocol.innovate(direction_averaged=False).direction_averaged().n_volumes.tolist() == [1, 3] * 5
    back = Protocol.from_dict(avg.to_dict())
    assert back.n_volumes.tolist() == [1, 3] * 5
    old = {k: v for k, v in avg.to_dict().items() if k != "n_volumes"}  # saved before the field existed
    assert Protocol.from_dict(old).n_volumes.tolist() == [1] * 10
    assert avg.subset([1, 2]).n_volumes.tolist() == [3, 1]
    with pytest.raises(InputError, match="n_volumes"):
        Protocol(avg.b, avg.small_delta, avg.big_delta, avg.te, avg.tr, n_volumes=[0] * 10)


# ---------------------------------------------------------------------- noise per acquired volume
@pytest.mark.parametrize("dtype", [np.float64, np.float32])  # float32: simulate's (faster) noise
def test_averaged_volumes_match_theory_and_the_data_path(dtype):
    rng = np.random.default_rng(0)
    n, sigma = 200_000, 0.02
    twenty = Protocol.innovate(direction_averaged=False)
    ten = twenty.direction_averaged()
    clean20 = np.tile(np.linspace(0.3, 1.0, 20), (n, 1))
    clean10, _ = direction_average(clean20, twenty)
    sim = scanner_noise(clean10, sigma, ten.n_volumes, rng, dtype=dtype)  # simulation: per volume, then averaged
    assert sim.dtype == dtype
    data, _ = direction_average(scanner_noise(clean20, sigma, None, rng), twenty)  # the scanner, then the data path
    for got in (sim, data):
        # high SNR (S/σ ≥ 15): mean ≈ S + σ²/(2S) (Rician bias), sd = σ/√n
        np.testing.assert_allclose(got.mean(0), clean10[0] + sigma**2 / (2 * clean10[0]), rtol=2e-3)
        np.testing.assert_allclose(got.std(0), sigma / np.sqrt(ten.n_volumes), rtol=0.02)
    np.testing.assert_allclose(sim.std(0), data.std(0), rtol=0.02)
    # zero signal: the Rician floor of each volume survives averaging (mean σ√(π/2), variance (2 − π/2)σ²/n)
    floor = scanner_noise(np.zeros((n, 2)), sigma, [1, 3], rng, dtype=dtype)
    np.testing.assert_allclose(floor.mean(0), sigma * np.sqrt(np.pi / 2), rtol=0.01)
    np.testing.assert_allclose(floor.var(0), (2 - np.pi / 2) * sigma**2 / np.array([1, 3]), rtol=0.03)


# ---------------------------------------------------------------------- the noise reference
def test_s0_reference_spreads_the_effective_snr_peak_does_not():
    s0 = effective_snr("rverdict", snr=35, snr_reference="s0", n=20_000)
    # the seed paper's convention under the rVERDICT prior: median ≈ 10 (5–95 %: ≈ 2.6–23)
    assert 9 < s0["median"] < 11.5 and 2 < s0["p5"] < 3.3 and 20 < s0["p95"] < 26
    peak = effective_snr("rverdict", snr=35, snr_reference="peak", n=2000)
    assert peak["p5"] == pytest.approx(35) and peak["p95"] == pytest.approx(35)
    d = simulate("rverdict", n=4000, snr=35, seed=1)
    assert d.snr_reference == "s0" and np.median(d.b0_snr) == pytest.approx(s0["median"], rel=0.08)
    # classic VERDICT is S/S0 with every series' b = 0 equal to 1: both references are the same
    v = [simulate("verdict", n=500, snr=35, seed=2, snr_reference=r).signals for r in ("s0", "peak")]
    np.testing.assert_array_equal(v[0], v[1])
    with pytest.raises(InputError, match="SNR reference"):
        simulate("rverdict", n=10, snr_reference="max")


@pytest.mark.parametrize("reference", ["s0", "peak"])
def test_each_reference_round_trips_through_the_bundle(tmp_path, reference):
    data = simulate("rverdict", n=600, snr=30, seed=3, snr_reference=reference)
    bundle = train(data, FAST).bundle
    assert bundle.snr_reference == reference and bundle.noise_match is None
    back = load_bundle(bundle.save(tmp_path / "b.pt"))
    assert back.snr_reference == reference and back.snr == 30
    assert f'"{reference}" reference' in back.describe()
    assert back.noise_settings() == {"snr": 30.0, "snr_reference": reference}
    rep = evaluate(back, n=200, n_crlb=20)  # evaluated on the bundle's own convention
    assert f'"{reference}" reference' in rep.format_table()
    with pytest.raises(InputError, match="SNR reference"):
        train(data, TrainConfig(epochs=1, device="cpu", snr_reference="s0" if reference == "peak" else "peak"))


def test_bundles_saved_before_the_setting_load_as_peak(tmp_path):
    bundle = train(simulate("rverdict", n=300, seed=0), FAST).bundle
    path = bundle.save(tmp_path / "old.pt")
    payload = torch.load(path, weights_only=True)
    for key in ("snr_reference", "noise_match"):
        payload["meta"].pop(key)
    payload["meta"]["protocol"].pop("n_volumes")
    torch.save(payload, path)
    old = load_bundle(path)
    assert old.snr_reference == "peak" and old.noise_match is None and old.snr == 35.0


# ---------------------------------------------------------------------- σ from the DWI
@pytest.mark.parametrize("method", ["auto", "piesno", "repeats"])
def test_sigma_is_recovered_on_a_scanner_like_dwi(scanner_phantom, method):
    ph = scanner_phantom
    est = estimate_noise(ph.to_dwi(), ph.mask, method=method)
    assert ph.sigma == pytest.approx(40.0)
    assert abs(est.sigma / ph.sigma - 1) < 0.10, (method, est.sigma)
    assert est.method == ("piesno" if method == "auto" else method)
    # gland SNR at the brightest b = 0 from the truth: σ is one number, so SNR = brightest clean b = 0 / σ
    clean = make_phantom((40, 40, 4), snr=1e9, seed=4, snr_reference="s0").dwi[ph.mask]
    true_snr = clean[:, ph.protocol.is_b0].max(1) / ph.sigma
    assert est.snr["peak"]["median"] == pytest.approx(np.median(true_snr), rel=0.1)
    assert 5 < est.snr["peak"]["p5"] and est.snr["peak"]["p95"] < 25


def test_a_dwi_without_background_or_repeats_is_one_clear_error():
    rng = np.random.default_rng(0)
    proto = Protocol.innovate().subset(range(6))  # 6 distinct measurements: no repeats, too few for MP-PCA
    data = 500 + 20 * rng.standard_normal((6, 6, 2, 6))  # tissue everywhere: no air
    from napari_rverdict.data.dwi import Dwi

    with pytest.raises(InputError, match="cannot estimate the noise") as err:
        estimate_noise(Dwi.from_array(data, np.eye(4), proto))
    text = str(err.value)
    assert "background" in text and "repeated volumes" in text and "MP-PCA needs" in text and "\n" not in text


def test_an_array_is_refused_and_a_float_mask_reads_nan_as_outside(scanner_phantom):
    """A bare array was a TypeError from pathlib; a mask of numbers with NaN outside (a map used as a mask) took
    every NaN voxel, the air included, as inside (NumPy's bool(NaN) is True), as no other method's mask does."""
    ph = scanner_phantom
    with pytest.raises(InputError, match="Dwi.from_array"):
        estimate_noise(ph.dwi)
    as_map = np.where(ph.mask, 0.5, np.nan)
    want = estimate_noise(ph.to_dwi(), ph.mask, method="repeats")
    got = estimate_noise(ph.to_dwi(), as_map, method="repeats")
    assert got.n_voxels == want.n_voxels == int(ph.mask.sum())
    assert got.sigma == want.sigma and got.snr == want.snr


def test_identical_repeats_are_no_noise_estimate_and_warn_nothing(scanner_phantom):
    """Every volume a copy of the first b = 0 (a noise-free or duplicated series): σ ≈ 1e-6 from float rounding was
    reported as SNR 3e7, and DIPY's MP-PCA leaked NumPy's 'Mean of empty slice'."""
    import warnings

    from napari_rverdict.data.dwi import Dwi

    ph = scanner_phantom
    copies = np.repeat(ph.dwi[..., :1], len(ph.protocol), axis=-1).astype(np.float32)
    dwi = Dwi.from_array(copies, np.eye(4), ph.protocol)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="repeated volumes are identical"):
            estimate_noise(dwi, ph.mask, method="repeats")
        with pytest.raises(InputError, match="cannot estimate the noise"):
            estimate_noise(dwi, ph.mask, method="auto")
    noisy = ph.dwi.copy()  # a real noisy DWI still passes the no-noise check at high SNR
    assert estimate_noise(Dwi.from_array(noisy, np.eye(4), ph.protocol), ph.mask, method="repeats").sigma > 0


# ---------------------------------------------------------------------- training matched to the DWI
def test_matched_snr_reaches_the_sampler(scanner_phantom):
    ph = scanner_phantom
    est = estimate_noise(ph.to_dwi(), ph.mask)
    # "s0" (the default): one σ on S0's scale; the set's SNR at the brightest b = 0 has the DWI's 95th percentile,
    # and the SNR found is the phantom's own on S0's scale (its top S0 over its σ) within the match's error
    data = simulate("rverdict", n=3000, snr_from=est, seed=5)
    assert data.snr_reference == "s0" and data.matched is not None and np.all(data.snr == data.snr_setting)
    assert np.percentile(data.b0_snr, 95) == pytest.approx(est.snr["peak"]["p95"], rel=0.06)
    assert data.snr_setting == pytest.approx(ph.s0[ph.mask].max() / ph.sigma, rel=0.15)
    assert np.percentile(data.b0_snr, 5) < 0.5 * est.snr["peak"]["p5"]  # S0 ∈ [0.1, 1]: dimmer than the gland too
    # "peak": each sample's SNR drawn from the DWI's, and it is the effective SNR at its brightest b = 0
    data = simulate("rverdict", n=3000, snr_from=est, snr_reference="peak", seed=5)
    assert data.snr_reference == "peak" and data.matched is not None and data.snr_setting is None
    for q, key in ((5, "p5"), (50, "median"), (95, "p95")):
        assert np.percentile(data.snr, q) == pytest.approx(est.snr["peak"][key], rel=0.06)
    np.testing.assert_allclose(data.b0_snr, data.snr, rtol=1e-9)
    # classic VERDICT has no S0 range: its "s0" is each series' b = 0, so matched draws per sample there too
    data = simulate("verdict", n=3000, snr_from=est, seed=5)
    assert data.snr_reference == "s0" and data.snr_setting is None
    assert np.median(data.snr) == pytest.approx(est.snr["peak"]["median"], rel=0.06)
    with pytest.raises(InputError, match="either an SNR or a DWI"):
        simulate("rverdict", n=10, snr=35, snr_from=est)


def test_matched_bundle_stores_the_distribution_and_predict_check(tmp_path, scanner_phantom):
    ph = scanner_phantom
    est = estimate_noise(ph.to_dwi(), ph.mask)
    data = simulate("rverdict", n=400, snr_from=est, seed=6)
    matched = train(data, FAST).bundle
    back = load_bundle(matched.save(tmp_path / "m.pt"))
    assert isinstance(back.noise_match, MatchedSnr) and back.snr_reference == "s0"
    assert back.snr == pytest.approx(data.snr_setting) and "matched to" in back.noise_description()
    replay = simulate("rverdict", n=50, seed=1, **back.noise_settings())  # the same noise again
    assert replay.snr_setting == pytest.approx(data.snr_setting) and replay.matched is not None
    # what the bundle was trained at: the match's spread on "s0", its 95th percentile the DWI's
    trained = training_snr(back)
    assert trained["p95"] == pytest.approx(est.snr["peak"]["p95"], rel=0.06)
    assert trained["p5"] < 0.5 * est.snr["peak"]["p5"]
    assert back.noise_match.sigma == pytest.approx(est.sigma)
    assert back.noise_match.percentiles()["median"] == pytest.approx(est.snr["peak"]["median"], rel=0.02)
    assert noise_mismatch(back, ph.to_dwi(), ph.mask) is None
    peak35 = train(simulate("rverdict", n=400, snr=35, snr_reference="peak", seed=6), FAST).bundle
    line = noise_mismatch(peak35, ph.to_dwi(), ph.mask)
    assert line is not None and "outside what the model was trained on" in line and "\n" not in line


# ---------------------------------------------------------------------- command line
def test_cli_noise_json_and_exclusive_options(tmp_path, capsys, scanner_phantom):
    save_phantom(scanner_phantom, tmp_path / "ph")
    dwi, mask = str(tmp_path / "ph" / "dwi.nii.gz"), str(tmp_path / "ph" / "mask.nii.gz")
    assert main(["noise", dwi, "--mask", mask, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"sigma", "snr", "reference", "method"} and set(out["snr"]) == {"p5", "median", "p95"}
    assert abs(out["sigma"] / 40.0 - 1) < 0.1 and out["reference"] == "peak"
    for cmd in ("simulate", "train"):
        rc = main([cmd, "--snr", "30", "--snr-from", dwi, "--out", str(tmp_path / f"{cmd}.npz")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "exclusive" in err[0]
    for bad in (["--mask", mask],):
        assert main(["simulate", *bad, "--out", str(tmp_path / "bad.npz")]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["simulate", "--n", "500", "--snr-from", dwi, "--mask", mask, "--out", str(tmp_path / "m.npz")]) == 0
    assert "effective SNR" in capsys.readouterr().out
    assert main(["simulate", "--n", "200", "--snr-reference", "peak", "--out", str(tmp_path / "p.npz")]) == 0
    assert "median 35" in capsys.readouterr().out


def test_typical_crlb_on_each_reference():
    from napari_rverdict.data.synth import noise_free_signals
    from napari_rverdict.evaluate.report import typical_crlb, typical_parameters
    from napari_rverdict.physics.models import get_model

    model = get_model("rverdict")
    typical = typical_parameters(model)  # S0 = 0.55, the middle of [0.1, 1]
    clean = noise_free_signals(model, {k: np.array([v]) for k, v in typical.items()}, Protocol.innovate())
    s0 = typical_crlb(model, "innovate", 35.0, snr_reference="s0")
    peak = typical_crlb(model, "innovate", 35.0, snr_reference="peak")
    for k in model.estimated_names:  # √CRLB ∝ σ: 1/35 on "s0", brightest/35 on "peak"
        assert s0[k] == pytest.approx(peak[k] / clean.max(), rel=1e-6), k


def test_a_direction_averaged_dwi_is_estimated_on_its_single_volumes(scanner_phantom):
    ph = scanner_phantom
    averaged = ph.to_dwi().direction_averaged()
    assert averaged.protocol.n_volumes.tolist() == [1, 3] * 5
    est = estimate_noise(averaged, ph.mask)
    assert abs(est.sigma / ph.sigma - 1) < 0.10


def test_posterior_weights_each_measurement_by_its_volumes():
    from napari_rverdict.evaluate.posterior import build_dictionary, posterior_from_dictionary

    dictionary = build_dictionary("rverdict", "innovate", n=3000, seed=1)
    y = simulate("rverdict", n=6, snr=35, seed=2).signals
    # the same n on every measurement is the same as σ/√n: the weighting is exactly σ_i = σ/√n_i
    a = posterior_from_dictionary(y, dictionary, 0.05, n_volumes=np.full(10, 4))
    b = posterior_from_dictionary(y, dictionary, 0.025)
    for k in ("f_ic", "T1"):
        np.testing.assert_allclose(a.mean[k], b.mean[k], rtol=1e-4)
        np.testing.assert_allclose(a.sd[k], b.sd[k], rtol=1e-3)
    # more volumes on the diffusion-weighted measurements: a sharper posterior than σ everywhere
    c = posterior_from_dictionary(y, dictionary, 0.05, n_volumes=Protocol.innovate().n_volumes)
    d = posterior_from_dictionary(y, dictionary, 0.05)
    assert np.median(c.ess) < np.median(d.ess)


def test_s0_snr_ignores_b0s_lost_in_the_noise():
    """The per-voxel SNR at TE = 0 (log-linear T2 decay through the b = 0s) uses only the b = 0s above the noise
    floor: tissue with a T2 of a few ms (the prior reaches 1 ms) must not extrapolate to absurd values (a fit
    through b = 0s at the floor gave 10⁹ here). At TE = 0 nothing is brighter than S0 (the T1 factor is ≤ 1); at
    this low SNR (gland ≈ 3–10) the noise of a two- or three-point extrapolation still lets the top percent reach
    about twice the top S0's SNR."""
    ph = make_phantom((40, 40, 4), snr=12, seed=2, snr_reference="s0", tissue="prior")
    est = estimate_noise(ph.to_dwi(), ph.mask)
    top = ph.s0[ph.mask].max() / ph.sigma
    s0 = est.voxel_snr["s0"]
    assert np.isfinite(s0).all() and np.percentile(s0, 99) < 3 * top and np.median(s0) < top
    assert est.snr["s0"]["median"] >= est.snr["peak"]["median"]  # TE = 0 is never dimmer than the brightest b = 0


def test_rician_noise_takes_the_broadcast_shape():
    """σ may be the larger operand (one signal, many noise levels): every element gets its own draw."""
    for dtype in (np.float64, np.float32):
        out = add_rician_noise(np.zeros(3), np.full((100_000, 3), 0.1), rng=0, dtype=dtype)
        assert out.shape == (100_000, 3) and out.dtype == dtype
        np.testing.assert_allclose(out.mean(0), 0.1 * np.sqrt(np.pi / 2), rtol=0.01)
        assert abs(np.corrcoef(out[:, 0], out[:, 1])[0, 1]) < 0.02


def test_noise_from_torchs_generator_is_reproducible_on_any_thread_count_and_rician():
    """simulate draws its normals with torch's generator seeded from the NumPy one: the numbers must depend on the
    seed only (not on torch's threads, which the load decides), and the noise must be Rician with independent real
    and imaginary parts (a shared or correlated stream would not be)."""
    from napari_rverdict.threads import using_torch_threads

    sigma, s = 0.5, 1.0
    with using_torch_threads(1):
        one = add_rician_noise(np.full(200_000, s), sigma, rng=7, dtype=np.float32, normals="torch")
    with using_torch_threads(2):
        two = add_rician_noise(np.full(200_000, s), sigma, rng=7, dtype=np.float32, normals="torch")
    np.testing.assert_array_equal(one, two)
    # Rician moments: E[M²] = S² + 2σ², E[M⁴] = S⁴ + 8σ²S² + 8σ⁴ (independent n1, n2 of variance σ² each)
    m2, m4 = np.mean(one.astype(float) ** 2), np.mean(one.astype(float) ** 4)
    assert m2 == pytest.approx(s**2 + 2 * sigma**2, rel=0.01)
    assert m4 == pytest.approx(s**4 + 8 * sigma**2 * s**2 + 8 * sigma**4, rel=0.02)
    rng = np.random.default_rng(3)
    again = [add_rician_noise(np.zeros(1000), 1.0, rng=rng, normals="torch") for _ in range(2)]
    assert not np.array_equal(*again)  # each call draws new numbers
    with using_torch_threads(1):
        a = simulate("rverdict", n=2000, seed=5)
    with using_torch_threads(2):
        b = simulate("rverdict", n=2000, seed=5)
    np.testing.assert_array_equal(a.signals, b.signals)
    with pytest.raises(InputError, match="normals"):
        add_rician_noise(np.zeros(3), 1.0, normals="scipy")


def test_a_crop_with_no_air_is_not_read_as_noise(scanner_phantom):
    """PIESNO on a DWI cropped inside the body (no air) takes the dimmest tissue for noise (σ ≈ 10× the truth);
    "auto" must see that no voxel then stands above 4σ and go on to the next estimator, not give up or keep it."""
    from napari_rverdict.data.dwi import Dwi

    ph = scanner_phantom
    inside = np.argwhere(ph.mask.all(2))
    cx, cy = inside.mean(0).astype(int)
    crop = (slice(cx - 5, cx + 5), slice(cy - 5, cy + 5))
    assert ph.mask[crop].mean() > 0.8  # (almost) no air in the crop
    est = estimate_noise(Dwi.from_array(ph.dwi[crop], ph.affine, ph.protocol))
    assert est.method != "piesno" and est.sigma == pytest.approx(ph.sigma, rel=0.15)
    assert any("tissue taken for noise" in note for note in est.notes)
