"""Evaluation: regression metrics on constructed arrays, the CRLB against closed forms and finite differences,
and evaluate() on a tiny trained bundle."""

import numpy as np
import pytest
import torch

from napari_rverdict.data.synth import noise_free_signals, simulate
from napari_rverdict.errors import InputError
from napari_rverdict.evaluate.crlb import crlb, crlb_from_function
from napari_rverdict.evaluate.metrics import EvaluationReport, evaluate, evaluation_seed, regression_metrics
from napari_rverdict.evaluate.plots import plot_predicted_vs_true
from napari_rverdict.evaluate.report import typical_parameters
from napari_rverdict.learn.config import TrainConfig
from napari_rverdict.learn.train import train
from napari_rverdict.physics.compartments import ball
from napari_rverdict.physics.models import get_model
from napari_rverdict.physics.protocol import Protocol

B = np.array([0.0, 90.0, 500.0, 1000.0, 1500.0, 2000.0, 3000.0])  # s/mm²
B_MS = B * 1e-3  # ms/µm², the unit in which b·D is dimensionless with D in µm²/ms


# ---------------------------------------------------------------------- CRLB, closed forms
def test_crlb_ball_one_parameter_closed_form():
    # S(D) = exp(−b D), Gaussian noise σ: F = Σ_j (∂S_j/∂D)² / σ² = Σ_j b_j² e^{−2 b_j D} / σ²,
    # so var(D) ≥ σ² / Σ_j b_j² e^{−2 b_j D}.
    d = np.array([0.3, 1.0, 2.0, 3.0])
    snr = np.array([20.0, 35.0, 50.0, 100.0])
    sigma = 1.0 / snr
    got = crlb_from_function(lambda t: ball(B, t[:, :1]), d[:, None], sigma)
    assert got.shape == (4, 1)
    expected = np.sqrt(sigma**2 / (B_MS[None, :] ** 2 * np.exp(-2 * B_MS[None, :] * d[:, None])).sum(1))
    np.testing.assert_allclose(got[:, 0], expected, rtol=1e-10)
    # σ enters linearly
    np.testing.assert_allclose(crlb_from_function(lambda t: ball(B, t[:, :1]), d[:, None], 2 * sigma)[:, 0],
                               2 * expected, rtol=1e-10)


def test_crlb_ball_with_scale_nuisance_closed_form():
    # S = S0 exp(−b D), θ = (D, S0), S0 a nuisance. With e_j = e^{−2 b_j D}:
    # F σ² = [[S0² Σ b² e, −S0 Σ b e], [−S0 Σ b e, Σ e]]  →  var(D) = σ² Σe / (S0² (Σe Σb²e − (Σbe)²)).
    d = np.array([0.5, 1.5, 2.5])
    s0 = np.array([1.0, 0.4, 2.0])
    sigma = 0.02
    theta = np.stack([d, s0], 1)

    def fn(t):
        return t[:, 1:2] * ball(B, t[:, :1])

    got, cov = crlb_from_function(fn, theta, sigma, report=[0], return_covariance=True)
    e = np.exp(-2 * B_MS[None, :] * d[:, None])
    se, sbe, sb2e = e.sum(1), (B_MS * e).sum(1), (B_MS**2 * e).sum(1)
    var_d = sigma**2 * se / (s0**2 * (se * sb2e - sbe**2))
    np.testing.assert_allclose(got[:, 0], np.sqrt(var_d), rtol=1e-8)
    var_s0 = sigma**2 * s0**2 * sb2e / (s0**2 * (se * sb2e - sbe**2))
    np.testing.assert_allclose(cov[:, 1, 1], var_s0, rtol=1e-8)
    # knowing S0 can only help: the nuisance-free bound is smaller
    s0_col = torch.as_tensor(s0[:, None])
    alone = crlb_from_function(lambda t: s0_col * ball(B, t[:, :1]), d[:, None], sigma)[:, 0]
    assert (alone < got[:, 0]).all()


def test_crlb_unidentifiable_parameter_is_inf():
    # the signal does not depend on θ₁: F is singular, its bound (and the whole sample's) is inf
    got = crlb_from_function(lambda t: ball(B, t[:, :1]) + 0.0 * t[:, 1:2], np.array([[1.0, 5.0]]), 0.01)
    assert np.isinf(got).all()


def test_crlb_from_function_bad_inputs():
    with pytest.raises(ValueError, match="sigma must be positive"):
        crlb_from_function(lambda t: ball(B, t[:, :1]), np.array([[1.0]]), 0.0)
    with pytest.raises(ValueError, match="theta must be"):
        crlb_from_function(lambda t: ball(B, t[:, :1]), np.array([1.0, 2.0]), 0.1)
    with pytest.raises(ValueError, match="signal_fn must return"):
        crlb_from_function(lambda t: t[:, 0] ** 2, np.array([[1.0], [2.0]]), 0.1)  # (n,), not (n, m)


def _fd_crlb(model, protocol, point: dict, snr: float, nuisance_scale: bool) -> dict:
    """√CRLB with a central finite-difference Jacobian of noise_free_signals (independent of autograd); σ on each
    acquired volume, so a measurement averaging n volumes (``protocol.n_volumes``) has variance σ²/n."""
    names = list(model.estimated_names)
    extra = "S0"
    base = dict(point)
    base.setdefault("S0", 1.0)

    def sig(p):
        arr = {k: np.array([v]) for k, v in p.items()}
        s = noise_free_signals(model, arr, protocol)[0]
        return s * p["S0"] if nuisance_scale else s

    cols = []
    for k in names + [extra]:
        h = 1e-6 * max(abs(base[k]), 1e-3)
        up, dn = dict(base), dict(base)
        up[k] += h
        dn[k] -= h
        cols.append((sig(up) - sig(dn)) / (2 * h))
    jac = np.stack(cols, 1)
    sigma = sig(base).max() / snr
    cov = np.linalg.inv(jac.T @ (jac * protocol.n_volumes[:, None]) / sigma**2)
    return {k: float(np.sqrt(cov[i, i])) for i, k in enumerate(names)}


@pytest.mark.parametrize("name", ["rverdict", "verdict"])
def test_model_crlb_matches_finite_differences(name):
    model = get_model(name)
    protocol = Protocol.innovate()
    point = typical_parameters(model)
    point = {k: v for k, v in point.items() if k in model.parameter_names}
    if "S0" in model.parameter_names:
        point["S0"] = 0.7
    params = {k: np.array([v]) for k, v in point.items()}
    got = crlb(model, protocol, params, 35.0)
    fd = _fd_crlb(model, protocol, point, 35.0, nuisance_scale="S0" not in model.parameter_names)
    assert set(got) == set(model.estimated_names)
    for k in model.estimated_names:
        assert got[k].shape == (1,) and np.isfinite(got[k]).all()
        np.testing.assert_allclose(got[k][0], fd[k], rtol=2e-3, err_msg=k)


def test_model_crlb_scales_with_snr_and_not_with_s0():
    model = get_model("rverdict")
    point = {k: np.array([v]) for k, v in typical_parameters(model).items() if k in model.parameter_names}
    point["S0"] = np.array([0.5])
    a = crlb(model, Protocol.innovate(), point, 20.0)
    b = crlb(model, Protocol.innovate(), point, 40.0)
    c = crlb(model, Protocol.innovate(), {**point, "S0": np.array([1.0])}, 40.0)
    for k in a:
        np.testing.assert_allclose(a[k], 2 * b[k], rtol=1e-8)
        np.testing.assert_allclose(b[k], c[k], rtol=1e-8)  # σ is relative to the brightest measurement
    with pytest.raises(ValueError, match="SNR must be positive"):
        crlb(model, Protocol.innovate(), point, 0.0)


# ---------------------------------------------------------------------- regression metrics
def test_regression_metrics_constructed():
    t = np.linspace(0.0, 10.0, 101)
    rng_ = {"x": (0.0, 20.0), "y": (0.0, 20.0), "z": (0.0, 20.0), "w": (0.0, 20.0)}
    alt = np.where(np.arange(101) % 2 == 0, 0.5, -0.5)
    m = regression_metrics({"x": t, "y": t, "z": t, "w": t},
                           {"x": t + 1.0, "y": t + alt, "z": 10.0 - t, "w": np.full_like(t, 3.0)}, rng_)
    assert set(m) == {"x", "y", "z", "w"}
    # constant offset: RMSE = |c|, bias = c, MAPE = |c| / range, perfect correlation
    assert m["x"]["rmse"] == pytest.approx(1.0) and m["x"]["bias"] == pytest.approx(1.0)
    assert m["x"]["mape"] == pytest.approx(1.0 / 20.0) and m["x"]["r"] == pytest.approx(1.0)
    # ±0.5 errors: RMSE 0.5, bias (51 − 50) · 0.5 / 101, MAE / range = 0.5 / 20
    assert m["y"]["rmse"] == pytest.approx(0.5) and m["y"]["bias"] == pytest.approx(0.5 / 101)
    assert m["y"]["mape"] == pytest.approx(0.025)
    # mirrored prediction: r = −1; RMSE from the construction
    assert m["z"]["r"] == pytest.approx(-1.0)
    assert m["z"]["rmse"] == pytest.approx(np.sqrt(np.mean((10.0 - 2 * t) ** 2)))
    assert m["z"]["bias"] == pytest.approx(0.0, abs=1e-12)
    # a constant prediction has no correlation
    assert np.isnan(m["w"]["r"])
    assert m["w"]["mape"] == pytest.approx(np.mean(np.abs(3.0 - t)) / 20.0)


def test_regression_metrics_random_against_numpy():
    rng = np.random.default_rng(0)
    t = rng.uniform(2, 8, 500)
    p = t + rng.normal(0.3, 0.5, 500)
    m = regression_metrics({"a": t, "extra": t}, {"a": p, "only_pred": p}, {"a": (2.0, 8.0)})
    assert list(m) == ["a"]  # names missing from true are skipped
    assert m["a"]["rmse"] == pytest.approx(np.sqrt(np.mean((p - t) ** 2)))
    assert m["a"]["bias"] == pytest.approx(np.mean(p - t))
    assert m["a"]["mape"] == pytest.approx(np.mean(np.abs(p - t)) / 6.0)
    assert m["a"]["r"] == pytest.approx(np.corrcoef(t, p)[0, 1])


def test_regression_metrics_bad_inputs():
    with pytest.raises(ValueError, match="true has 3 values but pred has 2"):
        regression_metrics({"a": np.ones(3)}, {"a": np.ones(2)}, {"a": (0, 1)})
    with pytest.raises(ValueError, match="no values"):
        regression_metrics({"a": np.ones(0)}, {"a": np.ones(0)}, {"a": (0, 1)})
    with pytest.raises(ValueError, match="no range for 'a'"):
        regression_metrics({"a": np.ones(3)}, {"a": np.ones(3)}, {"b": (0, 1)})


# ---------------------------------------------------------------------- evaluate()
@pytest.fixture(scope="module")
def bundle():
    data = simulate("rverdict", n=1500, seed=11)
    return train(data, TrainConfig(epochs=3, seed=0)).bundle


def test_evaluate_every_parameter(bundle, tmp_path):
    rep = evaluate(bundle, n=400, n_crlb=50, seed=7)
    assert isinstance(rep, EvaluationReport)
    names = list(bundle.target_names) + ["f_vasc"]
    assert list(rep.rows) == names
    for k in names:
        row = rep.rows[k]
        assert set(row) == {"unit", "rmse", "bias", "mape", "r", "crlb"}
        assert np.isfinite([row["rmse"], row["bias"], row["mape"], row["r"], row["crlb"]]).all()
        assert row["rmse"] > 0 and row["crlb"] > 0 and 0 < row["mape"] < 1
        assert rep.true[k].shape == rep.pred[k].shape == (400,)
    assert rep.rows["R"]["unit"] == "µm" and rep.rows["f_vasc"]["unit"] == ""
    # the table's numbers are the metrics of the predictions against the truth of a fresh set
    data = simulate("rverdict", bundle.protocol, n=400, snr=bundle.snr, ranges=bundle.ranges,
                    fraction_sampler=bundle.fraction_sampler, seed=evaluation_seed(7, bundle))
    maps = bundle.predict_signals(data.signals)
    for k in names:
        np.testing.assert_allclose(rep.true[k], data.params[k])
        np.testing.assert_allclose(rep.pred[k], maps[k], rtol=1e-5, atol=1e-6)
        lo, hi = bundle.ranges.get(k, (0.0, 1.0))
        assert rep.rows[k]["mape"] == pytest.approx(np.mean(np.abs(maps[k] - data.params[k])) / (hi - lo), rel=1e-4)
    # a trained network beats predicting the middle of the range on the fractions
    for k in ("f_ic", "f_ees"):
        lo, hi = bundle.ranges[k]
        assert rep.rows[k]["rmse"] < np.sqrt(np.mean((data.params[k] - 0.5 * (lo + hi)) ** 2))
    table = rep.format_table()
    for k in names:
        assert k in table
    assert "√CRLB" in table and "400 fresh synthetic signals at SNR 35" in table
    csv_text = rep.to_csv(tmp_path / "t.csv").read_text()
    assert csv_text.splitlines()[0] == "parameter,unit,rmse,bias,mape,r,sqrt_crlb_median"
    assert len(csv_text.splitlines()) == 1 + len(names)
    png = plot_predicted_vs_true(rep, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # an existing file is refused and left as it was; overwrite=True replaces it
    for path, write in ((tmp_path / "t.csv", rep.to_csv), (png, lambda p, **kw: plot_predicted_vs_true(rep, p, **kw))):
        path.write_bytes(b"kept")
        with pytest.raises(InputError, match=rf"{path.name} exists; pass overwrite=True to replace it"):
            write(path)
        assert path.read_bytes() == b"kept"
        assert write(path, overwrite=True).read_bytes() != b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "t.csv"]


def test_evaluate_never_reuses_training_or_calibration_data(bundle):
    """Evaluating with the seed the training data were made with (11) must not evaluate on training data."""
    assert bundle.extra["data_seed"] == 11
    rep = evaluate(bundle, n=1500, n_crlb=0, seed=11)
    training = simulate("rverdict", n=1500, seed=11)
    for k in ("f_ic", "R"):  # continuous draws: any shared sample would be an exact repeat
        assert not np.isin(rep.true[k], training.params[k]).any()
    seeds = {evaluation_seed(s, bundle) for s in range(50)}
    assert len(seeds) == 50 and not seeds & set(range(10_000))
    assert bundle.extra["data_seed"] not in seeds
    with pytest.raises(ValueError, match="seed must be an integer"):
        evaluate(bundle, n=10, seed=-1)


def test_evaluate_snr_and_bad_n(bundle):
    lo = evaluate(bundle, n=300, snr=10.0, n_crlb=20, seed=1)
    hi = evaluate(bundle, n=300, snr=100.0, n_crlb=20, seed=1)
    assert lo.snr == 10.0
    for k in bundle.target_names:
        assert lo.rows[k]["crlb"] > hi.rows[k]["crlb"]
    no_crlb = evaluate(bundle, n=50, n_crlb=0)
    assert all(np.isnan(r["crlb"]) for r in no_crlb.rows.values())
    with pytest.raises(ValueError, match="n must be an integer"):
        evaluate(bundle, n=1)
