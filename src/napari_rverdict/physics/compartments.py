"""Signal attenuation of the three VERDICT compartments (no exchange; each is 1 at b = 0).

Units everywhere: b in s/mm², δ and Δ in ms, D in µm²/ms, R in µm. Inside, b is converted to ms/µm²
(1 s/mm² = 1e-3 ms/µm²) so that b·D is dimensionless.

Every function accepts NumPy arrays or torch tensors that broadcast against each other. The work is done in
torch, so tensors keep their dtype and device and support autograd; NumPy input is computed in float64 and
returned as a NumPy array.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy.optimize import brentq

B_TO_MS_PER_UM2 = 1e-3  # 1 s/mm² = 1e-3 ms/µm²
SPHERE_N_ROOTS = 30  # truncation error < 2e-8 for R <= 20 µm on clinical PGSE timings (tested against 400 terms)


def _dj1(x: float) -> float:
    """Derivative of the spherical Bessel function j1 (j1 = sin x / x² − cos x / x)."""
    return 2.0 * np.cos(x) / x**2 - 2.0 * np.sin(x) / x**3 + np.sin(x) / x


@lru_cache(maxsize=8)
def sphere_roots(n: int = SPHERE_N_ROOTS) -> np.ndarray:
    """The first ``n`` positive roots μ_m of j1'(μ) = 0 (2.081576, 5.940370, …), to ~1e-14.

    Roots are bracketed on a fine grid (they are spaced by ≈ π) and polished with Brent's method.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    hi = np.pi * (n + 2)
    x = np.linspace(0.5, hi, int(200 * (n + 2)))
    v = _dj1(x)
    idx = np.nonzero(np.sign(v[:-1]) != np.sign(v[1:]))[0]
    roots = np.array([brentq(_dj1, x[i], x[i + 1], xtol=1e-15, rtol=4 * np.finfo(float).eps) for i in idx])
    if roots.size < n:  # pragma: no cover - the grid always brackets n roots
        raise RuntimeError("failed to bracket the roots of j1'")
    return roots[:n]


def _as_tensors(*arrays):
    """Convert inputs to torch tensors of one floating dtype and device.

    Returns the tensors and a flag saying whether the caller gave NumPy (then the result goes back to NumPy).
    """
    use_numpy = not any(isinstance(a, torch.Tensor) for a in arrays)
    if use_numpy:
        # a read-only array (a Protocol's) is copied: torch cannot share it and warns that writes would be undefined
        return [torch.as_tensor(np.require(a, dtype=np.float64, requirements="W")) for a in arrays], True
    ref = next(a for a in arrays if isinstance(a, torch.Tensor))
    dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
    out = [a.to(dtype) if isinstance(a, torch.Tensor) else torch.as_tensor(a, dtype=dtype, device=ref.device) for a in arrays]
    return out, False


def _out(t: torch.Tensor, use_numpy: bool):
    return t.detach().cpu().numpy() if use_numpy else t


def ball(b, d):
    """Isotropic free diffusion: E = exp(−b D). b in s/mm², D in µm²/ms."""
    (b, d), np_in = _as_tensors(b, d)
    return _out(torch.exp(-b * B_TO_MS_PER_UM2 * d), np_in)


def astrosticks(b, d):
    """Sticks in uniformly random orientations: E = √π / (2√(bD)) · erf(√(bD)); 1 at b = 0.

    Below bD = 1e-3 the Taylor series 1 − x/3 + x²/10 − x³/42 is used (accurate to < 1e-13 there) so the value
    and its gradient stay finite at b = 0.
    """
    (b, d), np_in = _as_tensors(b, d)
    x = b * B_TO_MS_PER_UM2 * d
    small = x < 1e-3
    x_safe = torch.where(small, torch.ones_like(x), x)  # keeps the unused branch finite for autograd
    s = torch.sqrt(x_safe)
    exact = (np.sqrt(np.pi) / 2.0) * torch.erf(s) / s
    series = 1.0 - x / 3.0 + x**2 / 10.0 - x**3 / 42.0
    return _out(torch.where(small, series, exact), np_in)


def sphere_gpd(b, small_delta, big_delta, radius, d, n_roots: int = SPHERE_N_ROOTS):
    """Restricted diffusion in an impermeable sphere, Gaussian phase distribution (Murday & Cotts 1968), PGSE.

    ln E = −2 γ²G² Σ_m [2δ/(α²D) − (2 + e^{−α²D(Δ−δ)} − 2e^{−α²Dδ} − 2e^{−α²DΔ} + e^{−α²D(Δ+δ)})/(α²D)²]
                    / [α² (α² R² − 2)],   α_m = μ_m / R,   γ²G² = b / (δ² (Δ − δ/3)).

    Parameters
    ----------
    b : s/mm²;  small_delta : δ, pulse duration, ms;  big_delta : Δ, pulse separation, ms;
    radius : R, µm (clamped below at 1e-4 µm, where E = 1 to machine precision);  d : D_ic, µm²/ms.
    n_roots : terms of the series (default 30: < 2e-8 relative error for R ≤ 20 µm on clinical timings).

    Measurements with b = 0 (or δ = 0) return exactly 1.
    """
    (b, sd, bd, r, d), np_in = _as_tensors(b, small_delta, big_delta, radius, d)
    b, sd, bd, r, d = torch.broadcast_tensors(b, sd, bd, r, d)
    weighted = (b > 0) & (sd > 0)
    mus = torch.as_tensor(sphere_roots(n_roots), dtype=b.dtype, device=b.device)
    if bool(weighted.all()):
        return _out(torch.exp(_sphere_log(b, sd, bd, r, d, mus)), np_in)
    # only the diffusion-weighted entries need the series; the others are exactly 1
    idx = torch.nonzero(weighted.reshape(-1)).reshape(-1)
    flat = [t.reshape(-1).index_select(0, idx) for t in (b, sd, bd, r, d)]
    e = torch.ones(b.numel(), dtype=b.dtype, device=b.device)
    if idx.numel():
        e = e.index_put((idx,), torch.exp(_sphere_log(*flat, mus)))
    return _out(e.reshape(b.shape), np_in)


SPHERE_CHUNK_ELEMENTS = 1 << 18  # entries × roots per block of the series: large kernels, temporaries in cache


def _sphere_log(b, sd, bd, r, d, mus: torch.Tensor) -> torch.Tensor:
    """ln E of :func:`sphere_gpd` for diffusion-weighted entries only (b > 0, δ > 0), flattened.

    The series is evaluated for a block of entries × all roots in one tensor op each (roots along a new last
    axis; blocks of about ``SPHERE_CHUNK_ELEMENTS`` entries × roots, so temporaries stay in the cache) rather
    than with one op per root."""
    shape = b.shape
    b, sd, bd, r, d = (t.reshape(-1) for t in (b, sd, bd, r, d))
    bd = torch.maximum(bd, sd)
    gamma2g2 = b * B_TO_MS_PER_UM2 / (sd**2 * (bd - sd / 3.0))
    inv_r2 = 1.0 / torch.clamp(r, min=1e-4) ** 2
    mu2 = mus**2
    weight = 1.0 / (mu2 - 2.0)
    rows = max(1, SPHERE_CHUNK_ELEMENTS // len(mus))
    parts = []
    for i in range(0, b.numel(), rows):
        sd_, gap_, d_, inv_r2_ = (t[i:i + rows, None] for t in (sd, bd - sd, d, inv_r2))
        alpha2 = inv_r2_ * mu2  # (entries, roots)
        x = alpha2 * d_
        e_sd = torch.exp(-x * sd_)  # e^{−xδ}
        e_gap = torch.exp(-x * gap_)  # e^{−x(Δ−δ)}; e^{−xΔ} and e^{−x(Δ+δ)} follow by products
        bracket = 2.0 * sd_ / x - (2.0 + e_gap - 2.0 * e_sd - 2.0 * e_sd * e_gap + e_sd * e_sd * e_gap) / x**2
        parts.append((bracket / alpha2) @ weight)
    total = parts[0] if len(parts) == 1 else torch.cat(parts)
    return (-2.0 * gamma2g2 * total).reshape(shape)


SPHERE_TABLE_NODES = 1024  # uniform R nodes of a SphereTable: cubic Hermite error < 2e-12 on clinical timings


def _values_and_radius_derivatives(b, small_delta, big_delta, radii, d):
    """E and dE/dR at each radius (nodes, n_measurements) by one reverse-mode pass: every entry gets its own copy
    of its radius, so the gradient of the sum is each entry's own derivative (no functorch: its first import
    costs seconds)."""
    r = radii[:, None].expand(len(radii), len(b)).clone().requires_grad_(True)
    with torch.enable_grad():
        val = sphere_gpd(b, small_delta, big_delta, r, d)
        (der,) = torch.autograd.grad(val.sum(), r)
    return val.detach(), der


class SphereTable:
    """:func:`sphere_gpd` for one protocol's timings and one D, tabulated over a radius range for speed.

    The sphere attenuation depends only on R once b, δ, Δ and D are fixed, so it is computed once on a uniform grid
    of ``nodes`` radii over ``r_range`` (float64, with exact derivatives by autodiff) and evaluated by
    cubic Hermite interpolation (error < 2e-12 of the exact series inside the range, tested; outside it the end
    cubics extrapolate). Calling it with radii (..., 1) gives (..., n_measurements), like
    ``sphere_gpd(b, small_delta, big_delta, radius, d)``; NumPy in gives NumPy out, tensors keep dtype and device.
    """

    def __init__(self, b, small_delta, big_delta, d, r_range, nodes: int = SPHERE_TABLE_NODES):
        r_lo, r_hi = (float(v) for v in r_range)
        if not r_hi > r_lo or int(nodes) < 2:
            raise ValueError(f"a sphere table needs r_range low < high and ≥ 2 nodes, got {r_range}, {nodes}")
        self.nodes = int(nodes)
        grid = torch.linspace(r_lo, r_hi, self.nodes, dtype=torch.float64)
        tb, tsd, tbd = (torch.as_tensor(np.array(a, dtype=np.float64)) for a in (b, small_delta, big_delta))
        val, der = _values_and_radius_derivatives(tb, tsd, tbd, grid, float(d))
        self.r0, self.rh = r_lo, float(grid[1] - grid[0])
        self._tables = {(torch.float64, torch.device("cpu")): (val, der * self.rh)}

    def _table(self, dtype, device):
        key = (dtype, torch.device(device))
        if key not in self._tables:
            val, der = self._tables[(torch.float64, torch.device("cpu"))]
            self._tables[key] = (val.to(device=device, dtype=dtype), der.to(device=device, dtype=dtype))
        return self._tables[key]

    def __call__(self, radius):
        (r,), np_in = _as_tensors(radius)
        vals, ders = self._table(r.dtype, r.device)
        t = ((r - self.r0) / self.rh)[..., 0]
        i = torch.clamp(torch.floor(t), 0, self.nodes - 2).long()
        s = (t - i)[..., None]
        s2, s3 = s * s, s * s * s
        e = ((2 * s3 - 3 * s2 + 1) * vals[i] + (s3 - 2 * s2 + s) * ders[i]
             + (3 * s2 - 2 * s3) * vals[i + 1] + (s3 - s2) * ders[i + 1])
        return _out(e, np_in)
