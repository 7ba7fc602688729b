"""Accuracy of a trained bundle on fresh synthetic data.

* :func:`regression_metrics` — per parameter RMSE, bias, MAE / range (the paper's MAPE) and Pearson r.
* :func:`evaluate` — a fresh held-out synthetic set from the bundle's own model, protocol, ranges and sampler;
  metrics for every estimated parameter (and the dependent fraction), the median √CRLB
  (:func:`napari_rverdict.evaluate.crlb.crlb`, whose module docstring states the conventions) and, on request,
  the Bayes-limit RMSE.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_rverdict.data.noise import describe_noise
from napari_rverdict.errors import InputError
from napari_rverdict.evaluate.crlb import crlb


# ---------------------------------------------------------------------- regression metrics
def regression_metrics(true, pred, ranges) -> dict[str, dict[str, float]]:
    """Per-parameter RMSE, bias (mean pred − true), MAPE = mean |pred − true| / (high − low) and Pearson r.

    ``true`` and ``pred`` are {name: (n,)} dicts (the names of ``pred`` that ``true`` also has are used);
    ``ranges`` {name: (low, high)} gives the range for MAPE. RMSE, bias in the parameter's units.
    """
    out = {}
    for name, p in pred.items():
        if name not in true:
            continue
        t = np.asarray(true[name], dtype=float).ravel()
        p = np.asarray(p, dtype=float).ravel()
        if t.shape != p.shape:
            raise ValueError(f"{name}: true has {t.size} values but pred has {p.size}")
        if t.size == 0:
            raise ValueError(f"{name}: no values to compare")
        if name not in ranges:
            raise InputError(f"no range for '{name}' (ranges has {', '.join(ranges)})")
        lo, hi = ranges[name]
        err = p - t
        if t.std() > 0 and p.std() > 0:
            r = float(np.corrcoef(t, p)[0, 1])
        else:
            r = float("nan")
        out[name] = {"rmse": float(np.sqrt(np.mean(err**2))), "bias": float(err.mean()),
                     "mape": float(np.mean(np.abs(err)) / (hi - lo)), "r": r}
    return out


# ---------------------------------------------------------------------- evaluation
@dataclass
class EvaluationReport:
    """Per-parameter accuracy of a bundle on fresh synthetic data.

    rows : {name: {"unit", "rmse", "bias", "mape", "r", "crlb"}} (crlb = median √CRLB over the CRLB subset),
        plus "bayes" (the Bayes-limit RMSE) when ``evaluate(..., bayes=N)`` computed it.
    true, pred : {name: (n,)} arrays.  n, n_crlb, snr, seed : settings.  description : the bundle's summary line.
    extra : {"bayes": {"n_dictionary", "n_test"}} when the Bayes limit was computed.
    """

    rows: dict[str, dict]
    true: dict[str, np.ndarray]
    pred: dict[str, np.ndarray]
    n: int
    n_crlb: int
    snr: float | tuple | None
    seed: int
    description: str = ""
    extra: dict = field(default_factory=dict)
    noise: str = ""

    @property
    def has_bayes(self) -> bool:
        return "bayes" in self.extra

    def format_table(self) -> str:
        noise = self.noise or describe_noise(self.snr, "peak")
        bayes = self.has_bayes
        head = f"{'parameter':<14}{'unit':<8}{'RMSE':>11}" + (f"{'Bayes RMSE':>12}" if bayes else "") + \
            f"{'bias':>11}{'MAPE':>8}{'r':>7}{'√CRLB':>11}"
        lines = [f"{self.description}", (f"{self.n} fresh synthetic signals at {noise} (seed {self.seed}); "
                 f"√CRLB: median over {self.n_crlb}")]
        if bayes:
            b = self.extra["bayes"]
            lines.append(f"Bayes RMSE: the Bayes limit (posterior mean of a {b['n_dictionary']:,}-entry prior "
                         f"dictionary) on {b['n_test']} other signals of the same distribution")
        lines += [head, "-" * len(head)]
        for name, r in self.rows.items():
            lines.append(f"{name:<14}{r['unit']:<8}{r['rmse']:>11.4g}" + (f"{r['bayes']:>12.4g}" if bayes else "")
                         + f"{r['bias']:>11.3g}{r['mape']:>8.3f}{r['r']:>7.3f}{r['crlb']:>11.4g}")
        mean_mape = np.mean([r["mape"] for r in self.rows.values()])
        lines.append(f"mean MAPE {mean_mape:.3f}")
        return "\n".join(lines)

    def to_csv(self, path, *, overwrite: bool = False) -> Path:
        """Write the table as CSV (atomically); an existing file is refused (InputError) unless ``overwrite=True``.
        Returns the path."""
        from napari_rverdict.files import atomic_path, check_output_files

        path = Path(path)
        check_output_files([path], overwrite=overwrite, what="CSV file")
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            bayes = ["bayes_limit_rmse"] if self.has_bayes else []
            w.writerow(["parameter", "unit", "rmse", "bias", "mape", "r", "sqrt_crlb_median"] + bayes)
            for name, r in self.rows.items():
                w.writerow([name, r["unit"], r["rmse"], r["bias"], r["mape"], r["r"], r["crlb"]]
                           + ([r["bayes"]] if bayes else []))
        return path


EVALUATION_SALT = 0xE7A1


def evaluation_seed(seed: int, bundle=None) -> int:
    """The seed of the evaluation signals for the user's ``seed``: derived through a ``SeedSequence`` with its own
    salt (:func:`..learn.uncertainty.derived_seed`), so it is never a seed a user types and never the stream of the
    training data or of the calibration set, whatever seed those were made with; checked against ``bundle``'s
    recorded data and calibration seeds (re-derived in the astronomically unlikely case of a match)."""
    from napari_rverdict.learn.uncertainty import derived_seed

    if seed is None or isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be an integer ≥ 0, got {seed!r}")
    used = set()
    if bundle is not None:
        extra = getattr(bundle, "extra", {}) or {}
        used = {extra.get("data_seed"), (extra.get("calibration") or {}).get("seed")} - {None}
    derived = derived_seed(int(seed), EVALUATION_SALT)
    while derived in used:
        derived = derived_seed(derived, EVALUATION_SALT)
    return derived


def evaluate(bundle, n: int = 10000, snr=None, seed: int = 12345, n_crlb: int = 1000,
             device="cpu", bayes: int = 0, n_bayes_test: int = 200, snr_reference: str | None = None
             ) -> EvaluationReport:
    """Accuracy of ``bundle`` on ``n`` fresh synthetic signals from its own model, protocol, ranges and fraction
    sampler at ``snr`` on ``snr_reference`` (defaults: the bundle's training noise — SNR or the DWI it was matched
    to — on the bundle's reference), plus the median √CRLB over ``n_crlb`` of them.
    The signals are drawn with :func:`evaluation_seed` of ``seed``: never the training or calibration data.

    ``bayes`` > 0: also the Bayes-limit RMSE (:func:`napari_rverdict.evaluate.posterior.bayes_limit`: posterior mean from a
    ``bayes``-entry prior dictionary with the bundle's model, protocol, ranges and fraction sampler, on
    ``n_bayes_test`` signals simulated at the same SNR), the best any estimator can do; its Monte-Carlo error is
    about RMSE / √(2 n_bayes_test). Cost ∝ bayes × n_bayes_test (200,000 × 200: seconds on a CPU).

    Rows: every estimated parameter, then the dependent fraction (its CRLB from the fractions' covariance).
    """
    from napari_rverdict.data.synth import simulate

    if int(n) != n or n < 2:
        raise InputError(f"n must be an integer ≥ 2, got {n!r}")
    if int(bayes) != bayes or bayes < 0:
        raise InputError(f"bayes (prior dictionary entries, 0 = off) must be an integer ≥ 0, got {bayes!r}")
    if bayes and (int(n_bayes_test) != n_bayes_test or n_bayes_test < 2):
        raise InputError(f"n_bayes_test must be an integer ≥ 2, got {n_bayes_test!r}")
    noise = bundle.noise_settings()
    if snr is not None:
        noise = {"snr": snr, "snr_reference": bundle.snr_reference}
    if snr_reference is not None:
        noise["snr_reference"] = snr_reference
    model = bundle.model
    data = simulate(model, bundle.protocol, n=int(n), ranges=bundle.ranges,
                    fraction_sampler=bundle.fraction_sampler, seed=evaluation_seed(seed, bundle), **noise)
    snr = data.snr_setting
    pred_all = bundle.predict_normalised(data.signals, device=device)
    dep = model.dependent_fraction
    names = list(bundle.target_names) + [dep]
    true = {k: np.asarray(data.params[k]) for k in names}
    pred = {k: np.asarray(pred_all[k], dtype=float) for k in names}
    ranges = dict(bundle.ranges)
    ranges.setdefault(dep, (0.0, 1.0))
    metrics = regression_metrics(true, pred, ranges)
    n_c = min(int(n_crlb), int(n))
    rows = {}
    crlb_med = {}
    if n_c > 0:
        sub = {k: v[:n_c] for k, v in data.params.items()}
        bounds, cov = crlb(model, bundle.protocol, sub, data.peak_snr[:n_c], return_covariance=True)
        crlb_med = {k: float(np.median(v)) for k, v in bounds.items()}
        fi = [list(model.estimated_names).index(f) for f in model.estimated_fractions]
        var_dep = cov[:, fi][:, :, fi].sum(axis=(1, 2))
        crlb_med[dep] = float(np.median(np.sqrt(np.where(np.isfinite(var_dep) & (var_dep >= 0), var_dep, np.inf))))
    for k in names:
        unit = model.spec(k).unit if k in model.parameter_names else ""
        rows[k] = {"unit": unit, **metrics[k], "crlb": crlb_med.get(k, float("nan"))}
    extra = {}
    if bayes:
        from napari_rverdict.evaluate.posterior import bayes_limit

        limit = bayes_limit(model, bundle.protocol, n_test=int(n_bayes_test), n_dictionary=int(bayes),
                            ranges=bundle.ranges, fraction_sampler=bundle.fraction_sampler, seed=seed, device=device,
                            **noise)
        for k in names:
            rows[k]["bayes"] = float(limit.get(k, float("nan")))
        extra["bayes"] = {"n_dictionary": int(bayes), "n_test": int(n_bayes_test)}
    desc = f"{model.label} · {bundle.net_name} (depth {bundle.depth}, width {bundle.width})"
    return EvaluationReport(rows, true, pred, int(n), n_c, snr, int(seed), desc, extra,
                            describe_noise(snr, data.snr_reference, data.matched))
