"""The batched NLLS reference fit: exact forward model, bounded transform, recovery, and the SciPy baseline."""

import threading
import time

import numpy as np
import pytest
import torch

from napari_rverdict.data.noise import add_rician_noise
from napari_rverdict.data.phantom import make_phantom
from napari_rverdict.data.prior import sample_parameters
from napari_rverdict.data.synth import noise_free_signals
from napari_rverdict.errors import InputError
from napari_rverdict.maps.nlls import FitCancelled, FitProblem, fit_signals, fit_volume
from napari_rverdict.maps.nlls_scipy import fit_signals_scipy
from napari_rverdict.physics import Protocol, get_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((16, 16, 2), snr=35, seed=0)


def _clean_dwi(ph):
    """The phantom's 20 volumes without noise (S0 as in the phantom)."""
    m = get_model("rverdict")
    sel = ph.mask
    inside = {k: ph.truth[k][sel] for k in m.estimated_names}
    inside["S0"] = ph.s0[sel]
    dwi = np.zeros(ph.shape + (len(ph.protocol),), np.float32)
    dwi[sel] = noise_free_signals(m, inside, ph.protocol)
    return dwi


@pytest.mark.parametrize("name", ["rverdict", "verdict"])
def test_fast_forward_equals_the_model(name):
    m = get_model(name)
    prot = Protocol.innovate()
    prob = FitProblem(m, prot)
    par = sample_parameters(m, 3000, rng=1)
    if "S0" in par:
        par["S0"] = np.ones(3000)
    ref = noise_free_signals(m, par, prot)
    np.testing.assert_allclose(prob.signal(par, np), ref, atol=1e-10, rtol=0)
    tp = {k: torch.as_tensor(v) for k, v in par.items()}
    np.testing.assert_allclose(prob.signal(tp).numpy(), ref, atol=1e-10, rtol=0)


def test_transform_is_bounded_and_invertible():
    m = get_model("rverdict")
    prob = FitProblem(m, Protocol.innovate(), ranges={"R": (1.0, 12.0)})
    u = np.random.default_rng(0).normal(0, 8, (5000, prob.k))
    p = prob.to_params(u, np)
    tot = p["f_ic"] + p["f_ees"] + p["f_vasc"]
    np.testing.assert_allclose(tot, 1.0, atol=1e-12)
    assert (p["f_ic"] >= 0).all() and (p["f_vasc"] >= 0).all() and (p["f_ic"] + p["f_ees"] <= 1 + 1e-12).all()
    assert p["R"].min() >= 1.0 and p["R"].max() <= 12.0
    assert p["T1"].min() >= 10.0 and p["T1"].max() <= 4000.0
    par = sample_parameters(m, 200, ranges={"R": (1.0, 12.0)}, rng=3)
    back = prob.to_params(prob.from_params(par), np)
    for k in m.estimated_names:
        np.testing.assert_allclose(back[k], par[k], rtol=1e-6, atol=1e-9)


def test_recovers_noise_free_phantom_and_respects_mask(phantom):
    calls = []
    maps = fit_volume("rverdict", _clean_dwi(phantom), phantom.protocol, mask=phantom.mask, device="cpu",
                      progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (phantom.mask.sum(), phantom.mask.sum())
    sel = phantom.mask
    for name in get_model("rverdict").map_names:
        m = maps[name]
        assert m.dtype == np.float32 and m.shape == phantom.shape
        assert np.all(np.isnan(m[~sel])), name
        np.testing.assert_allclose(m[sel], phantom.truth[name][sel], rtol=1e-3, atol=1e-5, err_msg=name)


def test_recovers_noise_free_classic_verdict():
    m = get_model("verdict")
    prot = Protocol.innovate()
    rng = np.random.default_rng(4)
    n = 60
    par = {"f_ic": rng.uniform(0.1, 0.6, n), "f_vasc": rng.uniform(0.05, 0.3, n), "R": rng.uniform(4, 12, n)}
    clean = noise_free_signals(m, par, prot) * 800.0  # raw scale: the per-series normalisation removes it
    fit = fit_signals(m, clean, prot, device="cpu")
    assert set(fit) == set(m.map_names)
    for k in ("f_ic", "f_vasc", "R"):
        np.testing.assert_allclose(fit[k], par[k], rtol=1e-4, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(fit["f_ees"], 1 - par["f_ic"] - par["f_vasc"], atol=1e-5)


def test_at_least_as_good_as_per_voxel_scipy_on_noisy_signals(phantom):
    m = get_model("rverdict")
    sel = phantom.mask
    rng = np.random.default_rng(7)
    idx = rng.choice(int(sel.sum()), 24, replace=False)
    truth = {k: phantom.truth[k][sel][idx].astype(float) for k in m.map_names}
    clean = noise_free_signals(m, {**truth, "S0": np.ones(24)}, Protocol.innovate())
    noisy = add_rician_noise(clean, clean.max(1, keepdims=True) / 35.0, rng)
    ours = fit_signals(m, noisy, Protocol.innovate(), device="cpu", n_starts=2, return_cost=True)
    ref = fit_signals_scipy(m, noisy, Protocol.innovate(), n_starts=2)
    ratio = ours["cost"] / ref["cost"]
    assert np.median(ratio) <= 1.0 + 1e-6
    assert np.all(ratio <= 1.0 + 1e-3)  # never a worse minimum than SciPy's from the same starts
    for k in ("f_ic", "f_ees", "D_ees", "T1", "T2_vasc_ees"):
        rmse_ours = np.sqrt(np.mean((ours[k] - truth[k]) ** 2))
        rmse_ref = np.sqrt(np.mean((ref[k] - truth[k]) ** 2))
        assert rmse_ours <= 1.02 * rmse_ref + 1e-9, k


def test_init_is_an_extra_start(phantom):
    dwi = _clean_dwi(phantom)
    # the truth as init and no random start: already optimal, so it must come back unchanged
    maps = fit_volume("rverdict", dwi, phantom.protocol, mask=phantom.mask, device="cpu", init=phantom.truth,
                      n_starts=0)
    sel = phantom.mask
    np.testing.assert_allclose(maps["f_ic"][sel], phantom.truth["f_ic"][sel], rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="init lacks"):
        fit_volume("rverdict", dwi, phantom.protocol, mask=phantom.mask, init={"f_ic": phantom.truth["f_ic"]})
    with pytest.raises(ValueError, match="n_starts"):
        fit_signals("rverdict", np.ones((3, 10)), "innovate", n_starts=0)
    for seed in (-1, 0.5, "0"):  # NumPy's own refusal was a traceback from inside the start screening
        with pytest.raises(InputError, match="seed must be a whole number"):
            fit_signals("rverdict", np.ones((3, 10)), "innovate", seed=seed)
        with pytest.raises(InputError, match="seed must be a whole number"):
            fit_volume("rverdict", dwi, phantom.protocol, mask=phantom.mask, seed=seed)


def test_bundle_init_and_errors():
    from napari_rverdict.data.synth import simulate
    from napari_rverdict.learn.config import TrainConfig
    from napari_rverdict.learn.train import train

    data = simulate("rverdict", n=2000, seed=2)
    b = train(data, TrainConfig(epochs=1, seed=0, device="cpu")).bundle
    x = data.signals[:20]
    fit = fit_signals("rverdict", x, data.protocol, init=b, n_starts=1, device="cpu", return_cost=True)
    alone = fit_signals("rverdict", x, data.protocol, n_starts=1, device="cpu", return_cost=True)
    assert np.all(fit["cost"] <= alone["cost"] * (1 + 1e-9))  # one more start can only help
    with pytest.raises(ValueError, match="verdict model but the fit is"):
        fit_signals("verdict", x, data.protocol, init=b, device="cpu")
    with pytest.raises(ValueError, match="measurements but the protocol"):
        fit_signals("rverdict", x[:, :7], data.protocol, device="cpu")
    with pytest.raises(ValueError, match="2-D"):
        fit_signals("rverdict", x[0], data.protocol, device="cpu")
    with pytest.raises(ValueError, match="NaN"):
        fit_signals("rverdict", np.full((2, 10), np.nan), data.protocol, device="cpu")
    with pytest.raises(ValueError, match="unknown model"):
        fit_signals("ivim", x, data.protocol)


def test_fit_problem_uses_the_models_signal_with_a_sphere_table(monkeypatch):
    m = get_model("verdict")
    prot = Protocol.innovate()
    prob = FitProblem(m, prot, ranges={"R": (1.0, 12.0)})
    assert (prob.sphere.r0, prob.sphere.r0 + prob.sphere.rh * (prob.sphere.nodes - 1)) == pytest.approx((1.0, 12.0))
    seen = []
    original = type(m).signal

    def spy(self, params, protocol, *, sphere=None):
        seen.append(sphere)
        return original(self, params, protocol, sphere=sphere)

    monkeypatch.setattr(type(m), "signal", spy)
    prob.signal({"f_ic": np.array([0.4]), "f_vasc": np.array([0.1]), "f_ees": np.array([0.5]), "R": np.array([5.0])},
                np)
    assert seen == [prob.sphere]


def _noisy_signals(n, seed=5):
    m = get_model("rverdict")
    rng = np.random.default_rng(seed)
    par = sample_parameters(m, n, rng=seed)
    par["S0"] = np.ones(n)
    clean = noise_free_signals(m, par, Protocol.innovate())
    return add_rician_noise(clean, clean.max(1, keepdims=True) / 35.0, rng)


def test_progress_moves_within_a_chunk():
    x = _noisy_signals(64)
    calls = []
    fit_signals("rverdict", x, "innovate", device="cpu", n_starts=1, chunk=8192,
                progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, 64) and calls[-1] == (64, 64)
    within = [d for d, _ in calls if 0 < d < 64]
    assert len(within) >= 2  # one chunk, yet progress moved inside it
    done = [d for d, _ in calls]
    assert done == sorted(done) and all(t == 64 for _, t in calls)


def test_stop_event_cancels_promptly():
    assert issubclass(FitCancelled, Exception) and not issubclass(FitCancelled, InputError)
    x = _noisy_signals(64)
    stop = threading.Event()
    calls = []

    def progress(done, total):
        calls.append(done)
        if done > 0:
            stop.set()

    t0 = time.perf_counter()
    with pytest.raises(FitCancelled):
        fit_signals("rverdict", x, "innovate", device="cpu", n_starts=1, progress=progress, stop_event=stop)
    assert time.perf_counter() - t0 < 30
    assert len(calls) == 2 and 0 < calls[-1] < 64  # stopped inside the first chunk, at the next LM iteration
    # fit_volume passes it on; an event already set stops before any work
    dwi = x.reshape(4, 4, 4, -1)
    with pytest.raises(FitCancelled):
        fit_volume("rverdict", dwi, "innovate", device="cpu", stop_event=stop)
    stop.clear()
    maps = fit_volume("rverdict", dwi, "innovate", device="cpu", n_starts=1, chunk=16, stop_event=stop,
                      max_iter=5)
    assert maps["f_ic"].shape == (4, 4, 4)
