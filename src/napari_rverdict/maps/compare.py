"""Comparing two sets of maps (e.g. a network against the NLLS fit, or against a phantom's truth) and ROI statistics.

* :func:`compare_maps` — per map (and per label), the number of voxels, MSE and MAPE = mean |a − b| / range of
  the map, laid out like the paper's Tables 1–3 (maps as rows, regions as column groups).
* :func:`roi_statistics` — per label and map: voxel count, mean, sd, median and unit (and the mean of
  ``<map>_sd`` when uncertainty maps are present).

Both accept maps as {name: 3D array} or as a directory of NIfTI maps (:func:`.io.load_maps`), and labels as an
integer array or a NIfTI path. Both tables have ``.rows`` (list of dicts), ``.format_table()`` and ``.to_csv()``.
No napari or Qt here.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_rverdict.errors import InputError
from napari_rverdict.physics.models import available_models, get_model

SD_SUFFIX = "_sd"


# ---------------------------------------------------------------------- inputs
def _as_maps(maps, what: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """({name: float64 array}, {name: unit}) from a dict of arrays or a directory of NIfTI maps."""
    if isinstance(maps, (str, Path)):
        from napari_rverdict.data.map_files import load_maps

        loaded, units = load_maps(maps, with_units=True)
        return {k: np.asarray(v, dtype=np.float64) for k, v in loaded.items()}, dict(units)
    if not isinstance(maps, dict) or not maps:
        raise InputError(f"{what} must be a non-empty dict of arrays or a directory of NIfTI maps")
    out, shape = {}, None
    for k, v in maps.items():
        a = np.asarray(v, dtype=np.float64)
        if shape is not None and a.shape != shape:
            raise InputError(f"{what}: map '{k}' has shape {a.shape}, the others {shape}")
        shape = a.shape
        out[str(k)] = a
    return out, {}


def _shape(maps: dict) -> tuple:
    return next(iter(maps.values())).shape


def _as_labels(labels, shape) -> np.ndarray:
    if isinstance(labels, (str, Path)):
        from napari_rverdict.data.label_files import load_labels

        lab = load_labels(labels)
    else:
        lab = np.asarray(labels)
        if lab.dtype == bool:
            lab = lab.astype(np.int32)
        if not np.issubdtype(lab.dtype, np.integer):
            if not np.all(np.isfinite(lab)) or not np.allclose(lab, np.round(lab)):
                raise InputError("labels must be whole numbers")
            lab = np.round(lab).astype(np.int32)
    if lab.shape != tuple(shape):
        raise InputError(f"the labels have shape {lab.shape} but the maps have shape {tuple(shape)}")
    return lab


def _as_mask(mask, shape) -> np.ndarray | None:
    if mask is None:
        return None
    if isinstance(mask, (str, Path)):
        from napari_rverdict.data.label_files import load_mask

        m = load_mask(mask)
    else:
        m = np.asarray(mask)
        m = m if m.dtype == bool else np.nan_to_num(m.astype(np.float64)) != 0
    if m.shape != tuple(shape):
        raise InputError(f"the mask has shape {m.shape} but the maps have shape {tuple(shape)}")
    return m


def _spec_for(name: str, model=None):
    """(unit, (low, high) range) of a map: the model's ParameterSpec range for parameters, (0, 1) for fractions,
    the MapSpec display range otherwise; (None) range when no model knows the map."""
    models = [get_model(model)] if model is not None else [get_model(m) for m in available_models()]
    base = name[: -len(SD_SUFFIX)] if name.endswith(SD_SUFFIX) else name
    for m in models:
        if base in m.map_names or base in m.parameter_names:
            unit = m.map_spec(base).unit if base in m.map_names else m.spec(base).unit
            if name != base:  # a standard deviation map: its unit, no fixed range
                return unit, None
            if base in m.parameter_names and not m.spec(base).is_fraction:
                s = m.spec(base)
                return unit, (s.low, s.high)
            if base.startswith("f_"):
                return unit, (0.0, 1.0)
            return unit, tuple(m.map_spec(base).display)
    return "", None


def _ordered(names: list[str], model=None) -> list[str]:
    """Maps in the model's order (``model.map_names``; any known model when None), unknown ones after, as given."""
    models = [get_model(model)] if model is not None else [get_model(m) for m in available_models()]
    order = []
    for m in models:
        order += [n for n in m.map_names if n not in order]

    def key(name):
        base = name[: -len(SD_SUFFIX)] if name.endswith(SD_SUFFIX) else name
        return (order.index(base) if base in order else len(order), name.endswith(SD_SUFFIX))

    return sorted(names, key=key)  # stable: unknown maps keep their order


def _label_names(labels: np.ndarray, label_names) -> dict[int, str]:
    names = {}
    given = {int(k): str(v) for k, v in (label_names or {}).items()}
    for v in np.unique(labels):
        v = int(v)
        if v != 0:
            names[v] = given.get(v, f"label {v}")
    return names


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return f"{x:.4g}"


def _write_csv(rows: list[dict], columns: list[str], path, overwrite: bool) -> Path:
    from napari_rverdict.files import atomic_path, check_output_files

    path = Path(path)
    check_output_files([path], overwrite=overwrite, what="CSV file")
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return path


# ---------------------------------------------------------------------- comparison
@dataclass
class ComparisonTable:
    """Per map and region: n voxels, MSE (unit²) and MAPE (mean |a − b| / range, a fraction).

    rows : dicts with keys region, label (None for the whole mask), map, unit, n, mse, mape, range_low,
    range_high, range_source ("model" or "data").
    """

    rows: list[dict]
    name_a: str = "A"
    name_b: str = "B"
    columns: tuple = ("region", "label", "map", "unit", "n", "mse", "mape", "range_low", "range_high",
                      "range_source")

    @property
    def regions(self) -> list[str]:
        return list(dict.fromkeys(r["region"] for r in self.rows))

    @property
    def maps(self) -> list[str]:
        return list(dict.fromkeys(r["map"] for r in self.rows))

    def get(self, map_name: str, region: str = "all") -> dict:
        for r in self.rows:
            if r["map"] == map_name and r["region"] == region:
                return r
        raise KeyError(f"no row for map '{map_name}' in region '{region}'")

    def mean_mape(self, region: str = "all") -> float:
        vals = [r["mape"] for r in self.rows if r["region"] == region and np.isfinite(r["mape"])]
        return float(np.mean(vals)) if vals else float("nan")

    def format_table(self) -> str:
        """Maps as rows; for each region an (n, MSE, MAPE) column group; the mean MAPE per region last."""
        regions, maps = self.regions, self.maps
        w0 = max(12, *(len(m) for m in maps)) + 2
        head1 = " " * w0 + "".join(f"{r[:27]:^30}" for r in regions)
        head2 = f"{'map':<{w0}}" + "".join(f"{'n':>8}{'MSE':>12}{'MAPE':>10}" for _ in regions)
        lines = [f"{self.name_a} vs {self.name_b}: MSE in the map's unit², MAPE = mean |a − b| / range", head1,
                 head2, "-" * len(head2)]
        index = {(r["map"], r["region"]): r for r in self.rows}
        for m in maps:
            cells = ""
            for reg in regions:
                r = index.get((m, reg))
                cells += (f"{r['n']:>8d}{_fmt(r['mse']):>12}{_fmt(r['mape']):>10}" if r
                          else f"{'':>8}{'':>12}{'':>10}")
            lines.append(f"{m:<{w0}}" + cells)
        lines.append(f"{'mean MAPE':<{w0}}" + "".join(f"{'':>8}{'':>12}{_fmt(self.mean_mape(reg)):>10}"
                                                     for reg in regions))
        return "\n".join(lines)

    def to_csv(self, path, *, overwrite: bool = False) -> Path:
        """Write the rows as CSV (atomically); an existing file is refused (InputError) unless ``overwrite=True``."""
        return _write_csv(self.rows, list(self.columns), path, overwrite)


def compare_maps(maps_a, maps_b, mask=None, labels=None, model=None, *, label_names=None,
                 names=("A", "B")) -> ComparisonTable:
    """MSE and MAPE between two sets of maps, per map, over the mask and (given labels) per label.

    Parameters
    ----------
    maps_a, maps_b : {name: 3D array} or directories of NIfTI maps; the maps both have are compared (in
        ``maps_a``'s order). Raises ValueError when they share none or their shapes differ.
    mask : 3D bool array or NIfTI path; None → the voxels where both sets have a finite value in some map (the
        non-zero ones when neither set has a NaN: maps written with 0 outside).
    labels : integer 3D array or NIfTI path; each non-zero label becomes a region (restricted to the mask).
    model : a model name / SignalModel whose ranges give each map's range for MAPE: a parameter's default training
        range, (0, 1) for fractions, the MapSpec display range otherwise (e.g. cellularity). Maps no model knows
        use the range of both sets' values in the region (``range_source = "data"``). None: any known model.
    label_names : {label: name} for the regions (default "label N").

    Voxels where either map is NaN / inf are skipped for that map (n counts the finite voxels only).
    """
    a, units_a = _as_maps(maps_a, "maps_a")
    b, units_b = _as_maps(maps_b, "maps_b")
    if _shape(a) != _shape(b):
        raise InputError(f"the two sets of maps differ in shape: {_shape(a)} vs {_shape(b)}")
    common = _ordered([k for k in a if k in b], model)
    if not common:
        raise InputError(f"the two sets of maps share no map name ({', '.join(a)} vs {', '.join(b)})")
    shape = _shape(a)
    m = _as_mask(mask, shape)
    if m is None:
        # maps written with NaN outside: the voxels finite in both; older maps with 0 outside: the non-zero ones
        fin_a = np.zeros(shape, bool)
        fin_b = np.zeros(shape, bool)
        nz_a = np.zeros(shape, bool)
        nz_b = np.zeros(shape, bool)
        for k in common:
            fin_a |= np.isfinite(a[k])
            fin_b |= np.isfinite(b[k])
            with np.errstate(invalid="ignore"):
                nz_a |= np.isfinite(a[k]) & (a[k] != 0)
                nz_b |= np.isfinite(b[k]) & (b[k] != 0)
        m = fin_a & fin_b if not (fin_a.all() and fin_b.all()) else nz_a & nz_b
    regions: list[tuple[str, int | None, np.ndarray]] = [("all", None, m)]
    if labels is not None:
        lab = _as_labels(labels, shape)
        for v, nm in _label_names(lab, label_names).items():
            regions.append((nm, v, m & (lab == v)))
    rows = []
    for k in common:
        unit, rng = _spec_for(k, model)
        unit = units_a.get(k) or units_b.get(k) or unit
        for reg_name, v, sel in regions:
            sel = sel & np.isfinite(a[k]) & np.isfinite(b[k])
            x, y = a[k][sel], b[k][sel]
            n = int(x.size)
            if rng is not None:
                lo, hi, src = float(rng[0]), float(rng[1]), "model"
            elif n:
                lo, hi, src = float(min(x.min(), y.min())), float(max(x.max(), y.max())), "data"
            else:
                lo = hi = float("nan")
                src = "data"
            if n:
                diff = x - y
                mse = float(np.mean(diff**2))
                width = hi - lo
                mape = float(np.mean(np.abs(diff)) / width) if width > 0 else float("nan")
            else:
                mse = mape = float("nan")
            rows.append({"region": reg_name, "label": v, "map": k, "unit": unit, "n": n, "mse": mse,
                         "mape": mape, "range_low": lo, "range_high": hi, "range_source": src})
    return ComparisonTable(rows, str(names[0]), str(names[1]))


# ---------------------------------------------------------------------- ROI statistics
@dataclass
class RoiTable:
    """Per label and map: n voxels, mean, sd (ddof = 0), median, unit; mean_sd when ``<map>_sd`` is present.

    rows : dicts with keys label, name, map, unit, n, mean, sd, median, mean_sd (None when not available).
    """

    rows: list[dict]
    columns: tuple = ("label", "name", "map", "unit", "n", "mean", "sd", "median", "mean_sd")
    extra: dict = field(default_factory=dict)

    def get(self, map_name: str, label) -> dict:
        for r in self.rows:
            if r["map"] == map_name and (r["label"] == label or r["name"] == label):
                return r
        raise KeyError(f"no row for map '{map_name}' and label {label!r}")

    def format_table(self) -> str:
        has_sd = any(r["mean_sd"] is not None for r in self.rows)
        w_name = max(8, *(len(r["name"]) for r in self.rows)) + 2 if self.rows else 10
        w_map = max(6, *(len(r["map"]) for r in self.rows)) + 2 if self.rows else 8
        head = (f"{'region':<{w_name}}{'map':<{w_map}}{'unit':<9}{'n':>7}{'mean':>12}{'sd':>12}{'median':>12}"
                + (f"{'mean sd':>12}" if has_sd else ""))
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r['name']:<{w_name}}{r['map']:<{w_map}}{r['unit']:<9}{r['n']:>7d}{_fmt(r['mean']):>12}"
                         f"{_fmt(r['sd']):>12}{_fmt(r['median']):>12}"
                         + (f"{_fmt(r['mean_sd']):>12}" if has_sd else ""))
        return "\n".join(lines)

    def to_csv(self, path, *, overwrite: bool = False) -> Path:
        """Write the rows as CSV (atomically); an existing file is refused (InputError) unless ``overwrite=True``."""
        return _write_csv(self.rows, list(self.columns), path, overwrite)


def roi_statistics(maps, labels, label_names=None, *, mask=None) -> RoiTable:
    """Statistics of every map inside every non-zero label.

    Parameters
    ----------
    maps : {name: 3D array} or a directory of NIfTI maps. ``<map>_sd`` maps are not listed as maps of their own
        but give the ``mean_sd`` column of ``<map>`` (the mean per-voxel uncertainty in the region).
    labels : integer 3D array or NIfTI path on the maps' grid.
    label_names : {label value: name} (default "label N").  mask : optional; restricts every label to it.

    NaN voxels of a map are skipped for that map; a label with no voxel gives n = 0 and NaN statistics.
    """
    mp, units = _as_maps(maps, "maps")
    shape = _shape(mp)
    lab = _as_labels(labels, shape)
    m = _as_mask(mask, shape)
    names = _label_names(lab, label_names)
    if not names:
        raise InputError("the label image has no non-zero label")
    main = _ordered([k for k in mp if not (k.endswith(SD_SUFFIX) and k[: -len(SD_SUFFIX)] in mp)])
    rows = []
    for v, nm in names.items():
        sel = lab == v
        if m is not None:
            sel &= m
        for k in main:
            unit = units.get(k) or _spec_for(k)[0]
            vals = mp[k][sel]
            vals = vals[np.isfinite(vals)]
            n = int(vals.size)
            stats = (float(vals.mean()), float(vals.std()), float(np.median(vals))) if n else (np.nan,) * 3
            mean_sd = None
            if k + SD_SUFFIX in mp:
                sd_vals = mp[k + SD_SUFFIX][sel]
                sd_vals = sd_vals[np.isfinite(sd_vals)]
                mean_sd = float(sd_vals.mean()) if sd_vals.size else float("nan")
            rows.append({"label": v, "name": nm, "map": k, "unit": unit, "n": n, "mean": stats[0], "sd": stats[1],
                         "median": stats[2], "mean_sd": mean_sd})
    return RoiTable(rows)


__all__ = ["ComparisonTable", "RoiTable", "compare_maps", "roi_statistics"]
