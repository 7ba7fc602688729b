"""Protocol design, headless: a protocol as an editable table of rows (b, δ, Δ, TE, TR, volumes), checked as it is typed;
saving it as a Camino ``.scheme`` or FSL ``.bval`` + timing sidecars; and the protocol report of two protocols
side by side (:func:`compare_protocols`, also ``rverdict protocol-report --compare A B``).

Units: b s/mm², δ Δ TE TR ms. "volumes" is how many acquired volumes the measurement averages (INNOVATE: 1 per
b = 0, 3 directions per b > 0); it sets the measurement's noise (σ/√n), so it is part of the protocol's design.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_rverdict.errors import InputError
from napari_rverdict.physics.models import get_model
from napari_rverdict.physics.protocol import B0_THRESHOLD, Protocol, ProtocolError

COLUMNS = ("b", "small_delta", "big_delta", "te", "tr", "n_volumes")
COLUMN_LABELS = ("b (s/mm²)", "δ (ms)", "Δ (ms)", "TE (ms)", "TR (ms)", "volumes")
TIMING_COLUMNS = 5  # b, δ, Δ, TE, TR; "volumes" may be left out of a row (then 1)
SAVE_SUFFIXES = (".scheme", ".bval")


# ---------------------------------------------------------------------- rows ↔ Protocol
def protocol_rows(protocol: Protocol) -> list[tuple]:
    """One (b, δ, Δ, TE, TR, volumes) row per measurement (TR NaN where unknown; volumes an int)."""
    return [tuple(float(getattr(protocol, k)[i]) for k in COLUMNS[:TIMING_COLUMNS]) + (int(protocol.n_volumes[i]),)
            for i in range(len(protocol))]


def _full_row(row: Sequence) -> list:
    """A row with its "volumes" cell (1 when the row gives only b, δ, Δ, TE, TR)."""
    return list(row) + [1] if len(row) == TIMING_COLUMNS else list(row)


@dataclass(frozen=True)
class RowProblem:
    """A problem with the table: ``row`` (0-based; None for the whole table), ``column`` (index into
    :data:`COLUMNS`; None for the whole row) and a one-line message."""

    row: int | None
    column: int | None
    message: str

    def __str__(self) -> str:
        where = "" if self.row is None else f"row {self.row + 1}: "
        return where + self.message


def _cell(text, row: int, col: int, problems: list) -> float | None:
    """A cell as a float; an empty TR is unknown (NaN); anything else not a number is a problem."""
    if isinstance(text, (int, float, np.floating)) and not isinstance(text, bool):
        return float(text)
    s = str(text).strip()
    if s == "" and COLUMNS[col] == "tr":
        return float("nan")
    if s == "" and COLUMNS[col] == "n_volumes":
        return 1.0
    try:
        return float(s)
    except ValueError:
        problems.append(RowProblem(row, col, f"{COLUMN_LABELS[col]} is not a number: '{s}'"))
        return None


def _row_problems(values, row: int) -> list[RowProblem]:
    b, sd, bd, te, tr, n_volumes = values
    out = []
    checks = (
        (b < 0 or not np.isfinite(b), 0, f"b = {b:g} s/mm² must be ≥ 0"),
        (not np.isfinite(sd) or sd < 0, 1, f"δ = {sd:g} ms must be ≥ 0"),
        (not np.isfinite(bd) or bd < 0, 2, f"Δ = {bd:g} ms must be ≥ 0"),
        (b >= B0_THRESHOLD and sd <= 0, 1, f"δ must be > 0 ms where b = {b:g} s/mm²"),
        (b >= B0_THRESHOLD and sd > bd, 1, f"δ = {sd:g} ms is longer than Δ = {bd:g} ms (δ is the pulse duration, "
                                           "Δ the pulse separation: δ ≤ Δ)"),
        (not np.isfinite(te) or te <= 0, 3, f"TE = {te:g} ms must be > 0"),
        (np.isinf(tr) or tr <= 0, 4, f"TR = {tr:g} ms must be > 0 (leave it empty if unknown)"),
        (not np.isfinite(n_volumes) or n_volumes < 1 or n_volumes != int(n_volumes), 5,
         f"volumes = {n_volumes:g} must be a whole number ≥ 1 (acquired volumes this measurement averages)"),
    )
    for bad, col, msg in checks:
        if bad:
            out.append(RowProblem(row, col, msg))
    if out:
        return out
    try:  # units: the Protocol's own plausibility checks, on this row alone (b's unit is judged on the whole
        # table: a low b such as 30 s/mm² is fine next to larger ones)
        Protocol([b if b >= B0_THRESHOLD else 0.0], [sd], [bd], [te], [tr])
    except ProtocolError as exc:
        msg = str(exc)
        col = next((i for i, k in enumerate(("b", "δ", "Δ", "TE", "TR")) if msg.startswith(k) or f"{k} =" in msg
                    or f"largest {k}" in msg), None)
        col = {"small_delta": 1, "big_delta": 2, "te": 3, "tr": 4}.get(msg.split(" ", 1)[0], col)
        out.append(RowProblem(row, col, msg))
    return out


def check_rows(rows: Sequence[Sequence], model=None) -> list[RowProblem]:
    """Every problem of a protocol table (cells as text or numbers; an empty TR means unknown), for showing as the
    user types: cells that are not numbers, b < 0, δ > Δ, δ = 0 where b > 0, implausible units (seconds for ms,
    ms/µm² for s/mm²), then problems of the whole table (no rows; for ``model``: rVERDICT without TR, a classic
    VERDICT series without its own b = 0). An empty list means :func:`protocol_from_rows` will succeed."""
    problems: list[RowProblem] = []
    values = []
    for r, row in enumerate(rows):
        if len(row) not in (TIMING_COLUMNS, len(COLUMNS)):
            problems.append(RowProblem(r, None, f"needs {TIMING_COLUMNS} or {len(COLUMNS)} values (b, δ, Δ, TE, TR"
                                                f"[, volumes]), got {len(row)}"))
            continue
        row = _full_row(row)
        cells = [_cell(v, r, c, problems) for c, v in enumerate(row)]
        if any(v is None for v in cells):
            continue
        row_problems = _row_problems(cells, r)
        problems += row_problems
        if not row_problems:
            values.append(cells)
    if not rows:
        problems.append(RowProblem(None, None, "the protocol has no measurements: add a row"))
    if problems:
        return problems
    try:
        a = np.array(values, dtype=float)
        protocol = Protocol(*a[:, :TIMING_COLUMNS].T, n_volumes=a[:, TIMING_COLUMNS].astype(int))
        if model is not None:
            model = get_model(model)
            model.check_protocol(protocol)
            model.normalise(np.ones((1, len(protocol))), protocol)  # classic VERDICT: every series needs a b = 0
    except InputError as exc:
        msg = str(exc)
        problems.append(RowProblem(None, 0 if msg.startswith("largest b") else None, msg))
    return problems


def protocol_from_rows(rows: Sequence[Sequence], model=None, name: str = "edited") -> Protocol:
    """A Protocol from table rows (see :func:`check_rows`); raises InputError with the first problem."""
    problems = check_rows(rows, model)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(f"{problems[0]}{more}")
    a = np.array([[float(str(v).strip()) if str(v).strip() else np.nan for v in _full_row(row)] for row in rows],
                 dtype=float)
    a[np.isnan(a[:, TIMING_COLUMNS]), TIMING_COLUMNS] = 1
    return Protocol(*a[:, :TIMING_COLUMNS].T, name=name, n_volumes=a[:, TIMING_COLUMNS].astype(int))


# ---------------------------------------------------------------------- saving
def protocol_output_files(protocol: Protocol, path) -> list[Path]:
    """The files :func:`save_protocol` writes for ``path`` (the file itself first, then its sidecars); InputError
    for a suffix other than ``.scheme`` / ``.bval``."""
    from napari_rverdict.physics.protocol_files import fsl_files, scheme_files

    path = Path(path)
    if path.name.endswith(".scheme"):
        return [Path(p) for p in scheme_files(protocol, path)]
    if path.name.endswith(".bval"):
        return [Path(p) for p in fsl_files(protocol, path.with_name(path.name[:-5]))]
    raise InputError(f"save the protocol as a .scheme or a .bval file, not '{path.name}'")


def save_protocol(protocol: Protocol, path, *, overwrite: bool = False) -> list[Path]:
    """Write ``protocol`` as a Camino ``.scheme`` (+ ``.tr`` in seconds when TR is known) or an FSL ``.bval`` +
    ``.bvec`` with per-volume ``.delta .smalldel .te .tr`` sidecars in seconds, all files at once and atomically, a
    row per acquired volume (:func:`~napari_rverdict.physics.protocol_files.write_scheme` /
    :func:`~napari_rverdict.physics.protocol_files.write_fsl`). Refuses (InputError) another suffix, and existing
    files unless ``overwrite``. Returns the paths written."""
    from napari_rverdict.files import check_output_files
    from napari_rverdict.physics.protocol_files import write_fsl, write_scheme

    path = Path(path)
    name = path.name
    targets = protocol_output_files(protocol, path)
    stale_tr = path.with_name(name[: -len(path.suffix)] + ".tr")
    if not protocol.has_tr and stale_tr.exists():  # the readers would take its TR for this protocol's
        raise InputError(f"{stale_tr} exists and would give this protocol (TR unknown) its TR when read back; "
                         "fill in TR or remove that file")
    check_output_files(targets, overwrite=overwrite, what="protocol file")
    if name.endswith(".scheme"):
        return write_scheme(protocol, path, overwrite=overwrite)
    return write_fsl(protocol, path.with_name(name[:-5]), overwrite=overwrite)


# ---------------------------------------------------------------------- comparison
@dataclass
class ProtocolComparison:
    """The protocol report (:func:`~napari_rverdict.evaluate.report.protocol_report`) of two protocols, computed
    with the same settings and seed (the same prior draws and test parameters), side by side.

    rows : {map: {"unit", "crlb_a", "crlb_b", "bayes_a", "bayes_b", "ratio_a", "ratio_b"}}.
    """

    a: object  # ProtocolReport
    b: object

    @property
    def maps(self) -> list[str]:
        return list(self.a.rows)

    @property
    def rows(self) -> dict[str, dict]:
        out = {}
        for name in self.maps:
            ra, rb = self.a.rows[name], self.b.rows[name]
            out[name] = {"unit": ra["unit"], "crlb_a": ra["crlb"], "crlb_b": rb["crlb"],
                         "bayes_a": ra["bayes_rmse"], "bayes_b": rb["bayes_rmse"],
                         "ratio_a": ra["ratio"], "ratio_b": rb["ratio"]}
        return out

    def format_table(self) -> str:
        a, b = self.a, self.b
        st = a.settings
        head = (f"{'map':<14}{'unit':<7}{'√CRLB A':>10}{'√CRLB B':>10}{'Bayes A':>10}{'Bayes B':>10}"
                f"{'B/prior A':>11}{'B/prior B':>11}")
        lines = [f"{a.model} at SNR {a.snr:g}: A = {a.protocol_name} ({a.n_measurements} measurements), "
                 f"B = {b.protocol_name} ({b.n_measurements} measurements)",
                 f"√CRLB at typical tissue; Bayes-limit RMSE over {st.get('n_test')} prior draws, "
                 f"{st.get('n_dictionary'):,}-entry dictionary, seed {st.get('seed')}; lower is better",
                 head, "-" * len(head)]
        for name, r in self.rows.items():
            lines.append(f"{name:<14}{r['unit']:<7}{r['crlb_a']:>10.4g}{r['crlb_b']:>10.4g}{r['bayes_a']:>10.4g}"
                         f"{r['bayes_b']:>10.4g}{r['ratio_a']:>11.2f}{r['ratio_b']:>11.2f}")
        return "\n".join(lines)

    def to_csv(self, path, *, overwrite: bool = False) -> Path:
        """Write the table as CSV (atomically); an existing file is refused (InputError) unless ``overwrite=True``.
        Returns the path."""
        import csv

        from napari_rverdict.files import atomic_path, check_output_files

        path = Path(path)
        check_output_files([path], overwrite=overwrite, what="CSV file")
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["map", "unit", "sqrt_crlb_a", "sqrt_crlb_b", "bayes_rmse_a", "bayes_rmse_b",
                        "bayes_over_prior_a", "bayes_over_prior_b"])
            for name, r in self.rows.items():
                w.writerow([name, r["unit"], r["crlb_a"], r["crlb_b"], r["bayes_a"], r["bayes_b"], r["ratio_a"],
                            r["ratio_b"]])
        return path


def compare_protocols(model, a, b, snr: float = 35.0, *, n_test: int = 200, n_dictionary: int = 200_000,
                      seed: int = 0, progress=None, **kwargs) -> ProtocolComparison:
    """The protocol report of ``a`` and of ``b`` (Protocols, used as given; presets or files, direction-averaged) at
    ``snr`` with the same settings and ``seed``. ``progress(fraction)`` is called after each; other keyword arguments go to ``protocol_report``
    (ranges, fraction_sampler, fractions, device)."""
    from napari_rverdict.evaluate.report import protocol_report
    from napari_rverdict.physics.protocol_files import load_protocol

    model = get_model(model)
    # files and presets as the models see them (direction-averaged); a Protocol as given, so that a row a user
    # repeats counts as a second measurement rather than being averaged away
    protocols = [p if isinstance(p, Protocol) else load_protocol(p, direction_averaged=True) for p in (a, b)]
    for p in protocols:
        model.check_protocol(p)
    reports = []
    for i, p in enumerate(protocols):
        reports.append(protocol_report(model, p, snr, n_test=n_test, n_dictionary=n_dictionary, seed=seed, **kwargs))
        if progress is not None:
            progress((i + 1) / len(protocols))
    return ProtocolComparison(*reports)


__all__ = ["COLUMNS", "COLUMN_LABELS", "ProtocolComparison", "RowProblem", "check_rows", "compare_protocols",
           "protocol_from_rows", "protocol_rows", "save_protocol"]
