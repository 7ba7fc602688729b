"""The reference fit: batched non-linear least squares of VERDICT / rVERDICT over all voxels at once (torch).

What is fitted
--------------
Each voxel's signals are normalised as the model normalises them (rVERDICT: by the voxel's maximum; classic
VERDICT: per series by its b = 0), and the model's signal (S0 = 1) times a free per-voxel scale ``c`` is fitted to
them by **Gaussian least squares** (sum of squared residuals; no Rician correction). ``c`` is solved in closed form
for every trial of the other parameters (variable projection: ``c = <y, s> / <s, s>``), so the fit does not depend on
the normalisation's noisy reference.

Parameters are fitted in an unbounded space with a bounded transform:

* the two estimated volume fractions and the dependent one are ``softmax(u1, u2, 0)`` — always in (0, 1) and
  summing to 1, so f_ic + f_ees ≤ 1 (rVERDICT) / f_ic + f_vasc ≤ 1 (VERDICT) holds by construction;
* every other parameter is ``low + (high − low) · sigmoid(u)`` inside its range (default: the model's training
  ranges, e.g. R 0.01–15 µm, T1 10–4000 ms).

Optimiser: Levenberg–Marquardt (damping λ · max(diag JᵀJ, mean diag JᵀJ), accept-if-better with λ ÷ 3 / × 4),
batched over every (voxel, start) pair, with forward-difference Jacobians and an active set (converged rows stop
costing). A row stops when an accepted step lowers its cost by less than 1e-12 (relative), when λ exceeds 1e10, or
after ``max_iter`` (1000) iterations.

Progress and cancelling: ``progress(done, total)`` is called inside a chunk too, after LM iterations, with ``done``
the voxels finished before the chunk plus the chunk's voxel-equivalents done so far (the larger of the fraction of
rows converged and the fraction of ``max_iter`` spent), so it moves every iteration or so rather than once per
chunk. A ``stop_event`` (``threading.Event``) is checked before each chunk and between LM iterations; once it is set
the fit raises :class:`FitCancelled` and returns nothing partial.

Starts: ``n_candidates`` parameter sets drawn (seeded) from the model's prior are scored against every voxel at
once (closed-form scale, a matrix product), and each voxel starts from its ``n_starts`` best; an ``init`` (e.g. a
network's maps or a Bundle) adds one more start per voxel. The best fit per voxel is kept.

Forward model: the model's own ``signal`` (:mod:`napari_rverdict.physics.models`), so a model change is made in
one place. Speed: the sphere attenuation depends only on R for a given protocol, so the fit passes the model a
:class:`~napari_rverdict.physics.compartments.SphereTable` (1024 nodes over the fitted R range, exact
derivatives, cubic Hermite interpolation: < 2e-12 of the exact series, tested).
``maps.nlls_scipy.fit_signals_scipy`` is the per-voxel SciPy ``least_squares`` baseline on exactly the same objective, starts
and transform (used by the tests and ``benchmarks/bench_volume.py``).

No napari or Qt here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from napari_rverdict.errors import InputError, check_seed
from napari_rverdict.physics.models import get_model
from napari_rverdict.physics.protocol import Protocol
from napari_rverdict.physics.protocol_files import load_protocol
from napari_rverdict.threads import capped_torch_threads

FD_STEP = 1e-7  # forward-difference step in the unbounded space (float64)
FD_STEP_FLOAT32 = 3e-4  # devices without float64 (MPS)
DAMP_FLOOR = 1.0  # damping uses max(diag(JᵀJ), DAMP_FLOOR · mean diag): no free direction at a saturated bound


class FitCancelled(Exception):
    """The fit was cancelled through its ``stop_event``; no partial maps are returned."""


def _check_stop(stop_event) -> None:
    if stop_event is not None and stop_event.is_set():
        raise FitCancelled("NLLS fit cancelled")


# ---------------------------------------------------------------------- the fitted function
class FitProblem:
    """The model, protocol and ranges of one fit: the bounded transform and the model's own forward signal.

    ``names`` : the unbounded coordinates' order: two logits of the estimated fractions (against the dependent
    one), then the other estimated parameters (``model.estimated_names`` order).
    """

    def __init__(self, model, protocol: Protocol, ranges: Mapping | None = None, device="cpu",
                 dtype=torch.float64):
        from napari_rverdict.data.prior import resolve_ranges

        self.model = get_model(model)
        self.protocol = protocol
        self.model.check_protocol(protocol)
        self.ranges = resolve_ranges(self.model, ranges)
        self.device = torch.device(device)
        self.dtype = dtype
        self.fractions = tuple(self.model.estimated_fractions)
        self.dependent = self.model.dependent_fraction
        self.others = tuple(n for n in self.model.estimated_names if n not in self.fractions)
        self.names = self.fractions + self.others
        self.k = len(self.names)
        self.lo = np.array([self.ranges[n][0] for n in self.others], dtype=float)
        self.hi = np.array([self.ranges[n][1] for n in self.others], dtype=float)
        # the sphere depends only on R for this protocol: tabulated once over the fitted R range
        self.sphere = self.model.sphere_table(protocol, self.ranges["R"]) if "R" in self.others else None
        self._torch_consts = None

    # -------------------------------------------------------------- constants on the device
    def _consts(self):
        if self._torch_consts is None:
            self._torch_consts = {k: torch.as_tensor(getattr(self, k), dtype=self.dtype, device=self.device)
                                  for k in ("lo", "hi")}
        return self._torch_consts

    def _np_consts(self):
        return {"lo": self.lo, "hi": self.hi}

    # -------------------------------------------------------------- transform
    def to_params(self, u, xp=torch) -> dict:
        """Unbounded (..., k) → {name: (...)} for every estimated parameter and the dependent fraction."""
        c = self._consts() if xp is torch else self._np_consts()
        z0, z1 = u[..., 0], u[..., 1]
        m = xp.maximum(xp.maximum(z0, z1), 0 * z0)
        e0, e1, e2 = xp.exp(z0 - m), xp.exp(z1 - m), xp.exp(-m)
        tot = e0 + e1 + e2
        out = {self.fractions[0]: e0 / tot, self.fractions[1]: e1 / tot, self.dependent: e2 / tot}
        rest = u[..., 2:]
        rest = torch.clamp(rest, -700, 700) if xp is torch else np.clip(rest, -700, 700)
        sig = 1.0 / (1.0 + xp.exp(-rest))
        vals = c["lo"] + (c["hi"] - c["lo"]) * sig
        for j, n in enumerate(self.others):
            out[n] = vals[..., j]
        return out

    def from_params(self, params: Mapping) -> np.ndarray:
        """{name: (n,)} in physical units (NumPy) → unbounded (n, k); values are clipped into the ranges."""
        n = len(np.atleast_1d(np.asarray(params[self.fractions[0]])))
        f = {}
        for name in self.fractions:
            f[name] = np.clip(np.asarray(params[name], dtype=float).reshape(n), 1e-4, 1.0)
        dep = 1.0 - f[self.fractions[0]] - f[self.fractions[1]]
        dep = np.clip(dep, 1e-4, 1.0)
        u = np.empty((n, self.k))
        u[:, 0] = np.log(f[self.fractions[0]] / dep)
        u[:, 1] = np.log(f[self.fractions[1]] / dep)
        for j, name in enumerate(self.others):
            v = np.asarray(params[name], dtype=float).reshape(n)
            p = np.clip((v - self.lo[j]) / (self.hi[j] - self.lo[j]), 1e-6, 1 - 1e-6)
            u[:, 2 + j] = np.log(p / (1.0 - p))
        return u

    # -------------------------------------------------------------- forward
    def signal(self, params: Mapping, xp=torch):
        """The model's signal (S0 = 1) for parameter arrays (B,) → (B, m), through ``model.signal`` with the
        tabulated sphere. ``xp=np``: NumPy in and out (computed in float64 torch on the CPU)."""
        p = {n: params[n] for n in self.names}
        if "S0" in self.model.parameter_names:
            p["S0"] = 1.0 + 0 * p[self.fractions[0]]
        if xp is np:
            p = {k: torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in p.items()}
            return self.model.signal(p, self.protocol, sphere=self.sphere).numpy()
        return self.model.signal(p, self.protocol, sphere=self.sphere)

    def residual(self, u, y, xp=torch):
        """r = c·s(u) − y with the least-squares scale c ≥ 0 (variable projection); (B, m)."""
        s = self.signal(self.to_params(u, xp), xp)
        num = (s * y).sum(-1, keepdims=True) if xp is np else (s * y).sum(-1, keepdim=True)
        den = (s * s).sum(-1, keepdims=True) if xp is np else (s * s).sum(-1, keepdim=True)
        scale = num / xp.maximum(den, 1e-300 + 0 * den)
        return scale * s - y

    def normalise(self, signals) -> np.ndarray:
        return np.asarray(self.model.normalise(np.asarray(signals, dtype=np.float64), self.protocol))


# ---------------------------------------------------------------------- starts
def _candidates(problem: FitProblem, n_candidates: int, seed: int) -> np.ndarray:
    from napari_rverdict.data.prior import sample_parameters

    params = sample_parameters(problem.model, n_candidates, problem.ranges, rng=seed)
    return problem.from_params(params)


def make_starts(problem: FitProblem, y: np.ndarray, n_starts: int, n_candidates: int, seed: int = 0,
                init_u: np.ndarray | None = None) -> np.ndarray:
    """(n, S, k) starts: each voxel's ``n_starts`` best of ``n_candidates`` prior draws (+ ``init_u``, if given)."""
    n = y.shape[0]
    parts = []
    if n_starts > 0:
        cand_u = _candidates(problem, max(n_candidates, n_starts), seed)
        with torch.no_grad():
            s = problem.signal(problem.to_params(torch.as_tensor(cand_u, dtype=problem.dtype, device=problem.device)))
        s = s.cpu().double().numpy()  # to the CPU first: MPS has no float64
        s_norm2 = (s * s).sum(1)
        chosen = np.empty((n, n_starts), dtype=np.int64)
        step = max(1, 2_000_000 // max(1, len(cand_u)))
        for a in range(0, n, step):
            yy = y[a:a + step]
            proj = yy @ s.T
            cost = (yy * yy).sum(1, keepdims=True) - proj**2 / s_norm2[None, :]
            part = np.argpartition(cost, n_starts - 1, axis=1)[:, :n_starts] if n_starts < cost.shape[1] else \
                np.tile(np.arange(cost.shape[1]), (len(yy), 1))
            order = np.take_along_axis(cost, part, 1).argsort(1)
            chosen[a:a + step] = np.take_along_axis(part, order, 1)
        parts.append(cand_u[chosen])
    if init_u is not None:
        parts.append(init_u[:, None, :])
    return np.concatenate(parts, axis=1)


# ---------------------------------------------------------------------- Levenberg–Marquardt, batched
def levenberg_marquardt(problem: FitProblem, y, u0, max_iter: int = 1000, tol: float = 1e-12, *,
                        stop_event=None, on_iter: Callable[[float], None] | None = None):
    """Minimise ‖r(u)‖² for every row independently. y (B, m), u0 (B, k) tensors. Returns (u, cost, iterations).

    ``stop_event`` : checked before every iteration; when set, :class:`FitCancelled` is raised.
    ``on_iter(fraction)`` : after every iteration, the fraction (0–1, non-decreasing) of the work done: the larger
    of the fraction of rows converged and the fraction of ``max_iter`` spent.
    """
    u = u0.clone()
    B, k = u.shape
    r = problem.residual(u, y)
    cost = (r * r).sum(-1)
    lam = torch.full((B,), 1e-3, dtype=u.dtype, device=u.device)
    active = torch.arange(B, device=u.device)
    eye = torch.eye(k, dtype=u.dtype, device=u.device)
    h = FD_STEP if u.dtype == torch.float64 else FD_STEP_FLOAT32
    iters = 0
    for iters in range(1, max_iter + 1):
        if active.numel() == 0:
            break
        _check_stop(stop_event)
        ua, ya, ra, ca, la = u[active], y[active], r[active], cost[active], lam[active]
        nb = ua.shape[0]
        # forward-difference Jacobian: k shifted copies in one batched evaluation
        shifted = ua.unsqueeze(0) + h * eye.unsqueeze(1)  # (k, nb, k)
        rs = problem.residual(shifted.reshape(k * nb, k), ya.repeat(k, 1)).reshape(k, nb, -1)
        jac = ((rs - ra.unsqueeze(0)) / h).permute(1, 2, 0)  # (nb, m, k)
        jtj = jac.transpose(1, 2) @ jac
        g = (jac.transpose(1, 2) @ ra.unsqueeze(-1)).squeeze(-1)
        diag = torch.diagonal(jtj, dim1=1, dim2=2)
        floor = DAMP_FLOOR * diag.mean(-1, keepdim=True) + 1e-12
        a_mat = jtj + torch.diag_embed(la.unsqueeze(-1) * torch.maximum(diag, floor))
        step, info = torch.linalg.solve_ex(a_mat, -g)
        ok = info == 0
        step = torch.where(ok.unsqueeze(-1), step, torch.zeros_like(step))
        un = ua + step
        rn = problem.residual(un, ya)
        cn = (rn * rn).sum(-1)
        better = ok & torch.isfinite(cn) & (cn < ca)
        rel = (ca - cn) / torch.clamp(ca, min=1e-300)
        u[active] = torch.where(better.unsqueeze(-1), un, ua)
        r[active] = torch.where(better.unsqueeze(-1), rn, ra)
        cost[active] = torch.where(better, cn, ca)
        lam[active] = torch.where(better, torch.clamp(la / 3.0, min=1e-12), la * 4.0)
        small_step = step.abs().amax(-1) < 1e-9
        done = (better & ((rel < tol) | small_step)) | (~better & (la > 1e10)) | (cn < 1e-28)
        active = active[~done]
        if on_iter is not None:
            on_iter(max(1.0 - active.numel() / max(B, 1), iters / max_iter))
    return u, cost, iters


# ---------------------------------------------------------------------- public API
def _init_params(init, signals_raw, protocol, problem: FitProblem, index=None) -> np.ndarray | None:
    """Unbounded starts (n, k) from a Bundle or a dict of per-voxel values (1D, or 3D maps taken at ``index``)."""
    if init is None:
        return None
    from napari_rverdict.learn.bundle import Bundle

    if isinstance(init, Bundle):
        if init.model.name != problem.model.name:
            raise InputError(f"init bundle is a {init.model.name} model but the fit is {problem.model.name}")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = init.predict_signals(signals_raw, protocol=protocol, device=problem.device)  # the fit's device
    elif isinstance(init, Mapping):
        values = {}
        for k, v in init.items():
            a = np.asarray(v, dtype=float)
            if a.ndim == 3 and index is not None:
                a = a.reshape(-1)[index]
            values[k] = a.reshape(-1)
    else:
        raise InputError(f"init must be a Bundle or a dict of per-voxel values, got {type(init).__name__}")
    need = [n for n in problem.fractions + problem.others if n not in values]
    if need:
        raise InputError(f"init lacks {', '.join(need)} (it has {', '.join(values)})")
    n = len(signals_raw)
    bad = [k for k in problem.fractions + problem.others if values[k].shape[0] != n]
    if bad:
        raise InputError(f"init '{bad[0]}' has {values[bad[0]].shape[0]} values but there are {n} voxels")
    return problem.from_params(values)


@capped_torch_threads()  # CPUs other processes keep busy are not waited for (a fixed count was ~10× slower)
def fit_signals(model, signals, protocol, *, device="auto", n_starts: int = 4, init=None, ranges=None,
                progress: Callable[[int, int], None] | None = None, n_candidates: int = 512, max_iter: int = 1000,
                seed: int = 0, chunk: int = 8192, return_cost: bool = False,
                stop_event=None) -> dict[str, np.ndarray]:
    """Batched NLLS fit of raw signals (n, m) acquired with ``protocol``.

    Parameters
    ----------
    model : "rverdict", "verdict" or a SignalModel.  protocol : Protocol, preset name or file (m measurements).
    device : "auto", "cpu", "cuda", "mps".  n_starts : starts per voxel from the screened prior candidates.
    init : a Bundle (its predictions) or {name: (n,)} values (physical units): one extra start per voxel.
    ranges : {name: (low, high)} bounds of the fit (default: the model's training ranges).
    progress : ``progress(done_voxels, total)``: at the start, within each chunk as LM iterations finish (``done``
    counts the chunk's voxel-equivalents done so far; it never decreases) and after each chunk.
    n_candidates : prior draws screened for starts.
    max_iter : Levenberg–Marquardt iterations at most.  seed : the candidate draws.  chunk : voxels per batch.
    return_cost : also return ``"cost"``, the per-voxel sum of squared residuals on the normalised signal.
    stop_event : a ``threading.Event``, checked before each chunk and between LM iterations: once set, the fit
    raises :class:`FitCancelled` (nothing partial is returned).

    Returns {map: float64 (n,)} for every map of ``model.map_names`` (fractions, R, cellularity, …).
    """
    from napari_rverdict.learn.device import accumulation_dtype, resolve_device

    model = get_model(model)
    protocol = load_protocol(protocol)
    raw = np.asarray(signals, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[0] == 0:
        raise InputError(f"signals must be a non-empty 2-D array (n_voxels, {len(protocol)}), got shape {raw.shape}")
    if raw.shape[1] != len(protocol):
        raise InputError(f"signals have {raw.shape[1]} measurements but the protocol has {len(protocol)}")
    if int(n_starts) < 0 or (int(n_starts) == 0 and init is None):
        raise InputError(f"n_starts must be ≥ 1 (or 0 with an init), got {n_starts}")
    chunk = int(chunk)
    if chunk < 1:
        raise InputError(f"chunk must be ≥ 1, got {chunk}")
    seed = check_seed(seed, allow_none=False)
    _check_stop(stop_event)
    dev = resolve_device(device)
    dtype = accumulation_dtype(dev)  # float64 (MPS: float32)
    problem = FitProblem(model, protocol, ranges, dev, dtype)
    y_all = problem.normalise(raw)
    init_u = _init_params(init, raw, protocol, problem)
    n = y_all.shape[0]
    best_u = np.empty((n, problem.k))
    best_cost = np.empty(n)
    reported = [0]

    def report(done: int) -> None:
        if progress is not None and done > reported[0]:
            reported[0] = done
            progress(done, n)

    if progress is not None:
        progress(0, n)
    for a in range(0, n, chunk):
        _check_stop(stop_event)
        y = y_all[a:a + chunk]
        starts = make_starts(problem, y, int(n_starts), int(n_candidates), seed,
                             None if init_u is None else init_u[a:a + chunk])
        nv, ns, k = starts.shape
        yt = torch.as_tensor(np.repeat(y, ns, axis=0), dtype=dtype, device=dev)
        ut = torch.as_tensor(starts.reshape(nv * ns, k), dtype=dtype, device=dev)

        def on_iter(frac: float, a=a, nv=nv) -> None:
            report(a + min(int(frac * nv), nv - 1))  # the chunk's last voxel is reported when it is stored

        with torch.no_grad():
            u, cost, _ = levenberg_marquardt(problem, yt, ut, max_iter=max_iter, stop_event=stop_event,
                                             on_iter=None if progress is None else on_iter)
        u = u.cpu().double().numpy().reshape(nv, ns, k)  # to the CPU first: MPS has no float64
        cost = cost.cpu().double().numpy().reshape(nv, ns)
        cost = np.where(np.isfinite(cost), cost, np.inf)
        pick = cost.argmin(1)
        best_u[a:a + nv] = u[np.arange(nv), pick]
        best_cost[a:a + nv] = cost[np.arange(nv), pick]
        report(min(a + nv, n))
    _check_stop(stop_event)
    return _maps_from_u(problem, best_u, best_cost if return_cost else None)


def _maps_from_u(problem: FitProblem, u: np.ndarray, cost=None) -> dict[str, np.ndarray]:
    params = problem.to_params(u, np)
    maps = problem.model.derived_maps(params)
    out = {k: np.asarray(maps[k], dtype=np.float64) for k in problem.model.map_names}
    if cost is not None:
        out["cost"] = np.asarray(cost, dtype=np.float64)
    return out


def fit_volume(model, dwi, protocol=None, mask=None, *, device="auto", init=None,
               progress: Callable[[int, int], None] | None = None, stop_event=None,
               **fit_kw) -> dict[str, np.ndarray]:
    """NLLS maps of a 4D volume: the same DWI / protocol / mask handling as :func:`.predict.predict_volume`.

    ``init`` : a Bundle (its prediction on these voxels), or {name: 3D map or (n_voxels,) values}: an extra start.
    ``progress(done, total)`` moves within chunks (see :func:`fit_signals`); ``stop_event`` (a ``threading.Event``)
    cancels the fit with :class:`FitCancelled`.
    Other keywords go to :func:`fit_signals` (``n_starts``, ``ranges``, ``n_candidates``, ``max_iter``, …).
    Returns {map: float32 (x, y, z)} and ``fit_nrmse`` (:func:`.fit_quality.fit_nrmse`), NaN outside the mask.
    """
    from napari_rverdict.maps.fit_quality import FIT_NRMSE, fit_nrmse
    from napari_rverdict.maps.voxels import prepare_voxels, scatter_maps

    model = get_model(model)
    if "seed" in fit_kw:
        check_seed(fit_kw["seed"], allow_none=False)  # before any voxel is read
    vox = prepare_voxels(dwi, protocol, mask, model=model)
    init_values = init
    if isinstance(init, Mapping):
        init_values = {k: (np.asarray(v).reshape(-1)[vox.index] if np.ndim(v) == 3 else v) for k, v in init.items()}
    maps = fit_signals(model, vox.signals, vox.protocol, device=device, init=init_values, progress=progress,
                       stop_event=stop_event, **fit_kw)
    maps[FIT_NRMSE] = fit_nrmse(model, maps, vox.signals, vox.protocol)
    return scatter_maps(maps, vox.index, vox.shape)


__all__ = ["FitCancelled", "FitProblem", "fit_signals", "fit_volume", "levenberg_marquardt", "make_starts"]
