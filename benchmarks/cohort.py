"""Cohorts: a Dask LocalCluster against a serial loop over the same subjects, speed-up measured in this run.

Run: ``.venv/bin/python benchmarks/cohort.py [--quick] [--subjects 8] [--shape 12 12 2] [--task nlls|predict]``

``--subjects`` digital phantoms (SNR 35, different seeds) are written as ``sub-NN.nii.gz`` with sidecars. Each is
mapped (``nlls``: batched Levenberg–Marquardt, 2 starts; ``predict``: a small MLP bundle) twice:

* serially: :func:`napari_rverdict.cohort.tasks.run_subject` in a loop in this process, torch using every free
  CPU (what a shell loop over ``rverdict fit`` does, without its start-up cost);
* on Dask: :func:`napari_rverdict.cohort.run_cohort` with a LocalCluster of worker processes sized by
  ``threads.worker_layout`` (start-up of the cluster included).

Both write the same files (a fresh output folder each). The load average is printed: the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


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
    ap.add_argument("--shape", type=int, nargs=3, default=(12, 12, 2))
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
            from napari_rverdict.learn.train import TrainConfig, train
            from napari_rverdict.physics import Protocol

            data = simulate("rverdict", Protocol.innovate(), n=5000, seed=0)
            train(data, TrainConfig(net="mlp", epochs=3, seed=0, device="cpu")).bundle.save(root / "m.pt")
            task = PredictTask(str(root / "m.pt"))
        else:
            task = FitTask("rverdict", "nlls", device="cpu", n_starts=2, max_iter=300)
        cpus = available_cpus(respect_env=False)
        print(f"{len(subjects)} phantoms {'×'.join(map(str, args.shape))}, task {args.task}; {cpus} CPUs, "
              f"load average {_load()}")

        threads = torch_threads("main")  # as a command would choose them: the CPUs not kept busy by others
        t0 = time.perf_counter()
        for s in subjects:
            run_subject(task, s, root / "serial", threads=threads)
        t_serial = time.perf_counter() - t0
        print(f"    serial loop, {threads} torch thread(s): {t_serial:.1f} s ({t_serial / len(subjects):.2f} s/subject)")

        t0 = time.perf_counter()
        result = run_cohort(subjects, task, root / "cluster", progress=False)
        t_cluster = time.perf_counter() - t0
        assert result.count("done") == len(subjects), result.reasons
        w, t = result.layout
        print(f"    Dask LocalCluster, {w} worker process(es) × {t} torch thread(s) (worker_layout{worker_layout(cpus)}"
              f" for {cpus} CPUs): {t_cluster:.1f} s, start-up included")
        print(f"    SPEED-UP cluster vs serial: {t_serial / t_cluster:.2f}×  (load average at the end {_load()})")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
