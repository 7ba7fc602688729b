"""The training settings and records: :class:`TrainConfig` (with its checks), :class:`TrainingDiverged`, and the
progress records the training engine (:mod:`napari_rverdict.learn.train`) yields: :class:`ProgressKind`,
:class:`TrainProgress`, :class:`TrainResult`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from napari_rverdict.data.noise import check_snr_reference
from napari_rverdict.errors import InputError, check_seed, positive_int
from napari_rverdict.learn.bundle import Bundle
from napari_rverdict.learn.nets import available_networks


class TrainingDiverged(InputError):
    """Training produced a non-finite loss or non-finite weights (usually a too-high learning rate); no bundle."""

    def __init__(self, epoch: int | None, lr: float, what: str = "the training loss became NaN or inf"):
        when = f" at epoch {epoch}" if epoch else ""
        super().__init__(f"training diverged{when}: {what} (learning rate {lr:g}); "
                         f"try a lower learning rate (the default is {TrainConfig.lr:g})")
        self.epoch = epoch



def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


@dataclass
class TrainConfig:
    """Training settings.

    net : "mlp", "resnetreg" or "resnetreg-st".  depth, width : None = the network's default for the model.
    epochs : maximum number of epochs.  batch_size : samples per Adam step.  lr : Adam learning rate.
    patience : stop after this many epochs without a better validation loss (0 or None: never stop early).
    device : "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:i" or "mps".
    seed : weights initialisation and batch order (same seed → identical weights on CPU).
    report_every : a "batch" progress record every this many batches (the only per-batch host syncs).
    scheduler : halve the learning rate when the validation loss plateaus (ReduceLROnPlateau,
        patience max(1, patience // 4)).
    weight_decay : Adam L2 weight decay.
    uncertainty : the network also predicts a variance per target (2k outputs), trained with the β-NLL
        (β = ``uncertainty_beta``, Seitzer et al. 2022), then the intervals of every map are calibrated on a fresh
        synthetic set (:func:`~napari_rverdict.learn.uncertainty.calibration_data`) by normalised split conformal
        prediction (see :mod:`napari_rverdict.learn.uncertainty`).
        Losses reported and early stopping stay the MSE of the means; the validation Gaussian NLL is added to
        the history as ``val_nll``.
    snr_reference : the noise reference the training data must be on ("s0" or "peak",
        :mod:`napari_rverdict.data.noise`); None: whatever the data says. The bundle stores the data's.
    """

    net: str = "mlp"
    depth: int | None = None
    width: int | None = None
    epochs: int = 100
    batch_size: int = 100
    lr: float = 1e-3
    patience: int | None = 20
    device: str = "auto"
    seed: int = 0
    report_every: int = 50
    scheduler: bool = False
    weight_decay: float = 0.0
    uncertainty: bool = False
    uncertainty_beta: float = 0.5
    snr_reference: str | None = None

    def validate(self) -> None:
        if str(self.net).lower() not in available_networks():
            raise InputError(f"unknown network '{self.net}'; choose one of: {', '.join(available_networks())}")
        positive_int(self.epochs, "epochs")
        check_seed(self.seed, "seed", allow_none=False)
        if int(self.batch_size) != self.batch_size or self.batch_size < 2:
            raise InputError(f"batch_size must be an integer >= 2 (BatchNorm needs 2 samples), got {self.batch_size!r}")
        if not (_is_number(self.lr) and np.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"lr must be a positive number (finite), got {self.lr!r}")
        if self.patience is not None and self.patience < 0:
            raise InputError(f"patience must be >= 0, got {self.patience!r}")
        positive_int(self.report_every, "report_every")
        if not (_is_number(self.weight_decay) and np.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise InputError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not isinstance(self.uncertainty, (bool, np.bool_)):
            raise InputError(f"uncertainty must be True or False, got {self.uncertainty!r}")
        if not (np.isfinite(self.uncertainty_beta) and 0.0 <= self.uncertainty_beta <= 1.0):
            raise InputError(f"uncertainty_beta must be in [0, 1], got {self.uncertainty_beta!r}")
        if self.snr_reference is not None:
            check_snr_reference(self.snr_reference)

    def to_dict(self) -> dict:
        return asdict(self)


class ProgressKind(str, enum.Enum):
    """What a :class:`TrainProgress` record reports. A ``str`` enum: ``rec.kind == "epoch"`` holds as well."""

    BATCH = "batch"  # every ``report_every`` batches
    EPOCH = "epoch"  # after each epoch's validation
    DONE = "done"  # the last record; ``result`` holds the TrainResult

    def __str__(self) -> str:
        return self.value


@dataclass
class TrainProgress:
    """One progress record. ``kind`` (:class:`ProgressKind`): BATCH (every ``report_every`` batches), EPOCH (after
    validation) or DONE (last record; ``result`` holds the :class:`TrainResult`). Losses are MSE on scaled targets;
    times in s. ``epoch`` counts from 1; ``batch`` is the number of batches done in this epoch."""

    kind: ProgressKind
    epoch: int
    n_epochs: int
    batch: int
    n_batches: int
    train_loss: float | None
    val_loss: float | None
    lr: float
    elapsed_s: float
    eta_s: float | None
    best_epoch: int | None
    best_val_loss: float | None
    result: TrainResult | None = None


@dataclass
class TrainResult:
    """What training gives back.

    bundle : a Bundle with the best weights (CPU, eval mode).  last_state_dict : the last weights (CPU).
    history : {"train_loss", "val_loss", "lr": per epoch lists, "best_epoch": 1-based or None,
        "partial_last_epoch": bool (the last entry is an interrupted epoch)}.
    stopped : True when the stop event ended training.  epochs_run : epochs started (the interrupted one counts).
    n_steps : optimiser steps taken.  elapsed_s : wall time.
    """

    bundle: Bundle
    last_state_dict: dict
    history: dict
    stopped: bool
    epochs_run: int
    n_steps: int = 0
    elapsed_s: float = 0.0
    device: str = "cpu"
    extra: dict = field(default_factory=dict)


def as_train_config(config) -> TrainConfig:
    """A TrainConfig from None (the defaults), a TrainConfig, or a mapping of its fields (``{"epochs": 3}``)."""
    if config is None:
        return TrainConfig()
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, Mapping):
        names = {f.name for f in fields(TrainConfig)}
        unknown = [str(k) for k in config if k not in names]
        if unknown:
            raise InputError(f"unknown training setting(s) {', '.join(unknown)}; TrainConfig has "
                             f"{', '.join(sorted(names))}")
        return TrainConfig(**config)
    raise InputError(f"config must be a TrainConfig (or a dict of its settings), got {type(config).__name__}")

