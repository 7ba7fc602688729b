"""Dock 1 — Simulate: make noisy synthetic training signals with the same ``simulate`` the CLI calls.

The widgets and their layout are in :mod:`napari_rverdict._napari.simulate_dock.form`; here: validation, the
protocol choice and the worker.
"""

from __future__ import annotations

import threading

import napari
import numpy as np
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtGui import QBrush
from qtpy.QtWidgets import QFileDialog, QTableWidgetItem, QWidget

from napari_rverdict._napari import viewer_hooks
from napari_rverdict._napari._common import (
    JobStopped,
    LayerWatch,
    LifetimeGuard,
    Relay,
    fill_protocol_sources,
    find_data,
    release_worker,
    show_bad_input,
    stoppable,
    with_napari_threads,
)
from napari_rverdict._napari.reader import layer_protocol
from napari_rverdict._napari.simulate_dock import form
from napari_rverdict._napari.simulate_dock.form import INVALID_BG
from napari_rverdict._napari.simulate_dock.noise import NoiseControls
from napari_rverdict._napari.state import get_state, model_label
from napari_rverdict.data.noise import describe_noise
from napari_rverdict.data.prior import resolve_ranges
from napari_rverdict.data.synth import simulate
from napari_rverdict.physics.models import get_model
from napari_rverdict.physics.protocol_files import load_protocol


class SimulateWidget(QWidget):
    """Model, protocol, training ranges, fraction sampler, SNR, N and seed → ``simulate(...)`` in a worker."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.worker = None
        self._file_protocol = None  # (path, Protocol) chosen with "File…"
        self._relay = None
        self._pbar = None
        self.stop_event = threading.Event()  # set when the dock or the viewer closes: the running job stops
        form.build(self)
        self.noise = NoiseControls(self)  # SNR / matched noise, the noise reference, the effective-SNR line
        self._connect()
        viewer_hooks.install(napari_viewer)  # axis names, contours, bright volume: whichever dock opens first
        self._refresh_protocols()
        self._model_changed()

    def _connect(self) -> None:
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.protocol_combo.currentIndexChanged.connect(self._validate)
        self.protocol_combo.currentIndexChanged.connect(self._follow_protocol_layer)
        self.protocol_file_btn.clicked.connect(self._choose_protocol_file)
        self.table.itemChanged.connect(self._validate)
        self.snr_edit.textChanged.connect(self._validate)
        self.sampler_combo.currentIndexChanged.connect(self._validate)
        self.generate_btn.clicked.connect(self.generate)
        watch = self._layer_watch = LayerWatch(self.viewer, self._refresh_protocols)  # follows renames too
        self.destroyed.connect(lambda *_: watch.close())
        self._guard = LifetimeGuard(self, self.shutdown)

    # ------------------------------------------------------------------ inputs
    @property
    def model_name(self) -> str:
        return self.model_combo.currentData()

    def _model_changed(self, *_) -> None:
        model = get_model(self.model_name)
        self.table.blockSignals(True)
        self.table.setRowCount(len(model.parameters))
        for r, p in enumerate(model.parameters):
            name = QTableWidgetItem(p.name)
            name.setFlags(Qt.ItemFlag.ItemIsEnabled)
            name.setToolTip(p.description + (" (nuisance: not estimated)" if p.nuisance else ""))
            unit = QTableWidgetItem(p.unit or "–")
            unit.setFlags(Qt.ItemFlag.ItemIsEnabled)
            self.table.setItem(r, 0, name)
            self.table.setItem(r, 1, unit)
            self.table.setItem(r, 2, QTableWidgetItem(f"{p.low:g}"))
            self.table.setItem(r, 3, QTableWidgetItem(f"{p.high:g}"))
        self.table.blockSignals(False)
        self.table.setFixedHeight(self.table.verticalHeader().length() + self.table.horizontalHeader().height() + 6)
        if self.ranges_section.isExpanded():  # the section's height follows the table's
            self.ranges_section.expand(animate=False)
        self._validate()

    def set_range(self, name: str, low, high) -> None:
        """Type ``low`` and ``high`` into the row of parameter ``name`` (as a user would)."""
        for r in range(self.table.rowCount()):
            if self.table.item(r, 0).text() == name:
                self.table.item(r, 2).setText(str(low))
                self.table.item(r, 3).setText(str(high))
                return
        raise KeyError(name)

    def _refresh_protocols(self, renamed: dict | None = None) -> None:
        """List the protocol sources again; ``renamed`` ({old: new layer name}) keeps a renamed layer chosen."""
        fill_protocol_sources(self.protocol_combo, self.viewer.layers, self._file_protocol, renamed)
        self._validate()

    def _follow_protocol_layer(self, *_) -> None:
        """A protocol taken from a DWI layer makes that layer the one *Match noise* reads."""
        kind, value = self.protocol_combo.currentData() or ("preset", "innovate")
        if kind == "layer":
            self.match_dwi_combo.select(value)

    def find_protocol(self, data) -> int:
        """Index of the protocol entry ``("preset" | "layer" | "file", name)``, or -1."""
        return find_data(self.protocol_combo, data)

    def _choose_protocol_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Protocol file", "", "Protocols (*.scheme *.bval);;All files (*)")
        if path:
            self.set_protocol_file(path)

    def set_protocol_file(self, path: str) -> None:
        """Use the protocol in ``path`` (a .scheme or .bval); shows a message if it cannot be read."""
        try:
            protocol = load_protocol(path)
        except (ValueError, OSError) as exc:
            show_bad_input(self.message, f"Cannot read the protocol file: {exc}")
            return
        self._file_protocol = (str(path), protocol)
        self._refresh_protocols()
        self.protocol_combo.setCurrentIndex(max(self.find_protocol(("file", str(path))), 0))

    def protocol(self):
        """The direction-averaged Protocol chosen (raises ValueError with a message)."""
        kind, value = self.protocol_combo.currentData() or ("preset", "innovate")
        if kind == "preset":
            spec = value
        elif kind == "layer":
            if value not in self.viewer.layers:
                raise ValueError(f"layer '{value}' is gone")
            spec = layer_protocol(self.viewer.layers[value])
        else:
            spec = self._file_protocol[1]
        return load_protocol(spec, direction_averaged=True)

    def ranges(self) -> dict:
        """{name: (low, high)} from the table; raises ValueError naming the first bad cell."""
        return self._check_table(mark=False)

    def _check_table(self, mark: bool = True) -> dict:
        model = get_model(self.model_name)
        first_error = None
        out = {}
        self.table.blockSignals(True)
        for r in range(self.table.rowCount()):
            name = self.table.item(r, 0).text()
            cells = [self.table.item(r, 2), self.table.item(r, 3)]
            bad = [False, False]
            error = None
            values = []
            for i, cell in enumerate(cells):
                try:
                    values.append(float(cell.text().strip()))
                except ValueError:
                    bad[i] = True
                    error = error or f"{name}: '{cell.text()}' is not a number"
            if error is None:
                try:
                    resolve_ranges(model, {name: tuple(values)})
                    out[name] = tuple(values)
                except ValueError as exc:
                    error = str(exc)
                    spec = model.spec(name)
                    bad = [values[0] < spec.limit_low or values[0] >= values[1],
                           values[1] > spec.limit_high or values[0] >= values[1]]
            if mark:
                for i, cell in enumerate(cells):
                    cell.setBackground(QBrush(INVALID_BG) if bad[i] else QBrush())
                    cell.setToolTip(error if bad[i] else "")
            first_error = first_error or error
        self.table.blockSignals(False)
        if first_error:
            raise ValueError(first_error)
        return out

    def _validate(self, *_) -> bool:
        """Check every input; mark bad cells, enable Generate only when all is well."""
        problems = []
        try:
            self._check_table(mark=True)
        except ValueError as exc:
            problems.append(f"ranges: {exc}")
        snr_problem = self.noise.snr_problem()
        if snr_problem:
            problems.append(snr_problem)
        self.snr_edit.setStyleSheet(f"background: {INVALID_BG.name()};" if snr_problem else "")
        try:
            protocol = self.protocol()
            get_model(self.model_name).check_protocol(protocol)
            b = np.unique(np.round(protocol.b))
            self.protocol_info.setText(f"{len(protocol)} measurements, b = {', '.join(f'{x:g}' for x in b)} s/mm²")
        except (ValueError, OSError) as exc:
            problems.append(f"protocol: {exc}")
            self.protocol_info.setText("")
        running = self.worker is not None
        self.generate_btn.setEnabled(not problems and not running)
        if problems:
            self.message.error("Cannot generate: " + "; ".join(problems))
        elif self.message.kind == "error":
            self.message.info("")
        self.noise.schedule()  # the effective SNR follows model, protocol, ranges and SNR
        return not problems

    # ------------------------------------------------------------------ run
    def settings(self) -> dict:
        """The arguments ``simulate`` gets (raises ValueError on bad input)."""
        return dict(model=self.model_name, protocol=self.protocol(), n=int(self.n_spin.value()),
                    ranges=self.ranges(), fraction_sampler=self.sampler_combo.currentData(),
                    seed=int(self.seed_spin.value()), **self.noise.simulate_kwargs())

    def generate(self) -> None:
        """Start ``simulate`` in a worker thread (nothing happens, but a message, when inputs are invalid)."""
        if self.worker is not None:
            return
        if not self._validate():
            return
        try:
            kwargs = self.settings()
        except ValueError as exc:
            self.message.error(str(exc))
            return
        self._relay = Relay(self)
        self._pbar = napari_progress(total=100,
                                     desc=f"Simulating {kwargs['n']:,} {model_label(kwargs['model'])} signals")
        self._relay.value.connect(self._on_progress)
        self.stop_event = threading.Event()
        worker = create_worker(_simulate_job, self.stop_event, progress=self._relay.value.emit,
                               _start_thread=False, _ignore_errors=True, **kwargs)
        worker.returned.connect(self._done)
        worker.errored.connect(self._failed)
        worker.finished.connect(self._finished)
        self.worker = worker
        self.generate_btn.setEnabled(False)
        self.progress.setValue(0)
        self.message.info(f"simulating {kwargs['n']:,} signals…")
        worker.start()

    def shutdown(self) -> None:
        """The dock or the viewer is going away: stop ``simulate`` at its next chunk and let go of the worker, so
        nothing it returns reaches this dock."""
        self.stop_event.set()
        self.noise.shutdown()
        if self.worker is not None:
            release_worker(self)

    def _done(self, data) -> None:
        if data is None:  # stopped
            self.message.info("stopped: no signals were made")
            return
        self.state.data = data
        self.progress.setValue(100)
        self.message.ok(f"{len(data):,} {model_label(data.model.name)} signals, "
                        f"{describe_noise(data.snr_setting, data.snr_reference, data.matched)}. Next: the Train dock.")
        self.message.setToolTip(f"{len(data.protocol)} measurements; {len(data.train_index):,} train / "
                                f"{len(data.val_index):,} validation signals")
        k = min(5, len(data))
        self.plot.show_signals(data.protocol.b, data.signals[:k], data.protocol.series_ids(),
                               title=f"{k} example signals (one colour each)")

    def _failed(self, exc) -> None:
        self.message.error(f"Simulation failed: {exc}")
        show_error(f"Simulation failed: {exc}")

    def _on_progress(self, fraction) -> None:
        value = int(round(100 * fraction))
        self.progress.setValue(value)
        pbar = self._pbar
        if pbar is not None:
            pbar.n = value
            pbar.refresh()

    def _finished(self) -> None:
        release_worker(self)  # the worker keeps no reference to this dock
        self._validate()


@with_napari_threads
def _simulate_job(stop_event, progress, **kwargs):
    """``simulate`` that ends at its next chunk once ``stop_event`` is set (returns None then)."""
    try:
        return simulate(progress=stoppable(progress, stop_event), **kwargs)
    except JobStopped:
        return None
