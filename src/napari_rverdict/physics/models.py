"""The biophysical signal models: classic VERDICT and relaxation-VERDICT (rVERDICT).

A model holds only what does not depend on data: its parameters (names, units, default training ranges,
physical limits), its fixed constants (the diffusivities it does not fit), its maps, its forward signal and its
normalisation of raw scanner signals. The forward signal is the one implementation of each model's composition:
the NLLS fit calls it too, with a tabulated sphere (:meth:`SignalModel.sphere_table`) for speed. ``get_model(name)``
returns the shared instance.

Units: b s/mm², δ Δ TE TR ms, D µm²/ms, R µm, T1 T2 ms, fractions dimensionless, cellularity µm⁻³.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from napari_rverdict.errors import InputError
from napari_rverdict.physics.compartments import SPHERE_TABLE_NODES, SphereTable, astrosticks, ball, sphere_gpd
from napari_rverdict.physics.protocol import Protocol, ProtocolError, missing_tr_advice

R_MIN_CELLULARITY = 0.01  # µm: R is clamped here when computing f_ic / R³


@dataclass(frozen=True)
class ParameterSpec:
    """One model parameter: name, unit, default training range and hard physical limits."""

    name: str
    unit: str
    low: float  # default training range
    high: float
    limit_low: float  # physical limits a user range must stay inside
    limit_high: float
    description: str
    nuisance: bool = False  # not estimated by the networks (e.g. S0, removed by normalisation)
    is_fraction: bool = False

    @property
    def label(self) -> str:
        return f"{self.name} ({self.unit})" if self.unit else self.name


@dataclass(frozen=True)
class FixedParameter:
    """A constant of a model's signal that is not fitted (e.g. the intracellular diffusivity)."""

    name: str
    unit: str
    value: float
    description: str

    @property
    def label(self) -> str:
        return f"{self.name} = {self.value:g} {self.unit}".rstrip()


@dataclass(frozen=True)
class MapSpec:
    """One output map: name, unit, a display range and a colormap suggestion."""

    name: str
    unit: str
    description: str
    display: tuple[float, float]
    colormap: str = "viridis"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.unit})" if self.unit else self.name


def _fraction(name, description):
    return ParameterSpec(name, "", 0.01, 0.99, 0.0, 1.0, description, is_fraction=True)


_R = ParameterSpec("R", "µm", 0.01, 15.0, 1e-4, 50.0, "cell radius (impermeable sphere)")
_D_IC = FixedParameter("D_ic", "µm²/ms", 2.0, "intracellular diffusivity (sphere)")
_D_VASC = FixedParameter("D_vasc", "µm²/ms", 8.0, "vascular diffusivity (astrosticks)")

# Every map of every model, once: a model lists the names it produces.
_MAPS = {m.name: m for m in (
    MapSpec("f_ic", "", "intracellular volume fraction", (0.0, 1.0), "magma"),
    MapSpec("f_ees", "", "extracellular-extravascular volume fraction", (0.0, 1.0), "viridis"),
    MapSpec("f_vasc", "", "vascular volume fraction", (0.0, 0.5), "inferno"),
    MapSpec("R", "µm", "cell radius", (0.0, 15.0), "plasma"),
    MapSpec("cellularity", "µm⁻³", "f_ic / R³", (0.0, 0.01), "magma"),
    MapSpec("D_ees", "µm²/ms", "EES diffusivity", (0.5, 3.0), "cividis"),
    MapSpec("T1", "ms", "T1", (0.0, 4000.0), "turbo"),
    MapSpec("T2_vasc_ees", "ms", "T2 of vascular and EES water", (150.0, 800.0), "turbo"),
    MapSpec("T2_ic", "ms", "T2 of intracellular water", (0.0, 150.0), "turbo"),
    MapSpec("fit_nrmse", "", "normalised RMSE of the model's fit to the measured signal", (0.0, 0.2), "gray"),
)}
FIT_NRMSE = "fit_nrmse"  # the fit-quality map every method returns beside the model's maps (maps.fit_quality)


def find_map_spec(name: str) -> MapSpec | None:
    """The MapSpec of any map a method writes (a model's maps and ``fit_nrmse``), or None for another name."""
    return _MAPS.get(name)


def _maps(*names) -> tuple[MapSpec, ...]:
    return tuple(_MAPS[n] for n in names)


_VOLUME_MAPS = ("f_ic", "f_ees", "f_vasc", "R", "cellularity")  # the maps both models produce


class SignalModel:
    """Base class: subclasses set ``name``, ``label``, ``parameters``, ``fixed``, ``maps``, ``estimated_fractions``
    and ``dependent_fraction`` and implement :meth:`signal` and :meth:`normalise`."""

    name: str
    label: str
    parameters: tuple[ParameterSpec, ...]
    fixed: tuple[FixedParameter, ...]
    maps: tuple[MapSpec, ...]
    estimated_fractions: tuple[str, ...]
    dependent_fraction: str
    requires_tr: bool = False

    # ---------------------------------------------------------------- tables
    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    @property
    def estimated_names(self) -> tuple[str, ...]:
        """Parameters a network estimates (all but nuisance ones such as S0)."""
        return tuple(p.name for p in self.parameters if not p.nuisance)

    @property
    def map_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.maps)

    def spec(self, name: str) -> ParameterSpec:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(f"{self.name} has no parameter '{name}' (it has {', '.join(self.parameter_names)})")

    @property
    def fixed_values(self) -> dict[str, float]:
        """The constants of the signal that are not fitted, {name: value} (e.g. D_ic = 2 µm²/ms)."""
        return {c.name: c.value for c in self.fixed}

    def fixed_value(self, name: str) -> float:
        for c in self.fixed:
            if c.name == name:
                return c.value
        raise KeyError(f"{self.name} has no fixed constant '{name}' (it has {', '.join(self.fixed_values)})")

    def map_spec(self, name: str) -> MapSpec:
        for m in self.maps:
            if m.name == name:
                return m
        raise KeyError(f"{self.name} has no map '{name}' (it has {', '.join(self.map_names)})")

    def default_ranges(self) -> dict[str, tuple[float, float]]:
        return {p.name: (p.low, p.high) for p in self.parameters}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}': {', '.join(self.parameter_names)}>"

    # ---------------------------------------------------------------- checks
    def check_protocol(self, protocol: Protocol) -> None:
        """Raise ProtocolError when this model cannot use ``protocol``."""
        if self.requires_tr and not protocol.has_tr:
            raise ProtocolError(f"{self.label} needs TR for every measurement, which this protocol lacks: "
                                + missing_tr_advice(protocol))

    def _params(self, params: Mapping, names) -> list:
        missing = [n for n in names if n not in params]
        if missing:
            raise KeyError(f"{self.name}.signal needs parameter(s) {', '.join(missing)}; got {', '.join(params)}")
        return [params[n] for n in names]

    # ---------------------------------------------------------------- maps
    def derived_maps(self, params: Mapping) -> dict:
        """Every map from estimated parameters: fractions clipped at 0 and renormalised when the estimated ones
        sum above 1, the dependent fraction as 1 − their sum, cellularity = f_ic / R³ (µm⁻³, R ≥ 0.01 µm).

        Works on NumPy arrays and torch tensors. Returns a dict in :attr:`map_names` order (plus any other keys of
        ``params`` that are not maps, such as S0, kept at the end).
        """
        is_torch = any(isinstance(v, torch.Tensor) for v in params.values())
        lib = torch if is_torch else np
        clip0 = (lambda x: torch.clamp(x, min=0.0)) if is_torch else (lambda x: np.clip(x, 0.0, None))
        fr = {k: clip0(params[k] * 1.0) for k in self.estimated_fractions}
        total = sum(fr.values())
        over = total > 1.0
        scale = lib.where(over, 1.0 / lib.where(over, total, 1.0 + 0 * total), 1.0 + 0 * total)
        fr = {k: v * scale for k, v in fr.items()}
        fr[self.dependent_fraction] = clip0(1.0 - sum(fr.values()))
        out = {}
        radius = params["R"]
        for m in self.maps:
            if m.name in fr:
                out[m.name] = fr[m.name]
            elif m.name == "cellularity":
                r = clip0(radius - R_MIN_CELLULARITY) + R_MIN_CELLULARITY
                out[m.name] = fr["f_ic"] / r**3
            else:
                out[m.name] = params[m.name]
        for k, v in params.items():
            if k not in out:
                out[k] = v
        return out

    # ---------------------------------------------------------------- forward
    def sphere_table(self, protocol: Protocol, r_range, nodes: int = SPHERE_TABLE_NODES) -> SphereTable:
        """This model's intracellular sphere for ``protocol``, tabulated over ``r_range`` (µm): pass it as
        ``signal(..., sphere=table)`` to replace the exact series (< 2e-12 of it inside the range)."""
        return SphereTable(protocol.b, protocol.small_delta, protocol.big_delta, self.fixed_value("D_ic"), r_range,
                           nodes)

    def _sphere(self, sphere, b, sd, bd, radius):
        """E_ic for radii (..., 1): the exact series, or ``sphere(radius)`` when a provider (a SphereTable) is given."""
        if sphere is None:
            return sphere_gpd(b, sd, bd, radius, self.fixed_value("D_ic"))
        return sphere(radius)

    # ---------------------------------------------------------------- to implement
    def signal(self, params: Mapping, protocol: Protocol, *, sphere=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def normalise(self, signals, protocol: Protocol):  # pragma: no cover - abstract
        raise NotImplementedError


def _column(v, like=None):
    """Parameter array (...,) → (..., 1) so it broadcasts against the protocol's measurements."""
    if isinstance(v, torch.Tensor):
        return v.unsqueeze(-1)
    if isinstance(like, torch.Tensor):
        return torch.as_tensor(v, dtype=like.dtype, device=like.device).unsqueeze(-1)
    return np.asarray(v, dtype=float)[..., None]


def _protocol_arrays(protocol: Protocol, like):
    """b, δ, Δ, TE, TR as tensors on ``like``'s device and dtype, or as NumPy float64."""
    keys = ("b", "small_delta", "big_delta", "te", "tr")
    if isinstance(like, torch.Tensor):
        return [torch.tensor(np.array(getattr(protocol, k)), dtype=like.dtype, device=like.device) for k in keys]
    return [np.asarray(getattr(protocol, k), dtype=float) for k in keys]


def _first_tensor(values):
    return next((v for v in values if isinstance(v, torch.Tensor)), None)


def _exp(x):
    return torch.exp(x) if isinstance(x, torch.Tensor) else np.exp(x)


class ClassicVerdict(SignalModel):
    """Classic prostate VERDICT: S/S0 = f_ic·E_sphere(R, D_ic) + f_ees·exp(−b D_ees) + f_vasc·E_astro(D_vasc),
    with D_ic = D_ees = 2 and D_vasc = 8 µm²/ms fixed (:attr:`fixed`).

    f_ees = 1 − f_ic − f_vasc. No relaxation terms, so raw signals are normalised per series: each measurement is
    divided by the b = 0 of its own series (same TE and TR).
    """

    name = "verdict"
    label = "classic VERDICT"
    parameters = (
        _fraction("f_ic", "intracellular volume fraction"),
        _fraction("f_vasc", "vascular volume fraction"),
        _R,
    )
    fixed = (_D_IC, FixedParameter("D_ees", "µm²/ms", 2.0, "EES diffusivity (fitted by rVERDICT)"), _D_VASC)
    maps = _maps(*_VOLUME_MAPS)
    estimated_fractions = ("f_ic", "f_vasc")
    dependent_fraction = "f_ees"

    def signal(self, params: Mapping, protocol: Protocol, *, sphere=None):
        """S/S0 for every measurement: parameter arrays of shape (...,) → signals (..., n_measurements).

        ``sphere``: optional provider of E_ic for radii (..., 1), e.g. :meth:`sphere_table` (default: the exact
        series).
        """
        f_ic, f_vasc, radius = self._params(params, ("f_ic", "f_vasc", "R"))
        like = _first_tensor((f_ic, f_vasc, radius))
        b, sd, bd, _, _ = _protocol_arrays(protocol, like)
        f_ic, f_vasc, radius = (_column(v, like) for v in (f_ic, f_vasc, radius))
        f_ees = 1.0 - f_ic - f_vasc
        e_ic = self._sphere(sphere, b, sd, bd, radius)
        e_ees = ball(b, self.fixed_value("D_ees"))
        e_vasc = astrosticks(b, self.fixed_value("D_vasc"))
        return f_ic * e_ic + f_ees * e_ees + f_vasc * e_vasc

    def normalise(self, signals, protocol: Protocol):
        """Divide each measurement by the mean b = 0 of its own series (b = 0 entries become 1).

        Raises ValueError for NaN or non-positive b = 0 values.
        """
        refs = protocol.b0_reference()
        s = signals
        lib = torch if isinstance(s, torch.Tensor) else np
        if s.shape[-1] != len(protocol):
            raise InputError(f"signals have {s.shape[-1]} measurements but the protocol has {len(protocol)}")
        b0_groups = {tuple(r.tolist()) for r in refs}
        denoms = {}
        for g in b0_groups:
            idx = list(g)
            d = s[..., idx].mean(-1) if len(idx) > 1 else s[..., idx[0]]
            bad = ~(d > 0)
            n_bad = int(bad.sum())
            if n_bad:
                raise InputError(f"{n_bad} signal(s) have a NaN or non-positive b = 0 (measurement {idx[0]}); "
                                 "per-series b = 0 normalisation cannot divide by it")
            denoms[g] = d
        cols = [s[..., i] / denoms[tuple(refs[i].tolist())] for i in range(len(protocol))]
        return lib.stack(cols, -1) if lib is torch else np.stack(cols, axis=-1)


class RelaxationVerdict(SignalModel):
    """rVERDICT (Palombo et al., Sci Rep 2023):

    S = S0 (1 − e^{−TR/T1}) [f_vasc e^{−TE/T2_vasc_ees} E_astro(D_vasc) + f_ic e^{−TE/T2_ic} E_sphere(R, D_ic)
                             + f_ees e^{−TE/T2_vasc_ees} exp(−b D_ees)],   f_vasc = 1 − f_ic − f_ees,

    with D_ic = 2 and D_vasc = 8 µm²/ms fixed (:attr:`fixed`).

    Raw signals are normalised by each voxel's maximum, which keeps the TE/TR contrast between series (and removes
    S0, which is therefore a nuisance parameter the networks do not estimate).
    """

    name = "rverdict"
    label = "relaxation-VERDICT (rVERDICT)"
    requires_tr = True
    parameters = (
        _fraction("f_ic", "intracellular volume fraction"),
        _fraction("f_ees", "extracellular-extravascular volume fraction"),
        _R,
        ParameterSpec("T2_vasc_ees", "ms", 150.0, 800.0, 1.0, 5000.0, "T2 of vascular and EES water"),
        ParameterSpec("T2_ic", "ms", 1.0, 150.0, 0.1, 5000.0, "T2 of intracellular water"),
        ParameterSpec("T1", "ms", 10.0, 4000.0, 1.0, 10000.0, "T1 (shared by all compartments)"),
        ParameterSpec("D_ees", "µm²/ms", 0.5, 3.0, 0.01, 3.5, "EES diffusivity"),
        ParameterSpec("S0", "a.u.", 0.1, 1.0, 0.0, np.inf, "signal at b = 0, TE = 0, TR = ∞", nuisance=True),
    )
    fixed = (_D_IC, _D_VASC)
    maps = _maps(*_VOLUME_MAPS, "D_ees", "T1", "T2_vasc_ees", "T2_ic")
    estimated_fractions = ("f_ic", "f_ees")
    dependent_fraction = "f_vasc"

    def signal(self, params: Mapping, protocol: Protocol, *, sphere=None):
        """S for every measurement: parameter arrays of shape (...,) → signals (..., n_measurements).

        ``sphere``: optional provider of E_ic for radii (..., 1), e.g. :meth:`sphere_table` (default: the exact
        series).
        """
        self.check_protocol(protocol)
        names = ("f_ic", "f_ees", "R", "T2_vasc_ees", "T2_ic", "T1", "D_ees", "S0")
        values = self._params(params, names)
        like = _first_tensor(values)
        b, sd, bd, te, tr = _protocol_arrays(protocol, like)
        f_ic, f_ees, radius, t2ve, t2ic, t1, d_ees, s0 = (_column(v, like) for v in values)
        f_vasc = 1.0 - f_ic - f_ees
        e_ic = self._sphere(sphere, b, sd, bd, radius)
        e_ees = ball(b, d_ees)
        e_vasc = astrosticks(b, self.fixed_value("D_vasc"))
        t2_ve = _exp(-te / t2ve)
        t2_ic = _exp(-te / t2ic)
        t1w = 1.0 - _exp(-tr / t1)
        return s0 * t1w * (f_vasc * t2_ve * e_vasc + f_ic * t2_ic * e_ic + f_ees * t2_ve * e_ees)

    def normalise(self, signals, protocol: Protocol):
        """Divide each voxel by its maximum over measurements. Raises ValueError for NaN or non-positive maxima."""
        if signals.shape[-1] != len(protocol):
            raise InputError(f"signals have {signals.shape[-1]} measurements but the protocol has {len(protocol)}")
        if isinstance(signals, torch.Tensor):
            m = signals.amax(-1, keepdim=True)
            bad = int((~(m > 0)).sum()) + int(torch.isnan(signals).any(-1).sum())
        else:
            m = signals.max(-1, keepdims=True)
            bad = int((~(m > 0)).sum()) + int(np.isnan(signals).any(-1).sum())
        if bad:
            raise InputError(f"{bad} signal(s) contain NaN or have no positive value; they cannot be normalised")
        return signals / m


_MODELS: dict[str, SignalModel] = {m.name: m for m in (ClassicVerdict(), RelaxationVerdict())}
_ALIASES = {"classic": "verdict", "classic-verdict": "verdict", "r-verdict": "rverdict", "relaxation-verdict": "rverdict"}


def available_models() -> tuple[str, ...]:
    return tuple(_MODELS)


def get_model(name) -> SignalModel:
    """``get_model("verdict")`` or ``get_model("rverdict")`` (a SignalModel passes through)."""
    if isinstance(name, SignalModel):
        return name
    key = str(name).lower().strip()
    key = _ALIASES.get(key, key)
    if key not in _MODELS:
        raise InputError(f"unknown model '{name}'; choose one of: {', '.join(_MODELS)}")
    return _MODELS[key]
