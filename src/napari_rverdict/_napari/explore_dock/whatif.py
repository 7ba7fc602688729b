"""The Explore dock's protocol what-if: the editable table (checked as you type), "Evaluate" in a worker (the
protocol report of the starting and the edited protocol, drawn as bars per map) and saving the edited protocol."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import QFileDialog, QMessageBox, QTableWidgetItem

from napari_rverdict._napari._common import with_napari_threads
from napari_rverdict._napari.explore_dock.plot import draw_comparison
from napari_rverdict.errors import InputError
from napari_rverdict.evaluate.protocol_design import (
    COLUMNS,
    check_rows,
    compare_protocols,
    protocol_from_rows,
    protocol_output_files,
    protocol_rows,
    save_protocol,
)

INVALID_BG = QColor("#8b1e1e")


class _Stopped(Exception):
    """The dock closed during an evaluation: a quiet end."""


class _Progress(QObject):
    value = Signal(int)  # carries progress (0–100) from the worker thread to the GUI thread


def comparison_summary(comparison) -> str:
    """One line: for how many maps the edited protocol is better by more than the Monte-Carlo error of the Bayes
    limit (its RMSE has a relative sd of about 1/√(2 n_test)), and for how many its √CRLB is lower."""
    n_test = int(comparison.a.settings.get("n_test", 1))
    err = 1.0 / np.sqrt(2.0 * max(n_test, 1))
    rows = comparison.rows
    better = [m for m, r in rows.items() if r["bayes_b"] < r["bayes_a"] * (1 - 2 * err)]
    worse = [m for m, r in rows.items() if r["bayes_b"] > r["bayes_a"] * (1 + 2 * err)]
    crlb = [m for m, r in rows.items() if r["crlb_b"] < r["crlb_a"] * (1 - 1e-3)]
    text = (f"done. Bayes-limit RMSE (Monte-Carlo error ±{err:.0%} with {n_test} test signals): edited better for "
            f"{len(better)} of {len(rows)} maps{' (' + ', '.join(better) + ')' if better else ''}, worse for "
            f"{len(worse)}{' (' + ', '.join(worse) + ')' if worse else ''}; √CRLB lower for {len(crlb)}.")
    return text


class WhatIf:
    """Behaviour of the what-if section of ``dock`` (whose widgets ``form`` made)."""

    def __init__(self, dock):
        self.dock = dock
        self.start_protocol = None
        self.comparison = None
        self.worker = None
        self._stop = threading.Event()
        self._progress = _Progress(dock)
        self._progress.value.connect(dock.evaluate_progress.setValue)
        d = dock
        d.table.itemChanged.connect(self.validate)
        d.add_row_btn.clicked.connect(self.add_row)
        d.remove_row_btn.clicked.connect(self.remove_row)
        d.reset_table_btn.clicked.connect(self._reset_clicked)
        d.evaluate_btn.clicked.connect(self.evaluate)
        d.save_btn.clicked.connect(self._choose_save_path)
        d.plot_edited_check.toggled.connect(d.redraw)

    # ------------------------------------------------------------------ table
    def _reset_clicked(self, *_) -> None:
        self.reset_table(self.start_protocol)

    def reset_table(self, protocol) -> None:
        """Fill the table with ``protocol``'s rows (the starting protocol of the comparison)."""
        if protocol is None:
            return
        self.start_protocol = protocol
        table = self.dock.table
        table.blockSignals(True)
        table.setRowCount(0)
        for row in protocol_rows(protocol):
            self._append(row)
        table.blockSignals(False)
        self.validate()

    def _append(self, values) -> None:
        table = self.dock.table
        r = table.rowCount()
        table.insertRow(r)
        for c, v in enumerate(values):
            text = "" if isinstance(v, float) and np.isnan(v) else (f"{v:g}" if isinstance(v, float) else str(v))
            table.setItem(r, c, QTableWidgetItem(text))

    def rows(self) -> list[list[str]]:
        t = self.dock.table
        return [[(t.item(r, c).text() if t.item(r, c) else "") for c in range(len(COLUMNS))]
                for r in range(t.rowCount())]

    def add_row(self) -> None:
        """A new row copying the selected (or last) row, to edit."""
        t = self.dock.table
        rows = self.rows()
        src = t.currentRow() if 0 <= t.currentRow() < len(rows) else len(rows) - 1
        t.blockSignals(True)
        self._append(rows[src] if rows else ["0", "10", "30", "80", "3000"])
        t.blockSignals(False)
        t.setCurrentCell(t.rowCount() - 1, 0)
        self.validate()

    def remove_row(self) -> None:
        t = self.dock.table
        r = t.currentRow() if t.currentRow() >= 0 else t.rowCount() - 1
        if r >= 0:
            t.removeRow(r)
        self.validate()

    def set_cell(self, row: int, column: int, text: str) -> None:
        """Type ``text`` into a cell (as a user would)."""
        self.dock.table.item(row, column).setText(str(text))

    def validate(self, *_) -> list:
        """Check the table; colour the bad cells, say what is wrong; returns the problems."""
        d = self.dock
        problems = check_rows(self.rows(), d.model)
        bad = {(p.row, p.column) for p in problems}
        d.table.blockSignals(True)
        for r in range(d.table.rowCount()):
            for c in range(len(COLUMNS)):
                item = d.table.item(r, c)
                if item is not None:
                    hit = (r, c) in bad or (r, None) in bad
                    item.setBackground(QBrush(INVALID_BG) if hit else QBrush())
        d.table.blockSignals(False)
        ok = not problems
        if ok:
            d.table_message.ok(f"{d.table.rowCount()} measurements: a valid protocol")
        else:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            d.table_message.error(f"{problems[0]}{more}")
        d.evaluate_btn.setEnabled(ok and self.worker is None)
        d.save_btn.setEnabled(ok)
        if d.plot_edited_check.isChecked():
            d.redraw()
        return problems

    def edited_protocol(self):
        """The edited protocol, or None while the table has problems."""
        try:
            return protocol_from_rows(self.rows(), self.dock.model, name="edited")
        except InputError:
            return None

    # ------------------------------------------------------------------ evaluate
    def evaluate(self) -> None:
        """Run the protocol report of the starting and the edited protocol in a worker."""
        d = self.dock
        if self.worker is not None:
            return
        try:
            edited = protocol_from_rows(self.rows(), d.model, name="edited")
        except InputError as exc:
            d.evaluate_message.error(str(exc))
            return
        start = self.start_protocol
        model, snr = d.model, float(d.snr_spin.value())
        n_dict, n_test = int(d.n_dictionary_spin.value()), int(d.n_test_spin.value())
        self._stop.clear()
        relay, stop = self._progress, self._stop

        def progress(f):
            if stop.is_set():
                raise _Stopped
            relay.value.emit(int(100 * f))

        def job():
            return compare_protocols(model, start, edited, snr, n_test=n_test, n_dictionary=n_dict, seed=0,
                                     progress=progress)

        d.evaluate_btn.setEnabled(False)
        d.evaluate_progress.setValue(0)
        d.evaluate_message.info(f"evaluating both protocols at SNR {snr:g} ({n_dict:,}-entry dictionary, "
                                f"{n_test} test signals) …")
        self.worker = create_worker(with_napari_threads(job))
        self.worker.returned.connect(self._done)
        self.worker.errored.connect(self._failed)
        self.worker.start()

    def _release(self) -> None:
        """Forget the finished worker and every connection it holds to this dock."""
        worker, self.worker = self.worker, None
        for sig in ("returned", "errored"):
            try:
                getattr(worker, sig).disconnect()
            except (TypeError, RuntimeError, AttributeError):
                pass

    def _done(self, comparison) -> None:
        d = self.dock
        self._release()
        if self._stop.is_set():  # the dock has closed
            return
        self.comparison = comparison
        draw_comparison(d.bars_ax, comparison, labels=(f"starting ({comparison.a.protocol_name})", "edited"))
        d.bars_canvas.draw_idle()
        d.evaluate_progress.setValue(100)
        d.evaluate_message.ok(comparison_summary(comparison))
        self.validate()

    def _failed(self, exc) -> None:
        d = self.dock
        self._release()
        if self._stop.is_set():
            return
        if not isinstance(exc, _Stopped):
            d.evaluate_message.error(f"evaluation failed: {exc}")
        self.validate()

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ save
    def _choose_save_path(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self.dock, "Save protocol", "protocol.scheme",
                                              "Camino scheme (*.scheme);;FSL b-values + timings (*.bval)")
        if path:
            self.save_to(path, ask=True)  # the dialog asked about the chosen file; the sidecars are asked here

    def save_to(self, path, overwrite: bool = False, ask: bool = False) -> list:
        """Write the edited protocol (``.scheme`` or ``.bval`` + sidecars); a message either way.

        Existing files are replaced only with ``overwrite``; with ``ask`` (the Save… dialog, which has asked about
        the chosen file) the chosen file is replaced and a question names the existing sidecars first."""
        d = self.dock
        path = Path(path)
        try:
            protocol = protocol_from_rows(self.rows(), d.model, name="edited")
            existing = [p for p in protocol_output_files(protocol, path) if p.exists()]
        except (InputError, OSError) as exc:
            d.table_message.error(f"not saved: {exc}")
            return []
        if ask:
            others = [p for p in existing if p.resolve() != path.resolve()]
            if others and not self._confirm_replace(path, others):
                d.table_message.error(f"not saved: {_names(others)} in {path.parent} (kept); "
                                      "choose another name")
                return []
            overwrite = True
        elif existing and not overwrite:
            d.table_message.error(f"not saved: {_names(existing)} in {path.parent}; choose another name")
            return []
        try:
            written = save_protocol(protocol, path, overwrite=overwrite)
        except (InputError, OSError) as exc:
            d.table_message.error(f"not saved: {exc}")
            return []
        d.table_message.ok("saved " + ", ".join(p.name for p in written))
        return written

    def _confirm_replace(self, path: Path, others: list) -> bool:
        """Ask before replacing files the user did not choose (sidecars, maybe of another protocol's format)."""
        answer = QMessageBox.question(
            self.dock, "Replace files?",
            f"Saving {path.name} also writes {', '.join(p.name for p in others)}, which already "
            f"exist in {path.parent} (perhaps from another protocol). Replace them?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes


def _names(paths) -> str:
    names = [p.name for p in paths]
    return (names[0] + " already exists") if len(names) == 1 else (", ".join(names) + " already exist")
