"""Signal models: public names, limits, normalisation and derived maps."""

import numpy as np
import pytest
import torch

from napari_rverdict import Protocol, get_model
from napari_rverdict.physics import ProtocolError, astrosticks, ball, sphere_gpd


def test_public_parameter_names():
    assert get_model("verdict").parameter_names == ("f_ic", "f_vasc", "R")
    assert get_model("rverdict").parameter_names == ("f_ic", "f_ees", "R", "T2_vasc_ees", "T2_ic", "T1", "D_ees", "S0")
    assert get_model("rverdict").estimated_names == ("f_ic", "f_ees", "R", "T2_vasc_ees", "T2_ic", "T1", "D_ees")
    assert set(get_model("rverdict").map_names) == {"f_ic", "f_ees", "f_vasc", "R", "cellularity", "D_ees", "T1",
                                                    "T2_vasc_ees", "T2_ic"}
    assert get_model("verdict").map_names == ("f_ic", "f_ees", "f_vasc", "R", "cellularity")
    with pytest.raises(ValueError, match="unknown model 'ivim'"):
        get_model("ivim")


def test_default_ranges_and_units_follow_physics_md():
    m = get_model("rverdict")
    assert m.default_ranges()["T1"] == (10.0, 4000.0)
    assert m.default_ranges()["T2_ic"] == (1.0, 150.0)
    assert m.default_ranges()["T2_vasc_ees"] == (150.0, 800.0)
    assert m.default_ranges()["R"] == (0.01, 15.0)
    assert m.default_ranges()["D_ees"] == (0.5, 3.0)
    assert m.spec("R").unit == "µm" and m.spec("D_ees").unit == "µm²/ms" and m.spec("T1").unit == "ms"
    assert m.map_spec("cellularity").unit == "µm⁻³"


def test_classic_verdict_is_the_sum_of_compartments():
    p = Protocol.innovate()
    params = {"f_ic": np.array([0.5]), "f_vasc": np.array([0.1]), "R": np.array([8.0])}
    s = get_model("verdict").signal(params, p)
    expected = (0.5 * sphere_gpd(p.b, p.small_delta, p.big_delta, 8.0, 2.0) + 0.4 * ball(p.b, 2.0)
                + 0.1 * astrosticks(p.b, 8.0))
    np.testing.assert_allclose(s[0], expected, rtol=1e-12)
    np.testing.assert_allclose(s[0, p.is_b0], 1.0)


def test_rverdict_relaxation_terms():
    p = Protocol.innovate()
    m = get_model("rverdict")
    base = dict(f_ic=0.3, f_ees=0.5, R=6.0, T2_vasc_ees=300.0, T2_ic=60.0, T1=1500.0, D_ees=1.8, S0=1.0)
    params = {k: np.array([v]) for k, v in base.items()}
    s = m.signal(params, p)[0]
    # b = 0 of each series: S0 (1 − e^{−TR/T1}) [(f_vasc + f_ees) e^{−TE/T2ve} + f_ic e^{−TE/T2ic}]
    te, tr = p.te[0], p.tr[0]
    b0 = (1 - np.exp(-tr / 1500)) * (0.7 * np.exp(-te / 300) + 0.3 * np.exp(-te / 60))
    assert s[0] == pytest.approx(b0, rel=1e-12)
    # with T1 → 0 and T2 → ∞ limits the model reduces to classic-style compartments with free D_ees
    lim = dict(base, T1=1e-3, T2_vasc_ees=1e12, T2_ic=1e12)
    s_lim = m.signal({k: np.array([v]) for k, v in lim.items()}, p)[0]
    expected = (0.3 * sphere_gpd(p.b, p.small_delta, p.big_delta, 6.0, 2.0) + 0.5 * ball(p.b, 1.8)
                + 0.2 * astrosticks(p.b, 8.0))
    np.testing.assert_allclose(s_lim, expected, rtol=1e-9)
    # S0 scales linearly
    np.testing.assert_allclose(m.signal({**params, "S0": np.array([3.0])}, p)[0], 3 * s, rtol=1e-12)


def test_rverdict_needs_tr():
    p = Protocol.innovate()
    p_no_tr = p.with_tr(np.nan)
    params = {k: np.array([v]) for k, v in dict(f_ic=0.3, f_ees=0.5, R=6.0, T2_vasc_ees=300.0, T2_ic=60.0,
                                                    T1=1500.0, D_ees=1.8, S0=1.0).items()}
    with pytest.raises(ProtocolError, match="needs TR"):
        get_model("rverdict").signal(params, p_no_tr)
    # classic VERDICT does not care
    get_model("verdict").signal({"f_ic": np.array([0.3]), "f_vasc": np.array([0.1]), "R": np.array([5.0])}, p_no_tr)


def test_missing_parameter_is_named():
    with pytest.raises(KeyError, match="R"):
        get_model("verdict").signal({"f_ic": np.array([0.3]), "f_vasc": np.array([0.1])}, Protocol.innovate())


def test_float64_in_float64_out_and_torch_autograd():
    p = Protocol.innovate()
    m = get_model("rverdict")
    values = dict(f_ic=0.3, f_ees=0.5, R=6.0, T2_vasc_ees=300.0, T2_ic=60.0, T1=1500.0, D_ees=1.8, S0=1.0)
    out = m.signal({k: np.full((2, 3), v) for k, v in values.items()}, p)
    assert out.dtype == np.float64 and out.shape == (2, 3, 10)
    t = {k: torch.tensor([v], dtype=torch.float32, requires_grad=True) for k, v in values.items()}
    s = m.signal(t, p)
    assert s.dtype == torch.float32 and s.shape == (1, 10)
    np.testing.assert_allclose(s.detach().numpy(), out[0, :1], rtol=1e-5)
    s.sum().backward()
    assert all(torch.isfinite(v.grad).all() for v in t.values())


def test_classic_normalisation_per_series_b0():
    p = Protocol.innovate()
    raw = np.arange(1, 21, dtype=float).reshape(2, 10)
    n = get_model("verdict").normalise(raw, p)
    np.testing.assert_allclose(n[:, p.is_b0], 1.0)
    np.testing.assert_allclose(n[0, 1], 2 / 1)
    np.testing.assert_allclose(n[0, 9], 10 / 9)
    bad = raw.copy()
    bad[1, 4] = 0
    with pytest.raises(ValueError, match="non-positive b = 0"):
        get_model("verdict").normalise(bad, p)


def test_classic_normalisation_removes_relaxation_max_normalisation_would_not():
    # raw scanner signal with series-specific T2 and T1 weighting on top of classic VERDICT
    p = Protocol.innovate()
    m = get_model("verdict")
    params = {"f_ic": np.array([0.4]), "f_vasc": np.array([0.1]), "R": np.array([7.0])}
    clean = m.signal(params, p)
    weighting = 1000 * np.exp(-p.te / 80.0) * (1 - np.exp(-p.tr / 1500.0))
    raw = clean * weighting
    np.testing.assert_allclose(m.normalise(raw, p), clean, rtol=1e-12)
    assert np.abs(raw / raw.max() - clean).max() > 0.1


def test_rverdict_normalisation_by_max_is_scale_free():
    p = Protocol.innovate()
    x = np.random.default_rng(1).uniform(0.1, 1, (4, 10))
    n = get_model("rverdict").normalise(x * 123.0, p)
    np.testing.assert_allclose(n.max(-1), 1.0)
    np.testing.assert_allclose(n, get_model("rverdict").normalise(x, p))
    with pytest.raises(ValueError, match="NaN"):
        get_model("rverdict").normalise(np.full((1, 10), np.nan), p)


def test_derived_maps_clip_and_renormalise():
    m = get_model("rverdict")
    params = {"f_ic": np.array([0.5, 0.7, -0.1]), "f_ees": np.array([0.3, 0.6, 0.5]), "R": np.array([5.0, 10.0, 0.0]),
              "T2_vasc_ees": np.ones(3), "T2_ic": np.ones(3), "T1": np.ones(3), "D_ees": np.ones(3)}
    d = m.derived_maps(params)
    np.testing.assert_allclose(d["f_vasc"], [0.2, 0.0, 0.5])
    np.testing.assert_allclose(d["f_ic"], [0.5, 0.7 / 1.3, 0.0])
    np.testing.assert_allclose(d["f_ic"] + d["f_ees"] + d["f_vasc"], 1.0)
    np.testing.assert_allclose(d["cellularity"][:2], [0.5 / 125, (0.7 / 1.3) / 1000])
    assert np.isfinite(d["cellularity"]).all()  # R = 0 clamped at 0.01 µm
    assert list(d)[:9] == list(m.map_names)
    v = get_model("verdict").derived_maps({"f_ic": np.array([0.6]), "f_vasc": np.array([0.1]), "R": np.array([2.0])})
    np.testing.assert_allclose(v["f_ees"], 0.3)
    t = m.derived_maps({k: torch.as_tensor(v) for k, v in params.items()})
    np.testing.assert_allclose(t["f_vasc"].numpy(), d["f_vasc"])


def test_fixed_diffusivities_are_declared_on_the_model():
    v, r = get_model("verdict"), get_model("rverdict")
    assert v.fixed_values == {"D_ic": 2.0, "D_ees": 2.0, "D_vasc": 8.0}
    assert r.fixed_values == {"D_ic": 2.0, "D_vasc": 8.0}  # D_ees is fitted by rVERDICT
    assert r.fixed_value("D_vasc") == 8.0 and r.fixed[0].unit == "µm²/ms"
    with pytest.raises(KeyError, match="no fixed constant 'D_ees'"):
        r.fixed_value("D_ees")


def test_both_models_share_one_map_table():
    v, r = get_model("verdict"), get_model("rverdict")
    assert r.maps[:len(v.maps)] == v.maps
    assert all(a is b for a, b in zip(v.maps, r.maps))  # the same MapSpec objects, declared once
    assert r.map_spec("D_ees").display == (0.5, 3.0) and v.map_spec("cellularity").unit == "µm⁻³"


@pytest.mark.parametrize("name", ["verdict", "rverdict"])
def test_signal_takes_a_sphere_provider(name):
    p = Protocol.innovate()
    m = get_model(name)
    values = {"f_ic": 0.3, "f_ees": 0.5, "f_vasc": 0.1, "R": 6.0, "T2_vasc_ees": 300.0, "T2_ic": 60.0,
              "T1": 1500.0, "D_ees": 1.8, "S0": 1.0}
    params = {k: np.array([values[k], values[k]]) for k in m.parameter_names}
    exact = m.signal(params, p)
    table = m.sphere_table(p, (0.01, 15.0))
    np.testing.assert_allclose(m.signal(params, p, sphere=table), exact, rtol=0, atol=1e-11)
    # the provider replaces the intracellular sphere only: E_ic = 1 everywhere is f_ic · (relaxation) more signal
    ones = m.signal(params, p, sphere=lambda radius: np.ones(radius.shape[:-1] + (len(p),)))
    assert np.all(ones[:, ~p.is_b0] > exact[:, ~p.is_b0])
    np.testing.assert_allclose(ones[:, p.is_b0], exact[:, p.is_b0], rtol=1e-12)
