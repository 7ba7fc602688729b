"""What an acquisition can tell: per map, √CRLB at typical tissue, the Bayes-limit RMSE and its ratio to the
prior's RMSE (near 1: the protocol tells little about that map). ``rverdict protocol-report`` prints it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_rverdict.data.noise import DEFAULT_SNR_REFERENCE, check_snr_reference, describe_noise, reference_sigma
from napari_rverdict.errors import InputError
from napari_rverdict.evaluate.posterior import bayes_limit, build_dictionary
from napari_rverdict.physics.models import get_model
from napari_rverdict.physics.protocol_files import load_protocol


def typical_parameters(model, ranges: Mapping | None = None,
                       fractions: Sequence[float] = (0.4, 0.4, 0.2)) -> dict[str, float]:
    """"Typical tissue" used by the protocol report: every non-fraction parameter at the centre of its training
    range, fractions (f_ic, f_ees, f_vasc) = ``fractions`` (default 0.4, 0.4, 0.2)."""
    from napari_rverdict.data.prior import resolve_ranges

    model = get_model(model)
    ranges = resolve_ranges(model, ranges)
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or (fr < 0).any() or abs(fr.sum() - 1.0) > 1e-6:
        raise InputError("fractions must be three non-negative numbers (f_ic, f_ees, f_vasc) summing to 1, "
                         f"got {fractions}")
    out = {"f_ic": float(fr[0]), "f_ees": float(fr[1]), "f_vasc": float(fr[2])}
    for p in model.parameters:
        if not p.is_fraction:
            lo, hi = ranges[p.name]
            out[p.name] = 0.5 * (lo + hi)
    return out


# ---------------------------------------------------------------------- protocol report
@dataclass
class ProtocolReport:
    """Which maps an acquisition supports: per map the √CRLB at typical tissue and the Bayes-limit RMSE.

    rows : {map: {"unit", "typical", "crlb", "bayes_rmse", "prior_rmse", "ratio"}} where ``crlb`` is √CRLB at the
    typical tissue values (``metrics.crlb``; the dependent fraction and cellularity from the covariance by the
    delta method), ``bayes_rmse`` the RMSE of the posterior mean over the prior (:func:`bayes_limit`),
    ``prior_rmse`` the RMSE of guessing the prior mean, and ``ratio`` = bayes / prior (near 1: the acquisition
    tells little about this map; near 0: it pins it down).
    """

    model: str
    protocol_name: str
    n_measurements: int
    snr: float
    rows: dict[str, dict]
    settings: dict = field(default_factory=dict)
    snr_reference: str = "s0"

    def format_table(self) -> str:
        head = (f"{'map':<14}{'unit':<7}{'typical':>10}{'√CRLB':>11}{'Bayes RMSE':>12}{'prior RMSE':>12}"
                f"{'Bayes/prior':>13}")
        st = self.settings
        lines = [f"{self.model} on {self.protocol_name} ({self.n_measurements} measurements) at "
                 f"{describe_noise(self.snr, self.snr_reference)}",
                 f"√CRLB at typical tissue ({', '.join(f'{k} {v:g}' for k, v in st.get('typical', {}).items())});",
                 (f"Bayes limit: posterior-mean RMSE over {st.get('n_test')} prior draws, "
                 f"{st.get('n_dictionary'):,}-entry dictionary (median ESS {st.get('median_ess', float('nan')):.0f})"),
                 head, "-" * len(head)]
        for name, r in self.rows.items():
            lines.append(f"{name:<14}{r['unit']:<7}{r['typical']:>10.4g}{r['crlb']:>11.4g}{r['bayes_rmse']:>12.4g}"
                         f"{r['prior_rmse']:>12.4g}{r['ratio']:>13.2f}")
        return "\n".join(lines)

    def to_csv(self, path, *, overwrite: bool = False):
        """Write the table as CSV (atomically); an existing file is refused (InputError) unless ``overwrite=True``.
        Returns the path."""
        import csv
        from pathlib import Path

        from napari_rverdict.files import atomic_path, check_output_files

        path = Path(path)
        check_output_files([path], overwrite=overwrite, what="CSV file")
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["map", "unit", "typical", "sqrt_crlb", "bayes_rmse", "prior_rmse", "bayes_over_prior"])
            for name, r in self.rows.items():
                w.writerow([name, r["unit"], r["typical"], r["crlb"], r["bayes_rmse"], r["prior_rmse"], r["ratio"]])
        return path


def typical_crlb(model, protocol, snr, ranges: Mapping | None = None,
                 fractions: Sequence[float] = (0.4, 0.4, 0.2), snr_reference: str = DEFAULT_SNR_REFERENCE
                 ) -> dict[str, float]:
    """√CRLB of every map at :func:`typical_parameters` (``metrics.crlb`` for the estimated parameters; the
    dependent fraction and cellularity = f_ic / R³ by the delta method from the CRLB covariance). With "s0" σ is
    1/SNR where S0 = 1 (typical S0 is the middle of its range), with "peak" the typical signal's brightest / SNR."""
    from napari_rverdict.data.synth import noise_free_signals
    from napari_rverdict.evaluate.crlb import crlb

    model = get_model(model)
    protocol = load_protocol(protocol)
    typical = typical_parameters(model, ranges, fractions)
    params = {k: np.array([v]) for k, v in typical.items()}
    clean = noise_free_signals(model, params, protocol)
    peak_snr = float(np.ravel(1.0 / reference_sigma(clean, [float(snr)], snr_reference))[0] * clean.max())
    bounds, cov = crlb(model, protocol, params, peak_snr, return_covariance=True)
    out = {k: float(v[0]) for k, v in bounds.items()}
    names = list(model.estimated_names)
    cov = cov[0]
    grads = {}
    g = np.zeros(len(names))
    for f in model.estimated_fractions:
        g[names.index(f)] = -1.0
    grads[model.dependent_fraction] = g
    g = np.zeros(len(names))
    f_ic, r = typical["f_ic"], typical["R"]
    g[names.index("f_ic")] = 1.0 / r**3
    g[names.index("R")] = -3.0 * f_ic / r**4
    grads["cellularity"] = g
    for k, g in grads.items():
        var = float(g @ cov @ g) if np.isfinite(cov).all() else float("inf")
        out[k] = float(np.sqrt(var)) if var >= 0 else float("inf")
    return {k: out[k] for k in model.map_names}


def protocol_report(model, protocol="innovate", snr: float = 35.0, n_test: int = 200,
                    n_dictionary: int = 200_000, ranges: Mapping | None = None, fraction_sampler: str = "dirichlet",
                    fractions: Sequence[float] = (0.4, 0.4, 0.2), seed: int = 0, device="cpu",
                    snr_reference: str = DEFAULT_SNR_REFERENCE) -> ProtocolReport:
    """Per map of ``model``: √CRLB at typical tissue (:func:`typical_crlb`) and the Bayes-limit RMSE over the
    training prior (:func:`bayes_limit`) for ``protocol`` at ``snr`` on the noise reference ``snr_reference``
    ("s0" or "peak", :mod:`napari_rverdict.data.noise`; pass a bundle's ``snr_reference`` to report on its
    convention). See :class:`ProtocolReport`."""
    snr_reference = check_snr_reference(snr_reference)
    model = get_model(model)
    protocol = load_protocol(protocol)
    model.check_protocol(protocol)
    snr = float(snr)
    if not (np.isfinite(snr) and snr > 0):
        raise InputError(f"SNR must be a positive number, got {snr}")
    crlbs = typical_crlb(model, protocol, snr, ranges, fractions, snr_reference)
    dictionary = build_dictionary(model, protocol, n_dictionary, ranges, fraction_sampler, seed)
    rmse, det = bayes_limit(model, protocol, snr, n_test, dictionary=dictionary, seed=seed, device=device,
                            ranges=ranges, fraction_sampler=fraction_sampler, return_details=True,
                            snr_reference=snr_reference)
    truth = det["truth"]
    typical = typical_parameters(model, ranges, fractions)
    typical_maps = model.derived_maps({k: np.array([v]) for k, v in typical.items()})
    rows = {}
    for name in model.map_names:
        j = dictionary.names.index(name)
        prior_rmse = float(np.sqrt(np.mean((truth[name] - dictionary.values[:, j].mean()) ** 2)))
        unit = model.map_spec(name).unit
        rows[name] = {"unit": unit, "typical": float(np.asarray(typical_maps[name])[0]), "crlb": crlbs[name],
                      "bayes_rmse": rmse[name], "prior_rmse": prior_rmse,
                      "ratio": rmse[name] / prior_rmse if prior_rmse > 0 else float("nan")}
    settings = {"n_test": int(n_test), "n_dictionary": int(n_dictionary), "seed": seed,
                "fraction_sampler": fraction_sampler, "typical": typical,
                "median_ess": float(np.median(det["posterior"].ess))}
    return ProtocolReport(model.name, protocol.name or "custom", len(protocol), snr, rows, settings, snr_reference)
