"""Network uncertainty: β-NLL, recalibration, coverage, sd outputs of bundles (names, shapes, errors, round trip)."""

import numpy as np
import pytest
import torch

from napari_rverdict.data.synth import simulate
from napari_rverdict.learn.bundle import load_bundle
from napari_rverdict.learn.config import TrainConfig
from napari_rverdict.learn.train import train
from napari_rverdict.learn.uncertainty import (
    QUANTILE_LEVELS,
    SD_LEVEL,
    beta_nll_loss,
    conformal_quantiles,
    coverage,
    derived_sd,
    interval_factor,
    interval_halfwidth,
    interval_quantile,
    split_output,
    z_of_level,
)


# ---------------------------------------------------------------------- coverage on constructed examples
def test_coverage_constructed_example():
    true = np.zeros(4)
    mean = np.array([0.5, -0.9, 1.5, -2.5])  # |errors| 0.5, 0.9, 1.5, 2.5 with sd 1
    sd = np.ones(4)
    cov = coverage(true, mean, sd, levels=(0.68, 0.95))
    # z(0.68) = 0.994: 0.5, 0.9 inside; z(0.95) = 1.960: also 1.5
    assert cov == {0.68: 0.5, 0.95: 0.75}
    # doubling the sd brings 1.5 into the 68 % interval (1.99) and 2.5 into the 95 % one (3.92)
    assert coverage(true, mean, 2 * sd) == {0.68: 0.75, 0.95: 1.0}
    # zero sd: only exact hits count
    assert coverage([1.0, 2.0], [1.0, 2.5], [0.0, 0.0], levels=(0.5,)) == {0.5: 0.5}


def test_coverage_gaussian_and_dicts():
    rng = np.random.default_rng(0)
    sd = rng.uniform(0.1, 3.0, 200_000)
    true = rng.normal(5.0, 1.0, sd.size)
    mean = true + sd * rng.standard_normal(sd.size)
    cov = coverage(true, mean, sd, levels=(0.68, 0.95, 0.5))
    assert abs(cov[0.68] - 0.68) < 0.005 and abs(cov[0.95] - 0.95) < 0.003 and abs(cov[0.5] - 0.5) < 0.005
    # dict form: <name>_sd keys as predict_signals returns them; a too-small sd under-covers
    out = coverage({"a": true, "b": true}, {"a": mean, "b": mean, "a_sd": sd}, {"a": mean, "a_sd": sd, "b": 0.5 * sd})
    assert set(out) == {"a", "b"}
    assert abs(out["a"][0.68] - 0.68) < 0.005  # "a_sd" wins over the mean stored under "a"
    assert out["b"][0.68] < 0.45 and out["b"][0.95] < 0.7
    assert z_of_level(0.95) == pytest.approx(1.959964, abs=1e-5)


def test_coverage_bad_input():
    with pytest.raises(ValueError, match="same size"):
        coverage(np.zeros(3), np.zeros(4), np.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        coverage(np.zeros(3), np.zeros(3), -np.ones(3))
    with pytest.raises(ValueError, match="between 0 and 1"):
        coverage(np.zeros(3), np.zeros(3), np.ones(3), levels=(1.2,))
    with pytest.raises(ValueError, match="no sd"):
        coverage({"a": np.zeros(3)}, {"a": np.zeros(3)}, {"b": np.ones(3)})


def test_conformal_quantile_is_the_finite_sample_rank():
    scores = np.arange(1.0, 11.0)  # n = 10 scores 1..10 (|true − mean| / sd with sd = 2)
    rng = np.random.default_rng(0)
    perm = rng.permutation(10)
    q = conformal_quantiles(2 * scores[perm], np.zeros(10), np.full(10, 2.0), levels=(0.5, 0.6827, 0.9, 0.95))
    # ⌈11 L⌉-th smallest: 6, 8 (⌈7.51⌉), 10, and ⌈10.45⌉ = 11 > n → the largest, 10
    np.testing.assert_array_equal(q, [6.0, 8.0, 10.0, 10.0])
    # non-finite values and sd = 0 are left out
    q = conformal_quantiles(np.r_[2 * scores, np.nan, 5.0], np.zeros(12), np.r_[np.full(10, 2.0), 1.0, 0.0],
                            levels=(0.5,))
    assert q[0] == 6.0
    with pytest.raises(ValueError, match="at least 10"):
        conformal_quantiles(np.ones(9), np.zeros(9), np.ones(9))
    with pytest.raises(ValueError, match="between 0 and 1"):
        conformal_quantiles(scores, np.zeros(10), np.ones(10), levels=(1.0,))


class _Calibrated:
    """The calibration attributes of a bundle, without a network."""

    def __init__(self, quantiles=None, sd_scale=None):
        self.interval_levels = QUANTILE_LEVELS
        self.interval_quantiles = quantiles or {}
        self.sd_scale = sd_scale or {}


@pytest.mark.parametrize("dist", ["uniform", "laplace"])
def test_conformal_intervals_hit_both_levels_where_one_factor_cannot(dist):
    rng = np.random.default_rng(3)

    def draw(n):
        sigma = rng.uniform(0.2, 3.0, n)  # the network's σ: right shape per voxel, wrong scale and wrong law
        u = rng.uniform(-1, 1, n) if dist == "uniform" else rng.laplace(0, 1, n)
        return 1.7 * sigma * u, sigma

    err_cal, sig_cal = draw(20_000)
    err, sig = draw(200_000)
    zero = np.zeros_like(err)
    # conformal quantiles: both levels (and any level of the grid) right on fresh data
    q = conformal_quantiles(err_cal, np.zeros_like(err_cal), sig_cal)
    b = _Calibrated({"x": q.tolist()}, {"x": float(q[QUANTILE_LEVELS.index(SD_LEVEL)])})
    sd = b.sd_scale["x"] * sig  # what predict_signals reports as x_sd
    cov = coverage(err, zero, sd, levels=(0.68, 0.6827, 0.9, 0.95, 0.9545), bundle=b, name="x")
    for lv, got in cov.items():
        assert abs(got - lv) < 0.012, (lv, got)
    # the same through the dict form, and the half-widths interval_halfwidth gives
    hw = interval_halfwidth(b, {"x": zero, "x_sd": sd}, 0.95)["x"]
    assert abs(np.mean(np.abs(err) <= hw) - 0.95) < 0.01
    assert coverage({"x": err}, {"x": zero}, {"x_sd": sd}, levels=(0.95,), bundle=b)["x"][0.95] == \
        pytest.approx(np.mean(np.abs(err) <= hw), abs=1e-9)
    # uniform: the 95 % half-width is 0.95 / 0.6827 of the 68 % one (a Gaussian would say 1.96)
    if dist == "uniform":
        assert interval_factor(b, "x", 0.95) == pytest.approx(0.95 / 0.6827, rel=0.02)
    # interpolation between grid levels, and levels outside the calibrated span refused
    assert interval_quantile(b, "x", 0.905) == pytest.approx(0.5 * (q[QUANTILE_LEVELS.index(0.9)]
                                                                    + q[QUANTILE_LEVELS.index(0.91)]))
    with pytest.raises(ValueError, match="0.05–0.99"):
        interval_quantile(b, "x", 0.995)
    with pytest.raises(ValueError, match="needs the map's name"):
        coverage(err, zero, sd, bundle=b)


def test_uncalibrated_bundles_give_gaussian_intervals():
    b = _Calibrated(sd_scale={"x": 1.0})  # too few validation signals: no quantile curve, factor 1
    assert interval_quantile(b, "x", 0.95) == pytest.approx(1.959964, rel=1e-5)
    assert interval_factor(b, "x", 0.95) == pytest.approx(1.959964 / z_of_level(SD_LEVEL), rel=1e-6)
    assert interval_factor(b, "y", 0.5) == pytest.approx(z_of_level(0.5) / z_of_level(SD_LEVEL))  # uncalibrated
    hw = interval_halfwidth(b, {"x": np.zeros((2, 3)), "x_sd": np.ones((2, 3), np.float32)}, 0.95)
    assert hw["x"].shape == (2, 3) and hw["x"].dtype == np.float32
    with pytest.raises(ValueError, match="no '<name>_sd'"):
        interval_halfwidth(b, {"x": np.zeros(3)}, 0.95)


def test_beta_nll_loss_values_and_gradient():
    y = torch.tensor([[0.2, 0.7]])
    mean = torch.tensor([[0.5, 0.7]], requires_grad=True)
    logvar = torch.tensor([[np.log(0.04), np.log(0.01)]], dtype=torch.float32, requires_grad=True)
    out = torch.cat([mean, logvar], 1)
    expect = 0.5 * (np.log(0.04) + 0.09 / 0.04)  # first target; the second has zero error
    expect = (0.2 * expect + 0.1 * 0.5 * np.log(0.01)) / 2  # weights var**0.5 = 0.2 and 0.1
    loss = beta_nll_loss(out, y, beta=0.5)
    assert float(loss) == pytest.approx(expect, rel=1e-5)
    loss.backward()
    # ∂/∂μ of var^β (μ − y)² / (2 var) / k = var^(β−1) (μ − y) / k with the weight held fixed
    assert float(mean.grad[0, 0]) == pytest.approx(0.04 ** -0.5 * 0.3 / 2, rel=1e-4)
    # β = 0 is the Gaussian NLL
    g = beta_nll_loss(out.detach(), y, beta=0.0)
    assert float(g) == pytest.approx((0.5 * (np.log(0.04) + 0.09 / 0.04) + 0.5 * np.log(0.01)) / 2, rel=1e-5)
    m, lv = split_output(torch.tensor([[0.1, 100.0]]), 1)
    assert float(lv) <= 4.0
    with pytest.raises(ValueError, match="2 outputs"):
        split_output(torch.zeros(3, 3), 1)


def test_derived_sd_of_the_dependent_fraction():
    from napari_rverdict.data.prior import resolve_ranges
    from napari_rverdict.physics.models import get_model

    model = get_model("rverdict")
    ranges = resolve_ranges(model)
    names = model.estimated_names
    k = len(names)
    mean = np.full((3, k), 0.5)
    mean[:, names.index("f_ic")] = 0.3
    mean[:, names.index("f_ees")] = 0.3
    sd = np.full((3, k), 1e-3)
    sd[:, names.index("f_ic")] = [0.0, 0.03, 0.04]
    sd[:, names.index("f_ees")] = [0.0, 0.04, 0.03]
    out = derived_sd(model, mean, sd, names, ranges, n_samples=4000, seed=3)
    assert set(out) == {"f_vasc", "cellularity"}
    lo, hi = ranges["f_ic"]
    # f_vasc = 1 − f_ic − f_ees with independent draws: sd = √(sd_ic² + sd_ees²) in physical units
    np.testing.assert_allclose(out["f_vasc"], np.array([0.0, 0.05, 0.05]) * (hi - lo), rtol=0.05, atol=1e-4)
    assert (out["cellularity"] >= 0).all()


# ---------------------------------------------------------------------- trained bundles
@pytest.fixture(scope="module")
def trained():
    data = simulate("rverdict", n=8000, snr=35, seed=11)
    res = train(data, TrainConfig(epochs=12, patience=0, uncertainty=True, seed=2, device="cpu"))
    test = simulate("rverdict", n=3000, snr=35, seed=12)
    return data, res, test


@pytest.fixture(scope="module")
def plain():
    data = simulate("rverdict", n=600, seed=5)
    return train(data, TrainConfig(epochs=1, seed=1, device="cpu")).bundle


def test_sd_outputs_names_shapes_nonnegative(trained):
    data, res, test = trained
    b = res.bundle
    assert b.has_uncertainty
    maps = b.predict_normalised(test.signals[:500], uncertainty=True)
    assert list(maps) == list(b.map_names) + [f"{k}_sd" for k in b.map_names]
    for k, v in maps.items():
        assert v.shape == (500,) and v.dtype == np.float32 and np.isfinite(v).all()
    for k in b.map_names:
        assert (maps[f"{k}_sd"] >= 0).all() and maps[f"{k}_sd"].max() > 0
    # the means are the same as without uncertainty
    plain_maps = b.predict_normalised(test.signals[:500])
    assert list(plain_maps) == list(b.map_names)
    for k in b.map_names:
        np.testing.assert_array_equal(plain_maps[k], maps[k])
    # sd of fractions below the width of their range; R sd in µm, below 15
    assert maps["f_ic_sd"].max() < 1.0 and maps["R_sd"].max() < 15.0
    # only targets
    only = b.predict_normalised(test.signals[:10], uncertainty=True, return_all=False)
    assert set(only) == set(b.target_names) | {f"{k}_sd" for k in b.target_names}


def test_raw_signals_scale_invariant_and_chunked(trained):
    data, res, test = trained
    b = res.bundle
    raw = test.signals[:300].astype(np.float64) * np.linspace(50, 900, 300)[:, None]
    a = b.predict_signals(raw, uncertainty=True)
    c = b.predict_signals(raw, uncertainty=True, chunk=300)
    n = b.predict_normalised(test.signals[:300], uncertainty=True)
    for k in b.map_names:
        np.testing.assert_allclose(a[k], n[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a[f"{k}_sd"], n[f"{k}_sd"], rtol=1e-4, atol=1e-6)
    # a different chunk changes the Monte-Carlo draws of derived maps only a little, the targets not at all
    np.testing.assert_allclose(a["R_sd"], c["R_sd"], rtol=1e-5)
    np.testing.assert_allclose(np.median(a["f_vasc_sd"]), np.median(c["f_vasc_sd"]), rtol=0.1)


def test_sd_tracks_the_actual_error_and_covers(trained):
    data, res, test = trained
    b = res.bundle
    maps = b.predict_normalised(test.signals, uncertainty=True)
    truth = b.model.derived_maps(test.params)
    # loose: voxels with a larger predicted sd have larger errors (Spearman ρ > 0.15 for most targets)
    rhos = []
    for k in b.target_names:
        err = np.abs(maps[k] - truth[k])
        ra = np.argsort(np.argsort(err))
        rb = np.argsort(np.argsort(maps[f"{k}_sd"]))
        rhos.append(np.corrcoef(ra, rb)[0, 1])
    assert np.median(rhos) > 0.15, rhos
    # recalibrated on validation: coverage on fresh data near nominal (loose for a 12-epoch net)
    cov = coverage(truth, {k: maps[k] for k in b.map_names}, maps, levels=(0.68, 0.95))
    for k in b.target_names:
        assert 0.55 < cov[k][0.68] < 0.85, (k, cov[k])
        assert 0.88 < cov[k][0.95] <= 1.0, (k, cov[k])
    # the bundle's conformal intervals (1,600 validation signals): near nominal on fresh data for every map
    cov = coverage(truth, {k: maps[k] for k in b.map_names}, maps, levels=(0.68, 0.95), bundle=b)
    for k in b.map_names:
        assert abs(cov[k][0.68] - 0.68) < 0.045, (k, cov[k])
        assert abs(cov[k][0.95] - 0.95) < 0.025, (k, cov[k])
    hw = b.interval(maps, 0.95)
    assert set(hw) == set(b.map_names)
    np.testing.assert_allclose(hw["R"], maps["R_sd"] * interval_factor(b, "R", 0.95), rtol=1e-6)


def test_history_and_calibration_recorded(trained):
    _, res, _ = trained
    b = res.bundle
    h = res.history
    assert len(h["val_nll"]) == len(h["val_loss"]) == 12
    assert all(v > 0 for v in h["train_loss"] + h["val_loss"])  # MSE of the means, not the NLL
    assert h["val_nll"][-1] < h["val_nll"][0]
    assert set(b.sd_scale) == set(b.map_names)
    assert all(np.isfinite(v) and v > 0 for v in b.sd_scale.values())
    assert b.train_config["uncertainty"] is True
    # conformal quantile curves per map: non-decreasing in the level; the reported sd carries q_0.6827
    assert b.interval_levels == QUANTILE_LEVELS and set(b.interval_quantiles) == set(b.map_names)
    i_sd = QUANTILE_LEVELS.index(SD_LEVEL)
    for k, q in b.interval_quantiles.items():
        assert len(q) == len(QUANTILE_LEVELS) and np.all(np.diff(q) >= 0) and q[0] > 0
        assert b.sd_scale[k] == q[i_sd]


def test_round_trip_weights_only(trained, tmp_path):
    data, res, test = trained
    b = res.bundle
    path = b.save(tmp_path / "u.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["meta"]["uncertainty"] is True and set(payload["meta"]["sd_scale"]) == set(b.map_names)
    assert payload["meta"]["interval_quantiles"]["levels"] == list(QUANTILE_LEVELS)
    b2 = load_bundle(path)
    assert b2.has_uncertainty and b2.sd_scale == b.sd_scale
    assert b2.interval_quantiles == b.interval_quantiles and b2.interval_levels == b.interval_levels
    m1 = b.predict_signals(test.signals[:200], uncertainty=True)
    m2 = b2.predict_signals(test.signals[:200], uncertainty=True)
    assert list(m1) == list(m2)
    for k in m1:
        np.testing.assert_array_equal(m1[k], m2[k])
    for k, v in b.interval(m1, 0.9).items():
        np.testing.assert_array_equal(v, b2.interval(m2, 0.9)[k])


def test_plain_bundle_refuses_uncertainty(plain, tmp_path):
    assert not plain.has_uncertainty
    with pytest.raises(ValueError, match="trained without uncertainty"):
        plain.predict_signals(np.ones((3, len(plain.protocol))), uncertainty=True)
    with pytest.raises(ValueError, match="trained without uncertainty"):
        plain.predict_normalised(np.ones((3, len(plain.protocol))), uncertainty=True)
    b2 = load_bundle(plain.save(tmp_path / "p.pt"))
    assert not b2.has_uncertainty
    out = b2.predict_signals(np.ones((3, len(plain.protocol))))
    assert list(out) == list(plain.map_names)


def test_verdict_resnet_uncertainty():
    data = simulate("verdict", n=1200, seed=4)
    b = train(data, TrainConfig(net="resnetreg-st", depth=11, width=8, epochs=2, uncertainty=True,
                                device="cpu")).bundle
    maps = b.predict_normalised(data.signals[:50], uncertainty=True)
    assert set(maps) == set(b.map_names) | {f"{k}_sd" for k in b.map_names}
    assert "f_ees_sd" in maps and (maps["f_ees_sd"] >= 0).all()


def test_config_validation():
    with pytest.raises(ValueError, match="uncertainty_beta"):
        TrainConfig(uncertainty=True, uncertainty_beta=2.0).validate()
    with pytest.raises(ValueError, match="uncertainty must be"):
        TrainConfig(uncertainty="yes").validate()


def test_tiny_validation_set_keeps_unit_factors():
    data = simulate("rverdict", n=30, seed=9, val_fraction=0.2)  # 6 validation signals
    b = train(data, TrainConfig(epochs=1, batch_size=8, uncertainty=True, device="cpu")).bundle
    assert b.has_uncertainty and set(b.sd_scale.values()) == {1.0} and b.interval_quantiles == {}
    assert interval_factor(b, "R", 0.95) == pytest.approx(z_of_level(0.95) / z_of_level(SD_LEVEL))


def test_describe_mentions_uncertainty(trained, plain):
    assert "uncertainty" in trained[1].bundle.describe()
    assert "uncertainty" not in plain.describe()


def test_cli_train_uncertainty_flag(tmp_path, capsys):
    from napari_rverdict.cli import main

    out = tmp_path / "u.pt"
    rc = main(["train", "--n", "600", "--epochs", "1", "--uncertainty", "--quiet", "--device", "cpu",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    b = load_bundle(out)
    assert b.has_uncertainty and b.train_config["uncertainty"] is True
    maps = b.predict_signals(np.ones((2, len(b.protocol))), uncertainty=True)
    assert "cellularity_sd" in maps


def test_calibration_set_is_fresh_not_validation(monkeypatch):
    from napari_rverdict.learn import uncertainty as uncertainty_mod

    data = simulate("rverdict", protocol="innovate", n=200, snr=(20, 50), seed=7, fraction_sampler="tissue",
                    ranges={"R": (1.0, 12.0)})
    seen = {}
    real = uncertainty_mod.calibrate_bundle

    def spy(bundle, signals, truth, *a, **k):
        seen["signals"], seen["truth"] = np.asarray(signals), truth
        return real(bundle, signals, truth, *a, **k)

    monkeypatch.setattr(uncertainty_mod, "calibrate_bundle", spy)
    b = train(data, TrainConfig(epochs=1, uncertainty=True, device="cpu")).bundle
    val = data.signals[data.val_index]
    cal = seen["signals"]
    assert cal.shape == val.shape  # as many signals as the validation set
    assert not np.isin(cal.view(np.void(cal.dtype.itemsize * cal.shape[1])).ravel(),
                       data.signals.view(np.void(cal.dtype.itemsize * cal.shape[1])).ravel()).any()
    assert b.extra["calibration"]["n"] == len(val) and b.interval_quantiles
    # drawn like the training data, from a derived seed that is reproducible and not the training seed
    again = uncertainty_mod.calibration_data(data)
    np.testing.assert_array_equal(again.signals, cal)
    assert again.seed == uncertainty_mod.calibration_seed(7) != 7 and b.extra["calibration"]["seed"] == again.seed
    assert again.ranges == data.ranges and again.snr_setting == (20.0, 50.0) and again.fraction_sampler == "tissue"
    assert again.protocol == data.protocol and ((again.snr >= 20) & (again.snr <= 50)).all()
