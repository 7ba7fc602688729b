"""Compartment signals against published cross-checks and analytic limits."""

import numpy as np
import pytest
import torch
from scipy.special import spherical_jn

from napari_rverdict.physics import astrosticks, ball, sphere_gpd, sphere_roots


def test_roots_are_zeros_of_j1_derivative_to_1e_9():
    roots = sphere_roots(50)
    np.testing.assert_allclose(roots[:5], [2.081576, 5.940370, 9.205840, 12.404445, 15.579236], atol=1e-6)
    assert np.abs(spherical_jn(1, roots, derivative=True)).max() < 1e-9
    assert np.all(np.diff(roots) > 2.5)  # no root skipped or repeated


def test_sphere_published_cross_check():
    # dmipy-fit 2.3.0 and an independent implementation: 0.796489
    value = sphere_gpd(1500.0, 23.9, 43.8, 8.0, 2.0)
    assert abs(value - 0.796489) < 1e-5


def test_sphere_series_converged_over_radius_range():
    b = np.array([90.0, 500.0, 1500.0, 2000.0, 3000.0])
    sd = np.array([3.9, 11.4, 23.9, 14.4, 18.9])
    bd = np.array([23.8, 31.3, 43.8, 34.3, 38.8])
    radii = np.array([0.01, 0.5, 3.0, 8.0, 15.0, 20.0])[:, None]
    default = sphere_gpd(b, sd, bd, radii, 2.0)
    many = sphere_gpd(b, sd, bd, radii, 2.0, n_roots=400)
    np.testing.assert_allclose(default, many, rtol=2e-8, atol=1e-10)


def test_every_compartment_is_one_at_b0():
    assert sphere_gpd(0.0, 10.0, 30.0, 8.0, 2.0) == 1.0
    assert sphere_gpd(0.0, 0.0, 0.0, 8.0, 2.0) == 1.0  # b = 0 rows written with δ = Δ = 0
    assert ball(0.0, 2.0) == 1.0
    assert astrosticks(0.0, 8.0) == 1.0


def test_sphere_limits_small_and_large_radius():
    # tiny cells: no measurable attenuation
    assert abs(sphere_gpd(3000.0, 18.9, 38.8, 0.01, 2.0) - 1.0) < 1e-9
    # huge cells: free diffusion exp(-bD). The approach is slow, ∝ (S/V)·sqrt(D t) ∝ 1/R (Mitra 1992), so check
    # both closeness and the 1/R rate: 4× the radius leaves ~1/4 of the deviation.
    b = 1500.0
    free = np.exp(-b * 1e-3 * 2.0)
    dev = [abs(np.log(sphere_gpd(b, 23.9, 43.8, r, 2.0, n_roots=3000) / free)) for r in (250.0, 1000.0)]
    assert dev[1] < 0.03
    assert 3.5 < dev[0] / dev[1] < 4.5
    # monotone: larger cells attenuate more at fixed timing
    r = np.linspace(0.5, 20, 40)
    e = sphere_gpd(b, 23.9, 43.8, r, 2.0)
    assert np.all(np.diff(e) < 0)


def test_sphere_long_pulse_limit():
    # δ ≈ Δ >> R²/D: the GPD long-time limit ln E = -(2/175)... check against the motional-narrowing formula
    # ln E = -(8/175) γ²G² δ R⁴ / D  (Neuman 1974), with γ²G² = b / (δ² (Δ − δ/3))
    r, d, sd, bd, b = 3.0, 2.0, 200.0, 210.0, 1000.0
    g2 = b * 1e-3 / (sd**2 * (bd - sd / 3))
    expected = np.exp(-(8.0 / 175.0) * g2 * sd * r**4 / d)
    assert abs(sphere_gpd(b, sd, bd, r, d) - expected) / expected < 2e-3


def test_astrosticks_small_bd_series_and_known_value():
    x = np.array([1e-6, 1e-4, 1e-2])  # bD
    b = x / (8.0 * 1e-3)
    np.testing.assert_allclose(astrosticks(b, 8.0), 1 - x / 3, rtol=0, atol=x.max() ** 2)
    # erf form at bD = 1: sqrt(pi)/2 * erf(1)
    assert abs(astrosticks(1000.0, 1.0) - np.sqrt(np.pi) / 2 * 0.8427007929497149) < 1e-12
    # continuous across the series/exact switch at bD = 1e-3
    lo, hi = astrosticks(np.array([0.999e-3, 1.001e-3]) / 8e-3, 8.0)
    assert abs(lo - hi) < 1e-6


def test_ball_value():
    assert abs(ball(1000.0, 2.0) - np.exp(-2.0)) < 1e-15


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_and_torch_agree(dtype):
    b = np.array([0, 90, 500, 1500, 2000, 3000.0])
    sd = np.array([3.9, 3.9, 11.4, 23.9, 14.4, 18.9])
    bd = np.array([23.8, 23.8, 31.3, 43.8, 34.3, 38.8])
    r = np.array([0.01, 2.0, 5.0, 8.0, 12.0, 15.0])
    ref = sphere_gpd(b, sd, bd, r, 2.0)
    got = sphere_gpd(torch.tensor(b, dtype=dtype), torch.tensor(sd, dtype=dtype), torch.tensor(bd, dtype=dtype),
                     torch.tensor(r, dtype=dtype), 2.0)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5 if dtype == torch.float32 else 1e-12)
    np.testing.assert_allclose(astrosticks(torch.tensor(b, dtype=dtype), 8.0).numpy(), astrosticks(b, 8.0),
                               rtol=1e-6 if dtype == torch.float32 else 1e-12)
    np.testing.assert_allclose(ball(torch.tensor(b, dtype=dtype), 2.0).numpy(), ball(b, 2.0),
                               rtol=1e-6 if dtype == torch.float32 else 1e-12)


def test_gradients_are_finite_including_b0_and_tiny_radius():
    b = torch.tensor([0.0, 90.0, 3000.0], dtype=torch.float64)
    r = torch.tensor([0.01, 8.0, 15.0], dtype=torch.float64, requires_grad=True)
    d = torch.tensor(8.0, dtype=torch.float64, requires_grad=True)
    e = sphere_gpd(b, torch.tensor(18.9), torch.tensor(38.8), r, 2.0).sum() + astrosticks(b, d).sum()
    e.backward()
    assert torch.isfinite(r.grad).all() and torch.isfinite(d.grad)
    assert r.grad[1] < 0  # bigger sphere, less signal
    # autograd agrees with a central finite difference
    r0 = torch.tensor(8.0, dtype=torch.float64, requires_grad=True)
    sphere_gpd(torch.tensor(1500.0), 23.9, 43.8, r0, 2.0).backward()
    h = 1e-5
    fd = (sphere_gpd(1500.0, 23.9, 43.8, 8.0 + h, 2.0) - sphere_gpd(1500.0, 23.9, 43.8, 8.0 - h, 2.0)) / (2 * h)
    assert abs(r0.grad.item() - fd) < 1e-7


def test_sphere_table_matches_the_exact_series():
    from napari_rverdict.physics import Protocol
    from napari_rverdict.physics.compartments import SphereTable

    p = Protocol.innovate()
    table = SphereTable(p.b, p.small_delta, p.big_delta, 2.0, (0.01, 15.0))
    r = np.linspace(0.01, 15.0, 20001)[:, None]
    exact = sphere_gpd(p.b, p.small_delta, p.big_delta, r, 2.0)
    approx = table(r)
    assert isinstance(approx, np.ndarray) and approx.shape == exact.shape
    assert np.abs(approx - exact).max() < 2e-12
    # tensors keep their dtype; the table is reused per dtype and device
    t32 = table(torch.as_tensor(r[:5], dtype=torch.float32))
    assert t32.dtype == torch.float32
    np.testing.assert_allclose(t32.numpy(), exact[:5], atol=1e-6)
    with pytest.raises(ValueError, match="low < high"):
        SphereTable(p.b, p.small_delta, p.big_delta, 2.0, (5.0, 5.0))


def test_read_only_inputs_such_as_a_protocols_give_no_torch_warning(fresh_python):
    """A Protocol's arrays are read-only; torch warned (once, at napari's launch) that sharing them is undefined."""
    code = ("import warnings, numpy as np\n"
            "warnings.simplefilter('error')\n"
            "from napari_rverdict.physics import Protocol, ball\n"
            "b = Protocol.innovate().b\n"
            "assert not b.flags.writeable\n"
            "assert np.allclose(ball(b, 2.0), np.exp(-b * 1e-3 * 2.0))\n")
    r = fresh_python("-c", code)
    assert r.returncode == 0, r.stderr
