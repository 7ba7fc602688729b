"""Dock 2 — Train: the same ``iter_training`` the CLI runs, in a napari worker, with live loss curves.

The widgets and their layout are in :mod:`napari_rverdict._napari.train_dock.form`, the worker in
:mod:`napari_rverdict._napari.train_dock.job`. A state (idle, training, stopping, done, stopped, crashed) drives the
buttons. Stop sets a ``threading.Event`` the trainer checks before every batch: the best and the last weights are
kept. Closing the dock or the viewer stops the worker the same way.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import napari
import torch
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog, QMessageBox, QTableWidgetItem, QWidget

from napari_rverdict._napari import viewer_hooks
from napari_rverdict._napari._common import LifetimeGuard, format_number, release_worker
from napari_rverdict._napari.state import get_state, model_label
from napari_rverdict._napari.train_dock import form
from napari_rverdict._napari.train_dock.form import NETWORKS
from napari_rverdict._napari.train_dock.job import (
    EVAL_N,
    StopEvent,
    TrainState,
    format_seconds,
    training_job,
    validation_record,
)
from napari_rverdict.data.noise import describe_noise
from napari_rverdict.learn.config import TrainConfig
from napari_rverdict.learn.nets import default_hyperparameters


class TrainWidget(QWidget):
    """Network, hyper-parameters and device → Start / Stop; live curves; validation table; Save / Load bundle."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.session = get_state(napari_viewer)
        self.worker = None
        self.stop_event = StopEvent()
        self.result = None  # TrainResult of the last run
        self.last_state_dict = None
        self.report = None
        self.state = TrainState.IDLE
        self._pbar = None
        self._t_start = 0.0
        form.build(self)
        self._connect()
        viewer_hooks.install(napari_viewer)  # axis names, contours, bright volume: whichever dock opens first
        self._data_changed(self.session.data)
        self._bundle_changed(self.session.bundle)
        self._set_state(TrainState.IDLE)

    def _connect(self) -> None:
        self.net_combo.currentIndexChanged.connect(self._update_defaults)
        self.start_btn.clicked.connect(self.start)
        self.stop_btn.clicked.connect(self.stop)
        self.save_btn.clicked.connect(self._save_dialog)
        self.load_btn.clicked.connect(self._load_dialog)
        self.session.data_changed.connect(self._data_changed)
        self.session.bundle_changed.connect(self._bundle_changed)
        box = [self.stop_event]
        self._stop_box = box
        self.destroyed.connect(lambda *_, box=box: box[0].set())  # last resort: never leave a thread training
        self._guard = LifetimeGuard(self, self.shutdown)

    # ------------------------------------------------------------------ state
    def _set_state(self, state: TrainState) -> None:
        self.state = state
        running = state in (TrainState.TRAINING, TrainState.STOPPING)
        self.start_btn.setEnabled(not running and self.session.data is not None)
        self.stop_btn.setEnabled(state == TrainState.TRAINING)
        for w in (self.net_combo, self.depth_spin, self.width_spin, self.epochs_spin, self.batch_spin, self.lr_spin,
                  self.patience_spin, self.scheduler_check, self.device_combo, self.seed_spin, self.load_btn,
                  self.uncertainty_check):
            w.setEnabled(not running)
        self.finetune_check.setEnabled(not running and self.session.bundle is not None)
        if self.session.bundle is None:
            self.finetune_check.setChecked(False)
        self.save_btn.setEnabled(not running and self.session.bundle is not None)

    def _model_name(self) -> str | None:
        if self.session.data is not None:
            return self.session.data.model.name
        if self.session.bundle is not None:
            return self.session.bundle.model.name
        return None

    def _update_defaults(self, *_) -> None:
        try:
            d, w = default_hyperparameters(self.net_combo.currentData(), self._model_name())
        except Exception:  # noqa: BLE001
            d, w = None, None
        self.depth_spin.setSpecialValueText("auto")
        self.width_spin.setSpecialValueText("auto")
        tip = f"auto = the paper's default for this network and model: depth {d}, width {w}" if d else "auto = default"
        self.depth_spin.setToolTip(tip)
        self.width_spin.setToolTip(tip)
        self.defaults_label.setText(f"auto: depth {d}, width {w}" if d else "")

    def _data_changed(self, data) -> None:
        if data is None:
            self.data_label.setText("Step 2 of 3. No training signals yet: Generate them in the Simulate dock "
                                    "(or Load a bundle).")
        else:
            noise = describe_noise(data.snr_setting, data.snr_reference, data.matched)
            self.data_label.setText(f"Step 2 of 3. Training signals: {len(data):,} {model_label(data.model.name)},"
                                    f" {len(data.protocol)} measurements, {noise}.")
        self._update_defaults()
        if self.state not in (TrainState.TRAINING, TrainState.STOPPING):
            self._set_state(self.state)

    def _bundle_changed(self, bundle) -> None:
        self.bundle_label.setText("" if bundle is None else "Current model: " + bundle.describe().splitlines()[0])
        if bundle is not None and (self.result is None or self.result.bundle is not bundle):
            self.result = None  # a loaded model (here, in the Maps dock, or the sample's): show what it was
            self.last_state_dict = None
            self._restore(bundle, settings=self.session.bundle_origin != "sample")
        if self.state not in (TrainState.TRAINING, TrainState.STOPPING):
            self._set_state(self.state)

    def _restore(self, bundle, settings: bool = True) -> None:
        """Show a loaded bundle's settings (unless ``settings`` is False: the sample's model keeps the dock's
        device-sized defaults), loss curves and validation table."""
        self.plot.set_ylabel(loss_label(bundle.has_uncertainty))
        self.plot.set_history(bundle.history)
        self.plot.flush()
        self.show_validation((bundle.extra or {}).get("validation"))
        if not settings:
            return
        cfg = bundle.train_config or {}
        idx = self.net_combo.findData(bundle.net_name)
        if idx >= 0:
            self.net_combo.setCurrentIndex(idx)
        d0, w0 = default_hyperparameters(bundle.net_name, bundle.model.name)
        self.depth_spin.setValue(0 if bundle.depth in (None, d0) else int(bundle.depth))
        self.width_spin.setValue(0 if bundle.width in (None, w0) else int(bundle.width))
        for spin, key in ((self.epochs_spin, "epochs"), (self.batch_spin, "batch_size"), (self.seed_spin, "seed")):
            if cfg.get(key) is not None:
                spin.setValue(int(cfg[key]))
        if cfg.get("lr") is not None:
            self.lr_spin.setValue(float(cfg["lr"]))
        if "patience" in cfg:
            self.patience_spin.setValue(int(cfg["patience"] or 0))
        self.scheduler_check.setChecked(bool(cfg.get("scheduler", False)))
        self.uncertainty_check.setChecked(bool(cfg.get("uncertainty", bundle.has_uncertainty)))
        dev = self.device_combo.findText(str(cfg.get("device", "auto")))
        self.device_combo.setCurrentIndex(max(dev, 0))

    def config(self) -> TrainConfig:
        cfg = TrainConfig(
            net=self.net_combo.currentData(), depth=self.depth_spin.value() or None,
            width=self.width_spin.value() or None, epochs=self.epochs_spin.value(),
            batch_size=self.batch_spin.value(), lr=float(self.lr_spin.value()),
            patience=self.patience_spin.value() or None, device=self.device_combo.currentText(),
            seed=self.seed_spin.value(), scheduler=self.scheduler_check.isChecked(),
            uncertainty=self.uncertainty_check.isChecked(),
        )
        data = self.session.data
        if data is not None:  # a few batch reports per epoch so the train curve moves within an epoch
            n_batches = max(1, math.ceil(len(data.train_index) / cfg.batch_size))
            cfg.report_every = max(1, min(50, n_batches // 10 or 1))
        cfg.validate()
        return cfg

    # ------------------------------------------------------------------ run
    def start(self) -> None:
        if self.state in (TrainState.TRAINING, TrainState.STOPPING):
            return
        data = self.session.data
        if data is None:
            self.message.error("No training signals: press Generate in the Simulate dock first.")
            return
        try:
            cfg = self.config()
            from napari_rverdict.learn.device import resolve_device

            resolve_device(cfg.device)
        except ValueError as exc:
            self.message.error(str(exc))
            return
        init_state = None
        if self.finetune_check.isChecked() and self.finetune_check.isEnabled():
            try:
                init_state = self._init_state(data, cfg)
            except ValueError as exc:
                self.message.error(str(exc))
                return
        self.stop_event = StopEvent()
        self._stop_box[0] = self.stop_event
        self.result = None
        self.last_state_dict = None
        self.report = None
        self.show_validation(None)
        if init_state is None:
            self.plot.clear()
        self.plot.set_ylabel(loss_label(cfg.uncertainty))
        self.epoch_bar.setRange(0, cfg.epochs)
        self.epoch_bar.setValue(0)
        self.batch_bar.setRange(0, 1)
        self.batch_bar.setValue(0)
        self.eta_label.setText("starting…")
        self.message.info(f"{'fine-tuning' if init_state is not None else 'training'} {dict(NETWORKS)[cfg.net]} "
                          f"on {len(data):,} signals…")
        self._pbar = napari_progress(total=cfg.epochs, desc=f"Training {cfg.net}")
        self._t_start = time.perf_counter()
        worker = training_job(data, cfg, self.stop_event, init_state=init_state, _start_thread=False,
                              _ignore_errors=True)
        worker.yielded.connect(self._on_record)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set_state(TrainState.TRAINING)
        worker.start()

    def _init_state(self, data, cfg: TrainConfig):
        """The current model's weights to start from; ValueError naming what does not match."""
        bundle = self.session.bundle
        if bundle.model.name != data.model.name or bundle.n_inputs != len(data.protocol):
            raise ValueError(f"Cannot fine-tune: the model is {model_label(bundle.model.name)} with "
                             f"{bundle.n_inputs} measurements, the signals {model_label(data.model.name)} with "
                             f"{len(data.protocol)}.")
        d0, w0 = default_hyperparameters(cfg.net, data.model.name)
        size = (cfg.depth or d0, cfg.width or w0)
        if (bundle.net_name, bundle.depth, bundle.width, bool(bundle.has_uncertainty)) != \
                (cfg.net, *size, bool(cfg.uncertainty)):
            raise ValueError(f"Cannot fine-tune: set the model's network ({bundle.net_name}, depth {bundle.depth}, "
                             f"width {bundle.width}, uncertainty {'on' if bundle.has_uncertainty else 'off'}).")
        return {k: v.detach().clone() for k, v in bundle.network.state_dict().items()}

    def stop(self) -> None:
        """Ask the trainer to stop after the current batch; best and last weights are kept."""
        if self.state == TrainState.TRAINING:
            self.stop_event.set()
            self.message.info("stopping after this batch…")
            self._set_state(TrainState.STOPPING)

    def shutdown(self) -> None:
        """The dock or the viewer is going away: stop the worker, skip the evaluation."""
        self.stop_event.closing = True
        self.stop_event.set()
        if self.worker is not None:
            try:
                self.worker.quit()
            except RuntimeError:
                pass

    def _on_record(self, item) -> None:
        kind, payload = item
        if kind == "progress":
            rec = payload
            self.batch_bar.setRange(0, rec.n_batches)
            self.batch_bar.setValue(rec.batch)
            self.epoch_bar.setValue(rec.epoch - 1 if rec.kind == "batch" else rec.epoch)
            self.eta_label.setText(f"elapsed {format_seconds(rec.elapsed_s)} · ETA {format_seconds(rec.eta_s)} · "
                                   f"lr {rec.lr:.2g}")
            x = rec.epoch - 1 + rec.batch / max(rec.n_batches, 1)
            if rec.kind == "batch":
                self.plot.add_train(x, rec.train_loss)
            else:
                self.plot.add_val(rec.epoch, rec.val_loss)
                self.plot.set_best(rec.best_epoch)
                pbar = self._pbar  # set_description may process events (and the finish) before refresh
                if pbar is not None:
                    pbar.n = rec.epoch
                    pbar.set_description(f"Training: epoch {rec.epoch}/{rec.n_epochs}, val {rec.val_loss:.3g}")
                    pbar.refresh()
        elif kind == "done":
            result = payload.result
            self.result = result
            self.last_state_dict = result.last_state_dict
            self.plot.set_history(result.history)
            self.session.bundle = result.bundle
            hist = result.history
            best = hist.get("best_epoch")
            best_val = hist["val_loss"][best - 1] if best else float("nan")
            what = "stopped" if result.stopped else "finished"
            self.message.ok(f"Training {what}: {result.epochs_run} epoch(s), {format_seconds(result.elapsed_s)}; "
                            f"best at epoch {best}. Next: the Maps dock.")
            self.message.setToolTip(f"best validation loss {best_val:.4g} at epoch {best}; the best weights are "
                                    "the current model")
            self.table_caption.setText(f"evaluating on {EVAL_N:,} new synthetic signals…")
        elif kind == "metrics":
            self.report = payload
            self._fill_table(payload)
        elif kind == "error":
            self._on_error(payload)
        elif kind == "metrics_error":
            self.table_caption.setText(f"validation table unavailable: {payload}")

    def _fill_table(self, report) -> None:
        """Show the validation report and keep it in the bundle (saved and restored with it)."""
        record = validation_record(report, EVAL_N)
        bundle = self.result.bundle if self.result is not None else self.session.bundle
        if bundle is not None:
            bundle.extra = dict(bundle.extra or {}, validation=record)
        self.show_validation(record)

    def show_validation(self, record: dict | None) -> None:
        """Fill the validation table from a :func:`validation_record` (None: empty it)."""
        rows = (record or {}).get("rows") or []
        self.table.setRowCount(len(rows))
        for r, (name, unit, rmse, mape, crlb) in enumerate(rows):
            cells = [f"{name} [{unit}]" if unit else name, format_number(rmse), format_number(mape, ".1f"),
                     format_number(crlb)]
            for c, text in enumerate(cells):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.table.resizeRowsToContents()
        height = self.table.horizontalHeader().sizeHint().height() + self.table.verticalHeader().length() + 6
        self.table.setFixedHeight(max(height, 60))  # every row shown: the dock scrolls, not the table
        if not rows:
            self.table_caption.setText("")
            return
        noise = record.get("noise") or (f"SNR {record['snr']}" if record.get("snr") else "")
        self.table_caption.setText(f"The network on {int(record.get('n') or EVAL_N):,} fresh synthetic signals"
                                   + (f" at {noise}" if noise else "") + ". Hover a column header for what it "
                                   "means.")
        self.table_section.expand(animate=False)

    def _on_error(self, exc) -> None:
        self._set_state(TrainState.CRASHED)
        self.message.error(f"Training failed: {type(exc).__name__}: {exc}")
        show_error(f"Training failed: {exc}")

    def _on_finished(self) -> None:
        release_worker(self, ("yielded", "errored", "finished"))
        if torch.cuda.is_available():  # the trainer's CUDA tensors are gone: give the cached memory back
            torch.cuda.empty_cache()
        self.plot.flush()
        if self.state != TrainState.CRASHED:
            stopped = self.result is not None and self.result.stopped
            self._set_state(TrainState.STOPPED if stopped else TrainState.DONE)
            if stopped:  # no stale "ETA 28:58"; the epoch bar keeps its total: "epoch 7 / 50", not a full "7 / 7"
                self.epoch_bar.setValue(min(self.result.epochs_run, self.epoch_bar.maximum()))
                self.batch_bar.setRange(0, 1)
                self.batch_bar.setValue(0)
                self.eta_label.setText(f"stopped after {self.result.epochs_run} epoch(s), "
                                       f"{format_seconds(self.result.elapsed_s)}")
        elif self.state == TrainState.CRASHED:
            self.eta_label.setText("")

    # ------------------------------------------------------------------ bundles
    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save model bundle", "verdict-model.pt", "Model bundle (*.pt)")
        if not path:
            return
        # the dialog asked about the chosen file; the others written (".pt" added, the last weights) are asked here
        others = [p for p in self.bundle_files(path) if p.exists() and p != Path(path)]
        if others and QMessageBox.question(
                self, "Overwrite?", f"{', '.join(p.name for p in others)} also exist(s) in {others[0].parent}. "
                "Overwrite?") != QMessageBox.StandardButton.Yes:
            return
        self.save_bundle(path, overwrite=True)

    def _has_last(self, bundle) -> bool:
        return self.last_state_dict is not None and self.result is not None and self.result.bundle is bundle

    def bundle_files(self, path) -> list[Path]:
        """The files :meth:`save_bundle` writes: ``path`` (``.pt`` added when missing) and, after a run, the last
        weights as ``<stem>-last.pt``."""
        path = Path(path)
        if path.suffix != ".pt":
            path = path.with_name(path.name + ".pt")
        bundle = self.session.bundle
        return [path] + ([path.with_name(path.stem + "-last.pt")] if bundle is not None and self._has_last(bundle)
                         else [])

    def save_bundle(self, path, overwrite: bool = False) -> list[Path]:
        """Write the current (best) model to ``path``; after a run also its last weights to ``<stem>-last.pt``.
        Existing files are replaced only with ``overwrite`` (both checked before either is written)."""
        bundle = self.session.bundle
        if bundle is None:
            self.message.error("Nothing to save: train or load a model first.")
            return []
        targets = self.bundle_files(path)
        path = targets[0]
        clash = [p for p in targets if p.exists()]
        if clash and not overwrite:
            self.message.error(f"Not saved: {', '.join(p.name for p in clash)} already in {clash[0].parent}; "
                               "choose another name.")
            return []
        try:
            written = [bundle.save(path, overwrite=overwrite)]
            if len(targets) > 1:
                from napari_rverdict.learn.bundle import Bundle

                last = Bundle.from_payload({"meta": bundle.metadata(), "state_dict": self.last_state_dict})
                last.extra = dict(last.extra, weights="last")
                written.append(last.save(targets[1], overwrite=overwrite))
        except (OSError, ValueError, RuntimeError) as exc:
            self.message.error(f"Could not save: {exc}")
            show_error(f"Could not save the bundle: {exc}")
            return []
        self.session.bundle_path = str(path)
        self.message.ok("Saved " + ", ".join(str(p) for p in written))
        return written

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load model bundle", "", "Model bundle (*.pt);;All files (*)")
        if path:
            self.load_bundle(path)

    def load_bundle(self, path) -> object | None:
        """Load a bundle: it becomes the current model, and the dock shows its settings and curves."""
        from napari_rverdict.learn.bundle import load_bundle

        try:
            bundle = load_bundle(path)
        except (ValueError, OSError) as exc:
            self.message.error(str(exc))
            show_error(str(exc))
            return None
        self.session.set_bundle(bundle, origin="file", path=path)
        self.message.ok(f"Loaded {Path(path).name}.")
        self.message.setToolTip(bundle.describe())
        show_info(f"Loaded model bundle {Path(path).name}")
        return bundle


def loss_label(uncertainty: bool) -> str:
    """The Train dock's loss axis: MSE on the scaled targets, or the β-NLL a run with uncertainty minimises."""
    return "β-NLL (scaled)" if uncertainty else "MSE (scaled)"
