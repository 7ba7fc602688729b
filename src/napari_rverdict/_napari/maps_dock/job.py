"""The Maps dock's worker and the helpers that read layers for it (no widgets)."""

from __future__ import annotations

import numpy as np

from napari_rverdict._napari._common import JobStopped, stoppable, with_napari_threads


def layer_affine(layer) -> np.ndarray:
    """The NIfTI affine of a layer: ``metadata['affine']``, else one built from its spatial scale / translate."""
    from napari_rverdict._napari.writer import affine_from_meta

    return affine_from_meta({"metadata": layer.metadata, "scale": list(layer.scale),
                             "translate": list(layer.translate)})


# The methods the Maps dock lists (name → tooltip). A new method adds an entry here and a branch in compute_job;
# its maps become layers named "<method> <map> [unit]" (METHOD_PREFIX in layers.py) and rows of the ROI table.
SELF_SUPERVISED = "self-supervised"
METHODS = {
    "network": "the current model's network: maps in seconds",
    "NLLS": "the network's maps, then a non-linear least-squares fit started from them (the reference; slow on "
            "large masks) and a network-vs-NLLS table",
    SELF_SUPERVISED: "trains a small encoder on this DWI's own voxels, the model's signal equation as its decoder "
                     "(ssVERDICT, Sen et al., MRM 2024): needs no trained model; choose the model and the most "
                     "epochs below (early stopping on held-out voxels usually ends sooner; Stop keeps the best "
                     "weights)",
}
NEEDS_BUNDLE = ("network", "NLLS")  # the methods that use the current model's network
# The self-supervised loss plot's y label, by the loss the fit used (reported as ("loss", key) and out["loss"]).
LOSS_LABELS = {"rician": "Rician NLL (normalised signal)", "mse": "MSE (normalised signal)"}


def noise_check(bundle, dwi, mask) -> str | None:
    """One line when the DWI's estimated SNR lies outside what ``bundle`` was trained on
    (:func:`~napari_rverdict.data.noise_estimate.noise_mismatch`: its quick estimators only, < 1 s on the
    phantom), else None. A check that cannot run (no background, no repeated volumes) is no warning."""
    from napari_rverdict.data.noise_estimate import noise_mismatch

    try:
        return noise_mismatch(bundle, dwi, mask)
    except ValueError:  # InputError included: the check never blocks the maps
        return None


@with_napari_threads
def compute_job(bundle, dwi, mask, device, uncertainty, method, progress, stop_event=None, *, model=None,
                epochs: int | None = None, seed: int = 0):
    """The worker: the maps of ``method`` ({method: {map: (x, y, z)}}); no layers here. Reports through
    ``progress``: ``(stage, done, total)`` tuples (voxels), ``("noise", line)`` when the DWI's SNR lies outside
    the bundle's training range (the maps are still computed; also ``out["noise_warning"]``), and, for
    self-supervised, ``("loss", "rician" | "mse")`` (the loss the fit uses, :data:`LOSS_LABELS`) and then
    each :class:`~napari_rverdict.learn.config.TrainProgress` record (EPOCH with the losses, then DONE).

    Setting ``stop_event`` (a :class:`threading.Event`) stops the run at the network's next chunk or inside the
    NLLS fit (``fit_volume(stop_event=...)`` raises ``FitCancelled``); the result is then
    ``{"stopped": True, "results": {}}``, never an error. Self-supervised (``model``: "verdict" / "rverdict",
    ``epochs``: the most) ends its training instead and makes the maps from the best weights so far;
    ``out["training"]`` then says so ({"epoch", "best_epoch", "max_epochs", "stopped"}).
    """
    from napari_rverdict.maps.nlls import FitCancelled, fit_volume
    from napari_rverdict.maps.predict import predict_volume

    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; choose one of: {', '.join(METHODS)}")
    if method == SELF_SUPERVISED:
        return self_supervised_job(model, dwi, mask, device, epochs, seed, progress, stop_event)
    out = {"results": {}, "stopped": False, "noise_warning": None}
    if stop_event is not None:
        progress = stoppable(progress, stop_event)
    try:
        out["noise_warning"] = noise_check(bundle, dwi, mask)
        if out["noise_warning"]:
            progress(("noise", out["noise_warning"]))
        out["results"]["network"] = predict_volume(bundle, dwi, mask=mask, uncertainty=uncertainty, device=device,
                                                   progress=lambda d, t: progress(("network", d, t)))
        if method == "NLLS":
            out["results"]["NLLS"] = fit_volume(bundle.model, dwi, protocol=None, mask=mask, device=device,
                                                init=bundle, progress=lambda d, t: progress(("NLLS", d, t)),
                                                stop_event=stop_event)
    except (JobStopped, FitCancelled):
        out.update(results={}, stopped=True)
    return out


def self_supervised_job(model, dwi, mask, device, epochs, seed, progress, stop_event) -> dict:
    """:func:`~napari_rverdict.maps.self_supervised.fit_self_supervised` with every record passed on; a stop
    keeps the best weights, so the maps always come back."""
    from napari_rverdict.maps import self_supervised

    last: dict = {}

    def report(record) -> None:
        last["record"] = record
        progress(record)

    # the Rician loss on the DWI's own σ; the squared error (with a warning saying why) where σ cannot be estimated
    sigma = self_supervised.estimated_sigma("auto", dwi, mask=mask)
    loss = "mse" if sigma is None else "rician"
    progress(("loss", loss))
    maps = self_supervised.fit_self_supervised(model, dwi, mask=mask, device=device, epochs=int(epochs), seed=seed,
                                               progress=report, stop_event=stop_event, sigma=sigma)
    rec = last.get("record")
    training = {"epoch": rec.epoch if rec else 0, "best_epoch": rec.best_epoch if rec else None,
                "max_epochs": int(epochs), "stopped": stop_event is not None and stop_event.is_set()}
    return {"results": {SELF_SUPERVISED: maps}, "stopped": False, "noise_warning": None, "training": training,
            "loss": loss}
