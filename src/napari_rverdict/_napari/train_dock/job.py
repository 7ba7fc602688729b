"""The Train dock's worker and its small helpers (no widgets): the states, devices, time and report formatting.

The worker is a generator that yields only small records (the trainer's ``TrainProgress``; the last one carries the
CPU bundle) and never touches layers.
"""

from __future__ import annotations

import enum
import math
import threading

import torch
from napari.qt.threading import thread_worker

from napari_rverdict._napari._common import with_napari_threads
from napari_rverdict.learn.config import TrainConfig
from napari_rverdict.learn.train import iter_training

EVAL_N = 2000  # synthetic test signals for the validation table


class TrainState(enum.Enum):
    IDLE = "idle"
    TRAINING = "training"
    STOPPING = "stopping"
    DONE = "done"
    STOPPED = "stopped"
    CRASHED = "crashed"


class StopEvent(threading.Event):
    closing = False  # set when the dock / viewer goes away: skip the evaluation too


def available_devices() -> list[str]:
    """'auto', 'cpu', every visible 'cuda:i', and 'mps' when present."""
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def format_seconds(s) -> str:
    if s is None or not math.isfinite(s):
        return "–"
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def report_rows(report) -> list[tuple[str, str, float, float, float]]:
    """(parameter, unit, RMSE, MAPE in % of the training range, median √CRLB) rows of an ``EvaluationReport``."""
    return [(name, str(r.get("unit") or ""), _num(r.get("rmse")), 100.0 * _num(r.get("mape")), _num(r.get("crlb")))
            for name, r in report.rows.items()]


def validation_record(report, n: int = EVAL_N) -> dict:
    """The validation table as plain data, kept in ``bundle.extra["validation"]`` so it is saved and restored
    with the bundle: {"n", "snr", "noise" (the noise it was drawn with, :func:`.data.noise.describe_noise`),
    "rows": [[parameter, unit, RMSE, MAPE %, √CRLB], ...]}."""
    snr = getattr(report, "snr", None)
    return {"n": int(n), "snr": None if snr is None else str(snr), "noise": str(getattr(report, "noise", "") or ""),
            "rows": [[name, unit, rmse, mape, crlb] for name, unit, rmse, mape, crlb in report_rows(report)]}


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


@thread_worker
@with_napari_threads
def training_job(data, config: TrainConfig, stop_event: threading.Event, evaluate_after: bool = True,
                 init_state=None):
    """Generator worker: yields ("progress", TrainProgress) … ("done", TrainProgress with .result),
    then ("metrics", report) or ("metrics_error", message); a training failure yields ("error", exception).
    ``init_state``: start from these weights (fine-tune / resume)."""
    result = None
    try:
        for rec in iter_training(data, config, stop_event, init_state=init_state):
            if rec.kind == "done":
                result = rec.result
                yield ("done", rec)
            else:
                yield ("progress", rec)
    except Exception as exc:  # noqa: BLE001 - superqt drops a generator's RuntimeError (e.g. CUDA out of memory)
        yield ("error", exc)  # without "finished": report it as a record instead
        return
    if not evaluate_after or result is None or getattr(stop_event, "closing", False):
        return
    try:
        from napari_rverdict.evaluate.metrics import evaluate

        yield ("metrics", evaluate(result.bundle, n=EVAL_N, seed=int(config.seed) + 12345))
    except Exception as exc:  # noqa: BLE001 - the table is a bonus; training itself succeeded
        yield ("metrics_error", f"{type(exc).__name__}: {exc}")
