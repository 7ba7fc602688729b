"""Cohorts: a Dask LocalCluster against a serial loop over the same subjects, speed-up measured in this run.

Run: ``.venv/bin/python benchmarks/cohort.py [--quick] [--subjects 8] [--shape 32 32 4] [--task nlls|predict]``

``--subjects`` digital phantoms (SNR 35, different seeds) are written as ``sub-NN.nii.gz`` with sidecars. Each is
mapped (``nlls``: batched Levenberg–Marquardt, 2 starts; ``predict``: a small MLP bundle) twice:

* serially: :func:`napari_rverdict.cohort.tasks.run_subject` in a loop in this process (what a shell loop over
  ``rverdict fit`` does, without its start-up cost), with 1 torch thread and with the threads a command would
  choose for each subject (``threads.torch_threads()``: the CPUs not kept busy by others); the faster counts;
* on Dask: :func:`napari_rverdict.cohort.run_cohort` on a LocalCluster of worker processes sized by
  ``threads.worker_layout``; the cluster's start-up (processes started, torch imported) is timed apart, since
  it is paid once per cohort whatever its size.

Both write the same files (a fresh output folder each). The load average is printed: the machine may be shared.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def _spin(_=None) -> float:
    """A fixed amount of single-threaded torch work; its duration."""
    import torch

    torch.set_num_threads(1)
    x = torch.rand(4000, dtype=torch.float64)
    t0 = time.perf_counter()
    for _ in range(10000):
        x = torch.exp(-x) * x + 0.5
    return time.perf_counter() - t0


def parallel_capacity(n: int) -> float:
    """Throughput of ``n`` processes spinning at once over one alone: the most any cluster of ``n`` single-threaded
    workers can gain on this machine right now (n on an idle machine; less when CPUs are shared or are SMT
    siblings)."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(n) as pool:
        pool.map(_spin, range(n))  # start-up and imports
        alone = pool.map(_spin, [0])[0]
        t0 = time.perf_counter()
        pool.map(_spin, range(n), chunksize=1)
        return n * alone / (time.perf_counter() - t0)


def _warm() -> None:
    import napari_rverdict.cohort.tasks  # noqa: F401
    import napari_rverdict.maps.nlls  # noqa: F401


def make_cohort(root: Path, n: int, shape) -> Path:
    from napari_rverdict.data.phantom import make_phantom, save_phantom

    dwis = root / "dwis"
    dwis.mkdir(parents=True)
    for i in range(n):
        ph = root / f"ph{i}"
        save_phantom(make_phantom(tuple(shape), snr=35.0, seed=100 + i), ph)
        for f in ph.iterdir():
            if f.name.startswith("dwi."):
                shutil.copy(f, dwis / f"sub-{i:02d}{f.name[3:]}")
    return dwis


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 tiny phantoms: a smoke run")
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--shape", type=int, nargs=3, default=(32, 32, 4))
    ap.add_argument("--task", choices=("nlls", "predict"), default="nlls")
    args = ap.parse_args(argv)
    if args.quick:
        args.subjects, args.shape = 2, (8, 8, 2)
    warnings.simplefilter("ignore")

    from napari_rverdict.cohort import FitTask, PredictTask, read_subjects, run_cohort
    from napari_rverdict.cohort.tasks import run_subject
    from napari_rverdict.threads import available_cpus, torch_threads, worker_layout

    root = Path(tempfile.mkdtemp(prefix="rverdict-cohort-bench-"))
    try:
        subjects = read_subjects([make_cohort(root, args.subjects, args.shape)])
        if args.task == "predict":
            from napari_rverdict.data.synth import simulate
            from napari_rverdict.learn.config import TrainConfig
            from napari_rverdict.learn.train import train
            from napari_rverdict.physics import Protocol

            data = simulate("rverdict", Protocol.innovate(), n=5000, seed=0)
            train(data, TrainConfig(net="mlp", epochs=3, seed=0, device="cpu")).bundle.save(root / "m.pt")
            task = PredictTask(str(root / "m.pt"))
        else:
            task = FitTask("rverdict", "nlls", device="cpu", n_starts=2, max_iter=300)
        cpus = available_cpus(respect_env=False)
        print(f"{len(subjects)} phantoms {'×'.join(map(str, args.shape))}, task {args.task}; {cpus} CPUs, "
              f"load average {_load()}")

        w, t = worker_layout(cpus, n_tasks=len(subjects))
        if w > 1:
            print(f"    this machine now: {w} processes at once do {parallel_capacity(w):.2f}× the work of one "
                  "(the ceiling of any speed-up below)")
        serial = {}
        for label, choose in (("1 torch thread", lambda: 1),
                              ("threads chosen per subject as a command would (load-aware)", torch_threads)):
            t0, used = time.perf_counter(), []
            for s in subjects:
                used.append(choose())
                run_subject(task, s, root / f"serial{len(serial)}", threads=used[-1])
            serial[label] = time.perf_counter() - t0
            print(f"    serial loop, {label} ({sorted(set(used))}): {serial[label]:.1f} s "
                  f"({serial[label] / len(subjects):.2f} s/subject)")
        t_serial = min(serial.values())

        from distributed import Client, LocalCluster

        t0 = time.perf_counter()
        with LocalCluster(n_workers=w, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
            client.run(_warm)  # each worker process imports torch and the package once
            t_start = time.perf_counter() - t0
            t0 = time.perf_counter()
            result = run_cohort(subjects, task, root / "cluster", scheduler=cluster.scheduler_address,
                                progress=False)
            t_work = time.perf_counter() - t0
        assert result.count("done") == len(subjects), result.reasons
        threads_used = sorted({r["torch_threads"] for r in result.records.values()})
        busy = sum(r["seconds"] for r in result.records.values())
        print(f"    (sum of the tasks' own times on the workers: {busy:.1f} s)")
        print(f"    Dask LocalCluster, {w} worker process(es) × {threads_used} torch thread(s) "
              f"(worker_layout for {cpus} CPUs): start-up {t_start:.1f} s, subjects {t_work:.1f} s")
        print(f"    SPEED-UP cluster vs the faster serial loop: {t_serial / t_work:.2f}× on the subjects, "
              f"{t_serial / (t_start + t_work):.2f}× with start-up  (load average at the end {_load()})")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
