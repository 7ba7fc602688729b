"""Self-supervised maps (ssVERDICT): an encoder trained on the voxels being mapped, the model as its decoder.

After Sen et al. (MRM 2024; public code ``ClareGibsonRMH/ssVERDICT``, adapted from ``sebbarb/deep_ivim``): no
synthetic training set. A small MLP maps each voxel's normalised signal to the model's parameters; the model's own
differentiable forward signal (``model.signal`` through :class:`.nlls.FitProblem`, with the tabulated sphere)
turns them back into a signal, and the network learns to reconstruct the voxels it is mapping. Where this differs
from the anchor's code, on purpose:

* **early stopping on held-out voxels** (``val_fraction`` of the mask, never trained on), not on the training loss;
  the best weights by that loss make the maps (a ``stop_event`` also keeps them);
* outputs **bounded by construction**, the same transform as the NLLS fit: the two estimated fractions and the
  dependent one are ``softmax(u1, u2, 0)`` (so they sum to 1), every other parameter ``low + (high − low) ·
  sigmoid(u)`` inside the model's ranges; no map is rescaled by hand afterwards;
* the model's **physical constants** (D_vasc = 8 µm²/ms, not the anchor's 2) and its own normalisation (classic
  VERDICT: per-series b = 0 ratios; rVERDICT: ÷ the voxel's maximum), the same as every other method;
* the loss: with a known noise level ``sigma`` (raw scanner units, a number or a 3D map) the **Rician negative
  log-likelihood** of the normalised signal (σ divided by each measurement's normalisation reference), else MSE;
  either way on the model's signal times its per-voxel least-squares scale (variable projection, as NLLS), so the
  noisy reference of the normalisation does not bias the fit;
* seeded (weights, dropout, split and batches), any device (one ``device`` argument), progress records like the
  training engine (:class:`.config.TrainProgress`, kinds EPOCH then DONE) so a loss plot can follow.

Encoder defaults (:data:`DEFAULT_OPTIONS`), chosen by measurement on classic VERDICT as a scanner gives it
(``benchmarks/self_supervised.py --sweep``, README): 3 hidden PReLU layers of 64, input dropout 0.05, Adam 1e-3,
batch 1024 (smaller for a small mask, so that an epoch is at least 20 steps), patience 10, 10 % of the voxels held
out. Input dropout is the knob that matters: without it the error is lowest at high SNR, but at a scanner's SNR
training runs 5–10× longer and ends at the noise-fitting, NLLS-like solution (f_vasc error several times the
truth's spread); 0.1–0.5 stop within ~20 epochs at a smoother solution, better at low SNR and worse at high;
0.05 is the compromise. Larger batches cost little more per step on a CPU (the step is overhead-bound).
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import nn

from napari_rverdict.errors import InputError, check_seed
from napari_rverdict.learn.config import ProgressKind, TrainProgress
from napari_rverdict.learn.device import resolve_device
from napari_rverdict.maps.fit_quality import FIT_NRMSE, fit_nrmse, least_squares_scale
from napari_rverdict.maps.nlls import FitProblem
from napari_rverdict.maps.voxels import prepare_voxels, resolve_dwi, scatter_maps
from napari_rverdict.physics.models import get_model
from napari_rverdict.physics.protocol_files import load_protocol
from napari_rverdict.threads import capped_torch_threads

MIN_VOXELS = 100  # a mask with fewer usable voxels has too little to learn from (use NLLS)
EVAL_CHUNK = 65536
MIN_STEPS, MIN_BATCH = 20, 16  # the batch shrinks (not below 16) so that an epoch is at least ~20 steps


@dataclass
class SelfSupervisedOptions:
    """The encoder and its training. width / depth: hidden PReLU layers; dropout: on the input signal (the
    anchor's regulariser); lr, batch_size: Adam; patience: epochs without a better held-out loss before stopping;
    val_fraction: voxels held out for that loss; ranges: {name: (low, high)} bounds of the outputs (default: the
    model's training ranges)."""

    width: int = 64
    depth: int = 3
    dropout: float = 0.05
    lr: float = 1e-3
    batch_size: int = 1024
    patience: int = 10
    val_fraction: float = 0.1
    ranges: dict | None = None

    @classmethod
    def from_keywords(cls, options: dict) -> SelfSupervisedOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"unknown self-supervised option(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        opts = cls(**options)
        opts.validate()
        return opts

    def validate(self) -> None:
        for name in ("width", "depth", "batch_size", "patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"lr must be a positive number, got {self.lr!r}")
        if not 0.0 < float(self.val_fraction) < 0.5:
            raise InputError(f"val_fraction must be in (0, 0.5), got {self.val_fraction!r}")


DEFAULT_OPTIONS = SelfSupervisedOptions()


@dataclass
class SelfSupervisedFit:
    """What :func:`fit_signals_self_supervised` gives back: per-voxel maps {name: (n,) float64} (with
    ``fit_nrmse``), the loss history {"train_loss", "val_loss": per epoch}, the best epoch (1-based; 0 = the
    untrained encoder), whether the stop event ended it, epochs run, wall time and device."""

    maps: dict
    history: dict = field(default_factory=dict)
    best_epoch: int = 0
    stopped: bool = False
    epochs_run: int = 0
    elapsed_s: float = 0.0
    device: str = "cpu"


class Encoder(nn.Module):
    """Input dropout, ``depth`` × (Linear(width) → PReLU), Linear(k): unbounded coordinates of FitProblem."""

    def __init__(self, n_inputs: int, n_outputs: int, width: int, depth: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        n_in = n_inputs
        for _ in range(depth):
            layers += [nn.Linear(n_in, width), nn.PReLU()]
            n_in = width
        layers.append(nn.Linear(n_in, n_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---------------------------------------------------------------------- loss
def _loss(problem: FitProblem, u: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor | None) -> torch.Tensor:
    """Per-voxel loss (B,): MSE, or the Rician negative log-likelihood (terms without the signal dropped) when
    ``sigma`` (B, m), the noise level of the normalised signal, is known. The prediction is c·s(u) with c the
    least-squares scale."""
    s = problem.signal(problem.to_params(u))
    nu = least_squares_scale(s, y) * s
    if sigma is None:
        return ((nu - y) ** 2).mean(-1)
    var = sigma * sigma
    z = y * nu / var
    return ((y - nu) ** 2 / (2 * var) - torch.log(torch.special.i0e(z))).mean(-1)


def _normalised_sigma(sigma, raw: np.ndarray, y: np.ndarray) -> np.ndarray:
    """σ (raw units; scalar or one per voxel) → σ of each normalised measurement, σ / its reference (n, m)."""
    s = np.asarray(sigma, dtype=np.float64).reshape(-1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = raw / y
    fill = np.nanmedian(np.where(np.isfinite(ref) & (ref > 0), ref, np.nan), axis=1, keepdims=True)
    ref = np.where(np.isfinite(ref) & (ref > 0), ref, fill)
    return s / ref


def _check_sigma(sigma, n_voxels: int | None = None) -> np.ndarray | float | None:
    """None, a positive number, or ``n_voxels`` positive values; one InputError otherwise."""
    if sigma is None:
        return None
    arr = np.asarray(sigma, dtype=np.float64)
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise InputError(f"sigma (the noise level, in the DWI's units) must be positive and finite, got {sigma!r}"
                         if arr.ndim == 0 else "sigma must be positive and finite in every voxel")
    if arr.ndim == 0:
        return float(arr)
    if n_voxels is not None and arr.shape != (n_voxels,):
        raise InputError(f"sigma has {arr.size} values but there are {n_voxels} voxels")
    return arr


# ---------------------------------------------------------------------- the fit
@capped_torch_threads()  # never waits on CPUs other processes keep busy
def fit_signals_self_supervised(model, signals, protocol, *, device="auto", epochs: int = 500, seed: int = 0,
                                progress: Callable[[TrainProgress], object] | None = None, stop_event=None,
                                sigma=None, **options) -> SelfSupervisedFit:
    """Self-supervised fit of raw signals (n, m) acquired with ``protocol`` (at least :data:`MIN_VOXELS` rows).

    ``sigma`` : noise level in the signals' units, a number or one per row (Rician loss), or None (MSE).
    ``progress(record)`` : a :class:`.config.TrainProgress` after every epoch (EPOCH: train and held-out loss,
    best so far) and a last one (DONE, ``result`` None). ``stop_event`` : checked between batches; once set, the
    epoch under way is validated and the best weights make the maps. Other keywords: :class:`SelfSupervisedOptions`.
    """
    t0 = time.perf_counter()
    model = get_model(model)
    protocol = load_protocol(protocol)
    opts = SelfSupervisedOptions.from_keywords(options)
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
        raise InputError(f"epochs must be a positive integer, got {epochs!r}")
    seed = check_seed(seed, allow_none=False)
    raw = np.asarray(signals, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != len(protocol):
        raise InputError(f"signals must be (n_voxels, {len(protocol)}), got shape {raw.shape}")
    n = raw.shape[0]
    if n < MIN_VOXELS:
        raise InputError(f"self-supervised fitting learns from the voxels it maps and needs at least {MIN_VOXELS} "
                         f"usable voxels; this mask has {n} (use NLLS for so few)")
    sigma = _check_sigma(sigma, n)
    dev = resolve_device(device)
    problem = FitProblem(model, protocol, opts.ranges, dev, torch.float32)
    y_np = np.asarray(model.normalise(raw, protocol), dtype=np.float64)
    y = torch.as_tensor(y_np, dtype=torch.float32, device=dev)
    sig = None if sigma is None else \
        torch.as_tensor(_normalised_sigma(sigma, raw, y_np), dtype=torch.float32, device=dev)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = max(10, int(round(opts.val_fraction * n)))
    val_idx = torch.as_tensor(np.sort(order[:n_val]), device=dev)
    tr_idx = torch.as_tensor(np.sort(order[n_val:]), device=dev)
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # seeded here, the caller's random state untouched
        torch.manual_seed(int(seed))
        fit = _train(problem, y, sig, (tr_idx, val_idx), opts, (int(epochs), int(seed)), dev, progress, stop_event,
                     t0)
    fit.maps = _maps(problem, fit.maps, y, raw, protocol)
    fit.elapsed_s = time.perf_counter() - t0
    return fit


def _train(problem, y, sig, split, opts: SelfSupervisedOptions, epochs_seed: tuple, dev, progress, stop_event,
           t0: float) -> SelfSupervisedFit:
    """The loop: Adam on the training voxels, the held-out loss after every epoch, patience, the best weights.
    Returns a SelfSupervisedFit whose ``maps`` holds the trained encoder (made into maps by :func:`_maps`)."""
    (tr_idx, val_idx), (epochs, seed) = split, epochs_seed
    enc = Encoder(y.shape[1], problem.k, int(opts.width), int(opts.depth), float(opts.dropout)).to(dev)
    opt = torch.optim.Adam(enc.parameters(), lr=float(opts.lr))
    gen = torch.Generator().manual_seed(seed)
    n_tr = int(tr_idx.numel())
    bs = min(int(opts.batch_size), max(MIN_BATCH, n_tr // MIN_STEPS))  # a small mask still takes steps per epoch
    n_batches = max(1, -(-n_tr // bs))
    history: dict = {"train_loss": [], "val_loss": []}
    best_val, best_epoch, best_state, bad, stopped, epoch = np.inf, 0, copy.deepcopy(enc.state_dict()), 0, False, 0

    def record(kind, ep, tl, vl) -> None:
        if progress is not None:
            el = time.perf_counter() - t0
            eta = el / ep * (epochs - ep) if ep and kind is ProgressKind.EPOCH else 0.0
            progress(TrainProgress(kind, ep, epochs, n_batches, n_batches, tl, vl, float(opts.lr), el, eta,
                                   best_epoch or None, None if not np.isfinite(best_val) else float(best_val)))

    for epoch in range(1, epochs + 1):
        enc.train()
        perm = tr_idx[torch.randperm(n_tr, generator=gen).to(dev)]
        total, seen = torch.zeros((), device=dev), 0
        for a in range(0, n_tr, bs):
            if stop_event is not None and stop_event.is_set():
                stopped = True
                break
            idx = perm[a:a + bs]
            yb = y[idx]
            loss = _loss(problem, enc(yb), yb, None if sig is None else sig[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * idx.numel()
            seen += int(idx.numel())
        train_loss = float(total) / seen if seen else None
        val_loss = _evaluate(problem, enc, y, sig, val_idx)
        if train_loss is not None and not np.isfinite(train_loss) or not np.isfinite(val_loss):
            raise InputError(f"self-supervised fitting diverged at epoch {epoch} (the loss became NaN or inf); "
                             f"try a lower learning rate (lr={opts.lr:g})")
        history["train_loss"].append(train_loss)
        history["val_loss"].append(val_loss)
        if val_loss < best_val:
            best_val, best_epoch, bad = val_loss, epoch, 0
            best_state = copy.deepcopy(enc.state_dict())
        else:
            bad += 1
        record(ProgressKind.EPOCH, epoch, train_loss, val_loss)
        if stopped or bad >= opts.patience:
            break
    enc.load_state_dict(best_state)
    record(ProgressKind.DONE, epoch, history["train_loss"][-1], history["val_loss"][-1])
    return SelfSupervisedFit(enc, history, best_epoch, stopped, epoch, device=str(dev))


def _evaluate(problem, enc: Encoder, y, sig, idx) -> float:
    """Mean loss over the voxels ``idx`` with dropout off."""
    enc.eval()
    total = 0.0
    with torch.no_grad():
        for a in range(0, int(idx.numel()), EVAL_CHUNK):
            i = idx[a:a + EVAL_CHUNK]
            total += float(_loss(problem, enc(y[i]), y[i], None if sig is None else sig[i]).sum())
    return total / int(idx.numel())


def _maps(problem: FitProblem, enc: Encoder, y, raw: np.ndarray, protocol) -> dict[str, np.ndarray]:
    """Every map of the model for every voxel from the (best) encoder, and their ``fit_nrmse``."""
    enc.eval()
    parts = []
    with torch.no_grad():
        for a in range(0, y.shape[0], EVAL_CHUNK):
            parts.append(enc(y[a:a + EVAL_CHUNK]).cpu().double().numpy())  # CPU first: MPS has no float64
    u = np.concatenate(parts)
    params = problem.to_params(u, np)
    derived = problem.model.derived_maps(params)
    maps = {k: np.asarray(derived[k], dtype=np.float64) for k in problem.model.map_names}
    maps[FIT_NRMSE] = fit_nrmse(problem.model, maps, raw, protocol).astype(np.float64)
    return maps


def fit_self_supervised(model, dwi, protocol=None, mask=None, *, device="auto", epochs: int = 500, seed: int = 0,
                        progress: Callable[[TrainProgress], object] | None = None, stop_event=None, sigma=None,
                        **options) -> dict[str, np.ndarray]:
    """Self-supervised maps of a 4D volume: the same DWI / protocol / mask handling as :func:`.nlls.fit_volume`
    and :func:`.predict.predict_volume`.

    Parameters
    ----------
    model : "verdict", "rverdict" or a SignalModel (rVERDICT refuses a DWI without TR).
    dwi : an :class:`.io.Dwi`, a NIfTI path or a 4D array (x, y, z, n) (then ``protocol`` is required).
    protocol : Protocol, preset name or file; overrides the DWI's own. mask : 3D bool array, NIfTI path or None
        (Otsu on the mean b = 0); it must hold at least :data:`MIN_VOXELS` usable voxels.
    device : "auto", "cpu", "cuda", "mps".  epochs : at most (early stopping on held-out voxels usually ends
        sooner).  seed : weights, split, batches and dropout.
    progress : called with a :class:`.config.TrainProgress` record after every epoch and at the end.
    stop_event : a ``threading.Event``: once set, training ends and the best weights so far make the maps.
    sigma : the noise level in the DWI's units (a number, or a 3D map on the DWI's grid): the loss becomes the
        Rician likelihood. "auto": σ estimated from the DWI itself (:func:`estimated_sigma`; the CLI's, the
        dock's and cohorts' default — measured both more accurate and ≈ 2–4× quicker to converge than MSE).
        None: MSE.
    options : :class:`SelfSupervisedOptions` (width, depth, dropout, lr, batch_size, patience, val_fraction, ranges).

    Returns {map: float32 (x, y, z)} for every map of the model (units: ``model.map_spec(name)``) and
    ``fit_nrmse`` (:func:`.fit_quality.fit_nrmse`); NaN outside the mask and in left-out voxels.
    """
    model = get_model(model)
    SelfSupervisedOptions.from_keywords(options)  # bad input before any voxel is read
    seed = check_seed(seed, allow_none=False)
    if isinstance(sigma, str):
        dwi, protocol = resolve_dwi(dwi, protocol), None  # read once: for σ and for the voxels
        sigma = estimated_sigma(sigma, dwi, mask=mask)
    sigma_voxels = None if sigma is None else np.asarray(sigma, dtype=np.float64)
    if sigma_voxels is not None and sigma_voxels.ndim == 0:
        _check_sigma(sigma_voxels)
    vox = prepare_voxels(dwi, protocol, mask, model=model)
    if sigma_voxels is not None and sigma_voxels.ndim:
        if sigma_voxels.shape != vox.shape:
            raise InputError(f"the sigma map has shape {sigma_voxels.shape} but the DWI's spatial shape is "
                             f"{vox.shape}")
        sigma_voxels = sigma_voxels.reshape(-1)[vox.index]
    fit = fit_signals_self_supervised(model, vox.signals, vox.protocol, device=device, epochs=epochs, seed=seed,
                                      progress=progress, stop_event=stop_event, sigma=sigma_voxels, **options)
    return scatter_maps(fit.maps, vox.index, vox.shape)


def estimated_sigma(how: str, dwi, protocol=None, mask=None) -> float | None:
    """``sigma="auto"``: the scanner's σ in the DWI's units from :func:`napari_rverdict.data.noise_estimate.
    estimate_noise` (PIESNO on the air, MP-PCA, or the spread of repeated volumes), or None — the squared error,
    with a warning saying why — where the DWI does not allow it (no air, too few volumes, no repeats)."""
    if how != "auto":
        raise InputError(f"sigma must be a number, a 3D noise map or 'auto', got '{how}'")
    from napari_rverdict.data.noise_estimate import estimate_noise

    dwi = resolve_dwi(dwi, protocol)  # as every method reads a DWI (bad input raises, as it would there)
    try:
        return float(estimate_noise(dwi, mask).sigma)
    except InputError as exc:
        warnings.warn(f"σ could not be estimated from the DWI ({exc}); the self-supervised fit uses the squared "
                      "error instead of the Rician likelihood", stacklevel=3)
        return None


__all__ = ["DEFAULT_OPTIONS", "MIN_VOXELS", "Encoder", "SelfSupervisedFit", "SelfSupervisedOptions",
           "estimated_sigma", "fit_self_supervised", "fit_signals_self_supervised"]
