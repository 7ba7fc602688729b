"""What the Explore dock shows, headless: noise-free signal curves with each compartment's contribution, a Rician
noise band, and a voxel's measured signal next to the one its maps predict.

Every signal here comes from the model's own forward signal (``SignalModel.signal``); nothing is re-implemented.
The compartments are separated by linearity: S(θ) = Σ_k f_k S(θ with f_k = 1, the other fractions 0), so one
batched call of the model with the actual fractions and with each "pure" compartment gives the total and the
three contributions (intracellular, EES, vascular), which sum to the total exactly.

Normalisation is the model's (``SignalModel.normalise``): classic VERDICT per series by its own b = 0, rVERDICT by
the voxel's brightest measurement. Curves are normalised with the noise-free reference; the contributions with the
same divisor as the total.

Units: b s/mm², δ Δ TE TR ms; signals are dimensionless.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_rverdict.data.noise import SNR_REFERENCES, reference_sigma
from napari_rverdict.errors import InputError
from napari_rverdict.physics.models import SignalModel, get_model
from napari_rverdict.physics.protocol import Protocol, direction_average

FRACTIONS = ("f_ic", "f_ees", "f_vasc")
COMPARTMENTS = {"f_ic": "intracellular", "f_ees": "EES", "f_vasc": "vascular"}
NOISE_REFERENCES = SNR_REFERENCES  # the one list, in data.noise
DENSE_POINTS = 41  # b values per series on the smooth curves


@dataclass
class SeriesCurve:
    """One series (measurements sharing TE and TR): a smooth curve over b with the series' own δ, Δ, TE, TR.

    index : the protocol's measurements in this series.  b : (k,) s/mm² from 0 to the series' largest b.
    total, compartments : normalised noise-free signal on ``b`` (compartments {"f_ic": …, "f_ees": …, "f_vasc": …}).
    raw : the unnormalised total on ``b`` (S0 scale, relaxation included).
    scale : its divisor (normalised = raw / scale).
    """

    label: str
    te: float
    tr: float
    index: np.ndarray
    b: np.ndarray
    total: np.ndarray
    compartments: dict[str, np.ndarray]
    raw: np.ndarray
    scale: float


@dataclass
class SignalCurves:
    """Noise-free signals of one parameter set on a protocol.

    b, total, compartments, raw, scale : per measurement of ``protocol`` (normalised = raw / scale).
    series : one :class:`SeriesCurve` per TE/TR group, in acquisition order.
    fractions : the f_ic, f_ees, f_vasc used (the estimated ones clipped at 0 and renormalised if they summed
    above 1, the dependent one as 1 − their sum).  params : every parameter the model was given.
    """

    model: SignalModel
    protocol: Protocol
    params: dict[str, float]
    fractions: dict[str, float]
    b: np.ndarray
    total: np.ndarray
    compartments: dict[str, np.ndarray]
    raw: np.ndarray
    scale: np.ndarray
    series: list[SeriesCurve]
    notes: list[str] = field(default_factory=list)


def _scalar_params(model: SignalModel, params: Mapping) -> dict[str, float]:
    out = {}
    for name in model.parameter_names:
        if name not in params:
            if name == "S0":
                out[name] = 1.0
                continue
            raise InputError(f"{model.label} needs a value for {name} (got {', '.join(params) or 'nothing'})")
        try:
            v = float(params[name])
        except (TypeError, ValueError):
            raise InputError(f"{name} must be a number, got {params[name]!r}") from None
        if not np.isfinite(v):
            raise InputError(f"{name} must be finite, got {v}")
        spec = model.spec(name)
        if not spec.limit_low <= v <= spec.limit_high:
            raise InputError(f"{name} = {v:g} {spec.unit} is outside its physical limits "
                             f"[{spec.limit_low:g}, {spec.limit_high:g}]".replace("  ", " "))
        out[name] = v
    return out


def _compartment_sets(model: SignalModel, params: dict[str, float]):
    """The actual parameter set followed by one "pure" set per compartment (that fraction 1, the others 0), as
    arrays of shape (4,); and the fractions used."""
    maps = model.derived_maps({k: np.array([v]) for k, v in params.items()})
    fr = {k: float(np.asarray(maps[k])[0]) for k in FRACTIONS}
    rows = [dict(params, **{f: fr[f] for f in model.estimated_fractions})]
    for comp in FRACTIONS:
        rows.append(dict(params, **{f: float(f == comp) for f in model.estimated_fractions}))
    stacked = {k: np.array([r[k] for r in rows], dtype=float) for k in params}
    return stacked, fr


def _forward(model: SignalModel, params: dict[str, float], protocol: Protocol):
    """(total (m,), {fraction: contribution (m,)}, fractions) from one batched call of ``model.signal``."""
    stacked, fr = _compartment_sets(model, params)
    s = np.asarray(model.signal(stacked, protocol), dtype=float)
    contributions = {f: fr[f] * s[1 + i] for i, f in enumerate(FRACTIONS)}
    return s[0], contributions, fr


def _sweep_rows(protocol: Protocol, index: np.ndarray, n: int) -> np.ndarray:
    """(k, 5) rows b, δ, Δ, TE, TR: b from 0 to the series' largest b with the δ, Δ of that measurement and the
    series' TE, TR."""
    top = index[np.argmax(protocol.b[index])]
    b = np.linspace(0.0, float(protocol.b[top]), n) if protocol.b[top] > 0 else np.zeros(1)
    rows = np.empty((b.size, 5))
    rows[:, 0] = b
    for j, key in enumerate(("small_delta", "big_delta", "te", "tr"), start=1):
        rows[:, j] = getattr(protocol, key)[top]
    return rows


def series_label(te: float, tr: float) -> str:
    """'TE 50 ms, TR 2482 ms' (TR unknown: 'TE 50 ms')."""
    return f"TE {te:g} ms" + (f", TR {tr:g} ms" if np.isfinite(tr) else "")


def signal_curves(model, params: Mapping, protocol, *, dense: int = DENSE_POINTS) -> SignalCurves:
    """Noise-free normalised signal of ``params`` ({name: value}) on ``protocol``, with each compartment's
    contribution, at the protocol's measurements and on a smooth b sweep per series (``dense`` points; the
    sweep keeps the δ, Δ of the series' largest-b measurement).

    rVERDICT's nuisance S0 defaults to 1. Fractions whose estimated values sum above 1 are renormalised (as
    ``model.derived_maps`` does) and a note says so. Raises InputError for a missing or out-of-limit parameter or a
    protocol the model cannot use.
    """
    from napari_rverdict.physics.protocol_files import load_protocol

    model = get_model(model)
    protocol = load_protocol(protocol)
    model.check_protocol(protocol)
    p = _scalar_params(model, params)
    notes = []
    est_sum = sum(p[f] for f in model.estimated_fractions)
    if est_sum > 1.0 + 1e-12:
        notes.append(f"{' + '.join(model.estimated_fractions)} = {est_sum:.3g} > 1: scaled down to sum to 1, "
                     f"{model.dependent_fraction} = 0")
    sid = protocol.series_ids()
    groups = [np.flatnonzero(sid == s) for s in range(int(sid.max()) + 1)]
    sweeps = [_sweep_rows(protocol, index, max(int(dense), 2)) for index in groups]
    # one call of the model for the measurements and every series' sweep (the model's cost is per call)
    rows = np.concatenate([np.stack([protocol.b, protocol.small_delta, protocol.big_delta, protocol.te,
                                     protocol.tr], axis=1)] + sweeps)
    everything = Protocol(*rows.T)
    raw_all, parts_all, fr = _forward(model, p, everything)
    m = len(protocol)
    raw, parts = raw_all[:m], {k: v[:m] for k, v in parts_all.items()}
    normalised = np.asarray(model.normalise(raw[None, :], protocol), dtype=float)[0]
    scale = raw / normalised
    series, start = [], m
    for index, sweep in zip(groups, sweeps):
        sl = slice(start, start + len(sweep))
        start = sl.stop
        sc = float(scale[index[0]])
        te, tr = float(protocol.te[index[0]]), float(protocol.tr[index[0]])
        series.append(SeriesCurve(series_label(te, tr), te, tr, index, sweep[:, 0], raw_all[sl] / sc,
                                  {k: v[sl] / sc for k, v in parts_all.items()}, raw_all[sl], sc))
    return SignalCurves(model, protocol, p, fr, np.asarray(protocol.b), normalised,
                        {k: v / scale for k, v in parts.items()}, raw, scale, series, notes)


# ---------------------------------------------------------------------- noise
def noise_sigma(raw, snr: float, reference: str = "peak") -> np.ndarray:
    """σ of the Rician noise on one acquired volume of noise-free signals ``raw`` (..., m) at ``snr``, by the noise
    reference of :func:`napari_rverdict.data.noise.reference_sigma` (the rule simulation uses):

    ``"s0"``: σ = 1 / SNR on the scale where S0 = 1 before relaxation (``raw`` as ``model.signal`` gives it: a
    voxel with S0 < 1, long TE or short TR is darker and so noisier relative to its signal — as on a scanner).
    ``"peak"``: σ = (the voxel's brightest noise-free measurement) / SNR: every voxel at the same SNR.

    Returns σ with shape (..., 1).
    """
    raw = np.asarray(raw, dtype=float)
    snr = float(snr)
    if not (np.isfinite(snr) and snr > 0):
        raise InputError(f"SNR must be a positive number, got {snr:g}")
    flat = raw.reshape(-1, raw.shape[-1])
    sigma = reference_sigma(flat, np.full(len(flat), snr), reference)
    return np.broadcast_to(sigma, (len(flat), 1)).reshape(raw.shape[:-1] + (1,)).copy()


def rician_moments(nu, sigma) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of Rice(ν, σ) (the magnitude of ν + σ(n1 + i n2), n1, n2 ~ N(0, 1)).

    Mean = σ √(π/2) L½(−ν²/2σ²) with the Laguerre function written through ``scipy.special.i0e`` / ``i1e``, which
    stays finite at any SNR (``scipy.stats.rice.stats`` overflows above ν/σ ≈ 40); variance = 2σ² + ν² − mean².
    """
    from scipy.special import i0e, i1e

    nu, sigma = np.broadcast_arrays(np.asarray(nu, dtype=float), np.asarray(sigma, dtype=float))
    t = nu**2 / (2.0 * sigma**2)
    mean = sigma * np.sqrt(np.pi / 2.0) * ((1.0 + t) * i0e(t / 2.0) + t * i1e(t / 2.0))
    var = np.clip(2.0 * sigma**2 + nu**2 - mean**2, 0.0, None)
    return mean, np.sqrt(var)


@dataclass
class NoiseBand:
    """Rician noise around the noise-free curves, normalised like them (the reference taken noise-free).

    sigma : σ on the raw scale.  mean, low, high : per measurement (mean ± k sd).  series : per series
    (mean, low, high) on the series' b sweep.
    """

    snr: float
    reference: str
    k: float
    sigma: float
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    series: list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def noise_band(curves: SignalCurves, snr: float, reference: str = "peak", k: float = 1.0) -> NoiseBand:
    """Mean ± ``k`` sd of the Rician measurement at ``snr`` (σ by :func:`noise_sigma` on ``reference``) around
    ``curves``, divided by the noise-free normalisation reference. The mean lies above the noise-free curve where
    the signal is near the noise floor (the Rician bias)."""
    sigma = float(noise_sigma(curves.raw, snr, reference)[0])

    def band(raw, scale):
        mean, sd = rician_moments(raw, sigma)
        return mean / scale, (mean - k * sd) / scale, (mean + k * sd) / scale

    mean, low, high = band(curves.raw, curves.scale)
    series = [band(s.raw, s.scale) for s in curves.series]
    return NoiseBand(float(snr), reference, float(k), sigma, mean, low, high, series)


# ---------------------------------------------------------------------- voxel QA
def model_for_maps(names: Sequence[str]) -> SignalModel:
    """The model whose estimated parameters are all among map ``names`` (rVERDICT before classic VERDICT)."""
    have = set(names)
    for key in ("rverdict", "verdict"):
        m = get_model(key)
        if set(m.estimated_names) <= have:
            return m
    raise InputError(f"maps {', '.join(sorted(have)) or '(none)'} are not the maps of a VERDICT model "
                     f"(classic VERDICT needs {', '.join(get_model('verdict').estimated_names)})")


@dataclass
class VoxelQA:
    """One voxel: its measured signal normalised as the model normalises it, and the noise-free signal its maps
    predict (None without maps, or where the voxel was not mapped).

    protocol : the (direction-averaged) protocol of ``measured``.  series : series id per measurement.
    map_values : {map: value} as given.  rmse : root-mean-square of predicted − measured (NaN without prediction).
    """

    model: SignalModel
    protocol: Protocol
    b: np.ndarray
    series: np.ndarray
    measured: np.ndarray
    predicted: np.ndarray | None
    map_values: dict[str, float]
    rmse: float
    notes: list[str] = field(default_factory=list)


def voxel_qa(signals, protocol, model=None, maps: Mapping | None = None) -> VoxelQA:
    """A voxel's raw ``signals`` (n,) acquired with ``protocol`` → :class:`VoxelQA`.

    Volumes that differ only in direction are averaged first. ``maps`` ({map: value}, e.g. one voxel's map
    layers) gives the prediction: the model's signal at those values (S0 = 1, which the normalisation removes),
    normalised like the measurement. ``model`` defaults to the one the maps belong to (:func:`model_for_maps`),
    else rVERDICT when the protocol has TR and classic VERDICT otherwise.
    """
    from napari_rverdict.physics.protocol_files import load_protocol

    protocol = load_protocol(protocol)
    y = np.asarray(signals, dtype=float).reshape(-1)
    if y.size != len(protocol):
        raise InputError(f"the voxel has {y.size} volumes but its protocol has {len(protocol)}")
    values = {k: float(v) for k, v in (maps or {}).items()}
    if model is None:
        model = model_for_maps(values) if values else get_model("rverdict" if protocol.has_tr else "verdict")
    model = get_model(model)
    if len(protocol.shells()) < len(protocol):
        y, protocol = direction_average(y, protocol)
    model.check_protocol(protocol)
    notes = []
    if not np.isfinite(y).all():
        raise InputError("the voxel's signal has NaN or infinite values")
    measured = np.asarray(model.normalise(y[None, :], protocol), dtype=float)[0]
    predicted, rmse = None, float("nan")
    if values:
        missing = [k for k in model.estimated_names if k not in values]
        if missing:
            notes.append(f"no map of {', '.join(missing)}: no prediction")
        elif not all(np.isfinite(values[k]) for k in model.estimated_names):
            notes.append("this voxel was not mapped (NaN in its maps): no prediction")
        else:
            p = {k: np.array([values[k]]) for k in model.estimated_names}
            if "S0" in model.parameter_names:
                p["S0"] = np.array([1.0])
            raw = np.asarray(model.signal(p, protocol), dtype=float)
            predicted = np.asarray(model.normalise(raw, protocol), dtype=float)[0]
            rmse = float(np.sqrt(np.mean((predicted - measured) ** 2)))
    return VoxelQA(model, protocol, np.asarray(protocol.b), protocol.series_ids(), measured, predicted, values,
                   rmse, notes)


__all__ = ["COMPARTMENTS", "FRACTIONS", "NOISE_REFERENCES", "NoiseBand", "SeriesCurve", "SignalCurves", "VoxelQA",
           "model_for_maps", "noise_band", "noise_sigma", "rician_moments", "series_label", "signal_curves",
           "voxel_qa"]
