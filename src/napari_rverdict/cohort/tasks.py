"""What one subject's task does on a worker: read the DWI, make the maps, write them, and write the completion
record last.

A task is a small picklable description (:class:`PredictTask`, :class:`FitTask`) sent to the workers;
:func:`run_subject` runs it for one subject with the worker's share of torch threads (and, with several GPUs, the
worker's own GPU). The maps go to ``<out>/<subject>/`` as one file set; ``<out>/<subject>/done.json`` is written
atomically after them and holds the ROI statistics, so a subject with a readable record whose maps all exist is
complete (:func:`completed_record`) and is skipped on a rerun. The record names what the maps were made from
(:func:`task_identity`: the settings and the bundle's SHA-256; :func:`input_stamps`: the input files' sizes and
times), so a rerun after the bundle or a subject's data changed is refused rather than skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from napari_rverdict.cohort.subjects import Subject
from napari_rverdict.errors import InputError
from napari_rverdict.threads import torch_threads, using_torch_threads

DONE_FILE = "done.json"
STARTED_FILE = ".cohort-task.json"  # written when a subject's task starts: its folder is this cohort's from then on
METHODS = ("nlls", "self-supervised")
@dataclass(frozen=True)
class PredictTask:
    """Maps from a trained bundle (``maps.predict.predict_volume``)."""

    bundle: str
    device: str = "cpu"
    chunk: int = 65536
    uncertainty: bool = False

    @property
    def method(self) -> str:
        return "predict"

    def make_maps(self, dwi, mask, device: str):
        from napari_rverdict.learn.bundle import load_bundle
        from napari_rverdict.maps.predict import predict_volume

        from napari_rverdict.data.noise_estimate import noise_mismatch

        bundle = load_bundle(self.bundle)
        if (line := noise_mismatch(bundle, dwi, mask)) is not None:  # as `rverdict predict`: in the record
            warnings.warn(line, stacklevel=1)
        maps = predict_volume(bundle, dwi, None, mask, uncertainty=self.uncertainty, device=device, chunk=self.chunk)
        return maps, bundle.model


@dataclass(frozen=True)
class FitTask:
    """Maps fitted to each DWI: NLLS (``maps.nlls.fit_volume``) or the self-supervised fit
    (``maps.self_supervised.fit_self_supervised``)."""

    model: str = "rverdict"
    method: str = "nlls"
    device: str = "auto"
    n_starts: int = 4
    max_iter: int = 1000
    seed: int = 0
    epochs: int | None = None
    sigma: float | str | None = "auto"  # self-supervised: σ estimated from each DWI (Rician loss); None: MSE

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"unknown fit method '{self.method}'; choose one of: {', '.join(METHODS)}")

    def make_maps(self, dwi, mask, device: str):
        from napari_rverdict.physics.models import get_model

        model = get_model(self.model)
        if self.method == "nlls":
            from napari_rverdict.maps.nlls import fit_volume

            return fit_volume(model, dwi, None, mask, device=device, n_starts=self.n_starts, max_iter=self.max_iter,
                              seed=self.seed), model
        from napari_rverdict.maps.self_supervised import fit_self_supervised

        kw = {} if self.epochs is None else {"epochs": self.epochs}
        maps = fit_self_supervised(model, dwi, None, mask, device=device, seed=self.seed, progress=None,
                                   stop_event=None, sigma=self.sigma, **kw)
        return maps, model


# ---------------------------------------------------------------------- the worker's share of the machine
def _dask_worker():
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _threads_here() -> int:
    """Torch threads for a task on a worker we did not size: the CPUs shared by the worker's concurrent tasks."""
    worker = _dask_worker()
    n_tasks = getattr(getattr(worker, "state", None), "nthreads", None) or getattr(worker, "nthreads", 1) or 1
    return torch_threads("dask", n_workers=int(n_tasks), cpus=None) if worker is not None else torch_threads()


def device_here(device: str) -> str:
    """``device``, with "auto" / "cuda" (any case) pinned to one GPU per worker when there are several (workers
    named 0, 1, …, as a LocalCluster names them; another name picks by its characters)."""
    if str(device).lower().strip() not in ("auto", "cuda"):
        return device
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n <= 1:
        return device
    name = getattr(_dask_worker(), "name", 0)
    index = name if isinstance(name, int) else sum(map(ord, str(name)))
    return f"cuda:{index % n}"


def _restore_malloc_defaults() -> None:
    """On a worker started with ``MALLOC_TRIM_THRESHOLD_`` (Dask's default for the workers of other clusters),
    give glibc back large mmap / trim thresholds: without them every tensor ≥ 128 KiB is mmap'ed and unmapped and
    torch's elementwise ops run 3–7× slower. Nothing happens elsewhere or where ``mallopt`` is missing."""
    global _malloc_restored
    if _malloc_restored or not os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return
    _malloc_restored = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD: glibc's adaptive maximum
        libc.mallopt(-1, 64 * 2**20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


_malloc_restored = False


# ---------------------------------------------------------------------- one subject
def _roi_rows(maps: dict, subject: Subject, dwi) -> list[dict]:
    """ROI statistics of the maps: per label of the subject's label image (named by a ``phantom.json`` beside it
    where there is one, else "label N"), or over the mapped voxels (label 1, "mapped") when it has none."""
    from napari_rverdict.data.label_files import load_labels, load_mask
    from napari_rverdict.data.phantom import label_names_beside
    from napari_rverdict.maps.compare import roi_statistics

    mask = load_mask(subject.mask, dwi) if subject.mask else None
    if subject.labels:
        return roi_statistics(maps, load_labels(subject.labels, dwi), label_names_beside(subject.labels),
                              mask=mask).rows
    mapped = np.zeros(next(iter(maps.values())).shape, dtype=bool)
    for v in maps.values():
        mapped |= np.isfinite(v) & (v != 0)
    return roi_statistics(maps, mapped.astype(np.int32), {1: "mapped"}, mask=mask).rows


# ---------------------------------------------------------------------- what a completed subject was made from
def task_identity(task) -> dict:
    """What a completed subject's record must match to count as this task's: the task's settings and, for a trained
    bundle, the SHA-256 of its file (a bundle retrained under the same name is another task)."""
    identity = asdict(task)
    if isinstance(task, PredictTask):
        try:
            identity["bundle_sha256"] = hashlib.sha256(Path(task.bundle).read_bytes()).hexdigest()
        except OSError as exc:
            raise InputError(f"cannot read the model bundle {task.bundle}: {exc.strerror or exc}") from None
    return identity


def input_stamps(subject: Subject) -> dict:
    """Size and modification time of each of the subject's input files (DWI, mask, labels, a protocol file): a
    completed record with other stamps was made from other data."""
    stamps = {}
    for what, p in (("dwi", subject.dwi), ("mask", subject.mask), ("labels", subject.labels),
                    ("protocol", subject.protocol)):
        if p is None or not Path(p).is_file():  # a protocol preset name is no file
            continue
        st = Path(p).stat()
        stamps[what] = {"path": str(p), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    return stamps


def changed_inputs(record: dict, subject: Subject) -> list[str]:
    """The inputs of ``subject`` whose files differ from those its completed ``record`` was made from."""
    then, now = record.get("inputs") or {}, input_stamps(subject)
    return sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k))


def run_subject(task, subject: Subject, out_root, threads: int | None = None) -> dict:
    """Make, write and record one subject's maps; returns the completion record (also written to done.json).

    ``threads``: torch threads for the task (None: the worker's share of its CPUs). Raises whatever the task
    raises (the cohort runner reports it as the subject's one-line reason)."""
    from napari_rverdict.data.dwi import load_dwi_as_named
    from napari_rverdict.data.map_files import save_maps
    from napari_rverdict.files import write_text

    out = Path(out_root) / subject.name
    marker = out / DONE_FILE
    _forget_earlier_maps(out)  # a redo: neither the old record nor its maps may stand beside a failure
    identity, stamps = task_identity(task), input_stamps(subject)  # before reading: what these maps are made from
    write_text(out / STARTED_FILE, json.dumps({"task": identity}, indent=1) + "\n")  # a crash leaves it: a redo
    _restore_malloc_defaults()
    t0 = time.perf_counter()
    with using_torch_threads(threads or _threads_here()) as n_threads, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dwi = load_dwi_as_named(subject.dwi, subject.protocol)  # "innovate" on 20 volumes: as `rverdict predict`
        maps, model = task.make_maps(dwi, str(subject.mask) if subject.mask else None, device_here(task.device))
        written = save_maps(maps, out, dwi.affine, model=model, overwrite=True)  # a redo replaces them
        rows = _roi_rows(maps, subject, dwi)
    record = {"subject": subject.name, "status": "done", "method": task.method, "task": identity, "inputs": stamps,
              "dwi": str(subject.dwi), "maps": [p.name for p in written], "seconds": round(time.perf_counter() - t0, 3),
              "torch_threads": n_threads, "warnings": sorted({" ".join(str(w.message).split()) for w in caught}),
              "roi": rows}
    write_text(marker, json.dumps(record, indent=1) + "\n")  # last: the subject is complete once this exists
    return record


def _forget_earlier_maps(folder: Path) -> None:
    """Remove an earlier completion record and the map files it lists (only those: files this cohort wrote), so
    a redo that fails leaves no maps of another task to be read as this one's."""
    try:
        listed = json.loads((folder / DONE_FILE).read_text(encoding="utf-8")).get("maps") or []
    except (OSError, ValueError, AttributeError):
        listed = []
    for name in listed:
        if isinstance(name, str) and Path(name).name == name:  # a bare file name in the folder, nothing else
            (folder / name).unlink(missing_ok=True)
    (folder / DONE_FILE).unlink(missing_ok=True)


def written_by_a_cohort(folder) -> bool:
    """Whether a subject's ``folder`` holds a cohort task's files (its start marker or its completion record):
    those a cohort may redo; anything else there (maps of a plain ``rverdict fit``) is the user's."""
    folder = Path(folder)
    return (folder / STARTED_FILE).is_file() or (folder / DONE_FILE).is_file()


def completed_record(out_root, name: str) -> dict | None:
    """The completion record of subject ``name`` under ``out_root`` if it is complete (record readable, every map
    in it present), else None."""
    out = Path(out_root) / name
    try:
        record = json.loads((out / DONE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") != "done" or not isinstance(record.get("maps"), list):
        return None
    if not all((out / name).is_file() for name in record["maps"]):
        return None
    return record
