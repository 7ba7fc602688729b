"""What the Maps dock shows before, during and after a run (no widgets built here, no maps computed): the rows
that belong to the chosen method, the progress bar (voxels; epochs for self-supervised), the self-supervised loss
curve (:class:`~napari_rverdict._napari.loss_plot.LossPlot`, as the Train dock's), the SNR warning, and the
closing message."""

from __future__ import annotations

from napari.utils.notifications import show_warning

from napari_rverdict._napari.maps_dock.job import LOSS_LABELS, NEEDS_BUNDLE, SELF_SUPERVISED
from napari_rverdict._napari.state import model_label

SNR_ADVICE = " (in napari: Simulate dock ▸ Match noise to this DWI, then train again)"


def method_changed(dock) -> None:
    """Show the self-supervised model / epochs and its loss section for that method only; sd maps only where a
    network with uncertainty makes them."""
    method = dock.method_combo.currentText()
    selfsup = method == SELF_SUPERVISED
    dock.ss_box.setVisible(selfsup)
    dock.loss_section.setVisible(selfsup or bool(dock.loss_plot.val_x))
    bundle = dock.session.bundle
    has_unc = method in NEEDS_BUNDLE and bundle is not None and bool(bundle.has_uncertainty)
    dock.uncertainty_check.setEnabled(has_unc)


def follow_bundle(dock, bundle) -> None:
    """The self-supervised model defaults to the loaded model's (else rVERDICT, the combo's first entry)."""
    if bundle is not None:
        i = dock.ss_model_combo.findData(bundle.model.name)
        if i >= 0:
            dock.ss_model_combo.setCurrentIndex(i)


def start(dock, run: dict) -> None:
    """A run begins: the progress bar at 0; for self-supervised an empty loss curve in its opened section."""
    dock.progress.setValue(0)
    dock.progress.setFormat("%p%")
    if run["method"] == SELF_SUPERVISED:
        dock.loss_plot.clear()
        dock.loss_section.setVisible(True)
        dock.loss_section.expand(animate=False)
        dock.progress.setFormat(f"self-supervised: epoch 0 / {run['epochs']:,}")
    dock.message.info(f"computing maps ({run['method']})…")


def on_progress(dock, item) -> None:
    """One report of the worker: a TrainProgress record (self-supervised), ("noise", line), ("loss", key) (the
    self-supervised loss), or (stage, done, total) voxels."""
    if hasattr(item, "kind"):
        _on_record(dock, item)
        return
    if item[0] == "noise":
        show_snr_warning(dock, item[1])
        return
    if item[0] == "loss":  # the loss the self-supervised fit uses: the plot's y label
        dock.loss_plot.set_ylabel(LOSS_LABELS[item[1]])
        return
    stage, done, total = item
    value = int(round(100 * done / max(total, 1)))
    dock.progress.setValue(value)
    dock.progress.setFormat(f"{stage}: {done:,} / {total:,} voxels")
    _pbar(dock, value, f"Computing maps ({stage})")


def _on_record(dock, rec) -> None:
    if rec.kind == "epoch":
        dock.loss_plot.add_train(rec.epoch, rec.train_loss)
        dock.loss_plot.add_val(rec.epoch, rec.val_loss)
        dock.loss_plot.set_best(rec.best_epoch)
    value = 100 if rec.kind == "done" else int(round(100 * rec.epoch / max(rec.n_epochs, 1)))
    dock.progress.setValue(value)
    dock.progress.setFormat(f"self-supervised: epoch {rec.epoch:,} / {rec.n_epochs:,}")
    loss = f", held-out loss {rec.val_loss:.3g}" if rec.val_loss is not None else ""
    _pbar(dock, value, f"Computing maps (self-supervised: epoch {rec.epoch}/{rec.n_epochs}{loss})")


def _pbar(dock, value: int, text: str) -> None:
    pbar = dock._pbar  # set_description may process events (and the finish) before refresh
    if pbar is not None:
        pbar.n = value
        pbar.set_description(text)
        pbar.refresh()


def show_snr_warning(dock, line: str) -> None:
    """The DWI's SNR lies outside the model's training range: the message line (a warning) and a napari
    notification; the maps are still computed."""
    text = f"SNR warning: {line}{SNR_ADVICE}."
    dock.message.warn(text + " Computing the maps anyway…" if dock.worker is not None else text)
    show_warning(text)


def closing_message(run: dict, out: dict, n_maps: int, with_nlls: bool) -> str:
    """What the message line says when the maps were added."""
    text = f"{n_maps} {model_label(run['model'].name)} maps of '{run['layer'].name}'"
    if run["method"] == SELF_SUPERVISED:
        t = out.get("training") or {}
        best = f"; maps from the best epoch, {t['best_epoch']}" if t.get("best_epoch") else ""
        if t.get("stopped"):
            text += f" (self-supervised: stopped at epoch {t['epoch']}{best})"
        else:
            text += f" (self-supervised: {t.get('epoch', 0)} epochs{best})"
    elif with_nlls:
        text += " and their NLLS reference (hidden)"
    return text + ", with the fit quality (fit_nrmse, hidden)"
