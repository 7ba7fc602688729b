"""The Simulate dock's noise behaviour: the noise reference, the effective SNR it implies (a debounced line) and
*Match noise to this DWI* (``estimate_noise`` in a worker; Generate then trains at the DWI's noise on the chosen
reference: ``simulate(snr_from=...)``).

The widgets are built by :func:`napari_rverdict._napari.simulate_dock.form.noise_section`; the dock owns one
:class:`NoiseControls` (``dock.noise``) and asks it for :meth:`~NoiseControls.simulate_kwargs`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, QTimer

from napari_rverdict._napari.reader import layer_protocol, layer_to_xyz, on_dwi_grid
from napari_rverdict.data.noise import format_snr_percentiles, parse_snr
from napari_rverdict.data.synth import effective_snr
from napari_rverdict.physics.protocol import Protocol

MATCHED_REFERENCE_TIP = ("matched to the DWI — s0 (rVERDICT): one σ on S0's scale, as the scanner has it, with the "
                         "training set's 95th-percentile SNR at the brightest b = 0 equal to the DWI's; peak: each "
                         "signal's SNR drawn from the DWI's per-voxel SNR")
EFFECTIVE_N = 5000  # samples behind the effective-SNR line (≈ 0.2 s; percentiles within a few %)
DEBOUNCE_MS = 300


class NoiseControls(QObject):
    """SNR or a DWI's matched noise, the noise reference, and the effective-SNR line of one Simulate dock."""

    def __init__(self, dock):
        super().__init__(dock)
        self.dock = dock
        self.estimate = None  # the NoiseEstimate Generate matches (None: the typed SNR)
        self.matched_layer = None  # the name of the layer it came from
        self.worker = None
        self._typed = (dock.snr_edit.text(), dock.reference_combo.currentIndex())  # restored by clear()
        self._reference_tip = dock.reference_combo.toolTip()
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.update_effective_snr)
        dock.reference_combo.currentIndexChanged.connect(self.schedule)
        dock.match_btn.clicked.connect(self.match)
        dock.clear_match_btn.clicked.connect(self.clear)

    # ------------------------------------------------------------------ settings
    @property
    def reference(self) -> str:
        return self.dock.reference_combo.currentData()

    def snr_problem(self) -> str | None:
        """Why the SNR setting cannot be used (None when it can); marks the SNR field."""
        if self.estimate is not None:
            return None
        try:
            parse_snr(self.dock.snr_edit.text(), "SNR")
        except ValueError as exc:
            return str(exc)
        return None

    def simulate_kwargs(self) -> dict:
        """``snr`` / ``snr_from`` and ``snr_reference`` for ``simulate`` (raises ValueError on a bad SNR)."""
        if self.estimate is not None:
            return {"snr": None, "snr_from": self.estimate, "snr_reference": self.reference}
        return {"snr": parse_snr(self.dock.snr_edit.text(), "SNR"), "snr_reference": self.reference}

    # ------------------------------------------------------------------ effective SNR
    def schedule(self, *_) -> None:
        """Recompute the effective-SNR line once the inputs have been still for ``DEBOUNCE_MS``; an invalid SNR
        blanks it at once (no stale value beside the error)."""
        if self.snr_problem():
            self.dock.effective_label.setText("")
        self._timer.start()

    @property
    def pending(self) -> bool:
        """True while an effective-SNR update waits for the inputs to settle."""
        return self._timer.isActive()

    def update_effective_snr(self) -> str:
        """Compute the effective SNR at the brightest b = 0 now and show it (blank while an input is invalid)."""
        self._timer.stop()
        d = self.dock
        try:
            kwargs = self.simulate_kwargs()
            pct = effective_snr(d.model_name, d.protocol(), ranges=d.ranges(),
                                fraction_sampler=d.sampler_combo.currentData(), n=EFFECTIVE_N, seed=0, **kwargs)
            text = "effective SNR at the brightest b = 0: " + format_snr_percentiles(pct)
        except (ValueError, OSError):
            text = ""
        d.effective_label.setText(text)
        return text

    # ------------------------------------------------------------------ match a DWI
    def _inputs(self):
        """(Dwi, mask or None, layer name, source name) of the chosen DWI layer; ValueError saying what is wrong."""
        from napari_rverdict.data.dwi import Dwi

        layer = self.dock.match_dwi_combo.layer()
        if layer is None:
            raise ValueError("No DWI layer to match: open a 4D diffusion NIfTI (or the sample phantom).")
        data = layer_to_xyz(np.asarray(layer.data, dtype=np.float32))
        protocol = self._protocol(layer, data.shape[-1])
        mask_layer = self.dock.match_mask_combo.layer()
        mask = on_dwi_grid(mask_layer, data.shape[:3], "mask", (layer.metadata or {}).get("affine"))
        if mask is not None:
            mask = np.nan_to_num(mask.astype(np.float64)) != 0
        source = (layer.metadata or {}).get("source_path")
        source = Path(source).name if source and Path(str(source)).suffix else layer.name
        return Dwi.from_array(data, None, protocol), mask, layer.name, source

    def _protocol(self, layer, n_volumes: int):
        """The layer's own protocol, else the INNOVATE preset or the dock's protocol file when the volume count
        fits."""
        prot = layer_protocol(layer)
        if prot is not None:
            return prot
        candidates = [Protocol.innovate(direction_averaged=False), Protocol.innovate(direction_averaged=True)]
        if self.dock._file_protocol is not None:
            candidates.append(self.dock._file_protocol[1])
        for p in candidates:
            if len(p) == n_volumes:
                return p
        raise ValueError(f"'{layer.name}' has no protocol (no .bval / .scheme beside the file) and its {n_volumes} "
                         "volumes fit neither the INNOVATE preset nor the chosen protocol file.")

    def match(self) -> None:
        """Estimate the chosen DWI's noise in a worker; on success Generate draws its SNR from the DWI's."""
        if self.worker is not None:
            return
        try:
            dwi, mask, name, source = self._inputs()
        except ValueError as exc:
            self._fail(str(exc))
            return
        worker = create_worker(_estimate_job, dwi, mask, source, name, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda est: self._matched(est, name))
        worker.errored.connect(self._failed)
        worker.finished.connect(self._finished)
        self.worker = worker
        self.dock.match_btn.setEnabled(False)
        self.dock.match_message.info(f"estimating the noise of '{name}'…")
        self.dock.match_message.setVisible(True)
        worker.start()

    def _matched(self, est, name: str) -> None:
        d = self.dock
        if self.estimate is None:
            self._typed = (d.snr_edit.text(), d.reference_combo.currentIndex())
        self.estimate, self.matched_layer = est, name
        d.snr_edit.blockSignals(True)
        d.snr_edit.setText(f"matched to {name}")
        d.snr_edit.blockSignals(False)
        d.snr_edit.setEnabled(False)
        d.snr_edit.setStyleSheet("")
        d.reference_combo.setToolTip(MATCHED_REFERENCE_TIP)
        d.clear_match_btn.setEnabled(True)
        d.match_message.ok(f"'{name}': {est.describe()}. Generate trains at this noise (see the effective SNR).")
        d.match_message.setVisible(True)
        d._validate()
        self.update_effective_snr()

    def clear(self) -> None:
        """Forget the match: the typed SNR and reference come back."""
        d = self.dock
        if self.estimate is None:
            return
        self.estimate, self.matched_layer = None, None
        text, index = self._typed
        d.snr_edit.setEnabled(True)
        d.snr_edit.setText(text)
        d.reference_combo.setToolTip(self._reference_tip)
        d.reference_combo.setCurrentIndex(index)
        d.clear_match_btn.setEnabled(False)
        d.match_message.info("")
        d.match_message.setVisible(False)
        d._validate()
        self.update_effective_snr()

    def _fail(self, text: str) -> None:
        self.dock.match_message.error(text)
        self.dock.match_message.setVisible(True)
        show_error(text)

    def _failed(self, exc) -> None:
        self._fail(str(exc) if isinstance(exc, ValueError) else f"noise estimate failed: {type(exc).__name__}: {exc}")

    def _finished(self) -> None:
        self._release()
        self.dock.match_btn.setEnabled(True)

    def _release(self) -> None:
        worker, self.worker = self.worker, None
        for sig in ("returned", "errored", "finished"):
            with contextlib.suppress(TypeError, RuntimeError, AttributeError):
                getattr(worker, sig).disconnect()

    def shutdown(self) -> None:
        """The dock is going away: nothing the running estimate returns reaches it."""
        self._timer.stop()
        if self.worker is not None:
            self._release()


def _estimate_job(dwi, mask, source, layer=""):
    from napari_rverdict.data.noise_estimate import estimate_noise

    est = estimate_noise(dwi, mask)
    est.source, est.layer = source, layer  # the file (provenance) and the layer the docks name
    return est
