"""Noise: Rician noise as the scanner makes it, the noise reference, and SNR settings.

The SNR setting means σ = 1 / SNR on the scale set by the *noise reference* (``snr_reference``):

``"s0"`` (default; the seed paper / Palombo's rVERDICT toolbox)
    σ = 1 / SNR on the scale where S0 = 1 is the top of the S0 range, *before* the T1 / T2 factors: σ is fixed
    while voxel brightness (S0 ∈ [0.1, 1], relaxation) varies, as on a scanner. The effective SNR at a voxel's
    brightest b = 0 then varies from voxel to voxel (:func:`snr_percentiles` of ``SyntheticData.b0_snr``).
    Classic VERDICT's model is S/S0 with every series' b = 0 equal to 1, so there each series' b = 0 is the
    reference (and "s0" and "peak" coincide).
``"peak"`` (this project before the setting existed; bundles saved without it load as "peak")
    σ = (the voxel's brightest noise-free measurement) / SNR: S0 cancels and every voxel has the same SNR.

Noise enters per *acquired volume*: a measurement that averages ``n`` volumes (``Protocol.n_volumes``) gets ``n``
independent Rician draws whose magnitudes are averaged, exactly as :func:`.physics.protocol.direction_average`
averages a scanner's direction-resolved volumes (:func:`scanner_noise`, shared by simulation and the phantom).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from napari_rverdict.errors import InputError


def add_rician_noise(signals, sigma, rng: np.random.Generator | int | None = None, dtype=np.float64, *,
                     normals: str = "numpy"):
    """S_noisy = sqrt((S + σ n1)² + (σ n2)²), n1, n2 ~ N(0, 1). ``sigma`` broadcasts against ``signals``.

    ``dtype``: of the normal draws, the arithmetic and the result — float64 (default; the phantom's noise) or
    float32 (≈ 1.3× faster here, half the memory: ``simulate``, whose signals are float32 anyway). The two draw
    different numbers from the same seed.

    ``normals``: "numpy" (default) draws n1, then n2, from ``rng`` itself; "torch" draws both with torch's
    vectorised generator seeded from ``rng`` (:func:`normal_pair`; ≈ 1.6× faster, the drawing being most of the
    cost: ``simulate``). Each is reproducible from the seed, on any number of threads; they draw different numbers."""
    rng = np.random.default_rng(rng)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise InputError(f"noise dtype must be float32 or float64, got {dtype}")
    s = np.asarray(signals, dtype=dtype)
    sigma = np.asarray(sigma, dtype=dtype)
    shape = np.broadcast_shapes(s.shape, sigma.shape)  # the result's, as (s + σ n1) broadcasts
    if normals == "numpy":
        real = rng.standard_normal(shape, dtype=dtype)
        imag = rng.standard_normal(shape, dtype=dtype)
    elif normals == "torch":
        real, imag = normal_pair(rng, shape, dtype)
    else:
        raise InputError(f"normals must be 'numpy' or 'torch', got {normals!r}")
    real *= sigma
    real += s
    real *= real
    imag *= sigma
    imag *= imag
    real += imag
    return np.sqrt(real, out=real)


def normal_pair(rng: np.random.Generator, shape, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Two arrays of standard normals from torch's vectorised generator (Box–Muller over a Mersenne Twister; the
    same numbers on any number of threads), seeded by one draw from ``rng``: repeated calls draw new numbers and
    ``rng``'s seed makes them reproducible. torch's CPU generator keeps the low 32 bits of that seed, so there are
    2³² such streams (ample for noise; two seeds that agree in those bits draw the same). Faster than NumPy's
    ziggurat here (4 M float32 normals: ≈ 24 ms against 39 ms)."""
    import torch

    generator = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
    pair = torch.randn((2, *shape), generator=generator,
                       dtype=torch.float32 if np.dtype(dtype) == np.float32 else torch.float64).numpy()
    return pair[0], pair[1]


SNR_REFERENCES = ("s0", "peak")
DEFAULT_SNR_REFERENCE = "s0"
LEGACY_SNR_REFERENCE = "peak"  # bundles and data saved before the setting existed


def check_snr_reference(reference) -> str:
    """``"s0"`` or ``"peak"`` (case-insensitive); anything else is an InputError naming both."""
    ref = str(reference).strip().lower()
    if ref not in SNR_REFERENCES:
        raise InputError(f"unknown SNR reference '{reference}'; choose one of: {', '.join(SNR_REFERENCES)}")
    return ref


def reference_sigma(clean, snr, reference: str, s0_scale: float = 1.0) -> np.ndarray:
    """σ per sample, (n, 1), for noise-free ``clean`` signals (n, m) at per-sample ``snr`` (n,).

    "peak": the sample's brightest noise-free measurement / SNR. "s0": ``s0_scale`` / SNR, ``s0_scale`` being the
    signal S0 = 1 stands for (1 in simulation, the raw S0 unit in the phantom)."""
    snr = np.asarray(snr, dtype=float).reshape(-1, 1)
    if check_snr_reference(reference) == "peak":
        return np.asarray(clean, dtype=float).max(axis=-1, keepdims=True) / snr
    return float(s0_scale) / snr


def scanner_noise(clean, sigma, n_volumes=None, rng: np.random.Generator | int | None = None,
                  dtype=np.float64, *, normals: str = "numpy") -> np.ndarray:
    """Rician noise drawn on every acquired volume, magnitudes averaged per measurement.

    ``clean`` (..., m) noise-free signals; ``sigma`` broadcasts against them (one σ per acquired volume);
    ``n_volumes`` (m,) how many acquired volumes measurement i averages (None or all 1: plain Rician noise).
    At high SNR an average of n has mean ≈ S and sd σ/√n; at low SNR it keeps the Rician floor of each volume.
    ``dtype`` and ``normals`` as :func:`add_rician_noise`.
    """
    s = np.asarray(clean, dtype=dtype)
    counts = None if n_volumes is None else np.asarray(n_volumes, dtype=int).reshape(-1)
    if counts is None or np.all(counts == 1):
        return add_rician_noise(s, sigma, rng, dtype, normals=normals)
    if counts.size != s.shape[-1] or np.any(counts < 1):
        raise InputError(f"n_volumes needs one positive count per measurement ({s.shape[-1]}), got {counts.tolist()}")
    volumes = add_rician_noise(np.repeat(s, counts, axis=-1), sigma, rng, dtype, normals=normals)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.add.reduceat(volumes, starts, axis=-1) / counts.astype(dtype)


def snr_percentiles(values) -> dict:
    """{"p5", "median", "p95"} of the finite, positive ``values`` (NaN each when there are none)."""
    v = np.asarray(values, dtype=float).reshape(-1)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return {"p5": float("nan"), "median": float("nan"), "p95": float("nan")}
    p5, med, p95 = np.percentile(v, [5, 50, 95])
    return {"p5": float(p5), "median": float(med), "p95": float(p95)}


def format_snr_percentiles(pct: dict) -> str:
    """``median 10.2 (5–95 %: 2.6–23.1)``."""
    return f"median {pct['median']:.3g} (5–95 %: {pct['p5']:.3g}–{pct['p95']:.3g})"


@dataclass
class MatchedSnr:
    """An SNR distribution measured on a DWI, to train at the patient's own noise.

    values : a sorted sample (≤ 1000 quantiles) of the per-voxel SNR at each voxel's brightest b = 0, inside the
        mask. On "peak" each training sample's SNR is drawn from it; on "s0" (rVERDICT) its 95th percentile sets
        one SNR on S0's scale (:func:`.synth.matched_s0_snr`).
    sigma : the DWI's σ (its intensity units).  source : the DWI's file name.  method : how σ was estimated.
    layer : the napari layer it was measured on ("" outside napari): what the docks name, as the user chose it.
    """

    values: np.ndarray
    sigma: float
    source: str = ""
    method: str = ""
    layer: str = ""

    def __post_init__(self):
        v = np.sort(np.asarray(self.values, dtype=float).reshape(-1))
        v = v[np.isfinite(v) & (v > 0)]
        if v.size == 0:
            raise InputError("the matched SNR distribution holds no positive SNR (is the mask on the body?)")
        if v.size > 1000:
            v = np.percentile(v, np.linspace(0, 100, 1000))
        self.values = v

    def percentiles(self) -> dict:
        return snr_percentiles(self.values)

    def range(self) -> tuple[float, float]:
        return float(self.values[0]), float(self.values[-1])

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` SNRs drawn from the distribution (its quantile function at uniform draws)."""
        q = np.linspace(0.0, 1.0, self.values.size)
        return np.interp(rng.uniform(0.0, 1.0, n), q, self.values)

    def to_dict(self) -> dict:
        return {"values": [float(x) for x in self.values], "sigma": float(self.sigma), "source": str(self.source),
                "method": str(self.method), "layer": str(self.layer), "percentiles": self.percentiles()}

    @classmethod
    def from_dict(cls, d: dict) -> MatchedSnr:
        return cls(np.asarray(d["values"], dtype=float), float(d["sigma"]), d.get("source", ""), d.get("method", ""),
                   d.get("layer", ""))


def describe_noise(snr, reference: str, matched: MatchedSnr | None = None) -> str:
    """``SNR 35 ("s0" reference)``, ``SNR 28.2 ("s0" reference) matched to dwi.nii.gz (its SNR at the brightest
    b = 0: median …)`` or ``SNR matched to dwi.nii.gz (median 12.3 (5–95 %: …), "peak" reference)``; matched in
    napari, the layer is named (``matched to 'phantom DWI'``), as the user chose it."""
    if matched is not None:
        source = f"'{matched.layer}'" if matched.layer else (matched.source or "a DWI")
        pct = format_snr_percentiles(matched.percentiles())
        if snr is not None and not isinstance(snr, tuple):
            return (f"SNR {snr:.3g} (\"{reference}\" reference) matched to {source} (its SNR at the brightest "
                    f"b = 0: {pct})")
        return f"SNR matched to {source} ({pct}, \"{reference}\" reference)"
    text = f"{snr[0]:g}–{snr[1]:g}" if isinstance(snr, tuple) else f"{snr:g}"
    return f"SNR {text} (\"{reference}\" reference)"


def noise_settings(snr, reference: str, matched: MatchedSnr | None = None) -> dict:
    """The keyword arguments of :func:`.synth.simulate` that draw noise this way."""
    if matched is not None:
        return {"snr": None, "snr_from": matched, "snr_reference": reference}
    return {"snr": snr, "snr_reference": reference}


def snr_setting(snr, what: str = "SNR"):
    """An SNR setting as the simulator takes it: text as the command line and the docks read it (``"35"``,
    ``"15-60"``: :func:`parse_snr`) becomes a number or a (low, high) pair; True / False, which NumPy would read as
    SNR 1 / 0, is refused; anything else is returned as given (checked where it is drawn)."""
    if isinstance(snr, (str, np.str_)):
        return parse_snr(snr, what)
    if isinstance(snr, (bool, np.bool_)):
        raise InputError(f"{what} must be a positive number or a (low, high) pair, got {snr!r}")
    return snr


def _snr_per_sample(snr, n: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(snr, MatchedSnr):
        return snr.draw(n, rng)
    if np.ndim(snr) == 0:
        value = float(snr)
        if not np.isfinite(value) or value <= 0:
            raise InputError(f"SNR must be a positive number, got {snr!r}")
        return np.full(n, value)
    try:
        low, high = (float(x) for x in snr)
    except (TypeError, ValueError):
        raise InputError(f"SNR must be a number or a (low, high) pair, got {snr!r}") from None
    if not (0 < low < high and np.isfinite(high)):
        raise InputError(f"SNR range must satisfy 0 < low < high, got ({low:g}, {high:g})")
    return rng.uniform(low, high, n)



def parse_snr(text: str, what: str = "SNR"):
    """``35`` → 35.0; ``15-60``, ``15–60`` (en or em dash, as ranges are printed) or ``15,60`` → (15.0, 60.0).
    SNRs are positive; a range needs low < high.

    ``what`` names the setting in the message (``--snr`` on the command line, ``SNR`` in the dock).
    """
    number = r"(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"
    m = re.fullmatch(rf"\s*{number}\s*(?:[-–—,]\s*{number}\s*)?", str(text))
    if m is None:
        raise InputError(f"{what} expects a positive number or LOW-HIGH (e.g. 35 or 15-60), got '{text}'")
    low, high = m.group(1), m.group(2)
    values = [float(low)] + ([float(high)] if high is not None else [])
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(f"{what} must be positive and finite, got '{text}'")
    if len(values) == 1:
        return values[0]
    if values[0] >= values[1]:
        raise InputError(f"{what} range needs LOW < HIGH, got '{text}'")
    return tuple(values)
