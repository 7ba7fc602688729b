"""The acquisition protocol: per-measurement b, δ, Δ, TE, TR (and optional gradient directions).

Units: b in s/mm²; δ (``small_delta``, pulse duration), Δ (``big_delta``, pulse separation), TE and TR in ms.
TR may be unknown (NaN): fine for classic VERDICT, an error for rVERDICT. The INNOVATE preset, series and shells,
direction averaging, and matching another protocol's measurements by their settings live here; file formats live
in :mod:`napari_rverdict.physics.protocol_files`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from napari_rverdict.errors import InputError

GAMMA = 2.6751525e8  # proton gyromagnetic ratio, rad s⁻¹ T⁻¹
B0_THRESHOLD = 50.0  # s/mm²: measurements below this count as b = 0 when grouping and matching
# each measurement's settings: attribute → (its name in messages, its unit)
SETTINGS = {"b": ("b", "s/mm²"), "small_delta": ("δ", "ms"), "big_delta": ("Δ", "ms"), "te": ("TE", "ms"),
            "tr": ("TR", "ms")}
# how a data protocol's differences from an estimator's (match_to's notes) are warned about, wherever data are
# matched to a model (maps.voxels, Bundle.predict_signals); the Maps dock recognises the warning by it
PROTOCOL_DIFFERS = "data protocol differs from the model's"
B_MAX_PLAUSIBLE = 100_000.0  # s/mm²: above any diffusion MRI (clinical ≤ 10⁴, preclinical ≤ 5 × 10⁴); s/m² if larger

# INNOVATE (Philips Achieva 3 T, PGSE): b, δ, Δ, TE, TR per series, in acquisition order of the rVERDICT examples.
_INNOVATE_SERIES = (
    # b (s/mm²), δ (ms), Δ (ms), TE (ms), TR (ms)
    (90.0, 3.9, 23.8, 50.0, 2482.0),
    (500.0, 11.4, 31.3, 65.0, 2482.0),
    (1500.0, 23.9, 43.8, 90.0, 2482.0),
    (2000.0, 14.4, 34.3, 71.0, 3945.0),
    (3000.0, 18.9, 38.8, 80.0, 3349.0),
)
_INNOVATE_DIRECTIONS = np.array(
    [[1 / 3, -2 / 3, 2 / 3], [-2 / 3, 1 / 3, 2 / 3], [-2 / 3, -2 / 3, -1 / 3]], dtype=float
)


class ProtocolError(InputError):
    """A protocol that cannot be right, or one that cannot be matched to another."""


@lru_cache(maxsize=64)
def spread_directions(n: int) -> np.ndarray:
    """``n`` distinct unit gradient directions, well spread over the sphere (a direction and its opposite count as
    one): x, y, z for up to 3; otherwise points of a golden-angle spiral on the half sphere pushed apart by
    antipodally symmetric electrostatic repulsion (deterministic; 6 give the icosahedron's 63.4° apart)."""
    if n < 1:
        raise ProtocolError(f"need at least one direction, got {n}")
    if n <= 3:
        out = np.eye(3)[:n]
    else:
        i = np.arange(n) + 0.5
        z = 1.0 - i / n
        phi = i * np.pi * (3.0 - np.sqrt(5.0))
        r = np.sqrt(1.0 - z**2)
        out = np.c_[r * np.cos(phi), r * np.sin(phi), z]
        for _ in range(300):
            force = np.zeros_like(out)
            for sign in (1.0, -1.0):  # repelled by each other direction and by its opposite
                diff = out[:, None, :] - sign * out[None, :, :]
                dist = np.linalg.norm(diff, axis=-1)
                if sign > 0:
                    np.fill_diagonal(dist, np.inf)
                force += (diff / dist[..., None] ** 3).sum(axis=1)
            force -= (force * out).sum(axis=1, keepdims=True) * out  # along the sphere
            out = out + 0.5 * force / n**1.5
            out /= np.linalg.norm(out, axis=1, keepdims=True)
    out = np.array(out, dtype=float)
    out.setflags(write=False)
    return out


def _vec(name: str, values, n: int | None = None) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    if a.ndim == 0 and n is not None:
        a = np.full(n, float(a))
    a = a.reshape(-1) if a.ndim <= 1 else a
    if a.ndim != 1:
        raise ProtocolError(f"{name} must be one value per measurement (1-D), got shape {np.shape(values)}")
    return a


@dataclass(frozen=True, eq=False)
class Protocol:
    """One entry per measurement (volume, or direction-averaged shell).

    Parameters
    ----------
    b : s/mm².  small_delta : δ, gradient pulse duration, ms.  big_delta : Δ, pulse separation, ms.
    te, tr : echo and repetition time, ms (``tr`` may be NaN = unknown).
    directions : optional (n, 3) unit vectors (zero rows allowed where b = 0).
    name : free text describing where it came from.
    n_volumes : how many acquired volumes each measurement averages (default 1 each; a direction-averaged
        protocol counts its shell's volumes: INNOVATE 1 per b = 0, 3 per b > 0). Simulation draws noise per
        acquired volume and averages magnitudes, as :func:`direction_average` does on data.
    """

    b: np.ndarray
    small_delta: np.ndarray
    big_delta: np.ndarray
    te: np.ndarray
    tr: np.ndarray
    directions: np.ndarray | None = None
    name: str = ""
    n_volumes: np.ndarray | None = None

    def __post_init__(self):
        b = _vec("b", self.b)
        n = b.size
        if n == 0:
            raise ProtocolError("a protocol needs at least one measurement")
        arrays = {"b": b}
        for key in ("small_delta", "big_delta", "te", "tr"):
            arr = _vec(key, getattr(self, key), n)
            if arr.size != n:
                raise ProtocolError(f"{key} has {arr.size} values but b has {n}: one value per measurement is needed")
            arrays[key] = arr
        for key in ("b", "small_delta", "big_delta", "te"):
            bad = np.flatnonzero(~np.isfinite(arrays[key]))
            if bad.size:
                raise ProtocolError(f"{key} is NaN or infinite at measurement(s) {bad.tolist()}")
        tr = arrays["tr"]
        if np.isinf(tr).any():
            raise ProtocolError("TR is infinite; use NaN for an unknown TR")
        for key, unit in (("b", "s/mm²"), ("small_delta", "ms"), ("big_delta", "ms"), ("te", "ms"), ("tr", "ms")):
            neg = np.flatnonzero(arrays[key] < 0)
            if neg.size:
                raise ProtocolError(f"{key} is negative at measurement {neg[0]} ({arrays[key][neg[0]]:g} {unit})")
        dw = b >= B0_THRESHOLD
        sd, bd = arrays["small_delta"], arrays["big_delta"]
        bad = np.flatnonzero(dw & (sd <= 0))
        if bad.size:
            raise ProtocolError(f"measurement {bad[0]} has b = {b[bad[0]]:g} s/mm² but δ = {sd[bad[0]]:g} ms; δ must be > 0")
        bad = np.flatnonzero(dw & (sd > bd))
        if bad.size:
            i = bad[0]
            raise ProtocolError(
                f"measurement {i}: δ = {sd[i]:g} ms is longer than Δ = {bd[i]:g} ms (δ is the pulse duration, "
                "Δ the pulse separation; were they swapped?)"
            )
        if (arrays["te"] <= 0).any():
            raise ProtocolError("TE must be > 0 ms for every measurement")
        # Plausibility of units: catches seconds passed where milliseconds are expected.
        if arrays["te"].max() < 1.0:
            raise ProtocolError(f"TE = {arrays['te'].max():g} ms is implausibly short: were seconds given where ms are expected?")
        known_tr = tr[np.isfinite(tr)]
        if known_tr.size and known_tr.min() < 10.0:
            raise ProtocolError(f"TR = {known_tr.min():g} ms is implausibly short: were seconds given where ms are expected?")
        for key, ceiling in (("te", 2000.0), ("small_delta", 2000.0), ("big_delta", 2000.0), ("tr", 100_000.0)):
            top = np.nanmax(arrays[key]) if np.isfinite(arrays[key]).any() else 0.0
            if top > ceiling:
                raise ProtocolError(f"{key} = {top:g} ms is implausibly long: were ms given where seconds are expected?")
        # b in another unit: ms/µm² (×1000 too small: every b would count as b = 0) or s/m² (×10⁶ too large)
        if 0 < b.max() <= B0_THRESHOLD:
            raise ProtocolError(f"largest b = {b.max():g} s/mm² is implausibly small (every measurement would count as "
                                "b = 0): were ms/µm² given where s/mm² are expected? (multiply by 1000)")
        if b.max() > B_MAX_PLAUSIBLE:
            raise ProtocolError(f"largest b = {b.max():g} s/mm² is implausibly large: were s/m² given where s/mm² are "
                                "expected? (divide by 10⁶)")
        dirs = None
        if self.directions is not None:
            dirs = np.asarray(self.directions, dtype=float)
            if dirs.shape != (n, 3):
                raise ProtocolError(f"directions must have shape ({n}, 3), got {dirs.shape}")
            if not np.isfinite(dirs).all():
                raise ProtocolError("directions contain NaN or infinite values")
            norms = np.linalg.norm(dirs, axis=1)
            bad = np.flatnonzero(dw & (np.abs(norms - 1.0) > 1e-3) & (norms > 0))
            if bad.size:
                raise ProtocolError(f"direction of measurement {bad[0]} has norm {norms[bad[0]]:.4f}; unit vectors are expected")
            dirs = dirs.copy()
            dirs.setflags(write=False)
        for key, arr in arrays.items():
            arr = arr.copy()
            arr.setflags(write=False)
            object.__setattr__(self, key, arr)
        object.__setattr__(self, "directions", dirs)
        counts = np.ones(n, dtype=int) if self.n_volumes is None else np.asarray(self.n_volumes).reshape(-1)
        if counts.size != n or not np.all(np.isfinite(counts)) or np.any(counts < 1) or np.any(counts % 1):
            raise ProtocolError(f"n_volumes must be one positive integer per measurement ({n}), got {self.n_volumes!r}")
        counts = counts.astype(int)
        counts.setflags(write=False)
        object.__setattr__(self, "n_volumes", counts)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self.b.size)

    @property
    def n_measurements(self) -> int:
        return len(self)

    @property
    def has_tr(self) -> bool:
        return bool(np.isfinite(self.tr).all())

    @property
    def is_b0(self) -> np.ndarray:
        """Boolean mask of the non-diffusion-weighted measurements (b < 50 s/mm²)."""
        return self.b < B0_THRESHOLD

    @property
    def snr_b0(self) -> np.ndarray:
        """The measurements an SNR "at b = 0" refers to: :attr:`is_b0`, or all of them where there is no b = 0."""
        return self.is_b0 if self.is_b0.any() else np.ones(len(self), dtype=bool)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Protocol) or len(other) != len(self):
            return NotImplemented if not isinstance(other, Protocol) else False
        same = all(
            np.allclose(getattr(self, k), getattr(other, k), rtol=1e-6, atol=1e-9, equal_nan=True)
            for k in ("b", "small_delta", "big_delta", "te", "tr")
        )
        return same

    __hash__ = None  # mutable-free but array-valued: not hashable

    def subset(self, index) -> Protocol:
        """The protocol of the measurements ``index`` (an index array or boolean mask)."""
        idx = np.arange(len(self))[index]
        return Protocol(
            self.b[idx], self.small_delta[idx], self.big_delta[idx], self.te[idx], self.tr[idx],
            None if self.directions is None else self.directions[idx], name=self.name, n_volumes=self.n_volumes[idx],
        )

    def with_tr(self, tr) -> Protocol:
        """A copy with TR (ms, one value or one per measurement) filled in."""
        return Protocol(self.b, self.small_delta, self.big_delta, self.te, _vec("tr", tr, len(self)),
                        self.directions, name=self.name, n_volumes=self.n_volumes)

    def to_dict(self) -> dict:
        """Plain lists (JSON- and ``torch.load(weights_only=True)``-safe)."""
        d = {k: getattr(self, k).tolist() for k in ("b", "small_delta", "big_delta", "te", "tr")}
        d["directions"] = None if self.directions is None else self.directions.tolist()
        d["name"] = self.name
        d["n_volumes"] = self.n_volumes.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Protocol:
        return cls(d["b"], d["small_delta"], d["big_delta"], d["te"], d["tr"], d.get("directions"), name=d.get("name", ""),
                   n_volumes=d.get("n_volumes"))

    def describe(self) -> str:
        """A one-line-per-measurement table in physical units."""
        rows = [f"{'#':>3} {'b s/mm²':>9} {'δ ms':>6} {'Δ ms':>6} {'TE ms':>6} {'TR ms':>7}"]
        for i in range(len(self)):
            rows.append(f"{i:>3} {self.b[i]:>9.1f} {self.small_delta[i]:>6.1f} {self.big_delta[i]:>6.1f} "
                        f"{self.te[i]:>6.1f} {self.tr[i]:>7.0f}")
        return "\n".join(rows)

    def settings_of(self, i: int) -> str:
        """Measurement ``i``'s settings in words (:data:`SETTINGS`): ``b = 1000 s/mm², δ = 23.5 ms, Δ = 31.3 ms,
        TE = 65 ms, TR = 2482 ms`` (no δ, Δ at b = 0; no TR where it is unknown)."""
        shown = [key for key in SETTINGS if not (key in ("small_delta", "big_delta") and self.is_b0[i])
                 and not (key == "tr" and not np.isfinite(self.tr[i]))]
        return ", ".join(f"{SETTINGS[key][0]} = {getattr(self, key)[i]:g} {SETTINGS[key][1]}" for key in shown)

    # ------------------------------------------------------------------ series
    def series_ids(self) -> np.ndarray:
        """An integer per measurement naming its series: measurements sharing TE and TR (to 0.5 ms).

        Each series of the INNOVATE acquisition has its own b = 0, which carries that series' T2 and T1 weighting.
        """
        keys = np.stack([np.round(self.te * 2), np.where(np.isnan(self.tr), -1, np.round(self.tr * 2))], axis=1)
        _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        # renumber by first appearance so series ids follow acquisition order
        order = np.argsort(np.argsort(first))
        return order[inverse.reshape(-1)]

    def b0_reference(self) -> list[np.ndarray]:
        """For each measurement, the indices of the b = 0 measurements of its own series.

        Raises ProtocolError naming the measurements whose series has no b = 0.
        """
        sid = self.series_ids()
        refs = []
        missing = []
        for i in range(len(self)):
            idx = np.flatnonzero((sid == sid[i]) & self.is_b0)
            if idx.size == 0:
                missing.append(i)
            refs.append(idx)
        if missing:
            i = missing[0]
            raise ProtocolError(
                f"measurement {i} (b = {self.b[i]:g} s/mm², TE = {self.te[i]:g} ms, TR = {self.tr[i]:g} ms) has no "
                f"b = 0 in its series (same TE and TR); per-series normalisation needs one ({len(missing)} such)"
            )
        return refs

    # ------------------------------------------------------------------ direction averaging
    def shells(self) -> list[np.ndarray]:
        """Groups of measurements that differ only in gradient direction, in order of first appearance."""
        keys = np.stack([np.round(self.b / 5.0), np.round(self.small_delta * 10), np.round(self.big_delta * 10),
                         np.round(self.te * 2), np.where(np.isnan(self.tr), -1, np.round(self.tr * 2))], axis=1)
        _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        groups = [np.flatnonzero(inverse == g) for g in np.argsort(first)]
        return groups

    def direction_averaged(self) -> Protocol:
        """The protocol of the direction-averaged measurements (one per shell; b, timings averaged; ``n_volumes``
        summed: how many acquired volumes each average holds)."""
        groups = self.shells()
        avg = lambda a: np.array([a[g].mean() for g in groups])  # noqa: E731
        return Protocol(avg(self.b), avg(self.small_delta), avg(self.big_delta), avg(self.te), avg(self.tr),
                        None, name=(self.name + " (direction-averaged)").strip(),
                        n_volumes=[int(self.n_volumes[g].sum()) for g in groups])

    def acquired_volumes(self) -> Protocol:
        """The protocol of the acquired volumes: each measurement repeated ``n_volumes`` times, in order (``n_volumes``
        1 each), each volume with a gradient direction: the zero vector where b = 0; a measurement of one volume
        keeps its own direction (x where it has none); the volumes of a measurement averaging n get the n distinct
        directions of :func:`spread_directions`. What a ``.bval``/``.bvec`` or scheme file describes; the inverse of
        :meth:`direction_averaged` for measurements that differ in their settings."""
        index = np.repeat(np.arange(len(self)), self.n_volumes)
        dirs = np.zeros((index.size, 3))
        start = 0
        for i, n in enumerate(self.n_volumes):
            if self.b[i] > 0:
                if n > 1:
                    dirs[start:start + n] = spread_directions(int(n))
                elif self.directions is not None:
                    dirs[start] = self.directions[i]
                else:
                    dirs[start] = (1.0, 0.0, 0.0)
            start += n
        return Protocol(self.b[index], self.small_delta[index], self.big_delta[index], self.te[index],
                        self.tr[index], dirs, name=self.name)

    # ------------------------------------------------------------------ presets
    @classmethod
    def innovate(cls, direction_averaged: bool = True) -> Protocol:
        """The INNOVATE VERDICT acquisition (Philips Achieva 3 T, PGSE; PHYSICS.md).

        ``direction_averaged=True``: 10 measurements b0, 90, b0, 500, b0, 1500, b0, 2000, b0, 3000 s/mm², each b0
        carrying its series' δ, Δ, TE, TR. ``False``: the 20 acquired volumes (b0 + 3 directions per series).
        """
        rows, dirs, counts = [], [], []
        for b, sd, bd, te, tr in _INNOVATE_SERIES:
            rows.append((0.0, sd, bd, te, tr))
            dirs.append(np.zeros(3))
            counts.append(1)
            if direction_averaged:
                rows.append((b, sd, bd, te, tr))
                counts.append(len(_INNOVATE_DIRECTIONS))
            else:
                for d in _INNOVATE_DIRECTIONS:
                    rows.append((b, sd, bd, te, tr))
                    dirs.append(d)
                    counts.append(1)
        a = np.array(rows)
        name = "INNOVATE" + (" (direction-averaged)" if direction_averaged else "")
        return cls(a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4],
                   None if direction_averaged else np.array(dirs), name=name, n_volumes=counts)

    # ------------------------------------------------------------------ matching
    def match_to(self, reference: Protocol, rtol: float = 0.05, atol_ms: float = 1.0, *,
                 use_tr: bool = True) -> tuple[np.ndarray, list[str]]:
        """Find, for each measurement of ``reference``, the measurement of ``self`` acquired with its settings.

        Returns ``(index, notes)``: ``data[..., index]`` puts data acquired with ``self`` into the reference's order;
        ``notes`` lists what differs (e.g. ``b = 2006.4 where 2000 is expected``). Data with more measurements than
        the reference (an extra shell or series) use the matching ones; a note names those left out. Measurements
        match when b, δ, Δ, TE agree within ``rtol`` (or ``atol_ms`` for times; b = 0 matches b = 0) and TR agrees
        where both are known. Raises ProtocolError when no one-to-one matching exists, naming the setting(s) in which
        the nearest measurement of the data differs (e.g. ``TR 3000 ms vs the model's 2482 ms``).

        ``use_tr=False`` is for a model without T1 weighting that divides each series by its own b = 0 (classic
        VERDICT): TR cannot change its signal, so a TR that differs does not stop a match (one note says it differs,
        or that measurements the reference puts in one series have different TRs in the data); TR only breaks ties.
        TE still has to agree: it is what tells the b = 0 of one series from another's (their δ and Δ are not
        compared), and the compartments' T2 weighting, which the per-series ratio keeps, changes with it.
        """
        from scipy.optimize import linear_sum_assignment

        if len(self) < len(reference):
            raise ProtocolError(
                f"the data has {len(self)} measurements but the model's protocol has {len(reference)}"
            )
        n = len(reference)
        cost = np.zeros((n, len(self)))  # reference × data
        feasible = np.ones((n, len(self)), dtype=bool)
        failing = {}  # setting → (reference × data) bool: the pair differs in it beyond tolerance

        def rel(a, b, atol):
            d = np.abs(a[:, None] - b[None, :])
            return d / np.maximum(np.maximum(np.abs(b[None, :]), atol / rtol), 1e-12)

        rb0, sb0 = reference.is_b0, self.is_b0
        feasible &= rb0[:, None] == sb0[None, :]
        rb = rel(reference.b, self.b, B0_THRESHOLD * rtol)
        dw_pair = ~rb0[:, None] & ~sb0[None, :]
        failing["b"] = dw_pair & (rb > rtol)
        cost += np.where(dw_pair, rb, 0.0)
        for key in ("te", "small_delta", "big_delta", "tr"):
            r = rel(getattr(reference, key), getattr(self, key), atol_ms)
            if key in ("small_delta", "big_delta"):
                r = np.where(dw_pair, r, 0.0)  # b = 0 volumes' timings are often written as 0
            r = np.nan_to_num(r, nan=0.0)  # unknown TR matches anything; noted below
            if key == "tr" and not use_tr:
                cost += 1e-3 * r  # a tie-break only
                continue
            failing[key] = r > rtol
            cost += r
        for bad_pairs in failing.values():
            feasible &= ~bad_pairs
        big = 1e6
        rows, cols = linear_sum_assignment(np.where(feasible, cost, big))
        if not feasible[rows, cols].all():
            bad = rows[~feasible[rows, cols]][0]
            raise ProtocolError(
                f"no measurement of the data matches the model's measurement {bad} (b = {reference.b[bad]:g} s/mm², "
                f"δ = {reference.small_delta[bad]:g} ms, Δ = {reference.big_delta[bad]:g} ms, "
                f"TE = {reference.te[bad]:g} ms, TR = {reference.tr[bad]:g} ms) within {rtol:.0%}"
                + self._why_unmatched(reference, bad, failing, cost, cols[~feasible[rows, cols]])
            )
        index = np.empty(n, dtype=int)
        index[rows] = cols
        notes = []
        unknown_tr = False
        if np.any(np.diff(index) < 0):
            notes.append("measurements are in a different order than the model's protocol; reordered to match")
        unused = np.setdiff1d(np.arange(len(self)), index)
        if unused.size:
            notes.append(f"the data's measurement{'s' * (unused.size > 1)} "
                         + ", ".join(f"{j} ({self.settings_of(j)})" for j in unused)
                         + (" match none of the model's and are" if unused.size > 1 else
                            " matches none of the model's and is") + " not used")
        keys = [key for key in SETTINGS if use_tr or key != "tr"]
        for i, j in enumerate(index):
            for key in keys:
                unit = SETTINGS[key][1]
                if key in ("small_delta", "big_delta") and reference.is_b0[i]:
                    continue
                want, got = getattr(reference, key)[i], getattr(self, key)[j]
                if np.isnan(got) and not np.isnan(want):
                    unknown_tr = True
                elif np.isfinite(got) and abs(got - want) > max(1e-3 * abs(want), 1e-6):
                    notes.append(f"measurement {i}: {key} = {got:g} {unit} where the model expects {want:g} {unit}")
        if unknown_tr:
            notes.append("TR is unknown in the data; the model's TR values are assumed")
        if not use_tr:
            notes += _tr_ignored_notes(reference, self.tr[index])
        return index, notes

    def _why_unmatched(self, reference: Protocol, i: int, failing: dict, cost: np.ndarray, left: np.ndarray) -> str:
        """Why the reference's measurement ``i`` found no partner: the setting(s) in which the nearest measurement
        of its kind (b = 0 or not) among those the data has ``left`` unmatched differs beyond tolerance (among all of
        its kind when none is left), or that its partners are all taken."""
        kind = self.is_b0 == reference.is_b0[i]
        if not kind.any():
            return f": the data has no {'b = 0' if reference.is_b0[i] else 'diffusion-weighted'} measurement"
        same_kind = np.intersect1d(np.flatnonzero(kind), left)
        if same_kind.size == 0:
            same_kind = np.flatnonzero(kind)
        n_fail = sum(f[i, same_kind].astype(int) for f in failing.values())
        if n_fail.min() == 0:
            return (": the data's measurements that match it are all needed for other measurements of the model "
                    "(fewer of them in the data than in the model's protocol)")
        best = min(range(same_kind.size), key=lambda k: (n_fail[k], cost[i, same_kind[k]]))
        j = int(same_kind[best])
        diffs = []
        for key, f in failing.items():
            if f[i, j]:
                label, unit = SETTINGS[key]
                got, want = getattr(self, key)[j], getattr(reference, key)[i]
                diffs.append(f"{label} {got:g} {unit} vs the model's {want:g} {unit}")
        return f": the nearest, the data's measurement {j}, differs in " + ", ".join(diffs)


def _tr_ignored_notes(reference: Protocol, data_tr: np.ndarray) -> list[str]:
    """Notes for a match that ignores TR (``use_tr=False``): the data's TR (``data_tr``, in the reference's order)
    where it differs from the reference's, and series of the reference whose measurements have different TRs in
    the data (their b = 0 ratio then keeps some T1 weighting)."""
    notes = []
    known = np.isfinite(data_tr) & np.isfinite(reference.tr)
    differ = known & (np.abs(data_tr - reference.tr) > np.maximum(1e-3 * np.abs(reference.tr), 1e-6))
    if differ.any():
        got = ", ".join(f"{v:g}" for v in dict.fromkeys(np.round(data_tr[differ], 1)))
        want = ", ".join(f"{v:g}" for v in dict.fromkeys(np.round(reference.tr[differ], 1)))
        notes.append(f"TR {got} ms in the data where the model's protocol has {want} ms: not used (the model has no "
                     "T1 weighting and divides each series by its own b = 0)")
    sid = reference.series_ids()
    for s in np.unique(sid):
        trs = data_tr[(sid == s) & np.isfinite(data_tr)]
        if trs.size and np.ptp(trs) > max(1e-3 * trs.max(), 1e-6):
            members = np.flatnonzero(sid == s).tolist()
            notes.append(f"measurements {members} form one series of the model (one b = 0) but have TR "
                         f"{', '.join(f'{v:g}' for v in np.unique(trs))} ms in the data: their ratio to that b = 0 "
                         "keeps some T1 weighting")
    return notes


def missing_tr_advice(protocol: Protocol) -> str:
    """Why ``protocol`` has no TR and how to give it, in words that fit where it came from (its ``name``, a file
    name for a file), and for every place it is read from (a file beside the DWI works in the docks too):
    ``"dwi.bval: no dwi.tr file and no dwi.json with a RepetitionTime beside it; put the TR in dwi.tr (seconds, …)
    or give --tr MS (Python: tr=MS)"``."""
    name = (protocol.name or "").split(" (")[0]
    for suffix, why in ((".scheme", "Camino scheme files carry no TR, and there is no {stem}.tr beside it"),
                        (".bval", "no {stem}.tr file and no {stem}.json with a RepetitionTime beside it")):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            return (f"{name}: {why.format(stem=stem)}; put the TR in {stem}.tr (seconds, one value or one per volume) "
                    "or give --tr MS (Python: tr=MS)")
    return (f"{name or 'the protocol given'} has no TR; put it in a <stem>.tr file (seconds) beside the protocol or "
            "give --tr MS (Python: tr=MS)")


# ---------------------------------------------------------------------- direction averaging of data
def averages_directions(protocol: Protocol, reference: Protocol | None = None) -> bool:
    """Whether data acquired with ``protocol`` are direction-averaged before they are matched to ``reference`` (an
    estimator's protocol; None: no reference): when some of its measurements differ only in gradient direction
    (the 20-volume INNOVATE) and it has another length than ``reference`` (a model trained on the direction-resolved
    protocol itself takes the volumes as they are)."""
    resolved = len(protocol.shells()) < len(protocol)
    return resolved and (reference is None or len(protocol) != len(reference))


def direction_average(data, protocol: Protocol, axis: int = -1):
    """Average the volumes of ``data`` that differ only in gradient direction.

    Returns ``(averaged_data, averaged_protocol)``. ``data`` has the measurements along ``axis`` (last by default).
    """
    data = np.asarray(data)
    axis = axis % data.ndim
    if data.shape[axis] != len(protocol):
        raise ProtocolError(f"data has {data.shape[axis]} volumes along axis {axis} but the protocol has {len(protocol)}")
    groups = protocol.shells()
    out = np.stack([np.take(data, g, axis=axis).mean(axis=axis) for g in groups], axis=axis)
    return out, protocol.direction_averaged()
