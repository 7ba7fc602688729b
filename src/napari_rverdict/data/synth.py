"""Synthetic training data: noise-free signals, Rician noise, the model's normalisation, the 80/20 split.

The signals are made exactly as a scanner gives them to a trained model: the noise-free signal, Rician noise at
σ = 1/SNR on the scale the noise reference names (``snr_reference``, see :mod:`napari_rverdict.data.noise`:
"s0", the default, fixes σ where S0 = 1 before the T1 / T2 factors; "peak" on each voxel's brightest noise-free
measurement), drawn on every acquired volume and averaged where a measurement averages several
(``Protocol.n_volumes``), then the model's own normalisation (classic VERDICT: per-series b = 0 ratios; rVERDICT:
divide by the maximum). ``SyntheticData.b0_snr`` is the effective SNR each sample got at its brightest b = 0
(:func:`effective_snr` summarises it without simulating noise).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_rverdict.data.noise import (
    DEFAULT_SNR_REFERENCE,
    MatchedSnr,
    _snr_per_sample,
    check_snr_reference,
    noise_settings,
    reference_sigma,
    scanner_noise,
    snr_percentiles,
    snr_setting,
)
from napari_rverdict.data.prior import resolve_ranges, sample_parameters
from napari_rverdict.errors import InputError, check_seed
from napari_rverdict.physics.models import SignalModel, get_model
from napari_rverdict.physics.protocol import Protocol
from napari_rverdict.physics.protocol_files import load_protocol
from napari_rverdict.threads import capped_torch_threads


@dataclass
class SyntheticData:
    """Noisy normalised signals and the truth they were made from.

    signals : (n, n_measurements) float32, normalised as the network sees them.
    params : every sampled parameter (n,) float64, including nuisance ones (S0) and the dependent fraction.
    snr : (n,) the SNR each sample was made at (on the scale ``snr_reference`` names).
    snr_reference : "s0" or "peak" (:mod:`napari_rverdict.data.noise`).
    peak_snr, b0_snr : (n,) the effective SNR of each sample's brightest noise-free measurement / brightest b = 0
        (per acquired volume): σ on the normalised scale is 1 / peak_snr.
    matched : the :class:`.noise.MatchedSnr` the SNR was drawn from (``simulate(snr_from=...)``), else None.
    train_index, val_index : a reproducible 80/20 split.
    """

    model: SignalModel
    protocol: Protocol
    signals: np.ndarray
    params: dict[str, np.ndarray]
    snr: np.ndarray
    train_index: np.ndarray
    val_index: np.ndarray
    ranges: dict[str, tuple[float, float]]
    fraction_sampler: str
    seed: int | None
    snr_setting: float | tuple[float, float] | None = 35.0
    extra: dict = field(default_factory=dict)
    snr_reference: str = DEFAULT_SNR_REFERENCE
    peak_snr: np.ndarray | None = None
    b0_snr: np.ndarray | None = None
    matched: MatchedSnr | None = None

    def noise_settings(self) -> dict:
        """The keyword arguments of :func:`simulate` that draw noise like this set (snr or snr_from, reference)."""
        return noise_settings(self.snr_setting, self.snr_reference, self.matched)

    def __len__(self) -> int:
        return int(self.signals.shape[0])

    def targets(self, names=None) -> np.ndarray:
        """(n, k) array of the parameters a network estimates (default: the model's estimated parameters)."""
        names = self.model.estimated_names if names is None else names
        return np.stack([self.params[n] for n in names], axis=1)

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write an ``.npz`` with signals, params (``param_<name>``), snr, split and the settings, atomically.

        NumPy would append ``.npz`` to any other name, so ``.npz`` is added here when missing and the real path
        returned. An existing file is refused (InputError) unless ``overwrite=True``."""
        from napari_rverdict.files import atomic_path, check_output_files

        path = Path(path)
        if not path.name.endswith(".npz"):
            path = path.with_name(path.name + ".npz")
        check_output_files([path], overwrite=overwrite, what="data file")
        arrays = {f"param_{k}": v for k, v in self.params.items()}
        with atomic_path(path) as tmp:
            np.savez_compressed(
                tmp, signals=self.signals, snr=self.snr, train_index=self.train_index, val_index=self.val_index,
                model=self.model.name, protocol=np.array(repr(self.protocol.to_dict())),
                fraction_sampler=self.fraction_sampler, snr_reference=self.snr_reference, **arrays,
            )
        return path


def sphere_for(model, params: Mapping, protocol: Protocol):
    """A :class:`SphereTable` over the radii of ``params`` from ``TABLE_FROM`` samples on (< 2e-12 of the exact
    series; a few large kernels instead of the series for every sample), else None (the exact series)."""
    r = params.get("R")
    if r is None or len(r) < TABLE_FROM or not np.ptp(r) > 0:
        return None
    return get_model(model).sphere_table(protocol, (float(np.min(r)), float(np.max(r))))


def noise_free_signals(model, params: Mapping, protocol: Protocol, chunk: int = 65536, *,
                       sphere="auto") -> np.ndarray:
    """The forward model for many samples, computed in float64 torch chunks (n, n_measurements).

    ``sphere``: "auto" (:func:`sphere_for` these samples), None (the exact series) or a table to reuse."""
    model = get_model(model)
    n = len(next(iter(params.values())))
    out = np.empty((n, len(protocol)))
    if isinstance(sphere, str):
        sphere = sphere_for(model, params, protocol)
    with torch.no_grad():
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            p = {k: torch.from_numpy(np.ascontiguousarray(v[sl], dtype=np.float64)) for k, v in params.items()}
            out[sl] = model.signal(p, protocol, sphere=sphere).numpy()
    return out


TABLE_FROM = 8192  # samples from which the sphere is tabulated (the table costs about as much as 1,000 samples)


def split_indices(n: int, val_fraction: float = 0.2, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A reproducible random split of ``range(n)`` into train and validation indices."""
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}")
    perm = np.random.default_rng(None if seed is None else seed + 7919).permutation(n)
    n_val = max(1, int(round(n * val_fraction))) if n > 1 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def physical_memory() -> int | None:
    """The machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(n_bytes: float, what: str, *, fraction: float = 0.8) -> None:
    """Refuse (InputError), before allocating, work whose arrays need more than ``fraction`` of physical memory."""
    total = physical_memory()
    if total is not None and n_bytes > fraction * total:
        raise InputError(f"{what} would need about {_gib(n_bytes)} of memory but this machine has {_gib(total)}; "
                         "ask for fewer")


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:,.1f} GiB" if n_bytes >= 2**28 else f"{n_bytes / 2**20:,.0f} MiB"


def _matched(snr_from) -> MatchedSnr:
    """A MatchedSnr from a MatchedSnr or a :class:`.noise_estimate.NoiseEstimate` (anything with ``matched()``)."""
    if isinstance(snr_from, MatchedSnr):
        return snr_from
    if callable(getattr(snr_from, "matched", None)):
        return snr_from.matched()
    raise InputError(f"snr_from must be a noise estimate of a DWI (estimate_noise(dwi, mask)) or a MatchedSnr, got "
                     f"{type(snr_from).__name__}")


def resolve_snr(snr, snr_from):
    """(snr, matched): ``snr`` (default 35) or the MatchedSnr of ``snr_from``; both given is an InputError."""
    if snr is not None and snr_from is not None:
        raise InputError("give either an SNR or a DWI to match its noise (snr_from), not both")
    if snr_from is not None:
        return None, _matched(snr_from)
    return (35.0 if snr is None else snr_setting(snr)), None


def _reference(snr_reference) -> str:
    """The noise reference a set is made on: the one given, default the seed paper's ("s0"), matched or not."""
    return check_snr_reference(DEFAULT_SNR_REFERENCE if snr_reference is None else snr_reference)


MATCH_PERCENTILE = "p95"  # the effective-SNR percentile a matched "s0" set shares with the DWI


def matched_s0_snr(model, protocol, matched: MatchedSnr, ranges: Mapping | None = None,
                   fraction_sampler: str = "dirichlet") -> float:
    """The SNR on the "s0" reference that matches a DWI: the one whose training set's SNR at the brightest b = 0
    has the DWI's 95th percentile. The seed paper's S0 ∈ [0, max b = 0 intensity], with a robust maximum: σ is
    fixed on S0's scale as the scanner fixes it, so SNR varies with S0, T1 and T2 across the set as it does across
    the patient (each sample keeps its tissue's brightness), and the set's top matches the DWI's."""
    unit = effective_snr(model, protocol, snr=1.0, snr_reference="s0", ranges=ranges,
                         fraction_sampler=fraction_sampler, n=20_000, seed=0)
    return float(matched.percentiles()[MATCH_PERCENTILE] / unit[MATCH_PERCENTILE])


def _noise_snr(model, protocol, snr, matched, reference: str, ranges, fraction_sampler, n: int, rng) -> np.ndarray:
    """Each sample's SNR on ``reference``: the setting (a number or a uniform range); or, matched to a DWI, on "s0"
    for a model with an S0 range the one SNR of :func:`matched_s0_snr`, else (on "peak", and for classic VERDICT,
    whose "s0" is each series' b = 0) drawn from the DWI's per-voxel SNR at the brightest b = 0."""
    if matched_on_s0(model, matched, reference):
        return np.full(n, matched_s0_snr(model, protocol, matched, ranges, fraction_sampler))
    return _snr_per_sample(matched if matched is not None else snr, n, rng)


def matched_on_s0(model, matched, reference: str) -> bool:
    """Matched to a DWI with one SNR on S0's scale (rVERDICT on "s0"), not drawn per sample."""
    return matched is not None and reference == "s0" and "S0" in model.parameter_names


def _setting(model, snr, matched, reference: str, snr_values):
    """The SNR setting a set records: the number or range asked for; matched, the one SNR the match chose (on
    "s0") or None (drawn per sample)."""
    if matched is not None:
        return float(snr_values[0]) if matched_on_s0(model, matched, reference) else None
    return float(snr) if np.ndim(snr) == 0 else tuple(float(x) for x in snr)


def simulate(model, protocol="innovate", n: int = 100_000, snr=None, ranges: Mapping | None = None,
             fraction_sampler: str = "dirichlet", seed: int | None = None, val_fraction: float = 0.2,
             progress=None, snr_reference: str | None = None, snr_from=None) -> SyntheticData:
    """Make ``n`` noisy, normalised synthetic signals with their true parameters and an 80/20 split.

    Parameters
    ----------
    model : "verdict", "rverdict" or a SignalModel.
    protocol : a Protocol, a preset name or a protocol file (see :func:`load_protocol`).
    n : number of samples (≥ 2).
    snr : a number (default 35), or (low, high) drawn uniformly per sample: σ = 1/SNR on the scale
        ``snr_reference`` names; text as the command line takes it (``"35"``, ``"15-60"``) is read the same way.
    snr_reference : "s0" (default: σ = 1/SNR where S0 = 1, before T1 / T2; the seed paper's convention) or
        "peak" (σ = the sample's brightest noise-free measurement / SNR). See :mod:`napari_rverdict.data.noise`.
    snr_from : match a DWI's noise instead of ``snr`` (not both): ``estimate_noise(dwi, mask)``
        (:mod:`.noise_estimate`) or a :class:`.noise.MatchedSnr`. On "s0" (rVERDICT, the default) one SNR on S0's
        scale, chosen so the set's SNR at the brightest b = 0 has the DWI's 95th percentile
        (:func:`matched_s0_snr`); on "peak" (and for classic VERDICT) each sample's SNR is drawn from the DWI's
        per-voxel SNR at the brightest b = 0.
    ranges : {name: (low, high)} overriding the model's default training ranges.
    fraction_sampler : "dirichlet" (uniform on the simplex) or "tissue" (p1 = 1 − f_vasc, p2 = f_ic / p1 uniform).
    seed : a whole number ≥ 0 (or None: fresh entropy) that makes parameters, noise and split reproducible.
    progress : optional callable(fraction_done: float) called as chunks finish.
    """
    model = get_model(model)
    protocol = load_protocol(protocol)
    model.check_protocol(protocol)
    snr, matched = resolve_snr(snr, snr_from)
    reference = _reference(snr_reference)
    seed = check_seed(seed)
    if int(n) != n or n < 2:
        raise InputError(f"n must be an integer ≥ 2, got {n!r}")
    n = int(n)
    # signals (float32), every parameter and the SNR (float64), the split's permutation and indices (int64)
    check_memory(n * (4.0 * len(protocol) + 8.0 * (len(model.parameter_names) + 1) + 32.0),
                 f"simulating {n:,} signals")
    ranges = resolve_ranges(model, ranges)
    rng = np.random.default_rng(seed)
    params = sample_parameters(model, n, ranges, fraction_sampler, rng)
    snr_values = _noise_snr(model, protocol, snr, matched, reference, ranges, fraction_sampler, n, rng)
    signals = np.empty((n, len(protocol)), dtype=np.float32)
    peak_snr, b0_snr = np.empty(n), np.empty(n)
    b0 = protocol.snr_b0
    chunk = 32768
    with capped_torch_threads():  # CPUs that other processes keep busy are not waited for
        sphere = sphere_for(model, params, protocol)  # one table for every chunk
        for start in range(0, n, chunk):
            sl = slice(start, min(start + chunk, n))
            clean = noise_free_signals(model, {k: v[sl] for k, v in params.items()}, protocol, sphere=sphere)
            sigma = reference_sigma(clean, snr_values[sl], reference)
            peak_snr[sl] = clean.max(axis=1) / sigma[:, 0]
            b0_snr[sl] = clean[:, b0].max(axis=1) / sigma[:, 0]
            # float32 (how the signals are stored), the normals from torch's faster generator (seeded from rng)
            noisy = scanner_noise(clean, sigma, protocol.n_volumes, rng, dtype=np.float32, normals="torch")
            signals[sl] = model.normalise(noisy, protocol)
            if progress is not None:
                progress(sl.stop / n)
    train_index, val_index = split_indices(n, val_fraction, seed)
    snr_setting = _setting(model, snr, matched, reference, snr_values)
    return SyntheticData(model, protocol, signals, params, snr_values, train_index, val_index, ranges,
                         fraction_sampler, seed, snr_setting, snr_reference=reference, peak_snr=peak_snr,
                         b0_snr=b0_snr, matched=matched)


def effective_snr(model, protocol="innovate", snr=None, snr_reference: str | None = None,
                  ranges: Mapping | None = None, fraction_sampler: str = "dirichlet", n: int = 20_000,
                  seed: int | None = 0, snr_from=None) -> dict:
    """The effective-SNR distribution a noise setting implies: {"p5", "median", "p95"} of the SNR at each
    sample's brightest noise-free b = 0 (per acquired volume) under the training prior. With "peak" it is the
    setting itself; with "s0" it spreads with S0 and the T1 / T2 factors (rVERDICT at SNR 35: median ≈ 10)."""
    model = get_model(model)
    protocol = load_protocol(protocol)
    model.check_protocol(protocol)
    snr, matched = resolve_snr(snr, snr_from)
    reference = _reference(snr_reference)
    rng = np.random.default_rng(check_seed(seed))
    ranges = resolve_ranges(model, ranges)
    params = sample_parameters(model, int(n), ranges, fraction_sampler, rng)
    snr_values = _noise_snr(model, protocol, snr, matched, reference, ranges, fraction_sampler, int(n), rng)
    clean = noise_free_signals(model, params, protocol)
    b0 = protocol.snr_b0
    return snr_percentiles(clean[:, b0].max(axis=1) / reference_sigma(clean, snr_values, reference)[:, 0])
